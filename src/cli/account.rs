//! `duckpond account ...`: accounts and keys, straight on the metadata
//! database (the admin API offers the same over HTTP).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::accounts::{gb_to_bytes, AccountService, QuotaOverrides, QuotaPatch};
use crate::config::{FlagOverrides, Home};

/// Account commands.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account (directories, DuckLake catalog) and print its first API key once.
    Create {
        /// Account name: 1-63 of a-z 0-9 _ -.
        name: String,
        #[command(flatten)]
        quotas: QuotaFlags,
        #[command(flatten)]
        out: Output,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        out: Output,
    },
    /// Delete an account, its keys and all its data.
    Delete {
        /// Account name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Change an account's quotas.
    Update {
        /// Account name.
        name: String,
        #[command(flatten)]
        quotas: QuotaFlags,
        #[command(flatten)]
        out: Output,
    },
    /// Manage an account's API keys.
    ApiKey {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// Key commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issue a new key (printed once).
    Create {
        /// Account name.
        name: String,
        /// Label shown in listings.
        #[arg(long, default_value = "")]
        label: String,
        /// What the key may do: read, write (read plus ingest) or manage
        /// (write plus keys and notebooks).
        #[arg(long, default_value = "read")]
        scope: crate::accounts::Scope,
        #[command(flatten)]
        out: Output,
    },
    /// List keys (never their secrets).
    List {
        /// Account name.
        name: String,
        #[command(flatten)]
        out: Output,
    },
    /// Revoke a key by id (or by the whole key).
    Revoke {
        /// Account name.
        name: String,
        /// Key id as listed, or the key itself.
        key: String,
        #[command(flatten)]
        out: Output,
    },
}

/// Quota flags; omitted ones are left unchanged (or default, on create).
#[derive(Debug, Args, Default)]
pub struct QuotaFlags {
    /// Storage quota in GB (decimals allowed).
    #[arg(long, value_name = "GB")]
    max_storage_gb: Option<f64>,
    /// Concurrent queries.
    #[arg(long, value_name = "N")]
    max_concurrent_queries: Option<u32>,
    /// Ingest rate in bytes per second.
    #[arg(long, value_name = "BYTES")]
    max_ingest_bytes_per_s: Option<u64>,
    /// Concurrent notebook sessions.
    #[arg(long, value_name = "N")]
    max_notebook_sessions: Option<u32>,
}

impl QuotaFlags {
    fn patch(&self) -> anyhow::Result<QuotaPatch> {
        Ok(QuotaPatch {
            max_storage_bytes: self.max_storage_gb.map(gb_to_bytes).transpose()?.map(Some),
            max_concurrent_queries: self.max_concurrent_queries.map(Some),
            max_ingest_bytes_per_s: self.max_ingest_bytes_per_s.map(Some),
            max_notebook_sessions: self.max_notebook_sessions.map(Some),
        })
    }

    fn overrides(&self) -> anyhow::Result<QuotaOverrides> {
        Ok(QuotaOverrides {
            max_storage_bytes: self.max_storage_gb.map(gb_to_bytes).transpose()?,
            max_concurrent_queries: self.max_concurrent_queries,
            max_ingest_bytes_per_s: self.max_ingest_bytes_per_s,
            max_notebook_sessions: self.max_notebook_sessions,
        })
    }
}

/// `--json` output switch.
#[derive(Debug, Args, Default, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(home: &Home, command: AccountCommand) -> anyhow::Result<()> {
    let (config, meta) = super::connect(home, &FlagOverrides::default()).await?;
    super::require_current_schema(&meta).await?;
    let svc = AccountService::new(meta.clone(), &config);
    let limits = config.limits.clone();
    let result = run_with(&svc, &limits, command).await;
    meta.close().await;
    result
}

async fn run_with(
    svc: &AccountService,
    limits: &crate::config::LimitsConfig,
    command: AccountCommand,
) -> anyhow::Result<()> {
    match command {
        AccountCommand::Create { name, quotas, out } => {
            let (account, key) = svc.create(&name, quotas.overrides()?).await?;
            if out.json {
                print_json(&json!({"account": account.view(limits), "api_key": key.api_key}))?;
            } else {
                println!("created account {} (id {})", account.name, account.id);
                println!("API key (shown only now, store it): {}", key.api_key);
            }
        }
        AccountCommand::List { out } => {
            let accounts = svc.list().await?;
            if out.json {
                let views: Vec<_> = accounts.iter().map(|a| a.view(limits)).collect();
                print_json(&serde_json::to_value(views)?)?;
            } else {
                println!("{:<24} {:<32} {:<20} {:>12} {:>8}", "NAME", "ID", "CREATED", "STORAGE_GB", "QUERIES");
                for a in &accounts {
                    let q = a.overrides.resolve(limits);
                    println!(
                        "{:<24} {:<32} {:<20} {:>12.2} {:>8}",
                        a.name,
                        a.id,
                        a.created_at.format("%Y-%m-%d %H:%M:%S"),
                        q.max_storage_bytes as f64 / (1024.0 * 1024.0 * 1024.0),
                        q.max_concurrent_queries
                    );
                }
            }
        }
        AccountCommand::Delete { name, yes, out } => {
            let account = svc.get(&name).await?;
            if !yes && !confirm(&name)? {
                bail!("not deleted");
            }
            svc.delete(account.name.as_str()).await?;
            if out.json {
                print_json(&json!({"deleted": account.name}))?;
            } else {
                println!("deleted account {} and all its data", account.name);
            }
        }
        AccountCommand::Update { name, quotas, out } => {
            let patch = quotas.patch()?;
            if patch == QuotaPatch::default() {
                bail!("nothing to update: pass at least one of --max-storage-gb, --max-concurrent-queries, --max-ingest-bytes-per-s, --max-notebook-sessions");
            }
            let account = svc.update(&name, &patch).await?;
            if out.json {
                print_json(&serde_json::to_value(account.view(limits))?)?;
            } else {
                let q = account.overrides.resolve(limits);
                println!(
                    "updated {}: storage {} bytes, {} concurrent queries, {} ingest bytes/s, {} notebook sessions",
                    account.name,
                    q.max_storage_bytes,
                    q.max_concurrent_queries,
                    q.max_ingest_bytes_per_s,
                    q.max_notebook_sessions
                );
            }
        }
        AccountCommand::ApiKey { command } => run_key(svc, command).await?,
    }
    Ok(())
}

async fn run_key(svc: &AccountService, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { name, label, scope, out } => {
            let account = svc.get(&name).await?;
            let key = svc.create_key(&account, &label, scope).await?;
            if out.json {
                print_json(&serde_json::to_value(&key)?)?;
            } else {
                println!(
                    "{} key {} for {} (shown only now, store it): {}",
                    key.key.scope, key.key.id, account.name, key.api_key
                );
            }
        }
        KeyCommand::List { name, out } => {
            let account = svc.get(&name).await?;
            let keys = svc.list_keys(&account).await?;
            if out.json {
                print_json(&serde_json::to_value(&keys)?)?;
            } else {
                println!("{:<18} {:<20} {:<20} {:<20} LABEL", "ID", "CREATED", "LAST_USED", "REVOKED");
                let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
                };
                for k in &keys {
                    println!(
                        "{:<18} {:<20} {:<20} {:<20} {}",
                        k.id,
                        fmt(Some(k.created_at)),
                        fmt(k.last_used_at),
                        fmt(k.revoked_at),
                        k.label
                    );
                }
            }
        }
        KeyCommand::Revoke { name, key, out } => {
            let account = svc.get(&name).await?;
            svc.revoke_key(&account, &key).await?;
            if out.json {
                print_json(&json!({"revoked": key}))?;
            } else {
                println!("revoked key {key} of {}", account.name);
            }
        }
    }
    Ok(())
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm(name: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to delete {name:?} without confirmation: pass --yes");
    }
    eprint!("Delete account {name:?} and ALL its data? Type the account name to confirm: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == name)
}

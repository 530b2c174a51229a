//! The `duckpond` command line. Each subcommand lives in its own module; this
//! file holds the shared flags and the dispatch.

mod account;
mod data;
mod db;
mod promtest;
mod serve;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::{Config, FlagOverrides, Home, TEMPLATE_YAML};
use crate::meta::{MetaStore, SchemaStatus};

/// DuckPond: a self-hosted, multi-account data platform on DuckLake.
#[derive(Debug, Parser)]
#[command(name = "duckpond", version, about)]
pub struct Cli {
    /// Home directory (config, metadata, data). Default: $DUCKPOND_HOME or ~/.duckpond.
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Configuration file. Default: <home>/config.yaml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented default config.yaml into the home directory.
    Init {
        /// Overwrite an existing configuration file.
        #[arg(long)]
        force: bool,
    },
    /// Metadata database schema.
    Db {
        /// Subcommand.
        #[command(subcommand)]
        command: db::DbCommand,
    },
    /// The HTTP API server.
    Api {
        /// Subcommand.
        #[command(subcommand)]
        command: serve::ApiCommand,
    },
    /// Accounts, quotas and API keys (operates on the metadata database directly).
    Account {
        /// Subcommand.
        #[command(subcommand)]
        command: account::AccountCommand,
    },
    /// Datasets: upload, list, describe, delete (against a running server).
    Dataset {
        /// Subcommand.
        #[command(subcommand)]
        command: data::DatasetCommand,
    },
    /// Run one SQL query over the account's lake (against a running server).
    Query {
        /// The statement.
        sql: String,
        /// Output: table (default), json or csv.
        #[arg(long, value_enum, default_value = "table")]
        format: data::QueryOutput,
        #[command(flatten)]
        client: data::ClientArgs,
    },
    /// Streaming ingest (against a running server).
    Stream {
        /// Subcommand.
        #[command(subcommand)]
        command: data::StreamCommand,
    },
    /// Print a new admin key (256 random bits, hex) for
    /// security.admin_api_key_file or server.admin_api_key.
    AdminKey,
    /// An account's query worker; the daemon starts it (see
    /// query::worker), never a person.
    #[command(hide = true)]
    QueryWorker,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::resolve(cli.home, cli.config)?;
    match cli.command {
        Command::Init { force } => init(&home, force),
        Command::Db { command } => db::run(&home, command).await,
        Command::Api { command } => serve::run(&home, command).await,
        Command::Account { command } => account::run(&home, command).await,
        Command::Dataset { command } => data::run_dataset(&home, command).await,
        Command::Stream { command } => data::run_stream(&home, command).await,
        Command::Query { sql, format, client } => data::run_query(&home, sql, format, client).await,
        Command::AdminKey => {
            let mut bytes = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            println!("{}", hex::encode(bytes));
            Ok(())
        }
        Command::QueryWorker => bail!("the query worker runs before the async runtime (main.rs)"),
    }
}

fn init(home: &Home, force: bool) -> anyhow::Result<()> {
    if home.config_file.exists() && !force {
        bail!("{} already exists; pass --force to overwrite it", home.config_file.display());
    }
    if let Some(dir) = home.config_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::create_dir_all(&home.dir).with_context(|| format!("creating {}", home.dir.display()))?;
    std::fs::write(&home.config_file, TEMPLATE_YAML)
        .with_context(|| format!("writing {}", home.config_file.display()))?;
    println!("wrote {}", home.config_file.display());
    println!("next: duckpond db upgrade && duckpond account create <name>");
    Ok(())
}

/// Loads configuration and connects to the metadata database.
async fn connect(home: &Home, flags: &FlagOverrides) -> anyhow::Result<(Config, MetaStore)> {
    let config = Config::load(home, flags)?;
    let db = &config.database;
    let meta = MetaStore::connect(&db.url, db.max_connections, db.connect_timeout_ms)
        .await
        .with_context(|| format!("connecting to the metadata database {}", redact_url(&db.url)))?;
    Ok((config, meta))
}

/// Refuses to work on a schema this binary did not migrate to.
async fn require_current_schema(meta: &MetaStore) -> anyhow::Result<()> {
    match meta.schema_status().await? {
        SchemaStatus::Current { .. } => Ok(()),
        SchemaStatus::Uninitialised => bail!("the metadata database is not initialised: run `duckpond db upgrade`"),
        SchemaStatus::Behind { pending } => {
            bail!("the metadata database lacks migrations {pending:?}: run `duckpond db upgrade`")
        }
        SchemaStatus::Ahead { unknown } => bail!(
            "the metadata database has migrations {unknown:?} from a newer duckpond; \
             run that version or restore a backup"
        ),
    }
}

/// Hides the password of a database URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgresql://u:secret@h:5432/db"), "postgresql://u:***@h:5432/db");
        assert_eq!(redact_url("sqlite:///x/metadata.db"), "sqlite:///x/metadata.db");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

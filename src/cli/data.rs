//! `duckpond dataset ...` and `duckpond stream ...`: data commands, run
//! against a running server over its HTTP API (the server owns each
//! account's log; the CLI never writes account data itself).
//!
//! The server is `--server`, `$DUCKPOND_SERVER`, or the configured
//! `server.host:server.port`. The key is `--api-key` or `$DUCKPOND_API_KEY`;
//! without one, on the server's own machine, the CLI issues a key for the
//! account once (label `duckpond-cli`) and keeps it in
//! `<home>/cli/<account>.key` (mode 0600) for later commands.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::blocking::{Body, Client, Response};

use crate::accounts::AccountService;
use crate::config::{Config, FlagOverrides, Home};

/// Label of keys the CLI issues for itself.
pub const CLI_KEY_LABEL: &str = "duckpond-cli";
/// Longest wait to connect to the server. Requests themselves have no
/// timeout: uploads and streams take as long as their data does.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Where and as whom data commands connect.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The account (its key is looked up or issued when --api-key is absent).
    #[arg(long)]
    pub account: String,
    /// Server URL (default: $DUCKPOND_SERVER or the configured host and port).
    #[arg(long, env = "DUCKPOND_SERVER")]
    pub server: Option<String>,
    /// API key of the account (default: $DUCKPOND_API_KEY).
    #[arg(long, env = "DUCKPOND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the server's JSON replies instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Dataset commands.
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Upload a CSV, JSON, NDJSON or Parquet file into a dataset.
    Upload {
        /// The file.
        file: PathBuf,
        /// Dataset name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// append, replace or create.
        #[arg(long, default_value = "append")]
        mode: String,
        /// csv, json, ndjson or parquet (default: from the extension).
        #[arg(long)]
        format: Option<String>,
        /// Return once durable instead of waiting for the commit.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List datasets with rows, size and last snapshot.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a dataset's columns, stats and snapshots.
    Describe {
        /// Dataset name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop a dataset.
    Delete {
        /// Dataset name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How `duckpond query` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryOutput {
    /// A readable table.
    Table,
    /// The server's JSON.
    Json,
    /// CSV with a header.
    Csv,
}

/// Streaming commands.
#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Stream an Arrow IPC stream from stdin (or --file) into a table.
    Arrow {
        /// Table name.
        table: String,
        /// Read this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send synthetic remote-write 1.0 and 2.0 requests, read them back
    /// (SQL and remote read), print PASS or FAIL per check.
    PrometheusTest {
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(super) struct Api {
    pub(super) http: Client,
    pub(super) base: String,
    pub(super) key: String,
}

impl Api {
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let res = req.header("X-API-Key", &self.key).send().map_err(|e| unreachable_server(&self.base, e))?;
        reply(res)
    }
}

fn unreachable_server(base: &str, e: reqwest::Error) -> anyhow::Error {
    if e.is_connect() {
        anyhow::anyhow!(
            "no DuckPond server reachable at {base}: start one with `duckpond api serve`, or point --server \
             (or $DUCKPOND_SERVER) at a running one"
        )
    } else {
        anyhow::anyhow!("request to {base} failed: {e}")
    }
}

fn reply(res: Response) -> anyhow::Result<serde_json::Value> {
    let status = res.status();
    let text = res.text().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        let details = v["error"].get("details").map(|d| format!("\n{d}")).unwrap_or_default();
        bail!("{} {msg}{details}", status.as_u16());
    }
    Ok(v)
}

/// Resolves server and key, issuing a CLI key if needed.
pub(super) async fn connect(home: &Home, c: &ClientArgs) -> anyhow::Result<Api> {
    let config = Config::load(home, &FlagOverrides::default())?;
    let base = c.server.clone().unwrap_or_else(|| format!("http://{}:{}", config.server.host, config.server.port));
    let key = match &c.api_key {
        Some(k) => k.clone(),
        None => local_key(home, &config, &c.account).await?,
    };
    let http =
        Client::builder().timeout(None).connect_timeout(Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS)).build()?;
    Ok(Api { http, base, key })
}

async fn local_key(home: &Home, config: &Config, account: &str) -> anyhow::Result<String> {
    let path = home.dir.join("cli").join(format!("{account}.key"));
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_string());
    }
    let (_, meta) = super::connect(home, &FlagOverrides::default()).await.context(
        "no API key: pass --api-key or set $DUCKPOND_API_KEY (or run this on the server's machine so the CLI can \
         issue one)",
    )?;
    super::require_current_schema(&meta).await?;
    let svc = AccountService::new(meta, config);
    let acct = svc.get(account).await.with_context(|| format!("account {account}"))?;
    let issued = svc.create_key(&acct, CLI_KEY_LABEL, crate::accounts::Scope::Write).await?;
    save_key(&path, &issued.api_key)?;
    eprintln!("issued an API key for the CLI ({}), kept in {}", issued.key.id, path.display());
    Ok(issued.api_key)
}

fn save_key(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(key.as_bytes())?;
    Ok(())
}

/// Checks the key belongs to `--account` (a key of another account would
/// write somewhere unexpected).
pub(super) fn check_account(api: &Api, account: &str) -> anyhow::Result<()> {
    let me = api.send(api.http.get(api.url("/api/account")))?;
    if me["name"] != account {
        bail!("the API key belongs to account {}, not {account}", me["name"]);
    }
    Ok(())
}

fn progress(len: Option<u64>) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = match len {
        Some(_) => "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        None => "{spinner} {bytes} {binary_bytes_per_sec}",
    };
    pb.set_style(ProgressStyle::with_template(style).expect("valid template"));
    pb
}

/// Runs a dataset command.
pub async fn run_dataset(home: &Home, command: DatasetCommand) -> anyhow::Result<()> {
    let client = match &command {
        DatasetCommand::Upload { client, .. }
        | DatasetCommand::List { client }
        | DatasetCommand::Describe { client, .. }
        | DatasetCommand::Delete { client, .. } => client,
    };
    let api = connect(home, client).await?;
    let (account, json) = (client.account.clone(), client.json);
    tokio::task::spawn_blocking(move || dataset_blocking(api, &account, json, command)).await?
}

fn dataset_blocking(api: Api, account: &str, json: bool, command: DatasetCommand) -> anyhow::Result<()> {
    check_account(&api, account)?;
    let v = match command {
        DatasetCommand::Upload { file, name, mode, format, no_wait, .. } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(sanitize)
                    .context("cannot name the dataset; pass --name")?,
            };
            let format = match format {
                Some(f) => f,
                None => file
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .context("cannot tell the format from the file name; pass --format")?,
            };
            let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata()?.len();
            let pb = progress(Some(len));
            let body = Body::sized(pb.wrap_read(f), len);
            let wait = if no_wait { "durable" } else { "committed" };
            let url = api.url(&format!("/api/datasets/{name}/upload?format={format}&mode={mode}&wait={wait}"));
            let started = std::time::Instant::now();
            let res = api.send(api.http.post(url).header("Content-Type", "application/octet-stream").body(body));
            pb.finish_and_clear();
            let v = res?;
            if !json {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                println!(
                    "uploaded {} into {}: {} rows, {:.1} MB/s{}",
                    file.display(),
                    v["table"].as_str().unwrap_or(&name),
                    v["rows"],
                    len as f64 / 1e6 / secs,
                    match v["snapshot_id"].as_i64() {
                        Some(id) => format!(", committed in snapshot {id}"),
                        None => format!(", durable at log position {} (visible after the next flush)", v["lsn"]),
                    }
                );
                return Ok(());
            }
            v
        }
        DatasetCommand::List { .. } => {
            let v = api.send(api.http.get(api.url("/api/datasets")))?;
            if !json {
                println!("{:<32} {:>12} {:>14} {:>6} {:>9}", "NAME", "ROWS", "BYTES", "FILES", "SNAPSHOT");
                for d in v.as_array().into_iter().flatten() {
                    // serde_json's Display ignores width and alignment:
                    // format each cell as text first.
                    let cell = |v: &serde_json::Value| match v {
                        serde_json::Value::Null => "-".to_string(),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    println!(
                        "{:<32} {:>12} {:>14} {:>6} {:>9}",
                        cell(&d["name"]),
                        cell(&d["rows"]),
                        cell(&d["bytes"]),
                        cell(&d["files"]),
                        cell(&d["last_snapshot_id"])
                    );
                }
                return Ok(());
            }
            v
        }
        DatasetCommand::Describe { name, .. } => {
            let v = api.send(api.http.get(api.url(&format!("/api/datasets/{name}"))))?;
            if !json {
                println!(
                    "{}: {} rows, {} bytes in {} files, last snapshot {}",
                    v["name"].as_str().unwrap_or(""),
                    v["rows"],
                    v["bytes"],
                    v["files"],
                    v["last_snapshot_id"]
                );
                for c in v["columns"].as_array().into_iter().flatten() {
                    println!("  {:<32} {}", c["name"].as_str().unwrap_or(""), c["type"].as_str().unwrap_or(""));
                }
                return Ok(());
            }
            v
        }
        DatasetCommand::Delete { name, .. } => {
            let v = api.send(api.http.delete(api.url(&format!("/api/datasets/{name}?wait=committed"))))?;
            if !json {
                println!("deleted {name}");
                return Ok(());
            }
            v
        }
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// A file stem as a dataset name: characters outside [A-Za-z0-9_] become `_`.
fn sanitize(stem: &str) -> String {
    let s: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{s}")
    } else {
        s
    }
}

/// Runs a stream command.
pub async fn run_stream(home: &Home, command: StreamCommand) -> anyhow::Result<()> {
    let (table, file, client) = match command {
        StreamCommand::Arrow { table, file, client } => (table, file, client),
        StreamCommand::PrometheusTest { client } => return super::promtest::run(home, client).await,
    };
    let api = connect(home, &client).await?;
    let (account, json) = (client.account.clone(), client.json);
    tokio::task::spawn_blocking(move || {
        check_account(&api, &account)?;
        let input: Box<dyn Read + Send> = match &file {
            Some(f) => Box::new(std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?),
            None => {
                if std::io::stdin().is_terminal() {
                    bail!("pipe an Arrow IPC stream into stdin (e.g. `cat data.arrow | duckpond stream arrow {table} ...`) or pass --file");
                }
                Box::new(std::io::stdin())
            }
        };
        let pb = progress(None);
        let body = Body::new(pb.wrap_read(input));
        let url = api.url(&format!("/api/stream/arrow/{table}?wait=committed"));
        let res = api.send(
            api.http.post(url).header("Content-Type", crate::ingest::arrow_stream::ARROW_STREAM_CONTENT_TYPE).body(body),
        );
        pb.finish_and_clear();
        let v = res?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("streamed {} rows in {} batches into {}", v["rows_kept"], v["batches_kept"], table);
        }
        Ok(())
    })
    .await?
}

/// Runs `duckpond query`.
pub async fn run_query(home: &Home, sql: String, format: QueryOutput, client: ClientArgs) -> anyhow::Result<()> {
    let api = connect(home, &client).await?;
    let account = client.account.clone();
    tokio::task::spawn_blocking(move || {
        check_account(&api, &account)?;
        let req = serde_json::json!({"sql": sql, "format": if format == QueryOutput::Csv { "csv" } else { "json" }});
        let res = api
            .http
            .post(api.url("/api/query"))
            .header("X-API-Key", &api.key)
            .json(&req)
            .send()
            .map_err(|e| unreachable_server(&api.base, e))?;
        if format == QueryOutput::Csv {
            if !res.status().is_success() {
                reply(res)?;
                return Ok(());
            }
            let mut res = res;
            std::io::copy(&mut res, &mut std::io::stdout().lock())?;
            return Ok(());
        }
        let v = reply(res)?;
        if format == QueryOutput::Json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        print_table(&v);
        Ok(())
    })
    .await?
}

/// A JSON query result as an aligned text table.
fn print_table(v: &serde_json::Value) {
    let names: Vec<String> =
        v["columns"].as_array().into_iter().flatten().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect();
    let cell = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "NULL".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_array().into_iter().flatten().map(cell).collect())
        .collect();
    let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count()).min(QUERY_TABLE_MAX_CELL_CHARS);
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(*w).collect();
                format!("{c:<w$}")
            })
            .collect();
        println!("{}", parts.join(" | ").trim_end());
    };
    line(&names);
    println!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    for r in &rows {
        line(r);
    }
    println!(
        "({} row{}{}, snapshot {}, {} ms)",
        v["row_count"],
        if v["row_count"] == 1 { "" } else { "s" },
        if v["truncated"] == true { ", truncated" } else { "" },
        v["snapshot_id"],
        v["elapsed_ms"]
    );
}

/// Widest cell `duckpond query` prints in table form.
pub const QUERY_TABLE_MAX_CELL_CHARS: usize = 60;

//! The `duckpond` daemon and CLI.
//!
//! Data flows one way: ingest -> wal -> compactor -> lake -> query. This binary
//! holds configuration, the metadata database (accounts and keys), the HTTP
//! API and the CLI; the log, the compactor and the record schema are the
//! workspace crates `duckpond-wal`, `duckpond-compactor`, `duckpond-schema`.

mod accounts;
mod cli;
mod config;
mod ingest;
mod meta;
mod notebooks;
mod pipelines;
mod query;
mod security;
mod server;
mod telemetry;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init_logging();
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

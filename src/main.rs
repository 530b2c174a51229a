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

/// Stack of every thread that may run DuckDB or decode input: the
/// runtime's workers and blocking pool, and (through the default thread
/// attributes) DuckDB's own threads. DuckDB's JSON functions and readers
/// recurse once per nesting level (100 to 500 bytes each, measured), so on
/// the default 2 MiB a query over JSON nested some thousands deep
/// overflowed and aborted the daemon (issue 18). The stack is reserved
/// address space; only what a thread touches becomes memory. Written
/// input is limited in nesting before DuckDB sees it
/// (`limits.max_nesting_depth`); this is the margin for what SQL builds.
pub(crate) const THREAD_STACK_BYTES: usize = 256 * 1024 * 1024;

extern "C" {
    // glibc: the attributes of threads created without any (C++ std::thread).
    fn pthread_setattr_default_np(attr: *const libc::pthread_attr_t) -> libc::c_int;
}

/// Gives threads created without attributes (DuckDB's) `THREAD_STACK_BYTES`.
fn default_thread_stack() {
    // SAFETY: a zeroed attr initialised by pthread_attr_init, used once and
    // destroyed; called before any DuckDB thread exists.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) == 0 {
            if libc::pthread_attr_setstacksize(&mut attr, THREAD_STACK_BYTES) == 0 {
                pthread_setattr_default_np(&attr);
            }
            libc::pthread_attr_destroy(&mut attr);
        }
    }
}

fn main() -> std::process::ExitCode {
    default_thread_stack();
    telemetry::init_logging();
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::QueryWorker) {
        // Blocking threads only; no runtime, no logging set-up of its own
        // (its stderr is the daemon's).
        return query::worker::serve::run();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
        .expect("starting the async runtime");
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

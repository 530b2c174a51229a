//! The query worker process (`duckpond query-worker`, started by the
//! daemon, never by hand): one account's sandboxed read-only DuckDB
//! instance serving queries on a Unix socket, one connection and thread
//! per query.
//!
//! Start-up: the daemon writes one JSON [`Spec`] line on stdin; the worker
//! opens the instance, binds the socket and prints `ready` (or `error:
//! <why>`) on stdout. Stdin stays open for the worker's life: its end (the
//! daemon exited, even by kill -9) ends the worker.

use std::io::{BufRead, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::ipc::writer::StreamWriter;
use duckpond_compactor::{Extensions, InstanceSettings, LakeError, LAKE_ALIAS};
use serde::{Deserialize, Serialize};

use super::wire::{self, Kind, Request, StartHeader};
use crate::query::exec::{self, Message, QueryError};

/// What a worker is started with (one JSON line on stdin; it may hold a
/// catalog password, so it never travels in arguments or the environment).
#[derive(Serialize, Deserialize)]
pub(crate) struct Spec {
    /// The verified extension binaries.
    pub extension_dir: PathBuf,
    /// DuckDB `memory_limit`, MiB.
    pub memory_limit_mb: u64,
    /// DuckDB `threads`.
    pub threads: u32,
    /// `ATTACH` of the account's lake, read-only.
    pub attach_sql: String,
    /// The account's directory (the instance's `allowed_directories`).
    pub account_root: PathBuf,
    /// Where to listen (inside a directory only the daemon's user can open).
    pub socket: PathBuf,
}

/// The worker's `main`.
pub fn run() -> ExitCode {
    let mut line = String::new();
    let started =
        std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading the spec: {e}")).and_then(|_| {
            let spec: Spec = serde_json::from_str(&line).map_err(|e| format!("a malformed spec: {e}"))?;
            // The catalog's password, if the attach carries one, never
            // reaches the log (DuckDB may echo the connection string).
            if let Some(password) = crate::security::redact::password_of(&spec.attach_sql) {
                crate::security::redact::register_secret(password);
            }
            let ext = Extensions::locate(&spec.extension_dir).map_err(|e| e.to_string())?;
            let settings = InstanceSettings { memory_limit_mb: spec.memory_limit_mb, threads: spec.threads };
            let base = crate::query::sandboxed(&ext, &settings, &spec.attach_sql, &spec.account_root)
                .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&spec.socket);
            let listener = UnixListener::bind(&spec.socket).map_err(|e| format!("listening: {e}"))?;
            Ok((spec, ext, settings, base, listener))
        });
    let mut stdout = std::io::stdout();
    let (spec, ext, settings, base, listener) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stdout, "error: {}", e.replace('\n', " "));
            return ExitCode::FAILURE;
        }
    };
    if writeln!(stdout, "ready").and_then(|_| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    // The daemon's Ctrl-C and its unit's SIGTERM reach the whole process
    // group: the worker outlives them so that queries drain with the
    // daemon, and ends when the daemon does (its stdin closes) or kills it.
    // SAFETY: setting a signal's disposition to "ignore" has no handler.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let shared = Arc::new(Shared { spec, ext, settings, base: std::sync::Mutex::new(base) });
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // Out of descriptors, say: do not spin.
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        };
        let shared = shared.clone();
        // DuckDB runs part of each query on the calling thread: it gets
        // the stack every DuckDB thread of the daemon has (main.rs), not
        // std's 2 MiB.
        let spawned = std::thread::Builder::new()
            .name("query".into())
            .stack_size(crate::THREAD_STACK_BYTES)
            .spawn(move || shared.serve(stream));
        if spawned.is_err() {
            // Out of threads: this query's connection closes unanswered
            // (the daemon reports it); the others go on.
            continue;
        }
    }
    ExitCode::SUCCESS
}

struct Shared {
    spec: Spec,
    ext: Extensions,
    settings: InstanceSettings,
    base: std::sync::Mutex<duckdb::Connection>,
}

impl Shared {
    /// One query: read its request, run it, stream the frames back; the
    /// daemon closing its side (or sending anything) interrupts it.
    fn serve(&self, stream: UnixStream) {
        let Ok(mut watch) = stream.try_clone() else { return };
        let request = match wire::read_frame(&mut watch) {
            Ok(Some((Kind::Request, p))) => serde_json::from_slice::<Request>(&p),
            _ => return,
        };
        let mut out = BufWriter::new(stream);
        let request = match request {
            Ok(r) => r,
            Err(e) => return send_failed(&mut out, &QueryError::Invalid(format!("a malformed request: {e}"))),
        };
        let conn = match self.connection(request.snapshot) {
            Ok(c) => c,
            Err(e) => return send_failed(&mut out, &e),
        };
        let done = Arc::new(AtomicBool::new(false));
        let interrupt = conn.interrupt_handle();
        let watching = done.clone();
        std::thread::spawn(move || {
            let _ = watch.read(&mut [0u8; 1]);
            if !watching.load(Ordering::Acquire) {
                interrupt.interrupt();
            }
        });
        let mut ipc: Option<StreamWriter<Vec<u8>>> = None;
        let mut failed = false;
        exec::produce(&conn, &request.sql, request.max_rows, request.carrier, &mut |m| {
            let sent = match m {
                Message::Start { schema, snapshot_id, as_text } => match StreamWriter::try_new(Vec::new(), &schema) {
                    Ok(mut w) => {
                        let schema_ipc = std::mem::take(w.get_mut());
                        ipc = Some(w);
                        let header = StartHeader { snapshot_id, as_text };
                        frame(&mut out, Kind::Start, &wire::start_payload(&header, &schema_ipc))
                    }
                    Err(e) => {
                        failed = true;
                        send_failed(&mut out, &QueryError::Invalid(format!("encoding the result: {e}")));
                        return false;
                    }
                },
                Message::Batch(b) => {
                    let w = ipc.as_mut().expect("Start comes first");
                    match w.write(&b) {
                        Ok(()) => frame(&mut out, Kind::Batch, &std::mem::take(w.get_mut())),
                        Err(e) => {
                            failed = true;
                            send_failed(&mut out, &QueryError::Invalid(format!("encoding the result: {e}")));
                            return false;
                        }
                    }
                }
                Message::Failed(e) => {
                    failed = true;
                    send_failed(&mut out, &e);
                    return false;
                }
            };
            if !sent {
                // The daemon is gone, or a frame could not be written: never
                // follow a lost frame with End (a truncated result).
                failed = true;
            }
            sent
        });
        done.store(true, Ordering::Release);
        if !failed {
            let _ = frame(&mut out, Kind::End, &[]);
        }
    }

    /// A connection reading the latest snapshot, or a fresh instance pinned
    /// to `snapshot` (time travel).
    fn connection(&self, snapshot: Option<i64>) -> Result<duckdb::Connection, QueryError> {
        let unavailable = |e: LakeError| QueryError::Unavailable(e.to_string());
        let conn = match snapshot {
            None => self
                .base
                .lock()
                .expect("base connection lock")
                .try_clone()
                .map_err(|e| QueryError::Unavailable(format!("opening a connection: {e}")))?,
            Some(v) => {
                let attach = crate::query::pinned(&self.spec.attach_sql, v);
                crate::query::sandboxed(&self.ext, &self.settings, &attach, &self.spec.account_root).map_err(|e| {
                    // Most often an expired snapshot; the cause stays in the log.
                    let error = crate::security::redact::redact_secrets(&e.to_string());
                    tracing::info!(%error, snapshot = v, "time travel to an unreadable snapshot");
                    QueryError::NoSnapshot(v)
                })?
            }
        };
        conn.execute_batch(&format!("USE {LAKE_ALIAS}"))
            .map_err(|e| unavailable(LakeError::duckdb("selecting the lake")(e)))?;
        Ok(conn)
    }
}

/// Writes and flushes one frame; false when the daemon is gone.
fn frame(out: &mut BufWriter<UnixStream>, kind: Kind, payload: &[u8]) -> bool {
    wire::write_frame(out, kind, payload).and_then(|_| out.flush()).is_ok()
}

fn send_failed(out: &mut BufWriter<UnixStream>, e: &QueryError) {
    let _ = frame(out, Kind::Failed, &serde_json::to_vec(e).expect("a query error serializes"));
}

//! Query workers: every account's SQL runs in a process of its own, so a
//! native crash inside DuckDB (a stack overflow on JSON nested millions
//! deep, say: DuckDB's JSON functions recurse once per level, and SQL can
//! build any depth) ends that process, fails that account's running
//! queries with [`QueryError::Crashed`], and touches nothing else: the
//! daemon, its writes and every other account go on. The next query starts
//! a fresh worker.
//!
//! - A worker is this same binary (`duckpond query-worker`,
//!   [`serve`]), started on an account's first query, stopped when the
//!   account is deleted, idle past `duckdb.query_worker_idle_timeout_ms`,
//!   or the daemon exits (its stdin closes).
//! - It listens on a Unix socket in a directory only the daemon's user can
//!   open; one connection per query carries the [`wire`] frames.
//! - It opens the same sandboxed instance the daemon would (read-only
//!   lake, `allowed_directories`, external access off, configuration
//!   locked); the daemon still runs the SQL [`crate::query::guard`]
//!   first, which only parses.
//!
//! The cost is one process and one DuckDB instance per account that
//! queries (measured per query in benches/query.rs: docs/BENCHMARKS.md).

pub mod serve;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::buffer::Buffer;
use arrow::ipc::reader::{StreamDecoder, StreamReader};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::exec::{Message, QueryError, Running, CHANNEL_BATCHES};
use crate::accounts::AccountId;
pub(crate) use serve::Spec;
use wire::{Kind, Request};

/// Arrow IPC's end-of-stream marker (continuation, zero length).
const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// One running worker.
struct Worker {
    child: Mutex<Child>,
    /// Closing it tells the worker to exit.
    _stdin: ChildStdin,
    socket: PathBuf,
    /// Queries running on it.
    active: AtomicUsize,
    /// When the last query ended (or it started).
    idle_since: Mutex<Instant>,
    /// Set before the daemon itself kills it (idle, account deleted,
    /// replaced): its queries then did nothing wrong.
    killed_by_daemon: std::sync::atomic::AtomicBool,
    /// Whether its death was already logged and counted (once per worker,
    /// however many queries it took down).
    death_reported: std::sync::atomic::AtomicBool,
}

impl Worker {
    fn alive(&self) -> bool {
        matches!(self.child.lock().expect("worker lock").try_wait(), Ok(None))
    }

    /// How it ended, if it has (waits up to a second for the exit status
    /// of a worker whose socket just closed).
    async fn exit_status(&self) -> Option<std::process::ExitStatus> {
        for _ in 0..50 {
            if let Ok(Some(s)) = self.child.lock().expect("worker lock").try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    fn kill(&self) {
        self.killed_by_daemon.store(true, Ordering::Release);
        let _ = self.child.lock().expect("worker lock").start_kill();
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Worker>>>>;

/// Every account's worker.
pub struct Workers {
    exe: PathBuf,
    /// Holds the sockets; removed with this value.
    dir: tempfile::TempDir,
    next_socket: AtomicU64,
    idle_timeout: Duration,
    /// How long a worker may take to open its instance and listen.
    start_timeout: Duration,
    slots: Mutex<HashMap<AccountId, Slot>>,
}

impl Workers {
    /// A registry whose workers run `exe`; makes the private socket
    /// directory under the system's temporary directory.
    pub fn new(exe: PathBuf, idle_timeout: Duration, start_timeout: Duration) -> std::io::Result<Self> {
        // tempdir() creates it with mode 0700.
        let dir = tempfile::Builder::new().prefix("duckpond-query-").tempdir()?;
        Ok(Self { exe, dir, next_socket: AtomicU64::new(0), idle_timeout, start_timeout, slots: Mutex::default() })
    }

    fn slot(&self, account: &AccountId) -> Slot {
        self.slots.lock().expect("workers lock").entry(account.clone()).or_default().clone()
    }

    /// Starts the account's worker unless it runs (so that a query's
    /// admission slot is not spent waiting for a worker to start).
    pub async fn ready(&self, account: &AccountId, spec: impl FnOnce(PathBuf) -> Spec) -> Result<(), QueryError> {
        let slot = self.slot(account);
        if slot.lock().await.as_ref().is_some_and(|w| w.alive()) {
            return Ok(());
        }
        let (worker, stream) = self.connect(account, spec).await?;
        drop(stream);
        worker.active.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }

    /// Starts `request` on the account's worker (starting the worker when
    /// it has none or its last one died); `spec` says how to start one.
    /// Returns once the request is sent; results, failures included, come
    /// through [`Running::rx`].
    pub async fn start(
        &self,
        account: &AccountId,
        spec: impl FnOnce(PathBuf) -> Spec,
        request: Request,
        permit: OwnedSemaphorePermit,
    ) -> Result<Running, QueryError> {
        let (worker, stream) = self.connect(account, spec).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        tokio::spawn(relay(worker, stream, request, tx, cancel_rx));
        Ok(Running::new(rx, cancel_tx, permit))
    }

    /// A connection to the account's live worker, started if need be,
    /// counted in the worker's `active` (the caller gives it back).
    async fn connect(
        &self,
        account: &AccountId,
        spec: impl FnOnce(PathBuf) -> Spec,
    ) -> Result<(Arc<Worker>, UnixStream), QueryError> {
        let slot = self.slot(account);
        let mut current = slot.lock().await;
        // Connect and count under the slot's lock: the idle reaper takes
        // it too, so it never stops a worker a query is about to use.
        if let Some(w) = current.as_ref().filter(|w| w.alive()) {
            match UnixStream::connect(&w.socket).await {
                Ok(s) => {
                    w.active.fetch_add(1, Ordering::AcqRel);
                    return Ok((w.clone(), s));
                }
                // Gone or not listening: replace it. Anything else (out of
                // descriptors, say) is ours, not the worker's: keep it and
                // its running queries.
                Err(e) if !matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                    return Err(QueryError::Unavailable(format!("connecting to the query worker: {e}")));
                }
                Err(_) => {}
            }
        }
        if let Some(old) = current.take() {
            old.kill();
        }
        let socket = self.dir.path().join(format!("{}.sock", self.next_socket.fetch_add(1, Ordering::Relaxed)));
        let w = Arc::new(self.spawn(spec(socket)).await?);
        let s = UnixStream::connect(&w.socket)
            .await
            .map_err(|e| QueryError::Unavailable(format!("connecting to the query worker: {e}")))?;
        w.active.fetch_add(1, Ordering::AcqRel);
        *current = Some(w.clone());
        Ok((w, s))
    }

    async fn spawn(&self, spec: Spec) -> Result<Worker, QueryError> {
        let unavailable = |m: String| QueryError::Unavailable(m);
        let socket = spec.socket.clone();
        let mut child = Command::new(&self.exe)
            .arg("query-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| unavailable(format!("starting a query worker: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = serde_json::to_vec(&spec).expect("a worker spec serializes");
        line.push(b'\n');
        stdin.write_all(&line).await.map_err(|e| unavailable(format!("starting a query worker: {e}")))?;
        let mut said = String::new();
        let read = tokio::time::timeout(self.start_timeout, BufReader::new(stdout).read_line(&mut said)).await;
        match (read, said.trim_end()) {
            (Ok(Ok(_)), "ready") => {}
            (Ok(_), why) => {
                let _ = child.start_kill();
                let why = why.strip_prefix("error: ").unwrap_or("it exited at start");
                // DuckDB may echo the catalog's connection string.
                let why = crate::security::redact::redact_secrets(why);
                return Err(unavailable(format!("the query worker did not start: {why}")));
            }
            (Err(_), _) => {
                let _ = child.start_kill();
                return Err(unavailable(format!(
                    "the query worker did not start within {:?} (duckdb.query_worker_start_timeout_ms)",
                    self.start_timeout
                )));
            }
        }
        metrics::counter!("duckpond_query_workers_started_total").increment(1);
        Ok(Worker {
            child: Mutex::new(child),
            _stdin: stdin,
            socket,
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            killed_by_daemon: std::sync::atomic::AtomicBool::new(false),
            death_reported: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stops the account's worker (before the account is deleted).
    pub async fn stop(&self, account: &AccountId) {
        let slot = self.slots.lock().expect("workers lock").remove(account);
        if let Some(slot) = slot {
            if let Some(w) = slot.lock().await.take() {
                w.kill();
            }
        }
    }

    /// Stops workers with no query running that have been idle past the
    /// idle timeout (and forgets dead ones).
    pub async fn reap_idle(&self) {
        let slots: Vec<Slot> = self.slots.lock().expect("workers lock").values().cloned().collect();
        for slot in slots {
            let mut current = slot.lock().await;
            let idle = current.as_ref().is_some_and(|w| {
                !w.alive()
                    || (w.active.load(Ordering::Acquire) == 0
                        && w.idle_since.lock().expect("worker lock").elapsed() >= self.idle_timeout)
            });
            if idle {
                if let Some(w) = current.take() {
                    w.kill();
                }
            }
        }
    }

    /// How often [`Self::reap_idle`] should run.
    pub fn reap_interval(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// Sends `request`, then turns the worker's frames into [`Message`]s until
/// the result ends, the reader goes away or `cancel` fires (closing the
/// connection, which interrupts the query in the worker).
async fn relay(
    worker: Arc<Worker>,
    stream: UnixStream,
    request: Request,
    tx: mpsc::Sender<Message>,
    mut cancel: oneshot::Receiver<()>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut frame = Vec::new();
    let body = serde_json::to_vec(&request).expect("a request serializes");
    let sent = wire::write_frame(&mut frame, Kind::Request, &body).is_ok() && wr.write_all(&frame).await.is_ok();
    let mut decoder = StreamDecoder::new();
    let (mut ended, mut cancelled) = (false, false);
    if sent {
        loop {
            let next = tokio::select! {
                _ = &mut cancel => {
                    cancelled = true;
                    break;
                }
                _ = tx.closed() => break,
                f = wire::read_frame_async(&mut rd) => f,
            };
            let messages = match next {
                Ok(Some((Kind::End, _))) => {
                    // A batch without body bytes (every column of Arrow's
                    // Null type) is only decoded once more bytes follow:
                    // the stream's end marker delivers it.
                    ended = true;
                    let last = end(&mut decoder);
                    for m in last {
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
                Ok(Some((Kind::Failed, p))) => {
                    ended = true;
                    let e = serde_json::from_slice(&p).unwrap_or_else(|e| {
                        QueryError::Unavailable(format!("a malformed failure from the worker: {e}"))
                    });
                    vec![Message::Failed(e)]
                }
                Ok(Some((Kind::Start, p))) => start(&mut decoder, &p),
                Ok(Some((Kind::Batch, p))) => batches(&mut decoder, p),
                Ok(Some((Kind::Request, _))) => {
                    vec![Message::Failed(QueryError::Unavailable("the query worker sent a request".into()))]
                }
                Ok(None) | Err(_) => break,
            };
            let last = messages.iter().any(|m| matches!(m, Message::Failed(_)));
            for m in messages {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
            if last {
                ended = true;
                break;
            }
        }
    }
    if !ended && !cancelled && !tx.is_closed() {
        // The stream ended without End or Failed: the worker died.
        let e = match worker.exit_status().await {
            Some(_) if worker.killed_by_daemon.load(Ordering::Acquire) => {
                QueryError::Unavailable("the account's query worker was stopped; retry".into())
            }
            Some(status) => {
                if !worker.death_reported.swap(true, Ordering::AcqRel) {
                    metrics::counter!("duckpond_query_worker_crashes_total").increment(1);
                    tracing::warn!(%status, socket = %worker.socket.display(), "a query stopped its account's query worker");
                }
                QueryError::Crashed(describe(status))
            }
            None => QueryError::Unavailable("the query worker closed the connection".into()),
        };
        let _ = tx.send(Message::Failed(e)).await;
    }
    drop((rd, wr));
    *worker.idle_since.lock().expect("worker lock") = Instant::now();
    worker.active.fetch_sub(1, Ordering::AcqRel);
}

fn start(decoder: &mut StreamDecoder, payload: &[u8]) -> Vec<Message> {
    let broken =
        |e: String| vec![Message::Failed(QueryError::Unavailable(format!("a broken result from the worker: {e}")))];
    let (header, schema_ipc) = match wire::split_start(payload) {
        Ok(s) => s,
        Err(e) => return broken(e.to_string()),
    };
    // The decoder takes the schema in only once the next message's bytes
    // arrive (a body-less message ends its input), so it is read here too.
    let schema = match StreamReader::try_new(schema_ipc, None) {
        Ok(r) => r.schema(),
        Err(e) => return broken(e.to_string()),
    };
    if let Err(e) = decoder.decode(&mut Buffer::from(schema_ipc.to_vec())) {
        return broken(e.to_string());
    }
    vec![Message::Start { schema, snapshot_id: header.snapshot_id, as_text: header.as_text }]
}

fn batches(decoder: &mut StreamDecoder, payload: Vec<u8>) -> Vec<Message> {
    let mut buf = Buffer::from(payload);
    let mut out = Vec::new();
    while !buf.is_empty() {
        match decoder.decode(&mut buf) {
            Ok(Some(b)) => out.push(Message::Batch(b)),
            Ok(None) => {}
            Err(e) => {
                out.push(Message::Failed(QueryError::Unavailable(format!("a broken result from the worker: {e}"))));
                break;
            }
        }
    }
    out
}

/// What the decoder still holds at the end of the stream: a batch without
/// body bytes (every column of Arrow's Null type) is only decoded once more
/// bytes follow, so the end-of-stream marker is fed to it.
fn end(decoder: &mut StreamDecoder) -> Vec<Message> {
    batches(decoder, END_OF_STREAM.to_vec())
}

/// "killed by SIGSEGV", "exit status 134", ...
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGSEGV) => "it was killed by SIGSEGV; a stack overflow, typically".into(),
        Some(libc::SIGKILL) => "it was killed by SIGKILL; the kernel's out-of-memory killer, typically".into(),
        Some(libc::SIGABRT) => "it aborted (SIGABRT); a stack overflow or a failed assertion, typically".into(),
        Some(sig) => format!("it was killed by signal {sig}"),
        None => format!("it exited with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, NullArray};
    use arrow::ipc::writer::StreamWriter;
    use arrow::record_batch::RecordBatch;

    use super::*;

    #[test]
    fn a_batch_without_body_bytes_arrives_at_the_end() {
        let batch = RecordBatch::try_from_iter(vec![("x", Arc::new(NullArray::new(3)) as ArrayRef)]).unwrap();
        let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).unwrap();
        let schema_ipc = std::mem::take(w.get_mut());
        w.write(&batch).unwrap();
        let batch_ipc = std::mem::take(w.get_mut());
        let mut decoder = StreamDecoder::new();
        let header = wire::StartHeader { snapshot_id: None, as_text: vec![None] };
        assert!(matches!(
            &start(&mut decoder, &wire::start_payload(&header, &schema_ipc))[..],
            [Message::Start { .. }]
        ));
        // The decoder cannot finish a body-less batch from its own bytes...
        assert!(batches(&mut decoder, batch_ipc).is_empty());
        // ...the end does.
        match &end(&mut decoder)[..] {
            [Message::Batch(b)] => assert_eq!(b.num_rows(), 3),
            other => panic!("{} messages at the end", other.len()),
        }
    }
}

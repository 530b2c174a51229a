//! Running one query: admission (a per-account limit with a short queue),
//! execution on a blocking thread that streams Arrow batches through a
//! small bounded channel (memory stays bounded whatever the result size),
//! a deadline, and cancellation: dropping the [`Running`] query (the
//! client went away, the deadline passed, enough rows were read)
//! interrupts DuckDB.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use duckdb::InterruptHandle;
use duckpond_compactor::LAKE_ALIAS;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::AccountEngine;
use crate::accounts::AccountId;

/// Batches buffered between DuckDB and the HTTP body.
pub const CHANNEL_BATCHES: usize = 2;

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// DuckDB refused it: bad SQL, unknown table, conversion, ... (400).
    Invalid(String),
    /// The sandbox refused it (403).
    Denied(String),
    /// Over the deadline, interrupted (408).
    TimedOut,
    /// Storage or catalog unreachable (503).
    Unavailable(String),
}

impl QueryError {
    fn of_duckdb(msg: String) -> Self {
        if msg.contains("Permission Error") || msg.contains("disabled by configuration") {
            QueryError::Denied(msg)
        } else if msg.contains("INTERRUPT") || msg.contains("Interrupted") {
            QueryError::TimedOut
        } else if msg.starts_with("IO Error") && !msg.contains("No files found") {
            QueryError::Unavailable(msg)
        } else {
            QueryError::Invalid(msg)
        }
    }
}

/// What the producer thread sends.
pub enum Message {
    /// The result's schema and the snapshot it reads; always first.
    Start {
        /// Result schema.
        schema: SchemaRef,
        /// The snapshot the query saw.
        snapshot_id: Option<i64>,
    },
    /// A batch of rows.
    Batch(RecordBatch),
    /// The query failed after it started.
    Failed(QueryError),
}

/// A query in flight. Dropping it interrupts DuckDB and frees its slot.
pub struct Running {
    /// Results, in order; the channel closes at the end.
    pub rx: mpsc::Receiver<Message>,
    interrupt: Arc<InterruptHandle>,
    _permit: OwnedSemaphorePermit,
    done: bool,
}

impl Running {
    /// Marks the query as finished normally (no interrupt on drop).
    pub fn finish(&mut self) {
        self.done = true;
    }

    /// Interrupts DuckDB now.
    pub fn interrupt(&self) {
        self.interrupt.interrupt();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.interrupt.interrupt();
        }
    }
}

/// Per-account concurrency slots; a changed limit takes effect for new
/// queries.
#[derive(Debug, Default)]
pub struct Admission {
    slots: Mutex<HashMap<AccountId, (u32, Arc<Semaphore>)>>,
}

impl Admission {
    /// Waits up to `queue` for one of `limit` slots; None when none freed.
    pub async fn acquire(&self, account: &AccountId, limit: u32, queue: Duration) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut slots = self.slots.lock().expect("admission lock");
            let entry =
                slots.entry(account.clone()).or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))));
            if entry.0 != limit {
                *entry = (limit, Arc::new(Semaphore::new(limit as usize)));
            }
            entry.1.clone()
        };
        tokio::time::timeout(queue, sem.acquire_owned()).await.ok().and_then(Result::ok)
    }
}

/// Starts `sql` (already checked by [`super::guard`]) on a connection of
/// `engine`; returns once it runs. At most `max_rows` rows are produced.
pub async fn start(
    engine: &Arc<AccountEngine>,
    sql: String,
    max_rows: Option<u64>,
    permit: OwnedSemaphorePermit,
) -> Result<Running, QueryError> {
    // Even opening a connection reads the catalog (`USE lake`), which can
    // wait on the catalog's lock while a flush commits: never on a runtime
    // worker, or a few such waits stall every request of the daemon.
    let e = engine.clone();
    let conn = tokio::task::spawn_blocking(move || e.connection())
        .await
        .map_err(|e| QueryError::Unavailable(format!("query task failed: {e}")))?
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let interrupt = conn.interrupt_handle();
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    tokio::task::spawn_blocking(move || produce(conn, &sql, max_rows, tx));
    Ok(Running { rx, interrupt, _permit: permit, done: false })
}

fn produce(conn: duckdb::Connection, sql: &str, max_rows: Option<u64>, tx: mpsc::Sender<Message>) {
    let fail = |tx: &mpsc::Sender<Message>, e: QueryError| {
        let _ = tx.blocking_send(Message::Failed(e));
    };
    // One read transaction: the snapshot id reported is the one the query
    // reads (DuckLake pins it at first access).
    if let Err(e) = conn.execute_batch("BEGIN TRANSACTION") {
        return fail(&tx, QueryError::of_duckdb(e.to_string()));
    }
    let snapshot_id: Option<i64> =
        conn.query_row(&format!("SELECT id FROM {LAKE_ALIAS}.current_snapshot()"), [], |r| r.get(0)).ok();
    let mut stmt = match conn.prepare(sql) {
        Ok(s) => s,
        Err(e) => return fail(&tx, QueryError::of_duckdb(e.to_string())),
    };
    let stream = match stmt.stream_arrow([]) {
        Ok(s) => s,
        Err(e) => return fail(&tx, QueryError::of_duckdb(e.to_string())),
    };
    let schema = stream.get_schema();
    if tx.blocking_send(Message::Start { schema, snapshot_id }).is_err() {
        return;
    }
    let mut stream = stream;
    let mut left = max_rows.unwrap_or(u64::MAX);
    while left > 0 {
        // The duckdb crate panics when fetching fails mid-stream (an
        // interrupt, a conversion error in a later chunk): turn it back into
        // an error.
        let next = std::panic::catch_unwind(AssertUnwindSafe(|| stream.next()));
        let batch = match next {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "query failed".into());
                return fail(&tx, QueryError::of_duckdb(msg));
            }
        };
        let batch = if (batch.num_rows() as u64) > left { batch.slice(0, left as usize) } else { batch };
        left -= batch.num_rows() as u64;
        if tx.blocking_send(Message::Batch(batch)).is_err() {
            return; // The reader is gone; Running's drop interrupts.
        }
    }
    drop(stream);
    drop(stmt);
    let _ = conn.execute_batch("COMMIT");
}

/// Time left until `deadline`.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

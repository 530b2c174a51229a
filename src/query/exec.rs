//! Running one query: admission (a per-account limit with a short queue),
//! execution in the account's query worker ([`super::worker`]) that
//! streams Arrow batches back through a small bounded channel (memory
//! stays bounded whatever the result size), a deadline, and cancellation:
//! dropping the [`Running`] query (the client went away, the deadline
//! passed, enough rows were read) closes its connection to the worker,
//! which interrupts DuckDB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use duckpond_compactor::LAKE_ALIAS;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::accounts::AccountId;

/// Batches buffered between DuckDB and the HTTP body.
pub const CHANNEL_BATCHES: usize = 2;

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryError {
    /// DuckDB refused it: bad SQL, unknown table, conversion, ... (400).
    Invalid(String),
    /// A result column has a type the asked format cannot carry exactly
    /// (found before the first byte; 400 naming the column).
    Unrepresentable {
        /// The column.
        column: String,
        /// Its DuckDB type.
        duckdb_type: String,
        /// The format asked for.
        format: String,
    },
    /// The sandbox refused it (403).
    Denied(String),
    /// Over the deadline, interrupted (408).
    TimedOut,
    /// Time travel to a snapshot that does not exist or has expired (404).
    NoSnapshot(i64),
    /// The query's worker process died under it (a native crash such as a
    /// stack overflow, or the kernel's OOM killer): the query is what the
    /// account sent, so 400; the worker is started afresh for the next one.
    Crashed(String),
    /// Storage or catalog unreachable (503).
    Unavailable(String),
}

impl QueryError {
    pub(crate) fn of_duckdb(msg: String) -> Self {
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
        /// Per column, DuckDB's type name where the column arrives as text
        /// in place of its own type (see [`Carrier`]).
        as_text: Vec<Option<String>>,
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
    cancel: Option<oneshot::Sender<()>>,
    _permit: OwnedSemaphorePermit,
    done: bool,
}

impl Running {
    /// A query whose results arrive on `rx`; `cancel` fires to stop it.
    pub(crate) fn new(rx: mpsc::Receiver<Message>, cancel: oneshot::Sender<()>, permit: OwnedSemaphorePermit) -> Self {
        Self { rx, cancel: Some(cancel), _permit: permit, done: false }
    }

    /// Marks the query as finished normally (no interrupt on drop).
    pub fn finish(&mut self) {
        self.done = true;
    }

    /// Interrupts DuckDB now.
    pub fn interrupt(&mut self) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.interrupt();
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

/// What the result will be encoded as, which decides how DuckDB hands it
/// over. DuckDB's Arrow export is exact for most types but not all: TIMETZ
/// loses its offset, BIT its length, UHUGEINT >= 2^127 wraps, BIGNUM is an
/// opaque blob. So:
/// - [`Carrier::Csv`]: every column is cast to VARCHAR by DuckDB (its CSV
///   writer's text: nested values, infinities, offsets as DuckDB prints
///   them);
/// - [`Carrier::Json`]: the columns of those types (at any depth) are cast
///   to VARCHAR, the rest stay typed;
/// - [`Carrier::Arrow`] / [`Carrier::Parquet`]: such a column is refused
///   before the first byte ([`QueryError::Unrepresentable`]), as are types
///   the Parquet writer cannot encode (UNION, month-day-nano INTERVAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Carrier {
    /// JSON rows.
    Json,
    /// A CSV download.
    Csv,
    /// An Arrow IPC stream download.
    Arrow,
    /// A Parquet download.
    Parquet,
}

impl Carrier {
    fn name(self) -> &'static str {
        match self {
            Carrier::Json => "json",
            Carrier::Csv => "csv",
            Carrier::Arrow => "arrow",
            Carrier::Parquet => "parquet",
        }
    }
}

/// Runs `sql` (already checked by [`super::guard`]) on `conn`, handing
/// each [`Message`] to `send` (false: the reader is gone, stop). At most
/// `max_rows` rows are produced. Blocking; runs in the query worker.
pub(crate) fn produce(
    conn: &duckdb::Connection,
    sql: &str,
    max_rows: Option<u64>,
    carrier: Carrier,
    send: &mut dyn FnMut(Message) -> bool,
) {
    macro_rules! fail {
        ($e:expr $(,)?) => {{
            send(Message::Failed($e));
        }};
    }
    // One read transaction: the snapshot id reported is the one the query
    // reads (DuckLake pins it at first access).
    if let Err(e) = conn.execute_batch("BEGIN TRANSACTION") {
        return fail!(QueryError::of_duckdb(e.to_string()));
    }
    let snapshot_id: Option<i64> =
        conn.query_row(&format!("SELECT id FROM {LAKE_ALIAS}.current_snapshot()"), [], |r| r.get(0)).ok();
    let plain = sql.trim_end().trim_end_matches(';').trim_end();
    let explain = plain.trim_start().get(..7).is_some_and(|w| w.eq_ignore_ascii_case("explain"));
    // CSV: DuckDB renders every value (EXPLAIN's columns are text already
    // and it cannot be a subquery). If the wrapped text does not prepare
    // (a trailing comment, say) the query runs as written.
    let wrapped = (carrier == Carrier::Csv && !explain)
        .then(|| format!("SELECT COLUMNS(*)::VARCHAR FROM (\n{plain}\n)"))
        .and_then(|w| conn.prepare(&w).ok());
    let mut stmt = match wrapped {
        Some(s) => s,
        None => match conn.prepare(sql) {
            Ok(s) => s,
            Err(e) => return fail!(QueryError::of_duckdb(e.to_string())),
        },
    };
    // Executed once, streaming; the batches are then fetched from the
    // statement itself (`step`), which also leaves the statement free for
    // asking the columns' DuckDB types without executing again.
    let mut schema = match stmt.stream_arrow([]) {
        Ok(s) => s.get_schema(),
        Err(e) => return fail!(QueryError::of_duckdb(e.to_string())),
    };
    let mut as_text = vec![None; schema.fields().len()];
    if carrier != Carrier::Csv && schema.fields().iter().any(|f| may_hide_inexact(f.data_type())) {
        // The Arrow type alone cannot tell TIME from TIMETZ or BLOB from
        // BIT: ask DuckDB for the columns' own types.
        let inexact: Vec<(usize, String)> = (0..schema.fields().len())
            .filter_map(|i| inexact_type(&stmt.column_logical_type(i)).map(|t| (i, t)))
            .collect();
        if let Some((i, t)) = inexact.first().filter(|_| carrier != Carrier::Json) {
            return fail!(QueryError::Unrepresentable {
                column: schema.field(*i).name().clone(),
                duckdb_type: t.clone(),
                format: carrier.name().into(),
            },);
        }
        if !inexact.is_empty() {
            // JSON: those columns as DuckDB's text, by position (names
            // may repeat), under their own names. The query runs again,
            // wrapped: only for results holding such types.
            let cols: Vec<String> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let cast = if inexact.iter().any(|(j, _)| *j == i) { "::VARCHAR" } else { "" };
                    format!("#{}{cast} AS \"{}\"", i + 1, f.name().replace('"', "\"\""))
                })
                .collect();
            for (i, t) in &inexact {
                as_text[*i] = Some(t.clone());
            }
            let text = format!("SELECT {} FROM (\n{plain}\n)", cols.join(", "));
            drop(stmt);
            stmt = match conn.prepare(&text) {
                Ok(s) => s,
                Err(e) => return fail!(QueryError::of_duckdb(e.to_string())),
            };
            schema = match stmt.stream_arrow([]) {
                Ok(s) => s.get_schema(),
                Err(e) => return fail!(QueryError::of_duckdb(e.to_string())),
            };
        }
    }
    if carrier == Carrier::Parquet {
        if let Some(f) = schema.fields().iter().find(|f| !parquet_encodes(f.data_type())) {
            let t = super::render::type_name(f.data_type());
            return fail!(QueryError::Unrepresentable {
                column: f.name().clone(),
                duckdb_type: t,
                format: "parquet".into()
            },);
        }
    }
    if !send(Message::Start { schema, snapshot_id, as_text }) {
        return;
    }
    let mut left = max_rows.unwrap_or(u64::MAX);
    while left > 0 {
        // `step` returns a failed fetch (an interrupt, a conversion error
        // in a later chunk) as an error, where the crate's iterator panics.
        let batch = match stmt.step() {
            Ok(Some(array)) => RecordBatch::from(&array),
            Ok(None) => break,
            Err(e) => return fail!(QueryError::of_duckdb(e.to_string())),
        };
        let batch = if (batch.num_rows() as u64) > left { batch.slice(0, left as usize) } else { batch };
        left -= batch.num_rows() as u64;
        if !send(Message::Batch(batch)) {
            return; // The reader is gone (and has interrupted the query).
        }
    }
    drop(stmt);
    let _ = conn.execute_batch("COMMIT");
}

/// Whether a column of this Arrow type may be a DuckDB type whose Arrow
/// export is not exact (TIMETZ arrives as TIME, BIT as BLOB, UHUGEINT as
/// DECIMAL(38,0), BIGNUM as an opaque extension).
fn may_hide_inexact(t: &DataType) -> bool {
    use DataType::*;
    match t {
        Time64(_) | Binary | Decimal128(38, 0) | Union(..) => true,
        List(f) | LargeList(f) | FixedSizeList(f, _) | Map(f, _) => may_hide_inexact(f.data_type()),
        Struct(fs) => fs.iter().any(|f| may_hide_inexact(f.data_type())),
        _ => false,
    }
}

/// DuckDB's name of `t` if it (or a type inside it) has no exact Arrow form.
fn inexact_type(t: &duckdb::core::LogicalTypeHandle) -> Option<String> {
    use duckdb::core::LogicalTypeId as Id;
    let name = match t.id() {
        Id::TimeTZ => "TIMETZ",
        Id::Bit => "BIT",
        Id::Bignum => "BIGNUM",
        Id::UHugeint => "UHUGEINT",
        Id::List | Id::Array | Id::Struct | Id::Map | Id::Union => {
            let inner = (0..t.num_children()).find_map(|i| inexact_type(&t.child(i)))?;
            return Some(format!("{inner} (nested)"));
        }
        _ => return None,
    };
    Some(name.to_string())
}

/// Whether the Parquet writer can encode every value of `t` exactly.
fn parquet_encodes(t: &DataType) -> bool {
    use DataType::*;
    match t {
        Union(..) | RunEndEncoded(..) | Interval(arrow::datatypes::IntervalUnit::MonthDayNano) => false,
        List(f) | LargeList(f) | FixedSizeList(f, _) | Map(f, _) => parquet_encodes(f.data_type()),
        Struct(fs) => !fs.is_empty() && fs.iter().all(|f| parquet_encodes(f.data_type())),
        _ => true,
    }
}

/// Time left until `deadline`.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

//! Arrow IPC streams: decoded as the body arrives, cut into log records of
//! about `limits.stream_record_target_bytes`, appended in order.
//!
//! Resuming after a failure: batches are counted from 0 in stream order and
//! records are appended one at a time and in order, so what was kept is
//! always a prefix: the first `batches_kept` batches. A stream that breaks
//! (truncated, corrupt: 400) keeps every batch that arrived whole before the
//! break; one that is refused (409 conflict, 413, 429, 507, 408) keeps only
//! the records already logged. The reply, or the error's `details`, says how
//! many; a client resumes by re-sending from batch `batches_kept` on, and
//! nothing is duplicated.
//!
//! Memory per stream is bounded by two records (one being appended, one
//! being filled) plus one batch being decoded, which may not exceed
//! `wal.max_record_bytes` (413).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use bytes::Bytes;
use duckpond_compactor::storable::StoragePlan;
use duckpond_compactor::{AccountCompactor, CompactorError};
use duckpond_schema::{LogRecord, TableName};
use duckpond_wal::LsnRange;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use super::body::IngestBody;
use crate::server::error::ApiError;

/// Content-Type of an Arrow IPC stream.
pub const ARROW_STREAM_CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// What a stream delivered; on failure, what was kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StreamOutcome {
    /// The table.
    pub table: String,
    /// Batches durably logged: the first `batches_kept` of the stream.
    pub batches_kept: u64,
    /// Rows in them.
    pub rows_kept: u64,
    /// Bytes of the body read.
    pub bytes_received: u64,
    /// Log position of the last kept batch (null if none).
    pub last_lsn: Option<u64>,
    /// The log appends of the kept batches (what a wait for the commit
    /// checks: other writers' records lie between them).
    #[serde(skip)]
    pub appends: Vec<LsnRange>,
    /// Whether the kept batches are in a committed snapshot (`?wait=committed`).
    pub committed: bool,
    /// The snapshot holding them (`?wait=committed`).
    pub snapshot_id: Option<i64>,
}

struct Pending {
    batches: Vec<RecordBatch>,
    rows: u64,
    bytes: usize,
}

type Inflight = JoinHandle<(Result<LsnRange, CompactorError>, u64, u64)>;

/// Reads `body` as an Arrow IPC stream into `table`. On failure returns the
/// error together with what was kept.
pub async fn ingest<S, E>(
    pipeline: Arc<AccountCompactor>,
    table: TableName,
    body: &mut IngestBody<S>,
    record_target_bytes: u64,
    max_record_bytes: u64,
    max_nesting_depth: usize,
) -> Result<StreamOutcome, (ApiError, StreamOutcome)>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut out = StreamOutcome { table: table.to_string(), ..Default::default() };
    let mut decoder = StreamDecoder::new();
    // The schema the lake gets (crate::storable): what is logged.
    let mut schema: Option<SchemaRef> = None;
    let mut plan: Option<StoragePlan> = None;
    let mut pending = Pending { batches: Vec::new(), rows: 0, bytes: 0 };
    let mut inflight: Option<Inflight> = None;
    // Bytes fed to the decoder since it last produced a batch: what it may
    // be buffering. Bounded so one huge message cannot exhaust memory.
    let mut undecoded: u64 = 0;
    let mut logged_any = false;
    let mut decoded: u64 = 0;

    let res: Result<(), ApiError> = async {
        loop {
            let Some(chunk) = body.next_chunk().await? else { break };
            undecoded += chunk.len() as u64;
            let mut buf = Buffer::from(chunk);
            while !buf.is_empty() {
                // arrow's decoder panics on some malformed or misaligned
                // input (a dense union's buffers in a chunk at an odd
                // offset, seen with pyarrow's streams): a bad stream, not
                // a server error.
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode(&mut buf)))
                    .unwrap_or_else(|_| {
                        Err(arrow::error::ArrowError::IpcError("the decoder could not read this message".into()))
                    });
                let batch = step.map_err(|e| {
                    ApiError::BadRequest(format!("invalid Arrow IPC stream after {decoded} complete batches: {e}"))
                })?;
                if schema.is_none() {
                    if let Some(s) = decoder.schema() {
                        duckpond_schema::nesting::check_fields(s.fields().iter().map(|f| f.as_ref()), max_nesting_depth)
                            .map_err(|e| ApiError::BadRequest(format!("the stream's schema is refused: {e}")))?;
                        let p = StoragePlan::new(&s).map_err(|e| {
                            ApiError::BadRequest(format!("the stream's schema cannot be stored exactly: {e}"))
                        })?;
                        let target = p.target().clone();
                        pipeline.check_rows(&table, target.clone()).map_err(|c| ApiError::Conflict(c.to_string()))?;
                        schema = Some(target);
                        plan = Some(p);
                    }
                }
                if let Some(batch) = batch {
                    let batch = plan.as_ref().expect("a batch implies a schema").apply(&batch).map_err(|e| {
                        ApiError::BadRequest(format!(
                            "batch {decoded} of the stream cannot be stored exactly (batches before it are kept): {e}"
                        ))
                    })?;
                    // Its size on the wire (batches may share one buffer, so
                    // their in-memory sizes would overcount).
                    pending.bytes += (undecoded - buf.len() as u64) as usize;
                    undecoded = buf.len() as u64;
                    decoded += 1;
                    pending.rows += batch.num_rows() as u64;
                    pending.batches.push(batch);
                    if pending.bytes as u64 >= record_target_bytes {
                        let s = schema.clone().expect("a batch implies a schema");
                        log_pending(&pipeline, &table, &s, &mut pending, &mut inflight, &mut out).await?;
                        logged_any = true;
                    }
                }
            }
            if undecoded > max_record_bytes {
                return Err(ApiError::PayloadTooLarge(format!(
                    "an Arrow IPC message is larger than {max_record_bytes} bytes (wal.max_record_bytes); send smaller batches"
                )));
            }
        }
        decoder.finish().map_err(|e| {
            ApiError::BadRequest(format!("the Arrow IPC stream ends in the middle of a message: {e}"))
        })?;
        let Some(s) = schema.clone() else {
            return Err(ApiError::BadRequest("the body holds no Arrow IPC schema message".into()));
        };
        // A stream with a schema and no rows still creates the table.
        if !pending.batches.is_empty() || !logged_any {
            log_pending(&pipeline, &table, &s, &mut pending, &mut inflight, &mut out).await?;
        }
        finish_inflight(&mut inflight, &mut out).await
    }
    .await;
    out.bytes_received = body.received();
    match res {
        Ok(()) => Ok(out),
        Err(e) => {
            // A broken stream keeps every batch that arrived whole before
            // the break; a refused one (limits, conflict) keeps only what
            // was already logged. Either way the reply says exactly what.
            let broken = matches!(e, ApiError::BadRequest(_));
            if broken && !pending.batches.is_empty() {
                if let Some(s) = schema.clone() {
                    if let Err(e2) = log_pending(&pipeline, &table, &s, &mut pending, &mut inflight, &mut out).await {
                        tracing::warn!(error = %e2, "keeping the whole batches of a broken stream failed");
                    }
                }
            }
            if let Err(e2) = finish_inflight(&mut inflight, &mut out).await {
                tracing::warn!(error = %e2, "a stream's last append failed after an earlier error");
            }
            Err((e, out))
        }
    }
}

/// Waits for the previous record, then starts appending `pending`.
async fn log_pending(
    pipeline: &Arc<AccountCompactor>,
    table: &TableName,
    schema: &SchemaRef,
    pending: &mut Pending,
    inflight: &mut Option<Inflight>,
    out: &mut StreamOutcome,
) -> Result<(), ApiError> {
    let batches = std::mem::take(&mut pending.batches);
    let (rows, n) = (pending.rows, batches.len() as u64);
    pending.rows = 0;
    pending.bytes = 0;
    let ipc = super::ipc_stream(schema, &batches).map_err(|e| ApiError::Internal(e.into()))?;
    finish_inflight(inflight, out).await?;
    let pipeline = pipeline.clone();
    let record = LogRecord::Rows { table: table.clone(), ipc: Bytes::from(ipc) };
    *inflight = Some(tokio::spawn(async move { (pipeline.append(&[record]).await, n, rows) }));
    Ok(())
}

async fn finish_inflight(inflight: &mut Option<Inflight>, out: &mut StreamOutcome) -> Result<(), ApiError> {
    let Some(task) = inflight.take() else { return Ok(()) };
    let (res, batches, rows) = task.await.map_err(|e| ApiError::Internal(e.into()))?;
    let range = res?;
    out.batches_kept += batches;
    out.rows_kept += rows;
    out.last_lsn = Some(range.last.get());
    out.appends.push(range);
    Ok(())
}

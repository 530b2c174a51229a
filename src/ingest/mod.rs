//! Ingestion: everything a write goes through before the log.
//!
//! - [`body`]: reading a request body as it arrives, with the size cap, the
//!   storage quota, the ingest rate and an idle timeout applied per chunk.
//! - [`upload`]: CSV/JSON/NDJSON/Parquet files spooled to disk, converted to
//!   Parquet by DuckDB, and logged as a staged-file record.
//! - [`csv_dialect`]: how a CSV upload is read (its dialect sniffed from
//!   the head of the body while the rest arrives).
//! - [`upload_types`]: what DuckDB's reading of an upload becomes in the
//!   lake (converted by a documented rule, or refused).
//! - [`arrow_stream`]: an Arrow IPC stream decoded incrementally and logged
//!   in records of bounded size.
//! - [`prometheus`]: remote write 1.0/2.0 decoded, validated, de-duplicated
//!   and turned into the metrics tables.
//! - [`rate`]: the per-account ingest rate (bytes/s).
//!
//! Nothing here writes the lake: a write is durable once its record is in
//! the account's log, and the compactor commits it.

pub mod arrow_stream;
pub mod body;
pub mod csv_dialect;
pub mod prometheus;
pub mod rate;
pub mod upload;
pub mod upload_types;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `batches` (possibly none) as one Arrow IPC stream: the payload of a rows
/// record, or a schema alone for a create command.
pub fn ipc_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    Ok(out)
}

/// How a write treats an existing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Add rows (the table is created by the first write; new columns are added).
    #[default]
    Append,
    /// Drop the table's rows and schema, then write (the new schema wins).
    Replace,
    /// Create the table; 409 if it exists.
    Create,
}

/// `?wait=committed`: reply once the write is in a committed snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// Reply once the write is durable in the log (default).
    Durable,
    /// Reply once the write is visible to queries, with its snapshot id.
    Committed,
}

//! File uploads: the body is spooled to `incoming/`, DuckDB's
//! readers convert it to Parquet in `staged/` (CSV dialect and type
//! sniffing, JSON/NDJSON, Parquet), the Parquet file is fsynced, and one log
//! record names it. The compactor inserts it and deletes it after the commit.
//!
//! A rejected upload leaves nothing: no staged file (a guard deletes both
//! files on every error path), no log record (the schema check runs before
//! the append) and so no table.

use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use duckpond_compactor::InstanceSettings;
use duckpond_schema::{DatasetCommand, LogRecord, StagedFile, StagedFileName, TableName};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::body::IngestBody;
use super::Mode;
use crate::server::error::ApiError;

/// An upload's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma (or sniffed) separated values with a header.
    Csv,
    /// A JSON array of objects (or any layout DuckDB's `read_json` detects).
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// From `?format=`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            "parquet" => Ok(Format::Parquet),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "unknown format {other:?}; use csv, json, ndjson or parquet"
            ))),
        }
    }

    /// From a Content-Type (None: not one of ours).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        Some(match essence.as_str() {
            "text/csv" | "application/csv" => Format::Csv,
            "application/json" => Format::Json,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines" => {
                Format::Ndjson
            }
            "application/vnd.apache.parquet" | "application/parquet" | "application/x-parquet" => Format::Parquet,
            _ => return None,
        })
    }

    /// From a file name's extension.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let ext = Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
        Self::parse(&ext).ok()
    }

    /// File name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Parquet => "parquet",
        }
    }
}

/// What an upload wrote.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadOutcome {
    /// The table.
    pub table: String,
    /// The format read.
    pub format: Format,
    /// The mode applied.
    pub mode: Mode,
    /// Rows converted.
    pub rows: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Size of the Parquet file staged.
    pub parquet_bytes: u64,
    /// Log position of the write (its last record).
    pub lsn: u64,
    /// Whether the write is in a committed snapshot (only with `?wait=committed`).
    pub committed: bool,
    /// The snapshot holding it (with `?wait=committed`).
    pub snapshot_id: Option<i64>,
}

/// Deletes its files when dropped, unless kept: every early return of an
/// upload cleans up after itself.
#[derive(Debug, Default)]
pub struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    /// Deletes `path` on drop.
    pub fn add(&mut self, path: PathBuf) {
        self.0.push(path);
    }
    /// Keeps `path` (it is now named by the log).
    pub fn keep(&mut self, path: &Path) {
        self.0.retain(|p| p != path);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A fresh random file id (128 bits, hex).
pub fn new_file_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Writes the body to `incoming/<id>.<ext>`. Not fsynced, on purpose:
/// nothing is acknowledged from this file. Durability starts with the
/// Parquet file converted from it, which is fsynced before the log record
/// that names it; a crash before that loses only an unacknowledged upload,
/// whose leftovers the next pipeline open deletes.
pub async fn spool<S, E>(body: &mut IngestBody<S>, path: &Path) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let io = |e: std::io::Error| ApiError::Internal(anyhow::anyhow!("spooling an upload to {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let file = tokio::fs::File::create(path).await.map_err(io)?;
    // Body chunks are small; each tokio file write is a blocking-pool hop.
    let mut file = tokio::io::BufWriter::with_capacity(SPOOL_BUFFER_BYTES, file);
    while let Some(chunk) = body.next_chunk().await? {
        file.write_all(&chunk).await.map_err(|e| storage_error(e, path))?;
    }
    file.flush().await.map_err(|e| storage_error(e, path))?;
    Ok(())
}

/// Where an upload with this id and format is spooled.
pub fn spool_path(incoming: &Path, id: &str, format: Format) -> PathBuf {
    incoming.join(format!("{id}.{}", format.extension()))
}

/// Write buffer of an upload being spooled.
const SPOOL_BUFFER_BYTES: usize = 1024 * 1024;

fn storage_error(e: std::io::Error, path: &Path) -> ApiError {
    if e.raw_os_error() == Some(28) {
        ApiError::InsufficientStorage("the server's disk is full; the upload was not stored".into())
    } else {
        ApiError::Internal(anyhow::anyhow!("writing {}: {e}", path.display()))
    }
}

/// The result of a conversion.
#[derive(Debug)]
pub struct Converted {
    /// Rows written.
    pub rows: u64,
    /// Size of the Parquet file.
    pub parquet_bytes: u64,
    /// Its schema as Arrow sees it.
    pub schema: SchemaRef,
}

/// Converts `src` to Parquet at `dst` with DuckDB, fsyncs it and its
/// directory. Blocking. DuckDB's reader errors (with the line or position
/// it reports) become 400, with the server's paths taken out.
pub fn convert(src: &Path, dst: &Path, format: Format, settings: &InstanceSettings) -> Result<Converted, ApiError> {
    let conn = conversion_instance(src, dst, settings)?;
    let lit = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "''"));
    let copy = |reader: &str| -> Result<u64, ApiError> {
        let sql = format!("COPY (SELECT * FROM {reader}) TO {} (FORMAT parquet)", lit(dst));
        conn.execute(&sql, []).map(|n| n as u64).map_err(|e| {
            let msg = e.to_string().replace(&src.display().to_string(), "<upload>");
            ApiError::BadRequest(format!("the {} upload could not be read: {msg}", format.extension()))
        })
    };
    let read_schema = || -> Result<SchemaRef, ApiError> {
        std::fs::File::open(dst)
            .map_err(parquet::errors::ParquetError::from)
            .and_then(parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new)
            .map(|b| b.schema().clone())
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading back {}: {e}", dst.display())))
    };
    let (rows, schema) = match format {
        Format::Csv => {
            // Read with DuckDB's own sniffing first; only when the result
            // could be the sniffer explaining a malformed file away (see
            // `csv_reader`) ask the sniffer what it did and read it again
            // strictly. That costs a second sniff only for suspect files.
            let sniffed = format!("read_csv({}, strict_mode = true)", lit(src));
            match copy(&sniffed).and_then(|rows| Ok((rows, read_schema()?))) {
                Ok((rows, schema)) if !csv_looks_explained_away(src, &schema) => (rows, schema),
                first => match csv_reader(&conn, src)? {
                    reader if reader == sniffed => first?,
                    strict => {
                        let _ = std::fs::remove_file(dst);
                        (copy(&strict)?, read_schema()?)
                    }
                },
            }
        }
        Format::Json => (copy(&format!("read_json({}, format = 'auto')", lit(src)))?, read_schema()?),
        Format::Ndjson => (copy(&format!("read_json({}, format = 'newline_delimited')", lit(src)))?, read_schema()?),
        Format::Parquet => (copy(&format!("read_parquet({})", lit(src)))?, read_schema()?),
    };
    if schema.fields().is_empty() {
        return Err(ApiError::BadRequest("the upload has no columns".into()));
    }
    let file = std::fs::File::open(dst).map_err(|e| ApiError::Internal(e.into()))?;
    file.sync_all().map_err(|e| storage_error(e, dst))?;
    if let Some(dir) = dst.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| storage_error(e, dst))?;
    }
    let parquet_bytes = file.metadata().map_err(|e| ApiError::Internal(e.into()))?.len();
    Ok(Converted { rows, parquet_bytes, schema })
}

/// Whether a CSV converted with DuckDB's sniffing (into `schema`) shows a
/// sign of the sniffer having explained the file away: one column, or a
/// column name that is not a field of the file's first line (split at any of
/// the delimiters `csv_reader` knows: the header came from a later line).
/// Renamed columns (duplicates, empty names, no header, quoted delimiters)
/// also trip it, which costs only the sniffer's confirmation.
fn csv_looks_explained_away(src: &Path, schema: &SchemaRef) -> bool {
    let first_line = first_line(src);
    let fields: std::collections::HashSet<&str> =
        CSV_DELIMITERS.iter().flat_map(|d| first_line.split(*d)).map(|f| f.trim().trim_matches('"')).collect();
    schema.fields().len() == 1 || schema.fields().iter().any(|f| !fields.contains(f.name().as_str()))
}

/// The delimiters a header line is checked for.
const CSV_DELIMITERS: [char; 4] = [',', ';', '\t', '|'];

/// The file's first line (within its first `CSV_HEADER_PROBE_BYTES`).
fn first_line(src: &Path) -> String {
    let mut head = vec![0u8; CSV_HEADER_PROBE_BYTES];
    let n = std::fs::File::open(src).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_string()
}

/// `read_csv` with the sniffed dialect, unless the sniffer explained the
/// file away: on small malformed files it may skip leading lines or fall
/// back to one column. Those are read with the delimiter the header shows
/// and strict parsing, so DuckDB reports the bad line instead of silently
/// dropping or merging rows.
fn csv_reader(conn: &duckdb::Connection, src: &Path) -> Result<String, ApiError> {
    let path = format!("'{}'", src.display().to_string().replace('\'', "''"));
    let bad = |e: duckdb::Error| {
        let msg = e.to_string().replace(&src.display().to_string(), "<upload>");
        ApiError::BadRequest(format!("the csv upload could not be read: {msg}"))
    };
    let (columns, skipped): (i64, i64) = conn
        .query_row(&format!("SELECT len(Columns), SkipRows FROM sniff_csv({path})"), [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(bad)?;
    let first_line = first_line(src);
    let delim = CSV_DELIMITERS
        .into_iter()
        .map(|d| (first_line.matches(d).count(), d))
        .max()
        .filter(|(count, _)| *count > 0)
        .map(|(_, d)| d);
    match delim {
        Some(d) if skipped > 0 || columns == 1 => {
            let d = if d == '\t' { "\\t".to_string() } else { d.to_string() };
            Ok(format!("read_csv({path}, delim = '{d}', skip = 0, header = true, strict_mode = true)"))
        }
        _ => Ok(format!("read_csv({path}, strict_mode = true)")),
    }
}

/// How much of a CSV upload is read to find its header line.
const CSV_HEADER_PROBE_BYTES: usize = 64 * 1024;

/// A DuckDB instance that can read the upload and write the staged file and
/// nothing else: no other directory, no extension loading, no settings
/// changes. Memory and threads as the account's engines. Insertion order is
/// not preserved (rows of one upload may be reordered between DuckDB's
/// threads): a table has no row order, and the parallel writer is faster.
fn conversion_instance(src: &Path, dst: &Path, settings: &InstanceSettings) -> Result<duckdb::Connection, ApiError> {
    let dirs: Vec<String> = [src, dst]
        .iter()
        .filter_map(|p| p.parent())
        .map(|d| format!("'{}/'", d.display().to_string().replace('\'', "''")))
        .collect();
    let temp = src.parent().map(|d| d.join(".duckdb_tmp")).unwrap_or_default();
    let config = duckdb::Config::default()
        .with("autoinstall_known_extensions", "false")
        .and_then(|c| c.with("autoload_known_extensions", "false"))
        .and_then(|c| c.with("memory_limit", format!("{}MB", settings.memory_limit_mb)))
        .and_then(|c| c.threads(i64::from(settings.threads)))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let conn = duckdb::Connection::open_in_memory_with_flags(config).map_err(|e| ApiError::Internal(e.into()))?;
    conn.execute_batch(&format!(
        "SET temp_directory = '{}'; SET allowed_directories = [{}]; SET enable_external_access = false; \
         SET preserve_insertion_order = false; SET lock_configuration = true;",
        temp.display().to_string().replace('\'', "''"),
        dirs.join(", ")
    ))
    .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(conn)
}

/// The log records of an upload in `mode`.
pub fn records(
    table: &TableName,
    mode: Mode,
    file: StagedFileName,
    converted: &Converted,
) -> Result<Vec<LogRecord>, ApiError> {
    let staged = LogRecord::StagedFile(StagedFile {
        table: table.clone(),
        file,
        rows: converted.rows,
        bytes: converted.parquet_bytes,
    });
    Ok(match mode {
        Mode::Append => vec![staged],
        Mode::Replace => vec![LogRecord::Command(DatasetCommand::Drop { table: table.clone() }), staged],
        Mode::Create => {
            let schema_ipc = super::ipc_stream(&converted.schema, &[]).map_err(|e| ApiError::Internal(e.into()))?;
            vec![LogRecord::Command(DatasetCommand::Create { table: table.clone(), schema_ipc }), staged]
        }
    })
}

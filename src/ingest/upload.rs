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
use duckpond_compactor::lake::sql_string;
use duckpond_compactor::InstanceSettings;
use duckpond_schema::{DatasetCommand, LogRecord, StagedFile, StagedFileName, TableName};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::IngestBody;
use super::csv_dialect::{self, Dialect};
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

/// Writes the body to `incoming/<id>.<ext>`, handing each chunk to the
/// conversion's `preparation` as well. Not fsynced, on purpose: nothing is
/// acknowledged from this file. Durability starts with the Parquet file
/// converted from it, which is fsynced before the log record that names it;
/// a crash before that loses only an unacknowledged upload, whose leftovers
/// the next pipeline open deletes.
pub async fn spool<S, E>(body: &mut IngestBody<S>, path: &Path, preparation: &mut Preparation) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let io = |e: std::io::Error| ApiError::Internal(anyhow::anyhow!("spooling an upload to {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let file = tokio::fs::File::create(path).await.map_err(io)?.into_std().await;
    // Chunks are gathered into batches of SPOOL_BATCH_BYTES, each written
    // with vectored writes on the blocking pool (no copy into a buffer)
    // while the next batch arrives. The file travels with its write.
    let mut writing = tokio::task::spawn_blocking(move || Ok(file));
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let chunk = body.next_chunk().await?;
        let last = chunk.is_none();
        if let Some(chunk) = chunk {
            preparation.feed(&chunk);
            batch_bytes += chunk.len();
            batch.push(chunk);
        }
        if batch_bytes >= SPOOL_BATCH_BYTES || last {
            let file = writing.await.map_err(|e| ApiError::Internal(e.into()))?.map_err(|e| storage_error(e, path))?;
            let chunks = std::mem::take(&mut batch);
            batch_bytes = 0;
            writing = tokio::task::spawn_blocking(move || write_chunks(file, chunks));
        }
        if last {
            writing.await.map_err(|e| ApiError::Internal(e.into()))?.map_err(|e| storage_error(e, path))?;
            return Ok(());
        }
    }
}

/// Writes `chunks` to the end of `file` and hands the file back.
fn write_chunks(mut file: std::fs::File, chunks: Vec<Bytes>) -> std::io::Result<std::fs::File> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(file)
}

/// The DuckDB work a conversion needs before its input is complete, done
/// while the body is still arriving: opening the conversion instance and,
/// for CSV, sniffing the dialect from the body's head (see
/// [`csv_dialect`]). Both run on the blocking pool once there is something
/// to do (a CSV's head is complete), so no thread waits on a slow client.
/// They run outside `limits.max_concurrent_conversions`, which bounds the
/// conversions themselves: a preparation holds an idle instance and at most
/// `SNIFF_HEAD_BYTES` of the body, and sniffs tens of milliseconds. Dropped
/// early (a refused body), a running preparation finishes on its own and
/// deletes the head file it wrote.
pub struct Preparation {
    src: PathBuf,
    dst: PathBuf,
    settings: InstanceSettings,
    head: Vec<u8>,
    task: Option<tokio::task::JoinHandle<Result<Prepared, ApiError>>>,
}

/// A conversion instance, and the dialect of a CSV.
pub struct Prepared {
    conn: duckdb::Connection,
    dialect: Option<Dialect>,
}

impl Preparation {
    /// Starts preparing the conversion of `src` (the spooled body, not yet
    /// written) to `dst`.
    pub fn start(format: Format, src: &Path, dst: &Path, settings: InstanceSettings) -> Self {
        let mut preparation =
            Self { src: src.to_path_buf(), dst: dst.to_path_buf(), settings, head: Vec::new(), task: None };
        if format != Format::Csv {
            preparation.launch(None);
        }
        preparation
    }

    /// Takes the next body chunk (its head, for a CSV).
    fn feed(&mut self, chunk: &[u8]) {
        if self.task.is_some() {
            return;
        }
        let room = csv_dialect::SNIFF_HEAD_BYTES - self.head.len();
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if self.head.len() == csv_dialect::SNIFF_HEAD_BYTES {
            let head = csv_dialect::head_of(std::mem::take(&mut self.head), false);
            self.launch(Some(head));
        }
    }

    fn launch(&mut self, head: Option<Vec<u8>>) {
        let (src, dst, settings) = (self.src.clone(), self.dst.clone(), self.settings);
        self.task = Some(tokio::task::spawn_blocking(move || {
            let conn = conversion_instance(&src, &dst, &settings)?;
            let head_path = src.with_extension("head.csv");
            let dialect = head.and_then(|head| {
                csv_dialect::sniff(&conn, &head_path, &head)
                    .map_err(|e| tracing::debug!(error = %e, "the CSV head did not sniff; read_csv sniffs the file"))
                    .ok()
            });
            Ok(Prepared { conn, dialect })
        }));
    }

    /// Once the whole body is spooled: the prepared instance.
    pub async fn ready(mut self) -> Result<Prepared, ApiError> {
        if self.task.is_none() {
            // A CSV body shorter than its head: sniffed whole.
            let head = csv_dialect::head_of(std::mem::take(&mut self.head), true);
            self.launch(Some(head));
        }
        self.task.take().expect("launched above").await.map_err(|e| ApiError::Internal(e.into()))?
    }
}

/// Where an upload with this id and format is spooled.
pub fn spool_path(incoming: &Path, id: &str, format: Format) -> PathBuf {
    incoming.join(format!("{id}.{}", format.extension()))
}

/// How many body bytes an upload's spool gathers per write.
const SPOOL_BATCH_BYTES: usize = 1024 * 1024;

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
pub fn convert(prepared: Prepared, src: &Path, dst: &Path, format: Format) -> Result<Converted, ApiError> {
    let Prepared { conn, dialect } = prepared;
    let lit = |p: &Path| sql_string(&p.display().to_string());
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
        Format::Csv => (copy(&csv_dialect::reader(src, dialect.as_ref()))?, read_schema()?),
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

/// A DuckDB instance that can read the upload and write the staged file and
/// nothing else: no other directory, no extension loading, no settings
/// changes. Memory and threads as the account's engines. Insertion order is
/// not preserved (rows of one upload may be reordered between DuckDB's
/// threads): a table has no row order, and the parallel writer is faster.
fn conversion_instance(src: &Path, dst: &Path, settings: &InstanceSettings) -> Result<duckdb::Connection, ApiError> {
    let dirs: Vec<String> =
        [src, dst].iter().filter_map(|p| p.parent()).map(|d| sql_string(&format!("{}/", d.display()))).collect();
    let temp = src.parent().map(|d| d.join(".duckdb_tmp")).unwrap_or_default();
    let config = duckdb::Config::default()
        .with("autoinstall_known_extensions", "false")
        .and_then(|c| c.with("autoload_known_extensions", "false"))
        .and_then(|c| c.with("memory_limit", format!("{}MB", settings.memory_limit_mb)))
        .and_then(|c| c.threads(i64::from(settings.threads)))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let conn = duckdb::Connection::open_in_memory_with_flags(config).map_err(|e| ApiError::Internal(e.into()))?;
    conn.execute_batch(&format!(
        "SET temp_directory = {}; SET allowed_directories = [{}]; SET enable_external_access = false; \
         SET preserve_insertion_order = false; SET lock_configuration = true;",
        sql_string(&temp.display().to_string()),
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

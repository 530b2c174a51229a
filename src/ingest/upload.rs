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
use duckpond_compactor::{Extensions, InstanceSettings};
use duckpond_schema::{DatasetCommand, LogRecord, StagedFile, StagedFileName, TableName};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use duckpond_schema::nesting::JsonDepth;

use super::body::IngestBody;
use super::csv_dialect::{self, Dialect, Encoding};
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
            preparation.feed(&chunk)?;
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
    extensions: Extensions,
    /// `?encoding=`, if given (else detected from the head).
    encoding: Option<Encoding>,
    head: Vec<u8>,
    task: Option<tokio::task::JoinHandle<Result<Prepared, ApiError>>>,
    /// JSON bodies: their nesting, followed as they stream.
    depth: Option<JsonDepth>,
}

/// A conversion instance, and the dialect and encoding of a CSV.
pub struct Prepared {
    conn: duckdb::Connection,
    dialect: Option<Dialect>,
    encoding: Encoding,
}

impl Preparation {
    /// Starts preparing the conversion of `src` (the spooled body, not yet
    /// written) to `dst`.
    pub fn start(
        format: Format,
        src: &Path,
        dst: &Path,
        settings: InstanceSettings,
        extensions: Extensions,
        encoding: Option<Encoding>,
        max_nesting_depth: usize,
    ) -> Self {
        let mut preparation = Self {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            settings,
            extensions,
            encoding,
            head: Vec::new(),
            task: None,
            depth: match format {
                Format::Json => Some(JsonDepth::new(max_nesting_depth, true)),
                Format::Ndjson => Some(JsonDepth::new(max_nesting_depth, false)),
                Format::Csv | Format::Parquet => None,
            },
        };
        if format != Format::Csv {
            preparation.launch(None);
        }
        preparation
    }

    /// Takes the next body chunk (its head, for a CSV; every byte of a
    /// JSON body, for its nesting).
    fn feed(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        if let Some(depth) = &mut self.depth {
            depth.feed(chunk).map_err(|e| ApiError::BadRequest(format!("the upload is refused: {e}")))?;
        }
        if self.task.is_some() {
            return Ok(());
        }
        let room = csv_dialect::SNIFF_HEAD_BYTES - self.head.len();
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if self.head.len() == csv_dialect::SNIFF_HEAD_BYTES {
            let head = csv_dialect::head_of(std::mem::take(&mut self.head), false);
            self.launch(Some(head));
        }
        Ok(())
    }

    fn launch(&mut self, head: Option<Vec<u8>>) {
        let (src, dst, settings, ext) = (self.src.clone(), self.dst.clone(), self.settings, self.extensions.clone());
        let encoding = self.encoding.or_else(|| head.as_deref().and_then(Encoding::detect)).unwrap_or_default();
        self.task = Some(tokio::task::spawn_blocking(move || {
            let conn = conversion_instance(&src, &dst, &settings, &ext)?;
            let head_path = src.with_extension("head.csv");
            let dialect = head.and_then(|head| {
                csv_dialect::sniff(&conn, &head_path, &head, encoding)
                    .map_err(|e| tracing::debug!(error = %e, "the CSV head did not sniff; read_csv sniffs the file"))
                    .ok()
            });
            Ok(Prepared { conn, dialect, encoding })
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
/// it reports) become 400, with the server's paths taken out. What the
/// lake could not give back exactly is converted by a documented rule or
/// refused (400 naming the column): see [`super::upload_types`].
/// Refuses a Parquet upload whose schema nests deeper than the limit, read
/// from the footer without building the schema tree.
fn check_parquet_nesting(src: &Path, limit: usize) -> Result<(), ApiError> {
    use duckpond_schema::parquet_footer::{footer_range, schema_shape};
    use std::io::{Read, Seek, SeekFrom};
    let bad = |e: String| ApiError::BadRequest(format!("the parquet upload is refused: {e}"));
    let io = |e: std::io::Error| storage_error(e, src);
    let mut f = std::fs::File::open(src).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len < 12 {
        return Err(bad("not a Parquet file (too short)".into()));
    }
    let mut last8 = [0u8; 8];
    f.seek(SeekFrom::Start(len - 8)).map_err(io)?;
    f.read_exact(&mut last8).map_err(io)?;
    let (start, footer_len) = footer_range(len, last8).map_err(|e| bad(e.to_string()))?;
    let mut footer = vec![0u8; footer_len as usize];
    f.seek(SeekFrom::Start(start)).map_err(io)?;
    f.read_exact(&mut footer).map_err(io)?;
    let shape = schema_shape(&footer).map_err(|e| bad(e.to_string()))?;
    if shape.group_depth > limit {
        return Err(bad(duckpond_schema::nesting::TooDeep { depth: shape.group_depth, limit }.to_string()));
    }
    Ok(())
}

pub fn convert(
    prepared: Prepared,
    src: &Path,
    dst: &Path,
    format: Format,
    max_nesting_depth: usize,
) -> Result<Converted, ApiError> {
    let Prepared { conn, dialect, encoding } = prepared;
    let lit = |p: &Path| sql_string(&p.display().to_string());
    let reader = match format {
        Format::Csv => csv_dialect::reader(src, dialect.as_ref(), encoding),
        Format::Json => format!("read_json({}, format = 'auto')", lit(src)),
        Format::Ndjson => format!("read_json({}, format = 'newline_delimited')", lit(src)),
        Format::Parquet => format!("read_parquet({})", lit(src)),
    };
    let refused =
        |e: super::upload_types::Refused| ApiError::BadRequest(format!("the {} upload {e}", format.extension()));
    if format == Format::Parquet {
        // Before any reader builds the schema tree (both recurse on it).
        check_parquet_nesting(src, max_nesting_depth)?;
        super::upload_types::check_parquet_input(src).map_err(refused)?;
    }
    // CSV readers infer only types the lake keeps (integers beyond 64 bits
    // are read as DOUBLE and checked after the copy); the others are asked
    // what DuckDB read, and the select list converts or refuses.
    let (select, columns) = match format {
        Format::Csv => (super::upload_types::SelectList::all(), Vec::new()),
        _ => {
            let columns = describe(&conn, &reader).map_err(|e| reader_error(&e, src, format, encoding))?;
            (super::upload_types::select_list(&columns).map_err(refused)?, columns)
        }
    };
    let copy = |select: &str, from: &str, to: &Path| -> Result<u64, ApiError> {
        let sql = format!("COPY (SELECT {select} FROM {from}) TO {} (FORMAT parquet)", lit(to));
        conn.execute(&sql, []).map(|n| n as u64).map_err(|e| reader_error(&e.to_string(), src, format, encoding))
    };
    let mut rows = copy(&select.sql(), &reader, dst)?;
    // Second looks, from the staged file's footer: columns with no value
    // and no type of their own are left out; DOUBLE columns reaching 2^53
    // (where integers may have been rounded) are read again as text and,
    // if every value is an integer, stored exactly.
    match super::upload_types::second_look(dst, format, &select.untyped) {
        None => {}
        Some(super::upload_types::Redo::Exclude(cols)) => {
            let first = dst.with_extension("first.parquet");
            std::fs::rename(dst, &first).map_err(|e| storage_error(e, dst))?;
            let res = copy(&super::upload_types::Redo::exclude(&cols), &format!("read_parquet({})", lit(&first)), dst);
            let _ = std::fs::remove_file(&first);
            rows = res?;
        }
        Some(super::upload_types::Redo::Integers(cols)) => {
            let as_text = |cols: &[String]| -> String {
                let text: Vec<(String, String)> = cols.iter().map(|c| (c.clone(), "VARCHAR".to_string())).collect();
                match format {
                    Format::Csv => csv_dialect::reader_with_types(src, dialect.as_ref(), encoding, &text),
                    _ => json_reader_with_columns(src, format, &columns, cols),
                }
            };
            let counts_sql = super::upload_types::non_integer_counts_sql(&as_text(&cols), &cols);
            let counts: Vec<i64> = conn
                .query_row(&counts_sql, [], |r| (0..cols.len()).map(|i| r.get::<_, i64>(i)).collect())
                .map_err(|e| reader_error(&e.to_string(), src, format, encoding))?;
            let exact: Vec<String> =
                cols.iter().zip(&counts).filter(|(_, n)| **n == 0).map(|(c, _)| c.clone()).collect();
            if !exact.is_empty() {
                let alt = dst.with_extension("exact.parquet");
                match copy(&select.with_exact_integers(&exact), &as_text(&exact), &alt) {
                    Ok(n) => {
                        std::fs::rename(&alt, dst).map_err(|e| storage_error(e, dst))?;
                        rows = n;
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&alt);
                        return Err(e);
                    }
                }
            }
        }
    }
    let schema = std::fs::File::open(dst)
        .map_err(parquet::errors::ParquetError::from)
        .and_then(parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new)
        .map(|b| b.schema().clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading back {}: {e}", dst.display())))?;
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

/// `read_json` of `src` with every column given its type as first read
/// (`columns`), except `text`, read as VARCHAR (a JSON number's own text).
fn json_reader_with_columns(src: &Path, format: Format, columns: &[(String, String)], text: &[String]) -> String {
    let layout = if format == Format::Ndjson { "newline_delimited" } else { "auto" };
    let map: Vec<String> = columns
        .iter()
        .map(|(c, t)| {
            let t = if text.contains(c) { "VARCHAR" } else { t.as_str() };
            format!("{}: {}", sql_string(c), sql_string(t))
        })
        .collect();
    format!(
        "read_json({}, format = '{layout}', columns = {{{}}})",
        sql_string(&src.display().to_string()),
        map.join(", ")
    )
}

/// The columns (name, DuckDB type) `reader` produces.
fn describe(conn: &duckdb::Connection, reader: &str) -> Result<Vec<(String, String)>, String> {
    let mut st = conn.prepare(&format!("DESCRIBE SELECT * FROM {reader}")).map_err(|e| e.to_string())?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// A reader's error as the client sees it: DuckDB's own words (with the line
/// or position it names), without the SQL it echoes (ours, naming server
/// paths), and for undecodable text, which encodings can be asked for.
fn reader_error(msg: &str, src: &Path, format: Format, encoding: Encoding) -> ApiError {
    // DuckDB writing its temporary or staged files ran out of space: not
    // the client's fault, and retrying once space returns is right.
    if crate::server::error::says_disk_full(msg) {
        return ApiError::InsufficientStorage("the server's disk is full; the upload was not stored".into());
    }
    let msg = msg.split("\nLINE ").next().unwrap_or(msg).replace(&src.display().to_string(), "<upload>");
    let mut out = format!("the {} upload could not be read: {msg}", format.extension());
    let undecodable = ["Invalid unicode", "invalid unicode", "UTF-8", "UTF8", "utf-8"].iter().any(|k| msg.contains(k));
    if format == Format::Csv && undecodable {
        out.push_str(&format!(
            " (read as {}; if the file is in another encoding, give ?encoding=latin-1 or ?encoding=utf-16)",
            encoding.duckdb_name()
        ));
    }
    ApiError::BadRequest(out)
}

/// A DuckDB instance that can read the upload and write the staged file and
/// nothing else: no other directory, no extension loading, no settings
/// changes. Memory and threads as the account's engines. Insertion order is
/// not preserved (rows of one upload may be reordered between DuckDB's
/// threads): a table has no row order, and the parallel writer is faster.
fn conversion_instance(
    src: &Path,
    dst: &Path,
    settings: &InstanceSettings,
    extensions: &Extensions,
) -> Result<duckdb::Connection, ApiError> {
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
    // Time zones, so zoned timestamps are read as TIMESTAMPTZ as stock
    // DuckDB reads them.
    extensions.load_some(&conn, &["icu"]).map_err(|e| ApiError::Internal(e.into()))?;
    conn.execute_batch(&format!(
        "SET TimeZone = {}; SET temp_directory = {}; SET allowed_directories = [{}]; \
         SET enable_external_access = false; SET preserve_insertion_order = false; SET lock_configuration = true;",
        sql_string(duckpond_compactor::lake::TIME_ZONE),
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

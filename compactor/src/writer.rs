//! [`LakeWriter`]: the single writer of one account's DuckLake. Applies a
//! slice of the log as one DuckLake snapshot whose commit metadata records
//! the highest LSN it contains.
//!
//! Rows arrive as Arrow IPC. Consecutive records of one table with one
//! schema are written to a temporary Parquet file and inserted with
//! `INSERT ... BY NAME SELECT * FROM read_parquet(...)`, so DuckDB does the
//! type mapping, the casts and the NULL-filling of missing columns.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use duckdb::Connection;
use duckpond_schema::{DatasetCommand, LogRecord, TableName};
use duckpond_wal::Lsn;

use crate::durable::DataFiles;
use crate::lake::{sql_string, CatalogLocation, Extensions, InstanceSettings, LakeError};

/// Alias of the attached lake in the writer's DuckDB instance.
pub const LAKE_ALIAS: &str = "lake";
/// Key of the committed LSN in a snapshot's commit extra info (JSON).
pub const LSN_KEY: &str = "duckpond_lsn";
/// Compression of the lake's Parquet files.
pub const PARQUET_COMPRESSION: &str = "zstd";
/// Parquet format version of the lake's files (2: delta encodings).
pub const PARQUET_VERSION: &str = "2";
/// Author recorded in DuckLake snapshots written by the compactor.
pub const COMMIT_AUTHOR: &str = "duckpond-compactor";

/// What one flush committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    /// The DuckLake snapshot created (None when there was nothing to do).
    pub snapshot_id: Option<i64>,
    /// Highest LSN included.
    pub lsn: Lsn,
    /// Records applied.
    pub records: u64,
    /// Rows inserted.
    pub rows: u64,
    /// Arrow IPC bytes consumed.
    pub bytes: u64,
    /// Tables touched.
    pub tables: Vec<String>,
    /// Records that could never apply, moved to the quarantine directory.
    pub quarantined: Vec<Lsn>,
}

/// Why applying a slice of the log failed. Every failure rolls the whole
/// transaction back; the class says what the caller may do next.
///
/// The classification is made once, here, from what failed: a record's
/// content that the lake refuses is [`ApplyError::Rejected`] (no retry can
/// fix it); the writer's DuckDB instance invalidated by an internal error is
/// [`ApplyError::Broken`] (reopen it, then find the record that caused it);
/// everything else, I/O and an unreachable catalog above all, is
/// [`ApplyError::Lake`] and retried as it is.
#[derive(Debug)]
pub enum ApplyError {
    /// The lake refused the content of these records (applied together as
    /// one insert). One LSN: that record can never apply. Several: at least
    /// one of them cannot; apply them one by one to tell which.
    Rejected {
        /// The records being applied when the lake refused.
        lsns: Vec<Lsn>,
        /// The lake's reason.
        reason: String,
    },
    /// The writer's instance is unusable (a DuckDB internal error
    /// invalidates it); these records were being applied.
    Broken {
        /// The records being applied.
        lsns: Vec<Lsn>,
        /// What DuckDB said.
        error: LakeError,
    },
    /// Anything else (I/O, catalog unavailable); retry later.
    Lake(LakeError),
}

impl From<LakeError> for ApplyError {
    fn from(e: LakeError) -> Self {
        ApplyError::Lake(e)
    }
}

/// The writer's DuckDB instance with the account's lake attached read-write.
pub struct LakeWriter {
    conn: Connection,
    scratch_dir: PathBuf,
    staged_dir: PathBuf,
    location: CatalogLocation,
    files: DataFiles,
}

impl LakeWriter {
    /// Opens the writer. `scratch_dir` holds temporary Parquet files (inside
    /// the account's directory, so they count against its storage);
    /// `staged_dir` holds the uploads that staged-file records name.
    pub fn open(
        extensions: &Extensions,
        settings: &InstanceSettings,
        location: &CatalogLocation,
        scratch_dir: &Path,
        staged_dir: &Path,
    ) -> Result<Self, LakeError> {
        for dir in [scratch_dir, staged_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|source| LakeError::Io { context: format!("creating {}", dir.display()), error: source })?;
        }
        let conn = extensions.open_instance(settings)?;
        // Inlining off: every flush writes Parquet, avoiding inlined-data
        // flush bugs (ducklake #650, #1368) and catalog bloat (#572).
        let attach = location.attach_sql(LAKE_ALIAS, false);
        let attach = format!("{}, DATA_INLINING_ROW_LIMIT 0)", attach.trim_end_matches(')'));
        conn.execute_batch(&attach).map_err(LakeError::duckdb("attaching the account's DuckLake"))?;
        // zstd and Parquet 2 (delta encodings): about half the bytes of the
        // defaults (snappy, Parquet 1) on metrics-like data (6.9 -> 3.5
        // bytes per sample measured); kept in the catalog, so every writer
        // of this lake (including maintenance rewrites) uses them.
        conn.execute_batch(&format!(
            "CALL {LAKE_ALIAS}.set_option('parquet_compression', '{PARQUET_COMPRESSION}'); \
             CALL {LAKE_ALIAS}.set_option('parquet_version', '{PARQUET_VERSION}');"
        ))
        .map_err(LakeError::duckdb("setting the lake's Parquet options"))?;
        let files = DataFiles::open(&location.data_path)
            .map_err(|error| LakeError::Io { context: format!("listing {}", location.data_path.display()), error })?;
        Ok(Self {
            conn,
            scratch_dir: scratch_dir.to_path_buf(),
            staged_dir: staged_dir.to_path_buf(),
            location: location.clone(),
            files,
        })
    }

    /// Every table of the lake with its schema as Arrow sees it.
    pub fn table_schemas(&self) -> Result<Vec<(TableName, SchemaRef)>, LakeError> {
        let mut st = self
            .conn
            .prepare("SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'")
            .map_err(LakeError::duckdb("listing tables"))?;
        let names: Vec<String> = st
            .query_map([LAKE_ALIAS], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(LakeError::duckdb("listing tables"))?;
        let mut out = Vec::new();
        for name in names {
            // Tables the lake has but our rules would not name (created by
            // hand through a notebook, say) are not ours to write to.
            let Ok(table) = TableName::parse(&name) else { continue };
            let mut st = self
                .conn
                .prepare(&format!("SELECT * FROM {LAKE_ALIAS}.main.{} LIMIT 0", table.quoted()))
                .map_err(LakeError::duckdb("reading a table's schema"))?;
            let schema = st.query_arrow([]).map_err(LakeError::duckdb("reading a table's schema"))?.get_schema();
            out.push((table.clone(), self.with_extensions(&table, schema)?));
        }
        Ok(out)
    }

    /// DuckDB's Arrow export shows UUID and JSON columns as strings; the
    /// registry must tell them apart (text into a UUID column fails the
    /// insert), so such columns get the canonical extension types a write
    /// of them carries (arrow.uuid on 16 bytes, arrow.json on a string).
    /// (`arrow_lossless_conversion` would do it too, but also turns
    /// BOOLEAN into arrow.bool8 on Int8.)
    fn with_extensions(&self, table: &TableName, schema: SchemaRef) -> Result<SchemaRef, LakeError> {
        use arrow::datatypes::{DataType, Field, Schema};
        let mut st = self
            .conn
            .prepare(
                "SELECT column_name, data_type FROM duckdb_columns() \
                 WHERE database_name = ? AND schema_name = 'main' AND table_name = ?",
            )
            .map_err(LakeError::duckdb("reading a table's column types"))?;
        let types: Vec<(String, String)> = st
            .query_map([LAKE_ALIAS, table.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(LakeError::duckdb("reading a table's column types"))?;
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| {
                let t = types.iter().find(|(n, _)| n == f.name()).map(|(_, t)| t.as_str()).unwrap_or("");
                let ext = |name: &str, dt: DataType| {
                    let mut meta = f.metadata().clone();
                    meta.insert("ARROW:extension:name".into(), name.into());
                    f.as_ref().clone().with_data_type(dt).with_metadata(meta)
                };
                match t {
                    "UUID" => ext("arrow.uuid", DataType::FixedSizeBinary(16)),
                    "JSON" => ext("arrow.json", DataType::Utf8),
                    _ => f.as_ref().clone(),
                }
            })
            .collect();
        Ok(std::sync::Arc::new(Schema::new(fields)))
    }

    /// The connection (for maintenance and tests).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Where the lake is.
    pub fn location(&self) -> &CatalogLocation {
        &self.location
    }

    /// The highest LSN committed to the lake (0 if none).
    pub fn committed_lsn(&self) -> Result<Lsn, LakeError> {
        let sql = format!(
            "SELECT coalesce(max(TRY_CAST(json_extract_string(commit_extra_info, '$.{LSN_KEY}') AS UBIGINT)), 0) \
             FROM {LAKE_ALIAS}.snapshots()"
        );
        let v: u64 =
            self.conn.query_row(&sql, [], |r| r.get(0)).map_err(LakeError::duckdb("reading the committed LSN"))?;
        Ok(Lsn::new(v))
    }

    /// Applies `records` (in LSN order, all above the committed LSN) as one
    /// snapshot that records `upto` (>= their last LSN) as committed. All or
    /// nothing. Nothing to apply means no snapshot.
    ///
    /// Consecutive rows records of one table and schema are inserted
    /// together, except the records in `isolate`, which are inserted on
    /// their own (to find which of a refused group is at fault).
    pub fn apply(
        &mut self,
        records: &[(Lsn, LogRecord)],
        upto: Lsn,
        isolate: &BTreeSet<Lsn>,
    ) -> Result<FlushOutcome, ApplyError> {
        let Some(last) = records.last().map(|r| r.0) else { return Ok(FlushOutcome::default()) };
        let last = last.max(upto);
        self.conn.execute_batch("BEGIN TRANSACTION").map_err(LakeError::duckdb("beginning a flush"))?;
        let mut scratch = Vec::new();
        let res = self.apply_in_tx(records, last, isolate, &mut scratch);
        let res = match res {
            Ok(outcome) => match self.sync_then_commit() {
                Ok(()) => Ok(outcome),
                Err(e) => Err(ApplyError::Lake(e)),
            },
            Err(e) => Err(e),
        };
        if res.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        for f in scratch {
            let _ = std::fs::remove_file(f);
        }
        let mut outcome = res?;
        outcome.snapshot_id = Some(
            self.conn
                .query_row(&format!("SELECT id FROM {LAKE_ALIAS}.current_snapshot()"), [], |r| r.get(0))
                .map_err(LakeError::duckdb("reading the new snapshot id"))?,
        );
        Ok(outcome)
    }

    /// Commits the open transaction once the files it wrote are durable
    /// (see [`crate::durable`]): the commit names them, and once it is
    /// made the log behind it may be truncated.
    pub(crate) fn sync_then_commit(&mut self) -> Result<(), LakeError> {
        self.files.sync_new().map_err(|error| LakeError::Io {
            context: format!("syncing new data files below {}", self.location.data_path.display()),
            error,
        })?;
        self.conn.execute_batch("COMMIT").map_err(LakeError::duckdb("committing"))
    }

    /// Proves the catalog answers (a read of its snapshot list). Used
    /// before blaming a record: an error met while the catalog is down is
    /// the catalog's, not the record's.
    pub fn probe(&self) -> Result<(), LakeError> {
        self.conn
            .query_row(&format!("SELECT count(*) FROM {LAKE_ALIAS}.snapshots()"), [], |r| r.get::<_, i64>(0))
            .map(|_| ())
            .map_err(LakeError::duckdb("reading the catalog"))
    }

    fn apply_in_tx(
        &mut self,
        records: &[(Lsn, LogRecord)],
        last: Lsn,
        isolate: &BTreeSet<Lsn>,
        scratch: &mut Vec<PathBuf>,
    ) -> Result<FlushOutcome, ApplyError> {
        let mut outcome = FlushOutcome { lsn: last, records: records.len() as u64, ..Default::default() };
        let mut touched = BTreeMap::new();
        // Rows are gathered per table (and per schema, in arrival order) for
        // the whole slice and inserted once per group: one Parquet file and
        // one INSERT per table and flush instead of one per record. Order
        // only matters within a table; a command is a barrier for its table.
        let mut pending: BTreeMap<TableName, Vec<Group>> = BTreeMap::new();
        for (lsn, rec) in records {
            touched.insert(rec.table().to_string(), ());
            match rec {
                LogRecord::Rows { table, ipc } => {
                    let (schema, batches) = decode_ipc(*lsn, rec)?;
                    outcome.bytes += ipc.len() as u64;
                    let groups = pending.entry(table.clone()).or_default();
                    let alone = isolate.contains(lsn);
                    match groups.last_mut() {
                        Some(g) if g.schema == schema && !alone && !g.isolated => {
                            g.batches.extend(batches);
                            g.lsns.push(*lsn);
                        }
                        _ => groups.push(Group { lsns: vec![*lsn], isolated: alone, schema, batches }),
                    }
                }
                LogRecord::StagedFile(f) => {
                    // A barrier for its table like a command: rows of the
                    // table logged before it go in first.
                    if let Some(groups) = pending.remove(&f.table) {
                        outcome.rows += self.insert_groups(&f.table, groups, scratch)?;
                    }
                    let path = self.staged_dir.join(f.file.as_str());
                    if !path.exists() {
                        return Err(ApplyError::Rejected {
                            lsns: vec![*lsn],
                            reason: format!("staged file {} is missing", f.file.as_str()),
                        });
                    }
                    self.insert_source(&f.table, &Source { file: &path, intervals: &[] })
                        .map_err(|e| classify(vec![*lsn], e))?;
                    outcome.rows += f.rows;
                    outcome.bytes += f.bytes;
                }
                LogRecord::Command(c @ DatasetCommand::View { .. }) => {
                    // A view may read any table: everything logged before
                    // it goes in first.
                    for (table, groups) in std::mem::take(&mut pending) {
                        outcome.rows += self.insert_groups(&table, groups, scratch)?;
                    }
                    self.apply_command(c).map_err(|e| classify(vec![*lsn], e))?;
                }
                LogRecord::Command(c) => {
                    if let Some(groups) = pending.remove(c.table()) {
                        outcome.rows += self.insert_groups(c.table(), groups, scratch)?;
                    }
                    self.apply_command(c).map_err(|e| classify(vec![*lsn], e))?;
                }
            }
        }
        for (table, groups) in std::mem::take(&mut pending) {
            outcome.rows += self.insert_groups(&table, groups, scratch)?;
        }
        outcome.tables = touched.into_keys().collect();
        let info = format!("{{\"{LSN_KEY}\": {}}}", last.get());
        let message = format!("flush up to LSN {last}");
        self.conn
            .execute_batch(&format!(
                "CALL {LAKE_ALIAS}.set_commit_message({}, {}, extra_info => {})",
                sql_string(COMMIT_AUTHOR),
                sql_string(&message),
                sql_string(&info)
            ))
            .map_err(LakeError::duckdb("recording the committed LSN"))?;
        Ok(outcome)
    }

    fn insert_groups(
        &self,
        table: &TableName,
        groups: Vec<Group>,
        scratch: &mut Vec<PathBuf>,
    ) -> Result<u64, ApplyError> {
        let mut rows = 0u64;
        for g in groups {
            let file = self.scratch_dir.join(format!("flush-{}-{}.parquet", g.lsns[0], table));
            scratch.push(file.clone());
            let (schema, batches, intervals) = intervals_as_parts(&g.schema, g.batches);
            // The Parquet writer panics on some types it cannot encode (a
            // month-day-nano interval, say): that is the rows' fault too.
            let written =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write_parquet(&file, &schema, &batches)))
                    .unwrap_or_else(|panic| {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "the Parquet writer panicked".into());
                        Err(parquet::errors::ParquetError::General(why))
                    });
            written.map_err(|e| match e {
                // The disk, not the rows: retry.
                parquet::errors::ParquetError::External(e) if e.is::<std::io::Error>() => {
                    ApplyError::Lake(LakeError::Io {
                        context: "writing a flush's scratch file".into(),
                        error: std::io::Error::other(e),
                    })
                }
                // Encoding these rows failed (a type the writer cannot
                // encode, say): it would fail the same way every time.
                other => ApplyError::Rejected {
                    lsns: g.lsns.clone(),
                    reason: format!("the rows cannot be written as Parquet: {other}"),
                },
            })?;
            self.insert_source(table, &Source { file: &file, intervals: &intervals })
                .map_err(|e| classify(g.lsns.clone(), e))?;
            rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
        Ok(rows)
    }

    fn table_exists(&self, table: &TableName) -> Result<bool, LakeError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' AND table_name = ?",
                [LAKE_ALIAS, table.as_str()],
                |r| r.get(0),
            )
            .map_err(LakeError::duckdb("looking up a table"))?;
        Ok(n > 0)
    }

    fn columns(&self, sql_from: &str) -> Result<Vec<(String, String)>, LakeError> {
        let mut st =
            self.conn.prepare(&format!("DESCRIBE {sql_from}")).map_err(LakeError::duckdb("describing columns"))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(LakeError::duckdb("describing"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(LakeError::duckdb("describing columns"))
    }

    fn insert_source(&self, table: &TableName, src: &Source<'_>) -> Result<(), LakeError> {
        let target = format!("{LAKE_ALIAS}.main.{}", table.quoted());
        let source = src.sql();
        if !self.table_exists(table)? {
            self.conn
                .execute_batch(&format!("CREATE TABLE {target} AS SELECT * FROM {source}"))
                .map_err(LakeError::duckdb("creating a table from its first rows"))?;
            return Ok(());
        }
        // Schema evolution: new columns are added (nullable); a column the
        // registry allowed to widen (tables::promotable) is promoted first;
        // other incoming values are cast by DuckDB into the column's type.
        let existing = self.columns(&target)?;
        for (name, ty) in self.columns(&format!("SELECT * FROM {source}"))? {
            let col = format!("\"{}\"", name.replace('"', "\"\""));
            match existing.iter().find(|(e, _)| e == &name) {
                None => self
                    .conn
                    .execute_batch(&format!("ALTER TABLE {target} ADD COLUMN {col} {ty}"))
                    .map_err(LakeError::duckdb("adding a column"))?,
                Some((_, old)) if promotes(old, &ty) => self
                    .conn
                    .execute_batch(&format!("ALTER TABLE {target} ALTER COLUMN {col} SET DATA TYPE {ty}"))
                    .map_err(LakeError::duckdb("widening a column"))?,
                Some(_) => {}
            }
        }
        self.conn
            .execute_batch(&format!("INSERT INTO {target} BY NAME SELECT * FROM {source}"))
            .map_err(LakeError::duckdb("inserting rows"))?;
        Ok(())
    }

    fn apply_command(&self, c: &DatasetCommand) -> Result<(), LakeError> {
        let target = format!("{LAKE_ALIAS}.main.{}", c.table().quoted());
        match c {
            DatasetCommand::View { sql, .. } => self
                .conn
                .execute_batch(&format!("CREATE OR REPLACE VIEW {target} AS {sql}"))
                .map_err(LakeError::duckdb("creating a view")),
            DatasetCommand::Drop { .. } => self
                .conn
                .execute_batch(&format!("DROP TABLE IF EXISTS {target}"))
                .map_err(LakeError::duckdb("dropping a table")),
            DatasetCommand::Truncate { table } => {
                if self.table_exists(table)? {
                    self.conn
                        .execute_batch(&format!("DELETE FROM {target}"))
                        .map_err(LakeError::duckdb("emptying a table"))?;
                }
                Ok(())
            }
            DatasetCommand::Create { table, schema_ipc } => {
                if self.table_exists(table)? {
                    return Ok(());
                }
                let reader = StreamReader::try_new(Cursor::new(schema_ipc.as_slice()), None).map_err(|e| {
                    LakeError::RoundTrip(format!("create {table}: schema is not an Arrow IPC stream: {e}"))
                })?;
                let schema = reader.schema();
                let file = self.scratch_dir.join(format!("create-{table}.parquet"));
                write_parquet(&file, &schema, &[])
                    .map_err(|e| LakeError::Io { context: "writing schema".into(), error: std::io::Error::other(e) })?;
                let res = self.conn.execute_batch(&format!(
                    "CREATE TABLE {target} AS SELECT * FROM read_parquet({}) LIMIT 0",
                    sql_string(&file.display().to_string())
                ));
                let _ = std::fs::remove_file(&file);
                res.map_err(LakeError::duckdb("creating a table"))
            }
        }
    }
}

/// A Parquet file to insert, and which of its columns hold intervals as
/// their parts ([`crate::storable::interval_as_parts`]).
struct Source<'a> {
    file: &'a Path,
    intervals: &'a [String],
}

impl Source<'_> {
    /// The rows as a SQL table expression.
    fn sql(&self) -> String {
        let read = format!("read_parquet({})", sql_string(&self.file.display().to_string()));
        if self.intervals.is_empty() {
            return read;
        }
        let parts: Vec<String> = self
            .intervals
            .iter()
            .map(|c| {
                let c = format!("\"{}\"", c.replace('"', "\"\""));
                format!("to_months({c}.months) + to_days({c}.days) + to_milliseconds({c}.millis) AS {c}")
            })
            .collect();
        format!("(SELECT * REPLACE ({}) FROM {read})", parts.join(", "))
    }
}

/// Replaces top-level month-day-nano interval columns (which the Parquet
/// writer cannot encode) by their parts; returns their names.
fn intervals_as_parts(schema: &SchemaRef, batches: Vec<RecordBatch>) -> (SchemaRef, Vec<RecordBatch>, Vec<String>) {
    use arrow::datatypes::{DataType, Field, IntervalUnit, Schema};
    let is_interval = |t: &DataType| t == &DataType::Interval(IntervalUnit::MonthDayNano);
    let names: Vec<String> =
        schema.fields().iter().filter(|f| is_interval(f.data_type())).map(|f| f.name().clone()).collect();
    if names.is_empty() {
        return (schema.clone(), batches, names);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if is_interval(f.data_type()) {
                Field::new(f.name(), DataType::Struct(crate::storable::interval_parts_fields()), true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let parts = Arc::new(Schema::new(fields));
    let batches = batches
        .into_iter()
        .map(|b| {
            let cols = b
                .columns()
                .iter()
                .map(|c| if is_interval(c.data_type()) { crate::storable::interval_as_parts(c) } else { c.clone() })
                .collect();
            RecordBatch::try_new(parts.clone(), cols).expect("same rows, parts schema")
        })
        .collect();
    (parts, batches, names)
}

/// Whether DuckDB type `to` is an exact promotion of column type `from`
/// (the registry's rule, [`crate::tables::promotable`], on DuckDB's names).
fn promotes(from: &str, to: &str) -> bool {
    match (crate::tables::arrow_of_duckdb(from), crate::tables::arrow_of_duckdb(to)) {
        (Some(a), Some(b)) => crate::tables::promotable(&a, &b),
        _ => false,
    }
}

/// Consecutive rows of one table with one schema, inserted together.
struct Group {
    /// The records in the group, in log order (the first names its scratch
    /// file; all are suspects when the insert is refused).
    lsns: Vec<Lsn>,
    /// Whether the group is one record that must stay alone.
    isolated: bool,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

/// Decodes the IPC stream of a rows record.
fn decode_ipc(lsn: Lsn, rec: &LogRecord) -> Result<(SchemaRef, Vec<RecordBatch>), ApplyError> {
    let LogRecord::Rows { ipc, .. } = rec else { unreachable!("only rows records are decoded") };
    let bad = |why: String| ApplyError::Rejected { lsns: vec![lsn], reason: why };
    let reader = StreamReader::try_new(Cursor::new(ipc.as_ref()), None).map_err(|e| bad(format!("Arrow IPC: {e}")))?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(format!("Arrow IPC: {e}")))?;
    Ok((schema, batches))
}

fn write_parquet(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), parquet::errors::ParquetError> {
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    let file = std::fs::File::create(path)?;
    // Scratch files live for one flush: no compression, large row groups.
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut w = ArrowWriter::try_new(file, Arc::clone(schema), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(())
}

/// DuckDB's error classes (the `<class> Error:` prefix of its messages)
/// that say the environment failed, not the statement: I/O, connections
/// (a PostgreSQL catalog), memory, transaction conflicts, interrupts.
const TRANSIENT_CLASSES: &[&str] =
    &["IO", "Connection", "Out of Memory", "TransactionContext", "INTERRUPT", "HTTP", "Serialization"];
/// Messages that mean the record's content failed whatever their class
/// (checked first: DuckDB reports some content errors as I/O errors).
const CONTENT_MESSAGES: &[&str] = &["do not support negative intervals", "Unsupported type"];
/// Messages that mean the environment failed whatever their class
/// (SQLite's lock, a full disk surfacing through another class).
const TRANSIENT_MESSAGES: &[&str] =
    &["database is locked", "No space left", "Could not write file", "could not connect", "Unable to connect"];

/// Classifies a failed statement of a flush (see [`ApplyError`]). Errors
/// the statement's input causes deterministically are the records' fault;
/// internal errors invalidate the instance; the rest is retried.
fn classify(lsns: Vec<Lsn>, e: LakeError) -> ApplyError {
    let msg = match &e {
        LakeError::DuckDb { error, .. } => error.to_string(),
        _ => return ApplyError::Lake(e),
    };
    let class = msg.split_once(" Error:").map(|(c, _)| c.trim()).unwrap_or("");
    if class == "INTERNAL" || class == "FATAL" || msg.contains("database has been invalidated") {
        return ApplyError::Broken { lsns, error: e };
    }
    if CONTENT_MESSAGES.iter().any(|m| msg.contains(m)) {
        return ApplyError::Rejected { lsns, reason: msg };
    }
    if TRANSIENT_CLASSES.contains(&class) || TRANSIENT_MESSAGES.iter().any(|m| msg.contains(m)) || class.is_empty() {
        return ApplyError::Lake(e);
    }
    ApplyError::Rejected { lsns, reason: msg }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duck(msg: &str) -> LakeError {
        LakeError::DuckDb {
            context: "inserting rows".into(),
            error: duckdb::Error::DuckDBFailure(
                duckdb::ffi::Error { code: duckdb::ffi::ErrorCode::Unknown, extended_code: 1 },
                Some(msg.into()),
            ),
        }
    }

    #[test]
    fn flush_errors_are_classified_by_what_failed() {
        let l = || vec![Lsn::new(7)];
        for content in [
            "Conversion Error: Malformed JSON at byte 0",
            "Mismatch Type Error: Type INTERVAL does not match with BIGINT",
            "Not implemented Error: Unsupported type",
            "Invalid Input Error: value out of range",
            "Out of Range Error: Cannot cast 300 to TINYINT",
            "IO Error: Parquet files do not support negative intervals",
        ] {
            assert!(matches!(classify(l(), duck(content)), ApplyError::Rejected { .. }), "{content}");
        }
        for transient in [
            "IO Error: Could not read from file",
            "Connection Error: Unable to connect to Postgres",
            "Out of Memory Error: failed to allocate",
            "TransactionContext Error: Catalog write-write conflict",
            "Invalid Input Error: database is locked",
            "an error without a class",
        ] {
            assert!(matches!(classify(l(), duck(transient)), ApplyError::Lake(_)), "{transient}");
        }
        for broken in
            ["INTERNAL Error: value 300 outside of target range", "FATAL Error: database has been invalidated"]
        {
            assert!(matches!(classify(l(), duck(broken)), ApplyError::Broken { .. }), "{broken}");
        }
        let io = LakeError::Io { context: "x".into(), error: std::io::Error::other("disk") };
        assert!(matches!(classify(l(), io), ApplyError::Lake(_)));
    }
}

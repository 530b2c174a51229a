//! [`AccountCompactor`]: one account's log and lake, and the loop that
//! flushes the one into the other.
//!
//! Exactly once: a flush reads records above the LSN committed in the lake,
//! applies them as one snapshot whose commit metadata carries the highest
//! LSN, and only after the commit truncates the log. On open (and after any
//! failure) the committed LSN is read back from the lake, the log is opened
//! with `min_next_lsn` above it, and records at or below it are skipped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use duckpond_schema::{DatasetCommand, LogRecord, StagedFile, TableName};
use duckpond_wal::{Lsn, LsnRange, RecordKind, RecoveryReport, Wal, WalOptions};
use tokio::sync::{watch, Notify, Semaphore};

use crate::error::CompactorError;
use crate::lake::{CatalogLocation, Extensions, InstanceSettings};
use crate::maintenance::{self, MaintenanceOutcome};
use crate::tables::{SchemaEffect, TableSchemas};
use crate::telemetry as m;
use crate::writer::{ApplyError, FlushOutcome, LakeWriter};

/// Settings of one account's compactor.
#[derive(Debug, Clone)]
pub struct CompactorOptions {
    /// Flush at least this often while records wait.
    pub flush_interval_ms: u64,
    /// Flush early once this many bytes wait in the log.
    pub flush_threshold_bytes: u64,
    /// Largest slice of the log one flush reads (bounds its memory).
    pub max_flush_bytes: u64,
    /// Wait after a failed flush, doubled per failure up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Longest wait between retries.
    pub retry_max_ms: u64,
    /// How often maintenance (merge, expire, cleanup) runs.
    pub maintenance_interval_ms: u64,
    /// Snapshots older than this are expired (the time-travel window).
    pub snapshot_retention_ms: u64,
    /// Files DuckLake no longer needs (replaced by a merge, used only by
    /// expired snapshots) are deleted this long after it scheduled them, so
    /// a query already reading them finishes. Keep it above the longest
    /// query; 0 deletes them in the same maintenance run.
    pub file_cleanup_grace_ms: u64,
    /// Where records that can never apply are kept.
    pub quarantine_dir: PathBuf,
    /// Temporary Parquet files of a flush.
    pub scratch_dir: PathBuf,
    /// Uploads converted to Parquet, named by staged-file records; each is
    /// deleted once the snapshot holding it is committed.
    pub staged_dir: PathBuf,
    /// Label of this account's metrics.
    pub metrics_label: String,
}

impl Default for CompactorOptions {
    fn default() -> Self {
        Self {
            flush_interval_ms: 1_000,
            flush_threshold_bytes: 64 * 1024 * 1024,
            max_flush_bytes: 256 * 1024 * 1024,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            maintenance_interval_ms: 3_600_000,
            snapshot_retention_ms: 7 * 24 * 3_600_000,
            file_cleanup_grace_ms: 600_000,
            quarantine_dir: PathBuf::from("quarantine"),
            scratch_dir: PathBuf::from("scratch"),
            staged_dir: PathBuf::from("staged"),
            metrics_label: String::new(),
        }
    }
}

/// The last committed position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    /// Highest LSN in the lake.
    pub lsn: Lsn,
    /// The snapshot that committed it (None before the first flush).
    pub snapshot_id: Option<i64>,
}

/// One account's compactor.
pub struct AccountCompactor {
    wal: Wal,
    writer: Mutex<LakeWriter>,
    committed: watch::Sender<Committed>,
    wake: Notify,
    opts: CompactorOptions,
    /// When the oldest record not yet committed was appended.
    oldest_pending: Mutex<Option<Instant>>,
    /// Each table's schema once the log is applied; appends are checked
    /// against it.
    schemas: Mutex<TableSchemas>,
}

impl std::fmt::Debug for AccountCompactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountCompactor").field("account", &self.opts.metrics_label).finish_non_exhaustive()
    }
}

impl AccountCompactor {
    /// Opens the lake writer, reads the committed LSN, opens the log above
    /// it and drops segments already committed. Blocking.
    pub fn open(
        extensions: &Extensions,
        settings: &InstanceSettings,
        location: &CatalogLocation,
        wal_dir: &std::path::Path,
        wal_opts: WalOptions,
        opts: CompactorOptions,
    ) -> Result<(Self, RecoveryReport), CompactorError> {
        let writer = LakeWriter::open(extensions, settings, location, &opts.scratch_dir, &opts.staged_dir)?;
        let lsn = writer.committed_lsn()?;
        let (wal, report) = Wal::open(wal_dir, WalOptions { min_next_lsn: lsn.get() + 1, ..wal_opts })?;
        // A crash between a commit and its truncation leaves committed
        // segments behind: drop them now.
        let _ = wal.truncate_before(lsn.next());
        let schemas = replay(&wal, lsn, &writer, &opts)?;
        let (committed, _) = watch::channel(Committed { lsn, snapshot_id: None });
        let pending = wal.durable_lsn().filter(|d| *d > lsn).map(|_| Instant::now());
        m::describe();
        Ok((
            Self {
                wal,
                writer: Mutex::new(writer),
                committed,
                wake: Notify::new(),
                opts,
                oldest_pending: Mutex::new(pending),
                schemas: Mutex::new(schemas),
            },
            report,
        ))
    }

    /// Appends records durably (one WAL append, all or nothing), after
    /// checking them against the tables' schemas: a write that could not
    /// apply is refused here ([`CompactorError::Schema`]) and never logged.
    pub async fn append(&self, records: &[LogRecord]) -> Result<LsnRange, CompactorError> {
        let effects =
            records.iter().map(|r| effect_of(r, &self.opts.staged_dir)).collect::<Result<Vec<_>, CompactorError>>()?;
        self.schemas.lock().expect("schemas lock").apply_all(&effects)?;
        let batch: Vec<(RecordKind, Bytes)> = records
            .iter()
            .map(|r| {
                let (kind, payload) = r.encode();
                (RecordKind(kind), payload)
            })
            .collect();
        let range = self.wal.append_batch(batch).await?;
        self.oldest_pending.lock().expect("pending lock").get_or_insert_with(Instant::now);
        if self.wal.uncompacted_bytes() >= self.opts.flush_threshold_bytes {
            self.wake.notify_one();
        }
        Ok(range)
    }

    /// The schema `table` will have once the log is applied (None if it
    /// does not exist).
    pub fn table_schema(&self, table: &TableName) -> Option<SchemaRef> {
        self.schemas.lock().expect("schemas lock").get(table)
    }

    /// Whether rows with `schema` would be accepted into `table` now
    /// (nothing is recorded).
    pub fn check_rows(&self, table: &TableName, schema: SchemaRef) -> Result<(), crate::SchemaConflict> {
        self.schemas.lock().expect("schemas lock").check(&[SchemaEffect::Rows(table.clone(), schema)])
    }

    /// The log (for its metrics and limits).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The last committed position.
    pub fn committed(&self) -> Committed {
        *self.committed.borrow()
    }

    /// Watches the committed position without asking for a flush (how
    /// soon a normal write becomes visible).
    pub fn subscribe(&self) -> watch::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// Waits until `lsn` is committed and returns the snapshot holding it.
    /// Asks the loop to flush now rather than at the next interval.
    pub async fn wait_committed(&self, lsn: Lsn, timeout: Duration) -> Result<Committed, CompactorError> {
        let mut rx = self.committed.subscribe();
        self.wake.notify_one();
        let res = tokio::time::timeout(timeout, rx.wait_for(|c| c.lsn >= lsn)).await;
        match res {
            Ok(Ok(c)) => Ok(*c),
            Ok(Err(_)) => Err(CompactorError::Stopped),
            Err(_) => Err(CompactorError::CommitTimeout { timeout_ms: timeout.as_millis() as u64 }),
        }
    }

    /// Flushes everything durable now. Blocking; serialised with maintenance.
    pub fn flush_blocking(&self) -> Result<FlushOutcome, CompactorError> {
        let mut writer = self.writer.lock().expect("writer lock");
        let mut total = FlushOutcome::default();
        loop {
            let outcome = self.flush_once(&mut writer)?;
            let done = outcome.records == 0;
            total.records += outcome.records;
            total.rows += outcome.rows;
            total.bytes += outcome.bytes;
            total.quarantined.extend(outcome.quarantined);
            if outcome.snapshot_id.is_some() {
                total.snapshot_id = outcome.snapshot_id;
                total.lsn = outcome.lsn;
            }
            for t in outcome.tables {
                if !total.tables.contains(&t) {
                    total.tables.push(t);
                }
            }
            if done || self.wal.durable_lsn() <= Some(self.committed().lsn) {
                return Ok(total);
            }
        }
    }

    /// One flush of at most `max_flush_bytes`.
    fn flush_once(&self, writer: &mut LakeWriter) -> Result<FlushOutcome, CompactorError> {
        let start = Instant::now();
        let from = self.committed().lsn.next();
        let mut records: Vec<(Lsn, LogRecord)> = Vec::new();
        let mut bytes = 0u64;
        let mut quarantined = Vec::new();
        for r in self.wal.read_from(from)? {
            let r = r?;
            bytes += r.payload.len() as u64;
            // Bytes clones share the buffer: no copy of the payload.
            let payload = Bytes::from(r.payload);
            match LogRecord::decode(r.kind.0, payload.clone()) {
                Ok(rec) => records.push((r.lsn, rec)),
                Err(e) => {
                    self.quarantine(r.lsn, &payload, &e.to_string())?;
                    quarantined.push(r.lsn);
                }
            }
            if bytes >= self.opts.max_flush_bytes {
                break;
            }
        }
        let upto = records.last().map(|r| r.0).into_iter().chain(quarantined.last().copied()).max();
        loop {
            if records.is_empty() {
                // Only unusable records: nothing to commit. Move past them in
                // memory; after a restart they are quarantined again (the
                // same files), which changes nothing.
                if let Some(upto) = upto {
                    self.advance(Committed { lsn: upto, snapshot_id: self.committed().snapshot_id });
                }
                return Ok(FlushOutcome { quarantined, ..Default::default() });
            }
            match writer.apply(&records, upto.expect("records exist")) {
                Ok(mut outcome) => {
                    outcome.quarantined = quarantined;
                    self.advance(Committed { lsn: outcome.lsn, snapshot_id: outcome.snapshot_id });
                    // Committed: the lake owns the rows now. A crash before
                    // this line leaves files that the next open sweeps.
                    for (_, r) in &records {
                        if let LogRecord::StagedFile(f) = r {
                            let _ = std::fs::remove_file(self.opts.staged_dir.join(f.file.as_str()));
                        }
                    }
                    let label = self.opts.metrics_label.clone();
                    metrics::histogram!(m::FLUSH_DURATION_SECONDS, "account" => label.clone())
                        .record(start.elapsed().as_secs_f64());
                    metrics::histogram!(m::FLUSH_ROWS, "account" => label.clone()).record(outcome.rows as f64);
                    metrics::histogram!(m::FLUSH_BYTES, "account" => label.clone()).record(outcome.bytes as f64);
                    metrics::counter!(m::FLUSHED_ROWS_TOTAL, "account" => label).increment(outcome.rows);
                    return Ok(outcome);
                }
                Err(ApplyError::BadRecord(bad)) => {
                    let idx = records.iter().position(|(l, _)| *l == bad.lsn).expect("bad record is in the slice");
                    let (lsn, rec) = records.remove(idx);
                    let (_, payload) = rec.encode();
                    self.quarantine(lsn, &payload, &bad.reason)?;
                    if let LogRecord::StagedFile(f) = &rec {
                        let from = self.opts.staged_dir.join(f.file.as_str());
                        let _ = std::fs::rename(&from, self.opts.quarantine_dir.join(f.file.as_str()));
                    }
                    quarantined.push(lsn);
                }
                Err(ApplyError::Lake(e)) => return Err(e.into()),
            }
        }
    }

    fn advance(&self, c: Committed) {
        self.committed.send_replace(c);
        let _ = self.wal.truncate_before(c.lsn.next());
        let mut pending = self.oldest_pending.lock().expect("pending lock");
        *pending = if self.wal.durable_lsn() > Some(c.lsn) { Some(Instant::now()) } else { None };
        let label = self.opts.metrics_label.clone();
        metrics::gauge!(m::WAL_LAG_BYTES, "account" => label).set(self.wal.uncompacted_bytes() as f64);
    }

    /// Keeps an unusable record's bytes for inspection, and says so loudly.
    fn quarantine(&self, lsn: Lsn, payload: &[u8], reason: &str) -> Result<(), CompactorError> {
        std::fs::create_dir_all(&self.opts.quarantine_dir).map_err(CompactorError::Quarantine)?;
        let path = self.opts.quarantine_dir.join(format!("{:020}.record", lsn.get()));
        std::fs::write(&path, payload).map_err(CompactorError::Quarantine)?;
        std::fs::write(path.with_extension("reason"), reason).map_err(CompactorError::Quarantine)?;
        tracing::error!(account = %self.opts.metrics_label, %lsn, reason, path = %path.display(),
            "record can never be applied; quarantined");
        metrics::counter!(m::QUARANTINED_RECORDS_TOTAL, "account" => self.opts.metrics_label.clone()).increment(1);
        Ok(())
    }

    /// Runs maintenance now. Blocking; never concurrent with a flush.
    pub fn maintain_blocking(&self) -> Result<MaintenanceOutcome, CompactorError> {
        let writer = self.writer.lock().expect("writer lock");
        let retention = Duration::from_millis(self.opts.snapshot_retention_ms);
        let grace = Duration::from_millis(self.opts.file_cleanup_grace_ms);
        Ok(maintenance::run(&writer, retention, grace, &self.opts.metrics_label)?)
    }

    /// Seconds since the oldest uncommitted record was appended (0 if none).
    pub fn lag_seconds(&self) -> f64 {
        self.oldest_pending.lock().expect("pending lock").map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    }

    /// The flush loop: on the interval, when woken (size threshold, a
    /// writer waiting for its commit) and once more at shutdown. Failures
    /// back off exponentially; other accounts are unaffected because each
    /// account has its own loop and only holds a pool permit while flushing.
    pub async fn run(self: Arc<Self>, pool: Arc<Semaphore>, mut shutdown: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.opts.flush_interval_ms);
        let maintenance_every = Duration::from_millis(self.opts.maintenance_interval_ms);
        let mut last_maintenance = Instant::now();
        let mut backoff: Option<Duration> = None;
        loop {
            let wait = backoff.unwrap_or(interval);
            // A dropped shutdown sender means stop too (never spin on it).
            let mut sender_gone = false;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = self.wake.notified(), if backoff.is_none() => {},
                changed = shutdown.changed() => sender_gone = changed.is_err(),
            }
            let stopping = sender_gone || *shutdown.borrow();
            let label = self.opts.metrics_label.clone();
            metrics::gauge!(m::WAL_LAG_SECONDS, "account" => label.clone()).set(self.lag_seconds());
            let Ok(permit) = pool.clone().acquire_owned().await else { return };
            let me = self.clone();
            let maintain = !stopping && last_maintenance.elapsed() >= maintenance_every;
            let res = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let flushed = me.flush_blocking();
                let maintained = if maintain && flushed.is_ok() { Some(me.maintain_blocking()) } else { None };
                (flushed, maintained)
            })
            .await;
            match res {
                Ok((Ok(_), maintained)) => {
                    backoff = None;
                    if let Some(m) = maintained {
                        last_maintenance = Instant::now();
                        if let Err(e) = m {
                            tracing::warn!(account = %label, error = %e, "maintenance failed; will retry");
                        }
                    }
                }
                Ok((Err(e), _)) => {
                    let next = backoff.map(|b| b * 2).unwrap_or(Duration::from_millis(self.opts.retry_initial_ms));
                    let next = next.min(Duration::from_millis(self.opts.retry_max_ms));
                    tracing::warn!(account = %label, error = %e, retry_in_ms = next.as_millis() as u64,
                        backlog_bytes = self.wal.uncompacted_bytes(), "flush failed; the backlog grows until it succeeds");
                    metrics::counter!(m::FLUSH_FAILURES_TOTAL, "account" => label).increment(1);
                    backoff = Some(next);
                }
                Err(e) => tracing::error!(error = %e, "flush task panicked"),
            }
            if stopping {
                return;
            }
        }
    }
}

/// What a record will do to the tables' schemas.
fn effect_of(r: &LogRecord, staged_dir: &std::path::Path) -> Result<SchemaEffect, CompactorError> {
    let bad = |why: String| CompactorError::InvalidRecord(why);
    Ok(match r {
        LogRecord::Rows { table, ipc } => SchemaEffect::Rows(table.clone(), ipc_schema(ipc).map_err(bad)?),
        LogRecord::StagedFile(StagedFile { table, file, .. }) => {
            let path = staged_dir.join(file.as_str());
            SchemaEffect::Rows(table.clone(), parquet_schema(&path).map_err(bad)?)
        }
        LogRecord::Command(c @ DatasetCommand::Create { schema_ipc, .. }) => {
            SchemaEffect::of_command(c, Some(ipc_schema(schema_ipc).map_err(bad)?))
        }
        LogRecord::Command(c) => SchemaEffect::of_command(c, None),
    })
}

fn ipc_schema(ipc: &[u8]) -> Result<SchemaRef, String> {
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .map(|r| r.schema())
        .map_err(|e| format!("not an Arrow IPC stream: {e}"))
}

fn parquet_schema(path: &std::path::Path) -> Result<SchemaRef, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map(|b| b.schema().clone())
        .map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Rebuilds the schemas from the lake plus the records still in the log,
/// and deletes staged files that no record above the committed LSN names
/// (committed ones whose deletion a crash interrupted, or uploads that never
/// reached the log).
fn replay(
    wal: &Wal,
    committed: Lsn,
    writer: &LakeWriter,
    opts: &CompactorOptions,
) -> Result<TableSchemas, CompactorError> {
    let mut schemas = TableSchemas::new(writer.table_schemas()?);
    let mut referenced = std::collections::HashSet::new();
    for r in wal.read_from(committed.next())? {
        let r = r?;
        let Ok(rec) = LogRecord::decode(r.kind.0, Bytes::from(r.payload)) else { continue };
        if let LogRecord::StagedFile(f) = &rec {
            referenced.insert(f.file.as_str().to_string());
        }
        if let Ok(effect) = effect_of(&rec, &opts.staged_dir) {
            schemas.replay(&effect);
        }
    }
    if let Ok(entries) = std::fs::read_dir(&opts.staged_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) {
                tracing::info!(account = %opts.metrics_label, file = %name, "removing unreferenced staged file");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(schemas)
}

//! [`AccountCompactor`]: one account's log and lake, and the loop that
//! flushes the one into the other.
//!
//! Exactly once: a flush reads records above the LSN committed in the lake,
//! applies them as one snapshot whose commit metadata carries the highest
//! LSN, and only after the commit truncates the log. On open (and after any
//! failure) the committed LSN is read back from the lake, the log is opened
//! with `min_next_lsn` above it, and records at or below it are skipped.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Records the lake refused, by LSN (from the quarantine directory at
    /// open, then from every quarantine).
    quarantined: Mutex<BTreeMap<Lsn, QuarantinedRecord>>,
    /// Schema effects of appends not yet durable, by ticket (and the last
    /// ticket given).
    inflight: Mutex<(BTreeMap<u64, Vec<SchemaEffect>>, u64)>,
    /// What reopening the writer needs.
    lake: (Extensions, InstanceSettings, CatalogLocation),
}

/// A record the lake refused, kept in the account's quarantine directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuarantinedRecord {
    /// Its log position.
    pub lsn: u64,
    /// The table it was for (None if the record did not decode).
    pub table: Option<String>,
    /// Why the lake refused it.
    pub reason: String,
    /// Size of the record in the log.
    pub bytes: u64,
    /// When it was quarantined (Unix ms).
    pub quarantined_at_ms: i64,
}

/// Reads the quarantine directory's entries (`<lsn>.json`).
fn load_quarantine(dir: &std::path::Path) -> BTreeMap<Lsn, QuarantinedRecord> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "json") {
            if let Some(q) =
                std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<QuarantinedRecord>(&b).ok())
            {
                out.insert(Lsn::new(q.lsn), q);
            }
        }
    }
    out
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
        let quarantined = load_quarantine(&opts.quarantine_dir);
        let skip = quarantined.keys().copied().collect();
        let schemas = replay_schemas(&wal, lsn, &writer, &opts, &skip, true)?;
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
                quarantined: Mutex::new(quarantined),
                inflight: Mutex::new((BTreeMap::new(), 0)),
                lake: (extensions.clone(), *settings, location.clone()),
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
        // Recorded as in flight until durable, so a rebuild of the registry
        // in between (after a quarantine) keeps them.
        let ticket = {
            let mut schemas = self.schemas.lock().expect("schemas lock");
            schemas.apply_all(&effects, |check| match largest_magnitude(records, &self.opts.staged_dir, check) {
                Some(m) if m <= u128::from(check.limit) => Ok(()),
                _ => Err(check.refused()),
            })?;
            let mut inflight = self.inflight.lock().expect("inflight lock");
            inflight.1 += 1;
            let ticket = inflight.1;
            inflight.0.insert(ticket, effects);
            ticket
        };
        let batch: Vec<(RecordKind, Bytes)> = records
            .iter()
            .map(|r| {
                let (kind, payload) = r.encode();
                (RecordKind(kind), payload)
            })
            .collect();
        let res = self.wal.append_batch(batch).await;
        self.inflight.lock().expect("inflight lock").0.remove(&ticket);
        let range = res?;
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

    /// Waits until every record of `lsns` is committed and returns the
    /// snapshot holding them. Asks the loop to flush now rather than at the
    /// next interval. A record of the range that the lake refused (and the
    /// flush quarantined) is [`CompactorError::Quarantined`]: its rows are
    /// in no snapshot, so no snapshot is named.
    ///
    /// `lsns` are the write's own appends (a stream makes several, with
    /// other writers' records between them).
    pub async fn wait_committed(&self, lsns: &[LsnRange], timeout: Duration) -> Result<Committed, CompactorError> {
        let Some(last) = lsns.iter().map(|r| r.last).max() else { return Ok(self.committed()) };
        let c = self.wait_flushed(last, timeout).await?;
        let q = self.quarantined.lock().expect("quarantine lock");
        for r in lsns {
            if let Some((lsn, entry)) = q.range(r.first..=r.last).next() {
                return Err(CompactorError::Quarantined { lsn: lsn.get(), reason: entry.reason.clone() });
            }
        }
        Ok(c)
    }

    /// Waits until the log up to `lsn` has been flushed (committed, or
    /// quarantined record by record), asking the loop to flush now.
    pub async fn wait_flushed(&self, lsn: Lsn, timeout: Duration) -> Result<Committed, CompactorError> {
        let mut rx = self.committed.subscribe();
        self.wake.notify_one();
        let res = tokio::time::timeout(timeout, rx.wait_for(|c| c.lsn >= lsn)).await;
        match res {
            Ok(Ok(c)) => Ok(*c),
            Ok(Err(_)) => Err(CompactorError::Stopped),
            Err(_) => Err(CompactorError::CommitTimeout { timeout_ms: timeout.as_millis() as u64 }),
        }
    }

    /// Flushes everything durable when it is called (not what arrives
    /// while it runs: under a steady stream of writes, chasing the log's
    /// end kept the flush loop from ever reaching maintenance). Blocking;
    /// serialised with maintenance.
    pub fn flush_blocking(&self) -> Result<FlushOutcome, CompactorError> {
        let target = self.wal.durable_lsn();
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
            if done || target <= Some(self.committed().lsn) {
                return Ok(total);
            }
        }
    }

    /// One flush of at most `max_flush_bytes`.
    ///
    /// A record the lake refuses is quarantined and the rest of the slice
    /// is applied without it, so no record can stop its account: when a
    /// group of records is refused together, they are applied one by one
    /// to find the culprit; when the writer's instance breaks, it is
    /// reopened and the records are retried alone, and one that breaks it
    /// twice is quarantined. Before any record is blamed the catalog is
    /// probed, so an outage is retried, never quarantined.
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
            // Quarantined before a crash that came before the commit moving
            // past it: it stays refused (a later commit must not contradict
            // what a waiting writer was told).
            if self.quarantined.lock().expect("quarantine lock").contains_key(&r.lsn) {
                quarantined.push(r.lsn);
                continue;
            }
            match LogRecord::decode(r.kind.0, payload.clone()) {
                Ok(rec) => records.push((r.lsn, rec)),
                Err(e) => {
                    self.quarantine(r.lsn, None, &payload, &format!("undecodable record: {e}"), None)?;
                    quarantined.push(r.lsn);
                }
            }
            if bytes >= self.opts.max_flush_bytes {
                break;
            }
        }
        let upto = records.last().map(|r| r.0).into_iter().chain(quarantined.last().copied()).max();
        let mut isolate = BTreeSet::new();
        let mut broke_once = BTreeSet::new();
        // Each turn either commits, quarantines a record, isolates a record
        // that was not isolated, or marks one as having broken the writer:
        // the loop ends.
        loop {
            if records.is_empty() {
                // Only unusable records: nothing to commit. Move past them in
                // memory; after a restart they are quarantined again (the
                // same files), which changes nothing.
                if let Some(upto) = upto {
                    self.advance(Committed { lsn: upto, snapshot_id: self.committed().snapshot_id });
                }
                if !quarantined.is_empty() {
                    self.rebuild_schemas(writer)?;
                }
                return Ok(FlushOutcome { quarantined, ..Default::default() });
            }
            let blamed = match writer.apply(&records, upto.expect("records exist"), &isolate) {
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
                    if !outcome.quarantined.is_empty() {
                        self.rebuild_schemas(writer)?;
                    }
                    let label = self.opts.metrics_label.clone();
                    metrics::histogram!(m::FLUSH_DURATION_SECONDS, "account" => label.clone())
                        .record(start.elapsed().as_secs_f64());
                    metrics::histogram!(m::FLUSH_ROWS, "account" => label.clone()).record(outcome.rows as f64);
                    metrics::histogram!(m::FLUSH_BYTES, "account" => label.clone()).record(outcome.bytes as f64);
                    metrics::counter!(m::FLUSHED_ROWS_TOTAL, "account" => label).increment(outcome.rows);
                    return Ok(outcome);
                }
                Err(ApplyError::Lake(e)) => {
                    self.heal(writer);
                    return Err(e.into());
                }
                Err(ApplyError::Rejected { lsns, reason }) => {
                    writer.probe()?;
                    if lsns.len() > 1 {
                        isolate.extend(lsns);
                        continue;
                    }
                    (lsns[0], reason)
                }
                Err(ApplyError::Broken { lsns, error }) => {
                    tracing::error!(account = %self.opts.metrics_label, error = %error,
                        "the lake writer's DuckDB instance broke; reopening it");
                    replace_broken(writer, self.open_writer()?);
                    writer.probe()?;
                    let culprit = match lsns.as_slice() {
                        [one] if broke_once.contains(one) => *one,
                        _ => {
                            broke_once.extend(lsns.iter().copied());
                            isolate.extend(lsns);
                            continue;
                        }
                    };
                    (culprit, format!("the record breaks the lake writer: {error}"))
                }
            };
            let (lsn, reason) = blamed;
            let idx = records.iter().position(|(l, _)| *l == lsn).expect("blamed record is in the slice");
            let (lsn, rec) = records.remove(idx);
            let (_, payload) = rec.encode();
            let staged = match &rec {
                LogRecord::StagedFile(f) => Some(f.file.as_str()),
                _ => None,
            };
            self.quarantine(lsn, Some(rec.table().as_str()), &payload, &reason, staged)?;
            quarantined.push(lsn);
        }
    }

    /// Reopens the writer when its instance no longer answers (DuckDB
    /// invalidates an instance after an internal error, at a commit or in
    /// maintenance as well): retries then start from a working instance.
    fn heal(&self, writer: &mut LakeWriter) {
        if let Err(e) = writer.probe() {
            let msg = e.to_string();
            if msg.contains("invalidated") || msg.contains("INTERNAL") || msg.contains("FATAL") {
                tracing::error!(account = %self.opts.metrics_label, error = %msg, "reopening the lake writer");
                match self.open_writer() {
                    Ok(w) => replace_broken(writer, w),
                    Err(e) => tracing::warn!(account = %self.opts.metrics_label, error = %e, "reopening failed"),
                }
            }
        }
    }

    fn open_writer(&self) -> Result<LakeWriter, CompactorError> {
        let (ext, settings, location) = &self.lake;
        Ok(LakeWriter::open(ext, settings, location, &self.opts.scratch_dir, &self.opts.staged_dir)?)
    }

    /// After a quarantine the registry may hold a table or column that only
    /// the refused record brought: rebuild it from the lake and the records
    /// still in the log (the quarantined ones left out).
    ///
    /// Appends whose effects are recorded but whose records are not yet
    /// durable are re-applied from `inflight`, read *before* the log: an
    /// append that leaves `inflight` after that is durable, so the log read
    /// next has it. Applying an effect twice changes nothing.
    fn rebuild_schemas(&self, writer: &LakeWriter) -> Result<(), CompactorError> {
        let mut schemas = self.schemas.lock().expect("schemas lock");
        let pending: Vec<SchemaEffect> =
            self.inflight.lock().expect("inflight lock").0.values().flatten().cloned().collect();
        let skip = self.quarantined.lock().expect("quarantine lock").keys().copied().collect::<BTreeSet<_>>();
        let mut rebuilt = replay_schemas(&self.wal, self.committed().lsn, writer, &self.opts, &skip, false)?;
        for e in &pending {
            rebuilt.replay(e);
        }
        *schemas = rebuilt;
        Ok(())
    }

    fn advance(&self, c: Committed) {
        self.committed.send_replace(c);
        let _ = self.wal.truncate_before(c.lsn.next());
        let mut pending = self.oldest_pending.lock().expect("pending lock");
        *pending = if self.wal.durable_lsn() > Some(c.lsn) { Some(Instant::now()) } else { None };
        let label = self.opts.metrics_label.clone();
        metrics::gauge!(m::WAL_LAG_BYTES, "account" => label).set(self.wal.uncompacted_bytes() as f64);
    }

    /// Keeps an unusable record's bytes and what is known of it for the
    /// account to inspect (`<lsn>.record` and `<lsn>.json`), and says so
    /// loudly. Both files are written before the log moves past the record.
    ///
    /// A staged-file record's payload is only the file's name: the staged
    /// Parquet file (the acknowledged rows) moves into the quarantine too,
    /// durably, before the log moves on (the open-time sweep of `staged/`
    /// would delete it otherwise).
    fn quarantine(
        &self,
        lsn: Lsn,
        table: Option<&str>,
        payload: &[u8],
        reason: &str,
        staged: Option<&str>,
    ) -> Result<(), CompactorError> {
        std::fs::create_dir_all(&self.opts.quarantine_dir).map_err(CompactorError::Quarantine)?;
        if let Some(file) = staged {
            match std::fs::rename(self.opts.staged_dir.join(file), self.opts.quarantine_dir.join(file)) {
                Ok(()) => {}
                // A record refused because its file is missing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CompactorError::Quarantine(e)),
            }
        }
        let path = self.opts.quarantine_dir.join(format!("{:020}.record", lsn.get()));
        std::fs::write(&path, payload).map_err(CompactorError::Quarantine)?;
        let entry = QuarantinedRecord {
            lsn: lsn.get(),
            table: table.map(str::to_string),
            reason: reason.to_string(),
            bytes: payload.len() as u64,
            quarantined_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&entry).expect("a quarantine entry serializes");
        std::fs::write(path.with_extension("json"), json).map_err(CompactorError::Quarantine)?;
        // Durable before the log moves past the record and drops it.
        crate::durable::sync_file(&path)
            .and_then(|()| crate::durable::sync_file(&path.with_extension("json")))
            .and_then(|()| crate::durable::sync_dir(&self.opts.quarantine_dir))
            .and_then(|()| if staged.is_some() { crate::durable::sync_dir(&self.opts.staged_dir) } else { Ok(()) })
            .and_then(|()| self.opts.quarantine_dir.parent().map_or(Ok(()), crate::durable::sync_dir))
            .map_err(CompactorError::Quarantine)?;
        tracing::error!(account = %self.opts.metrics_label, %lsn, table = table.unwrap_or("?"), reason,
            "record can never be applied; quarantined");
        metrics::counter!(m::QUARANTINED_RECORDS_TOTAL, "account" => self.opts.metrics_label.clone()).increment(1);
        self.quarantined.lock().expect("quarantine lock").insert(lsn, entry);
        Ok(())
    }

    /// The records this account's lake refused, oldest first.
    pub fn quarantined(&self) -> Vec<QuarantinedRecord> {
        self.quarantined.lock().expect("quarantine lock").values().cloned().collect()
    }

    /// Runs maintenance now. Blocking; never concurrent with a flush.
    pub fn maintain_blocking(&self) -> Result<MaintenanceOutcome, CompactorError> {
        let mut writer = self.writer.lock().expect("writer lock");
        let retention = Duration::from_millis(self.opts.snapshot_retention_ms);
        let grace = Duration::from_millis(self.opts.file_cleanup_grace_ms);
        let res = maintenance::run(&mut writer, retention, grace, &self.opts.metrics_label);
        if res.is_err() {
            self.heal(&mut writer);
        }
        Ok(res?)
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

/// The largest magnitude of the integers `check.column` holds in the
/// records for `check.table` (None when it cannot be told: refused).
/// Rows are decoded; a staged file's footer statistics say it.
fn largest_magnitude(
    records: &[LogRecord],
    staged_dir: &std::path::Path,
    check: &crate::tables::RangeCheck,
) -> Option<u128> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes as dt;
    let same = |t: &TableName| t.as_str().eq_ignore_ascii_case(check.table.as_str());
    let mut largest: u128 = 0;
    for r in records {
        match r {
            LogRecord::Rows { table, ipc } if same(table) => {
                let reader =
                    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc.as_ref()), None).ok()?;
                for batch in reader {
                    let batch = batch.ok()?;
                    let Some((i, _)) =
                        batch.schema().fields().iter().enumerate().find(|(_, f)| f.name() == &check.column)
                    else {
                        continue;
                    };
                    let a = batch.column(i);
                    let m: Option<u128> = match a.data_type() {
                        arrow::datatypes::DataType::Int64 => a
                            .as_primitive::<dt::Int64Type>()
                            .iter()
                            .flatten()
                            .map(|v| u128::from(v.unsigned_abs()))
                            .max(),
                        arrow::datatypes::DataType::UInt64 => {
                            a.as_primitive::<dt::UInt64Type>().iter().flatten().map(u128::from).max()
                        }
                        arrow::datatypes::DataType::Int32 => a
                            .as_primitive::<dt::Int32Type>()
                            .iter()
                            .flatten()
                            .map(|v| u128::from(v.unsigned_abs()))
                            .max(),
                        arrow::datatypes::DataType::UInt32 => {
                            a.as_primitive::<dt::UInt32Type>().iter().flatten().map(u128::from).max()
                        }
                        _ if a.null_count() == a.len() => None,
                        _ => return None,
                    };
                    largest = largest.max(m.unwrap_or(0));
                }
            }
            LogRecord::StagedFile(StagedFile { table, file, .. }) if same(table) => {
                use parquet::file::reader::FileReader;
                use parquet::file::statistics::Statistics;
                let f = std::fs::File::open(staged_dir.join(file.as_str())).ok()?;
                let reader = parquet::file::reader::SerializedFileReader::new(f).ok()?;
                let meta = reader.metadata();
                let schema = meta.file_metadata().schema_descr();
                let Some(leaf) =
                    (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == [check.column.clone()])
                else {
                    continue;
                };
                for rg in meta.row_groups() {
                    let col = rg.column(leaf);
                    if col.num_values() == 0 {
                        continue;
                    }
                    let m = match col.statistics()? {
                        Statistics::Int64(s) => {
                            let (lo, hi) = (*s.min_opt()?, *s.max_opt()?);
                            u128::from(lo.unsigned_abs().max(hi.unsigned_abs()))
                        }
                        Statistics::Int32(s) => {
                            let (lo, hi) = (*s.min_opt()?, *s.max_opt()?);
                            u128::from(lo.unsigned_abs().max(hi.unsigned_abs()))
                        }
                        _ => return None,
                    };
                    largest = largest.max(m);
                }
            }
            _ => {}
        }
    }
    Some(largest)
}

/// What a record will do to the tables' schemas.
fn effect_of(r: &LogRecord, staged_dir: &std::path::Path) -> Result<SchemaEffect, CompactorError> {
    let bad = |why: String| CompactorError::InvalidRecord(why);
    Ok(match r {
        LogRecord::Rows { table, ipc } => {
            let schema = ipc_schema(ipc).map_err(bad)?;
            // Every door converts its rows to what the lake keeps before
            // logging them (crate::storable); rows that were not are
            // refused here rather than left for the flush to refuse.
            let plan = crate::storable::StoragePlan::new(&schema).map_err(|e| bad(e.to_string()))?;
            if !plan.keeps_types() {
                return Err(bad(format!(
                    "rows of table {table} are not in the lake's types (convert them with storable::StoragePlan first)"
                )));
            }
            SchemaEffect::Rows(table.clone(), schema)
        }
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
fn replay_schemas(
    wal: &Wal,
    committed: Lsn,
    writer: &LakeWriter,
    opts: &CompactorOptions,
    skip: &BTreeSet<Lsn>,
    sweep_staged: bool,
) -> Result<TableSchemas, CompactorError> {
    let mut schemas = TableSchemas::new(writer.table_schemas()?);
    let mut referenced = std::collections::HashSet::new();
    for r in wal.read_from(committed.next())? {
        let r = r?;
        if skip.contains(&r.lsn) {
            continue;
        }
        let Ok(rec) = LogRecord::decode(r.kind.0, Bytes::from(r.payload)) else { continue };
        if let LogRecord::StagedFile(f) = &rec {
            referenced.insert(f.file.as_str().to_string());
        }
        if let Ok(effect) = effect_of(&rec, &opts.staged_dir) {
            schemas.replay(&effect);
        }
    }
    // Only at open: later, an upload may have staged a file it has not
    // logged yet.
    if !sweep_staged {
        return Ok(schemas);
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

/// Puts `fresh` in place of a writer whose DuckDB instance was invalidated,
/// and leaks the old one: DuckDB 1.5.5 throws from the destructor of a
/// connection to an invalidated database (`ClientContext::Destroy`: FATAL
/// "database has been invalidated"), and a throw from a destructor
/// terminates the whole process (found by attack, issue 18: one account's
/// record aborted the daemon in a restart loop). What leaks is one
/// instance's memory per internal error, until the daemon restarts.
fn replace_broken(writer: &mut LakeWriter, fresh: LakeWriter) {
    let broken = std::mem::replace(writer, fresh);
    std::mem::forget(broken);
    metrics::counter!("duckpond_compactor_instances_leaked_total").increment(1);
}

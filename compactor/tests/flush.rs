//! The compactor against the real DuckDB + ducklake extension: flush,
//! exactly-once across reopen, schema evolution, commands, quarantine,
//! maintenance, waiting for a commit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use common::{query_i64, Account};
use duckpond_compactor::testing::{ipc_stream, narrow_batch};
use duckpond_compactor::CompactorOptions;
use duckpond_schema::{DatasetCommand, LogRecord, TableName};
use duckpond_wal::Lsn;

fn rows(table: &str, writer: i64, seq: i64, n: usize) -> LogRecord {
    LogRecord::Rows { table: TableName::parse(table).unwrap(), ipc: ipc_stream(&[narrow_batch(writer, seq, n)]) }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// One flush commits every table touched in one snapshot carrying the LSN;
/// reopening reads the LSN back and never applies a record twice.
#[test]
fn flush_is_exactly_once_across_reopen() {
    let d = tempfile::tempdir().unwrap();
    exactly_once_across_reopen(Account::new(d.path()));
}

/// The same with the account's catalog in a PostgreSQL schema.
#[test]
fn flush_is_exactly_once_across_reopen_postgres_catalog() {
    let d = tempfile::tempdir().unwrap();
    exactly_once_across_reopen(Account::new_postgres(d.path()));
}

fn exactly_once_across_reopen(acct: Account) {
    let c = acct.open();
    let rt = rt();
    let r1 = rt.block_on(c.append(&[rows("events", 1, 0, 100), rows("metrics", 1, 1, 10)])).unwrap();
    rt.block_on(c.append(&[rows("events", 1, 2, 50)])).unwrap();
    let out = c.flush_blocking().unwrap();
    assert_eq!(out.rows, 160);
    assert_eq!(out.lsn, Lsn::new(3));
    assert_eq!(r1.first, Lsn::new(1));
    let snap = out.snapshot_id.expect("a snapshot");
    assert_eq!(c.committed().lsn, Lsn::new(3));
    assert_eq!(c.wal().read_from(Lsn::new(4)).unwrap().count(), 0, "nothing left to flush");
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.events"), 150);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.metrics"), 10);
    // One snapshot holds both tables' data and the LSN.
    assert_eq!(
        query_i64(&acct, &format!("SELECT count(*) FROM lake.snapshots() WHERE snapshot_id = {snap} AND commit_extra_info LIKE '%duckpond_lsn\": 3%'")),
        1
    );
    // Reopen: nothing is applied again, LSNs continue.
    let c = acct.open();
    assert_eq!(c.committed().lsn, Lsn::new(3));
    assert_eq!(c.flush_blocking().unwrap().rows, 0);
    let r = rt.block_on(c.append(&[rows("events", 1, 3, 5)])).unwrap();
    assert_eq!(r.first, Lsn::new(4));
    c.flush_blocking().unwrap();
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.events"), 155);
    assert_eq!(query_i64(&acct, "SELECT count(DISTINCT (writer, seq, i)) FROM lake.events"), 155);
}

/// A crash after appending but before flushing loses nothing: the records
/// are replayed from the log by the next open.
#[test]
fn unflushed_records_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let rt = rt();
    let c = acct.open();
    rt.block_on(c.append(&[rows("t", 2, 0, 7)])).unwrap();
    drop(c); // no flush
    let c = acct.open();
    assert_eq!(c.flush_blocking().unwrap().rows, 7);
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 7);
}

/// New columns are added as nullable; missing columns become NULL.
#[test]
fn schema_evolution_adds_nullable_columns() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = acct.open();
    let rt = rt();
    let a = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![1, 2]))],
    )
    .unwrap();
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("note", DataType::Utf8, true)])),
        vec![Arc::new(Int64Array::from(vec![3])), Arc::new(StringArray::from(vec!["new"]))],
    )
    .unwrap();
    let t = TableName::parse("evolving").unwrap();
    rt.block_on(c.append(&[LogRecord::Rows { table: t.clone(), ipc: ipc_stream(std::slice::from_ref(&a)) }])).unwrap();
    rt.block_on(c.append(&[LogRecord::Rows { table: t.clone(), ipc: ipc_stream(&[b]) }])).unwrap();
    rt.block_on(c.append(&[LogRecord::Rows { table: t, ipc: ipc_stream(&[a]) }])).unwrap();
    c.flush_blocking().unwrap();
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.evolving"), 5);
    assert_eq!(query_i64(&acct, "SELECT count(note) FROM lake.evolving"), 1);
}

/// Commands apply in log order between rows.
#[test]
fn commands_apply_in_log_order() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = acct.open();
    let rt = rt();
    let t = TableName::parse("t").unwrap();
    let schema_only = ipc_stream(&[narrow_batch(0, 0, 0)]).to_vec();
    rt.block_on(c.append(&[
        LogRecord::Command(DatasetCommand::Create { table: t.clone(), schema_ipc: schema_only }),
        rows("t", 1, 0, 3),
        LogRecord::Command(DatasetCommand::Truncate { table: t.clone() }),
        rows("t", 1, 1, 2),
        rows("gone", 1, 0, 1),
        LogRecord::Command(DatasetCommand::Drop { table: TableName::parse("gone").unwrap() }),
    ]))
    .unwrap();
    c.flush_blocking().unwrap();
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 2);
    assert_eq!(query_i64(&acct, "SELECT min(seq) FROM lake.t"), 1);
    assert_eq!(
        query_i64(&acct, "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'lake' AND table_name = 'gone'"),
        0
    );
}

/// A record that can never apply is quarantined (bytes kept, reason
/// written) and does not block the records around it.
#[test]
fn unusable_record_is_quarantined_not_blocking() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = acct.open();
    let rt = rt();
    let bad = LogRecord::Rows { table: TableName::parse("t").unwrap(), ipc: Bytes::from_static(b"not arrow") };
    // append() refuses it before the log ...
    let refused = rt.block_on(c.append(&[rows("t", 1, 0, 4), bad.clone(), rows("t", 1, 1, 4)]));
    assert!(matches!(refused, Err(duckpond_compactor::CompactorError::InvalidRecord(_))), "{refused:?}");
    // ... so put it in the log behind the check's back, as a bug or an
    // older version could have: the flush must still not be blocked.
    let raw = |r: &LogRecord| {
        let (kind, payload) = r.encode();
        (duckpond_wal::RecordKind(kind), payload)
    };
    rt.block_on(c.wal().append_batch(vec![raw(&rows("t", 1, 0, 4)), raw(&bad), raw(&rows("t", 1, 1, 4))])).unwrap();
    let out = c.flush_blocking().unwrap();
    assert_eq!(out.quarantined, vec![Lsn::new(2)]);
    assert_eq!(out.rows, 8);
    assert!(d.path().join("quarantine/00000000000000000002.record").is_file());
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("quarantine/00000000000000000002.json")).unwrap()).unwrap();
    assert!(entry["reason"].as_str().unwrap().contains("Arrow IPC"), "{entry}");
    assert_eq!(entry["lsn"], 2);
    assert_eq!(c.quarantined().len(), 1);
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 8);
    // Reopened, the account still knows what it quarantined.
    assert_eq!(acct.open().quarantined()[0].lsn, 2);
}

fn raw(r: &LogRecord) -> (duckpond_wal::RecordKind, Bytes) {
    let (kind, payload) = r.encode();
    (duckpond_wal::RecordKind(kind), payload)
}

fn one_column(table: &str, field: Field, values: arrow::array::ArrayRef) -> LogRecord {
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![values]).unwrap();
    LogRecord::Rows { table: TableName::parse(table).unwrap(), ipc: ipc_stream(&[batch]) }
}

/// A record whose rows the lake cannot store (here a negative interval,
/// which DuckLake's Parquet writer refuses with an *I/O* error: the kind of
/// record that once wedged an account, every flush failing and retried for
/// ever) is quarantined on the first flush; the records of other tables
/// around it commit, and a wait on it says it was refused rather than
/// naming a snapshot. (The doors refuse such rows before the log; this
/// record is put there behind their back.)
#[test]
fn a_record_the_lake_cannot_store_never_stops_the_account() {
    use arrow::array::{Int64Array as I64, IntervalMonthDayNanoArray};
    use arrow::datatypes::{IntervalMonthDayNano, IntervalUnit};
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = acct.open();
    let rt = rt();
    let iv = one_column(
        "iv",
        Field::new("d", DataType::Interval(IntervalUnit::MonthDayNano), true),
        Arc::new(IntervalMonthDayNanoArray::from(vec![IntervalMonthDayNano::new(0, -1, 0)])),
    );
    let other = one_column("other", Field::new("x", DataType::Int64, true), Arc::new(I64::from(vec![1])));
    let range = rt.block_on(c.wal().append_batch(vec![raw(&rows("t", 1, 0, 4)), raw(&iv), raw(&other)])).unwrap();
    let out = c.flush_blocking().unwrap();
    assert_eq!(out.quarantined, vec![Lsn::new(2)]);
    assert_eq!(c.committed().lsn, Lsn::new(3));
    let waited = rt.block_on(
        c.wait_committed(&[duckpond_wal::LsnRange { first: Lsn::new(2), last: Lsn::new(2) }], Duration::from_secs(5)),
    );
    assert!(matches!(waited, Err(duckpond_compactor::CompactorError::Quarantined { lsn: 2, .. })), "{waited:?}");
    let ok = rt.block_on(
        c.wait_committed(&[duckpond_wal::LsnRange { first: Lsn::new(3), last: range.last }], Duration::from_secs(5)),
    );
    assert!(ok.is_ok(), "{ok:?}");
    // The registry forgot the refused table: a later write of it with
    // another type is not refused by a schema that never existed.
    assert!(c.table_schema(&TableName::parse("iv").unwrap()).is_none());
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 4);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.other"), 1);
}

/// Records of one table and schema are inserted as one group; when the
/// lake refuses the group for one record's values, the others of the group
/// still commit (the group is retried record by record) and only the
/// culprit is quarantined.
#[test]
fn a_refused_group_is_split_to_find_the_culprit() {
    use arrow::array::Date32Array;
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = acct.open();
    let rt = rt();
    let date = one_column("t", Field::new("x", DataType::Date32, true), Arc::new(Date32Array::from(vec![1])));
    rt.block_on(c.append(&[date])).unwrap();
    c.flush_blocking().unwrap();
    let text = |v: &str| one_column("t", Field::new("x", DataType::Utf8, true), Arc::new(StringArray::from(vec![v])));
    // Behind the check's back (it refuses text into a DATE column): the
    // first and last parse as dates, the middle one does not.
    rt.block_on(c.wal().append_batch(vec![
        raw(&text("2020-01-01")),
        raw(&text("not a date")),
        raw(&text("2020-01-03")),
    ]))
    .unwrap();
    let out = c.flush_blocking().unwrap();
    assert_eq!(out.quarantined, vec![Lsn::new(3)]);
    assert_eq!(out.rows, 2);
    assert_eq!(c.quarantined()[0].table.as_deref(), Some("t"));
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 3);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t WHERE x = DATE '2020-01-03'"), 1);
}

/// wait_committed wakes the loop and returns the snapshot holding the write.
#[test]
fn wait_committed_returns_the_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = Arc::new(acct.open_with(CompactorOptions { flush_interval_ms: 60_000, ..acct.options() }));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pool = Arc::new(tokio::sync::Semaphore::new(2));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loop_task = rt.spawn(c.clone().run(pool, stop_rx));
    let started = std::time::Instant::now();
    let committed = rt.block_on(async {
        let r = c.append(&[rows("t", 1, 0, 3)]).await.unwrap();
        c.wait_committed(&[r], Duration::from_secs(10)).await.unwrap()
    });
    assert!(started.elapsed() < Duration::from_secs(30), "did not wait for the 60 s interval");
    assert!(committed.snapshot_id.is_some());
    assert_eq!(committed.lsn, Lsn::new(1));
    stop_tx.send(true).unwrap();
    rt.block_on(loop_task).unwrap();
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 3);
}

/// Parquet files under the account's data path.
fn parquet_files(acct: &Account) -> usize {
    let mut n = 0;
    let mut stack = vec![acct.location().data_path];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "parquet") {
                n += 1;
            }
        }
    }
    n
}

/// Files a merge replaced stay on disk for the cleanup grace (a query may
/// still be reading them) and go once it has passed. (Grace 0, DuckLake's
/// own cleanup, is exercised by the maintenance and crash tests.)
#[test]
fn cleanup_keeps_replaced_files_for_the_grace_period() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let rt = rt();
    let c = acct.open_with(CompactorOptions { snapshot_retention_ms: 0, ..acct.options() });
    for seq in 0..6 {
        rt.block_on(c.append(&[rows("t", 1, seq, 10)])).unwrap();
        c.flush_blocking().unwrap();
    }
    assert_eq!(parquet_files(&acct), 6);
    let out = c.maintain_blocking().unwrap();
    assert_eq!(out.data_files, vec![("t".to_string(), 1)], "{out:?}");
    let within_grace = parquet_files(&acct);
    assert_eq!(within_grace, 7, "replaced files deleted inside the grace period");
    drop(c);
    // Past a short grace, the compactor's own cleanup deletes them.
    let c = acct.open_with(CompactorOptions { snapshot_retention_ms: 0, file_cleanup_grace_ms: 500, ..acct.options() });
    std::thread::sleep(Duration::from_millis(800));
    c.maintain_blocking().unwrap();
    assert_eq!(parquet_files(&acct), 1, "the six replaced files outlived the grace");
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 60);
}

/// Maintenance merges small files and expires old snapshots, and the
/// committed LSN survives it.
#[test]
fn maintenance_merges_and_keeps_the_committed_lsn() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = acct.open_with(CompactorOptions { snapshot_retention_ms: 0, file_cleanup_grace_ms: 0, ..acct.options() });
    let rt = rt();
    for seq in 0..12 {
        rt.block_on(c.append(&[rows("t", 1, seq, 10)])).unwrap();
        c.flush_blocking().unwrap();
    }
    let files_before = query_i64(&acct, "SELECT file_count FROM ducklake_table_info('lake') WHERE table_name = 't'");
    assert_eq!(files_before, 12);
    let out = c.maintain_blocking().unwrap();
    assert!(out.snapshots_expired > 0, "{out:?}");
    let files_after = query_i64(&acct, "SELECT file_count FROM ducklake_table_info('lake') WHERE table_name = 't'");
    assert!(files_after < files_before, "{files_after} files after merge");
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 120);
    let c = acct.open();
    assert_eq!(c.committed().lsn, Lsn::new(12));
    rt.block_on(c.append(&[rows("t", 1, 99, 1)])).unwrap();
    c.flush_blocking().unwrap();
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 121);
}

/// A staged upload the lake refuses is quarantined with its Parquet file,
/// the only copy of rows that were acknowledged: the file moves into the
/// quarantine durably, so neither a power loss (the account on lazyfs,
/// which forgets what no fsync covered) nor the sweep of `staged/` at the
/// next open can lose it.
#[test]
fn a_refused_staged_file_moves_into_the_quarantine_durably() {
    use duckpond_schema::{StagedFile, StagedFileName};
    let mount = tempfile::tempdir().unwrap();
    let mut fs = duckpond_lazyfs::LazyFs::mount(mount.path()).expect("mounting lazyfs (needs root and /dev/fuse)");
    let root = fs.path().join("acct");
    std::fs::create_dir(&root).unwrap();
    let acct = Account::new(&root);
    // What account creation does in the daemon.
    duckpond_compactor::durable::sync_tree(&root).unwrap();
    let rt = rt();
    let c = acct.open();
    rt.block_on(c.wal().append_batch(vec![raw(&rows("t", 1, 0, 4))])).unwrap();
    c.flush_blocking().unwrap();
    // A staged file whose `writer` column holds text: the insert into the
    // BIGINT column is refused.
    let name = StagedFileName::from_hex_id(&"ab".repeat(16)).unwrap();
    let staged = root.join("staged").join(name.as_str());
    let schema = Arc::new(Schema::new(vec![Field::new("writer", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["not a number"]))]).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&staged).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    duckpond_compactor::durable::sync_file(&staged).unwrap();
    duckpond_compactor::durable::sync_dir(staged.parent().unwrap()).unwrap();
    let bytes = std::fs::metadata(&staged).unwrap().len();
    let rec =
        LogRecord::StagedFile(StagedFile { table: TableName::parse("t").unwrap(), file: name.clone(), rows: 1, bytes });
    rt.block_on(c.wal().append_batch(vec![raw(&rec)])).unwrap();
    let out = c.flush_blocking().unwrap();
    assert_eq!(out.quarantined.len(), 1, "{out:?}");
    drop(c);
    fs.power_loss().unwrap();
    let kept = root.join("quarantine").join(name.as_str());
    assert!(kept.is_file(), "the refused upload's file is gone after the power loss");
    assert_eq!(std::fs::metadata(&kept).unwrap().len(), bytes);
    // The next open sweeps staged/; the quarantined file stays.
    let c = acct.open();
    assert!(kept.is_file() && !staged.exists());
    assert_eq!(c.quarantined().len(), 1);
    drop(c);
    assert_eq!(query_i64(&acct, "SELECT count(*) FROM lake.t"), 4);
}

//! Power loss, not just a killed process: the daemon's storage (every
//! account's log, lake, catalog and staged uploads) lives on lazyfs
//! (testing/lazyfs), which at a cut forgets every byte and directory entry
//! no fsync covered, as a machine that loses power forgets its page cache.
//! A kill -9 alone cannot show a missing fsync: the page cache outlives the
//! process.
//!
//! While streams, uploads (appending and replacing) and remote writes are
//! acknowledged, the compactor flushes every
//! 50 ms (log truncated behind it) and maintenance merges and deletes files
//! every 300 ms, the power goes at a random moment, many times; the daemon
//! starts on what is left, and an independent DuckDB (Python, the official
//! extensions) finds every acknowledged row exactly once. The same check
//! must catch the loss when the log is not fsynced (`durability: none`).
//!
//! Needs root and /dev/fuse (the suite's machine has both). The seed of
//! the cut points is printed; `DUCKPOND_POWER_LOSS_SEED` replays it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use common::{json_of, lake_query, Backend, Server, TestEnv};
use duckpond_lazyfs::LazyFs;
use duckpond_schema::prompb;
use rand::{Rng, SeedableRng};

/// Rows per write; a write is all or nothing.
const ROWS: i64 = 500;

struct Rig {
    env: TestEnv,
    fs: LazyFs,
    _mount: tempfile::TempDir,
    key: String,
    root: std::path::PathBuf,
}

impl Rig {
    fn new(extra_config: &str) -> Rig {
        let mount = tempfile::tempdir().unwrap();
        let fs = LazyFs::mount(mount.path()).expect("mounting lazyfs: the power-loss tests need root and /dev/fuse");
        let env = TestEnv::migrated(Backend::Sqlite);
        env.write_config(&format!("storage:\n  local_path: {}\n{extra_config}", mount.path().display()));
        let (a, key) = env.create_account("acme");
        let root = mount.path().join("accounts").join(a["id"].as_str().unwrap());
        Rig { env, fs, _mount: mount, key, root }
    }
}

/// An Arrow IPC stream (written by arrow-rs) of `ids`, in two batches.
fn ipc_of(lo: i64, hi: i64) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("v", DataType::Float64, false),
    ]));
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    let mid = lo + (hi - lo) / 2;
    for (a, b) in [(lo, mid), (mid, hi)] {
        let ids: Vec<i64> = (a..b).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(StringArray::from(ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(ids.iter().map(|&i| i as f64 / 2.0).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    out
}

fn csv_of(lo: i64, hi: i64) -> String {
    std::iter::once("id,name,v\n".to_string())
        .chain((lo..hi).map(|i| format!("{i},n{i},{}\n", i as f64 / 2.0)))
        .collect()
}

/// Where remote-written sample timestamps start (ms); a sample's value is
/// its id (timestamp minus this).
const PROM_BASE_MS: i64 = 1_700_000_000_000;

/// A remote-write 1.0 request: one series, a sample per id.
fn remote_write_of(lo: i64, hi: i64) -> Vec<u8> {
    use prost::Message;
    let req = prompb::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: vec![prompb::Label { name: "__name__".into(), value: "power_loss".into() }],
            samples: (lo..hi).map(|i| prompb::Sample { value: i as f64, timestamp: PROM_BASE_MS + i }).collect(),
            ..Default::default()
        }],
        metadata: vec![],
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

/// What a write went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Arrow IPC stream into `events`.
    Stream,
    /// CSV upload into `events` (converted to a staged Parquet file).
    Upload,
    /// Prometheus remote write (samples into `prom_samples`).
    RemoteWrite,
    /// CSV upload replacing the table `latest` (a drop and a staged file
    /// in one log append).
    Replace,
}

/// Acknowledged writes: (kind, first id, end id).
type Acked = Vec<(Kind, i64, i64)>;

/// Writes from three clients, one per kind, until `stop`; returns the
/// acknowledged id ranges.
fn write_until(s: &Server, key: &str, next: &AtomicI64, stop: &AtomicBool) -> Acked {
    let acked = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for kind in [Kind::Stream, Kind::Upload, Kind::RemoteWrite, Kind::Replace] {
            let acked = &acked;
            scope.spawn(move || {
                let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let lo = next.fetch_add(ROWS, Ordering::Relaxed);
                    let hi = lo + ROWS;
                    let req = match kind {
                        Kind::Stream => http
                            .post(s.url("/api/stream/arrow/events"))
                            .header("Content-Type", "application/vnd.apache.arrow.stream")
                            .body(ipc_of(lo, hi)),
                        Kind::Upload => http
                            .post(s.url("/api/datasets/events/upload"))
                            .header("Content-Type", "text/csv")
                            .body(csv_of(lo, hi)),
                        Kind::Replace => http
                            .post(s.url("/api/datasets/latest/upload?mode=replace"))
                            .header("Content-Type", "text/csv")
                            .body(csv_of(lo, hi)),
                        Kind::RemoteWrite => http
                            .post(s.url("/api/v1/write"))
                            .header("Content-Type", "application/x-protobuf")
                            .header("Content-Encoding", "snappy")
                            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                            .body(remote_write_of(lo, hi)),
                    };
                    // An error here is the cut landing mid-request: not
                    // acknowledged, so it may land or not.
                    if let Ok(r) = req.header("X-API-Key", key).send() {
                        if r.status().is_success() {
                            acked.lock().unwrap().push((kind, lo, hi));
                        } else if !stop.load(Ordering::Relaxed) {
                            panic!(
                                "a {kind:?} write was refused before any cut: {} {}",
                                r.status(),
                                r.text().unwrap_or_default()
                            );
                        }
                    }
                }
            });
        }
    });
    acked.into_inner().unwrap()
}

fn kill_9(s: Server) {
    let _ = std::process::Command::new("kill").args(["-9", &s.pid().to_string()]).status();
    drop(s);
}

/// Waits until everything the log holds is committed to the lake.
fn drained(s: &Server, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let me = json_of(s.get("/api/account", Some(key)), 200);
        if me["usage"]["committed_lsn"] == me["usage"]["durable_lsn"] {
            return;
        }
        assert!(Instant::now() < deadline, "the log never drained: {me}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Acknowledged ids missing from the lake and ids present more than once,
/// over all kinds, as an independent DuckDB reads them; checks every
/// row's content and that every write is all or nothing.
fn audit(rig: &Rig, acked: &Acked) -> (i64, i64) {
    let of = |kinds: &[Kind]| -> Vec<(i64, i64)> {
        acked.iter().filter(|(k, _, _)| kinds.contains(k)).map(|&(_, lo, hi)| (lo, hi)).collect()
    };
    let (events, samples) = (of(&[Kind::Stream, Kind::Upload]), of(&[Kind::RemoteWrite]));
    let (m1, d1) = audit_table(rig, "events", "SELECT id, name = 'n' || id AND v = id / 2 AS ok FROM events", &events);
    let rows = format!(
        "SELECT timestamp_ms - {PROM_BASE_MS} AS id, value = timestamp_ms - {PROM_BASE_MS} AND NOT stale AS ok \
         FROM prom_samples"
    );
    let (m2, d2) = audit_table(rig, "prom_samples", &rows, &samples);
    // Replaced wholesale each time: exactly one write's rows, whole, and
    // not older than the last acknowledged one.
    let latest = acked.iter().filter(|a| a.0 == Kind::Replace).map(|a| a.1).max();
    let (mut m3, d3) = (0, 0);
    let exists = lake_query(
        &rig.root,
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'lake' AND table_name = 'latest'",
    );
    if latest.is_some() && exists[0][0] == 0 {
        m3 = ROWS;
    } else if let Some(last) = latest {
        let got = lake_query(
            &rig.root,
            "SELECT count(*), count(DISTINCT id), min(id), max(id), count(*) FILTER (name = 'n' || id AND v = id / 2) FROM latest",
        );
        assert_eq!(got[0][4], got[0][0], "latest has damaged rows: {got:?}");
        let (n, distinct, lo, hi) =
            (got[0][0].as_i64().unwrap(), got[0][1].as_i64().unwrap(), got[0][2].as_i64(), got[0][3].as_i64());
        assert_eq!((n, distinct), (ROWS, ROWS), "latest holds {got:?}");
        let lo = lo.unwrap();
        assert_eq!((lo % ROWS, hi.unwrap() - lo), (0, ROWS - 1), "latest holds {got:?}");
        if lo < last {
            m3 = ROWS; // the last acknowledged replace was lost
        }
    }
    (m1 + m2 + m3, d1 + d2 + d3)
}

/// [`audit`] of one table; `rows` yields (id, ok) per row.
fn audit_table(rig: &Rig, table: &str, rows: &str, acked: &[(i64, i64)]) -> (i64, i64) {
    let total: i64 = acked.iter().map(|(lo, hi)| hi - lo).sum();
    let exists = lake_query(
        &rig.root,
        &format!("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'lake' AND table_name = '{table}'"),
    );
    if exists[0][0] == 0 {
        return (total, 0);
    }
    let dup = lake_query(
        &rig.root,
        &format!("SELECT count(*) FROM (SELECT id FROM ({rows}) GROUP BY id HAVING count(*) > 1)"),
    );
    let bad = lake_query(&rig.root, &format!("SELECT count(*) FROM ({rows}) WHERE ok IS NOT TRUE"));
    assert_eq!(bad[0][0], 0, "{table}: rows with damaged content");
    let partial = lake_query(
        &rig.root,
        &format!("SELECT count(*) FROM (SELECT id // {ROWS} AS w FROM ({rows}) GROUP BY w HAVING count(DISTINCT id) <> {ROWS})"),
    );
    assert_eq!(partial[0][0], 0, "{table}: a write landed in part");
    let ranges: Vec<String> = acked.iter().map(|(lo, hi)| format!("({lo}, {hi})")).collect();
    let present = lake_query(
        &rig.root,
        &format!(
            "SELECT count(DISTINCT id) FROM ({rows}) JOIN (VALUES {}) acked(lo, hi) ON id >= lo AND id < hi",
            if ranges.is_empty() { "(0, 0)".into() } else { ranges.join(", ") }
        ),
    );
    (total - present[0][0].as_i64().unwrap(), dup[0][0].as_i64().unwrap())
}

#[test]
fn power_loss_loses_and_duplicates_nothing_acknowledged() {
    let seed: u64 = std::env::var("DUCKPOND_POWER_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("power-loss seed: {seed} (DUCKPOND_POWER_LOSS_SEED replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rig = Rig::new(
        "wal:\n  segment_size_bytes: 65536\ncompactor:\n  flush_interval_ms: 50\n  maintenance_interval_ms: 300\n  \
         snapshot_retention_hours: 0\n  file_cleanup_grace_ms: 0\n",
    );
    let next = AtomicI64::new(0);
    let mut acked = Vec::new();
    let mut lost_bytes = 0;
    for round in 0..8 {
        let s = rig.env.serve();
        let stop = AtomicBool::new(false);
        // The first remote write after a start waits for the account's
        // query worker (it loads what is stored); under this load that can
        // take two seconds, so rounds are long enough for it to be answered.
        let cut_after = Duration::from_millis(rng.gen_range(1_000..4_000));
        std::thread::scope(|scope| {
            let writes = scope.spawn(|| write_until(&s, &rig.key, &next, &stop));
            std::thread::sleep(cut_after);
            stop.store(true, Ordering::Relaxed);
            let _ = std::process::Command::new("kill").args(["-9", &s.pid().to_string()]).status();
            acked.extend(writes.join().unwrap());
        });
        drop(s);
        let cut = rig.fs.power_loss().unwrap();
        eprintln!("round {round}: cut after {cut_after:?}: {cut:?}");
        lost_bytes += cut.bytes_lost;
    }
    let s = rig.env.serve();
    drained(&s, &rig.key);
    drop(s);
    // Uploads cut off mid-conversion or staged but never logged leave
    // nothing behind once the log is applied.
    for dir in ["incoming", "staged", "scratch"] {
        let left: Vec<_> = std::fs::read_dir(rig.root.join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}/ keeps {left:?}");
    }
    let (missing, duplicated) = audit(&rig, &acked);
    assert_eq!((missing, duplicated), (0, 0), "acknowledged rows missing, rows duplicated");
    // The cuts threw away real work, and the daemon did sync (without
    // both, the test would prove nothing).
    assert!(lost_bytes > 0, "no cut found anything unsynced");
    for kind in [Kind::Stream, Kind::Upload, Kind::RemoteWrite, Kind::Replace] {
        let n = acked.iter().filter(|a| a.0 == kind).count();
        // Remote writes are fewer: the first one of each start waits for
        // the account's query worker.
        let least = if kind == Kind::RemoteWrite { 2 } else { 4 };
        assert!(n >= least, "too few {kind:?} writes to mean anything: {n}");
    }
    let c = rig.fs.counters();
    assert!(c.file_syncs > 0 && c.directory_syncs > 0, "{c:?}");
    // Flushes and merges happened between the cuts: the lake holds several
    // snapshots and maintenance expired the first ones.
    let first = lake_query(&rig.root, "SELECT min(snapshot_id) FROM snapshots()");
    assert!(first[0][0].as_i64().unwrap() > 3, "maintenance never expired anything: {first:?}");
}

/// The check above can fail: with the log never fsynced, writes
/// acknowledged just before the cut (and not yet flushed) are gone.
#[test]
fn power_loss_finds_the_loss_when_the_log_is_not_synced() {
    let mut rig = Rig::new(
        "wal:\n  durability: none\ncompactor:\n  flush_interval_ms: 600000\n  flush_threshold_bytes: 1073741824\n",
    );
    let s = rig.env.serve();
    let next = AtomicI64::new(0);
    let stop = AtomicBool::new(false);
    let acked = std::thread::scope(|scope| {
        let writes = scope.spawn(|| write_until(&s, &rig.key, &next, &stop));
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, Ordering::Relaxed);
        writes.join().unwrap()
    });
    kill_9(s);
    rig.fs.power_loss().unwrap();
    let s = rig.env.serve();
    drained(&s, &rig.key);
    drop(s);
    assert!(!acked.is_empty());
    let (missing, _) = audit(&rig, &acked);
    assert!(missing > 0, "durability none lost nothing: the power-loss check cannot see a missing fsync");
}

//! End-to-end compactor benchmark (not criterion: it measures a pipeline over
//! seconds, with a reference measured in the same run).
//!
//! 1. Throughput: rows/s from the first append to the commit of the last,
//!    through WAL (fsync) -> compactor -> DuckLake snapshot, for a narrow
//!    (3 columns) and a wide (50 columns) table. Reference: the same rows
//!    inserted by the same DuckDB into the same kind of DuckLake directly
//!    (`INSERT ... SELECT * FROM read_parquet`), no WAL, one commit.
//! 2. Freshness at a steady rate: time from a write's acknowledgement to
//!    its commit in a snapshot (what a query can see), p50/p99.
//!
//! Run: `make bench-compactor` (needs DUCKPOND_TEST_EXTENSION_DIR).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use duckpond_compactor::testing::ipc_stream;
use duckpond_compactor::{AccountCompactor, CatalogLocation, CompactorOptions, Extensions, InstanceSettings};
use duckpond_schema::{LogRecord, TableName};
use duckpond_wal::WalOptions;
use support::{record, Figure};

mod support;

const ROWS_PER_APPEND: usize = 50_000;
const THROUGHPUT_ROWS: usize = 5_000_000;
const SETTINGS: InstanceSettings = InstanceSettings { memory_limit_mb: 4096, threads: 2 };

fn batch(cols: usize, rows: usize, base: i64) -> RecordBatch {
    let mut fields = vec![Field::new("ts", DataType::Int64, false), Field::new("id", DataType::Int64, false)];
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values((0..rows as i64).map(|i| base + i))),
        Arc::new(Int64Array::from_iter_values((0..rows as i64).map(|i| (base + i) % 1000))),
    ];
    for c in 2..cols {
        fields.push(Field::new(format!("v{c}"), DataType::Float64, true));
        arrays.push(Arc::new(Float64Array::from_iter_values((0..rows).map(|i| (i * c) as f64 * 0.5))));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

fn open(ext: &Extensions, dir: &Path, opts: CompactorOptions) -> (Arc<AccountCompactor>, CatalogLocation) {
    let loc = CatalogLocation::sqlite(dir.join("catalog.sqlite"), dir.join("data"));
    loc.create(ext, &SETTINGS).unwrap();
    let opts = CompactorOptions {
        scratch_dir: dir.join("scratch"),
        staged_dir: dir.join("staged"),
        quarantine_dir: dir.join("q"),
        ..opts
    };
    let wal = WalOptions {
        max_uncompacted_bytes: 16 << 30,
        max_inflight_bytes: 4 << 30,
        max_record_bytes: 256 << 20,
        ..Default::default()
    };
    let (c, _) = AccountCompactor::open(ext, &SETTINGS, &loc, &dir.join("wal"), wal, opts).unwrap();
    (Arc::new(c), loc)
}

fn throughput(ext: &Extensions, cols: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = open(ext, dir.path(), CompactorOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let table = TableName::parse("t").unwrap();
    let appends = THROUGHPUT_ROWS / ROWS_PER_APPEND;
    let ipc = ipc_stream(&[batch(cols, ROWS_PER_APPEND, 0)]);
    let pool = Arc::new(tokio::sync::Semaphore::new(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loop_task = rt.spawn(c.clone().run(pool, stop_rx));
    let start = Instant::now();
    let last = rt.block_on(async {
        let mut last = None;
        for _ in 0..appends {
            let r = c.append(&[LogRecord::Rows { table: table.clone(), ipc: ipc.clone() }]).await.unwrap();
            last = Some(r.last);
        }
        c.wait_flushed(last.unwrap(), Duration::from_secs(600)).await.unwrap();
        last
    });
    let pipeline = start.elapsed().as_secs_f64();
    let _ = last;
    stop_tx.send(true).unwrap();
    rt.block_on(loop_task).unwrap();

    // Reference: the same rows straight into a DuckLake by the same DuckDB.
    let rdir = tempfile::tempdir().unwrap();
    let loc = CatalogLocation::sqlite(rdir.path().join("catalog.sqlite"), rdir.path().join("data"));
    loc.create(ext, &SETTINGS).unwrap();
    let conn = ext.open_instance(&SETTINGS).unwrap();
    conn.execute_batch(&format!("{}, DATA_INLINING_ROW_LIMIT 0)", loc.attach_sql("lake", false).trim_end_matches(')')))
        .unwrap();
    let pq = rdir.path().join("src.parquet");
    {
        let f = std::fs::File::create(&pq).unwrap();
        let b = batch(cols, ROWS_PER_APPEND, 0);
        let mut w = parquet::arrow::ArrowWriter::try_new(f, b.schema(), None).unwrap();
        for _ in 0..appends {
            w.write(&b).unwrap();
        }
        w.close().unwrap();
    }
    let start = Instant::now();
    conn.execute_batch(&format!("CREATE TABLE lake.t AS SELECT * FROM read_parquet('{}')", pq.display())).unwrap();
    let reference = start.elapsed().as_secs_f64();
    (THROUGHPUT_ROWS as f64 / pipeline, THROUGHPUT_ROWS as f64 / reference)
}

/// With `wake`, each write asks for its commit (`?wait=committed`); without,
/// writes are only watched and become visible on the flush interval.
fn freshness(ext: &Extensions, rows_per_s: usize, seconds: u64, wake: bool) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = open(ext, dir.path(), CompactorOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pool = Arc::new(tokio::sync::Semaphore::new(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loop_task = rt.spawn(c.clone().run(pool, stop_rx));
    let tick = Duration::from_millis(50);
    let rows_per_tick = rows_per_s * 50 / 1000;
    let ipc = ipc_stream(&[batch(3, rows_per_tick, 0)]);
    let table = TableName::parse("t").unwrap();
    let mut latencies = rt.block_on(async {
        let mut watchers = Vec::new();
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut next = Instant::now();
        while Instant::now() < end {
            let r = c.append(&[LogRecord::Rows { table: table.clone(), ipc: ipc.clone() }]).await.unwrap();
            let acked = Instant::now();
            let c2 = c.clone();
            let mut rx = c2.subscribe();
            watchers.push(tokio::spawn(async move {
                if wake {
                    c2.wait_committed(&[r], Duration::from_secs(120)).await.unwrap();
                } else {
                    rx.wait_for(|c| c.lsn >= r.last).await.unwrap();
                }
                acked.elapsed().as_secs_f64()
            }));
            next += tick;
            tokio::time::sleep_until(next.into()).await;
        }
        let mut out = Vec::new();
        for w in watchers {
            out.push(w.await.unwrap());
        }
        out
    });
    stop_tx.send(true).unwrap();
    rt.block_on(loop_task).unwrap();
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let achieved = (latencies.len() * rows_per_tick) as f64 / seconds as f64;
    (p(0.5), p(0.99), achieved)
}

fn main() {
    // `cargo test --all-targets` builds benches in test mode and runs them
    // with --bench absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ext_dir = std::env::var_os("DUCKPOND_TEST_EXTENSION_DIR").expect("set DUCKPOND_TEST_EXTENSION_DIR");
    let ext = Extensions::locate(Path::new(&ext_dir)).unwrap();
    println!("| table | rows | pipeline rows/s (WAL fsync -> snapshot) | direct DuckLake insert rows/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for (name, cols) in [("narrow (3 columns)", 3), ("wide (50 columns)", 50)] {
        let (pipe, reference) = throughput(&ext, cols);
        println!("| {name} | {THROUGHPUT_ROWS} | {pipe:.0} | {reference:.0} | {:.2}x |", pipe / reference);
        let what = format!("WAL (fsync) -> compactor -> DuckLake snapshot, {name}, {THROUGHPUT_ROWS} rows");
        record(
            "compactor",
            &Figure {
                id: &format!("pipeline_{cols}_columns"),
                what: &what,
                value: pipe,
                unit: "rows/s",
                higher_is_better: true,
                reference: "the same DuckDB inserting the same rows into a DuckLake directly (one commit, no WAL)",
                reference_value: reference,
                claim: None,
            },
        );
    }
    println!();
    println!("| offered rows/s (narrow) | mode | achieved rows/s | ack -> visible p50 | p99 |");
    println!("|---:|---|---:|---:|---:|");
    for rate in [200_000usize, 1_000_000] {
        for (wake, mode) in [(false, "flush interval 1000 ms"), (true, "wait=committed")] {
            let (p50, p99, achieved) = freshness(&ext, rate, 10, wake);
            println!("| {rate} | {mode} | {achieved:.0} | {:.0} ms | {:.0} ms |", p50 * 1e3, p99 * 1e3);
            if rate == 1_000_000 && !wake {
                record(
                    "compactor",
                    &Figure {
                        id: "freshness_p99",
                        what: "ack -> visible in a snapshot, p99, at 1M narrow rows/s, default flush interval",
                        value: p99 * 1e3,
                        unit: "ms",
                        higher_is_better: false,
                        reference: "the flush interval itself (1000 ms, configured, not measured)",
                        reference_value: 1000.0,
                        claim: None,
                    },
                );
            }
        }
    }
}

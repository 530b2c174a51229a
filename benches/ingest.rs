//! End-to-end ingest benchmark against the real daemon (`duckpond api
//! serve`, WAL with fsync), each figure next to a reference measured in
//! the same run on the same machine.
//!
//! 1. CSV upload, MB/s until the 2xx (body spooled, converted to Parquet by
//!    DuckDB, staged file fsynced, record logged), and until committed in
//!    the lake (`?wait=committed`: the compactor has written the lake's
//!    Parquet files and committed). Reference: DuckDB's own
//!    `COPY (FROM read_csv(f)) TO 'f.parquet'` on the same file, same thread
//!    count.
//! 2. Arrow IPC streaming, rows/s and MB/s until the 2xx (every batch
//!    fsynced in the WAL), narrow (3 columns) and wide (50 columns).
//!    Reference: writing the same IPC bytes to a file and fdatasync.
//!
//! Run: `make bench-ingest` (needs DUCKPOND_TEST_EXTENSION_DIR).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use support::{record, start, wait_drained, Figure, Profile, THREADS};

mod support;

const CSV_ROWS: usize = 2_000_000;
/// Rounds of the CSV comparison (reference and both uploads in each).
const CSV_ROUNDS: usize = 5;
const NARROW_ROWS: usize = 10_000_000;
const WIDE_ROWS: usize = 400_000;
const BATCH_ROWS: usize = 65_536;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ext =
        std::env::var("DUCKPOND_TEST_EXTENSION_DIR").expect("set DUCKPOND_TEST_EXTENSION_DIR (make bench-ingest)");
    let tmp = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let (mut server, url, key) = start(tmp.path(), &ext);
    let http = reqwest::blocking::Client::builder().timeout(None).build().unwrap();

    // 1. CSV -> Parquet.
    let csv = tmp.path().join("in.csv");
    write_csv(&csv, CSV_ROWS);
    let csv_mb = std::fs::metadata(&csv).unwrap().len() as f64 / 1e6;
    // The body is sent from memory, as the reference reads its input from
    // the page cache: reqwest's blocking client streams a `File` body in
    // small chunks through its runtime, which alone cost about 0.3 s of the
    // 0.9 s an upload took here (the server's own `upload durable` log line
    // said 0.55-0.6 s).
    let body = bytes::Bytes::from(std::fs::read(&csv).unwrap());
    // Like the reference, each upload runs alone: the compactor has
    // committed the previous one before the clock starts.
    let upload = |table: String, query: &str, expect: fn(reqwest::StatusCode) -> bool| {
        wait_drained(&http, &url, &key);
        let t = Instant::now();
        let r = http
            .post(format!("{url}/api/datasets/{table}/upload{query}"))
            .header("X-API-Key", &key)
            .header("Content-Type", "text/csv")
            .body(body.clone())
            .send()
            .unwrap();
        assert!(expect(r.status()), "{}: {}", r.status(), r.text().unwrap());
        t.elapsed()
    };
    // Rounds of reference, upload, upload with `?wait=committed` (answered
    // once the compactor has written the rows into the lake and committed
    // the snapshot: the whole CSV -> lake path), so that this VM's drift in
    // speed (+-15% between minutes) falls on both sides of each ratio.
    let (mut reference, mut ours, mut committed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..CSV_ROUNDS {
        wait_drained(&http, &url, &key);
        reference.push(duckdb_copy(&csv, &tmp.path().join("ref.parquet")));
        let profile = (round == 0).then(|| Profile::start(server.id(), "csv_upload"));
        ours.push(upload(format!("csv_{round}"), "", |s| s.is_success()));
        drop(profile);
        committed.push(upload(format!("csv_committed_{round}"), "?wait=committed", |s| s == 200));
    }
    let best = ours.iter().min().unwrap().as_secs_f64();
    let best_committed = committed.iter().min().unwrap().as_secs_f64();
    let reference_mb_s = csv_mb / reference.iter().min().unwrap().as_secs_f64();
    let what = format!(
        "CSV upload -> Parquet until the 2xx (converted, fsynced, logged), {csv_mb:.0} MB, {CSV_ROWS} rows, \
         best of {CSV_ROUNDS}"
    );
    let what_committed = format!(
        "CSV upload until committed in the lake (?wait=committed), {csv_mb:.0} MB, {CSV_ROWS} rows, best of {CSV_ROUNDS}"
    );
    for (id, what, value) in
        [("csv_upload", &what, csv_mb / best), ("csv_upload_committed", &what_committed, csv_mb / best_committed)]
    {
        record(
            "ingest",
            &Figure {
                id,
                what,
                value,
                unit: "MB/s",
                higher_is_better: true,
                reference: &format!("DuckDB COPY (FROM read_csv(f)) TO 'f.parquet', best of {CSV_ROUNDS}"),
                reference_value: reference_mb_s,
                claim: Some(50.0),
            },
        );
    }

    // 2. Arrow IPC.
    for (label, cols, rows) in [("narrow", 3usize, NARROW_ROWS), ("wide", 50, WIDE_ROWS)] {
        let ipc = ipc_stream(cols, rows);
        wait_drained(&http, &url, &key);
        let mb = ipc.len() as f64 / 1e6;
        let raw = raw_disk(&tmp.path().join(format!("raw-{label}")), &ipc);
        let profile = Profile::start(server.id(), &format!("arrow_{label}"));
        let t = Instant::now();
        let r = http
            .post(format!("{url}/api/stream/arrow/{label}"))
            .header("X-API-Key", &key)
            .header("Content-Type", "application/vnd.apache.arrow.stream")
            .body(ipc)
            .send()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        drop(profile);
        assert!(r.status().is_success(), "{}", r.text().unwrap());
        let what = format!("Arrow IPC stream, {cols} columns, {rows} rows, {mb:.0} MB, acknowledged with fsync");
        record(
            "ingest",
            &Figure {
                id: &format!("arrow_{label}"),
                what: &what,
                value: rows as f64 / secs,
                unit: "rows/s",
                higher_is_better: true,
                reference: "write + fdatasync of the same IPC bytes to a file, as rows/s",
                reference_value: rows as f64 / raw.as_secs_f64(),
                claim: Some(100_000.0),
            },
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

fn write_csv(path: &Path, rows: usize) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "id,ts,host,value,ok").unwrap();
    for i in 0..rows {
        writeln!(
            w,
            "{i},2026-11-24 00:{:02}:{:02},host-{},{},{}",
            (i / 60) % 60,
            i % 60,
            i % 97,
            i as f64 * 0.25,
            i % 2 == 0
        )
        .unwrap();
    }
}

fn duckdb_copy(csv: &Path, out: &Path) -> Duration {
    let conn = duckdb::Connection::open_in_memory().unwrap();
    conn.execute_batch(&format!("SET threads = {THREADS}")).unwrap();
    let t = Instant::now();
    conn.execute_batch(&format!("COPY (FROM read_csv('{}')) TO '{}' (FORMAT parquet)", csv.display(), out.display()))
        .unwrap();
    t.elapsed()
}

fn ipc_stream(cols: usize, rows: usize) -> Vec<u8> {
    let mut fields = vec![Field::new("id", DataType::Int64, false)];
    for c in 1..cols - 1 {
        fields.push(Field::new(format!("v{c}"), DataType::Float64, true));
    }
    fields.push(Field::new("tag", DataType::Utf8, true));
    let schema = Arc::new(Schema::new(fields));
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    let mut done = 0;
    while done < rows {
        let n = BATCH_ROWS.min(rows - done);
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(done as i64..(done + n) as i64))];
        for c in 1..cols - 1 {
            arrays.push(Arc::new(Float64Array::from_iter_values((0..n).map(|i| (i * c) as f64 * 0.5))));
        }
        arrays.push(Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("t{}", i % 100)))));
        w.write(&RecordBatch::try_new(schema.clone(), arrays).unwrap()).unwrap();
        done += n;
    }
    w.finish().unwrap();
    drop(w);
    out
}

fn raw_disk(path: &PathBuf, bytes: &[u8]) -> Duration {
    let t = Instant::now();
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in bytes.chunks(4 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.sync_data().unwrap();
    t.elapsed()
}

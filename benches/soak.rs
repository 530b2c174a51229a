//! Soak run: `SOAK_SECONDS` (default 600) of mixed load on loopback
//! against the real daemon while the compactor flushes and maintenance
//! (merge, expire with retention 0, cleanup) runs every 30 s:
//!
//! (Replaced files are deleted 60 s after DuckLake schedules them instead
//! of the default 10 minutes, and each DuckDB instance may use 256 MB
//! instead of 4 GB, so that a 10-minute run shows whether the file count
//! and the memory level off rather than how big the caches can get.)
//!
//! - Prometheus remote write: a request every 500 ms (1,000 series x 5
//!   samples), as one Prometheus shard would send;
//! - Arrow IPC streams: 5,000 rows every 200 ms;
//! - CSV uploads: 20,000 rows every 2 s;
//! - `QUERY_CLIENTS` (100) query clients at once, each sending the next
//!   query as soon as the last answered (200 ms think time), following
//!   Retry-After on 429;
//! - a notebook session (process backend) whose kernel counts the lake's
//!   rows every 15 s through the real marimo websocket.
//!
//! Every write carries a block number in its ids (or timestamps), so at the
//! end the lake, read by an independent in-process DuckDB after the daemon
//! has stopped, is checked block by block: every acknowledged block present
//! exactly once with its checksum, every refused one absent, and a block
//! whose reply never came (connection error) either whole or absent. Also
//! checked: no 5xx at all, queries and the notebook never see a count go
//! backwards (snapshots only move forward), and the daemon's memory, open
//! files and data files stop growing (last third of the run against the
//! middle third). Exits non-zero when any of these fails.
//!
//! Run: `make soak` (`SOAK_SECONDS=60 make soak` for a short one).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use duckpond_compactor::{CatalogLocation, Extensions, InstanceSettings};
use duckpond_schema::prompb;
use prost::Message;
use serde_json::{json, Value};

#[path = "../tests/common/kernel.rs"]
#[allow(dead_code)]
mod kernel;
mod support;

const QUERY_CLIENTS: usize = 100;
const QUERY_THINK_MS: u64 = 200;
const PROM_EVERY_MS: u64 = 500;
const PROM_SERIES: u64 = 1_000;
const PROM_SAMPLES: u64 = 5;
const ARROW_EVERY_MS: u64 = 200;
const ARROW_ROWS: i64 = 5_000;
const UPLOAD_EVERY_MS: u64 = 2_000;
const UPLOAD_ROWS: i64 = 20_000;
const NOTEBOOK_EVERY_MS: u64 = 15_000;
const MONITOR_EVERY_MS: u64 = 5_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Memory limit of each of the daemon's DuckDB instances.
const SOAK_MEMORY_LIMIT_MB: u64 = 256;

/// What became of each write block, per kind.
#[derive(Default)]
struct Ledger {
    acked: Vec<i64>,
    refused: Vec<i64>,
    unknown: Vec<i64>,
}

#[derive(Default)]
struct Tally {
    /// (kind, status) -> replies.
    statuses: BTreeMap<(String, u16), u64>,
    /// Bodies of the first 5xx replies.
    server_errors: Vec<String>,
    transport_errors: u64,
    query_latencies_ms: Vec<f64>,
    /// A count that went down between two reads of the same client.
    regressions: Vec<String>,
    notebook_evals: u64,
    /// Cells of the notebook session that failed, with their errors.
    notebook_failures: Vec<String>,
}

struct Shared {
    url: String,
    key: String,
    stop: AtomicBool,
    tally: Mutex<Tally>,
    ledgers: Mutex<HashMap<&'static str, Ledger>>,
}

impl Shared {
    fn reply(&self, kind: &str, r: reqwest::Result<reqwest::blocking::Response>) -> Option<(u16, String)> {
        let mut t = self.tally.lock().unwrap();
        match r.and_then(|r| {
            let s = r.status().as_u16();
            r.text().map(|b| (s, b))
        }) {
            Ok((status, body)) => {
                *t.statuses.entry((kind.to_string(), status)).or_default() += 1;
                if status >= 500 && t.server_errors.len() < 10 {
                    t.server_errors.push(format!("{kind} {status}: {body}"));
                }
                Some((status, body))
            }
            Err(e) => {
                t.transport_errors += 1;
                eprintln!("{kind}: transport error: {e}");
                None
            }
        }
    }

    /// Records a write block's fate from its reply.
    fn write(&self, kind: &'static str, block: i64, r: reqwest::Result<reqwest::blocking::Response>) {
        let fate = self.reply(kind, r);
        let mut l = self.ledgers.lock().unwrap();
        let l = l.entry(kind).or_default();
        match fate {
            Some((s, _)) if (200..300).contains(&s) => l.acked.push(block),
            Some(_) => l.refused.push(block),
            None => l.unknown.push(block),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps until the next tick of `every_ms`, or returns false at stop.
    fn tick(&self, next: &mut Instant, every_ms: u64) -> bool {
        *next += Duration::from_millis(every_ms);
        let now = Instant::now();
        if *next > now {
            std::thread::sleep(*next - now);
        } else {
            *next = now;
        }
        !self.stopped()
    }
}

fn prom_value(series: u64, block: i64, k: u64) -> f64 {
    ((series * 7 + block as u64 * 13 + k) % 100_000) as f64
}

fn arrow_v(id: i64) -> i64 {
    id * 7 % 1_000
}

fn upload_v(id: i64) -> i64 {
    id * 11 % 1_000
}

fn prom_load(sh: &Shared, http: &reqwest::blocking::Client, base_ms: i64) {
    let mut next = Instant::now();
    let mut block = 0i64;
    while sh.tick(&mut next, PROM_EVERY_MS) {
        let timeseries = (0..PROM_SERIES)
            .map(|s| prompb::TimeSeries {
                labels: vec![
                    prompb::Label { name: "__name__".into(), value: "soak_metric".into() },
                    prompb::Label { name: "series".into(), value: s.to_string() },
                ],
                samples: (0..PROM_SAMPLES)
                    .map(|k| prompb::Sample {
                        // Block b owns [base + b*500, base + (b+1)*500) ms.
                        timestamp: base_ms + block * PROM_EVERY_MS as i64 + (k * 100) as i64,
                        value: prom_value(s, block, k),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let raw = prompb::WriteRequest { timeseries, metadata: vec![] }.encode_to_vec();
        let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let r = http
            .post(format!("{}/api/v1/write", sh.url))
            .header("X-API-Key", &sh.key)
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send();
        sh.write("remote_write", block, r);
        block += 1;
    }
}

fn arrow_load(sh: &Shared, http: &reqwest::blocking::Client) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("tag", DataType::Utf8, false),
    ]));
    let mut next = Instant::now();
    let mut block = 0i64;
    while sh.tick(&mut next, ARROW_EVERY_MS) {
        let ids = block * ARROW_ROWS..(block + 1) * ARROW_ROWS;
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(Int64Array::from_iter_values(ids.clone().map(arrow_v))),
            Arc::new(StringArray::from_iter_values(ids.map(|i| format!("tag-{}", i % 16)))),
        ];
        let mut body = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut body, &schema).unwrap();
        w.write(&RecordBatch::try_new(schema.clone(), arrays).unwrap()).unwrap();
        w.finish().unwrap();
        drop(w);
        let r = http
            .post(format!("{}/api/stream/arrow/events", sh.url))
            .header("X-API-Key", &sh.key)
            .header("Content-Type", "application/vnd.apache.arrow.stream")
            .body(body)
            .send();
        sh.write("arrow_stream", block, r);
        block += 1;
    }
}

fn upload_load(sh: &Shared, http: &reqwest::blocking::Client) {
    let mut next = Instant::now();
    let mut block = 0i64;
    while sh.tick(&mut next, UPLOAD_EVERY_MS) {
        let mut csv = String::from("id,v\n");
        for id in block * UPLOAD_ROWS..(block + 1) * UPLOAD_ROWS {
            csv.push_str(&format!("{id},{}\n", upload_v(id)));
        }
        let r = http
            .post(format!("{}/api/datasets/uploads/upload", sh.url))
            .header("X-API-Key", &sh.key)
            .header("Content-Type", "text/csv")
            .body(csv)
            .send();
        sh.write("upload", block, r);
        block += 1;
    }
}

const QUERIES: [&str; 4] = [
    "SELECT count(*) FROM events",
    "SELECT tag, count(*), sum(v) FROM events GROUP BY tag ORDER BY tag",
    "SELECT count(*), sum(value) FROM prom_samples WHERE timestamp_ms > (SELECT max(timestamp_ms) - 60000 FROM prom_samples)",
    "SELECT count(*) FROM uploads WHERE v < 10",
];

fn query_client(sh: &Shared, http: &reqwest::blocking::Client, client: usize) {
    let mut last_count = 0i64;
    let mut i = client;
    while !sh.stopped() {
        let sql = QUERIES[i % QUERIES.len()];
        i += 1;
        let t = Instant::now();
        let r = http
            .post(format!("{}/api/query", sh.url))
            .header("X-API-Key", &sh.key)
            .json(&json!({"sql": sql, "format": "json"}))
            .send();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match sh.reply("query", r) {
            Some((200, body)) => {
                sh.tally.lock().unwrap().query_latencies_ms.push(ms);
                if sql == QUERIES[0] {
                    let n = serde_json::from_str::<Value>(&body).unwrap()["rows"][0][0].as_i64().unwrap();
                    if n < last_count {
                        sh.tally
                            .lock()
                            .unwrap()
                            .regressions
                            .push(format!("query client {client}: {last_count} -> {n}"));
                    }
                    last_count = n;
                }
                std::thread::sleep(Duration::from_millis(QUERY_THINK_MS));
            }
            // Refused at admission: wait as told (Retry-After is 1 s).
            Some((429, _)) => std::thread::sleep(Duration::from_secs(1)),
            _ => std::thread::sleep(Duration::from_millis(QUERY_THINK_MS)),
        }
    }
}

fn notebook_session(sh: &Shared, http: &reqwest::blocking::Client) {
    let r = http
        .post(format!("{}/api/notebooks", sh.url))
        .header("X-API-Key", &sh.key)
        .json(&json!({"name": "soak"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{}/api/notebooks/{id}/start?wait=true", sh.url))
        .header("X-API-Key", &sh.key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let mut kernel = kernel::Kernel::open(&sh.url, http, &sh.key, &id);
    let mut last = 0i64;
    let mut next = Instant::now();
    loop {
        let out = kernel.try_eval("duckdb.sql('SELECT count(*) FROM events').fetchone()[0]");
        let mut t = sh.tally.lock().unwrap();
        match out {
            Ok(out) => {
                // marimo renders the value as `<pre class='...'>N</pre>`.
                let digits: String =
                    out.split('>').nth(1).unwrap_or(&out).chars().take_while(char::is_ascii_digit).collect();
                let n: i64 = digits.parse().unwrap_or(-1);
                t.notebook_evals += 1;
                if n < last {
                    t.regressions.push(format!("notebook: {last} -> {n} ({out:?})"));
                }
                last = n.max(last);
            }
            Err(e) => t.notebook_failures.push(e),
        }
        drop(t);
        if !sh.tick(&mut next, NOTEBOOK_EVERY_MS) {
            break;
        }
    }
    let r = http.post(format!("{}/api/notebooks/{id}/stop", sh.url)).header("X-API-Key", &sh.key).send();
    sh.reply("notebook", r);
}

/// One sample of the daemon's footprint.
#[derive(Clone, Copy)]
struct Footprint {
    at_s: f64,
    rss_mb: f64,
    fds: usize,
    threads: usize,
    files: usize,
    disk_mb: f64,
}

fn footprint(pid: u32, root: &Path, started: Instant) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    Footprint {
        at_s: started.elapsed().as_secs_f64(),
        rss_mb: field("VmRSS:") / 1024.0,
        fds,
        threads: field("Threads:") as usize,
        files,
        disk_mb: bytes as f64 / 1e6,
    }
}

/// Per block of `table`: (rows, checksum) as DuckDB sums them.
fn blocks(conn: &duckdb::Connection, sql: &str) -> HashMap<i64, (i64, f64)> {
    let mut st = conn.prepare(sql).unwrap();
    st.query_map([], |r| Ok((r.get::<_, i64>(0)?, (r.get::<_, i64>(1)?, r.get::<_, f64>(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Compares the lake's blocks with the ledger; returns problems found.
fn audit(
    kind: &str,
    ledger: &Ledger,
    lake: &HashMap<i64, (i64, f64)>,
    expected: impl Fn(i64) -> (i64, f64),
) -> Vec<String> {
    let mut problems = Vec::new();
    for b in &ledger.acked {
        match lake.get(b) {
            None => problems.push(format!("{kind}: acknowledged block {b} lost")),
            Some(got) if *got != expected(*b) => {
                problems.push(format!("{kind}: block {b} has {got:?}, expected {:?}", expected(*b)))
            }
            Some(_) => {}
        }
    }
    for b in &ledger.refused {
        if lake.contains_key(b) {
            problems.push(format!("{kind}: refused block {b} is in the lake"));
        }
    }
    for b in &ledger.unknown {
        if let Some(got) = lake.get(b) {
            if *got != expected(*b) {
                problems.push(format!("{kind}: unanswered block {b} partly in the lake: {got:?}"));
            }
        }
    }
    let known: std::collections::HashSet<i64> =
        ledger.acked.iter().chain(&ledger.refused).chain(&ledger.unknown).copied().collect();
    for b in lake.keys().filter(|b| !known.contains(b)) {
        problems.push(format!("{kind}: block {b} in the lake was never sent"));
    }
    problems
}

fn max_in(samples: &[Footprint], from: f64, to: f64, f: impl Fn(&Footprint) -> f64) -> f64 {
    samples.iter().filter(|s| s.at_s >= from && s.at_s < to).map(f).fold(0.0, f64::max)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let ext_dir = std::env::var("DUCKPOND_TEST_EXTENSION_DIR").expect("set DUCKPOND_TEST_EXTENSION_DIR (make soak)");
    let venv = std::env::var("DUCKPOND_TEST_NOTEBOOK_ENV").expect("set DUCKPOND_TEST_NOTEBOOK_ENV (make soak)");
    let tmp = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let yaml = format!(
        "compactor:\n  maintenance_interval_ms: 30000\n  snapshot_retention_hours: 0\n  file_cleanup_grace_ms: 60000\n\
         notebooks:\n  python_env: {venv}\n  port_range: 20100-20109\n"
    );
    let (child, url, key) = support::start_with_memory(tmp.path(), &ext_dir, SOAK_MEMORY_LIMIT_MB, &yaml);
    let mut daemon = support::Daemon(child);
    let pid = daemon.pid();
    let http = reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(QUERY_CLIENTS + 8)
        .build()
        .unwrap();
    let me: Value = http.get(format!("{url}/api/account")).header("X-API-Key", &key).send().unwrap().json().unwrap();
    // Canonical: DuckLake compares the DATA_PATH with the daemon's.
    let root: PathBuf = tmp.path().canonicalize().unwrap().join("data/accounts").join(me["id"].as_str().unwrap());
    let base_ms = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let sh = Shared {
        url: url.clone(),
        key: key.clone(),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
        ledgers: Mutex::new(HashMap::new()),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let samples = Mutex::new(Vec::new());
    println!("soak: {seconds} s of mixed load against {url}");
    std::thread::scope(|s| {
        let (sh, http, samples, root) = (&sh, &http, &samples, &root);
        s.spawn(move || prom_load(sh, http, base_ms));
        s.spawn(move || arrow_load(sh, http));
        s.spawn(move || upload_load(sh, http));
        s.spawn(move || {
            while !sh.stopped() {
                samples.lock().unwrap().push(footprint(pid, root, started));
                std::thread::sleep(Duration::from_millis(MONITOR_EVERY_MS));
            }
        });
        // Queries and the notebook once every table has a first commit.
        let first_commits = Instant::now() + Duration::from_secs(60);
        loop {
            let ds: Value =
                http.get(format!("{url}/api/datasets")).header("X-API-Key", &key).send().unwrap().json().unwrap();
            let names: Vec<&str> = ds.as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
            if ["events", "uploads", "prom_samples"].iter().all(|t| names.contains(t)) {
                break;
            }
            if Instant::now() > first_commits {
                sh.stop.store(true, Ordering::Relaxed);
                panic!("after 60 s the lake has only {names:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for c in 0..QUERY_CLIENTS {
            s.spawn(move || query_client(sh, http, c));
        }
        s.spawn(move || notebook_session(sh, http));
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        sh.stop.store(true, Ordering::Relaxed);
    });
    let load_s = started.elapsed().as_secs_f64();
    let t = Instant::now();
    support::wait_drained(&http, &url, &key);
    let drain_s = t.elapsed().as_secs_f64();
    let samples = samples.into_inner().unwrap();
    let exit = daemon.terminate();

    // The lake, read by an independent DuckDB with the daemon stopped.
    let ext = Extensions::locate(Path::new(&ext_dir)).unwrap();
    let conn = ext.open_instance(&InstanceSettings { memory_limit_mb: 2048, threads: 2 }).unwrap();
    let loc = CatalogLocation::sqlite(root.join("catalog.sqlite"), root.join("data"));
    conn.execute_batch(&loc.attach_sql("lake", true)).unwrap();
    conn.execute_batch("USE lake").unwrap();
    let ledgers = sh.ledgers.into_inner().unwrap();
    let empty = Ledger::default();
    let ledger = |k: &str| ledgers.get(k).unwrap_or(&empty);
    let mut problems = Vec::new();
    let lake = blocks(&conn, &format!("SELECT id // {ARROW_ROWS}, count(*), sum(v)::DOUBLE FROM events GROUP BY 1"));
    problems.extend(audit("arrow_stream", ledger("arrow_stream"), &lake, |b| {
        let ids = b * ARROW_ROWS..(b + 1) * ARROW_ROWS;
        (ARROW_ROWS, ids.map(arrow_v).sum::<i64>() as f64)
    }));
    let lake = blocks(&conn, &format!("SELECT id // {UPLOAD_ROWS}, count(*), sum(v)::DOUBLE FROM uploads GROUP BY 1"));
    problems.extend(audit("upload", ledger("upload"), &lake, |b| {
        let ids = b * UPLOAD_ROWS..(b + 1) * UPLOAD_ROWS;
        (UPLOAD_ROWS, ids.map(upload_v).sum::<i64>() as f64)
    }));
    let lake = blocks(
        &conn,
        &format!(
            "SELECT (timestamp_ms - {base_ms}) // {PROM_EVERY_MS}, count(*), sum(value) FROM prom_samples GROUP BY 1"
        ),
    );
    problems.extend(audit("remote_write", ledger("remote_write"), &lake, |b| {
        let sum = (0..PROM_SERIES).flat_map(|s| (0..PROM_SAMPLES).map(move |k| prom_value(s, b, k))).sum::<f64>();
        ((PROM_SERIES * PROM_SAMPLES) as i64, sum)
    }));
    let dups: i64 = conn
        .query_row("SELECT (SELECT count(*) - count(DISTINCT id) FROM events) + (SELECT count(*) - count(DISTINCT id) FROM uploads)", [], |r| r.get(0))
        .unwrap();
    if dups != 0 {
        problems.push(format!("{dups} duplicated ids"));
    }

    // Report.
    let tally = sh.tally.into_inner().unwrap();
    let mut lat = tally.query_latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| if lat.is_empty() { 0.0 } else { lat[((lat.len() as f64 - 1.0) * q).round() as usize] };
    println!("\nload {load_s:.0} s, log drained {drain_s:.1} s after the load stopped, daemon exit {exit}");
    println!("\n| kind | status | replies |\n|---|---:|---:|");
    for ((kind, status), n) in &tally.statuses {
        println!("| {kind} | {status} | {n} |");
    }
    println!("\ntransport errors (no reply): {}", tally.transport_errors);
    for kind in ["remote_write", "arrow_stream", "upload"] {
        let l = ledger(kind);
        println!(
            "{kind}: {} blocks acknowledged, {} refused, {} unanswered",
            l.acked.len(),
            l.refused.len(),
            l.unknown.len()
        );
    }
    println!(
        "queries: {} answered, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; notebook evaluations: {}",
        lat.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        tally.notebook_evals
    );
    println!("notebook cells failed: {}", tally.notebook_failures.len());
    println!("\n| t (s) | RSS MB | fds | threads | account files | account MB |\n|---:|---:|---:|---:|---:|---:|");
    let step = (samples.len() / 12).max(1);
    for f in samples.iter().step_by(step).chain(samples.last()) {
        println!("| {:.0} | {:.0} | {} | {} | {} | {:.0} |", f.at_s, f.rss_mb, f.fds, f.threads, f.files, f.disk_mb);
    }
    // Growth: the last third of the run against the middle third (the
    // first third is warm-up: caches, pools and the first merges fill).
    let third = load_s / 3.0;
    for (name, f, slack) in [
        ("RSS MB", (|s: &Footprint| s.rss_mb) as fn(&Footprint) -> f64, 1.25),
        ("open fds", |s: &Footprint| s.fds as f64, 1.25),
        ("account files", |s: &Footprint| s.files as f64, 1.5),
    ] {
        let (mid, last) = (max_in(&samples, third, 2.0 * third, f), max_in(&samples, 2.0 * third, load_s + 1.0, f));
        println!("{name}: max {mid:.0} in the middle third, {last:.0} in the last");
        if last > mid * slack + 64.0 {
            problems.push(format!("{name} kept growing: {mid:.0} -> {last:.0}"));
        }
    }
    let server_errors: u64 = tally.statuses.iter().filter(|((_, s), _)| *s >= 500).map(|(_, n)| n).sum();
    let log = std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect();
    println!("\ndaemon log: {} warnings and errors", errors.len());
    for l in errors.iter().take(10) {
        println!("  {}", l.chars().take(400).collect::<String>());
    }
    if server_errors > 0 {
        problems.push(format!("{server_errors} replies with 5xx: {:?}", tally.server_errors));
    }
    problems.extend(tally.regressions.iter().cloned());
    if !tally.notebook_failures.is_empty() {
        problems.push(format!(
            "{} notebook cells failed, first: {}",
            tally.notebook_failures.len(),
            tally.notebook_failures[0].chars().take(600).collect::<String>()
        ));
    }
    if tally.notebook_evals == 0 {
        problems.push("the notebook never evaluated a cell".into());
    }
    let report = json!({
        "seconds": load_s, "drain_seconds": drain_s, "transport_errors": tally.transport_errors,
        "statuses": tally.statuses.iter().map(|((k, s), n)| json!({"kind": k, "status": s, "n": n})).collect::<Vec<_>>(),
        "query_p50_ms": pct(0.5), "query_p99_ms": pct(0.99), "queries": lat.len(),
        "notebook_evals": tally.notebook_evals, "problems": problems,
        "peak_rss_mb": samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
    });
    if let Ok(path) = std::env::var("SOAK_REPORT") {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    }
    if problems.is_empty() {
        println!("\nsoak: PASS (no 5xx, nothing lost or duplicated, checksums equal, footprint bounded)");
    } else {
        println!("\nsoak: FAIL");
        for p in &problems {
            println!("  - {p}");
        }
        std::process::exit(1);
    }
}

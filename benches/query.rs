//! SQL query API latency and concurrency through the real daemon, next to
//! DuckDB in-process on the same lake in the same run.
//!
//! 1. Latency: a 1M-row and a 10M-row table (streamed in as Arrow IPC and
//!    committed), four query shapes (filtered count, group-by, point
//!    lookup, top-k), p50 and p99 over `ROUNDS` runs of `POST /api/query`
//!    (JSON result) until the last byte. Reference: the same SQL on a DuckDB
//!    connection with the same lake attached read-only, same thread count,
//!    until the last row is fetched.
//! 0. The query worker's cost (every account's SQL runs in a process of
//!    its own): `SELECT 1` p50 through `POST /api/query` against the same
//!    statement in process (the fixed cost a query pays: HTTP, the guard,
//!    admission, the round trip to the worker, encoding), and the first
//!    query of an account (the worker starts) against the next one.
//! 2. Concurrency: `CLIENTS` clients, each sending `PER_CLIENT` queries of
//!    the mix back to back on the 1M table with the default per-account
//!    limits (5 running, the rest queued up to 2 s, then 429): queries/s,
//!    p99 and the refused count. Reference: `CLIENTS`
//!    threads, each with its own connection to the in-process DuckDB.
//!
//! Run: `make bench-query` (needs DUCKPOND_TEST_EXTENSION_DIR).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use duckpond_compactor::{CatalogLocation, Extensions, InstanceSettings};
use support::{record, start, Figure, THREADS};

mod support;

const ROUNDS: usize = 30;
const CLIENTS: usize = 100;
const PER_CLIENT: usize = 10;
const BATCH_ROWS: usize = 100_000;

const SHAPES: [(&str, &str); 4] = [
    ("filtered_count", "SELECT count(*) FROM {t} WHERE value > 0.5 AND host = 'host-042'"),
    (
        "group_by",
        "SELECT host, count(*) AS n, avg(value) AS mean, max(value) AS top FROM {t} GROUP BY host ORDER BY host",
    ),
    ("point_lookup", "SELECT * FROM {t} WHERE id = 777777"),
    ("top_k", "SELECT * FROM {t} ORDER BY value DESC LIMIT 10"),
];

fn ipc(rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("host", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    for start in (0..rows).step_by(BATCH_ROWS) {
        let ids = start as i64..(start + BATCH_ROWS.min(rows - start)) as i64;
        // A multiplicative hash spreads values over [0, 1) without a RNG.
        let value =
            |i: i64| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64) as u64 >> 11) as f64 / (1u64 << 53) as f64;
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(Int64Array::from_iter_values(ids.clone().map(|i| 1_700_000_000_000 + i * 10))),
            Arc::new(StringArray::from_iter_values(ids.clone().map(|i| format!("host-{:03}", i % 100)))),
            Arc::new(Float64Array::from_iter_values(ids.map(value))),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), arrays).unwrap()).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    out
}

fn percentile(mut xs: Vec<f64>, q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 - 1.0) * q).round() as usize]
}

/// One query through the API; the status and the seconds to the last byte.
fn api_query(http: &reqwest::blocking::Client, url: &str, key: &str, sql: &str) -> (u16, f64) {
    let t = Instant::now();
    let r = http
        .post(format!("{url}/api/query"))
        .header("X-API-Key", key)
        .json(&serde_json::json!({"sql": sql, "format": "json"}))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().unwrap();
    assert!(status == 200 || status == 429 || status == 408, "{status}: {}", String::from_utf8_lossy(&body));
    (status, t.elapsed().as_secs_f64())
}

fn duckdb_query(conn: &duckdb::Connection, sql: &str) -> f64 {
    let t = Instant::now();
    let mut stmt = conn.prepare(sql).unwrap();
    let batches: Vec<RecordBatch> = stmt.query_arrow([]).unwrap().collect();
    assert!(!batches.is_empty());
    t.elapsed().as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ext_dir =
        std::env::var("DUCKPOND_TEST_EXTENSION_DIR").expect("set DUCKPOND_TEST_EXTENSION_DIR (make bench-query)");
    let tmp = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let (child, url, key) = start(tmp.path(), &ext_dir);
    let _daemon = support::Daemon(child);
    let http = reqwest::blocking::Client::builder().timeout(None).pool_max_idle_per_host(CLIENTS).build().unwrap();

    // 0. The first query starts the account's query worker.
    let (status, cold) = api_query(&http, &url, &key, "SELECT 1");
    assert_eq!(status, 200);
    let (_, warm) = api_query(&http, &url, &key, "SELECT 1");
    println!("first query {:.0} ms (worker start), next {:.1} ms", cold * 1e3, warm * 1e3);
    record(
        "query",
        &Figure {
            id: "first_query_worker_start",
            what: "the first SELECT 1 of an account (its query worker starts), one sample",
            value: cold * 1e3,
            unit: "ms",
            higher_is_better: false,
            reference: "the next SELECT 1 (worker running)",
            reference_value: warm * 1e3,
            claim: None,
        },
    );

    let tables = [("t1m", 1_000_000usize), ("t10m", 10_000_000)];
    for (table, rows) in tables {
        let r = http
            .post(format!("{url}/api/stream/arrow/{table}?wait=committed"))
            .header("X-API-Key", &key)
            .header("Content-Type", "application/vnd.apache.arrow.stream")
            .body(ipc(rows))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap());
    }
    let me: serde_json::Value =
        http.get(format!("{url}/api/account")).header("X-API-Key", &key).send().unwrap().json().unwrap();
    // Canonical: DuckLake compares the DATA_PATH with the one the daemon
    // gave ("./x" is not "x").
    let root = tmp.path().canonicalize().unwrap().join("data/accounts").join(me["id"].as_str().unwrap());

    // The reference: the same lake, read-only, in this process.
    let ext = Extensions::locate(Path::new(&ext_dir)).unwrap();
    let settings = InstanceSettings { memory_limit_mb: 4096, threads: THREADS };
    let conn = ext.open_instance(&settings).unwrap();
    let loc = CatalogLocation::sqlite(root.join("catalog.sqlite"), root.join("data"));
    conn.execute_batch(&loc.attach_sql("lake", true)).unwrap();
    conn.execute_batch("USE lake").unwrap();

    // 0. The fixed cost of a query.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS * 10 {
        let (status, s) = api_query(&http, &url, &key, "SELECT 1");
        assert_eq!(status, 200);
        ours.push(s * 1e3);
        theirs.push(duckdb_query(&conn, "SELECT 1") * 1e3);
    }
    record(
        "query",
        &Figure {
            id: "select_1_p50",
            what: "SELECT 1, p50, POST /api/query (JSON) to the last byte (query worker round trip included)",
            value: percentile(ours, 0.5),
            unit: "ms",
            higher_is_better: false,
            reference: "SELECT 1 on an in-process DuckDB connection",
            reference_value: percentile(theirs, 0.5),
            claim: None,
        },
    );

    // 1. Latency, one query at a time.
    for (table, rows) in tables {
        for (shape, sql) in SHAPES {
            let sql = sql.replace("{t}", table);
            for _ in 0..3 {
                api_query(&http, &url, &key, &sql);
                duckdb_query(&conn, &sql);
            }
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..ROUNDS {
                let (status, s) = api_query(&http, &url, &key, &sql);
                assert_eq!(status, 200);
                ours.push(s * 1e3);
                theirs.push(duckdb_query(&conn, &sql) * 1e3);
            }
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                let what = format!("{shape} on {rows} rows, {label}, POST /api/query (JSON) to the last byte");
                record(
                    "query",
                    &Figure {
                        id: &format!("{shape}_{table}_{label}"),
                        what: &what,
                        value: percentile(ours.clone(), q),
                        unit: "ms",
                        higher_is_better: false,
                        reference: "the same SQL on an in-process DuckDB with the same lake attached",
                        reference_value: percentile(theirs.clone(), q),
                        claim: Some(100.0),
                    },
                );
            }
        }
    }

    // 2. Concurrency: CLIENTS at once, the mix on the 1M table.
    let mix: Vec<String> = SHAPES.iter().map(|(_, sql)| sql.replace("{t}", "t1m")).collect();
    let t = Instant::now();
    let results: Vec<(u16, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (http, url, key, mix) = (&http, &url, &key, &mix);
                s.spawn(move || {
                    (0..PER_CLIENT).map(|i| api_query(http, url, key, &mix[(c + i) % mix.len()])).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let ours_qps = results.len() as f64 / t.elapsed().as_secs_f64();
    let refused = results.iter().filter(|(s, _)| *s != 200).count();
    let ours_p99 = percentile(results.iter().map(|(_, s)| s * 1e3).collect(), 0.99);
    let t = Instant::now();
    let theirs_lat: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (conn, mix) = (conn.try_clone().unwrap(), &mix);
                // The default database is per connection.
                conn.execute_batch("USE lake").unwrap();
                s.spawn(move || {
                    (0..PER_CLIENT).map(|i| duckdb_query(&conn, &mix[(c + i) % mix.len()]) * 1e3).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let theirs_qps = theirs_lat.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "concurrency: {CLIENTS} clients x {PER_CLIENT} queries: {refused} not 200 (429/408); p99 {ours_p99:.0} ms \
         (in-process DuckDB p99 {:.0} ms)",
        percentile(theirs_lat.clone(), 0.99)
    );
    let what = format!(
        "{CLIENTS} concurrent clients x {PER_CLIENT} queries (the mix, 1M rows), default limits; {refused} refused"
    );
    record(
        "query",
        &Figure {
            id: "concurrent_100_clients",
            what: &what,
            value: ours_qps,
            unit: "queries/s",
            higher_is_better: true,
            reference: "100 threads, one in-process DuckDB connection each, same mix",
            reference_value: theirs_qps,
            claim: None,
        },
    );
    record(
        "query",
        &Figure {
            id: "concurrent_100_clients_p99",
            what: "p99 latency of those queries (queueing included; refused ones excluded)",
            value: percentile(results.iter().filter(|(s, _)| *s == 200).map(|(_, s)| s * 1e3).collect(), 0.99),
            unit: "ms",
            higher_is_better: false,
            reference: "p99 of the in-process threads",
            reference_value: percentile(theirs_lat.clone(), 0.99),
            claim: None,
        },
    );
}

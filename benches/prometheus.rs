//! Prometheus remote-write load: pre-encoded requests (realistic shape:
//! many series, many samples per series per request) replayed from
//! loopback by several senders, each owning a shard of the series as
//! Prometheus's own shards do; samples/s acknowledged with fsync. The same
//! payloads go to a real Prometheus 2.42 started with
//! `--web.enable-remote-write-receiver` in the same run: the reference.
//! Afterwards: bytes per sample of the metrics tables in the lake once
//! maintenance has merged them, next to Prometheus's own TSDB (a snapshot
//! block) holding the same samples. Three value profiles: a real scrape's
//! mix of series, and two hard cases where every sample is a new irregular
//! number (counters exported as short decimals, counters accumulated in
//! doubles).
//!
//! Run: `make bench-prometheus` (needs DUCKPOND_TEST_EXTENSION_DIR and the
//! `prometheus` binary).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duckpond_schema::prompb;
use prost::Message;
use support::{record, start_with, wait_drained, Figure};

mod support;

const SHARDS: usize = 4;
const SERIES_PER_SHARD: usize = 500;
const SAMPLES_PER_SERIES: usize = 100;
const REQUESTS_PER_SHARD: usize = 10;

/// Irregular steps (a hash of series and sample index) in hundredths,
/// 0.00 to 99.99: values are distinct and not dictionary-friendly.
fn step_cents(series: u64, i: u64) -> u64 {
    let mut x = (series << 32 | i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x % 10_000
}

/// What the senders' series hold.
#[derive(Clone, Copy, Debug)]
enum Values {
    /// Kept as an integer count of hundredths, divided once when exported
    /// (how node_exporter turns USER_HZ ticks into CPU seconds, and how
    /// every whole-event counter looks): the nearest double to a short
    /// decimal.
    ExactDecimals,
    /// Accumulated in a double step by step (a client library's float
    /// counter after `Add(0.37)` calls): rounding noise in the last bits.
    FloatAccumulated,
    /// The mix of a real scrape (see `scrape_value`): most series hold still
    /// between scrapes, counters step by small integers, a few values move
    /// by irregular amounts. The data Prometheus's "1-2 bytes per sample"
    /// describes; the two profiles above are the hard case, where every
    /// sample of every series is a new irregular number.
    Scrape,
}

/// A deterministic pseudo-random number for (series, sample, salt).
fn mix(series: u64, i: u64, salt: u64) -> u64 {
    let mut x =
        (series << 32 | i).wrapping_add(salt.wrapping_mul(0xD6E8_FEB8_6659_FD93)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// Sample `n` of series `series` in a real scrape's mix, modelled on the
/// series of node_exporter and Prometheus's own /metrics (kinds by share of
/// series):
/// - 40% hold still: `up`, `*_info`, limits, configuration, start times,
///   and histogram buckets and error counters nothing has touched;
/// - 20% request-like counters: a small whole number of events per scrape,
///   often none;
/// - 10% histogram buckets that do fill: one event every few scrapes;
/// - 10% byte counters: whole numbers, irregular steps of up to 64 KiB;
/// - 10% gauges of memory in pages: a walk in steps of 4 KiB that often
///   stays;
/// - 10% CPU-seconds-like counters: irregular steps in hundredths, as in the
///   `ExactDecimals` profile.
fn scrape_value(series: u64, n: u64) -> f64 {
    let base = (mix(series, 0, 1) % 1_000_000) as f64;
    let steps = |f: &dyn Fn(u64) -> u64| -> u64 { (1..=n).map(f).sum() };
    match series % 10 {
        0..=3 => base,
        4 | 5 => base + steps(&|i| [0, 0, 0, 1, 1, 2, 3, 5][(mix(series, i, 2) % 8) as usize]) as f64,
        6 => base + steps(&|i| u64::from(mix(series, i, 3) % 4 == 0)) as f64,
        7 => base * 4096.0 + steps(&|i| mix(series, i, 4) % 65_536) as f64,
        8 => {
            let walk: i64 = (1..=n).map(|i| [0, 0, 0, 0, 1, -1, 2, -2][(mix(series, i, 5) % 8) as usize]).sum();
            (base as i64 + walk) as f64 * 4096.0
        }
        _ => (series * 100_000_000 + steps(&|i| step_cents(series, i))) as f64 / 100.0,
    }
}

fn sample_value(values: Values, series: u64, n: u64) -> f64 {
    match values {
        Values::Scrape => scrape_value(series, n),
        Values::ExactDecimals => {
            let cents: u64 = (0..=n).map(|i| step_cents(series, i)).sum();
            (series * 100_000_000 + cents) as f64 / 100.0
        }
        Values::FloatAccumulated => {
            (0..=n).map(|i| step_cents(series, i) as f64 / 100.0).sum::<f64>() + series as f64 * 1e6
        }
    }
}

/// `requests[shard][i]`: snappy-compressed WriteRequests, each shard's in
/// time order.
fn payloads(values: Values, end_ms: i64) -> Vec<Vec<Vec<u8>>> {
    let span = (REQUESTS_PER_SHARD * SAMPLES_PER_SERIES) as i64 * 1_000;
    let start_ms = end_ms - span;
    (0..SHARDS)
        .map(|shard| {
            (0..REQUESTS_PER_SHARD)
                .map(|r| {
                    let timeseries = (0..SERIES_PER_SHARD)
                        .map(|i| {
                            let id = shard * SERIES_PER_SHARD + i;
                            let labels = [
                                ("__name__", format!("bench_requests_total_{}", id % 20)),
                                ("instance", format!("host-{:03}:9100", id % 250)),
                                ("job", "node".to_string()),
                                ("series", id.to_string()),
                            ];
                            prompb::TimeSeries {
                                labels: labels
                                    .iter()
                                    .map(|(n, v)| prompb::Label { name: n.to_string(), value: v.clone() })
                                    .collect(),
                                samples: (0..SAMPLES_PER_SERIES)
                                    .map(|k| {
                                        let n = (r * SAMPLES_PER_SERIES + k) as u64;
                                        prompb::Sample {
                                            timestamp: start_ms + n as i64 * 1_000,
                                            value: sample_value(values, id as u64, n),
                                        }
                                    })
                                    .collect(),
                                ..Default::default()
                            }
                        })
                        .collect();
                    let raw = prompb::WriteRequest { timeseries, metadata: vec![] }.encode_to_vec();
                    snap::raw::Encoder::new().compress_vec(&raw).unwrap()
                })
                .collect()
        })
        .collect()
}

/// Sends every shard's requests (shards in parallel); samples/s.
fn replay(url: &str, key: Option<&str>, shards: &[Vec<Vec<u8>>]) -> f64 {
    let t = Instant::now();
    std::thread::scope(|scope| {
        for reqs in shards {
            scope.spawn(move || {
                let http = reqwest::blocking::Client::new();
                for body in reqs {
                    let mut b = http
                        .post(url)
                        .header("Content-Type", "application/x-protobuf")
                        .header("Content-Encoding", "snappy")
                        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                        .body(body.clone());
                    if let Some(k) = key {
                        b = b.header("X-API-Key", k);
                    }
                    let r = b.send().unwrap();
                    assert!(r.status().is_success(), "{}: {}", r.status(), r.text().unwrap());
                }
            });
        }
    });
    let samples = (SHARDS * REQUESTS_PER_SHARD * SERIES_PER_SHARD * SAMPLES_PER_SERIES) as f64;
    samples / t.elapsed().as_secs_f64()
}

/// One profile's figures.
struct Run {
    ours: f64,
    theirs: f64,
    drain_s: f64,
    wire: usize,
    /// Bytes per sample: lake after maintenance's merge, lake right after
    /// the flushes, Prometheus's TSDB.
    merged: f64,
    flushed: f64,
    flushed_files: f64,
    prometheus: f64,
}

fn run(ext: &str, values: Values) -> Run {
    let tmp = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let shards = payloads(values, now);
    let total = (SHARDS * REQUESTS_PER_SHARD * SERIES_PER_SHARD * SAMPLES_PER_SERIES) as f64;
    let wire: usize = shards.iter().flatten().map(Vec::len).sum();

    // Reference: Prometheus's own receiver, same payloads.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(tmp.path().join("p.yml"), "global:\n  scrape_interval: 1h\n").unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", tmp.path().join("p.yml").display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("prom").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .arg("--web.enable-admin-api")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the prometheus binary");
    let http = reqwest::blocking::Client::new();
    while http.get(format!("http://127.0.0.1:{port}/-/ready")).send().map(|r| r.status() != 200).unwrap_or(true) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let theirs = replay(&format!("http://127.0.0.1:{port}/api/v1/write"), None, &shards);
    // Prometheus's own storage of the same samples: a TSDB snapshot writes
    // its head (XOR-compressed chunks) as a block on disk.
    let snap: serde_json::Value =
        http.post(format!("http://127.0.0.1:{port}/api/v1/admin/tsdb/snapshot")).send().unwrap().json().unwrap();
    let snap_dir = tmp.path().join("prom/snapshots").join(snap["data"]["name"].as_str().expect("a snapshot name"));
    let prometheus = dir_bytes(&snap_dir) as f64 / total;
    let _ = prom.kill();
    let _ = prom.wait();

    // Maintenance soon after the load, so the samples get merged as they
    // would be in a running deployment.
    let (mut server, url, key) =
        start_with(tmp.path(), ext, "compactor:\n  maintenance_interval_ms: 5000\n  file_cleanup_grace_ms: 0\n");
    let ours = replay(&format!("{url}/api/v1/write"), Some(&key), &shards);
    let t = Instant::now();
    wait_drained(&http, &url, &key);
    let drain_s = t.elapsed().as_secs_f64();
    let datasets = || -> serde_json::Value {
        http.get(format!("{url}/api/datasets")).header("X-API-Key", &key).send().unwrap().json().unwrap()
    };
    let field = |ds: &serde_json::Value, name: &str, f: &str| {
        ds.as_array().unwrap().iter().find(|d| d["name"] == name).map(|d| d[f].as_f64().unwrap()).unwrap_or(0.0)
    };
    let stored_of = |ds: &serde_json::Value| field(ds, "prom_samples", "bytes") + field(ds, "prom_series", "bytes");
    let flushed = datasets();
    let deadline = Instant::now() + Duration::from_secs(120);
    let merged = loop {
        let ds = datasets();
        if field(&ds, "prom_samples", "files") <= 1.0 || Instant::now() > deadline {
            break ds;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let merged_files = field(&merged, "prom_samples", "files");
    assert!(merged_files <= 1.0, "maintenance did not merge the samples within 2 minutes ({merged_files} files)");
    let _ = server.kill();
    let _ = server.wait();
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("  kept {}", tmp.keep().display());
    }
    Run {
        ours,
        theirs,
        drain_s,
        wire,
        merged: stored_of(&merged) / total,
        flushed: stored_of(&flushed) / total,
        flushed_files: field(&flushed, "prom_samples", "files"),
        prometheus,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ext =
        std::env::var("DUCKPOND_TEST_EXTENSION_DIR").expect("set DUCKPOND_TEST_EXTENSION_DIR (make bench-prometheus)");
    let total = SHARDS * REQUESTS_PER_SHARD * SERIES_PER_SHARD * SAMPLES_PER_SERIES;
    let mut runs = Vec::new();
    for values in [Values::ExactDecimals, Values::FloatAccumulated, Values::Scrape] {
        let r = run(&ext, values);
        println!(
            "prometheus_remote_write ({values:?}): {total} samples in {} requests ({} series x {SAMPLES_PER_SERIES} samples each, \
             {SHARDS} senders), {:.1} MB on the wire",
            SHARDS * REQUESTS_PER_SHARD,
            SHARDS * SERIES_PER_SHARD,
            r.wire as f64 / 1e6
        );
        println!(
            "  duckpond: {:.0} samples/s acknowledged with fsync; prometheus 2.42 receiver: {:.0} samples/s; ratio {:.2}; \
             committed {:.1} s after the last ack",
            r.ours,
            r.theirs,
            r.ours / r.theirs,
            r.drain_s
        );
        println!(
            "  storage: {:.2} bytes/sample in the lake after maintenance merged the samples into one file \
             (prom_samples + prom_series Parquet); {:.2} straight after the flushes ({} files); \
             Prometheus 2.42's TSDB snapshot of the same samples: {:.2} bytes/sample",
            r.merged, r.flushed, r.flushed_files, r.prometheus
        );
        runs.push((values, r));
    }
    let (_, exact) = &runs[0];
    let what = format!("remote write 1.0, {total} samples, {SHARDS} senders, 204 = fsynced in the log");
    record(
        "prometheus",
        &Figure {
            id: "remote_write",
            what: &what,
            value: exact.ours,
            unit: "samples/s",
            higher_is_better: true,
            reference: "Prometheus 2.42 --web.enable-remote-write-receiver, same payloads",
            reference_value: exact.theirs,
            claim: Some(100_000.0),
        },
    );
    for (values, r) in &runs {
        let (id, what) = match values {
            Values::ExactDecimals => (
                "bytes_per_sample",
                "lake bytes per sample after compaction (prom_samples + prom_series, merged by maintenance), \
                 counters exported as short decimals",
            ),
            Values::FloatAccumulated => (
                "bytes_per_sample_float_noise",
                "lake bytes per sample after compaction, counters accumulated in doubles (rounding noise)",
            ),
            Values::Scrape => (
                "bytes_per_sample_scrape",
                "lake bytes per sample after compaction, a real scrape's mix of series (mostly still, small steps)",
            ),
        };
        record(
            "prometheus",
            &Figure {
                id,
                what,
                value: r.merged,
                unit: "bytes",
                higher_is_better: false,
                reference: "Prometheus 2.42's TSDB (snapshot block: XOR chunks + index), same samples",
                reference_value: r.prometheus,
                claim: None,
            },
        );
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| if e.file_type().unwrap().is_dir() { dir_bytes(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

//! Prometheus remote-write load: pre-encoded requests (realistic shape:
//! many series, many samples per series per request) replayed from
//! loopback by several senders, each owning a shard of the series as
//! Prometheus's own shards do; samples/s acknowledged with fsync. The same
//! payloads go to a real Prometheus 2.42 started with
//! `--web.enable-remote-write-receiver` in the same run: the reference.
//! Afterwards: bytes per sample of the metrics tables in the lake.
//!
//! Run: `make bench-prometheus` (needs DUCKPOND_TEST_EXTENSION_DIR and the
//! `prometheus` binary).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duckpond_schema::prompb;
use prost::Message;
use support::{record, start, wait_drained, Figure};

mod support;

const SHARDS: usize = 4;
const SERIES_PER_SHARD: usize = 500;
const SAMPLES_PER_SERIES: usize = 100;
const REQUESTS_PER_SHARD: usize = 10;

/// A counter that grows by irregular steps (a hash of series and sample
/// index), so values are distinct and not dictionary-friendly: closer to
/// real byte or request counters than a fixed step.
fn counter(series: u64, n: u64) -> f64 {
    let step = |i: u64| {
        let mut x = (series << 32 | i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        (x % 10_000) as f64 / 100.0
    };
    (0..=n).map(step).sum::<f64>() + series as f64 * 1e6
}

/// `requests[shard][i]`: snappy-compressed WriteRequests, each shard's in
/// time order.
fn payloads(end_ms: i64) -> Vec<Vec<Vec<u8>>> {
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
                                            value: counter(id as u64, n),
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

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ext =
        std::env::var("DUCKPOND_TEST_EXTENSION_DIR").expect("set DUCKPOND_TEST_EXTENSION_DIR (make bench-prometheus)");
    let tmp = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let shards = payloads(now);
    let total = SHARDS * REQUESTS_PER_SHARD * SERIES_PER_SHARD * SAMPLES_PER_SERIES;
    let wire: usize = shards.iter().flatten().map(Vec::len).sum();

    // Reference: Prometheus's own receiver, same payloads.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(tmp.path().join("p.yml"), "global:\n  scrape_interval: 1h\n").unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", tmp.path().join("p.yml").display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("prom").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the prometheus binary");
    let http = reqwest::blocking::Client::new();
    while http.get(format!("http://127.0.0.1:{port}/-/ready")).send().map(|r| r.status() != 200).unwrap_or(true) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let theirs = replay(&format!("http://127.0.0.1:{port}/api/v1/write"), None, &shards);
    let _ = prom.kill();
    let _ = prom.wait();

    let (mut server, url, key) = start(tmp.path(), &ext);
    let ours = replay(&format!("{url}/api/v1/write"), Some(&key), &shards);
    let t = Instant::now();
    wait_drained(&http, &url, &key);
    let drain_s = t.elapsed().as_secs_f64();
    let ds: serde_json::Value =
        http.get(format!("{url}/api/datasets")).header("X-API-Key", &key).send().unwrap().json().unwrap();
    let bytes_of = |name: &str| {
        ds.as_array().unwrap().iter().find(|d| d["name"] == name).map(|d| d["bytes"].as_f64().unwrap()).unwrap_or(0.0)
    };
    let stored = bytes_of("prom_samples") + bytes_of("prom_series");
    println!(
        "prometheus_remote_write: {total} samples in {} requests ({} series x {SAMPLES_PER_SERIES} samples each, {SHARDS} senders), {:.1} MB on the wire",
        SHARDS * REQUESTS_PER_SHARD,
        SHARDS * SERIES_PER_SHARD,
        wire as f64 / 1e6
    );
    println!(
        "duckpond: {:.0} samples/s acknowledged with fsync; prometheus 2.42 receiver: {:.0} samples/s; ratio {:.2}; \
         committed {:.1} s after the last ack",
        ours,
        theirs,
        ours / theirs,
        drain_s
    );
    println!(
        "storage: {:.2} bytes/sample in the lake (prom_samples + prom_series Parquet, {:.1} MB)",
        stored / total as f64,
        stored / 1e6
    );
    let what = format!("remote write 1.0, {total} samples, {SHARDS} senders, 204 = fsynced in the log");
    record(
        "prometheus",
        &Figure {
            id: "remote_write",
            what: &what,
            value: ours,
            unit: "samples/s",
            higher_is_better: true,
            reference: "Prometheus 2.42 --web.enable-remote-write-receiver, same payloads",
            reference_value: theirs,
            claim: Some(100_000.0),
        },
    );
    record(
        "prometheus",
        &Figure {
            id: "bytes_per_sample",
            what: "lake bytes per sample after compaction (prom_samples + prom_series)",
            value: stored / total as f64,
            unit: "bytes",
            higher_is_better: false,
            reference: "the uncompressed sample (int64 timestamp + float64 value)",
            reference_value: 16.0,
            claim: None,
        },
    );
    let _ = server.kill();
    let _ = server.wait();
}

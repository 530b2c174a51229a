//! Prometheus remote write end to end: synthetic 1.0 and 2.0 requests
//! (samples, native histograms, exemplars, metadata, stale markers), resends,
//! every kind of malformed body, and a real Prometheus server remote-writing
//! to DuckPond whose stored values must equal what Prometheus itself answers.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{error_of, json_of, Backend, Server, TestEnv};
use duckpond_schema::{prom_wire, prompb, prompb_v2};
use prost::Message;
use serde_json::{json, Value};

const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
const V2_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

fn label(n: &str, v: &str) -> prompb::Label {
    prompb::Label { name: n.into(), value: v.into() }
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> prompb::TimeSeries {
    prompb::TimeSeries {
        labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
        samples: samples.iter().map(|&(timestamp, value)| prompb::Sample { value, timestamp }).collect(),
        ..Default::default()
    }
}

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).unwrap()
}

fn send(s: &Server, key: &str, ct: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    s.http
        .post(s.url("/api/v1/write"))
        .header("X-API-Key", key)
        .header("Content-Type", ct)
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .unwrap()
}

fn query(s: &Server, key: &str, sql: &str) -> Vec<Value> {
    let r = s.http.post(s.url("/api/query")).header("X-API-Key", key).json(&json!({"sql": sql})).send().unwrap();
    json_of(r, 200)["rows"].as_array().unwrap().clone()
}

/// Waits until everything acknowledged is committed.
fn drained(s: &Server, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let me = json_of(s.get("/api/account", Some(key)), 200);
        if me["usage"]["committed_lsn"] == me["usage"]["durable_lsn"] {
            return;
        }
        assert!(Instant::now() < deadline, "never committed: {me}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn remote_write_v1_stores_samples_and_is_idempotent() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let req = prompb::WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "http_requests_total"), ("code", "200"), ("job", "api")],
                &[(1_000, 1.0), (2_000, 5.0)],
            ),
            series(&[("__name__", "http_requests_total"), ("code", "500"), ("job", "api")], &[(1_000, 2.0)]),
            series(&[("__name__", "up"), ("job", "api")], &[(1_000, 1.0), (2_000, f64::from_bits(STALE_NAN))]),
        ],
        metadata: vec![prompb::MetricMetadata {
            r#type: prompb::metric_metadata::MetricType::Counter as i32,
            metric_family_name: "http_requests_total".into(),
            help: "Requests.".into(),
            unit: "".into(),
        }],
    };
    let body = snappy(&req.encode_to_vec());
    let r = send(&s, &key, "application/x-protobuf", body.clone());
    assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    // A resend (Prometheus retries after a timeout) stores nothing twice.
    assert_eq!(send(&s, &key, "application/x-protobuf", body).status(), 204);
    drained(&s, &key);
    let rows = query(
        &s,
        &key,
        "SELECT metric_name, labels['code'], epoch_ms(\"timestamp\"), value FROM prometheus_samples ORDER BY 1, 2, 3",
    );
    assert_eq!(
        rows,
        vec![
            json!(["http_requests_total", "200", 1000, 1.0]),
            json!(["http_requests_total", "200", 2000, 5.0]),
            json!(["http_requests_total", "500", 1000, 2.0]),
            json!(["up", null, 1000, 1.0]),
        ]
    );
    // The stale marker is stored (flagged), not dropped.
    let stale = query(&s, &key, "SELECT count(*) FROM prom_samples WHERE stale AND isnan(value)");
    assert_eq!(stale[0][0], 1);
    let meta = query(&s, &key, "SELECT metric_family_name, type, help FROM prom_metadata");
    assert_eq!(meta[0], json!(["http_requests_total", "counter", "Requests."]));
    // One series row per series, however often it is written.
    assert_eq!(query(&s, &key, "SELECT count(*), count(DISTINCT series_id) FROM prom_series")[0], json!([3, 3]));
    // Alias path and the three auth forms Prometheus can send.
    for (i, auth) in ["x-api-key", "bearer", "basic"].iter().enumerate() {
        let req = prompb::WriteRequest {
            timeseries: vec![series(&[("__name__", "up"), ("job", "api")], &[(3_000 + i as i64, 1.0)])],
            metadata: vec![],
        };
        let mut b = s
            .http
            .post(s.url("/api/v1/push"))
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .body(snappy(&req.encode_to_vec()));
        b = match *auth {
            "x-api-key" => b.header("X-API-Key", &key),
            "bearer" => b.bearer_auth(&key),
            _ => b.basic_auth("prometheus", Some(&key)),
        };
        assert_eq!(b.send().unwrap().status(), 204, "{auth}");
    }
    let r = s
        .http
        .post(s.url("/api/v1/write"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(Vec::<u8>::new())
        .send()
        .unwrap();
    error_of(r, 401, "unauthorized");
}

#[test]
fn remote_write_v2_histograms_exemplars_metadata() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let symbols: Vec<String> =
        ["", "__name__", "rpc_duration_seconds", "job", "api", "trace_id", "abc123", "Latency.", "seconds"]
            .iter()
            .map(|x| x.to_string())
            .collect();
    let req = prompb_v2::Request {
        symbols,
        timeseries: vec![
            prompb_v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![prompb_v2::Sample { value: 0.25, timestamp: 5_000 }],
                exemplars: vec![prompb_v2::Exemplar { labels_refs: vec![5, 6], value: 0.3, timestamp: 5_000 }],
                metadata: Some(prompb_v2::Metadata { r#type: 3, help_ref: 7, unit_ref: 8 }),
                ..Default::default()
            },
            prompb_v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 6],
                histograms: vec![prompb_v2::Histogram {
                    count: Some(prompb_v2::histogram::Count::CountInt(10)),
                    sum: 12.5,
                    schema: 3,
                    zero_threshold: 1e-128,
                    zero_count: Some(prompb_v2::histogram::ZeroCount::ZeroCountInt(1)),
                    positive_spans: vec![prompb_v2::BucketSpan { offset: -2, length: 3 }],
                    positive_deltas: vec![2, 3, -1],
                    reset_hint: 2,
                    timestamp: 5_000,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    let r = send(&s, &key, V2_TYPE, snappy(&req.encode_to_vec()));
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-prometheus-remote-write-samples-written"], "1");
    assert_eq!(r.headers()["x-prometheus-remote-write-histograms-written"], "1");
    assert_eq!(r.headers()["x-prometheus-remote-write-exemplars-written"], "1");
    // Resent: nothing more is written, and the headers say so.
    let r = send(&s, &key, V2_TYPE, snappy(&req.encode_to_vec()));
    assert_eq!(r.headers()["x-prometheus-remote-write-samples-written"], "0");
    drained(&s, &key);
    let h = query(&s, &key, "SELECT count_int, sum, schema, zero_count_int, positive_span_offsets, positive_span_lengths, positive_deltas, reset_hint FROM prom_histograms");
    assert_eq!(h, vec![json!([10, 12.5, 3, 1, [-2], [3], [2, 3, -1], 2])]);
    let e = query(&s, &key, "SELECT value, labels['trace_id'] FROM prom_exemplars");
    assert_eq!(e, vec![json!([0.3, "abc123"])]);
    let m = query(&s, &key, "SELECT metric_family_name, type, help, unit FROM prom_metadata");
    assert_eq!(m, vec![json!(["rpc_duration_seconds", "histogram", "Latency.", "seconds"])]);
    // Failure responses carry the headers too.
    let r = send(&s, &key, V2_TYPE, snappy(b"\x0a\x05junk"));
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-prometheus-remote-write-samples-written"], "0");
}

/// Remote write 2.0 as an independent encoder writes it: Python's protobuf
/// runtime on the official `.proto` (compiled by grpcio-tools' protoc), not
/// DuckPond's generated types, so a wrong field number on our side cannot
/// hide behind the same mistake in the test. The
/// `X-Prometheus-Remote-Write-*-Written` headers and the stored values
/// must match what the encoder put in.
#[test]
fn remote_write_v2_from_an_independent_encoder() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let script = format!(
        r#"
import importlib.util, json, pathlib, sys, tempfile
from grpc_tools import protoc
root = pathlib.Path({root:?})
d = tempfile.mkdtemp()
files = [str(p.relative_to(root)) for p in root.rglob("*.proto")]
assert protoc.main(["protoc", f"-I{{root}}", f"--python_out={{d}}"] + files) == 0
spec = importlib.util.spec_from_file_location("t", pathlib.Path(d) / "io" / "prometheus" / "write" / "v2" / "types_pb2.py")
v2 = importlib.util.module_from_spec(spec); spec.loader.exec_module(v2)
r = v2.Request()
r.symbols.extend(["", "__name__", "rpc_seconds", "job", "api", "trace_id", "t-1", "Latency.", "seconds", "zone", "eu", "rpc_hist"])
samples = histograms = exemplars = 0
for k, refs in enumerate([[1, 2, 3, 4], [1, 2, 3, 4, 9, 10]]):
    ts = r.timeseries.add()
    ts.labels_refs.extend(refs)
    for j in range(3):
        smp = ts.samples.add(); smp.value = k * 1000 + j + 0.125; smp.timestamp = 1_700_000_000_000 + k * 10 + j
        samples += 1
    ts.metadata.type = 2; ts.metadata.help_ref = 7; ts.metadata.unit_ref = 8
    if k == 0:
        e = ts.exemplars.add(); e.value = 0.75; e.timestamp = 1_700_000_000_001; e.labels_refs.extend([5, 6])
        exemplars += 1
ts = r.timeseries.add()
ts.labels_refs.extend([1, 11, 3, 4])
h = ts.histograms.add(); h.count_float = 7.5; h.sum = -2.25; h.schema = -1; h.zero_threshold = 0.001
h.zero_count_float = 0.5; sp = h.negative_spans.add(); sp.offset = 1; sp.length = 2
h.negative_counts.extend([1.5, 2.5]); h.reset_hint = 1; h.timestamp = 1_700_000_000_100
histograms += 1
ts.metadata.type = 3; ts.metadata.help_ref = 7; ts.metadata.unit_ref = 8
sys.stdout.write(json.dumps({{"body": r.SerializeToString().hex(), "samples": samples, "histograms": histograms, "exemplars": exemplars}}))
"#,
        root = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/proto")
    );
    let made: Value = serde_json::from_str(&common::python(&script)).unwrap();
    let body = hex::decode(made["body"].as_str().unwrap()).unwrap();
    let r = send(&s, &key, V2_TYPE, snappy(&body));
    assert_eq!(r.status(), 204, "{}", r.text().unwrap_or_default());
    for (header, what) in [
        ("x-prometheus-remote-write-samples-written", "samples"),
        ("x-prometheus-remote-write-histograms-written", "histograms"),
        ("x-prometheus-remote-write-exemplars-written", "exemplars"),
    ] {
        assert_eq!(r.headers()[header].to_str().unwrap(), made[what].to_string(), "{header}");
    }
    drained(&s, &key);
    assert_eq!(
        query(&s, &key, "SELECT count(*), sum(value), min(timestamp_ms), max(timestamp_ms) FROM prom_samples")[0],
        json!([6, 3006.75, 1_700_000_000_000i64, 1_700_000_000_012i64])
    );
    assert_eq!(
        query(&s, &key, "SELECT count(DISTINCT series_id) FROM prom_series WHERE metric_name = 'rpc_seconds'")[0][0],
        2
    );
    let h = query(
        &s,
        &key,
        "SELECT count_float, sum, schema, zero_threshold, zero_count_float, negative_span_offsets, \
         negative_span_lengths, negative_counts, reset_hint, timestamp_ms FROM prom_histograms",
    );
    assert_eq!(h, vec![json!([7.5, -2.25, -1, 0.001, 0.5, [1], [2], [1.5, 2.5], 1, 1_700_000_000_100i64])]);
    let e = query(&s, &key, "SELECT value, timestamp_ms, labels['trace_id'] FROM prom_exemplars");
    assert_eq!(e, vec![json!([0.75, 1_700_000_000_001i64, "t-1"])]);
    let m = query(&s, &key, "SELECT DISTINCT metric_family_name, type, help, unit FROM prom_metadata ORDER BY 1");
    assert_eq!(
        m,
        vec![
            json!(["rpc_hist", "histogram", "Latency.", "seconds"]),
            json!(["rpc_seconds", "gauge", "Latency.", "seconds"])
        ]
    );
}

/// Every malformed body gets 400 (or 413/415) and stores nothing.
#[test]
fn malformed_remote_writes_store_nothing() {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config(
        "prometheus:\n  max_decoded_bytes: 100000\n  max_labels_per_series: 16\n  max_label_bytes: 256\n  max_compressed_bytes: 200000\n",
    );
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let v1 = |ts: Vec<prompb::TimeSeries>| {
        snappy(&prompb::WriteRequest { timeseries: ts, metadata: vec![] }.encode_to_vec())
    };
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("l{i:02}"), "v".to_string())).collect();
    let many_refs: Vec<(&str, &str)> =
        std::iter::once(("__name__", "m")).chain(many.iter().map(|(a, b)| (a.as_str(), b.as_str()))).collect();
    let long = "x".repeat(300);
    // Each case, and what its 400's message must say.
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad snappy", b"definitely not snappy".to_vec(), "snappy"),
        ("bad protobuf", snappy(b"\xff\xff\xff\xff\xff\xff"), "not a prometheus.WriteRequest"),
        ("unsorted labels", v1(vec![series(&[("job", "a"), ("__name__", "m")], &[(1, 1.0)])]), "not sorted"),
        ("duplicate labels", v1(vec![series(&[("__name__", "m"), ("a", "1"), ("a", "2")], &[(1, 1.0)])]), "unique"),
        ("empty label name", v1(vec![series(&[("", "x"), ("__name__", "m")], &[(1, 1.0)])]), "name is empty"),
        ("empty label value", v1(vec![series(&[("__name__", "m"), ("a", "")], &[(1, 1.0)])]), "empty value"),
        ("no metric name", v1(vec![series(&[("job", "a")], &[(1, 1.0)])]), "no __name__"),
        ("absurd label count", v1(vec![series(&many_refs, &[(1, 1.0)])]), "prometheus.max_labels_per_series"),
        (
            "label past max_label_bytes",
            v1(vec![series(&[("__name__", "m"), ("a", &long)], &[(1, 1.0)])]),
            "longer than 256 bytes",
        ),
        ("two values at one timestamp", v1(vec![series(&[("__name__", "m")], &[(1, 1.0), (1, 2.0)])]), "1 ms"),
    ];
    for (what, body, says) in bad {
        let msg = error_of(send(&s, &key, "application/x-protobuf", body), 400, "bad_request");
        assert!(msg.contains(says), "{what}: {msg}");
    }
    // Past prometheus.max_compressed_bytes: 413 before decoding.
    let incompressible: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    error_of(send(&s, &key, "application/x-protobuf", incompressible), 413, "payload_too_large");
    // One good series next to a bad one: the whole request is refused.
    let mixed = v1(vec![series(&[("__name__", "ok")], &[(1, 1.0)]), series(&[("job", "x")], &[(1, 1.0)])]);
    assert_eq!(send(&s, &key, "application/x-protobuf", mixed).status(), 400);
    let huge = v1(vec![series(&[("__name__", "m")], &(0..20_000).map(|i| (i, 1.0)).collect::<Vec<_>>())]);
    error_of(send(&s, &key, "application/x-protobuf", huge), 413, "payload_too_large");
    error_of(send(&s, &key, "application/json", b"{}".to_vec()), 415, "unsupported_media_type");
    error_of(send(&s, &key, "application/x-protobuf;proto=some.Other", vec![]), 415, "unsupported_media_type");
    let r = s
        .http
        .post(s.url("/api/v1/write"))
        .header("X-API-Key", &key)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "gzip")
        .body(vec![1u8, 2, 3])
        .send()
        .unwrap();
    error_of(r, 415, "unsupported_media_type");
    let me = json_of(s.get("/api/account", Some(&key)), 200);
    assert_eq!(me["usage"]["durable_lsn"], 0, "something was logged: {me}");
}

struct Prom {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listened on a moment ago. Another process can
/// take it before Prometheus binds it: [`start_prometheus`] then starts
/// Prometheus again on another one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a real Prometheus on a free loopback port with `config` (its
/// own address is substituted for `{self}`), and waits until it is ready.
/// If another process took the port first, Prometheus exits: it is started
/// again on another port.
fn start_prometheus(config: &str) -> Prom {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("prometheus.yml"), config.replace("{self}", &format!("127.0.0.1:{port}")))
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the prometheus binary (Debian package `prometheus`, installed by .ci/services.sh)");
        let mut prom = Prom { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = prom.child.try_wait() {
                break; // it could not bind: try another port
            }
            if reqwest::blocking::get(format!("{}/-/ready", prom.url)).is_ok_and(|r| r.status().is_success()) {
                return prom;
            }
            assert!(Instant::now() < deadline, "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("prometheus could not bind a free port five times");
}

/// A real Prometheus scrapes itself and remote-writes to DuckPond; the
/// values stored equal what its own query API returns at the same instants.
#[test]
fn real_prometheus_remote_write_matches_its_own_answers() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let prom = start_prometheus(&format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    \
         static_configs:\n      - targets: ['{{self}}']\nremote_write:\n  - url: {}/api/v1/write\n    \
         authorization:\n      credentials: {key}\n    queue_config:\n      batch_send_deadline: 1s\n",
        s.url
    ));
    let http = reqwest::blocking::Client::new();
    // A metric with exactly one series per instance.
    let metric = "prometheus_tsdb_head_series";
    // Wait for a few scrapes to arrive.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let n = query(
            &s,
            &key,
            "SELECT count(*) FROM (SELECT 1 FROM information_schema.tables WHERE table_name = 'prometheus_samples') t",
        );
        if n[0][0] == 1 {
            let c = query(&s, &key, &format!("SELECT count(*) FROM prometheus_samples WHERE metric_name = '{metric}'"));
            if c[0][0].as_i64().unwrap_or(0) >= 8 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no samples from Prometheus arrived");
    }
    // Every (timestamp, value) pair of the range selector `[5m]` at one
    // instant T, for every series of several metrics (gauges, counters, a
    // summary's quantiles): ours (up to T) must equal Prometheus's own
    // answer. T is the newest instant every series has reached here; the
    // pause after it lets remote write deliver anything older.
    let metrics = [
        metric,
        "process_cpu_seconds_total",
        "prometheus_http_requests_total",
        "go_gc_duration_seconds",
        "go_memstats_alloc_bytes",
        "prometheus_sd_discovered_targets",
    ];
    let names = metrics.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", ");
    let t = query(
        &s,
        &key,
        &format!(
            "SELECT min(newest) FROM (SELECT max(epoch_ms(\"timestamp\")) AS newest FROM prometheus_samples \
             WHERE metric_name IN ({names}) GROUP BY metric_name, to_json(labels)::VARCHAR)"
        ),
    )[0][0]
        .as_i64()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    type Series = std::collections::BTreeMap<String, String>;
    let mut ours: std::collections::BTreeMap<Series, Vec<(i64, String)>> = Default::default();
    for row in query(
        &s,
        &key,
        &format!(
            "SELECT metric_name, to_json(labels)::VARCHAR, epoch_ms(\"timestamp\"), value::VARCHAR FROM prometheus_samples \
             WHERE metric_name IN ({names}) AND epoch_ms(\"timestamp\") > {t} - 300000 AND epoch_ms(\"timestamp\") <= {t} \
             ORDER BY 1, 2, 3"
        ),
    ) {
        let mut labels: Series = serde_json::from_str(row[1].as_str().unwrap()).unwrap();
        labels.insert("__name__".into(), row[0].as_str().unwrap().into());
        // DuckDB prints a double's shortest exact form; parse both sides.
        ours.entry(labels).or_default().push((row[2].as_i64().unwrap(), row[3].as_str().unwrap().to_string()));
    }
    let selector = format!("{{__name__=~\"{}\"}}[5m]", metrics.join("|"));
    let v: Value = http
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", selector.as_str()), ("time", &format!("{}", t as f64 / 1000.0))])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], "success", "{v}");
    let mut theirs: std::collections::BTreeMap<Series, Vec<(i64, String)>> = Default::default();
    for series in v["data"]["result"].as_array().unwrap() {
        let labels: Series = serde_json::from_value(series["metric"].clone()).unwrap();
        let values = series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| ((p[0].as_f64().unwrap() * 1000.0).round() as i64, p[1].as_str().unwrap().to_string()))
            .collect();
        theirs.insert(labels, values);
    }
    let same = |a: &str, b: &str| {
        let (x, y): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        x == y || (x.is_nan() && y.is_nan())
    };
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "the series differ");
    for (labels, mine) in &ours {
        let other = &theirs[labels];
        assert_eq!(mine.len(), other.len(), "{labels:?}: {mine:?} vs {other:?}");
        for ((t1, v1), (t2, v2)) in mine.iter().zip(other) {
            assert!(t1 == t2 && same(v1, v2), "{labels:?}: ours ({t1}, {v1}), Prometheus's ({t2}, {v2})");
        }
    }
    let samples: usize = ours.values().map(Vec::len).sum();
    let counters = ours.keys().filter(|l| l["__name__"].ends_with("_total")).count();
    assert!(
        ours.len() >= 10 && samples >= 50 && counters >= 2,
        "{} series, {samples} samples, {counters} counters",
        ours.len()
    );
    assert!(ours.keys().all(|l| l["instance"].starts_with("127.0.0.1:")));
}

fn remote_read(s: &Server, key: &str, req: &prompb::ReadRequest) -> reqwest::blocking::Response {
    s.http
        .post(s.url("/api/v1/read"))
        .header("X-API-Key", key)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(snappy(&req.encode_to_vec()))
        .send()
        .unwrap()
}

fn matcher(kind: prompb::label_matcher::Type, name: &str, value: &str) -> prompb::LabelMatcher {
    prompb::LabelMatcher { r#type: kind as i32, name: name.into(), value: value.into() }
}

/// Remote read gives back exactly what was written (stale markers
/// bit-exact), selected by every matcher kind; and a real Prometheus with
/// `remote_read` pointed at DuckPond answers queries from it.
#[test]
fn remote_read_returns_what_was_written() {
    use prompb::label_matcher::Type;
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 60_000;
    // Awkward doubles (inexact decimals, extremes, subnormals, infinities,
    // -0.0) come back bit for bit. -0.0 needs `prom_wire`'s encoders on both
    // sides: prost leaves a double equal (by `==`) to 0.0 off the wire.
    let awkward = [
        -0.0,
        0.1,
        1234567.89,
        0.1 + 0.2,
        -123.456,
        1.0 / 3.0,
        1e300,
        f64::MIN_POSITIVE,
        5e-324,
        9007199254740993.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        42.0,
    ];
    let req = prompb::WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "duckpond_only_total"), ("env", "prod"), ("job", "a")],
                &[(t0, 1.0), (t0 + 15_000, 2.0), (t0 + 30_000, 3.0)],
            ),
            series(
                &[("__name__", "duckpond_only_total"), ("env", "dev"), ("job", "b")],
                &[(t0, 10.0), (t0 + 15_000, f64::from_bits(STALE_NAN))],
            ),
            series(
                &[("__name__", "duckpond_awkward_values"), ("job", "c")],
                &awkward.iter().enumerate().map(|(i, v)| (t0 + i as i64, *v)).collect::<Vec<_>>(),
            ),
        ],
        metadata: vec![],
    };
    assert_eq!(send(&s, &key, "application/x-protobuf", snappy(&prom_wire::encode_write_request(&req))).status(), 204);
    drained(&s, &key);
    let read = |matchers: Vec<prompb::LabelMatcher>| -> Vec<prompb::TimeSeries> {
        let q = prompb::Query { start_timestamp_ms: t0 - 1, end_timestamp_ms: now, matchers, hints: None };
        let r = remote_read(&s, &key, &prompb::ReadRequest { queries: vec![q], accepted_response_types: vec![] });
        assert_eq!(r.status(), 200, "{:?}", r.headers());
        assert_eq!(r.headers()["content-encoding"], "snappy");
        let raw = snap::raw::Decoder::new().decompress_vec(&r.bytes().unwrap()).unwrap();
        prompb::ReadResponse::decode(raw.as_slice()).unwrap().results.remove(0).timeseries
    };
    let all = read(vec![matcher(Type::Eq, "__name__", "duckpond_only_total")]);
    assert_eq!(all.len(), 2);
    let prod = read(vec![matcher(Type::Eq, "__name__", "duckpond_only_total"), matcher(Type::Eq, "env", "prod")]);
    assert_eq!(prod.len(), 1);
    let names: Vec<&str> = prod[0].labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["__name__", "env", "job"]);
    assert_eq!(prod[0].samples.iter().map(|s| s.value).collect::<Vec<_>>(), [1.0, 2.0, 3.0]);
    let odd = read(vec![matcher(Type::Eq, "__name__", "duckpond_awkward_values")]);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&odd[0].samples.iter().map(|s| s.value).collect::<Vec<_>>()), bits(&awkward));
    let dev = read(vec![matcher(Type::Re, "env", "d.v"), matcher(Type::Neq, "job", "a")]);
    assert_eq!(dev.len(), 1);
    assert_eq!(dev[0].samples[1].value.to_bits(), STALE_NAN, "stale marker not bit-exact");
    assert!(read(vec![matcher(Type::Nre, "env", ".*")]).is_empty());
    assert!(read(vec![matcher(Type::Eq, "missing", "x")]).is_empty());
    // An injection attempt in a value is just a value.
    assert!(read(vec![matcher(Type::Eq, "env", "x' OR '1'='1")]).is_empty());
    let r = remote_read(&s, &key, &prompb::ReadRequest { queries: vec![], accepted_response_types: vec![1] });
    let msg = error_of(r, 400, "bad_request");
    assert!(msg.contains("SAMPLES"), "{msg}");
    // Time filtering: only samples inside [start, end] come back.
    let window = |start: i64, end: i64| -> Vec<i64> {
        let q = prompb::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: vec![matcher(Type::Eq, "__name__", "duckpond_only_total"), matcher(Type::Eq, "env", "prod")],
            hints: None,
        };
        let r = remote_read(&s, &key, &prompb::ReadRequest { queries: vec![q], accepted_response_types: vec![] });
        let raw = snap::raw::Decoder::new().decompress_vec(&r.bytes().unwrap()).unwrap();
        let res = prompb::ReadResponse::decode(raw.as_slice()).unwrap().results.remove(0).timeseries;
        res.iter().flat_map(|t| t.samples.iter().map(|s| s.timestamp - t0)).collect()
    };
    assert_eq!(window(t0, t0 + 15_000), [0, 15_000], "both ends are inclusive");
    assert_eq!(window(t0 + 1, t0 + 29_999), [15_000]);
    assert_eq!(window(t0 + 30_001, now), Vec::<i64>::new());

    // A real Prometheus (no local data for this metric) reads it through us.
    let prom = start_prometheus(&format!(
        "global:\n  scrape_interval: 1h\nremote_read:\n  - url: {}/api/v1/read\n    read_recent: true\n    \
         authorization:\n      credentials: {key}\n",
        s.url
    ));
    let http = reqwest::blocking::Client::new();
    let at = (t0 + 20_000) as f64 / 1000.0;
    let url = format!("{}/api/v1/query?query=duckpond_only_total{{env=%22prod%22}}&time={at}", prom.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let v: Value = loop {
        if let Ok(r) = http.get(&url).send() {
            if r.status() == 200 {
                break r.json().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "prometheus never answered");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v}");
}

/// The README's example queries, as the README writes them (read from
/// README.md), over data made for them: each runs and gives the answer
/// worked out by hand.
#[test]
fn readme_example_queries_run_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```sql")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("prometheus_samples") && b.contains("time_bucket"))
        .expect("the README's Prometheus example block");
    let queries: Vec<&str> = block.split(';').map(str::trim).filter(|q| !q.is_empty()).collect();
    assert_eq!(queries.len(), 3, "{block}");
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let now = chrono::Utc::now().timestamp_millis();
    let minute = now / 60_000 * 60_000 - 180_000;
    let mut timeseries = vec![
        // 1 -> 5 -> 2 (a counter reset): 4 + 2 over 300 s.
        series(
            &[("__name__", "http_requests_total"), ("code", "200")],
            &[(now - 120_000, 1.0), (now - 60_000, 5.0), (now - 30_000, 2.0)],
        ),
        // 2 -> 4: 2 over 300 s.
        series(&[("__name__", "http_requests_total"), ("code", "500")], &[(now - 60_000, 2.0), (now - 30_000, 4.0)]),
        // Two minutes of `up`: 1, 0 (avg 0.5) then 1.
        series(
            &[("__name__", "up"), ("instance", "a:9100")],
            &[(minute, 1.0), (minute + 10_000, 0.0), (minute + 60_000, 1.0)],
        ),
    ];
    for (i, v) in [10.0, 60.0, 30.0, 50.0, 20.0, 40.0].iter().enumerate() {
        let mount = format!("/m{i}");
        timeseries.push(series(
            &[("__name__", "node_filesystem_avail_bytes"), ("mountpoint", &mount)],
            &[(now - 60_000, 1.0), (now - 30_000, *v)],
        ));
    }
    let req = prompb::WriteRequest { timeseries, metadata: vec![] };
    assert_eq!(send(&s, &key, "application/x-protobuf", snappy(&req.encode_to_vec())).status(), 204);
    drained(&s, &key);
    let numbers = |rows: &[Value], col: usize| -> Vec<f64> { rows.iter().map(|r| r[col].as_f64().unwrap()).collect() };
    let mut rate = numbers(&query(&s, &key, queries[0]), 1);
    rate.sort_by(f64::total_cmp);
    assert_eq!(rate, [2.0 / 300.0, 6.0 / 300.0]);
    let top = query(&s, &key, queries[1]);
    assert_eq!(numbers(&top, 1), [60.0, 50.0, 40.0, 30.0, 20.0]);
    let down = query(&s, &key, queries[2]);
    assert_eq!(down.len(), 2, "{down:?}");
    assert_eq!(numbers(&down, 2), [0.5, 1.0]);
    assert!(down.iter().all(|r| r[1] == "a:9100"), "{down:?}");
}

/// Past `prometheus.max_read_samples` a remote read is a 400 that says
/// how to narrow it; a narrower read of the same series is answered.
#[test]
fn remote_read_past_max_read_samples_is_refused() {
    use prompb::label_matcher::Type;
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config("prometheus:\n  max_read_samples: 10\n");
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    let samples: Vec<(i64, f64)> = (0..20).map(|i| (t0 + i * 1_000, i as f64)).collect();
    let req = prompb::WriteRequest { timeseries: vec![series(&[("__name__", "m")], &samples)], metadata: vec![] };
    assert_eq!(send(&s, &key, "application/x-protobuf", snappy(&req.encode_to_vec())).status(), 204);
    drained(&s, &key);
    let read = |end: i64| {
        let q = prompb::Query {
            start_timestamp_ms: t0,
            end_timestamp_ms: end,
            matchers: vec![matcher(Type::Eq, "__name__", "m")],
            hints: None,
        };
        remote_read(&s, &key, &prompb::ReadRequest { queries: vec![q], accepted_response_types: vec![] })
    };
    let msg = error_of(read(t0 + 19_000), 400, "bad_request");
    assert!(msg.contains("more than 10 samples"), "{msg}");
    let r = read(t0 + 9_000);
    assert_eq!(r.status(), 200);
    let raw = snap::raw::Decoder::new().decompress_vec(&r.bytes().unwrap()).unwrap();
    let got = prompb::ReadResponse::decode(raw.as_slice()).unwrap().results.remove(0).timeseries;
    assert_eq!(got[0].samples.len(), 10);
}

/// After a restart, what is stored is loaded back from the lake: a request
/// resent across the restart is still recognised.
#[test]
fn resend_after_restart_stores_nothing_twice() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let req = prompb::WriteRequest {
        timeseries: vec![series(&[("__name__", "m"), ("job", "a")], &[(1_000, 1.0), (2_000, 2.0)])],
        metadata: vec![prompb::MetricMetadata {
            r#type: 2,
            metric_family_name: "m".into(),
            help: "h".into(),
            unit: "".into(),
        }],
    };
    let body = snappy(&req.encode_to_vec());
    {
        let s = env.serve();
        assert_eq!(send(&s, &key, "application/x-protobuf", body.clone()).status(), 204);
        drained(&s, &key);
    }
    let s = env.serve();
    let r = send(&s, &key, "application/x-protobuf", body);
    assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    let newer = prompb::WriteRequest {
        timeseries: vec![series(&[("__name__", "m"), ("job", "a")], &[(3_000, 3.0)])],
        metadata: vec![],
    };
    let r = send(&s, &key, "application/x-protobuf", snappy(&newer.encode_to_vec()));
    assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    // A series first seen after the restart: its labels (a map) are
    // appended to a table DuckDB read back (entries named key/value).
    let new_series = prompb::WriteRequest {
        timeseries: vec![series(&[("__name__", "m"), ("job", "b")], &[(3_000, 0.5)])],
        metadata: vec![],
    };
    let r = send(&s, &key, "application/x-protobuf", snappy(&new_series.encode_to_vec()));
    assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    drained(&s, &key);
    assert_eq!(query(&s, &key, "SELECT count(*), sum(value) FROM prometheus_samples")[0], json!([4, 6.5]));
    assert_eq!(query(&s, &key, "SELECT count(*) FROM prom_series")[0][0], 2);
    assert_eq!(query(&s, &key, "SELECT count(*) FROM prom_metadata")[0][0], 1);
}

/// Prometheus's own ordering rules (2.39+ with `out_of_order_time_window`):
/// out-of-order samples inside the window are stored, older ones and
/// changed values are a 400 naming the series, exact resends are counted
/// duplicates; the same after a restart (the window is loaded from the
/// lake). Before, the out-of-order sample and the changed value were
/// dropped behind a 204.
#[test]
fn out_of_order_and_changed_samples_follow_prometheus() {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config("prometheus:\n  out_of_order_window_ms: 60000\n");
    let (_, key) = env.create_account("acme");
    const T: i64 = 1_700_000_000_000;
    let req = |samples: &[(i64, f64)]| {
        let ts = vec![series(&[("__name__", "m"), ("job", "a")], samples)];
        snappy(&prompb::WriteRequest { timeseries: ts, metadata: vec![] }.encode_to_vec())
    };
    {
        let s = env.serve();
        let w = |samples: &[(i64, f64)]| send(&s, &key, "application/x-protobuf", req(samples));
        assert_eq!(w(&[(T + 60_000, 1.0)]).status(), 204);
        // Older than the newest, inside the window: stored.
        assert_eq!(w(&[(T + 30_000, 2.0), (T + 90_000, 3.0)]).status(), 204);
        // A different value at a stored timestamp: 400 naming the series.
        let msg = error_of(w(&[(T + 90_000, 4.0)]), 400, "bad_request");
        assert!(msg.contains("m{job=\"a\"}") && msg.contains("different"), "{msg}");
        // An exact resend: a harmless duplicate.
        assert_eq!(w(&[(T + 60_000, 1.0), (T + 90_000, 3.0)]).status(), 204);
        // Older than the window below the newest (90 s): too old, and the
        // in-order sample of the same request is not stored either.
        let msg = error_of(w(&[(T + 29_000, 5.0), (T + 95_000, 5.0)]), 400, "bad_request");
        assert!(msg.contains("too old") && msg.contains("m{job=\"a\"}"), "{msg}");
        // A duplicate inside one request is stored once.
        assert_eq!(w(&[(T + 100_000, 6.0), (T + 100_000, 6.0)]).status(), 204);
        // A resend mixing an old sample with a new one (Prometheus retrying
        // a batch it extended): the new one is stored, the old one not twice.
        assert_eq!(w(&[(T + 90_000, 3.0), (T + 110_000, 7.0)]).status(), 204);
        drained(&s, &key);
        let got = query(&s, &key, "SELECT timestamp_ms - 1700000000000, value FROM prom_samples ORDER BY 1");
        assert_eq!(
            got,
            vec![
                json!([30_000, 2.0]),
                json!([60_000, 1.0]),
                json!([90_000, 3.0]),
                json!([100_000, 6.0]),
                json!([110_000, 7.0])
            ]
        );
        // The counters, by value: 2 resent + 1 within a request + 1 mixed
        // duplicates; 1 sample stored out of order; 2 requests refused.
        let metrics = s.get("/metrics", None).text().unwrap();
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(name))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum()
        };
        assert_eq!(value("duckpond_prometheus_duplicates_total"), 4.0, "{metrics}");
        assert_eq!(value("duckpond_prometheus_out_of_order_total"), 1.0, "{metrics}");
        assert_eq!(value("duckpond_prometheus_refused_requests_total"), 2.0, "{metrics}");
    }
    // After a restart the window comes from the lake.
    let s = env.serve();
    let w = |samples: &[(i64, f64)]| send(&s, &key, "application/x-protobuf", req(samples));
    assert_eq!(w(&[(T + 60_000, 1.0)]).status(), 204);
    error_of(w(&[(T + 60_000, 9.0)]), 400, "bad_request");
    error_of(w(&[(T + 10_000, 9.0)]), 400, "bad_request");
    drained(&s, &key);
    assert_eq!(query(&s, &key, "SELECT count(*) FROM prom_samples")[0][0], 5);
}

#[test]
fn cli_prometheus_test_passes() {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.create_account("acme");
    let s = env.serve();
    let out = env.ok(&["stream", "prometheus-test", "--account", "acme", "--server", s.url.as_str()]);
    assert_eq!(out.matches("PASS").count(), 4, "{out}");
    assert!(out.contains("all checks passed") && !out.contains("FAIL"), "{out}");
    // Run twice: the second run's samples are new (another run id), none lost.
    let out = env.ok(&["stream", "prometheus-test", "--account", "acme", "--server", s.url.as_str()]);
    assert!(out.contains("all checks passed"), "{out}");
}

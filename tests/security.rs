//! One account can never stop, read, write or impersonate another (issue
//! 18), tried as an attacker would against the real daemon: hostile inputs
//! in every format and in SQL while another account works, key scopes on
//! every door, revocation of open connections, failed-authentication
//! throttling, slow clients, a full disk, and secrets in everything the
//! daemon says. One daemon serves the file; tests that need their own
//! configuration start their own.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::RecordBatch;
use common::{error_of, json_of, Backend, Shared, TestEnv, ADMIN_KEY};
use serde_json::{json, Value};

/// The token the fake marimo of the shared daemon prints, as marimo does.
const FAKE_MARIMO_TOKEN: &str = "fake0marimo0token0that0must0never0leak";

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let env = TestEnv::migrated(Backend::Sqlite);
        // A "Python environment" whose marimo prints its URL with a token
        // and its arguments (server paths), then fails: what a failing
        // session's reason is built from.
        let fake_env = env.path().join("fake-env");
        std::fs::create_dir_all(fake_env.join("bin")).unwrap();
        let marimo = fake_env.join("bin/marimo");
        std::fs::write(
            &marimo,
            format!(
                "#!/bin/sh\nread -r token\necho \"URL: http://localhost:1/x?access_token={FAKE_MARIMO_TOKEN}\"\necho \"args: $*\"\n\
                 echo \"env: $DUCKPOND_CATALOG\"\nexit 1\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&marimo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        env.write_config(&format!(
            "security:\n  header_read_timeout_ms: 2000\n  max_connections_per_client: 64\n  \
             max_auth_failures_per_client: 10\n  max_auth_failures_per_key: 10\n  revocation_check_interval_ms: 200\n\
             limits:\n  stream_record_target_bytes: 1024\n\
             notebooks:\n  python_env: {}\n  port_range: 20200-20209\n",
            fake_env.display()
        ));
        Shared::start(env)
    })
}

/// A client whose connections come from `ip` (any address of 127.0.0.0/8).
fn client_from(ip: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn url(path: &str) -> String {
    shared().server.url(path)
}

fn alive() {
    let r = shared().server.http.get(url("/healthz")).send().expect("the daemon answers");
    assert_eq!(r.status(), 200);
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(shared().server.pid() as i32, 0) }, 0, "the daemon is gone");
}

fn upload(key: &str, table: &str, format: &str, body: impl Into<Vec<u8>>) -> reqwest::blocking::Response {
    shared()
        .server
        .http
        .post(url(&format!("/api/datasets/{table}/upload?format={format}")))
        .header("X-API-Key", key)
        .body(body.into())
        .send()
        .unwrap()
}

fn query(key: &str, sql: &str) -> reqwest::blocking::Response {
    shared().server.http.post(url("/api/query")).header("X-API-Key", key).json(&json!({ "sql": sql })).send().unwrap()
}

fn rows(key: &str, sql: &str) -> Vec<Value> {
    json_of(query(key, sql), 200)["rows"].as_array().unwrap().clone()
}

fn drained(key: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let me = json_of(shared().server.get("/api/account", Some(key)), 200);
        if me["usage"]["committed_lsn"] == me["usage"]["durable_lsn"] {
            return;
        }
        assert!(Instant::now() < deadline, "never committed: {me}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn new_key(manager: &str, scope: &str) -> String {
    let r = shared()
        .server
        .http
        .post(url("/api/account/keys"))
        .header("X-API-Key", manager)
        .json(&json!({ "scope": scope }))
        .send()
        .unwrap();
    let v = json_of(r, 201);
    assert_eq!(v["scope"], scope);
    v["api_key"].as_str().unwrap().to_string()
}

fn key_id(key: &str) -> String {
    key.split('_').nth(1).unwrap().to_string()
}

fn revoke(manager: &str, key: &str) {
    let r = shared()
        .server
        .http
        .delete(url(&format!("/api/account/keys/{}", key_id(key))))
        .header("X-API-Key", manager)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
}

fn nested(open: &str, close: &str, n: usize, leaf: &str) -> String {
    format!("{}{leaf}{}", open.repeat(n), close.repeat(n))
}

fn deep_struct_type(levels: usize) -> DataType {
    let mut t = DataType::Int64;
    for _ in 0..levels {
        t = DataType::Struct(Fields::from(vec![Field::new("a", t, true)]));
    }
    t
}

fn deep_struct_array(levels: usize) -> ArrayRef {
    let mut a: ArrayRef = Arc::new(Int64Array::from(vec![1]));
    for _ in 0..levels {
        let f = Field::new("a", a.data_type().clone(), true);
        a = Arc::new(StructArray::new(Fields::from(vec![f]), vec![a], None));
    }
    a
}

fn arrow_stream(batches: &[RecordBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batches[0].schema()).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    out
}

/// A Parquet file whose footer describes a schema nested `levels` deep,
/// written by hand (no writer would make one): what a crafted upload sends.
fn crafted_deep_parquet(levels: u32) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    // FileMetaData { 2: schema = [ {5: num_children = 1} x levels, {} ] }
    let mut footer = vec![0x29, 0xfc];
    varint(u64::from(levels) + 1, &mut footer);
    for _ in 0..levels {
        footer.extend_from_slice(&[0x55, 0x02, 0x00]);
    }
    footer.push(0x00);
    footer.push(0x00);
    let mut file = b"PAR1".to_vec();
    file.extend_from_slice(&footer);
    file.extend_from_slice(&(footer.len() as u32).to_le_bytes());
    file.extend_from_slice(b"PAR1");
    file
}

// ---- Crash containment ----

#[test]
fn hostile_inputs_of_one_account_stop_nothing_of_another() {
    let s = shared();
    let (attacker, _) = s.account("attacker");
    let (victim, _) = s.account("victim");
    // The victim writes and reads all along.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, acked, victim, url) = (stop.clone(), acked.clone(), victim.clone(), url(""));
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // The first write waits for its commit: the table exists
                // for every query after it.
                let wait = if n == 0 { "&wait=committed" } else { "" };
                let r = http
                    .post(format!("{url}/api/datasets/steady/upload?format=csv{wait}"))
                    .header("X-API-Key", &victim)
                    .body(format!("i\n{n}\n"))
                    .send()
                    .expect("the victim's upload got an answer");
                assert!(r.status().is_success(), "victim upload: {}", r.status());
                acked.fetch_add(1, Ordering::Relaxed);
                n += 1;
                let q = http
                    .post(format!("{url}/api/query"))
                    .header("X-API-Key", &victim)
                    .json(&json!({"sql": "SELECT count(*) AS n FROM steady"}))
                    .send()
                    .expect("the victim's query got an answer");
                // Its lake, read while the attacker's inputs and crashes go on.
                assert_eq!(q.status(), 200, "victim query");
            }
        })
    };

    // Every format, nested deeper than any reader survives, or deep enough
    // to break the lake (255 levels) or to take exponential time (lists).
    let deep_inputs: Vec<(&str, &str, Vec<u8>)> = vec![
        ("objects 5,000 deep", "ndjson", format!("{{\"v\": {}}}\n", nested("{\"a\":", "}", 5000, "1")).into()),
        ("objects 50,000 deep", "ndjson", format!("{{\"v\": {}}}\n", nested("{\"a\":", "}", 50_000, "1")).into()),
        ("arrays 5,000 deep", "ndjson", format!("{{\"v\": {}}}\n", nested("[", "]", 5000, "1")).into()),
        ("arrays 50,000 deep", "ndjson", format!("{{\"v\": {}}}\n", nested("[", "]", 50_000, "1")).into()),
        ("objects 300 deep", "ndjson", format!("{{\"v\": {}}}\n", nested("{\"a\":", "}", 300, "1")).into()),
        ("lists 32 deep", "ndjson", format!("{{\"v\": {}}}\n", nested("[", "]", 32, "1")).into()),
        ("a JSON document 5,000 deep", "json", format!("[{{\"v\": {}}}]", nested("{\"a\":", "}", 5000, "1")).into()),
        ("a crafted Parquet footer 1,000,000 deep", "parquet", crafted_deep_parquet(1_000_000)),
        ("a Parquet file 40 structs deep", "parquet", {
            let batch = RecordBatch::try_from_iter(vec![("v", deep_struct_array(40))]).unwrap();
            let mut out = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            out
        }),
    ];
    for (what, format, body) in deep_inputs {
        let msg = error_of(upload(&attacker, "deep", format, body), 400, "bad_request");
        assert!(msg.contains("max_nesting_depth"), "{what}: {msg}");
        alive();
    }
    // Wide rather than deep: answered (stored, or refused with a reason),
    // never a crash or a server error.
    let wide_json = format!("{{{}}}\n", (0..50_000).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(","));
    let wide_csv = format!(
        "{}\n{}\n",
        (0..20_000).map(|i| format!("c{i}")).collect::<Vec<_>>().join(","),
        (0..20_000).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    for (what, format, body) in [("50,000 keys", "ndjson", wide_json), ("20,000 columns", "csv", wide_csv)] {
        let r = upload(&attacker, "wide", format, body);
        assert!(r.status().as_u16() < 500, "{what}: {} {}", r.status(), r.text().unwrap());
        alive();
    }
    // The same through an Arrow stream.
    let schema = Schema::new(vec![Field::new("v", deep_struct_type(40), true)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![deep_struct_array(40)]).unwrap();
    let r = s
        .server
        .http
        .post(url("/api/stream/arrow/deep"))
        .header("X-API-Key", &attacker)
        .header("Content-Type", "application/vnd.apache.arrow.stream")
        .body(arrow_stream(&[batch]))
        .send()
        .unwrap();
    let msg = error_of(r, 400, "bad_request");
    assert!(msg.contains("max_nesting_depth"), "{msg}");
    alive();

    // Queries that make DuckDB recurse on JSON it builds itself: deep
    // enough that no thread stack survives the ones that recurse
    // (json_structure, json_group_structure: 10 million levels), so these
    // crash the account's query worker, never the daemon.
    let arrays = |n: u32| format!("(repeat('[', {n}) || repeat(']', {n}))");
    let objects = |n: u32| format!("(repeat('{{\"a\":', {n}) || '1' || repeat('}}', {n}))");
    // (statement, whether it must answer 200): what the stack holds must
    // still work in the worker; the rest may fail, but only as a 4xx.
    let corpus = [
        (format!("SELECT length(json_structure('{}'))", nested("{\"a\":", "}", 5000, "1")), true),
        (format!("SELECT length(json_structure({}))", objects(50_000)), true),
        (format!("SELECT length(json_structure({}))", arrays(10_000_000)), false),
        (format!("SELECT length(json_group_structure(j)) FROM (SELECT {}::JSON AS j)", arrays(10_000_000)), false),
        (format!("SELECT json_contains({}, '[]')", arrays(10_000_000)), false),
        (format!("SELECT length(json_merge_patch({o}, {o}))", o = objects(1_000_000)), false),
        (format!("SELECT json_extract({}, '$.a.a')", objects(1_000_000)), false),
        (format!("SELECT length(json_pretty({}))", arrays(1_000_000)), false),
        (format!("SELECT length(from_json({}, '[\"JSON\"]')::VARCHAR)", arrays(1_000_000)), false),
        (format!("SELECT length(json_transform({}, '{{\"a\": \"JSON\"}}')::VARCHAR)", objects(1_000_000)), false),
        (format!("SELECT json_valid({})", objects(1_000_000)), false),
        // Deep SQL text: the parser's and binder's own depth checks.
        (format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000)), false),
        (format!("SELECT {}", vec!["[1"; 10_000].join(",") + &"]".repeat(10_000)), false),
        (format!("SELECT length(json_serialize_sql('SELECT {}1{}'))", "(".repeat(100_000), ")".repeat(100_000)), false),
    ];
    let mut crashed = 0;
    for (sql, must_work) in &corpus {
        let r = query(&attacker, sql);
        let status = r.status();
        let body = r.text().unwrap();
        if *must_work {
            assert_eq!(status, 200, "{sql:.80}: {body:.300}");
        }
        assert!(status == 200 || status.is_client_error(), "{sql:.80}: {status} {body:.300}");
        crashed += usize::from(body.contains("stopped the account's query process"));
        alive();
        // The attacker's own next query runs (on a new worker if need be).
        assert_eq!(rows(&attacker, "SELECT 41 + 1 AS x"), [json!([42])], "after {sql:.80}");
    }
    // json_structure recursed past its worker's stack and said so (below,
    // once more on its own); json_group_structure may run out of memory
    // first on some machines.
    assert!(crashed >= 1, "no query stopped a worker");
    let r = query(&attacker, &format!("SELECT length(json_structure({}))", arrays(10_000_000)));
    let msg = error_of(r, 400, "bad_request");
    assert!(msg.contains("stopped the account's query process") && msg.contains("nested very deeply"), "{msg}");

    // Nesting within the limit is stored exactly.
    let ok = format!("{{\"v\": {}}}\n", nested("{\"a\":", "}", 30, "7"));
    assert_eq!(upload(&attacker, "fine", "ndjson", ok).status(), 202);
    drained(&attacker);
    let path = format!("v{}", ".a".repeat(30));
    assert_eq!(rows(&attacker, &format!("SELECT {path} AS x FROM fine")), [json!([7])]);

    stop.store(true, Ordering::Relaxed);
    worker.join().expect("the victim never saw an error");
    drained(&victim);
    let stored = rows(&victim, "SELECT count(*) AS n FROM steady");
    assert_eq!(stored, [json!([acked.load(Ordering::Relaxed)])]);
    assert!(acked.load(Ordering::Relaxed) > 0);
}

// ---- Key scopes ----

#[test]
fn key_scopes_are_enforced_on_every_door() {
    let s = shared();
    let (manager, _) = s.account("scoped");
    assert_eq!(json_of(s.server.get("/api/account", Some(&manager)), 200)["scope"], "manage");
    let read = new_key(&manager, "read");
    let write = new_key(&manager, "write");
    assert_eq!(upload(&write, "t", "csv", "a\n1\n").status(), 202);
    drained(&manager);
    let http = &s.server.http;
    let arrow = {
        let b = RecordBatch::try_from_iter(vec![("a", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]).unwrap();
        arrow_stream(&[b])
    };
    // What a read key may not do (403), and a write key may.
    type Door<'a> = Box<dyn Fn(&str) -> reqwest::blocking::Response + 'a>;
    let writes: Vec<(&str, Door)> = vec![
        ("upload", Box::new(|k: &str| upload(k, "t", "csv", "a\n2\n"))),
        (
            "arrow stream",
            Box::new(|k: &str| {
                http.post(url("/api/stream/arrow/t"))
                    .header("X-API-Key", k)
                    .header("Content-Type", "application/vnd.apache.arrow.stream")
                    .body(arrow.clone())
                    .send()
                    .unwrap()
            }),
        ),
        (
            "remote write",
            Box::new(|k: &str| {
                http.post(url("/api/v1/write"))
                    .header("X-API-Key", k)
                    .header("Content-Type", "application/x-protobuf")
                    .header("Content-Encoding", "snappy")
                    .body(snap::raw::Encoder::new().compress_vec(b"").unwrap())
                    .send()
                    .unwrap()
            }),
        ),
    ];
    for (door, send) in &writes {
        let msg = error_of(send(&read), 403, "forbidden");
        assert!(msg.contains("write scope"), "{door}: {msg}");
        let ok = send(&write);
        assert!(ok.status().is_success(), "{door} with a write key: {}", ok.status());
    }
    // Dataset deletion is a write; notebooks and keys are managed.
    error_of(http.delete(url("/api/datasets/t")).header("X-API-Key", &read).send().unwrap(), 403, "forbidden");
    let nb = json_of(
        http.post(url("/api/notebooks"))
            .header("X-API-Key", &manager)
            .json(&json!({"name": "managed"}))
            .send()
            .unwrap(),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    for k in [&read, &write] {
        let r = http.post(url("/api/notebooks")).header("X-API-Key", k).json(&json!({"name": "n"})).send().unwrap();
        error_of(r, 403, "forbidden");
        let r = http
            .put(url(&format!("/api/notebooks/{nb}")))
            .header("X-API-Key", k)
            .json(&json!({"content": "import marimo\n"}))
            .send()
            .unwrap();
        error_of(r, 403, "forbidden");
        error_of(
            http.delete(url(&format!("/api/notebooks/{nb}"))).header("X-API-Key", k).send().unwrap(),
            403,
            "forbidden",
        );
        let r =
            http.delete(url(&format!("/api/account/keys/{}", key_id(&manager)))).header("X-API-Key", k).send().unwrap();
        error_of(r, 403, "forbidden");
        error_of(http.get(url("/api/account/keys")).header("X-API-Key", k).send().unwrap(), 403, "forbidden");
        let r = http.post(url("/api/account/keys")).header("X-API-Key", k).json(&json!({})).send().unwrap();
        error_of(r, 403, "forbidden");
    }
    // Reads work with every scope.
    let stored = rows(&manager, "SELECT count(*) AS n FROM t");
    for k in [&read, &write, &manager] {
        assert_eq!(rows(k, "SELECT count(*) AS n FROM t"), stored);
        assert_eq!(http.get(url("/api/datasets")).header("X-API-Key", k).send().unwrap().status(), 200);
        assert_eq!(http.get(url("/api/notebooks")).header("X-API-Key", k).send().unwrap().status(), 200);
    }
    // A new key is `read` unless asked, and an unknown scope is refused.
    let r = http.post(url("/api/account/keys")).header("X-API-Key", &manager).json(&json!({})).send().unwrap();
    assert_eq!(json_of(r, 201)["scope"], "read");
    let r = http
        .post(url("/api/account/keys"))
        .header("X-API-Key", &manager)
        .json(&json!({"scope": "root"}))
        .send()
        .unwrap();
    assert!(r.status().is_client_error());
    // The admin API issues keys with a scope too.
    let r = http
        .post(url("/api/admin/accounts/scoped/keys"))
        .header("X-API-Key", ADMIN_KEY)
        .json(&json!({"scope": "write"}))
        .send()
        .unwrap();
    assert_eq!(json_of(r, 201)["scope"], "write");
}

// ---- Revocation ----

/// A request body fed from a channel, so a test can pause between chunks.
struct Feed(std::sync::mpsc::Receiver<Vec<u8>>, Vec<u8>);

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1.is_empty() {
            match self.0.recv() {
                Ok(chunk) => self.1 = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.1.len());
        buf[..n].copy_from_slice(&self.1[..n]);
        self.1.drain(..n);
        Ok(n)
    }
}

fn streaming_post(
    path: &str,
    key: &str,
    content_type: &str,
) -> (std::sync::mpsc::Sender<Vec<u8>>, std::thread::JoinHandle<reqwest::Result<reqwest::blocking::Response>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (u, k, ct) = (url(path), key.to_string(), content_type.to_string());
    let handle = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(u)
            .header("X-API-Key", k)
            .header("Content-Type", ct)
            .body(reqwest::blocking::Body::new(Feed(rx, Vec::new())))
            .send()
    });
    (tx, handle)
}

/// An Arrow stream to `table` with `writer`, sent up to the end of its
/// first batch of two (500 rows each) and logged; returns the sender of
/// the rest, the rest, and the reply.
#[allow(clippy::type_complexity)]
fn stream_first_of_two(
    manager: &str,
    writer: &str,
    table: &str,
) -> (std::sync::mpsc::Sender<Vec<u8>>, Vec<u8>, std::thread::JoinHandle<reqwest::Result<reqwest::blocking::Response>>)
{
    let batch = |from: i64| {
        let v: Vec<i64> = (from..from + 500).collect();
        RecordBatch::try_from_iter(vec![("i", Arc::new(Int64Array::from(v)) as ArrayRef)]).unwrap()
    };
    let bytes = arrow_stream(&[batch(0), batch(500)]);
    // Split after the first batch: schema + batch 1, then batch 2 + end.
    let first_len = arrow_stream(&[batch(0)]).len() - 8;
    let (tx, reply) =
        streaming_post(&format!("/api/stream/arrow/{table}"), writer, "application/vnd.apache.arrow.stream");
    tx.send(bytes[..first_len].to_vec()).unwrap();
    // The first batch is logged once it is complete (1 KiB records).
    let deadline = Instant::now() + Duration::from_secs(30);
    while json_of(shared().server.get("/api/account", Some(manager)), 200)["usage"]["durable_lsn"] == 0 {
        assert!(Instant::now() < deadline, "the first batch was never logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    (tx, bytes[first_len..].to_vec(), reply)
}

/// Sends the rest of a [`stream_first_of_two`] stream whose key is revoked
/// by now: the stream is refused there and only its first batch is stored.
fn send_the_rest_and_expect_one_batch_kept(
    manager: &str,
    table: &str,
    tx: std::sync::mpsc::Sender<Vec<u8>>,
    rest: Vec<u8>,
    reply: std::thread::JoinHandle<reqwest::Result<reqwest::blocking::Response>>,
) {
    tx.send(rest).unwrap();
    drop(tx);
    refused_after_first_batch(reply);
    drained(manager);
    assert_eq!(rows(manager, &format!("SELECT count(*) AS n, max(i) AS hi FROM {table}")), [json!([500, 499])]);
}

/// The reply to a stream refused after its first batch: 401 keeping one
/// batch, or (a client still sending may see only the closed connection,
/// a race of the client, not of the daemon) no reply: then what was stored
/// is the proof, checked by the caller.
fn refused_after_first_batch(reply: std::thread::JoinHandle<reqwest::Result<reqwest::blocking::Response>>) {
    match reply.join().unwrap() {
        Ok(res) => {
            assert_eq!(res.status(), 401);
            let v: Value = res.json().unwrap();
            assert!(v["error"]["message"].as_str().unwrap().contains("revoked"), "{v}");
            assert_eq!(v["error"]["details"]["batches_kept"], 1, "{v}");
        }
        Err(e) => assert!(e.is_body() || e.is_request(), "{e}"),
    }
}

#[test]
fn a_revoked_key_stops_an_open_stream_at_its_next_chunk() {
    let s = shared();
    let (manager, _) = s.account("revoked-stream");
    let writer = new_key(&manager, "write");
    let (tx, rest, reply) = stream_first_of_two(&manager, &writer, "r");
    revoke(&manager, &writer);
    send_the_rest_and_expect_one_batch_kept(&manager, "r", tx, rest, reply);
}

#[test]
fn a_key_revoked_by_another_process_stops_an_open_stream() {
    // The CLI works on the metadata database directly: the daemon learns
    // of it only by looking (security.revocation_check_interval_ms, 200 ms
    // here), not from its own API.
    let s = shared();
    let (manager, _) = s.account("cli-revoked");
    let out = s.env.ok(&["account", "api-key", "create", "cli-revoked", "--scope", "write"]);
    let writer = out.split_whitespace().find(|w| w.starts_with("dpk_")).expect("the new key").to_string();
    assert_eq!(json_of(s.server.get("/api/account", Some(&writer)), 200)["scope"], "write");
    let (tx, rest, reply) = stream_first_of_two(&manager, &writer, "c");
    s.env.ok(&["account", "api-key", "revoke", "cli-revoked", &key_id(&writer)]);
    // Past the check interval, with margin.
    std::thread::sleep(Duration::from_millis(800));
    send_the_rest_and_expect_one_batch_kept(&manager, "c", tx, rest, reply);
}

#[test]
fn a_revoked_key_stops_an_open_upload_and_nothing_of_it_is_stored() {
    let s = shared();
    let (manager, root) = s.account("revoked-upload");
    let writer = new_key(&manager, "write");
    // A raw chunked request: the reply can be read while the body is still
    // open, which an HTTP client library does not show.
    let addr = s.server.url.trim_start_matches("http://").to_string();
    let mut sock = TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "POST /api/datasets/u/upload?format=csv HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {writer}\r\n\
         Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = |sock: &mut TcpStream, data: &[u8]| {
        write!(sock, "{:x}\r\n", data.len()).unwrap();
        sock.write_all(data).unwrap();
        sock.write_all(b"\r\n").unwrap();
    };
    // Over 1 MiB, so the daemon spools it to disk: then it has surely read it.
    let mut first = b"i\n".to_vec();
    for i in 0..200_000 {
        first.extend_from_slice(format!("{i}\n").as_bytes());
    }
    let first_len = first.len() as u64;
    chunk(&mut sock, &first);
    let spooled = || -> u64 {
        std::fs::read_dir(root.join("incoming"))
            .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while spooled() < (1 << 20).min(first_len) {
        assert!(Instant::now() < deadline, "the first chunk never reached the daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
    revoke(&manager, &writer);
    chunk(&mut sock, b"3\n4\n");
    // The body stays open (no last chunk): the reply must come at that
    // chunk, not at the end of a body that never comes.
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("revoked") {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no reply while the body was open: {e}"),
        }
    }
    let reply = String::from_utf8_lossy(&reply).to_string();
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(reply.contains("revoked"), "{reply}");
    drop(sock);
    let r = s.server.http.get(url("/api/datasets/u")).header("X-API-Key", &manager).send().unwrap();
    assert_eq!(r.status(), 404);
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled() != 0 {
        assert!(Instant::now() < deadline, "the refused upload left its spool behind");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- Throttling and connection limits ----

#[test]
fn failed_authentication_is_throttled_per_client_and_per_key() {
    let s = shared();
    let (key, _) = s.account("throttled");
    let attacker = client_from("127.0.0.50");
    let mut statuses = Vec::new();
    for i in 0..15 {
        let r = attacker.get(url("/api/account")).header("X-API-Key", format!("dpk_wrong{i}")).send().unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 5], "{statuses:?}");
    // Refused before its credentials are looked at, even a valid key; with
    // Retry-After; a forged X-Forwarded-For from an untrusted peer changes
    // nothing.
    let r = attacker
        .get(url("/api/account"))
        .header("X-API-Key", &key)
        .header("X-Forwarded-For", "10.9.8.7")
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").unwrap().to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // The admin API is throttled by the same rule.
    let r = attacker.get(url("/api/admin/accounts")).header("X-API-Key", ADMIN_KEY).send().unwrap();
    assert_eq!(r.status(), 429);
    // Other addresses are not affected.
    let other = client_from("127.0.0.51");
    assert_eq!(other.get(url("/api/account")).header("X-API-Key", &key).send().unwrap().status(), 200);
    // Guessing one key's secret from many addresses locks that key id.
    let id = key_id(&key);
    for i in 0..10 {
        let c = client_from(&format!("127.0.1.{}", 10 + i));
        let wrong = format!("dpk_{id}_{}", "0".repeat(64));
        assert_eq!(c.get(url("/api/account")).header("X-API-Key", wrong).send().unwrap().status(), 401);
    }
    let fresh = client_from("127.0.1.99");
    let wrong = format!("dpk_{id}_{}", "1".repeat(64));
    assert_eq!(fresh.get(url("/api/account")).header("X-API-Key", wrong).send().unwrap().status(), 429);
    // Its owner, holding the right secret, is not locked out.
    assert_eq!(fresh.get(url("/api/account")).header("X-API-Key", &key).send().unwrap().status(), 200);
    // Failures are logged with the client's address.
    let log = std::fs::read_to_string(s.env.path().join("server-0.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("127.0.0.50") && l.contains("failed authentication")),
        "no failed authentication logged with its address"
    );
}

#[test]
fn slow_clients_on_one_address_do_not_starve_other_addresses() {
    let s = shared();
    let (key, _) = s.account("patient");
    let addr: SocketAddr = s.server.url.trim_start_matches("http://").parse().unwrap();
    // 1,000 connections from 127.0.0.60 that never finish their headers.
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.60:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        if sock.connect(&addr.into()).is_err() {
            continue;
        }
        let mut stream: TcpStream = sock.into();
        let _ = stream.write_all(b"GET /api/account HTTP/1.1\r\nHost: x\r\n");
        slow.push(stream);
    }
    // Clients on other addresses are all answered meanwhile.
    let mut answered = 0;
    for i in 0..50 {
        let c = client_from(&format!("127.0.2.{}", 1 + i % 10));
        let r = c.get(url("/api/account")).header("X-API-Key", &key).send().expect("a normal client was answered");
        assert_eq!(r.status(), 200);
        answered += 1;
    }
    assert_eq!(answered, 50);
    // Past the per-client cap (64) the daemon closed them at once, and the
    // rest are closed by the header read timeout (2 s).
    let mut still_open = 0;
    for stream in &mut slow {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        // EOF, a reset or a 408 reply: the daemon let go of it. A read
        // that times out is a connection the daemon still holds.
        match stream.read(&mut buf) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                still_open += 1
            }
            _ => {}
        }
    }
    assert_eq!(still_open, 0, "slow connections the daemon never closed");
    assert!(slow.len() > 900, "only {} slow connections were made", slow.len());
    alive();
}

/// A connection from `from` that sends half a request and waits.
fn half_open(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.connect(&to.into()).ok()?;
    let mut stream: TcpStream = sock.into();
    let _ = stream.write_all(b"GET /api/account HTTP/1.1\r\nHost: x\r\n");
    Some(stream)
}

/// Whether the daemon still holds `stream` open (a read times out rather
/// than ending or being reset).
fn held(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    matches!(stream.read(&mut [0u8; 64]), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

#[test]
fn connection_caps_hold_per_client_and_in_all() {
    // A header timeout long enough that only the caps close connections.
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config(
        "security:\n  header_read_timeout_ms: 60000\n  max_connections_per_client: 8\n  max_connections: 20\n",
    );
    let server = env.serve();
    let addr: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    // One address: 8 held, the rest closed at once.
    let mut one: Vec<TcpStream> = (0..30).filter_map(|_| half_open("127.0.0.71", addr)).collect();
    assert_eq!(one.len(), 30);
    let held_one = one.iter_mut().map(held).filter(|h| *h).count();
    assert_eq!(held_one, 8, "connections held from one address");
    // Many addresses: admitted until the total of 20 (the test's own
    // client may hold one or two), then none.
    let mut many: Vec<TcpStream> = (0..20).filter_map(|i| half_open(&format!("127.0.3.{}", 1 + i), addr)).collect();
    let admitted: Vec<bool> = many.iter_mut().map(held).collect();
    let n = admitted.iter().filter(|h| **h).count();
    assert!((10..=12).contains(&n), "{n} admitted from other addresses with 8 held of 20");
    assert!(
        admitted.iter().skip_while(|h| **h).all(|h| !h),
        "a connection was admitted after the cap refused one: {admitted:?}"
    );
    // Freed permits admit again.
    drop(one);
    drop(many);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok =
            client_from("127.0.3.99").get(format!("{}/healthz", server.url)).send().is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "closed connections never freed their places");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_short_admin_key_is_refused_at_start() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let out = env
        .command()
        .args(["api", "serve", "--port", "0"])
        .env("DUCKPOND_SERVER__ADMIN_API_KEY", "short-key")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duckpond admin-key") && err.contains("32"), "{err}");
    // What the named command makes is accepted.
    let made = env.ok(&["admin-key"]);
    assert_eq!(made.trim().len(), 64);
    let file = env.path().join("admin.key");
    std::fs::write(&file, made.trim()).unwrap();
    env.write_config(&format!("security:\n  admin_api_key_file: {}\n", file.display()));
    let server = env.serve();
    let r = server.http.get(server.url("/api/admin/accounts")).header("X-API-Key", made.trim()).send().unwrap();
    assert_eq!(r.status(), 200);
}

// ---- Secrets ----

#[test]
fn secrets_never_appear_in_replies_logs_or_metrics() {
    let s = shared();
    let (key, root) = s.account("secretive");
    let http = &s.server.http;
    let mut seen = String::new();
    let mut keep = |r: reqwest::blocking::Response| -> Value {
        let status = r.status();
        let headers = format!("{:?}", r.headers());
        let text = r.text().unwrap();
        seen.push_str(&headers);
        seen.push_str(&text);
        serde_json::from_str(&text).unwrap_or(json!({ "status": status.as_u16() }))
    };
    // A browser session (its cookie is delivered in a reply, never logged).
    let signed_in = http.post(url("/api/ui/session")).json(&json!({"api_key": key})).send().unwrap();
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let session_id = cookie.trim_start_matches("duckpond_session=").to_string();
    assert!(session_id.starts_with("dps_"));
    keep(http.get(url("/api/account")).header("Cookie", &cookie).send().unwrap());
    // A notebook whose session fails with marimo's output as its reason.
    let nb =
        keep(http.post(url("/api/notebooks")).header("X-API-Key", &key).json(&json!({"name": "x"})).send().unwrap());
    let id = nb["id"].as_str().unwrap().to_string();
    keep(http.post(url(&format!("/api/notebooks/{id}/start?wait=true"))).header("X-API-Key", &key).send().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let v = keep(http.get(url(&format!("/api/notebooks/{id}/session"))).header("X-API-Key", &key).send().unwrap());
        if v["state"] == "failed" {
            break v["reason"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the session never failed: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reason.contains("<redacted>"), "marimo's output is not in the reason: {reason}");
    // Wrong keys, the admin key, errors, the metrics.
    keep(http.get(url("/api/account")).header("X-API-Key", format!("{key}x")).send().unwrap());
    keep(http.get(url("/api/admin/accounts")).header("X-API-Key", ADMIN_KEY).send().unwrap());
    keep(query(&key, "SELECT * FROM read_csv('/etc/passwd')"));
    keep(http.get(url("/metrics")).send().unwrap());
    let log = std::fs::read_to_string(s.env.path().join("server-0.log")).unwrap();
    for (place, text) in [("replies", seen.as_str()), ("the server log", log.as_str())] {
        for secret in [ADMIN_KEY, key.as_str(), FAKE_MARIMO_TOKEN] {
            assert!(!text.contains(secret), "a secret in {place}: {secret}");
        }
        assert_eq!(
            text.matches("access_token=").count(),
            text.matches("access_token=<redacted>").count(),
            "a marimo token in {place}"
        );
    }
    assert!(!log.contains(&session_id), "a browser session id in the log");
    let metrics = http.get(url("/metrics")).send().unwrap().text().unwrap();
    for secret in [ADMIN_KEY, key.as_str(), session_id.as_str(), FAKE_MARIMO_TOKEN] {
        assert!(!metrics.contains(secret), "a secret in /metrics");
    }
    // Server paths stay out of replies (the reason included).
    assert!(!seen.contains(&root.display().to_string()), "the account's path in a reply");
    assert!(!seen.contains(&s.env.path().display().to_string()), "the home path in a reply");
}

// ---- Disk full ----

/// A tmpfs of `mb` MiB mounted for the test (needs root, as the suite has).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(mb: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap().keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs (the suite runs as root)");
        Tmpfs(dir)
    }

    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        // Writes until the file system refuses.
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }

    /// Takes what space was freed since (the compactor truncating its
    /// log, say; at most 2 MiB, less than a released 4 MiB reserve), so the
    /// disk is full again now.
    fn top_up(filler: &Path) {
        let mut f = std::fs::OpenOptions::new().append(true).open(filler).unwrap();
        let block = [0u8; 4096];
        for _ in 0..512 {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn home_on(dir: &Path) -> TestEnv {
    let env = TestEnv::migrated_in(Backend::Sqlite, dir);
    // Small log segments: a write past the current one needs new space.
    env.write_config("wal:\n  segment_size_bytes: 65536\n");
    env
}

#[test]
fn a_full_disk_answers_507_everywhere_and_recovers() {
    let fs = Tmpfs::mount(96);
    let env = home_on(&fs.0);
    let (_, key) = env.create_account("full");
    // The server's log is on the full file system too.
    let server = env.serve();
    let http = &server.http;
    let post_csv = |body: String| {
        http.post(server.url("/api/datasets/t/upload?format=csv")).header("X-API-Key", &key).body(body).send().unwrap()
    };
    assert_eq!(post_csv("i\n1\n".into()).status(), 202);
    // The account's lake is open for reads before the disk fills (a lake
    // first opened on a full disk answers 503: SQLite cannot create its
    // shared-memory file).
    let r = http
        .post(server.url("/api/query"))
        .header("X-API-Key", &key)
        .json(&json!({"sql": "SELECT 1 AS x"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Acknowledged writes whose flush meets the full disk: a SQLite
    // catalog whose write failed must recover before anyone reads it,
    // which needs space (the disk reserve gives it).
    for i in 10..20 {
        assert_eq!(post_csv(format!("i\n{i}\n")).status(), 202);
    }
    let reserve = env.path().join("data").join(".headroom");
    assert!(reserve.is_file(), "no disk reserve was made");
    let filler = fs.fill();
    // Full again before each write below, unless the daemon already let
    // its reserve go (then its own gate answers, and the reserve's space
    // must stay free for the lake).
    let full_again = || {
        if reserve.exists() {
            Tmpfs::top_up(&filler);
        }
    };
    let home = env.path().display().to_string();
    let expect_507 = |what: &str, r: reqwest::blocking::Response| {
        let msg = error_of(r, 507, "insufficient_storage");
        assert!(!msg.contains(&home) && !msg.contains("/tmp"), "{what}: a server path in {msg:?}");
    };
    full_again();
    expect_507("upload", post_csv("i\n2\n".into()));
    let many: Vec<i64> = (0..100_000).collect();
    let b = RecordBatch::try_from_iter(vec![("i", Arc::new(Int64Array::from(many)) as ArrayRef)]).unwrap();
    full_again();
    let r = http
        .post(server.url("/api/stream/arrow/t"))
        .header("X-API-Key", &key)
        .header("Content-Type", "application/vnd.apache.arrow.stream")
        .body(arrow_stream(&[b]))
        .send()
        .unwrap();
    expect_507("arrow stream", r);
    full_again();
    let r =
        http.post(server.url("/api/notebooks")).header("X-API-Key", &key).json(&json!({"name": "n"})).send().unwrap();
    expect_507("notebook create", r);
    full_again();
    let r = http.post(server.url("/api/account/keys")).header("X-API-Key", &key).json(&json!({})).send().unwrap();
    expect_507("key create", r);
    // Health and reads keep answering.
    for _ in 0..5 {
        assert_eq!(http.get(server.url("/healthz")).send().unwrap().status(), 200);
    }
    // The lake itself, flushed on the full disk (once the reserve is let
    // go: within the watch interval).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .post(server.url("/api/query"))
            .header("X-API-Key", &key)
            .json(&json!({"sql": "SELECT count(*) AS n FROM t"}))
            .send()
            .unwrap();
        let status = r.status();
        let v: Value = r.json().unwrap();
        // Reads answer; how much of the backlog is flushed while the disk
        // is full is the compactor's business (all of it once space is
        // back, checked below).
        if status == 200 && v["rows"][0][0].as_i64().is_some_and(|n| n >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "reads of the lake stopped on the full disk: {status} {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The reserve was let go, and what refuses writes now is the daemon
    // (the disk has room again: the reserve's).
    let deadline = Instant::now() + Duration::from_secs(30);
    while reserve.exists() {
        assert!(Instant::now() < deadline, "the reserve was not released on the full disk");
        full_again();
        std::thread::sleep(Duration::from_millis(100));
    }
    let msg = error_of(post_csv("i\n3\n".into()), 507, "insufficient_storage");
    assert!(msg.contains("writes are refused until space is freed"), "{msg}");
    // Space returns: everything works again (within the watch interval).
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while post_csv("i\n4\n".into()).status() != 202 {
        assert!(Instant::now() < deadline, "writes never came back after space returned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r =
        http.post(server.url("/api/notebooks")).header("X-API-Key", &key).json(&json!({"name": "n"})).send().unwrap();
    assert_eq!(r.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .post(server.url("/api/query"))
            .header("X-API-Key", &key)
            .json(&json!({"sql": "SELECT list(i ORDER BY i) AS v FROM t"}))
            .send()
            .unwrap();
        let status = r.status();
        let v: Value = r.json().unwrap();
        if status == 200 && v["rows"][0][0] == json!([1, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]) {
            break;
        }
        assert!(Instant::now() < deadline, "the lake never caught up after space returned: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

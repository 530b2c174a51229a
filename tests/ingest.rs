//! Ingestion end to end against `duckpond api serve`: uploads in every
//! format and mode (files written by pyarrow and DuckDB), Arrow IPC streams
//! written by pyarrow, dataset listing and deletion, every bad input, and a
//! kill -9 crash test of the durability contract.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{error_of, json_of, lake_query, python, Backend, Server, TestEnv};
use reqwest::blocking::Body;
use serde_json::json;

const CSV: &str = "id,name,score\n1,ann,1.5\n2,bob,2.5\n3,cy,3.5\n";

struct Acct {
    key: String,
    root: PathBuf,
}

fn account(env: &TestEnv, name: &str) -> Acct {
    let (a, key) = env.create_account(name);
    let root = env.path().join("data").join("accounts").join(a["id"].as_str().unwrap());
    Acct { key, root }
}

fn upload(
    s: &Server,
    a: &Acct,
    table: &str,
    query: &str,
    ct: &str,
    body: impl Into<Body>,
) -> reqwest::blocking::Response {
    s.http
        .post(s.url(&format!("/api/datasets/{table}/upload{query}")))
        .header("X-API-Key", &a.key)
        .header("Content-Type", ct)
        .body(body)
        .send()
        .unwrap()
}

/// A browser's upload: multipart/form-data with one file field, waiting for
/// the commit.
fn upload_multipart(s: &Server, a: &Acct, table: &str, file_name: &str, bytes: Vec<u8>) -> reqwest::blocking::Response {
    let form = reqwest::blocking::multipart::Form::new()
        .part("file", reqwest::blocking::multipart::Part::bytes(bytes).file_name(file_name.to_string()));
    s.http
        .post(s.url(&format!("/api/datasets/{table}/upload?wait=committed")))
        .header("X-API-Key", &a.key)
        .multipart(form)
        .send()
        .unwrap()
}

fn stream(s: &Server, a: &Acct, table: &str, query: &str, body: impl Into<Body>) -> reqwest::blocking::Response {
    s.http
        .post(s.url(&format!("/api/stream/arrow/{table}{query}")))
        .header("X-API-Key", &a.key)
        .header("Content-Type", "application/vnd.apache.arrow.stream")
        .body(body)
        .send()
        .unwrap()
}

fn datasets(s: &Server, a: &Acct) -> Vec<serde_json::Value> {
    json_of(s.get("/api/datasets", Some(&a.key)), 200).as_array().unwrap().clone()
}

fn rows_of(s: &Server, a: &Acct, table: &str) -> i64 {
    let d = json_of(s.get(&format!("/api/datasets/{table}"), Some(&a.key)), 200);
    d["rows"].as_i64().unwrap()
}

/// POSTs a CSV body over a plain socket (chunked when `len` is None),
/// ignoring write errors, and returns the status and body of the answer.
fn raw_post(s: &Server, a: &Acct, path: &str, len: Option<usize>, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let framing = match len {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {}\r\nContent-Type: text/csv\r\n{framing}\r\n\r\n",
        a.key
    );
    let _ = sock.write_all(head.as_bytes());
    for chunk in body.chunks(64 * 1024) {
        let ok = match len {
            Some(_) => sock.write_all(chunk).is_ok(),
            None => {
                sock.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_ok()
                    && sock.write_all(chunk).is_ok()
                    && sock.write_all(b"\r\n").is_ok()
            }
        };
        if !ok {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Files in a directory (none if it does not exist).
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// pyarrow writes an Arrow IPC stream of `batches` batches of `rows` rows
/// each: id (int64, consecutive from `start`), name (string), v (double).
fn arrow_stream_file(dir: &Path, name: &str, start: i64, batches: usize, rows: usize) -> PathBuf {
    let path = dir.join(name);
    python(&format!(
        r#"
import pyarrow as pa
schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("v", pa.float64())])
with pa.OSFile("{path}", "wb") as f, pa.ipc.new_stream(f, schema) as w:
    for b in range({batches}):
        lo = {start} + b * {rows}
        ids = list(range(lo, lo + {rows}))
        w.write_batch(pa.record_batch([pa.array(ids, pa.int64()), pa.array([f"n{{i}}" for i in ids]), pa.array([i / 2 for i in ids], pa.float64())], schema=schema))
"#,
        path = path.display()
    ));
    path
}

#[test]
fn upload_every_format_and_mode() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();

    // CSV, waiting for the commit: the reply carries the snapshot id.
    let r = json_of(upload(&s, &a, "people", "?wait=committed", "text/csv", CSV), 200);
    assert_eq!((r["rows"].as_u64(), r["committed"].as_bool()), (Some(3), Some(true)), "{r}");
    assert!(r["snapshot_id"].as_i64().unwrap() > 0);
    assert_eq!(rows_of(&s, &a, "people"), 3);

    // JSON array appended, with a new column (schema evolution).
    let json = r#"[{"id": 4, "name": "dee", "score": 4.5, "team": "x"}]"#;
    json_of(upload(&s, &a, "people", "?wait=committed", "application/json", json), 200);
    // NDJSON through ?format= (overrides the Content-Type).
    let nd = "{\"id\": 5, \"name\": \"eve\"}\n{\"id\": 6, \"name\": \"fay\"}\n";
    json_of(upload(&s, &a, "people", "?format=ndjson&wait=committed", "application/octet-stream", nd), 200);
    // Parquet written by pyarrow and by DuckDB.
    let pa_file = tmp.path().join("pa.parquet");
    let dd_file = tmp.path().join("dd.parquet");
    python(&format!(
        r#"
import pyarrow as pa, pyarrow.parquet as pq, duckdb
pq.write_table(pa.table({{"id": pa.array([7, 8], pa.int64()), "name": ["gus", "hal"]}}), "{}")
duckdb.sql("COPY (SELECT 9::BIGINT AS id, 'ida' AS name) TO '{}' (FORMAT parquet)")
"#,
        pa_file.display(),
        dd_file.display()
    ));
    for f in [&pa_file, &dd_file] {
        let body = std::fs::read(f).unwrap();
        json_of(upload(&s, &a, "people", "?wait=committed", "application/vnd.apache.parquet", body), 200);
    }
    assert_eq!(rows_of(&s, &a, "people"), 9);
    let d = json_of(s.get("/api/datasets/people", Some(&a.key)), 200);
    let cols: Vec<_> = d["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(cols, ["id", "name", "score", "team"]);
    assert!(d["snapshots"].as_array().unwrap().len() >= 5, "{d}");
    // The lake read by an independent client agrees, with no duplicates.
    let got = lake_query(&a.root, "SELECT count(*), count(DISTINCT id), sum(id) FROM people");
    assert_eq!(got[0], serde_json::json!([9, 9, 45]));

    // Multipart (as a browser sends it), format from the file name.
    let r = upload_multipart(&s, &a, "people", "more.csv", CSV.as_bytes().to_vec());
    assert_eq!(json_of(r, 200)["format"], "csv");
    assert_eq!(rows_of(&s, &a, "people"), 12);

    // replace: the new schema wins and the old rows are gone.
    let r = upload(&s, &a, "people", "?mode=replace&wait=committed", "text/csv", "k\nz\n");
    json_of(r, 200);
    let d = json_of(s.get("/api/datasets/people", Some(&a.key)), 200);
    assert_eq!(d["rows"], 1);
    assert_eq!(d["columns"].as_array().unwrap().len(), 1);
    // create: 409 on an existing table, works on a new one.
    let msg = error_of(upload(&s, &a, "people", "?mode=create", "text/csv", CSV), 409, "conflict");
    assert!(msg.contains("already exists"), "{msg}");
    json_of(upload(&s, &a, "fresh", "?mode=create&wait=committed", "text/csv", CSV), 200);
    assert_eq!(rows_of(&s, &a, "fresh"), 3);
    // Preview.
    let p = json_of(s.get("/api/datasets/fresh/preview?limit=2", Some(&a.key)), 200);
    assert_eq!(p["rows"].as_array().unwrap().len(), 2);
    assert_eq!(p["rows"][0]["name"], "ann");
    // Staged files are gone once committed.
    assert!(files_in(&a.root.join("staged")).is_empty(), "{:?}", files_in(&a.root.join("staged")));
    assert!(files_in(&a.root.join("incoming")).is_empty());
}

/// Awkward CSV headers (a duplicate, a quote, a space, an empty name), a
/// non-comma dialect, dates, timestamps and decimals come out of the lake
/// the same as DuckDB's own reading of the file, and the staged file is
/// gone after the commit.
/// Every row of `table`, as an independent DuckDB reads it from the lake,
/// equals a row of stock DuckDB's `read_csv` of the uploaded file, and the
/// other way round (a multiset comparison: EXCEPT ALL both ways).
fn same_rows_as_read_csv(a: &Acct, table: &str, csv: &Path, rows: i64) {
    let read = format!("read_csv('{}')", csv.display());
    let diff = lake_query(
        &a.root,
        &format!(
            "SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM (SELECT * FROM {table} EXCEPT ALL SELECT * FROM {read})), \
             (SELECT count(*) FROM (SELECT * FROM {read} EXCEPT ALL SELECT * FROM {table}))"
        ),
    );
    assert_eq!(diff[0], json!([rows, 0, 0]), "{table}: (rows, only in the lake, only in read_csv)");
}

#[test]
fn csv_uploads_land_as_read() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    let csv = "id;id;it's;x y;;day;at;amount\n\
               1;10;o'hara;a b;;2026-11-24;2026-11-24 10:00:00;1.25\n\
               2;20;;c;z;2026-11-25;2026-11-24 10:00:01.5;-3.5\n";
    let r = json_of(upload(&s, &a, "odd", "?wait=committed", "text/csv", csv), 200);
    assert_eq!((r["rows"].as_u64(), r["committed"].as_bool()), (Some(2), Some(true)), "{r}");
    assert!(r["parquet_bytes"].as_u64().unwrap() > 0, "{r}");
    let q = |sql: &str| -> serde_json::Value {
        let r = s.http.post(s.url("/api/query")).header("X-API-Key", &a.key).json(&json!({"sql": sql})).send().unwrap();
        json_of(r, 200)
    };
    let v = q("SELECT * FROM odd ORDER BY 1");
    let cols: Vec<(String, String)> = v["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["type"].as_str().unwrap().to_string()))
        .collect();
    // What DuckDB itself makes of the same bytes.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("odd.csv");
    std::fs::write(&file, csv).unwrap();
    let expected = python(&format!(
        "import duckdb, json\n\
         r = duckdb.sql(\"SELECT * FROM read_csv('{}') ORDER BY 1\")\n\
         print(json.dumps([[c, str(t)] for c, t in zip(r.columns, r.types)]))",
        file.display()
    ));
    let expected: Vec<(String, String)> = serde_json::from_str(expected.trim()).unwrap();
    assert_eq!(cols, expected);
    assert_eq!(v["rows"][0][2], json!("o'hara"));
    assert_eq!(v["rows"][1][7].as_f64(), Some(-3.5));
    same_rows_as_read_csv(&a, "odd", &file, 2);
    let staged: Vec<_> = std::fs::read_dir(a.root.join("staged")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(staged.is_empty(), "staged files left after the commit: {staged:?}");
}

/// A CSV larger than the head its dialect is sniffed from (4 MiB, cut at a
/// line end while the rest is still arriving): `;`, CRLF, quoted fields
/// holding the delimiter, doubled quotes and line ends, sent as a plain
/// body and as multipart. The lake holds what DuckDB's own `read_csv` makes
/// of the whole file: the same columns, types and values.
#[test]
fn large_csv_uploads_are_read_in_the_dialect_of_their_head() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    let mut csv = String::from("id;label;at;amount\r\n");
    let mut i = 0;
    while csv.len() < 7 * 1024 * 1024 {
        let label = if i % 1000 == 0 { format!("\"two\r\nlines; {i}\"") } else { format!("\"item; \"\"{i}\"\"\"") };
        csv.push_str(&format!("{i};{label};2026-11-24 10:{:02}:00;{i}.25\r\n", i % 60));
        i += 1;
    }
    let rows = i;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.csv");
    std::fs::write(&file, &csv).unwrap();
    let expected = python(&format!(
        "import duckdb, json\n\
         r = duckdb.sql(\"SELECT * FROM read_csv('{}')\")\n\
         s = duckdb.sql(\"SELECT count(*), sum(amount), max(label), count(*) FILTER (label LIKE '%' || chr(10) || '%') FROM read_csv('{}')\").fetchone()\n\
         print(json.dumps([[[c, str(t)] for c, t in zip(r.columns, r.types)], list(s)]))",
        file.display(),
        file.display()
    ));
    let expected: serde_json::Value = serde_json::from_str(expected.trim()).unwrap();
    assert_eq!(expected[1][0], json!(rows), "DuckDB's own reading: {expected}");

    let r = json_of(upload(&s, &a, "big", "?wait=committed", "text/csv", csv.clone()), 200);
    assert_eq!(r["rows"].as_u64(), Some(rows), "{r}");
    let r = upload_multipart(&s, &a, "big_mp", "big.csv", csv.into_bytes());
    assert_eq!(json_of(r, 200)["rows"].as_u64(), Some(rows));
    for table in ["big", "big_mp"] {
        let q = |sql: &str| -> serde_json::Value {
            let r =
                s.http.post(s.url("/api/query")).header("X-API-Key", &a.key).json(&json!({"sql": sql})).send().unwrap();
            json_of(r, 200)
        };
        let v = q(&format!("SELECT * FROM {table} LIMIT 1"));
        let cols: Vec<serde_json::Value> =
            v["columns"].as_array().unwrap().iter().map(|c| json!([c["name"], c["type"]])).collect();
        assert_eq!(json!(cols), expected[0], "{table}");
        let v = q(&format!(
            "SELECT count(*), sum(amount), max(label), count(*) FILTER (label LIKE '%' || chr(10) || '%') FROM {table}"
        ));
        assert_eq!(v["rows"][0], expected[1], "{table}");
        same_rows_as_read_csv(&a, table, &file, rows as i64);
    }
    assert!(
        files_in(&a.root.join("incoming")).iter().all(|f| f.starts_with('.')),
        "{:?}",
        files_in(&a.root.join("incoming"))
    );
}

#[test]
fn upload_without_wait_is_accepted_then_visible() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    let r = json_of(upload(&s, &a, "t", "", "text/csv", CSV), 202);
    assert_eq!(r["committed"], false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while datasets(&s, &a).is_empty() {
        assert!(Instant::now() < deadline, "never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(datasets(&s, &a)[0]["rows"], 3);
}

/// Every rejected upload leaves no table, no staged file and no log record.
#[test]
fn bad_uploads_are_refused_and_leave_nothing() {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config("limits:\n  max_file_size_mb: 1\n");
    let a = account(&env, "acme");
    let s = env.serve();
    error_of(upload(&s, &a, "t", "?format=xlsx", "text/csv", CSV), 415, "unsupported_media_type");
    error_of(upload(&s, &a, "t", "", "image/png", CSV), 415, "unsupported_media_type");
    let long = "a".repeat(129);
    for bad in ["a%2Fb", "a..b", "a%20b", "a.b", "__duckpond_x", "1abc", long.as_str()] {
        error_of(upload(&s, &a, bad, "", "text/csv", CSV), 400, "bad_request");
    }
    error_of(upload(&s, &a, "t", "?mode=upsert", "text/csv", CSV), 400, "bad_request");
    // Malformed CSV: DuckDB's message with the line, and no server path.
    // Small malformed files, where DuckDB's sniffer would skip or merge
    // lines, and a bad row far past the sniffer's sample.
    for bad in ["a,b\n1,2\n3,4,5,6\n", "a,b\n1,2\n3,4\n5,6,7\n8,9\n", "a;b\n1;2\n3\n"] {
        error_of(upload(&s, &a, "t", "", "text/csv", bad), 400, "bad_request");
    }
    let long_bad: String = std::iter::once("a,b\n".to_string())
        .chain((0..30_000).map(|i| format!("{i},{i}\n")))
        .chain(std::iter::once("1,2,3,4\n".to_string()))
        .collect();
    let msg = error_of(upload(&s, &a, "t", "", "text/csv", long_bad), 400, "bad_request");
    assert!(msg.contains("Line: 30002"), "{msg}");
    assert!(!msg.contains(env.path().to_str().unwrap()), "leaks a path: {msg}");
    let msg = error_of(upload(&s, &a, "t", "", "application/json", "[{\"a\": 1}, {\"a\": "), 400, "bad_request");
    assert!(msg.contains("json") || msg.contains("JSON"), "{msg}");
    error_of(upload(&s, &a, "t", "", "application/vnd.apache.parquet", "not parquet"), 400, "bad_request");
    error_of(upload(&s, &a, "t", "", "text/csv", ""), 400, "bad_request");
    // Over max_file_size_mb (1 MiB): declared, and streamed without a length.
    // The server answers without reading the rest, so an HTTP client may
    // fail writing its body before it reads the answer: use a raw socket.
    let big = "x\n".repeat(600_000);
    let (status, body) = raw_post(&s, &a, "/api/datasets/t/upload", Some(big.len()), big.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
    let (status, body) = raw_post(&s, &a, "/api/datasets/t/upload", None, big.as_bytes());
    assert_eq!(status, 413, "{body}");
    // Storage quota: 507 with usage and quota in the message, for the
    // upload that would pass it, not because the account is already over
    // (the quota leaves 200 KB above current usage; this upload is 300+ KB).
    let used = json_of(s.get("/api/account", Some(&a.key)), 200)["usage"]["storage_bytes"].as_u64().unwrap();
    let quota = used + 200_000;
    let r = s
        .admin(reqwest::Method::PATCH, "/api/admin/accounts/acme")
        .json(&serde_json::json!({"max_storage_bytes": quota}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let over: String =
        std::iter::once("id,pad\n".to_string()).chain((0..10_000).map(|i| format!("{i},{:040}\n", i))).collect();
    assert!(over.len() > 300_000);
    let msg = error_of(upload(&s, &a, "t", "", "text/csv", over), 507, "insufficient_storage");
    assert!(msg.contains("quota") && msg.contains(&quota.to_string()) && msg.contains("this write needs"), "{msg}");
    let r = s
        .admin(reqwest::Method::PATCH, "/api/admin/accounts/acme")
        .json(&serde_json::json!({"max_storage_bytes": 1000}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());

    assert!(datasets(&s, &a).is_empty());
    assert!(files_in(&a.root.join("staged")).is_empty(), "{:?}", files_in(&a.root.join("staged")));
    assert!(
        files_in(&a.root.join("incoming")).iter().all(|f| f.starts_with('.')),
        "{:?}",
        files_in(&a.root.join("incoming"))
    );
    let me = json_of(s.get("/api/account", Some(&a.key)), 200);
    assert_eq!(me["usage"]["durable_lsn"], 0, "no log record: {me}");
    assert_eq!(me["usage"]["committed_lsn"], 0, "{me}");
}

/// An incompatible type change is refused before the log, naming the column.
#[test]
fn type_conflicts_are_409_naming_the_column() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    json_of(upload(&s, &a, "t", "?wait=committed", "text/csv", "id,name,v\n1,a,0.5\n"), 200);
    let msg = error_of(upload(&s, &a, "t", "", "text/csv", "id\nnot-a-number\n"), 409, "conflict");
    assert!(msg.contains("\"id\"") && msg.contains("Int64"), "{msg}");
    // A wider type converts: int32 into BIGINT is accepted.
    json_of(upload(&s, &a, "t", "?wait=committed", "application/json", r#"[{"id": 2}]"#), 200);
    // Arrow stream with id as string: 409 before anything is kept.
    let f = tmp.path().join("s.arrows");
    python(&format!(
        r#"
import pyarrow as pa
t = pa.table({{"id": pa.array(["x"]), "v": pa.array([1.0])}})
with pa.OSFile("{}", "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
    w.write_table(t)
"#,
        f.display()
    ));
    let r = stream(&s, &a, "t", "", std::fs::read(&f).unwrap());
    let v = json_of(r, 409);
    assert!(v["error"]["message"].as_str().unwrap().contains("\"id\""), "{v}");
    assert_eq!(v["error"]["details"]["batches_kept"], 0);
    assert_eq!(rows_of(&s, &a, "t"), 2);
}

#[test]
fn arrow_streams_from_pyarrow() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    let f = arrow_stream_file(tmp.path(), "a.arrows", 0, 20, 5_000);
    // Chunked transfer (no Content-Length), waiting for the commit.
    let body = Body::new(std::fs::File::open(&f).unwrap());
    let r = json_of(stream(&s, &a, "events", "?wait=committed", body), 200);
    assert_eq!((r["batches_kept"].as_u64(), r["rows_kept"].as_u64()), (Some(20), Some(100_000)), "{r}");
    assert!(r["last_lsn"].as_u64().unwrap() >= 1 && r["snapshot_id"].as_i64().is_some(), "{r}");
    let got = lake_query(&a.root, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events");
    assert_eq!(got[0], serde_json::json!([100_000, 100_000, 0, 99_999]));

    // Wrong content type; garbage; a schema with no batches creates the table.
    let r = s
        .http
        .post(s.url("/api/stream/arrow/events"))
        .header("X-API-Key", &a.key)
        .header("Content-Type", "application/octet-stream")
        .body(std::fs::read(&f).unwrap())
        .send()
        .unwrap();
    error_of(r, 415, "unsupported_media_type");
    let v = json_of(stream(&s, &a, "events", "", vec![0xffu8, 0xff, 0xff, 0xff, 0x10, 0, 0, 0, 1, 2, 3]), 400);
    assert_eq!(v["error"]["details"]["batches_kept"], 0, "{v}");
    let empty = arrow_stream_file(tmp.path(), "e.arrows", 0, 0, 0);
    let r = json_of(stream(&s, &a, "empty_one", "?wait=committed", std::fs::read(&empty).unwrap()), 200);
    assert_eq!((r["batches_kept"].as_u64(), r["committed"].as_bool()), (Some(0), Some(true)), "{r}");
    let d = json_of(s.get("/api/datasets/empty_one", Some(&a.key)), 200);
    assert_eq!((d["rows"].as_i64(), d["columns"].as_array().unwrap().len()), (Some(0), 3), "{d}");
}

/// A stream cut inside batch k keeps exactly batches 0..k; re-sending from
/// batch k completes the data without duplicates.
#[test]
fn truncated_stream_keeps_whole_batches_and_resumes() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    let f = arrow_stream_file(tmp.path(), "a.arrows", 0, 10, 1_000);
    let bytes = std::fs::read(&f).unwrap();
    // Each batch has the same size: find the cut by re-encoding 6 batches.
    let six = arrow_stream_file(tmp.path(), "six.arrows", 0, 6, 1_000);
    let six_len = std::fs::read(&six).unwrap().len() - 8; // without the end-of-stream marker
    let cut = six_len + 100; // inside batch 6
    let v = json_of(stream(&s, &a, "events", "", bytes[..cut].to_vec()), 400);
    let d = &v["error"]["details"];
    assert_eq!((d["batches_kept"].as_u64(), d["rows_kept"].as_u64()), (Some(6), Some(6_000)), "{v}");
    // Resume from batch 6.
    let rest = arrow_stream_file(tmp.path(), "rest.arrows", 6_000, 4, 1_000);
    json_of(stream(&s, &a, "events", "?wait=committed", std::fs::read(&rest).unwrap()), 200);
    let got = lake_query(&a.root, "SELECT count(*), count(DISTINCT id), max(id) FROM events");
    assert_eq!(got[0], serde_json::json!([10_000, 10_000, 9_999]));
}

#[test]
fn delete_dataset_goes_through_the_log() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let s = env.serve();
    json_of(upload(&s, &a, "t", "?wait=committed", "text/csv", CSV), 200);
    let r = s.http.delete(s.url("/api/datasets/t?wait=committed")).header("X-API-Key", &a.key).send().unwrap();
    assert!(json_of(r, 200)["snapshot_id"].as_i64().is_some());
    assert!(datasets(&s, &a).is_empty());
    error_of(s.get("/api/datasets/t", Some(&a.key)), 404, "not_found");
    error_of(s.get("/api/datasets/t/preview", Some(&a.key)), 404, "not_found");
    let r = s.http.delete(s.url("/api/datasets/t")).header("X-API-Key", &a.key).send().unwrap();
    error_of(r, 404, "not_found");
    error_of(s.get("/api/datasets/t/preview?limit=100000", Some(&a.key)), 400, "bad_request");
    // Ingest needs a key; another account's key sees nothing of this one.
    let r = s.http.post(s.url("/api/datasets/t/upload")).header("Content-Type", "text/csv").body(CSV).send().unwrap();
    error_of(r, 401, "unauthorized");
    let b = account(&env, "globex");
    json_of(upload(&s, &a, "mine", "?wait=committed", "text/csv", CSV), 200);
    assert!(datasets(&s, &b).is_empty());
    error_of(s.get("/api/datasets/mine", Some(&b.key)), 404, "not_found");
}

/// kill -9 while uploads and streams are in flight and acknowledged, the
/// compactor flushes every 50 ms and maintenance (merge, expire, cleanup) runs every
/// 300 ms, five times over: after each restart every acknowledged row is in
/// the lake exactly once and with its content intact.
#[test]
fn kill_dash_nine_loses_and_duplicates_nothing() {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config(
        "compactor:\n  flush_interval_ms: 50\n  maintenance_interval_ms: 300\n  snapshot_retention_hours: 0\n  \
         file_cleanup_grace_ms: 0\n",
    );
    let a = account(&env, "acme");
    let tmp = tempfile::tempdir().unwrap();
    let mut acked: Vec<(i64, i64)> = Vec::new(); // id ranges [lo, hi)
    let next_id = std::sync::atomic::AtomicI64::new(0);
    // Requests the kills cut off mid-way (the client saw no answer).
    let cut = std::sync::atomic::AtomicUsize::new(0);
    // pyarrow writes the streams ahead, in one process: a body written
    // while the kill lands would only test Python.
    let pyarrow_streams = |path: &Path, lo: i64, n: i64| {
        let pre = tmp.path().join(format!("pre-{lo}.arrows"));
        if pre.exists() {
            std::fs::rename(&pre, path).unwrap();
        } else {
            arrow_stream_file(tmp.path(), path.file_name().unwrap().to_str().unwrap(), lo, 4, (n / 4) as usize);
        }
    };
    let starts: Vec<i64> = (0..300).map(|k| k * 2_000).collect();
    python(&format!(
        r#"
import pyarrow as pa
schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("v", pa.float64())])
for lo in {starts:?}:
    with pa.OSFile(f"{dir}/pre-{{lo}}.arrows", "wb") as f, pa.ipc.new_stream(f, schema) as w:
        for b in range(4):
            ids = list(range(lo + b * 500, lo + (b + 1) * 500))
            w.write_batch(pa.record_batch([pa.array(ids, pa.int64()), pa.array([f"n{{i}}" for i in ids]), pa.array([i / 2 for i in ids], pa.float64())], schema=schema))
"#,
        dir = tmp.path().display()
    ));
    for round in 0..5u64 {
        let s = env.serve();
        let stop = std::sync::atomic::AtomicBool::new(false);
        // Two writers (streams from pyarrow files, CSV uploads) keep requests
        // in flight; the kill lands while they are (a stream part-way, an
        // upload being converted or staged).
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..2)
                .map(|kind| {
                    let (s, a, tmp, next_id, stop, cut) = (&s, &a, tmp.path(), &next_id, &stop, &cut);
                    let pyarrow_streams = &pyarrow_streams;
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        let mut i = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let n = 2_000i64;
                            let lo = next_id.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                            let res = if kind == 0 {
                                let f = tmp.join(format!("r{round}-{i}.arrows"));
                                pyarrow_streams(&f, lo, n);
                                s.http
                                    .post(s.url("/api/stream/arrow/events"))
                                    .header("X-API-Key", &a.key)
                                    .header("Content-Type", "application/vnd.apache.arrow.stream")
                                    .body(std::fs::read(&f).unwrap())
                                    .send()
                            } else {
                                let csv: String = std::iter::once("id,name,v\n".to_string())
                                    .chain((lo..lo + n).map(|id| format!("{id},n{id},{}\n", id as f64 / 2.0)))
                                    .collect();
                                s.http
                                    .post(s.url("/api/datasets/events/upload"))
                                    .header("X-API-Key", &a.key)
                                    .header("Content-Type", "text/csv")
                                    .body(csv)
                                    .send()
                            };
                            // Not acknowledged (the kill cut it off): may land or not.
                            match res {
                                Ok(r) if r.status().is_success() => mine.push((lo, lo + n)),
                                Ok(_) => {}
                                Err(_) => {
                                    cut.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            i += 1;
                        }
                        mine
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(1_000 + 400 * round));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = Command::new("kill").args(["-9", &s.pid().to_string()]).status();
            for w in writers {
                acked.extend(w.join().unwrap());
            }
        });
        drop(s);
    }
    assert!(cut.load(std::sync::atomic::Ordering::Relaxed) > 0, "no kill landed while a request was in flight");
    // Restart: the log is replayed into the lake.
    let s = env.serve();
    let total: i64 = acked.iter().map(|(lo, hi)| hi - lo).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let me = json_of(s.get("/api/account", Some(&a.key)), 200);
        if me["usage"]["committed_lsn"] == me["usage"]["durable_lsn"] {
            break;
        }
        assert!(Instant::now() < deadline, "log never drained: {me}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(s);
    // Uploads killed mid-conversion, or staged and never logged, leave
    // nothing once the log is applied.
    for dir in ["incoming", "staged", "scratch"] {
        assert!(files_in(&a.root.join(dir)).is_empty(), "{dir}/ keeps {:?}", files_in(&a.root.join(dir)));
    }
    let dup = lake_query(&a.root, "SELECT count(*) FROM (SELECT id FROM events GROUP BY id HAVING count(*) > 1)");
    assert_eq!(dup[0][0], 0, "duplicated rows");
    let ranges: Vec<String> = acked.iter().map(|(lo, hi)| format!("(id >= {lo} AND id < {hi})")).collect();
    let present = lake_query(&a.root, &format!("SELECT count(*) FROM events WHERE {}", ranges.join(" OR ")));
    assert_eq!(present[0][0].as_i64().unwrap(), total, "acknowledged rows missing");
    // Content: every row is what was written for its id.
    let bad = lake_query(&a.root, "SELECT count(*) FROM events WHERE name <> 'n' || id OR v <> id / 2");
    assert_eq!(bad[0][0], 0, "rows with damaged content");
    // Maintenance did run in between (it expired the catalog's first
    // snapshots), so some kills can have hit it.
    let first = lake_query(&a.root, "SELECT min(snapshot_id) FROM snapshots()");
    assert!(first[0][0].as_i64().unwrap() > 3, "maintenance never expired anything: {first:?}");
    assert!(acked.len() >= 6, "too few writes to mean anything: {}", acked.len());
}

/// The data commands of the CLI against a running server, with the key the
/// CLI issues for itself; and a clear error when no server is reachable.
#[test]
fn cli_data_commands() {
    let env = TestEnv::migrated(Backend::Sqlite);
    account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("my-data.csv");
    std::fs::write(&csv, CSV).unwrap();
    let server = ["--account", "acme", "--server", s.url.as_str()];
    let out = env.ok(&[&["dataset", "upload", csv.to_str().unwrap()][..], &server[..]].concat());
    assert!(out.contains("my_data") && out.contains("3 rows") && out.contains("committed in snapshot"), "{out}");
    let out = env.ok(&[&["dataset", "list"][..], &server[..]].concat());
    assert!(out.lines().any(|l| l.starts_with("my_data") && l.contains(" 3 ")), "{out}");
    let out = env.ok(&[&["dataset", "describe", "my_data"][..], &server[..]].concat());
    assert!(out.contains("score") && out.contains("DOUBLE"), "{out}");
    // A second upload reuses the saved key (no second key issued).
    env.ok(&[&["dataset", "upload", csv.to_str().unwrap(), "--name", "again", "--mode", "create"][..], &server[..]]
        .concat());
    let keys = env.ok(&["account", "api-key", "list", "acme", "--json"]);
    let n = serde_json::from_str::<serde_json::Value>(&keys).unwrap().as_array().unwrap().len();
    assert_eq!(n, 2, "{keys}");
    // Arrow IPC from stdin.
    let f = arrow_stream_file(tmp.path(), "a.arrows", 0, 3, 100);
    let out = env
        .command()
        .args([&["stream", "arrow", "events"][..], &server[..]].concat())
        .stdin(std::fs::File::open(&f).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("300 rows in 3 batches"));
    env.ok(&[&["dataset", "delete", "again"][..], &server[..]].concat());
    let out = env.ok(&[&["dataset", "list", "--json"][..], &server[..]].concat());
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&out)
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["events", "my_data"]);
    // Errors: the server's message, and no server at all.
    let err = env.fails(&[&["dataset", "describe", "nope"][..], &server[..]].concat());
    assert!(err.contains("404") && err.contains("not found"), "{err}");
    let err = env.fails(&["dataset", "list", "--account", "acme", "--server", "http://127.0.0.1:9"]);
    assert!(err.contains("no DuckPond server reachable") && err.contains("duckpond api serve"), "{err}");
}

/// The same ingest and listing with each account's DuckLake catalog in
/// PostgreSQL (its own schema) instead of a SQLite file.
#[test]
fn postgres_catalog_ingest_and_listing() {
    let env = TestEnv::migrated(Backend::Postgres);
    let url = std::env::var("DUCKPOND_TEST_POSTGRES_URL").expect("DUCKPOND_TEST_POSTGRES_URL (make test)");
    env.write_config(&format!("storage:\n  catalog_backend: postgres\n  catalog_postgres_url: {url}\n"));
    let a = account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    json_of(upload(&s, &a, "people", "?wait=committed", "text/csv", CSV), 200);
    let f = arrow_stream_file(tmp.path(), "a.arrows", 0, 2, 500);
    json_of(stream(&s, &a, "events", "?wait=committed", std::fs::read(&f).unwrap()), 200);
    let list = datasets(&s, &a);
    let got: Vec<(String, i64)> =
        list.iter().map(|d| (d["name"].as_str().unwrap().to_string(), d["rows"].as_i64().unwrap())).collect();
    assert_eq!(got, [("events".to_string(), 1000), ("people".to_string(), 3)]);
    let d = json_of(s.get("/api/datasets/people", Some(&a.key)), 200);
    assert_eq!(d["columns"].as_array().unwrap().len(), 3);
    assert!(!d["snapshots"].as_array().unwrap().is_empty(), "{d}");
    let p = json_of(s.get("/api/datasets/events/preview?limit=3", Some(&a.key)), 200);
    assert_eq!(p["rows"].as_array().unwrap().len(), 3);
    // An independent DuckDB (Python, official postgres_scanner and
    // ducklake) reads the catalog from PostgreSQL and the files from disk.
    let id = a.root.file_name().unwrap().to_str().unwrap();
    let csv = tmp.path().join("people.csv");
    std::fs::write(&csv, CSV).unwrap();
    let out = python(&format!(
        r#"
import duckdb, json, os
c = duckdb.connect(config={{"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}})
for e in ["postgres_scanner", "ducklake"]:
    c.execute(f"LOAD '{{os.environ['EXT']}}/{{e}}.duckdb_extension'")
c.execute("ATTACH 'ducklake:postgres:{url}' AS lake (DATA_PATH '{root}/data/', METADATA_SCHEMA 'duckpond_{id}', READ_ONLY)")
print(json.dumps([
    c.execute("SELECT count(*), count(*) FILTER (name <> 'n' || id OR v <> id / 2), min(id), max(id) FROM lake.events").fetchone(),
    c.execute("SELECT count(*) FROM (SELECT * FROM lake.people EXCEPT ALL SELECT * FROM read_csv('{csv}'))").fetchone(),
    c.execute("SELECT count(*) FROM lake.people").fetchone(),
]))
"#,
        root = a.root.display(),
        csv = csv.display()
    ));
    assert_eq!(serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(), json!([[1000, 0, 0, 999], [0], [3]]));
}

/// The journal mode of an SQLite file, as SQLite itself reports it.
fn journal_mode(db: &Path) -> String {
    python(&format!(
        "import sqlite3; print(sqlite3.connect({:?}).execute('PRAGMA journal_mode').fetchone()[0])",
        db.display().to_string()
    ))
    .trim()
    .to_string()
}

/// An account's SQLite catalog is in WAL journal mode from its creation,
/// and a catalog from before (rollback journal) is switched when the
/// daemon first opens it: in rollback mode every commit of the compactor
/// locked readers out, and DuckDB's SQLite reader fails instead of waiting.
#[test]
fn sqlite_catalogs_use_wal_journal_mode() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let a = account(&env, "acme");
    let catalog = a.root.join("catalog.sqlite");
    assert_eq!(journal_mode(&catalog), "wal");
    // As an older DuckPond left it.
    python(&format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute('PRAGMA journal_mode=DELETE'); c.close()",
        catalog.display().to_string()
    ));
    assert_eq!(journal_mode(&catalog), "delete");
    let s = env.serve();
    json_of(upload(&s, &a, "people", "?wait=committed", "text/csv", CSV), 200);
    assert_eq!(journal_mode(&catalog), "wal");
    assert_eq!(rows_of(&s, &a, "people"), 3);
}

/// The log's limits through the daemon. `?wait=committed` past
/// `compactor.commit_wait_timeout_ms` is a 202 with `"committed": false`
/// (durable, committed later). Past `wal.max_uncompacted_bytes` (nothing
/// flushes: a ten-minute interval) a stream is refused part-way keeping
/// exactly the batches logged before (its error says how many), an upload
/// is a 429 with Retry-After, and remote write is a 503 (Prometheus
/// retries 5xx, drops 4xx). After a restart that flushes, the lake holds
/// exactly what was acknowledged.
#[test]
fn log_limits_are_202_429_and_503_and_keep_only_what_was_acknowledged() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let limits = "wal:\n  max_uncompacted_bytes: 262144\nlimits:\n  stream_record_target_bytes: 16384\n\
                  compactor:\n  flush_threshold_bytes: 1073741824\n";
    env.write_config(&format!("{limits}  flush_interval_ms: 600000\n  commit_wait_timeout_ms: 1\n"));
    let a = account(&env, "acme");
    let tmp = tempfile::tempdir().unwrap();
    let s = env.serve();
    // A commit takes longer than 1 ms.
    let r = json_of(upload(&s, &a, "events", "?wait=committed", "text/csv", "id,name,v\n0,n0,0.5\n"), 202);
    assert_eq!(r["committed"], false, "{r}");
    // A stream bigger than the backlog: refused part-way, at batch k > 0.
    let first = 10_000_000i64;
    let f = arrow_stream_file(tmp.path(), "big.arrows", first, 300, 100);
    let r = stream(&s, &a, "events", "", std::fs::read(&f).unwrap());
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().unwrap();
    let kept = v["error"]["details"]["batches_kept"].as_i64().unwrap();
    assert!(kept > 0 && kept < 300, "{v}");
    assert_eq!(v["error"]["details"]["rows_kept"].as_i64(), Some(kept * 100), "{v}");
    // Uploads fill what is left; then one is a 429 with Retry-After.
    let mut uploaded = 0i64;
    let r = loop {
        let lo = 1 + uploaded;
        let csv: String = std::iter::once("id,name,v\n".to_string())
            .chain((lo..lo + 500).map(|i| format!("{i},n{i},{}\n", i as f64 / 2.0)))
            .collect();
        let r = upload(&s, &a, "events", "", "text/csv", csv);
        if r.status() != 202 {
            break r;
        }
        uploaded += 500;
        assert!(uploaded < 1_000_000, "the log never filled");
    };
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"), "{}", r.status());
    let msg = error_of(r, 429, "too_many_requests");
    assert!(msg.contains("backlog"), "{msg}");
    // Another stream keeps nothing.
    let f = arrow_stream_file(tmp.path(), "s.arrows", 20_000_000, 2, 100);
    let r = stream(&s, &a, "events", "", std::fs::read(&f).unwrap());
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["error"]["details"]["batches_kept"], 0);
    // Remote write: 503 with Retry-After, so Prometheus resends.
    let req = duckpond_schema::prompb::WriteRequest {
        timeseries: vec![duckpond_schema::prompb::TimeSeries {
            labels: vec![duckpond_schema::prompb::Label { name: "__name__".into(), value: "m".into() }],
            samples: vec![duckpond_schema::prompb::Sample { value: 1.0, timestamp: 1_700_000_000_000 }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new().compress_vec(&prost::Message::encode_to_vec(&req)).unwrap();
    let r = s
        .http
        .post(s.url("/api/v1/write"))
        .header("X-API-Key", &a.key)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    drop(s);

    // Flushing again: exactly the acknowledged rows, the stream's prefix
    // among them.
    env.write_config(&format!("{limits}  flush_interval_ms: 50\n"));
    let s = env.serve();
    drained(&s, &a);
    drop(s);
    let n = 1 + kept * 100 + uploaded;
    assert_eq!(
        json!(lake_query(&a.root, "SELECT count(*), count(DISTINCT id), max(id) FROM events")),
        json!([[n, n, first + kept * 100 - 1]]),
        "(rows, distinct ids, the stream's last kept id) as an independent reader sees them"
    );
}

/// A batch larger than `wal.max_record_bytes` is a 413 at batch k > 0 and
/// the stream keeps exactly the k batches logged before it (each batch is
/// its own record with `limits.stream_record_target_bytes` this small);
/// a record past `wal.max_inflight_bytes` is a 429. The lake then holds
/// exactly the kept prefix.
#[test]
fn streams_refused_part_way_keep_exactly_their_prefix() {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config("wal:\n  max_record_bytes: 65536\nlimits:\n  stream_record_target_bytes: 1024\n");
    let a = account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    // Batches 0-2 of 50 rows, then batch 3 of 20,000 rows (> 64 KiB).
    let path = tmp.path().join("s.arrows");
    python(&format!(
        r#"
import pyarrow as pa
schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("v", pa.float64())])
def batch(lo, n):
    ids = list(range(lo, lo + n))
    return pa.record_batch([pa.array(ids, pa.int64()), pa.array([f"n{{i}}" for i in ids]), pa.array([i / 2 for i in ids], pa.float64())], schema=schema)
with pa.OSFile("{}", "wb") as f, pa.ipc.new_stream(f, schema) as w:
    for lo in (0, 50, 100):
        w.write_batch(batch(lo, 50))
    w.write_batch(batch(150, 20000))
    w.write_batch(batch(20150, 50))
"#,
        path.display()
    ));
    let r = stream(&s, &a, "events", "?wait=committed", std::fs::read(&path).unwrap());
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(
        (v["error"]["details"]["batches_kept"].as_i64(), v["error"]["details"]["rows_kept"].as_i64()),
        (Some(3), Some(150)),
        "{v}"
    );
    let lsn = v["error"]["details"]["last_lsn"].as_u64().unwrap();
    assert!(lsn > 0, "{v}");
    drained(&s, &a);
    drop(s);
    assert_eq!(json!(lake_query(&a.root, "SELECT count(*), min(id), max(id) FROM events")), json!([[150, 0, 149]]));

    // In-flight bytes (logged, not yet synced): with a 3 s group-commit
    // window the first stream's record (about 6 KB) is in flight when the
    // second arrives, and both would pass wal.max_inflight_bytes: 429.
    env.write_config(
        "wal:\n  max_record_bytes: 8192\n  max_inflight_bytes: 10000\n  durability: batch\n  batch_window_ms: 3000\n\
         limits:\n  stream_record_target_bytes: 1024\n",
    );
    let s = env.serve();
    let one = std::fs::read(arrow_stream_file(tmp.path(), "one.arrows", 1_000_000, 1, 200)).unwrap();
    let two = std::fs::read(arrow_stream_file(tmp.path(), "two.arrows", 2_000_000, 1, 200)).unwrap();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| stream(&s, &a, "events", "", one.clone()).status().as_u16());
        std::thread::sleep(Duration::from_millis(700));
        // The refusal is for the bytes in flight, not the backlog.
        let msg = error_of(stream(&s, &a, "events", "", two.clone()), 429, "too_many_requests");
        assert!(msg.contains("bytes in flight") && !msg.contains(", 0 bytes in flight"), "{msg}");
        assert_eq!(first.join().unwrap(), 202);
    });
    // Once it is synced, the same write is admitted.
    json_of(stream(&s, &a, "events", "?wait=committed", two), 200);
    drop(s);
    assert_eq!(json!(lake_query(&a.root, "SELECT count(*), count(DISTINCT id) FROM events")), json!([[550, 550]]));
}

/// `max_ingest_bytes_per_s` slows an account's writes (reading pauses; one
/// second of burst) instead of refusing them; another account is not
/// slowed.
#[test]
fn the_ingest_rate_slows_one_account_only() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let slow = account(&env, "slow");
    let fast = account(&env, "fast");
    let s = env.serve();
    let r = s
        .admin(reqwest::Method::PATCH, "/api/admin/accounts/slow")
        .json(&json!({"max_ingest_bytes_per_s": 100_000}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let csv: String =
        std::iter::once("id,name\n".to_string()).chain((0..25_000).map(|i| format!("{i},name-{i:08}\n"))).collect();
    assert!(csv.len() > 400_000);
    let timed = |a: &Acct| {
        let t = Instant::now();
        json_of(upload(&s, a, "t", "", "text/csv", csv.clone()), 202);
        t.elapsed()
    };
    // 400+ KB at 100 KB/s with 1 s of burst: at least 3 s.
    let slowed = timed(&slow);
    assert!(slowed >= Duration::from_millis(2_500), "not slowed: {slowed:?}");
    let free = timed(&fast);
    assert!(free < Duration::from_millis(1_500), "the other account was slowed too: {free:?} vs {slowed:?}");
}

/// The CLI's promises, each checked by what it does: the key it issues for
/// itself is a 0600 file; `--no-wait` returns before the commit; `--format`
/// overrides the extension; `stream arrow --file`; `--json` on every data
/// command; quota flags; human-readable listings; `--home` and `--config`
/// pick the home and the configuration.
#[test]
fn cli_flags_do_what_they_say() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::migrated(Backend::Sqlite);
    // Quota flags, in their units: GB with decimals, bytes per second.
    let created = env.ok(&[
        "account",
        "create",
        "acme",
        "--json",
        "--max-storage-gb",
        "1.5",
        "--max-ingest-bytes-per-s",
        "123456",
        "--max-concurrent-queries",
        "3",
        "--max-notebook-sessions",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_str(&created).unwrap();
    let q = &v["account"]["quotas"];
    assert_eq!(
        (
            q["max_storage_bytes"].as_u64(),
            q["max_ingest_bytes_per_s"].as_u64(),
            q["max_concurrent_queries"].as_u64(),
            q["max_notebook_sessions"].as_u64()
        ),
        (Some(1_610_612_736), Some(123_456), Some(3), Some(1)),
        "{v}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["account", "update", "acme", "--max-storage-gb", "0.25", "--json"])).unwrap();
    assert_eq!(v["quotas"]["max_storage_bytes"].as_u64(), Some(268_435_456), "{v}");
    // Human-readable listing: a header and one aligned row per account.
    env.ok(&["account", "create", "globex"]);
    let out = env.ok(&["account", "list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].to_lowercase().contains("name"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("acme")) && lines.iter().any(|l| l.starts_with("globex")), "{out}");
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_err(), "text listing is JSON: {out}");

    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    let server = ["--account", "acme", "--server", s.url.as_str()];
    let run = |args: &[&str]| env.ok(&[args, &server[..]].concat());
    // --format: a .txt file read as CSV; --json: the server's reply.
    let txt = tmp.path().join("rows.txt");
    std::fs::write(&txt, CSV).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&run(&["dataset", "upload", txt.to_str().unwrap(), "--format", "csv", "--json"])).unwrap();
    assert_eq!((v["rows"].as_u64(), v["committed"].as_bool()), (Some(3), Some(true)), "{v}");
    // The key the CLI issued for itself: readable by its owner only.
    let key_file = env.path().join("cli/acme.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{key_file:?} has mode {mode:o}");
    // --no-wait: durable, not (yet) committed.
    let v: serde_json::Value = serde_json::from_str(&run(&[
        "dataset",
        "upload",
        txt.to_str().unwrap(),
        "--format",
        "csv",
        "--no-wait",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["committed"], false, "{v}");
    // stream arrow --file, with and without --json.
    let f = arrow_stream_file(tmp.path(), "f.arrows", 0, 2, 50);
    let out = run(&["stream", "arrow", "events", "--file", f.to_str().unwrap()]);
    assert!(out.contains("100 rows in 2 batches"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&run(&["stream", "arrow", "events2", "--file", f.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!((v["rows_kept"].as_u64(), v["batches_kept"].as_u64()), (Some(100), Some(2)), "{v}");
    // --json on describe, list, query and delete.
    let v: serde_json::Value = serde_json::from_str(&run(&["dataset", "describe", "events", "--json"])).unwrap();
    assert_eq!(v["name"], "events", "{v}");
    let v: serde_json::Value = serde_json::from_str(&run(&["dataset", "list", "--json"])).unwrap();
    assert!(v.as_array().unwrap().len() >= 3, "{v}");
    let v: serde_json::Value =
        serde_json::from_str(&run(&["query", "SELECT count(*) AS n FROM events", "--format", "json"])).unwrap();
    assert_eq!(v["rows"], json!([[100]]), "{v}");
    let out = run(&["dataset", "delete", "events2", "--json"]);
    assert!(out.trim().is_empty() || serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");
    drop(s);

    // --home and --config: another home, and a config file elsewhere that
    // names its own metadata database.
    let other = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("elsewhere.yaml");
    std::fs::write(
        &cfg,
        format!(
            "database:\n  url: sqlite:{}/meta.db\nduckdb:\n  extension_directory: {}\n",
            other.path().display(),
            common::extension_dir().display()
        ),
    )
    .unwrap();
    let home = other.path().to_str().unwrap();
    let cfg = cfg.to_str().unwrap();
    env.ok(&["--home", home, "--config", cfg, "db", "upgrade"]);
    env.ok(&["--home", home, "--config", cfg, "account", "create", "initech"]);
    assert!(other.path().join("meta.db").is_file(), "--config's database was not used");
    assert!(other.path().join("data/accounts").is_dir(), "--home's data directory was not used");
    let here = env.ok(&["account", "list", "--json"]);
    assert!(!here.contains("initech"), "the account went to the default home: {here}");
    let there = env.ok(&["--home", home, "--config", cfg, "account", "list", "--json"]);
    assert!(there.contains("initech") && !there.contains("acme"), "{there}");
}

/// `compactor.flush_threshold_bytes`: with a ten-minute flush interval, a
/// small write waits for the interval, and the write that takes the log
/// past the threshold is flushed at once (with everything before it).
#[test]
fn the_flush_threshold_triggers_a_flush() {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config("compactor:\n  flush_interval_ms: 600000\n  flush_threshold_bytes: 100000\n");
    let a = account(&env, "acme");
    let s = env.serve();
    let tmp = tempfile::tempdir().unwrap();
    let lsns = || {
        let me = json_of(s.get("/api/account", Some(&a.key)), 200);
        (me["usage"]["durable_lsn"].as_u64().unwrap(), me["usage"]["committed_lsn"].as_u64().unwrap())
    };
    let small = arrow_stream_file(tmp.path(), "small.arrows", 0, 1, 10);
    json_of(stream(&s, &a, "events", "", std::fs::read(&small).unwrap()), 202);
    std::thread::sleep(Duration::from_millis(1_500));
    let (durable, committed) = lsns();
    assert!(durable > 0 && committed < durable, "flushed below the threshold: {durable} {committed}");
    let big = arrow_stream_file(tmp.path(), "big.arrows", 10, 1, 5_000);
    assert!(std::fs::metadata(&big).unwrap().len() > 100_000);
    json_of(stream(&s, &a, "events", "", std::fs::read(&big).unwrap()), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (durable, committed) = lsns();
        if committed == durable {
            break;
        }
        assert!(Instant::now() < deadline, "the threshold did not trigger a flush: {durable} {committed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);
    assert_eq!(json!(lake_query(&a.root, "SELECT count(*), count(DISTINCT id) FROM events")), json!([[5_010, 5_010]]));
}

/// Waits until everything the account's log holds is committed.
fn drained(s: &Server, a: &Acct) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let me = json_of(s.get("/api/account", Some(&a.key)), 200);
        if me["usage"]["committed_lsn"] == me["usage"]["durable_lsn"] {
            return;
        }
        assert!(Instant::now() < deadline, "the log never drained: {me}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

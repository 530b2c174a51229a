//! The SQL query API end to end: formats read back with pyarrow, exact
//! JSON types, time travel, limits, timeouts, cancellation, concurrency,
//! the CLI, and one test per sandbox escape attempt (each must get 403 and
//! change nothing).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{error_of, json_of, python, Backend, Server, TestEnv};
use serde_json::{json, Value};

struct Acct {
    key: String,
    root: PathBuf,
}

struct Setup {
    env: TestEnv,
    s: Server,
    a: Acct,
    b: Acct,
}

fn account(env: &TestEnv, name: &str) -> Acct {
    let (a, key) = env.create_account(name);
    let root = env.path().join("data").join("accounts").join(a["id"].as_str().unwrap());
    Acct { key, root }
}

fn upload(s: &Server, a: &Acct, table: &str, csv: &str) {
    let r = s
        .http
        .post(s.url(&format!("/api/datasets/{table}/upload?wait=committed")))
        .header("X-API-Key", &a.key)
        .header("Content-Type", "text/csv")
        .body(csv.to_string())
        .send()
        .unwrap();
    json_of(r, 200);
}

/// Two accounts, each with a table, and a server; `config` is extra YAML.
fn setup(config: &str) -> Setup {
    let env = TestEnv::migrated(Backend::Sqlite);
    if !config.is_empty() {
        env.write_config(config);
    }
    let a = account(&env, "acme");
    let b = account(&env, "globex");
    let s = env.serve();
    upload(&s, &a, "sales", "id,amount,region\n1,10.5,eu\n2,20.25,us\n3,30,eu\n");
    upload(&s, &b, "secrets", "id,secret\n1,globex-only\n");
    Setup { env, s, a, b }
}

fn query(s: &Server, a: &Acct, body: Value) -> reqwest::blocking::Response {
    s.http.post(s.url("/api/query")).header("X-API-Key", &a.key).json(&body).send().unwrap()
}

fn rows(s: &Server, a: &Acct, sql: &str) -> Vec<Value> {
    json_of(query(s, a, json!({"sql": sql})), 200)["rows"].as_array().unwrap().clone()
}

fn count(s: &Server, a: &Acct, table: &str) -> i64 {
    rows(s, a, &format!("SELECT count(*) FROM {table}"))[0][0].as_i64().unwrap()
}

#[test]
fn json_results_and_time_travel() {
    let t = setup("");
    let v = json_of(query(&t.s, &t.a, json!({"sql": "SELECT id, amount FROM sales ORDER BY id"})), 200);
    assert_eq!(v["columns"], json!([{"name": "id", "type": "BIGINT"}, {"name": "amount", "type": "DOUBLE"}]));
    assert_eq!(v["rows"], json!([[1, 10.5], [2, 20.25], [3, 30.0]]));
    assert_eq!((v["row_count"].as_u64(), v["truncated"].as_bool()), (Some(3), Some(false)));
    let before = v["snapshot_id"].as_i64().unwrap();
    assert!(v["elapsed_ms"].as_u64().is_some());
    // GET form, limit and truncation.
    let r = t.s.get("/api/query?sql=SELECT%20*%20FROM%20sales&limit=2", Some(&t.a.key));
    let v = json_of(r, 200);
    assert_eq!((v["row_count"].as_u64(), v["truncated"].as_bool()), (Some(2), Some(true)));
    // A new write makes a new snapshot; the old one stays readable.
    upload(&t.s, &t.a, "sales", "id,amount,region\n4,1,eu\n");
    assert_eq!(count(&t.s, &t.a, "sales"), 4);
    let v = json_of(query(&t.s, &t.a, json!({"sql": "SELECT count(*) FROM sales", "snapshot": before})), 200);
    assert_eq!((v["rows"][0][0].as_i64(), v["snapshot_id"].as_i64()), (Some(3), Some(before)));
    let at = rows(&t.s, &t.a, &format!("SELECT count(*) FROM sales AT (VERSION => {before})"));
    assert_eq!(at[0][0], 3);
    error_of(query(&t.s, &t.a, json!({"sql": "SELECT 1", "snapshot": 99_999})), 404, "not_found");
    // Bad SQL is a 400 with DuckDB's message; unknown fields are refused.
    let msg = error_of(query(&t.s, &t.a, json!({"sql": "SELECT * FROM nope"})), 400, "bad_request");
    assert!(msg.contains("nope"), "{msg}");
    error_of(query(&t.s, &t.a, json!({"sql": "SELECT 1", "fmt": "csv"})), 400, "bad_request");
    error_of(query(&t.s, &t.a, json!({"sql": "  "})), 400, "bad_request");
    let r = t.s.http.post(t.s.url("/api/query")).json(&json!({"sql": "SELECT 1"})).send().unwrap();
    error_of(r, 401, "unauthorized");
}

#[test]
fn every_type_is_rendered_faithfully() {
    let t = setup("");
    let sql = "SELECT 9007199254740993::BIGINT AS big, 9007199254740991::BIGINT AS safe, \
               18446744073709551615::UBIGINT AS ubig, 170141183460469231731687303715884105727::HUGEINT AS huge, \
               1.25::DECIMAL(10,2) AS dec, -0.005::DECIMAL(10,3) AS neg, 'nan'::DOUBLE AS nan, \
               'inf'::DOUBLE AS inf, '-inf'::DOUBLE AS ninf, 0.1::DOUBLE AS d, \
               TIMESTAMP '2024-01-02 03:04:05.123456' AS ts, TIMESTAMPTZ '2024-01-02 03:04:05+00' AS tstz, \
               DATE '2024-01-02' AS dt, TIME '03:04:05' AS tm, [1, NULL, 3] AS l, {'a': 1, 'b': 'x'} AS s, \
               MAP {'k': 2} AS m, '\\xAA\\xBB'::BLOB AS bl, NULL::INTEGER AS n, true AS b, 'héllo' AS v, \
               'a5c2b7e4-1234-4abc-8def-0123456789ab'::UUID AS u, INTERVAL 1 DAY AS iv";
    let v = json_of(query(&t.s, &t.a, json!({"sql": sql})), 200);
    let names: Vec<&str> = v["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    let row = v["rows"][0].as_array().unwrap();
    let get = |n: &str| row[names.iter().position(|x| *x == n).unwrap()].clone();
    assert_eq!(get("big"), json!("9007199254740993"));
    assert_eq!(get("safe"), json!(9007199254740991i64));
    assert_eq!(get("ubig"), json!("18446744073709551615"));
    assert_eq!(get("huge"), json!("170141183460469231731687303715884105727"));
    assert_eq!((get("dec"), get("neg")), (json!("1.25"), json!("-0.005")));
    assert_eq!(
        (get("nan"), get("inf"), get("ninf"), get("d")),
        (json!("NaN"), json!("Infinity"), json!("-Infinity"), json!(0.1))
    );
    assert_eq!(get("ts"), json!("2024-01-02T03:04:05.123456"));
    assert_eq!(get("tstz"), json!("2024-01-02T03:04:05Z"));
    assert_eq!((get("dt"), get("tm")), (json!("2024-01-02"), json!("03:04:05")));
    assert_eq!(get("l"), json!([1, null, 3]));
    assert_eq!(get("s"), json!({"a": 1, "b": "x"}));
    assert_eq!(get("m"), json!([{"key": "k", "value": 2}]));
    assert_eq!(get("bl"), json!("qrs="));
    assert_eq!((get("n"), get("b"), get("v")), (json!(null), json!(true), json!("héllo")));
    assert_eq!(get("u"), json!("a5c2b7e4-1234-4abc-8def-0123456789ab"));
    assert!(get("iv").as_str().unwrap().contains('1'), "{}", get("iv"));
    let types: Vec<&str> = v["columns"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(&types[..5], ["BIGINT", "BIGINT", "UBIGINT", "HUGEINT", "DECIMAL(10,2)"]);
}

/// Reads a download of `format` with pyarrow into `t`, then runs `then`
/// (Python) and returns what it printed.
fn read_with_pyarrow(path: &std::path::Path, format: &str, then: &str) -> String {
    let reader = match format {
        "csv" => "pyarrow.csv.read_csv(p)",
        "parquet" => "pyarrow.parquet.read_table(p)",
        _ => "pyarrow.ipc.open_stream(open(p, 'rb')).read_all()",
    };
    python(&format!(
        "import pyarrow, pyarrow.csv, pyarrow.parquet, pyarrow.ipc\np = {:?}\nt = {reader}\n{then}",
        path.display().to_string()
    ))
}

/// CSV, Parquet and Arrow downloads (by `format` and by `Accept`), read back
/// by pyarrow.
#[test]
fn downloads_read_back_with_pyarrow() {
    let t = setup("");
    let tmp = tempfile::tempdir().unwrap();
    let sql = "SELECT range AS id, range * 0.5 AS half, 'r' || range AS name FROM range(100000)";
    for (format, accept) in [
        ("csv", "text/csv"),
        ("parquet", "application/vnd.apache.parquet"),
        ("arrow", "application/vnd.apache.arrow.stream"),
    ] {
        let by_field =
            t.s.http
                .post(t.s.url("/api/query"))
                .header("X-API-Key", &t.a.key)
                .json(&json!({"sql": sql, "format": format}))
                .send()
                .unwrap();
        let by_accept =
            t.s.http
                .post(t.s.url("/api/query"))
                .header("X-API-Key", &t.a.key)
                .header("Accept", accept)
                .json(&json!({"sql": sql}))
                .send()
                .unwrap();
        for (i, r) in [by_field, by_accept].into_iter().enumerate() {
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], accept);
            assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
            let path = tmp.path().join(format!("r{i}.{format}"));
            std::fs::write(&path, r.bytes().unwrap()).unwrap();
            let out = read_with_pyarrow(
                &path,
                format,
                "import pyarrow.compute as pc\n\
                 print(t.num_rows, t.column_names, pc.sum(t['id']).as_py(), t['name'][7].as_py())",
            );
            assert_eq!(out.trim(), "100000 ['id', 'half', 'name'] 4999950000 r7", "{format}");
        }
    }
    // A failing query is an error before any download starts.
    let r =
        t.s.http
            .post(t.s.url("/api/query"))
            .header("X-API-Key", &t.a.key)
            .json(&json!({"sql": "SELECT * FROM nope", "format": "parquet"}))
            .send()
            .unwrap();
    error_of(r, 400, "bad_request");
}

#[test]
fn json_results_are_capped() {
    let t = setup("limits:\n  max_json_result_bytes: 10000\n");
    let v = json_of(query(&t.s, &t.a, json!({"sql": "SELECT range FROM range(100000)"})), 200);
    assert_eq!(v["truncated"], true);
    let n = v["row_count"].as_u64().unwrap();
    assert!(n > 100 && n < 10_000, "{n}");
    // Downloads are not capped.
    let r =
        t.s.http
            .post(t.s.url("/api/query"))
            .header("X-API-Key", &t.a.key)
            .json(&json!({"sql": "SELECT range FROM range(100000)", "format": "csv"}))
            .send()
            .unwrap();
    assert_eq!(r.text().unwrap().lines().count(), 100_001);
}

#[test]
fn slow_queries_time_out() {
    let t = setup("limits:\n  query_timeout_ms: 500\n");
    let started = Instant::now();
    let msg = error_of(query(&t.s, &t.a, json!({"sql": "SELECT count(*) FROM range(1000000000000)"})), 408, "timeout");
    assert!(msg.contains("query_timeout_ms"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // The interrupted query freed its slot and the engine still answers.
    assert_eq!(count(&t.s, &t.a, "sales"), 3);
}

/// Beyond the account's concurrency limit and a short queue: 429 with
/// Retry-After; a client that disconnects frees its slot at once.
#[test]
fn concurrency_limit_and_cancellation() {
    let t = setup("limits:\n  query_queue_timeout_ms: 300\n");
    let r =
        t.s.admin(reqwest::Method::PATCH, "/api/admin/accounts/acme")
            .json(&json!({"max_concurrent_queries": 1}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let slow = "SELECT count(*) FROM range(1000000000000)";
    // A client that sends a slow query and hangs up once told to.
    let send_and_hang_up = |hang_up: std::sync::mpsc::Receiver<()>| {
        use std::io::Write;
        let addr = t.s.url.trim_start_matches("http://").to_string();
        let body = json!({"sql": slow}).to_string();
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        write!(sock, "POST /api/query HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", t.a.key, body.len()).unwrap();
        let _ = hang_up.recv_timeout(Duration::from_secs(30));
        drop(sock);
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = scope.spawn(move || send_and_hang_up(rx));
        // Until the slow query holds the account's one slot, a query gets
        // through; from then on, 429 with Retry-After (no sleep guessing
        // when the slot is taken).
        let deadline = Instant::now() + Duration::from_secs(20);
        let r = loop {
            let r = query(&t.s, &t.a, json!({"sql": "SELECT 1"}));
            if r.status() == 429 {
                break r;
            }
            assert!(Instant::now() < deadline, "the slow query never held the slot");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()).as_deref(), Some("1"));
        let msg = error_of(r, 429, "too_many_requests");
        assert!(msg.contains("max_concurrent_queries"), "{msg}");
        tx.send(()).unwrap();
        h.join().unwrap();
    });
    // The hung-up client's query was cancelled: the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = query(&t.s, &t.a, json!({"sql": "SELECT 1"}));
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the abandoned query kept its slot");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Another account is not limited by this one.
    assert_eq!(count(&t.s, &t.b, "secrets"), 1);
}

#[test]
fn cli_query() {
    let t = setup("");
    let server = ["--account", "acme", "--server", t.s.url.as_str()];
    let out = t.env.ok(&[&["query", "SELECT id, region FROM sales ORDER BY id"][..], &server[..]].concat());
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("id") && lines[0].contains("region"), "{out}");
    assert!(lines[2].starts_with('1') && lines[2].contains("eu"), "{out}");
    assert!(out.contains("(3 rows"), "{out}");
    let out = t.env.ok(&[&["query", "SELECT id FROM sales ORDER BY id", "--format", "csv"][..], &server[..]].concat());
    assert_eq!(out, "id\n1\n2\n3\n");
    let out = t.env.ok(&[&["query", "SELECT 1 AS x", "--format", "json"][..], &server[..]].concat());
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["rows"], json!([[1]]));
    let err = t.env.fails(&[&["query", "DROP TABLE sales"][..], &server[..]].concat());
    assert!(err.contains("403"), "{err}");
}

// ---- Sandbox: one test per escape attempt. Each gets 403 and changes
// nothing.

fn denied(t: &Setup, sql: &str) -> String {
    error_of(query(&t.s, &t.a, json!({"sql": sql})), 403, "forbidden")
}

fn b_data_file(t: &Setup) -> String {
    let dir = t.b.root.join("data");
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "parquet") {
                return e.path().display().to_string();
            }
        }
    }
    panic!("no parquet file for account b");
}

#[test]
fn attack_read_host_file() {
    let t = setup("");
    let msg = denied(&t, "SELECT * FROM read_csv('/etc/passwd')");
    assert!(msg.contains("/etc/passwd"), "{msg}");
    denied(&t, "SELECT * FROM read_text('/etc/hostname')");
    denied(&t, "SELECT * FROM read_blob('/proc/self/environ')");
}

#[test]
fn attack_read_other_accounts_parquet() {
    let t = setup("");
    let file = b_data_file(&t);
    denied(&t, &format!("SELECT * FROM read_parquet('{file}')"));
    denied(&t, &format!("SELECT * FROM '{file}'"));
}

#[test]
fn attack_read_other_accounts_log_and_catalog() {
    let t = setup("");
    let wal = t.b.root.join("wal").display().to_string();
    denied(&t, &format!("SELECT * FROM read_blob('{wal}/*')"));
    let cat = t.b.root.join("catalog.sqlite").display().to_string();
    let msg = denied(&t, &format!("SELECT * FROM sqlite_scan('{cat}', 'ducklake_table')"));
    assert!(!msg.contains("secrets"), "{msg}");
    denied(&t, &format!("SELECT * FROM sqlite_query('{cat}', 'SELECT 1')"));
}

#[test]
fn attack_glob_the_host() {
    let t = setup("");
    denied(&t, "SELECT * FROM glob('/*')");
    let parent = t.a.root.parent().unwrap().display().to_string();
    denied(&t, &format!("SELECT * FROM glob('{parent}/*')"));
}

#[test]
fn attack_relative_path_escape() {
    let t = setup("");
    let up = format!("{}/../", t.a.root.display());
    denied(&t, &format!("SELECT * FROM glob('{up}*/catalog.sqlite')"));
}

#[test]
fn attack_copy_to_anywhere() {
    let t = setup("");
    let inside = t.a.root.join("leak.csv");
    denied(&t, &format!("COPY sales TO '{}'", inside.display()));
    denied(&t, "COPY (SELECT 1) TO '/tmp/duckpond-leak.csv'");
    denied(&t, "EXPORT DATABASE '/tmp/duckpond-export'");
    assert!(!inside.exists() && !std::path::Path::new("/tmp/duckpond-leak.csv").exists());
}

#[test]
fn attack_attach() {
    let t = setup("");
    let cat = t.b.root.join("catalog.sqlite").display().to_string();
    denied(&t, &format!("ATTACH 'ducklake:sqlite:{cat}' AS other"));
    denied(&t, "ATTACH ':memory:' AS scratch");
    denied(&t, "DETACH lake");
    assert_eq!(count(&t.s, &t.a, "sales"), 3);
}

#[test]
fn attack_other_accounts_catalog_by_name() {
    let t = setup("");
    // Account b's table is not visible under any name.
    let msg = error_of(query(&t.s, &t.a, json!({"sql": "SELECT * FROM secrets"})), 400, "bad_request");
    assert!(msg.contains("secrets"), "{msg}");
    let tables = rows(&t.s, &t.a, "SELECT table_name FROM duckdb_tables()");
    assert!(!tables.iter().any(|r| r[0] == "secrets"), "{tables:?}");
    let dbs = rows(&t.s, &t.a, "SELECT database_name FROM duckdb_databases()");
    assert!(!dbs.iter().any(|r| r[0].as_str().unwrap().contains("globex")), "{dbs:?}");
}

#[test]
fn attack_install_and_load() {
    let t = setup("");
    // What an extension adds: functions and settings (duckdb_extensions()
    // itself touches the file system, which the sandbox refuses).
    let state = "SELECT (SELECT count(DISTINCT function_name) FROM duckdb_functions()), \
                 (SELECT count(*) FROM duckdb_settings())";
    let before = rows(&t.s, &t.a, state);
    let ext_dir = common::extension_dir();
    let files = || -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![ext_dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path())
                } else {
                    out.push(e.path())
                }
            }
        }
        out.sort();
        out
    };
    let files_before = files();
    for sql in
        ["INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL httpfs FROM core_nightly", "LOAD '/tmp/x.duckdb_extension'"]
    {
        let msg = denied(&t, sql);
        assert!(msg.contains("would change something"), "{sql}: {msg}");
    }
    // Nothing was installed or loaded: the engine's functions and settings
    // and the extension directory are as they were.
    assert_eq!(rows(&t.s, &t.a, state), before);
    assert_eq!(files(), files_before);
}

#[test]
fn attack_change_settings() {
    let t = setup("");
    let before = rows(&t.s, &t.a, "SELECT current_setting('threads'), current_setting('enable_external_access')");
    denied(&t, "SET threads = 1");
    denied(&t, "SET enable_external_access = true");
    denied(&t, "RESET allowed_directories");
    denied(&t, "PRAGMA enable_profiling");
    denied(&t, "SET GLOBAL lock_configuration = false");
    let after = rows(&t.s, &t.a, "SELECT current_setting('threads'), current_setting('enable_external_access')");
    assert_eq!(before, after);
    assert_eq!(after[0][1], false);
}

#[test]
fn attack_write_statements() {
    let t = setup("");
    for sql in [
        "CREATE TABLE evil AS SELECT 1",
        "CREATE TEMP TABLE evil AS SELECT 1",
        "INSERT INTO sales VALUES (9, 9, 'x')",
        "UPDATE sales SET amount = 0",
        "DELETE FROM sales",
        "DROP TABLE sales",
        "ALTER TABLE sales ADD COLUMN x INT",
        "TRUNCATE sales",
        "CREATE VIEW v AS SELECT 1",
        "CREATE MACRO m() AS 1",
    ] {
        denied(&t, sql);
    }
    assert_eq!(rows(&t.s, &t.a, "SELECT count(*), sum(amount) FROM sales")[0], json!([3, 60.75]));
}

#[test]
fn attack_maintenance_calls() {
    let t = setup("");
    let snaps = count(&t.s, &t.a, "lake.snapshots()");
    denied(&t, "CALL ducklake_expire_snapshots('lake', older_than => now())");
    denied(&t, "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())");
    denied(&t, "SELECT * FROM ducklake_merge_adjacent_files('lake')");
    denied(&t, "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)");
    denied(&t, "CHECKPOINT");
    assert_eq!(count(&t.s, &t.a, "lake.snapshots()"), snaps);
}

#[test]
fn attack_multi_statement_tricks() {
    let t = setup("");
    denied(&t, "SELECT 1; DROP TABLE sales");
    denied(&t, "SELECT 1; SELECT 2");
    denied(&t, "EXPLAIN DROP TABLE sales");
    denied(&t, "PIVOT sales ON region); DROP TABLE sales; SELECT (1");
    denied(&t, "SELECT * FROM query('DROP TABLE sales')");
    denied(&t, "/* comment */ DROP TABLE sales");
    denied(&t, "BEGIN TRANSACTION");
    assert_eq!(count(&t.s, &t.a, "sales"), 3);
}

#[test]
fn attack_environment_and_other_databases() {
    let t = setup("");
    denied(&t, "SELECT getenv('HOME')");
    denied(&t, "SELECT * FROM postgres_query('x', 'SELECT 1')");
    denied(&t, "USE memory");
}

#[test]
fn allowed_reads_still_work() {
    let t = setup("");
    let first = |sql: &str, n: usize| -> Vec<Value> {
        rows(&t.s, &t.a, sql)
            .iter()
            .map(|r| Value::Array(r.as_array().unwrap().iter().take(n).cloned().collect()))
            .collect()
    };
    assert_eq!(
        first("DESCRIBE sales", 2),
        [json!(["id", "BIGINT"]), json!(["amount", "DOUBLE"]), json!(["region", "VARCHAR"])]
    );
    assert_eq!(first("SHOW TABLES", 1), [json!(["sales"])]);
    let summary = rows(&t.s, &t.a, "SELECT column_name, min, max, count FROM (SUMMARIZE sales) ORDER BY 1");
    assert_eq!(
        summary,
        [json!(["amount", "10.5", "30.0", 3]), json!(["id", "1", "3", 3]), json!(["region", "eu", "us", 3])]
    );
    let plan = rows(&t.s, &t.a, "EXPLAIN SELECT * FROM sales");
    assert!(plan.iter().any(|r| r.to_string().contains("sales")), "{plan:?}");
    let pivoted = json!([[40.5, 20.25]]);
    assert_eq!(
        rows(&t.s, &t.a, "PIVOT (SELECT region, amount FROM sales) ON region IN ('eu', 'us') USING sum(amount)"),
        pivoted.as_array().unwrap().clone()
    );
    assert_eq!(
        rows(
            &t.s,
            &t.a,
            "SELECT eu, us FROM (SELECT region, amount FROM sales) PIVOT (sum(amount) FOR region IN ('eu', 'us'))"
        ),
        pivoted.as_array().unwrap().clone()
    );
    assert_eq!(rows(&t.s, &t.a, "WITH x AS (SELECT * FROM sales) SELECT count(*) FROM x"), [json!([3])]);
    assert_eq!(rows(&t.s, &t.a, "FROM sales SELECT id ORDER BY id"), [json!([1]), json!([2]), json!([3])]);
    let info = rows(&t.s, &t.a, "SELECT table_name, file_count FROM ducklake_table_info('lake')");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0][0], "sales");
    assert!(info[0][1].as_i64().unwrap() >= 1, "{info:?}");
}

/// With each account's catalog in PostgreSQL, the sandboxed engine (external
/// access off) still reads its lake, and still refuses escapes.
#[test]
fn postgres_catalog_queries() {
    let env = TestEnv::migrated(Backend::Postgres);
    let url = std::env::var("DUCKPOND_TEST_POSTGRES_URL").expect("DUCKPOND_TEST_POSTGRES_URL (make test)");
    env.write_config(&format!("storage:\n  catalog_backend: postgres\n  catalog_postgres_url: {url}\n"));
    let a = account(&env, "acme");
    let s = env.serve();
    upload(&s, &a, "sales", "id,amount\n1,2.5\n2,3.5\n");
    assert_eq!(rows(&s, &a, "SELECT count(*), sum(amount) FROM sales")[0], json!([2, 6.0]));
    error_of(query(&s, &a, json!({"sql": "SELECT * FROM read_csv('/etc/passwd')"})), 403, "forbidden");
    error_of(query(&s, &a, json!({"sql": "SELECT * FROM postgres_scan('x', 'public', 't')"})), 403, "forbidden");
}

/// Results cross from the account's query worker as an Arrow IPC stream:
/// batches without body bytes (every column of Arrow's Null type) and
/// dictionary batches (ENUM) arrive whole, whatever their number.
#[test]
fn results_of_every_shape_cross_the_worker_whole() {
    let t = setup("");
    assert_eq!(rows(&t.s, &t.a, "SELECT NULL AS x"), [json!([null])]);
    let v = json_of(query(&t.s, &t.a, json!({"sql": "SELECT NULL AS x FROM range(5000)"})), 200);
    assert_eq!(v["row_count"], 5000, "{}", v["columns"]);
    let sql = "SELECT count(*) AS n, count(*) FILTER (e = 'b') AS b FROM \
               (SELECT (CASE WHEN i % 3 = 0 THEN 'a' ELSE 'b' END)::ENUM('a', 'b') AS e FROM range(10000) t(i))";
    assert_eq!(rows(&t.s, &t.a, sql), [json!([10000, 6666])]);
    // The ENUM column itself, over many batches: every row, in order.
    let v = json_of(
        query(
            &t.s,
            &t.a,
            json!({"sql": "SELECT i, (CASE WHEN i % 3 = 0 THEN 'a' ELSE 'b' END)::ENUM('a', 'b') AS e FROM range(10000) t(i) ORDER BY i"}),
        ),
        200,
    );
    let got = v["rows"].as_array().unwrap();
    assert_eq!(got.len(), 10000);
    assert!(
        got.iter().enumerate().all(|(i, r)| r == &json!([i, if i % 3 == 0 { "a" } else { "b" }])),
        "{:?}",
        &got[..5]
    );
}

/// Time travel in every download format: `snapshot` picks what is read and
/// `X-DuckPond-Snapshot-Id` says which snapshot was; past
/// `compactor.snapshot_retention_hours` (0 here, maintenance every 200 ms)
/// an old snapshot is a 404 that says it expired.
#[test]
fn snapshots_in_downloads_and_past_retention() {
    let Setup { env, s, a, b: _b } = setup("");
    let tmp = tempfile::tempdir().unwrap();
    let old = json_of(query(&s, &a, json!({"sql": "SELECT 1"})), 200)["snapshot_id"].as_i64().unwrap();
    upload(&s, &a, "sales", "id,amount,region\n4,1,eu\n");
    let new = json_of(query(&s, &a, json!({"sql": "SELECT 1"})), 200)["snapshot_id"].as_i64().unwrap();
    assert!(new > old);
    for format in ["csv", "parquet", "arrow"] {
        for (snapshot, want_id, want_rows) in [(Some(old), old, 3), (None, new, 4)] {
            let mut body = json!({"sql": "SELECT count(*) AS n FROM sales", "format": format});
            if let Some(id) = snapshot {
                body["snapshot"] = json!(id);
            }
            let r = s.http.post(s.url("/api/query")).header("X-API-Key", &a.key).json(&body).send().unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-duckpond-snapshot-id"].to_str().unwrap(), want_id.to_string(), "{format}");
            let path = tmp.path().join(format!("n.{format}"));
            std::fs::write(&path, r.bytes().unwrap()).unwrap();
            let out = read_with_pyarrow(&path, format, "print(t['n'][0].as_py())");
            assert_eq!(out.trim(), want_rows.to_string(), "{format} at {snapshot:?}");
        }
    }
    drop(s);
    env.write_config("compactor:\n  snapshot_retention_hours: 0\n  maintenance_interval_ms: 200\n");
    let s = env.serve();
    // Maintenance runs after a flush: give it one.
    upload(&s, &a, "sales", "id,amount,region\n5,1,eu\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    let msg = loop {
        let r = query(&s, &a, json!({"sql": "SELECT count(*) FROM sales", "snapshot": old}));
        if r.status() == 404 {
            break error_of(r, 404, "not_found");
        }
        assert_eq!(r.status(), 200);
        assert!(Instant::now() < deadline, "snapshot {old} never expired");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(msg.contains("expired"), "{msg}");
    assert_eq!(count(&s, &a, "sales"), 5);
}

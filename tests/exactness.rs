//! Exactly what was sent, or refused before the ack (issue 17): every case
//! of the report as a test, each through the real daemon and checked with an
//! independent reader (pyarrow, stock DuckDB) where one exists. One daemon
//! serves the whole file; each test has its own account.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{error_of, json_of, python, Backend, Shared, TestEnv};
use serde_json::{json, Value};

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared::start(TestEnv::migrated(Backend::Sqlite)))
}

struct Acct {
    key: String,
    root: PathBuf,
}

fn account(name: &str) -> Acct {
    let (key, root) = shared().account(name);
    Acct { key, root }
}

fn post(a: &Acct, path: &str, ct: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    let s = &shared().server;
    s.http.post(s.url(path)).header("X-API-Key", &a.key).header("Content-Type", ct).body(body).send().unwrap()
}

fn upload(a: &Acct, table: &str, query: &str, ct: &str, body: impl Into<Vec<u8>>) -> reqwest::blocking::Response {
    post(a, &format!("/api/datasets/{table}/upload{query}"), ct, body.into())
}

fn stream(a: &Acct, table: &str, query: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    post(a, &format!("/api/stream/arrow/{table}{query}"), "application/vnd.apache.arrow.stream", body)
}

fn query(a: &Acct, body: Value) -> reqwest::blocking::Response {
    let s = &shared().server;
    s.http.post(s.url("/api/query")).header("X-API-Key", &a.key).json(&body).send().unwrap()
}

fn rows(a: &Acct, sql: &str) -> Vec<Value> {
    json_of(query(a, json!({"sql": sql})), 200)["rows"].as_array().unwrap().clone()
}

fn usage(a: &Acct) -> Value {
    json_of(shared().server.get("/api/account", Some(&a.key)), 200)["usage"].clone()
}

/// Runs a Python script that writes bytes to `out` (given as the variable
/// `out`) and returns them.
fn made_by_python(script: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.bin");
    python(&format!("out = {:?}\n{script}", out.display().to_string()));
    std::fs::read(&out).unwrap()
}

/// Arrow IPC stream bytes of a pyarrow table built by `expr` (pyarrow as
/// `pa`, duckdb as `duckdb`).
fn arrow_stream(expr: &str) -> Vec<u8> {
    made_by_python(&format!(
        "import pyarrow as pa, duckdb, datetime, decimal\nt = {expr}\n\
         t = t.read_all() if hasattr(t, 'read_all') else t\n\
         with pa.OSFile(out, 'wb') as f:\n    w = pa.ipc.new_stream(f, t.schema)\n    w.write_table(t)\n    w.close()"
    ))
}

fn parquet_file(expr: &str) -> Vec<u8> {
    made_by_python(&format!(
        "import pyarrow as pa, pyarrow.parquet as pq, duckdb, datetime, decimal\nt = {expr}\npq.write_table(t, out)"
    ))
}

/// Case 1: DuckDB's own Arrow export of an INTERVAL (month_day_nano) was
/// acknowledged and then failed every flush for ever, so nothing the
/// account wrote afterwards became visible. Now the interval is stored (as
/// DuckLake keeps intervals), an interval the lake cannot keep is refused
/// before the ack, and writes around them commit.
#[test]
fn interval_streams_are_stored_or_refused_and_never_wedge_the_account() {
    let a = account("case1");
    let iv =
        arrow_stream("duckdb.sql(\"SELECT 1 AS id, INTERVAL 90 MINUTE AS d, INTERVAL '1 month 2 days' AS e\").arrow()");
    json_of(stream(&a, "iv", "?wait=committed", iv), 200);
    let other = arrow_stream("pa.table({'x': [1]})");
    let r = json_of(stream(&a, "other", "?wait=committed", other), 200);
    assert_eq!(r["committed"], true, "{r}");
    // Read back by stock DuckDB's own rendering of the values.
    assert_eq!(rows(&a, "SELECT id, d::VARCHAR, e::VARCHAR FROM iv"), vec![json!([1, "01:30:00", "1 month 2 days"])]);
    assert_eq!(rows(&a, "SELECT x FROM other"), vec![json!([1])]);
    // What the lake cannot keep is refused with the column named, and
    // nothing of it is stored: sub-millisecond, negative, a duration in ns.
    for expr in [
        "duckdb.sql(\"SELECT INTERVAL 5 MICROSECONDS AS d\").arrow()",
        "duckdb.sql(\"SELECT INTERVAL (-1) DAY AS d\").arrow()",
        "pa.table({'d': pa.array([1], pa.duration('ns'))})",
    ] {
        let msg = error_of(stream(&a, "bad_iv", "", arrow_stream(expr)), 400, "bad_request");
        assert!(msg.contains("\"d\""), "{expr}: {msg}");
    }
    let names: Vec<String> = json_of(shared().server.get("/api/datasets", Some(&a.key)), 200)
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"bad_iv".to_string()), "{names:?}");
    // Durations that are whole milliseconds are intervals in the lake.
    let dur = arrow_stream("pa.table({'d': pa.array([3600], pa.duration('s'))})");
    json_of(stream(&a, "dur", "?wait=committed", dur), 200);
    assert_eq!(rows(&a, "SELECT d::VARCHAR FROM dur"), vec![json!(["01:00:00"])]);
    let u = usage(&a);
    assert_eq!(u["committed_lsn"], u["durable_lsn"], "{u}");
    assert_eq!(u["quarantined_records"], 0, "{u}");
}

/// Case 2: a column with no value (JSON null, Arrow's null type) took a
/// type of its own (JSON, NULL) that a later write's text could not be cast
/// to: the second write was acknowledged as committed but quarantined. Now
/// such a column is left out until a write gives it a type.
#[test]
fn columns_without_a_value_take_the_type_of_a_later_write() {
    let a = account("case2");
    json_of(upload(&a, "j", "?wait=committed", "application/x-ndjson", "{\"id\":1,\"c\":null}\n"), 200);
    let r =
        json_of(upload(&a, "j", "?wait=committed", "application/x-ndjson", "{\"id\":3,\"c\":\"late text\"}\n"), 200);
    assert_eq!(r["committed"], true);
    assert_eq!(rows(&a, "SELECT id, c FROM j ORDER BY id"), vec![json!([1, null]), json!([3, "late text"])]);
    // The Arrow variant.
    json_of(stream(&a, "s", "?wait=committed", arrow_stream("pa.table({'id': [1], 'c': pa.nulls(1)})")), 200);
    json_of(stream(&a, "s", "?wait=committed", arrow_stream("pa.table({'id': [2], 'c': ['text']})")), 200);
    assert_eq!(rows(&a, "SELECT id, c FROM s ORDER BY id"), vec![json!([1, null]), json!([2, "text"])]);
    // JSON values of varying shape are kept as their JSON text.
    let mixed = "{\"id\":1,\"doc\":{\"a\":1}}\n{\"id\":2,\"doc\":[1,2]}\n";
    json_of(upload(&a, "docs", "?wait=committed", "application/x-ndjson", mixed), 200);
    json_of(upload(&a, "docs", "?wait=committed", "application/x-ndjson", "{\"id\":3,\"doc\":\"plain\"}\n"), 200);
    assert_eq!(rows(&a, "SELECT count(*) FROM docs"), vec![json!([3])]);
    assert_eq!(usage(&a)["quarantined_records"], 0);
    assert_eq!(json_of(shared().server.get("/api/account/quarantine", Some(&a.key)), 200), json!([]));
}

/// Case 3: integers beyond a double's 53 bits were stored as DOUBLE and
/// came back rounded. Every door now keeps them exact (as DECIMAL(38,0)
/// where DuckDB read HUGEINT, which DuckLake would store as DOUBLE).
#[test]
fn integers_beyond_doubles_come_back_exact() {
    let a = account("case3");
    let nd = "{\"span_id\":18446744073709551615}\n{\"span_id\":9007199254740993}\n{\"span_id\":-170141183460469231731687303715884105}\n";
    json_of(upload(&a, "spans", "?wait=committed", "application/x-ndjson", nd), 200);
    let got = rows(&a, "SELECT span_id::VARCHAR FROM spans ORDER BY span_id");
    assert_eq!(
        got,
        vec![
            json!(["-170141183460469231731687303715884105"]),
            json!(["9007199254740993"]),
            json!(["18446744073709551615"])
        ]
    );
    let csv = "id,n\n1,18446744073709551615\n2,9007199254740993\n";
    json_of(upload(&a, "c", "?wait=committed", "text/csv", csv), 200);
    assert_eq!(
        rows(&a, "SELECT n::VARCHAR FROM c ORDER BY id"),
        vec![json!(["18446744073709551615"]), json!(["9007199254740993"])]
    );
    // Floats that reach 2^53 stay floats.
    json_of(upload(&a, "f", "?wait=committed", "text/csv", "x\n1e20\n0.5\n"), 200);
    assert_eq!(rows(&a, "SELECT typeof(x) FROM f LIMIT 1"), vec![json!(["DOUBLE"])]);
    // Arrow's unsigned 64-bit integers are UBIGINT.
    json_of(
        stream(&a, "u", "?wait=committed", arrow_stream("pa.table({'x': pa.array([2**64 - 1], pa.uint64())})")),
        200,
    );
    assert_eq!(rows(&a, "SELECT x, typeof(x) FROM u"), vec![json!(["18446744073709551615", "UBIGINT"])]);
    // A value beyond 38 digits cannot be stored: refused, nothing kept.
    let huge = "{\"v\":340282366920938463463374607431768211455}\n";
    let msg = error_of(upload(&a, "h", "", "application/x-ndjson", huge), 400, "bad_request");
    assert!(msg.contains("DECIMAL") || msg.contains("38"), "{msg}");
}

/// Case 5: downloads of nested values, infinities and types Arrow carries
/// inexactly broke the connection or gave error text in cells. CSV is now
/// DuckDB's own CSV writer's text (compared with stock DuckDB's COPY), JSON
/// renders every type, and Arrow/Parquet refuse what they cannot carry
/// before the first byte.
#[test]
fn every_result_format_renders_every_type() {
    let a = account("case5");
    let sql = "SELECT [1,2,3] AS l, ['a', 'b,c', NULL, ''] AS s, {'x': 1, 'y': [2]} AS st, MAP {'k': 'v'} AS m, \
               [1,2]::INT[2] AS arr, 'infinity'::TIMESTAMP AS ti, '-infinity'::DATE AS di, \
               'infinity'::TIMESTAMPTZ AS tz, '294247-01-10 04:00:54.775806'::TIMESTAMP AS tmax, \
               '10:20:30+05:30'::TIMETZ AS ttz, '0101101'::BIT AS b, \
               '123456789012345678901234567890123456789012345'::VARINT AS v, \
               340282366920938463463374607431768211455::UHUGEINT AS uh, \
               union_value(n := 7)::UNION(n INTEGER, t VARCHAR) AS u, 1e20::DOUBLE AS big, -0.0::DOUBLE AS z, \
               'x\"y' AS q, NULL::INTEGER AS nul";
    // CSV: the reference is DuckDB's own CSV writer on the same query.
    let r = query(&a, json!({"sql": sql, "format": "csv"}));
    assert_eq!(r.status(), 200);
    let ours = r.text().unwrap();
    let reference = python(&format!(
        "import duckdb, tempfile, os\nc = duckdb.connect()\nc.execute(\"SET TimeZone='UTC'\")\n\
         p = os.path.join(tempfile.mkdtemp(), 'r.csv')\nc.execute(\"COPY (\" + {sql:?} + \") TO '\" + p + \"' (FORMAT csv)\")\n\
         print(open(p).read(), end='')"
    ));
    assert_eq!(ours, reference);
    // JSON: every cell rendered, the inexact types as DuckDB's text.
    let v = json_of(query(&a, json!({"sql": sql})), 200);
    let names: Vec<&str> = v["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    let row = v["rows"][0].as_array().unwrap();
    let get = |n: &str| row[names.iter().position(|x| *x == n).unwrap()].clone();
    assert_eq!(get("ti"), json!("infinity"));
    assert_eq!(get("di"), json!("-infinity"));
    assert_eq!(get("tz"), json!("infinity"));
    assert_eq!(get("tmax"), json!("294247-01-10T04:00:54.775806"));
    assert_eq!(get("ttz"), json!("10:20:30+05:30"));
    assert_eq!(get("b"), json!("0101101"));
    assert_eq!(get("v"), json!("123456789012345678901234567890123456789012345"));
    assert_eq!(get("uh"), json!("340282366920938463463374607431768211455"));
    assert_eq!(get("u"), json!(7));
    assert_eq!(get("arr"), json!([1, 2]));
    let types: Vec<&str> = v["columns"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types[names.iter().position(|x| *x == "ttz").unwrap()], "TIMETZ");
    // Arrow and Parquet: 400 naming the column, before any byte.
    for (format, col) in [("arrow", "ttz"), ("parquet", "ttz")] {
        let msg = error_of(query(&a, json!({"sql": sql, "format": format})), 400, "bad_request");
        assert!(msg.contains(col), "{format}: {msg}");
    }
    let msg =
        error_of(query(&a, json!({"sql": "SELECT INTERVAL 1 DAY AS iv", "format": "parquet"})), 400, "bad_request");
    assert!(msg.contains("iv"), "{msg}");
    // What Arrow does carry exactly goes out as Arrow, read by pyarrow.
    let r = query(
        &a,
        json!({"sql": "SELECT union_value(n := 7)::UNION(n INTEGER, t VARCHAR) AS u, 'infinity'::DATE AS d", "format": "arrow"}),
    );
    assert_eq!(r.status(), 200);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.arrows");
    std::fs::write(&p, r.bytes().unwrap()).unwrap();
    let out = python(&format!(
        "import pyarrow as pa\nt = pa.ipc.open_stream(open({:?}, 'rb')).read_all()\n\
         print(t['u'].to_pylist(), t['d'].cast(pa.int32()).to_pylist())",
        p.display().to_string()
    ));
    assert_eq!(out.trim(), "[7] [2147483647]");
}

fn leaks(msg: &str, a: &Acct) -> bool {
    let id = a.root.file_name().unwrap().to_str().unwrap();
    msg.contains(shared().env.path().to_str().unwrap()) || msg.contains(id) || msg.contains("/accounts/")
}

/// Cases 6, 7 and 10: error messages named the server's paths and the
/// account id (a CSV field over DuckDB's line limit, a malformed JSON), and
/// SQL that does not parse was a 403.
#[test]
fn errors_name_no_server_path_and_bad_sql_is_400() {
    let a = account("case6");
    let mut big = b"a,b\n1,\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 3 * 1024 * 1024));
    big.extend(b"\"\n");
    let msg = error_of(upload(&a, "big", "", "text/csv", big), 400, "bad_request");
    assert!(!leaks(&msg, &a), "{msg}");
    let msg = error_of(upload(&a, "j", "", "application/json", "[{\"a\": 1}, {\"a\": "), 400, "bad_request");
    assert!(!leaks(&msg, &a) && !msg.contains("LINE 1"), "{msg}");
    let msg = error_of(
        upload(&a, "p", "", "application/vnd.apache.parquet", b"PAR1 not parquet".to_vec()),
        400,
        "bad_request",
    );
    assert!(!leaks(&msg, &a), "{msg}");
    for sql in ["SELEC 1", "SELECT FROM WHERE", "SELECT (1"] {
        let msg = error_of(query(&a, json!({"sql": sql})), 400, "bad_request");
        assert!(!leaks(&msg, &a), "{msg}");
    }
    // A query error naming the lake's files names no path either.
    let msg = error_of(query(&a, json!({"sql": "SELECT * FROM read_parquet('/etc/nope.parquet')"})), 403, "forbidden");
    assert!(!leaks(&msg, &a), "{msg}");
    error_of(query(&a, json!({"sql": "INSERT INTO t VALUES (1)"})), 403, "forbidden");
}

/// Case 8: a Latin-1 CSV was refused with a hint to a parameter the API
/// did not take. `?encoding=` now reads Latin-1 and UTF-16 (found by its
/// byte-order mark without the parameter), and undecodable bytes name the
/// line and the parameter.
#[test]
fn csv_encodings() {
    let a = account("case8");
    let latin1: Vec<u8> = b"id;name\n1;Jos\xe9\n2;M\xfcller\n".to_vec();
    let msg = error_of(upload(&a, "l", "", "text/csv", latin1.clone()), 400, "bad_request");
    assert!(msg.contains("encoding=latin-1") && msg.to_lowercase().contains("line"), "{msg}");
    json_of(upload(&a, "l", "?encoding=latin-1&wait=committed", "text/csv", latin1), 200);
    assert_eq!(rows(&a, "SELECT name FROM l ORDER BY id"), vec![json!(["José"]), json!(["Müller"])]);
    let mut utf16 = vec![0xff, 0xfe];
    for u in "id,name\n1,Zoë\n".encode_utf16() {
        utf16.extend(u.to_le_bytes());
    }
    json_of(upload(&a, "u", "?wait=committed", "text/csv", utf16), 200);
    assert_eq!(rows(&a, "SELECT name FROM u"), vec![json!(["Zoë"])]);
    error_of(upload(&a, "x", "?encoding=ebcdic", "text/csv", "a\n1\n"), 400, "bad_request");
    error_of(upload(&a, "x", "?encoding=latin-1", "application/x-ndjson", "{\"a\":1}\n"), 400, "bad_request");
}

/// Case 9: a column written narrower first (INT32, DECIMAL(10,2)) refused
/// every wider write with 409 for ever, although DuckLake promotes such
/// types. Now the column widens, old and new values exact; a change with no
/// exact common type is still a 409 naming the column.
#[test]
fn columns_widen_where_ducklake_promotes() {
    let a = account("case9");
    let narrow = parquet_file(
        "pa.table({'i': pa.array([1], pa.int32()), 'd': pa.array([decimal.Decimal('1.25')], pa.decimal128(10, 2))})",
    );
    json_of(upload(&a, "w", "?wait=committed", "application/vnd.apache.parquet", narrow), 200);
    // The narrow types are what the table starts with, so the next upload
    // really widens them.
    assert_eq!(rows(&a, "SELECT typeof(i), typeof(d) FROM w"), vec![json!(["INTEGER", "DECIMAL(10,2)"])]);
    let wide = parquet_file(
        "pa.table({'i': pa.array([2**40], pa.int64()), 'd': pa.array([decimal.Decimal('12345678901234.50')], pa.decimal128(18, 2))})",
    );
    json_of(upload(&a, "w", "?wait=committed", "application/vnd.apache.parquet", wide), 200);
    assert_eq!(
        rows(&a, "SELECT i, d::VARCHAR, typeof(i), typeof(d) FROM w ORDER BY i"),
        vec![
            json!([1, "1.25", "BIGINT", "DECIMAL(18,2)"]),
            json!([1_099_511_627_776i64, "12345678901234.50", "BIGINT", "DECIMAL(18,2)"])
        ]
    );
    // The same through Arrow streams.
    json_of(stream(&a, "s", "?wait=committed", arrow_stream("pa.table({'x': pa.array([1], pa.int16())})")), 200);
    assert_eq!(rows(&a, "SELECT typeof(x) FROM s"), vec![json!(["SMALLINT"])]);
    json_of(stream(&a, "s", "?wait=committed", arrow_stream("pa.table({'x': pa.array([2**31], pa.int64())})")), 200);
    assert_eq!(rows(&a, "SELECT sum(x)::VARCHAR, any_value(typeof(x)) FROM s"), vec![json!(["2147483649", "BIGINT"])]);
    // A bigint column cannot become a double (2^53 + 1 would round), nor
    // take doubles: 409 naming the column, nothing stored.
    json_of(
        stream(&a, "dbl", "?wait=committed", arrow_stream("pa.table({'x': pa.array([2**53 + 1], pa.int64())})")),
        200,
    );
    let msg = error_of(
        stream(&a, "dbl", "", arrow_stream("pa.table({'x': pa.array([0.5], pa.float64())})")),
        409,
        "conflict",
    );
    assert!(msg.contains("\"x\""), "{msg}");
    assert_eq!(rows(&a, "SELECT x::VARCHAR FROM dbl"), vec![json!(["9007199254740993"])]);
    // Integers into a DOUBLE column: taken while a double holds them
    // exactly (±2^53), refused naming the column beyond; through both doors.
    json_of(
        upload(
            &a,
            "f",
            "?wait=committed",
            "text/csv",
            "x
0.5
",
        ),
        200,
    );
    json_of(
        upload(
            &a,
            "f",
            "?wait=committed",
            "text/csv",
            "x
40
-7
",
        ),
        200,
    );
    let msg = error_of(upload(&a, "f", "", "application/x-ndjson", "{\"x\": 9007199254740993}\n"), 409, "conflict");
    assert!(msg.contains("\"x\"") && msg.contains("round"), "{msg}");
    let big = arrow_stream("pa.table({'x': pa.array([1, 2**53 + 1], pa.int64())})");
    let msg = error_of(stream(&a, "f", "", big), 409, "conflict");
    assert!(msg.contains("round"), "{msg}");
    assert_eq!(rows(&a, "SELECT x FROM f ORDER BY x"), vec![json!([-7.0]), json!([0.5]), json!([40.0])]);
}

/// Case 10: without the ICU extension zoned timestamps were read as text
/// and time-zone SQL failed; JSON UUIDs became text.
#[test]
fn time_zones_and_uuids() {
    let a = account("case10");
    let csv = "id,ts\n1,2020-01-01 10:00:00 EST\n2,2020-07-01 10:00:00 America/New_York\n";
    json_of(upload(&a, "t", "?wait=committed", "text/csv", csv), 200);
    assert_eq!(
        rows(&a, "SELECT typeof(ts), ts FROM t ORDER BY id"),
        vec![
            json!(["TIMESTAMP WITH TIME ZONE", "2020-01-01T15:00:00Z"]),
            json!(["TIMESTAMP WITH TIME ZONE", "2020-07-01T14:00:00Z"])
        ]
    );
    assert_eq!(
        rows(&a, "SELECT TIMESTAMPTZ '2024-01-01 10:00:00 America/New_York', timezone('Europe/Berlin', TIMESTAMPTZ '2024-01-01 12:00:00+00')::VARCHAR"),
        vec![json!(["2024-01-01T15:00:00Z", "2024-01-01 13:00:00"])]
    );
    let nd = "{\"u\":\"a5c2b7e4-1234-4abc-8def-0123456789ab\"}\n";
    json_of(upload(&a, "uu", "?wait=committed", "application/x-ndjson", nd), 200);
    assert_eq!(
        rows(&a, "SELECT typeof(u), u::VARCHAR FROM uu"),
        vec![json!(["UUID", "a5c2b7e4-1234-4abc-8def-0123456789ab"])]
    );
    // A later string into the UUID column is refused before the ack, not
    // quarantined.
    let msg = error_of(upload(&a, "uu", "", "application/x-ndjson", "{\"u\":\"not a uuid\"}\n"), 409, "conflict");
    assert!(msg.contains("\"u\""), "{msg}");
}

/// Case 11: the notebook proxy answered another account's notebook id
/// with 409 "has no session" while the API answered 404.
#[test]
fn another_accounts_notebook_is_404_at_the_proxy() {
    let a = account("case11a");
    let b = account("case11b");
    let s = &shared().server;
    let nb = json_of(
        s.http.post(s.url("/api/notebooks")).header("X-API-Key", &a.key).json(&json!({"name": "n"})).send().unwrap(),
        201,
    );
    let id = nb["id"].as_str().unwrap();
    let theirs = s.http.get(s.url(&format!("/notebooks/{id}/"))).header("X-API-Key", &b.key).send().unwrap();
    error_of(theirs, 404, "not_found");
    let api = s.http.get(s.url(&format!("/api/notebooks/{id}"))).header("X-API-Key", &b.key).send().unwrap();
    error_of(api, 404, "not_found");
    // Its own, not started: still "not running" (409).
    let own = s.http.get(s.url(&format!("/notebooks/{id}/"))).header("X-API-Key", &a.key).send().unwrap();
    error_of(own, 409, "conflict");
}

/// Case 11: `dataset list` printed its rows unaligned with its header.
#[test]
fn cli_dataset_list_is_aligned() {
    let a = account("case11c");
    json_of(upload(&a, "sales", "?wait=committed", "text/csv", "id\n1\n2\n"), 200);
    let sh = shared();
    let out = sh.env.ok(&["dataset", "list", "--account", "case11c", "--server", sh.server.url.as_str()]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 2, "{out}");
    let header = lines[0];
    let row = lines.iter().find(|l| l.starts_with("sales")).expect("a row for sales");
    assert_eq!(row.len(), header.len(), "{out}");
    // Numbers end where their column's heading ends.
    let rows_end = header.find("ROWS").unwrap() + 4;
    assert_eq!(&row[rows_end - 1..rows_end], "2", "{out}");
}

/// The conformance matrix (deliver 3): every Arrow type pyarrow builds and
/// the types DuckDB exports, edge and seeded random values, through the
/// Arrow stream and the Parquet upload, read back as Arrow, Parquet, JSON
/// and CSV and compared by pyarrow and stock DuckDB (tests/conformance/
/// matrix.py says how). Every case is accepted exactly or refused with
/// nothing stored; the refusals are the documented ones.
#[test]
fn conformance_matrix() {
    let a = account("matrix");
    let script =
        format!("URL = {:?}\nKEY = {:?}\n{}", shared().server.url, a.key, include_str!("conformance/matrix.py"));
    let out = python(&script);
    // The whole matrix in the test's output (shown with --no-capture).
    println!("{out}");
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.ends_with(" 0 failed"), "{out}");
    let refused: Vec<&str> = out.lines().filter(|l| l.starts_with("refused ")).collect();
    // Exactly the documented refusals (README, "Types"), through both doors
    // where pyarrow can write the type to Parquet at all.
    for expected in [
        "refused decimal256(40,5) via stream",
        "refused decimal256(40,5) via parquet",
        "refused date64 with a time of day via stream",
        "refused time64[ns] with ns via stream",
        "refused time64[ns] with ns via parquet",
        "refused timestamp[ns, UTC] with ns via stream",
        "refused timestamp[ns, UTC] with ns via parquet",
        "refused duration[ns] with ns via stream",
        "refused duration[s] via parquet",
        "refused month_day_nano_interval negative via stream",
        "refused list<duration[s]> via stream",
        "refused sparse union via stream",
        "refused dense union via stream",
    ] {
        assert!(refused.iter().any(|l| l.starts_with(expected)), "{expected} missing:\n{out}");
    }
    for accepted in [
        "ok uint64 via stream",
        "ok float64 via stream",
        "ok float64 via parquet",
        "ok float16 via stream",
        "ok decimal256(20,2) via stream",
        "ok timestamp[ns] via stream",
        "ok timestamp[us, America/New_York] via stream",
        "ok month_day_nano_interval via stream",
        "ok duration[s] via stream",
        "ok map<string,int32> via parquet",
        "ok duckdb interval via stream",
        "ok duckdb hugeint via stream",
        "ok null via stream",
        "ok uuid via stream",
    ] {
        assert!(out.lines().any(|l| l == accepted), "{accepted} missing:\n{out}");
    }
    assert_eq!(usage(&a)["quarantined_records"], 0);
}

/// Deliver 6: one walk over every kind of error the API answers, from
/// every door, with a second account's name and data in the same daemon:
/// no message names a server path, an account id or the other account.
#[test]
fn no_error_message_names_a_server_path_an_account_id_or_another_account() {
    let a = account("walker");
    let other = account("other-tenant-name");
    json_of(upload(&other, "secret_table", "?wait=committed", "text/csv", "x\n1\n"), 200);
    json_of(upload(&a, "t", "?wait=committed", "text/csv", "id,v\n1,a\n"), 200);
    let s = &shared().server;
    let mut messages: Vec<(String, String)> = Vec::new();
    let mut record = |what: &str, r: reqwest::blocking::Response| {
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        assert!(status < 500, "{what}: {status} {text}");
        if status >= 400 {
            messages.push((what.to_string(), text));
        }
    };
    let csv = "text/csv";
    for (what, ct, body) in [
        ("csv bad quote", csv, "a,b\n1,\"x\n".to_string()),
        ("csv ragged", csv, "a,b\n1,2,3,4\n5\n".to_string()),
        ("csv not utf-8", csv, String::from_utf8_lossy(b"a\n\xff\xfe\xfd\n").to_string()),
        ("json broken", "application/json", "[{\"a\": ".to_string()),
        ("ndjson broken", "application/x-ndjson", "{\"a\": 1}\n{\"a\"\n".to_string()),
        ("parquet garbage", "application/vnd.apache.parquet", "PAR1garbagePAR1".to_string()),
        ("empty", csv, String::new()),
        ("unknown type", "application/xml", "<a/>".to_string()),
        ("conflict", csv, "id,v\nx,1\n".to_string()),
    ] {
        record(what, upload(&a, "t", "", ct, body));
    }
    record("bad table name", upload(&a, "../etc", "", csv, "a\n1\n"));
    record("create existing", upload(&a, "t", "?mode=create", csv, "id\n1\n"));
    record("stream garbage", stream(&a, "t", "", b"not arrow".to_vec()));
    record("stream conflict", stream(&a, "t", "", arrow_stream("pa.table({'id': ['text']})")));
    record("stream unstorable", stream(&a, "u", "", arrow_stream("pa.table({'d': pa.array([1], pa.duration('ns'))})")));
    for sql in [
        "SELECT * FROM secret_table",
        "SELECT * FROM nope",
        "SELEC 1",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('data/**/*.parquet')",
        "ATTACH 'x.db'",
        "SELECT 1/0::INTEGER, 'x'::INTEGER",
        "SELECT * FROM t AT (VERSION => 999999)",
        "COPY t TO 'out.csv'",
    ] {
        record(sql, query(&a, json!({"sql": sql})));
        record(sql, query(&a, json!({"sql": sql, "format": "parquet"})));
    }
    record("old snapshot", query(&a, json!({"sql": "SELECT 1", "snapshot": 987654})));
    record("unknown dataset", s.get("/api/datasets/nope", Some(&a.key)));
    record("other's dataset", s.get("/api/datasets/secret_table", Some(&a.key)));
    record("other's preview", s.get("/api/datasets/secret_table/preview", Some(&a.key)));
    record("unknown notebook", s.get("/api/notebooks/0123456789abcdef0123456789abcdef", Some(&a.key)));
    record("bad notebook id", s.get("/api/notebooks/..%2F..%2Fetc", Some(&a.key)));
    record(
        "remote write garbage",
        s.http
            .post(s.url("/api/v1/write"))
            .header("X-API-Key", &a.key)
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .body(b"garbage".to_vec())
            .send()
            .unwrap(),
    );
    record("no key", s.get("/api/account", None));
    record("wrong key", s.get("/api/account", Some("dpk_0000000000000000_00")));
    record("unknown route", s.get("/api/nothing-here", Some(&a.key)));
    assert!(messages.len() >= 30, "only {} errors provoked", messages.len());
    let root = shared().env.path().to_str().unwrap().to_string();
    let ids: Vec<String> =
        [&a, &other].iter().map(|x| x.root.file_name().unwrap().to_str().unwrap().to_string()).collect();
    for (what, text) in &messages {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.contains(&root) && !msg.contains("/accounts/"), "{what}: a server path in {msg}");
        for id in &ids {
            assert!(!msg.contains(id.as_str()), "{what}: an account id in {msg}");
        }
        assert!(!msg.contains("other-tenant-name"), "{what}: another account's name in {msg}");
    }
}

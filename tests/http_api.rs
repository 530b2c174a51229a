//! The HTTP API end to end against `duckpond api serve`: authentication,
//! the account and admin APIs, errors, metrics, lifecycle; both backends.

mod common;

use common::{error_of, json_of, Backend, TestEnv, ADMIN_KEY};
use reqwest::Method;
use serde_json::json;

fn health_ready_metrics_openapi(b: Backend) {
    let env = TestEnv::migrated(b);
    let s = env.serve();
    assert_eq!(json_of(s.get("/healthz", None), 200)["status"], "ok");
    assert_eq!(json_of(s.get("/readyz", None), 200)["status"], "ok");
    let doc = json_of(s.get("/api/openapi.json", None), 200);
    for p in ["/api/account", "/api/admin/accounts", "/api/admin/accounts/{name}/keys"] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    s.get("/api/account", None);
    let text = s.get("/metrics", None).text().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("duckpond_http_requests_total") && l.contains("route=\"/healthz\""))
        .unwrap_or_else(|| panic!("no request counter for /healthz in:\n{text}"));
    assert!(line.contains("status=\"200\""), "{line}");
    assert!(text.contains("route=\"/api/account\"") && text.contains("status=\"401\""), "{text}");
    assert!(text.contains("duckpond_http_request_duration_seconds_bucket"), "latency histogram missing");
}

fn account_endpoint_authenticates(b: Backend) {
    let env = TestEnv::migrated(b);
    let (account, key) = env.create_account("acme");
    let s = env.serve();
    let me = json_of(s.get("/api/account", Some(&key)), 200);
    assert_eq!(me["name"], "acme");
    assert_eq!(me["id"], account["id"]);
    assert!(me["usage"]["storage_bytes"].as_u64().unwrap() > 0, "catalog counts as storage");
    assert_eq!(me["quotas"]["max_concurrent_queries"], 5);
    // The account's pipeline runs: nothing written yet, nothing committed.
    assert_eq!(me["usage"]["committed_lsn"], 0);
    assert!(me["usage"]["wal_uncompacted_bytes"].as_u64().is_some());
    assert_eq!(me["usage"]["wal_lag_seconds"], 0.0);
    // Bearer and Basic (key as password) are accepted too.
    let r = s.http.get(s.url("/api/account")).bearer_auth(&key).send().unwrap();
    assert_eq!(json_of(r, 200)["name"], "acme");
    let r = s.http.get(s.url("/api/account")).basic_auth("prometheus", Some(&key)).send().unwrap();
    assert_eq!(json_of(r, 200)["name"], "acme");
}

fn bad_credentials_get_401(b: Backend) {
    let env = TestEnv::migrated(b);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    let msg = error_of(s.get("/api/account", None), 401, "unauthorized");
    assert!(msg.contains("X-API-Key"), "{msg}");
    // Malformed, unknown id, right id with wrong secret, other scheme.
    let (id, secret) = key.strip_prefix("dpk_").unwrap().split_once('_').unwrap();
    let flipped: String = secret.chars().rev().collect();
    for bad in ["nope", "dpk_", &format!("dpk_ffffffffffffffff_{secret}"), &format!("dpk_{id}_{flipped}")] {
        error_of(s.get("/api/account", Some(bad)), 401, "unauthorized");
    }
    let r = s.http.get(s.url("/api/account")).header("Authorization", format!("Digest {key}")).send().unwrap();
    error_of(r, 401, "unauthorized");
    // The admin key is not an account key.
    error_of(s.get("/api/account", Some(ADMIN_KEY)), 401, "unauthorized");
}

fn revoked_key_gets_401(b: Backend) {
    let env = TestEnv::migrated(b);
    let (_, key) = env.create_account("acme");
    let s = env.serve();
    assert_eq!(s.get("/api/account", Some(&key)).status(), 200);
    let id = key.strip_prefix("dpk_").unwrap().split_once('_').unwrap().0;
    // Revoked through the CLI while the server runs: effective immediately.
    env.ok(&["account", "api-key", "revoke", "acme", id]);
    error_of(s.get("/api/account", Some(&key)), 401, "unauthorized");
}

fn self_service_keys(b: Backend) {
    let env = TestEnv::migrated(b);
    let (_, key) = env.create_account("acme");
    let (_, other_key) = env.create_account("globex");
    let s = env.serve();
    let r = s
        .http
        .post(s.url("/api/account/keys"))
        .header("X-API-Key", &key)
        .json(&serde_json::json!({"label": "laptop"}))
        .send()
        .unwrap();
    let issued = json_of(r, 201);
    let new_key = issued["api_key"].as_str().unwrap();
    assert_eq!(issued["label"], "laptop");
    assert_eq!(json_of(s.get("/api/account", Some(new_key)), 200)["name"], "acme");
    let keys = json_of(s.get("/api/account/keys", Some(&key)), 200);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // Another account cannot revoke (or even find) this key.
    let new_id = issued["id"].as_str().unwrap();
    let r =
        s.http.delete(s.url(&format!("/api/account/keys/{new_id}"))).header("X-API-Key", &other_key).send().unwrap();
    error_of(r, 404, "not_found");
    assert_eq!(s.get("/api/account", Some(new_key)).status(), 200);
    let r = s.http.delete(s.url(&format!("/api/account/keys/{new_id}"))).header("X-API-Key", &key).send().unwrap();
    assert_eq!(r.status(), 204);
    error_of(s.get("/api/account", Some(new_key)), 401, "unauthorized");
    // A label that is not a string is a 400, not a 422 or 500.
    let r = s
        .http
        .post(s.url("/api/account/keys"))
        .header("X-API-Key", &key)
        .header("content-type", "application/json")
        .body("{\"label\": 5}")
        .send()
        .unwrap();
    error_of(r, 400, "bad_request");
}

fn admin_api_mirrors_cli(b: Backend) {
    let env = TestEnv::migrated(b);
    let s = env.serve();
    let r = s
        .admin(Method::POST, "/api/admin/accounts")
        .json(&serde_json::json!({"name": "acme", "quotas": {"max_notebook_sessions": 4}}))
        .send()
        .unwrap();
    let created = json_of(r, 201);
    assert_eq!(created["account"]["quotas"]["max_notebook_sessions"], 4);
    let key = created["api_key"].as_str().unwrap().to_string();
    assert_eq!(json_of(s.get("/api/account", Some(&key)), 200)["name"], "acme");

    let r = s.admin(Method::POST, "/api/admin/accounts").json(&serde_json::json!({"name": "acme"})).send().unwrap();
    error_of(r, 409, "conflict");

    let list = json_of(s.admin(Method::GET, "/api/admin/accounts").send().unwrap(), 200);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let r = s
        .admin(Method::PATCH, "/api/admin/accounts/acme")
        .json(&serde_json::json!({"max_concurrent_queries": 11, "max_notebook_sessions": null}))
        .send()
        .unwrap();
    let v = json_of(r, 200);
    assert_eq!(v["quotas"]["max_concurrent_queries"], 11);
    assert_eq!(v["quotas"]["max_notebook_sessions"], 2, "null resets to the default");

    let k = json_of(s.admin(Method::POST, "/api/admin/accounts/acme/keys").send().unwrap(), 201);
    let kid = k["id"].as_str().unwrap();
    assert_eq!(s.get("/api/account", Some(k["api_key"].as_str().unwrap())).status(), 200);
    assert_eq!(
        json_of(s.admin(Method::GET, "/api/admin/accounts/acme/keys").send().unwrap(), 200).as_array().unwrap().len(),
        2
    );
    let r = s.admin(Method::DELETE, &format!("/api/admin/accounts/acme/keys/{kid}")).send().unwrap();
    assert_eq!(r.status(), 204);
    error_of(s.get("/api/account", Some(k["api_key"].as_str().unwrap())), 401, "unauthorized");

    let r = s.admin(Method::DELETE, "/api/admin/accounts/acme").send().unwrap();
    assert_eq!(r.status(), 204);
    error_of(s.admin(Method::GET, "/api/admin/accounts/acme").send().unwrap(), 404, "not_found");
    error_of(s.get("/api/account", Some(&key)), 401, "unauthorized");
}

fn admin_api_bad_input(b: Backend) {
    let env = TestEnv::migrated(b);
    let s = env.serve();
    let post = || s.admin(Method::POST, "/api/admin/accounts");
    error_of(post().header("content-type", "application/json").body("{not json").send().unwrap(), 400, "bad_request");
    error_of(
        post().header("content-type", "text/plain").body("{\"name\":\"x\"}").send().unwrap(),
        415,
        "unsupported_media_type",
    );
    error_of(post().json(&serde_json::json!({"name": "x", "colour": "red"})).send().unwrap(), 400, "bad_request");
    error_of(post().json(&serde_json::json!({"name": "../etc"})).send().unwrap(), 400, "bad_request");
    error_of(
        post().json(&serde_json::json!({"name": "x", "quotas": {"max_concurrent_queries": 0}})).send().unwrap(),
        400,
        "bad_request",
    );
    error_of(
        post().json(&serde_json::json!({"name": "x", "quotas": {"max_storage_bytes": -5}})).send().unwrap(),
        400,
        "bad_request",
    );
    // Over server.max_request_body_bytes (1 MiB by default).
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    // (On its own connection: the server answers without reading the whole
    // body and closes that connection.)
    let r = reqwest::blocking::Client::new()
        .post(s.url("/api/admin/accounts"))
        .header("X-API-Key", ADMIN_KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    error_of(r, 413, "payload_too_large");
    error_of(s.admin(Method::GET, "/api/admin/accounts/Not%20Valid").send().unwrap(), 400, "bad_request");
    error_of(s.admin(Method::GET, "/api/admin/accounts/ghost").send().unwrap(), 404, "not_found");
    error_of(s.admin(Method::PUT, "/api/admin/accounts").send().unwrap(), 405, "method_not_allowed");
    error_of(s.get("/api/nothing-here", None), 404, "not_found");
    // Wrong admin key, and an account key used as admin key.
    let r = s.http.get(s.url("/api/admin/accounts")).header("X-API-Key", "wrong").send().unwrap();
    error_of(r, 401, "unauthorized");
    let r = s.http.get(s.url("/api/admin/accounts")).send().unwrap();
    error_of(r, 401, "unauthorized");
    // Nothing was created by any of the above.
    let list = json_of(s.admin(Method::GET, "/api/admin/accounts").send().unwrap(), 200);
    assert_eq!(list, serde_json::json!([]));
}

fn admin_api_disabled_without_key(b: Backend) {
    let env = TestEnv::migrated(b);
    let s = env.serve_with(|c| {
        c.env("DUCKPOND_SERVER__ADMIN_API_KEY", "");
    });
    let msg = error_of(s.admin(Method::GET, "/api/admin/accounts").send().unwrap(), 403, "forbidden");
    assert!(msg.contains("admin_api_key"), "{msg}");
}

/// An account key never reaches another account's data: each key resolves
/// to its own account only.
fn keys_resolve_to_their_own_account(b: Backend) {
    let env = TestEnv::migrated(b);
    let (a, ka) = env.create_account("alpha");
    let (bb, kb) = env.create_account("beta");
    let s = env.serve();
    assert_eq!(json_of(s.get("/api/account", Some(&ka)), 200)["id"], a["id"]);
    assert_eq!(json_of(s.get("/api/account", Some(&kb)), 200)["id"], bb["id"]);
    // Splicing one account's key id with the other's secret fails.
    let (ida, _) = ka.strip_prefix("dpk_").unwrap().split_once('_').unwrap();
    let (_, secb) = kb.strip_prefix("dpk_").unwrap().split_once('_').unwrap();
    error_of(s.get("/api/account", Some(&format!("dpk_{ida}_{secb}"))), 401, "unauthorized");
    // An account key is not an admin key.
    error_of(s.http.get(s.url("/api/admin/accounts")).header("X-API-Key", &ka).send().unwrap(), 401, "unauthorized");
}

fn serve_refuses_unmigrated_schema(b: Backend) {
    let env = TestEnv::new(b);
    let err = env.fails(&["api", "serve", "--port", "0"]);
    assert!(err.contains("duckpond db upgrade"), "{err}");
}

/// A schema written by a newer DuckPond (an unknown migration) is refused.
fn serve_refuses_newer_schema(b: Backend) {
    let env = TestEnv::migrated(b);
    let url = match b {
        Backend::Sqlite => format!("sqlite://{}", env.path().join("metadata.db").display()),
        Backend::Postgres => env.database_url.clone(),
    };
    // The checksum literal is the only part the two engines spell differently.
    let checksum = match b {
        Backend::Sqlite => "x'00'",
        Backend::Postgres => "'\\x00'::bytea",
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from the future', TRUE, {checksum}, 1)"
        ))
        .execute(&pool)
        .await
        .unwrap();
    });
    let err = env.fails(&["api", "serve", "--port", "0"]);
    assert!(err.contains("newer duckpond"), "{err}");
}

/// A missing extension binary stops the server at start with the file, the
/// directory and the command that fetches it.
fn serve_names_missing_extension(b: Backend) {
    let env = TestEnv::migrated(b);
    let empty = tempfile::tempdir().unwrap();
    let out = env
        .command()
        .args(["api", "serve", "--port", "0"])
        .env("DUCKPOND_DUCKDB__EXTENSION_DIRECTORY", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&empty.path().display().to_string()), "{err}");
    assert!(err.contains(".duckdb_extension") && err.contains("fetch-duckdb-extensions.sh"), "{err}");
}

/// SIGTERM drains requests, stops every account's compactor after a last
/// flush, and exits cleanly: an upload still sending its body when the
/// signal comes is answered 2xx, and every acknowledged row of every
/// account, none of them flushed before (the flush interval is ten
/// minutes), is in the lake an independent DuckDB reads after the exit.
fn sigterm_shuts_down_gracefully(b: Backend) {
    use std::io::Read;
    let env = TestEnv::migrated(b);
    env.write_config("compactor:\n  flush_interval_ms: 600000\n  flush_threshold_bytes: 1073741824\n");
    let accounts: Vec<(std::path::PathBuf, String)> = ["acme", "globex"]
        .iter()
        .map(|n| {
            let (a, key) = env.create_account(n);
            (env.path().join("data/accounts").join(a["id"].as_str().unwrap()), key)
        })
        .collect();
    let s = env.serve();
    let upload = |key: &str, body: reqwest::blocking::Body| {
        s.http
            .post(s.url("/api/datasets/t/upload"))
            .header("X-API-Key", key)
            .header("Content-Type", "text/csv")
            .body(body)
            .send()
            .unwrap()
    };
    for (_, key) in &accounts {
        let r = upload(key, "id\n1\n2\n".into());
        assert_eq!(r.status(), 202, "acknowledged, not committed yet");
    }
    /// A body sent in pieces, 200 ms apart; says when the first is out.
    struct Slow {
        parts: Vec<&'static [u8]>,
        started: Option<std::sync::mpsc::Sender<()>>,
    }
    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.parts.is_empty() {
                return Ok(0);
            }
            if let Some(tx) = self.started.take() {
                let _ = tx.send(());
            } else {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let part = self.parts.remove(0);
            buf[..part.len()].copy_from_slice(part);
            Ok(part.len())
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let in_flight = std::thread::scope(|scope| {
        let key = accounts[0].1.clone();
        let upload = &upload;
        let h = scope.spawn(move || {
            let body = Slow { parts: vec![b"id\n", b"3\n", b"4\n", b"5\n", b"6\n"], started: Some(tx) };
            upload(&key, reqwest::blocking::Body::new(body)).status().as_u16()
        });
        rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = s.pid();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        h.join().unwrap()
    });
    assert_eq!(in_flight, 202, "the request in flight at SIGTERM was not drained");
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    for (i, (root, _)) in accounts.iter().enumerate() {
        let expected = if i == 0 { json!([[6, 21]]) } else { json!([[2, 3]]) };
        assert_eq!(json!(common::lake_query(root, "SELECT count(*), sum(id) FROM t")), expected, "account {i}");
    }
}

/// The admin API's view of one account, and its deletion: the account's
/// directory (log, lake, catalog) goes, its key stops working, its name is
/// free again, and another account is untouched.
fn admin_get_and_delete_remove_data_and_catalog(b: Backend) {
    let env = TestEnv::migrated(b);
    let (acme, key) = env.create_account("acme");
    let (_, other) = env.create_account("globex");
    let s = env.serve();
    let root = env.path().join("data/accounts").join(acme["id"].as_str().unwrap());
    for k in [&key, &other] {
        let r = s
            .http
            .post(s.url("/api/datasets/t/upload?wait=committed"))
            .header("X-API-Key", k)
            .header("Content-Type", "text/csv")
            .body("id\n1\n")
            .send()
            .unwrap();
        json_of(r, 200);
    }
    assert!(root.join("catalog.sqlite").is_file() && root.join("data").is_dir() && root.join("wal").is_dir());
    let v = json_of(s.admin(Method::GET, "/api/admin/accounts/acme").send().unwrap(), 200);
    assert_eq!((v["name"].as_str(), v["id"].as_str()), (Some("acme"), acme["id"].as_str()), "{v}");
    assert!(v["quotas"].is_object(), "{v}");
    error_of(s.admin(Method::GET, "/api/admin/accounts/nobody").send().unwrap(), 404, "not_found");
    assert_eq!(s.admin(Method::DELETE, "/api/admin/accounts/acme").send().unwrap().status(), 204);
    assert!(!root.exists(), "the account's directory is still there");
    error_of(s.admin(Method::GET, "/api/admin/accounts/acme").send().unwrap(), 404, "not_found");
    error_of(s.get("/api/account", Some(&key)), 401, "unauthorized");
    let q = s
        .http
        .post(s.url("/api/query"))
        .header("X-API-Key", &other)
        .json(&json!({"sql": "SELECT count(*) FROM t"}))
        .send()
        .unwrap();
    assert_eq!(json_of(q, 200)["rows"], json!([[1]]));
    // The name can be taken again, with an empty lake.
    let v = json_of(s.admin(Method::POST, "/api/admin/accounts").json(&json!({"name": "acme"})).send().unwrap(), 201);
    assert_ne!(v["account"]["id"], acme["id"]);
}

/// A raw request: `head` then `body`, then silence; the status the daemon
/// answers with (0 if it only closed the connection) within `limit`.
fn stalled_request(s: &common::Server, head: &str, body: &[u8], limit: std::time::Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(limit)).unwrap();
    sock.write_all(head.replace("{addr}", &addr).as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

/// `server.request_timeout_ms` bounds a plain request (here: creating a
/// key) whose body stops coming, and `server.body_read_timeout_ms` an upload that stops sending:
/// both are a 408 with a JSON error, and the daemon serves on.
fn stalled_requests_get_408(b: Backend) {
    let env = TestEnv::migrated(b);
    let (_, key) = env.create_account("acme");
    let s = env.serve_with(|c| {
        c.env("DUCKPOND_SERVER__REQUEST_TIMEOUT_MS", "500").env("DUCKPOND_SERVER__BODY_READ_TIMEOUT_MS", "500");
    });
    let limit = std::time::Duration::from_secs(20);
    let t = std::time::Instant::now();
    let (status, text) = stalled_request(
        &s,
        &format!("POST /api/account/keys HTTP/1.1\r\nHost: {{addr}}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"),
        b"{\"label\": \"lap",
        limit,
    );
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    assert!(t.elapsed() < std::time::Duration::from_secs(15), "no 408 for a long time: {:?}", t.elapsed());
    let (status, text) = stalled_request(
        &s,
        &format!("POST /api/datasets/t/upload HTTP/1.1\r\nHost: {{addr}}\r\nX-API-Key: {key}\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"),
        b"5\r\nid\n1\n\r\n",
        limit,
    );
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    // Nothing of the stalled upload was kept, and the daemon answers (a
    // query: it has its own time limit, and the first open of the lake may
    // take longer than this test's 500 ms request limit).
    let r = s
        .http
        .post(s.url("/api/query"))
        .header("X-API-Key", &key)
        .json(&json!({"sql": "SELECT count(*) FROM information_schema.tables WHERE table_name = 't'"}))
        .send()
        .unwrap();
    assert_eq!(json_of(r, 200)["rows"], json!([[0]]));
}

/// `DUCKPOND_LOG_FORMAT=json`: every line the daemon logs is a JSON object
/// with a level and fields.
fn log_format_json(b: Backend) {
    let env = TestEnv::migrated(b);
    let (_, key) = env.create_account("acme");
    let s = env.serve_with(|c| {
        c.env("DUCKPOND_LOG_FORMAT", "json").env("DUCKPOND_LOG", "info");
    });
    assert_eq!(s.get("/api/account", Some(&key)).status(), 200);
    let _ = s.terminate();
    let mut logs: Vec<_> = std::fs::read_dir(env.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("server-"))
        .map(|e| e.path())
        .collect();
    logs.sort();
    let text = std::fs::read_to_string(logs.last().unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("/api/account")), "the request was not logged: {text}");
}

/// `server.shutdown_grace_period_ms` bounds the drain: an upload that
/// never finishes sending does not hold the daemon past it, and gets no
/// acknowledgement.
fn shutdown_grace_period_bounds_the_drain(b: Backend) {
    use std::io::Write;
    let env = TestEnv::migrated(b);
    let (_, key) = env.create_account("acme");
    let s = env.serve_with(|c| {
        c.env("DUCKPOND_SERVER__SHUTDOWN_GRACE_PERIOD_MS", "500");
    });
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "POST /api/datasets/t/upload HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nid\n1\n\r\n"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    let status = s.terminate();
    // 500 ms of grace, not the default 10 s (a generous bound for the exit).
    assert!(t.elapsed() < std::time::Duration::from_secs(4), "the drain outlived its grace: {:?}", t.elapsed());
    assert!(status.code().is_some(), "killed, not exited: {status:?}");
    use std::io::Read;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.starts_with("HTTP/1.1 2"), "the unfinished upload was acknowledged: {text}");
}

/// `/readyz` is a 503 while the metadata database refuses connections,
/// and 200 again once it accepts them.
#[test]
fn readyz_follows_the_metadata_database() {
    let env = TestEnv::migrated(Backend::Postgres);
    let s = env.serve();
    assert_eq!(s.get("/readyz", None).status(), 200);
    let db = env.database_url.rsplit('/').next().unwrap().to_string();
    let admin = std::env::var("DUCKPOND_TEST_POSTGRES_URL").unwrap();
    let sql = |stmt: String| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&stmt).execute(&mut c).await.unwrap();
        });
    };
    sql(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    sql(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"));
    let wait_for = |status: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = s.get("/readyz", None).status().as_u16();
            if got == status {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "/readyz stayed {got}, not {status}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    wait_for(503);
    // Liveness is not readiness: the process itself is fine.
    assert_eq!(s.get("/healthz", None).status(), 200);
    sql(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    wait_for(200);
}

both_backends!(
    admin_get_and_delete_remove_data_and_catalog,
    stalled_requests_get_408,
    log_format_json,
    shutdown_grace_period_bounds_the_drain,
    health_ready_metrics_openapi,
    account_endpoint_authenticates,
    bad_credentials_get_401,
    revoked_key_gets_401,
    self_service_keys,
    admin_api_mirrors_cli,
    admin_api_bad_input,
    admin_api_disabled_without_key,
    keys_resolve_to_their_own_account,
    serve_refuses_unmigrated_schema,
    serve_refuses_newer_schema,
    serve_names_missing_extension,
    sigterm_shuts_down_gracefully,
);

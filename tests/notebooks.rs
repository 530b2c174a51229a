//! Notebook sessions with a real marimo: the process backend (cgroup limits
//! where the host has them) and the Docker backend against a real dockerd.
//! Every session is reached only through DuckPond's proxy, over loopback.
//!
//! Environment (set by `make test`): DUCKPOND_TEST_NOTEBOOK_ENV (a venv with
//! marimo, duckdb and the ducklake extension, built by .ci/notebook-env.sh)
//! and, for the Docker tests, a running engine with the image
//! DUCKPOND_TEST_NOTEBOOK_IMAGE (built by .ci/notebook-image.sh).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kernel::Kernel;
use common::{error_of, json_of, Backend, Server, TestEnv};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn notebook_env() -> PathBuf {
    std::env::var_os("DUCKPOND_TEST_NOTEBOOK_ENV").map(PathBuf::from).expect(
        "DUCKPOND_TEST_NOTEBOOK_ENV is not set: run the suite with `make test` (it builds the notebook venv with .ci/notebook-env.sh)",
    )
}

fn notebook_image() -> String {
    std::env::var("DUCKPOND_TEST_NOTEBOOK_IMAGE").expect(
        "DUCKPOND_TEST_NOTEBOOK_IMAGE is not set: run the suite with `make test` (it starts dockerd and builds the image)",
    )
}

/// A home whose notebooks use `ports` and the given extra `notebooks:` keys.
fn env_with(ports: (u16, u16), notebooks_extra: &str, limits: &str) -> TestEnv {
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config(&format!(
        "notebooks:\n  python_env: {}\n  port_range: {}-{}\n  memory_limit_mb: 1024\n  stop_grace_period_ms: 1000\n{notebooks_extra}{limits}",
        notebook_env().display(),
        ports.0,
        ports.1
    ));
    env
}

fn post(server: &Server, path: &str, key: &str, body: Value) -> reqwest::blocking::Response {
    server.http.post(server.url(path)).header("X-API-Key", key).json(&body).send().unwrap()
}

fn create_notebook(server: &Server, key: &str, name: &str) -> String {
    let v = json_of(post(server, "/api/notebooks", key, json!({ "name": name })), 201);
    assert_eq!(v["session"]["state"], "stopped");
    v["id"].as_str().unwrap().to_string()
}

fn start(server: &Server, key: &str, id: &str) -> Value {
    let res = server
        .http
        .post(server.url(&format!("/api/notebooks/{id}/start?wait=true")))
        .header("X-API-Key", key)
        .timeout(READY_TIMEOUT)
        .send()
        .unwrap();
    json_of(res, 200)
}

fn start_ready(server: &Server, key: &str, id: &str) {
    let v = start(server, key, id);
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["url"], format!("/notebooks/{id}/"));
}

fn session(server: &Server, key: &str, id: &str) -> Value {
    json_of(server.get(&format!("/api/notebooks/{id}/session"), Some(key)), 200)
}

/// Polls the session until `pred` holds.
fn wait_session(server: &Server, key: &str, id: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = session(server, key, id);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "session never reached the expected state: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn upload_csv(server: &Server, key: &str, table: &str, csv: &str) {
    let res = server
        .http
        .post(server.url(&format!("/api/datasets/{table}/upload?wait=committed")))
        .header("X-API-Key", key)
        .header("Content-Type", "text/csv")
        .body(csv.to_string())
        .send()
        .unwrap();
    json_of(res, 200);
}

fn proxied_health(server: &Server, key: &str, id: &str) -> reqwest::blocking::Response {
    server.get(&format!("/notebooks/{id}/health"), Some(key))
}

/// Pids of processes whose command line serves notebook `id`.
fn marimo_pids(id: &str) -> Vec<i32> {
    let needle = format!("/notebooks/{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// The loopback port serving notebook `id`, found by asking each port of
/// the range (the API never shows it).
fn session_port(ports: (u16, u16), id: &str) -> u16 {
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build().unwrap();
    (ports.0..=ports.1)
        .find(|p| {
            http.get(format!("http://127.0.0.1:{p}/notebooks/{id}/health"))
                .send()
                .is_ok_and(|r| r.status().is_success())
        })
        .expect("a port serving the session")
}

fn kill9(pid: u32) {
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
}

#[test]
fn notebook_files_api_validates_and_isolates() {
    // A notebook cap well below the request body cap, so the 413 tested is
    // ours and not a connection the server cut mid-body.
    let env = env_with((20_000, 20_001), "  max_notebook_bytes: 100000\n", "");
    let (_, alice) = env.create_account("alice");
    let (_, bob) = env.create_account("bob");
    let server = env.serve();
    let id = create_notebook(&server, &alice, "report");
    let detail = json_of(server.get(&format!("/api/notebooks/{id}"), Some(&alice)), 200);
    assert!(detail["content"].as_str().unwrap().contains("READ_ONLY"), "the template attaches the lake read-only");
    assert!(detail["content"].as_str().unwrap().contains("with app.setup:"));
    // Names: duplicates (any case) 409, bad names 400, too large 413.
    error_of(post(&server, "/api/notebooks", &alice, json!({ "name": "REPORT" })), 409, "conflict");
    for bad in ["", "../x", "a/b", " x", "x\u{0}"] {
        error_of(post(&server, "/api/notebooks", &alice, json!({ "name": bad })), 400, "bad_request");
    }
    let big = "x".repeat(200_000);
    error_of(
        post(&server, "/api/notebooks", &alice, json!({ "name": "big", "content": big })),
        413,
        "payload_too_large",
    );
    // Path tricks in ids are 400 before touching the disk.
    for bad in ["..%2F..%2Fetc", "0123456789ABCDEF", "zzzzzzzzzzzzzzzz", "abc"] {
        error_of(server.get(&format!("/api/notebooks/{bad}"), Some(&alice)), 400, "bad_request");
    }
    // Rename and replace content; the listing shows it.
    let res = server
        .http
        .put(server.url(&format!("/api/notebooks/{id}")))
        .header("X-API-Key", &alice)
        .json(&json!({ "name": "Report 2026", "content": "import marimo\napp = marimo.App()\n" }))
        .send()
        .unwrap();
    assert_eq!(json_of(res, 200)["name"], "Report 2026");
    let list = json_of(server.get("/api/notebooks", Some(&alice)), 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["session"]["state"], "stopped");
    // Bob sees none of it and can touch none of it.
    assert_eq!(json_of(server.get("/api/notebooks", Some(&bob)), 200), json!([]));
    error_of(server.get(&format!("/api/notebooks/{id}"), Some(&bob)), 404, "not_found");
    let put = server
        .http
        .put(server.url(&format!("/api/notebooks/{id}")))
        .header("X-API-Key", &bob)
        .json(&json!({ "content": "pwned" }))
        .send()
        .unwrap();
    error_of(put, 404, "not_found");
    error_of(post(&server, &format!("/api/notebooks/{id}/start"), &bob, json!({})), 404, "not_found");
    error_of(post(&server, &format!("/api/notebooks/{id}/stop"), &bob, json!({})), 404, "not_found");
    error_of(server.get(&format!("/api/notebooks/{id}/session"), Some(&bob)), 404, "not_found");
    let del = server.http.delete(server.url(&format!("/api/notebooks/{id}"))).header("X-API-Key", &bob).send().unwrap();
    error_of(del, 404, "not_found");
    error_of(server.get("/api/notebooks", None), 401, "unauthorized");
    // Alice deletes it: gone from disk too.
    let del =
        server.http.delete(server.url(&format!("/api/notebooks/{id}"))).header("X-API-Key", &alice).send().unwrap();
    assert_eq!(del.status(), 204);
    error_of(server.get(&format!("/api/notebooks/{id}"), Some(&alice)), 404, "not_found");
}

#[test]
fn process_session_runs_a_cell_over_the_proxied_websocket() {
    let ports = (20_010, 20_012);
    let env = env_with(ports, "", "");
    let (account, key) = env.create_account("alice");
    // The daemon gets its secrets from its environment here (the harness
    // otherwise passes them through config.yaml), plus a canary any
    // inherited environment would carry.
    const CANARY: &str = "canary-secret-5f0c2e7d9a";
    let server = env.serve_with(|c| {
        c.env("DUCKPOND_SERVER__ADMIN_API_KEY", common::ADMIN_KEY)
            .env("DUCKPOND_DATABASE__URL", &env.database_url)
            .env("AWS_SECRET_ACCESS_KEY", CANARY);
    });
    let daemon_env = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    let daemon_env = String::from_utf8_lossy(&daemon_env);
    assert!(daemon_env.contains(CANARY) && daemon_env.contains(common::ADMIN_KEY), "the daemon lacks the secrets");
    upload_csv(&server, &key, "sales", "region,amount\neu,1\nus,2\n");
    let id = create_notebook(&server, &key, "analysis");
    start_ready(&server, &key, &id);
    let account_view = json_of(server.get("/api/account", Some(&key)), 200);
    assert_eq!(account_view["usage"]["notebook_sessions"], 1);

    // Proxied health; marimo's own auth is satisfied by the proxy.
    let res = proxied_health(&server, &key, &id);
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().unwrap()["status"], "healthy");
    // Straight to marimo without its token: refused by marimo.
    let port = session_port(ports, &id);
    let direct = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let res = direct.get(format!("http://127.0.0.1:{port}/notebooks/{id}/api/status/connections")).send().unwrap();
    assert!(res.status() == 401 || res.status() == 403 || res.status().is_redirection(), "{}", res.status());
    // The session does not see the daemon's environment (admin key, DB URL).
    let mut kernel = Kernel::open(&server.url, &server.http, &key, &id);
    let out = kernel.eval("duckdb.sql('SELECT sum(amount) * 1000 + 7 FROM sales').fetchone()[0]");
    assert!(out.contains("3007"), "{out}");
    let leaked = kernel.eval(&format!(
        "sorted(k for k, v in os.environ.items() if k in ('DUCKPOND_SERVER__ADMIN_API_KEY', 'DUCKPOND_DATABASE__URL', \
         'AWS_SECRET_ACCESS_KEY', 'DUCKPOND_HOME', 'DUCKPOND_STORAGE__RESERVE_BYTES') \
         or any(s in v for s in ({CANARY:?}, {:?}, {:?})))",
        common::ADMIN_KEY,
        env.database_url
    ));
    assert!(leaked.contains("[]"), "daemon secrets leaked into the session: {leaked}");
    assert!(kernel.eval("len(os.environ)").trim_matches(|c: char| !c.is_ascii_digit()).parse::<u32>().unwrap() > 0);
    // The lake is read-only from the notebook.
    let err = kernel
        .try_eval("duckdb.sql('INSERT INTO sales VALUES (\\'x\\', 9)')")
        .expect_err("a notebook wrote to the lake");
    assert!(err.contains("read-only"), "refused for another reason: {err}");
    drop(kernel);

    let v = json_of(post(&server, &format!("/api/notebooks/{id}/stop"), &key, json!({})), 200);
    assert_eq!(v["state"], "stopped");
    error_of(proxied_health(&server, &key, &id), 409, "conflict");
    assert!(marimo_pids(&id).is_empty(), "marimo still runs after stop");
    let _ = account;
}

#[test]
fn idle_sessions_are_culled_but_open_editors_are_not() {
    let env = env_with((20_020, 20_021), "  session_timeout_seconds: 3\n  health_check_interval_seconds: 1\n", "");
    let (_, key) = env.create_account("alice");
    let server = env.serve();
    let id = create_notebook(&server, &key, "idle");
    start_ready(&server, &key, &id);
    // An open editor websocket keeps it alive well past the timeout.
    let kernel = Kernel::open(&server.url, &server.http, &key, &id);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(session(&server, &key, &id)["state"], "ready");
    drop(kernel);
    let v = wait_session(&server, &key, &id, Duration::from_secs(20), |v| v["state"] == "stopped");
    assert!(v["reason"].as_str().unwrap().contains("without activity"), "{v}");
    assert!(marimo_pids(&id).is_empty(), "a culled session still runs");
}

#[test]
fn a_crashed_marimo_is_marked_failed_and_can_restart() {
    let env = env_with((20_030, 20_031), "  health_check_interval_seconds: 1\n", "");
    let (_, key) = env.create_account("alice");
    let server = env.serve();
    let id = create_notebook(&server, &key, "crashy");
    start_ready(&server, &key, &id);
    let pids = marimo_pids(&id);
    assert!(!pids.is_empty());
    for pid in pids {
        kill9(pid as u32);
    }
    let v = wait_session(&server, &key, &id, Duration::from_secs(20), |v| v["state"] == "failed");
    assert!(v["reason"].as_str().unwrap().contains("exited"), "{v}");
    error_of(proxied_health(&server, &key, &id), 409, "conflict");
    // Its port was freed: a restart (on a two-port range) works.
    start_ready(&server, &key, &id);
    assert_eq!(proxied_health(&server, &key, &id).status(), 200);
}

#[test]
fn session_caps_and_port_exhaustion_are_clear_errors() {
    // Two ports; one session per account.
    let env = env_with((20_040, 20_041), "", "limits:\n  default_max_notebook_sessions: 1\n");
    let (_, alice) = env.create_account("alice");
    let (_, bob) = env.create_account("bob");
    let (_, carol) = env.create_account("carol");
    let server = env.serve();
    let a1 = create_notebook(&server, &alice, "one");
    let a2 = create_notebook(&server, &alice, "two");
    let b1 = create_notebook(&server, &bob, "one");
    let c1 = create_notebook(&server, &carol, "one");
    start_ready(&server, &alice, &a1);
    // Starting a live session again is not a second session.
    assert_eq!(start(&server, &alice, &a1)["state"], "ready");
    let res = post(&server, &format!("/api/notebooks/{a2}/start"), &alice, json!({}));
    assert!(res.headers().get("retry-after").is_some());
    let msg = error_of(res, 429, "too_many_requests");
    assert!(msg.contains("max_notebook_sessions"), "{msg}");
    start_ready(&server, &bob, &b1);
    let res = post(&server, &format!("/api/notebooks/{c1}/start"), &carol, json!({}));
    assert!(res.headers().get("retry-after").is_some());
    let msg = error_of(res, 503, "unavailable");
    assert!(msg.contains("notebooks.port_range"), "{msg}");
    // A stop frees both the account's slot and the port.
    json_of(post(&server, &format!("/api/notebooks/{a1}/stop"), &alice, json!({})), 200);
    start_ready(&server, &carol, &c1);
}

#[test]
fn one_account_cannot_reach_another_accounts_session() {
    let ports = (20_050, 20_051);
    let env = env_with(ports, "", "");
    let (_, alice) = env.create_account("alice");
    let (_, bob) = env.create_account("bob");
    let server = env.serve();
    let id = create_notebook(&server, &alice, "secret");
    start_ready(&server, &alice, &id);
    // Through the proxy with bob's key: 404, as the API answers for a
    // notebook bob does not have (the same as for one that does not exist).
    let msg = error_of(proxied_health(&server, &bob, &id), 404, "not_found");
    assert!(!msg.contains("alice"), "{msg}");
    error_of(server.get(&format!("/notebooks/{id}/"), Some(&bob)), 404, "not_found");
    // Without a key, with a wrong key.
    error_of(proxied_health(&server, "", &id), 401, "unauthorized");
    error_of(server.get(&format!("/notebooks/{id}/health"), None), 401, "unauthorized");
    // Bob's websocket is refused before any upgrade.
    let ws_url = format!("{}/notebooks/{id}/ws?session_id=x", server.url.replace("http://", "ws://"));
    let mut req = ws_url.clone().into_client_request().unwrap();
    req.headers_mut().insert("X-API-Key", bob.parse().unwrap());
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 404),
        other => panic!("bob's websocket was not refused: {:?}", other.map(|(_, r)| r.status())),
    }
    // A cross-site websocket carrying alice's credentials is refused too.
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert("X-API-Key", alice.parse().unwrap());
    req.headers_mut().insert("Origin", "http://evil.example".parse().unwrap());
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("cross-origin websocket accepted: {:?}", other.map(|(_, r)| r.status())),
    }
    // Alice's key never reaches marimo, and marimo's cookie never reaches
    // the browser.
    let res = server.get(&format!("/notebooks/{id}/"), Some(&alice));
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("set-cookie").is_none());
    // Directly on the port, without marimo's token: refused.
    let port = session_port(ports, &id);
    let direct = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let res = direct
        .get(format!("http://127.0.0.1:{port}/notebooks/{id}/api/status/connections"))
        .header("Authorization", format!("Bearer {bob}"))
        .send()
        .unwrap();
    assert!(!res.status().is_success(), "marimo accepted bob's DuckPond key: {}", res.status());
    // The token is not on marimo's command line (it came on stdin), in
    // either spelling (`--token-password TOKEN`, `--token-password=TOKEN`).
    let pids = marimo_pids(&id);
    assert!(!pids.is_empty(), "no marimo process to look at");
    for pid in pids {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&str> = cmdline.split('\0').collect();
        assert!(
            !args.iter().any(|a| *a == "--token-password" || a.starts_with("--token-password=")),
            "token on the command line: {cmdline:?}"
        );
        assert!(args.iter().any(|a| a.contains("marimo")), "not marimo: {cmdline:?}");
    }
    // Deleting bob's account does not touch alice's session.
    let res = server.admin(reqwest::Method::DELETE, "/api/admin/accounts/bob").send().unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(proxied_health(&server, &alice, &id).status(), 200);
}

#[test]
fn orphans_of_a_killed_daemon_are_removed_at_start() {
    let env = env_with((20_060, 20_061), "", "");
    let (_, key) = env.create_account("alice");
    let server = env.serve();
    let id = create_notebook(&server, &key, "orphan");
    start_ready(&server, &key, &id);
    let pids = marimo_pids(&id);
    assert!(!pids.is_empty());
    kill9(server.pid());
    drop(server);
    std::thread::sleep(Duration::from_millis(500));
    assert!(pids.iter().any(|&p| alive(p)), "marimo died with the daemon: nothing to sweep");
    let server = env.serve();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "orphaned marimo {pids:?} still runs after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The notebook starts again on the same ports.
    assert_eq!(session(&server, &key, &id)["state"], "stopped");
    start_ready(&server, &key, &id);
}

#[test]
fn a_cell_past_the_memory_limit_kills_only_its_own_session() {
    let env = env_with((20_070, 20_072), "  health_check_interval_seconds: 1\n  memory_limit_mb: 600\n", "");
    let (_, alice) = env.create_account("alice");
    let (_, bob) = env.create_account("bob");
    let server = env.serve();
    let greedy = create_notebook(&server, &alice, "greedy");
    let calm = create_notebook(&server, &bob, "calm");
    start_ready(&server, &alice, &greedy);
    start_ready(&server, &bob, &calm);
    let mut kernel = Kernel::open(&server.url, &server.http, &alice, &greedy);
    // 2 GiB, every page written.
    kernel.run(&[("hog", "_hog = b'x' * (2 * 1024 * 1024 * 1024)")]);
    let v = wait_session(&server, &alice, &greedy, Duration::from_secs(60), |v| v["state"] == "failed");
    assert!(v["reason"].as_str().unwrap().contains("out of memory"), "{v}");
    assert!(marimo_pids(&greedy).is_empty(), "the failed session was not cleaned up");
    // Bob's session and the daemon are untouched.
    assert_eq!(session(&server, &bob, &calm)["state"], "ready");
    assert_eq!(proxied_health(&server, &bob, &calm).status(), 200);
    assert_eq!(server.get("/healthz", None).status(), 200);
}

// ---- Docker backend ----

fn docker_env(ports: (u16, u16), extra: &str) -> TestEnv {
    env_with(ports, &format!("  backend: docker\n  docker_image: {}\n{extra}", notebook_image()), "")
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("running docker");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn containers_of(id: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label=duckpond.notebook={id}")]).lines().map(String::from).collect()
}

#[test]
fn docker_session_is_limited_isolated_and_removed() {
    let env = docker_env(
        (20_080, 20_081),
        "  memory_limit_mb: 700\n  health_check_interval_seconds: 1\n  pids_limit: 123\n  cpu_limit: 0.75\n  shm_size_mb: 48\n",
    );
    let (account, key) = env.create_account("alice");
    let server = env.serve();
    upload_csv(&server, &key, "sales", "region,amount\neu,1\nus,2\n");
    let id = create_notebook(&server, &key, "in a box");
    start_ready(&server, &key, &id);
    let containers = containers_of(&id);
    assert_eq!(containers.len(), 1);
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &containers[0]])).unwrap();
    let c = &inspect[0];
    assert_eq!(c["Config"]["Labels"]["duckpond.account"], account["id"]);
    assert_eq!(c["HostConfig"]["Memory"], 700 * 1024 * 1024);
    assert_eq!(c["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(c["HostConfig"]["NetworkMode"], "none");
    // Each limit the README promises, at its configured value.
    let host = &c["HostConfig"];
    assert_eq!(host["PidsLimit"], 123);
    assert_eq!(host["CpuQuota"].as_i64().unwrap() * 100 / host["CpuPeriod"].as_i64().unwrap(), 75, "{host}");
    assert_eq!(host["MemorySwap"], host["Memory"], "swap allowed");
    assert_eq!(host["ShmSize"], 48 * 1024 * 1024);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert!(host["CapAdd"].is_null() || host["CapAdd"] == json!([]), "{}", host["CapAdd"]);
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges"]));
    assert!(host["Tmpfs"]["/tmp"].is_string(), "no tmpfs /tmp: {}", host["Tmpfs"]);
    assert_eq!(host["Privileged"], false);
    assert!(c["Config"]["User"].as_str().unwrap() != "", "runs as root");
    let cmd: Vec<String> = serde_json::from_value(c["Config"]["Cmd"].clone()).unwrap();
    assert!(!cmd.is_empty());
    assert!(
        !cmd.iter().any(|a| a == "--token-password" || a.starts_with("--token-password=")),
        "token on the command line: {cmd:?}"
    );
    let binds = c["HostConfig"]["Binds"].to_string();
    assert!(binds.contains(":/lake:ro"), "{binds}");

    // The kernel reads the account's lake through the read-only mount and
    // can write neither the lake nor the image.
    let mut kernel = Kernel::open(&server.url, &server.http, &key, &id);
    let out = kernel.eval("duckdb.sql('SELECT sum(amount) * 1000 + 7 FROM sales').fetchone()[0]");
    assert!(out.contains("3007"), "{out}");
    for path in ["/lake/data/evil.parquet", "/opt/nb/evil"] {
        let err = kernel.try_eval(&format!("open('{path}', 'w')")).expect_err(path);
        assert!(err.contains("Read-only file system"), "{path} refused for another reason: {err}");
    }
    // As the kernel itself sees it: no capabilities, no new privileges,
    // /tmp a tmpfs, /dev/shm of the configured size.
    let status = kernel.eval("[l for l in open('/proc/self/status').read().splitlines() if l.startswith(('CapEff', 'CapBnd', 'NoNewPrivs'))]");
    for want in ["CapEff:\\t0000000000000000", "CapBnd:\\t0000000000000000", "NoNewPrivs:\\t1"] {
        assert!(status.contains(want), "{want} not in {status}");
    }
    let mounts = kernel
        .eval("[l for l in open('/proc/self/mounts').read().splitlines() if l.split()[1] in ('/tmp', '/dev/shm')]");
    assert!(mounts.contains("tmpfs /tmp tmpfs"), "{mounts}");
    assert!(mounts.contains("/dev/shm") && mounts.contains("size=49152k"), "{mounts}");
    // Past its memory cap the session fails with a reason; the container goes.
    kernel.run(&[("hog", "_hog = b'x' * (2 * 1024 * 1024 * 1024)")]);
    let v = wait_session(&server, &key, &id, Duration::from_secs(60), |v| v["state"] == "failed");
    assert!(v["reason"].as_str().unwrap().contains("out of memory"), "{v}");
    drop(kernel);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !containers_of(&id).is_empty() {
        assert!(Instant::now() < deadline, "failed session's container not removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A fresh start, then an explicit stop removes the container.
    start_ready(&server, &key, &id);
    assert_eq!(proxied_health(&server, &key, &id).status(), 200);
    json_of(post(&server, &format!("/api/notebooks/{id}/stop"), &key, json!({})), 200);
    assert!(containers_of(&id).is_empty(), "container left after stop");
}

#[test]
fn docker_orphans_of_a_killed_daemon_are_removed_at_start() {
    let env = docker_env((20_090, 20_091), "");
    let (_, key) = env.create_account("alice");
    let server = env.serve();
    let id = create_notebook(&server, &key, "orphan");
    start_ready(&server, &key, &id);
    assert_eq!(containers_of(&id).len(), 1);
    kill9(server.pid());
    drop(server);
    assert_eq!(containers_of(&id).len(), 1, "the container should outlive a kill -9 of the daemon");
    let server = env.serve();
    assert!(containers_of(&id).is_empty(), "orphaned container survived the restart");
    start_ready(&server, &key, &id);
    // Graceful shutdown removes it too.
    server.terminate();
    assert!(containers_of(&id).is_empty(), "container left after shutdown");
}

// ---- Attacks from inside a session (issue 18) ----
//
// Mallory's notebook session tries to reach what is not hers: Alice's
// lake, the daemon's metadata database, configuration, memory and
// environment, other sessions' files, and the loopback services. Each
// attempt is its own test, on both backends. One daemon and one session
// per backend serve them all.

struct Attack {
    shared: common::Shared,
    kernel: std::sync::Mutex<Kernel>,
    alice_root: PathBuf,
    mallory_root: PathBuf,
    /// The host port of another account's running session.
    neighbour_port: u16,
}

fn attack_on(backend: &str) -> &'static Attack {
    static PROCESS: std::sync::OnceLock<Attack> = std::sync::OnceLock::new();
    static DOCKER: std::sync::OnceLock<Attack> = std::sync::OnceLock::new();
    // Three ports: Mallory's session, a neighbour's, a read-only view.
    let (cell, ports, extra) = match backend {
        "process" => (&PROCESS, (20_110, 20_112), String::new()),
        _ => (&DOCKER, (20_120, 20_122), format!("  backend: docker\n  docker_image: {}\n", notebook_image())),
    };
    cell.get_or_init(|| {
        // Shared: the daemon dies with the test process (statics are never dropped).
        let shared = common::Shared::start(env_with(ports, &extra, ""));
        let (alice_key, alice_root) = shared.account("alice");
        let (mallory, mallory_root) = shared.account("mallory");
        let server = &shared.server;
        upload_csv(server, &alice_key, "secrets", "s\nalice-only\n");
        upload_csv(server, &mallory, "mine", "m\n1\n");
        // Alice's session runs too: its port must be out of Mallory's reach.
        let neighbour = create_notebook(server, &alice_key, "neighbour");
        start_ready(server, &alice_key, &neighbour);
        let neighbour_port = session_port(ports, &neighbour);
        let id = create_notebook(server, &mallory, "attack");
        start_ready(server, &mallory, &id);
        let kernel = Kernel::open(&server.url, &server.http, &mallory, &id);
        Attack { shared, kernel: std::sync::Mutex::new(kernel), alice_root, mallory_root, neighbour_port }
    })
}

/// Runs `code` in Mallory's session; Ok with its output if it succeeded.
fn attempt(backend: &str, code: &str) -> Result<String, String> {
    let a = attack_on(backend);
    a.kernel.lock().unwrap_or_else(|e| e.into_inner()).try_eval(code)
}

/// Runs the expression `code` in Mallory's session and checks it failed
/// with one of `kinds`: an exception class name (`PermissionError`) or a
/// class and errno (`OSError:30`). Any other outcome fails the test: an
/// attempt that succeeded, and one that failed for an unrelated reason (a
/// typo, a missing variable), which would prove nothing.
fn refused(backend: &str, what: &str, code: &str, kinds: &[&str]) {
    let probe = format!(
        "try:\n    _r = 'PROBE-OK ' + repr({code})[:200]\nexcept Exception as _e:\n    \
         _r = f'PROBE-ERR:{{type(_e).__name__}}:{{getattr(_e, \"errno\", None)}}: {{str(_e)[:300]}}'\n_r"
    );
    let out = attempt(backend, &probe).unwrap_or_else(|e| panic!("{backend}: {what}: the probe itself failed: {e}"));
    let Some(at) = out.find("PROBE-ERR:") else { panic!("{backend}: {what} succeeded: {out}") };
    let got: String = out[at + "PROBE-ERR:".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == ':' || *c == '_')
        .collect();
    let mut parts = got.splitn(3, ':');
    let (class, errno) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    // A kind is `Class`, `Class:errno`, or `Class~words of its message`.
    let matches = kinds.iter().any(|k| match (k.split_once('~'), k.split_once(':')) {
        (Some((c, words)), _) => c == class && out[at..].contains(words),
        (None, Some((c, n))) => c == class && n == errno,
        (None, None) => *k == class,
    });
    assert!(matches, "{backend}: {what} failed with {}, not one of {kinds:?}", &out[at..out.len().min(at + 400)]);
}

/// File access the sandbox hides or forbids.
const NO_FILE: &[&str] = &["PermissionError", "FileNotFoundError"];
/// Writes the sandbox forbids (read-only mount: EROFS).
const NO_WRITE: &[&str] = &["PermissionError", "FileNotFoundError", "OSError:30"];
/// A loopback service no one listens on inside the session's namespace.
const NO_SERVICE: &[&str] = &["ConnectionRefusedError"];

fn py(s: &std::path::Path) -> String {
    format!("{:?}", s.display().to_string())
}

macro_rules! attacks {
    ($($name:ident: |$b:ident| $body:block)*) => {
        mod attacks_process { use super::*; $(#[test] fn $name() { let $b = "process"; $body })* }
        mod attacks_docker { use super::*; $(#[test] fn $name() { let $b = "docker"; $body })* }
    };
}

attacks! {
    session_reads_its_own_lake_and_writes_its_own_notebook: |b| {
        let out = attempt(b, "duckdb.sql('SELECT sum(m) * 1000 + 7 FROM mine').fetchone()[0]").unwrap();
        assert!(out.contains("1007"), "{out}");
        attempt(b, "open('notebook.py', 'a').close() or 'ok'").unwrap();
    }
    cannot_read_another_accounts_lake: |b| {
        let a = attack_on(b);
        // Each target exists on the host: a refusal is the sandbox's doing.
        assert!(a.alice_root.join("catalog.sqlite").is_file() && a.alice_root.join("data").is_dir());
        refused(b, "reading Alice's catalog", &format!("open({}, 'rb').read(16)", py(&a.alice_root.join("catalog.sqlite"))), NO_FILE);
        refused(b, "listing Alice's data", &format!("__import__('os').listdir({})", py(&a.alice_root.join("data"))), NO_FILE);
        refused(b, "attaching Alice's lake", &format!("duckdb.sql(\"ATTACH 'ducklake:sqlite:{}' AS a (READ_ONLY)\")", a.alice_root.join("catalog.sqlite").display()), &["Error~unable to open database file"]);
    }
    nothing_of_other_accounts_or_the_daemon_is_mounted: |b| {
        // Host paths may simply not exist inside a container: the mount
        // table says what the session can see at all. Its own lake is
        // there (so the check can see mounts), nothing else of the home.
        let a = attack_on(b);
        let mounts = attempt(b, "open('/proc/self/mountinfo').read()").unwrap();
        let own = a.mallory_root.file_name().unwrap().to_str().unwrap();
        let alice = a.alice_root.file_name().unwrap().to_str().unwrap();
        assert!(mounts.contains(own), "{b}: its own account is not in the mount table: {mounts}");
        for (what, needle) in [("Alice's account", alice), ("the metadata database", "metadata.db"), ("the configuration", "config.yaml")] {
            assert!(!mounts.contains(needle), "{b}: {what} is mounted in the session: {mounts}");
        }
        // Of the sessions' run directory, only files of its own session
        // (hosts, home, token): one session id, never the directory itself.
        let sessions: std::collections::BTreeSet<&str> = mounts
            .split("\\n")
            .filter_map(|line| line.split_whitespace().nth(3))
            .filter_map(|source| source.split_once("/run/notebooks/sessions").map(|(_, rest)| rest))
            .map(|rest| rest.trim_start_matches('/').split('/').next().unwrap_or_default())
            .collect();
        assert!(sessions.len() == 1 && !sessions.contains(""), "{b}: sessions' files mounted: {sessions:?}");
    }
    cannot_write_another_accounts_directory: |b| {
        let a = attack_on(b);
        assert!(a.alice_root.join("wal").is_dir());
        refused(b, "writing into Alice's directory", &format!("open({}, 'w').write('x')", py(&a.alice_root.join("wal").join("evil"))), NO_WRITE);
        assert!(!a.alice_root.join("wal").join("evil").exists());
    }
    cannot_write_its_own_lake: |b| {
        let a = attack_on(b);
        refused(b, "writing its own lake", "open('/lake/data/evil', 'w') if __import__('os').path.isdir('/lake') else open(__import__('os').environ['DUCKPOND_DATA_PATH'] + 'evil', 'w')", NO_WRITE);
        assert!(!a.mallory_root.join("data").join("evil").exists());
    }
    cannot_read_the_metadata_database_or_configuration: |b| {
        let a = attack_on(b);
        assert!(a.shared.env.path().join("metadata.db").is_file() && a.shared.env.path().join("config.yaml").is_file());
        refused(b, "reading the metadata database", &format!("open({}, 'rb').read(16)", py(&a.shared.env.path().join("metadata.db"))), NO_FILE);
        refused(b, "reading the configuration", &format!("open({}).read()", py(&a.shared.env.path().join("config.yaml"))), NO_FILE);
    }
    cannot_read_the_daemons_memory_or_environment: |b| {
        let a = attack_on(b);
        let pid = a.shared.server.pid();
        refused(b, "reading the daemon's environment", &format!("open('/proc/{pid}/environ', 'rb').read()"), NO_FILE);
        refused(b, "reading the daemon's memory map", &format!("open('/proc/{pid}/maps').read()"), NO_FILE);
        // Nothing of the daemon is even visible.
        let out = attempt(b, "sorted(p for p in __import__('os').listdir('/proc') if p.isdigit())").unwrap();
        assert!(!out.contains(&format!("'{pid}'")), "{b}: the daemon's pid is visible: {out}");
    }
    cannot_read_other_sessions_files: |b| {
        let a = attack_on(b);
        let run = a.shared.env.path().join("data").join("run").join("notebooks").join("sessions");
        if b == "process" {
            assert!(run.is_dir(), "the process backend keeps its sessions in {}", run.display());
        }
        refused(b, "listing the sessions' run directory", &format!("__import__('os').listdir({})", py(&run)), NO_FILE);
    }
    cannot_connect_to_postgresql: |b| {
        // The suite's PostgreSQL listens on the host (checked first).
        let url = std::env::var("DUCKPOND_TEST_POSTGRES_URL").unwrap_or_default();
        let port: u16 = url.rsplit(':').next().and_then(|r| r.split('/').next()).and_then(|p| p.parse().ok()).unwrap_or(5432);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "PostgreSQL is not listening on {port}");
        refused(b, "connecting to PostgreSQL", &format!("__import__('socket').create_connection(('127.0.0.1', {port}), timeout=2)"), NO_SERVICE);
    }
    cannot_connect_to_the_api: |b| {
        let a = attack_on(b);
        let port: u16 = a.shared.server.url.rsplit(':').next().unwrap().parse().unwrap();
        refused(b, "connecting to DuckPond's API", &format!("__import__('socket').create_connection(('127.0.0.1', {port}), timeout=2)"), NO_SERVICE);
    }
    a_read_key_opens_the_notebook_read_only: |b| {
        let a = attack_on(b);
        let server = &a.shared.server;
        let (owner, root) = a.shared.account("viewer");
        // A notebook whose one cell tries to change its own directory.
        let content = "import marimo\n\napp = marimo.App()\n\n\n@app.cell\ndef _():\n    try:\n        \
            open('written-by-view.txt', 'w').close()\n        outcome = 'VIEW-WROTE'\n    except OSError as e:\n        \
            outcome = f'VIEW-REFUSED-{e.errno}'\n    outcome\n    return\n\n\nif __name__ == \"__main__\":\n    app.run()\n";
        let v = json_of(post(server, "/api/notebooks", &owner, json!({"name": "report", "content": content})), 201);
        let id = v["id"].as_str().unwrap().to_string();
        let reader = json_of(post(server, "/api/account/keys", &owner, json!({"scope": "read"})), 201)["api_key"]
            .as_str()
            .unwrap()
            .to_string();
        // The editor is refused to a read key, at the start and the proxy.
        let r = post(server, &format!("/api/notebooks/{id}/start?mode=edit"), &reader, json!({}));
        assert!(error_of(r, 403, "forbidden").contains("mode=view"));
        error_of(server.get(&format!("/notebooks/{id}/"), Some(&reader)), 403, "forbidden");
        // Its own mode is the read-only view.
        let v = start(server, &reader, &id);
        assert_eq!((&v["state"], &v["mode"]), (&json!("ready"), &json!("view")), "{v}");
        assert_eq!(v["url"], format!("/notebooks/view/{id}/"));
        let page = server.get(&format!("/notebooks/view/{id}/"), Some(&reader));
        assert_eq!(page.status(), 200);
        // marimo's page names the notebook's file: never a server path.
        let home = a.shared.env.path().display().to_string();
        assert!(!page.text().unwrap().contains(&home), "{b}: the view page names a server path");
        // marimo run executes the app for a connected client; the cell's
        // output says what its write did.
        let ws_url = format!("{}/notebooks/view/{id}/ws?session_id=view-{b}", server.url.replace("http://", "ws://"));
        let mut req = ws_url.into_client_request().unwrap();
        req.headers_mut().insert("X-API-Key", reader.parse().unwrap());
        let (mut ws, res) = tungstenite::connect(req).expect("websocket through the proxy");
        assert_eq!(res.status(), 101);
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let outcome = loop {
            assert!(Instant::now() < deadline, "{b}: the view never showed the cell's output");
            if let Ok(tungstenite::Message::Text(t)) = ws.read() {
                if let Some(i) = t.as_str().find("VIEW-") {
                    break t.as_str()[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>();
                }
            }
        };
        assert_eq!(outcome, "VIEW-REFUSED-30", "{b}: the view session could write its notebook's directory");
        assert!(!root.join("notebooks").join(&id).join("written-by-view.txt").exists());
        drop(ws);
        let r = post(server, &format!("/api/notebooks/{id}/stop"), &reader, json!({}));
        assert_eq!(json_of(r, 200)["mode"], "view");
    }
    cannot_connect_to_other_sessions_ports: |b| {
        // Alice's session answers on its host port (checked first).
        let port = attack_on(b).neighbour_port;
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "the neighbour's session is not listening");
        refused(b, "connecting to another session's port", &format!("__import__('socket').create_connection(('127.0.0.1', {port}), timeout=2)"), NO_SERVICE);
        // No route out at all (the host has one: it would time out there).
        refused(b, "connecting to the host's addresses", "__import__('socket').create_connection(('10.0.0.1', 80), timeout=2)", &["OSError:101"]);
    }
}

#[test]
fn a_revoked_key_closes_the_websocket_opened_with_it() {
    let env = env_with((20_130, 20_131), "", "security:\n  revocation_check_interval_ms: 200\n");
    let (_, manager) = env.create_account("ws");
    let server = env.serve();
    let key = json_of(post(&server, "/api/account/keys", &manager, json!({"scope": "write"})), 201)["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let id = create_notebook(&server, &manager, "ws");
    start_ready(&server, &key, &id);
    let mut kernel = Kernel::open(&server.url, &server.http, &key, &id);
    assert!(kernel.eval("1 + 1").contains('2'));
    let key_id = key.split('_').nth(1).unwrap();
    let r = server
        .http
        .delete(server.url(&format!("/api/account/keys/{key_id}")))
        .header("X-API-Key", &manager)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    // The proxy closes the websocket; the editor sees it end.
    assert!(kernel.closed_within(Duration::from_secs(10)), "the websocket stayed open after its key was revoked");
    // And the proxy refuses the key for everything else.
    error_of(
        server.http.get(server.url(&format!("/notebooks/{id}/"))).header("X-API-Key", &key).send().unwrap(),
        401,
        "unauthorized",
    );
}

/// The process backend's promises, each by what it does: a start without
/// `wait` answers 202 `starting` at once and becomes ready; the session's
/// cgroup carries the configured pids and CPU caps (as the kernel reports
/// them for marimo's own process); SIGTERM to the daemon stops its
/// sessions; past `spawn_timeout_seconds` a start fails with that reason.
#[test]
fn process_sessions_start_without_wait_are_capped_and_stop_with_the_daemon() {
    let env = env_with((20_140, 20_141), "  pids_limit: 150\n  cpu_limit: 0.5\n", "");
    let (_, key) = env.create_account("alice");
    let server = env.serve();
    let id = create_notebook(&server, &key, "capped");
    let r =
        server.http.post(server.url(&format!("/api/notebooks/{id}/start"))).header("X-API-Key", &key).send().unwrap();
    let v = json_of(r, 202);
    assert_eq!(v["state"], "starting", "{v}");
    let v = wait_session(&server, &key, &id, READY_TIMEOUT, |v| v["state"] == "ready");
    assert_eq!(v["url"], format!("/notebooks/{id}/"));
    let pids = marimo_pids(&id);
    assert!(!pids.is_empty());
    // The caps, from marimo's own /proc/<pid>/cgroup (v1 or v2).
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
    let file_of = |controller: &str, name: &str| -> String {
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let dir = if ctrls.is_empty() {
                format!("/sys/fs/cgroup{path}")
            } else if ctrls.split(',').any(|c| c == controller) {
                format!("/sys/fs/cgroup/{ctrls}{path}")
            } else {
                continue;
            };
            if let Ok(v) = std::fs::read_to_string(format!("{dir}/{name}")) {
                return v.trim().to_string();
            }
        }
        panic!("no {controller} {name} for marimo in {cgroups}")
    };
    assert_eq!(file_of("pids", "pids.max"), "150", "{cgroups}");
    if cgroups.starts_with("0::") {
        assert_eq!(file_of("cpu", "cpu.max"), "50000 100000", "{cgroups}");
    } else {
        let quota: i64 = file_of("cpu", "cpu.cfs_quota_us").parse().unwrap();
        let period: i64 = file_of("cpu", "cpu.cfs_period_us").parse().unwrap();
        assert_eq!(quota * 100 / period, 50, "{cgroups}");
    }
    // SIGTERM to the daemon stops the session it started.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "marimo outlived the daemon's SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A "marimo" that never answers (a shell loop, its arguments on its
    // command line for marimo_pids to find): past
    // spawn_timeout_seconds the start fails, says why, and leaves nothing.
    let fake = tempfile::tempdir().unwrap();
    std::fs::create_dir(fake.path().join("bin")).unwrap();
    let script = fake.path().join("bin/marimo");
    std::fs::write(&script, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(notebook_env().join("bin/python"), fake.path().join("bin/python")).unwrap();
    env.write_config(&format!(
        "notebooks:\n  python_env: {}\n  port_range: 20140-20141\n  spawn_timeout_seconds: 2\n",
        fake.path().display()
    ));
    let server = env.serve();
    let v = start(&server, &key, &id);
    assert!(v["state"] == "stopping" || v["state"] == "failed", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("notebooks.spawn_timeout_seconds"), "{v}");
    let v = wait_session(&server, &key, &id, Duration::from_secs(20), |v| v["state"] == "failed");
    assert!(v["reason"].as_str().unwrap().contains("notebooks.spawn_timeout_seconds"), "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marimo_pids(&id).is_empty() {
        assert!(Instant::now() < deadline, "a timed-out start left its process running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! Test harness: a temporary DuckPond home per test, the real `duckpond`
//! binary, a real metadata database (SQLite file or a fresh PostgreSQL
//! database), and the official DuckDB extensions.
//!
//! Environment:
//! - `DUCKPOND_TEST_EXTENSION_DIR`: where `.ci/fetch-duckdb-extensions.sh` put
//!   the extension binaries (set by `make test`).
//! - `DUCKPOND_TEST_POSTGRES_URL`: a PostgreSQL URL whose role may CREATE
//!   DATABASE (set by `make test`, which starts PostgreSQL).
#![allow(dead_code)]

pub mod kernel;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef0123456789";
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which metadata database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_duckpond")
}

pub fn extension_dir() -> PathBuf {
    std::env::var_os("DUCKPOND_TEST_EXTENSION_DIR").map(PathBuf::from).expect(
        "DUCKPOND_TEST_EXTENSION_DIR is not set: run the suite with `make test`, which fetches the DuckDB \
         extensions (or run .ci/fetch-duckdb-extensions.sh DIR and export it)",
    )
}

fn postgres_admin_url() -> String {
    std::env::var("DUCKPOND_TEST_POSTGRES_URL").expect(
        "DUCKPOND_TEST_POSTGRES_URL is not set: run the suite with `make test`, which starts PostgreSQL \
         (or point it at a role allowed to CREATE DATABASE)",
    )
}

/// Creates a fresh PostgreSQL database and returns its URL.
fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let name = format!("duckpond_test_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connecting to DUCKPOND_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("CREATE DATABASE");
    });
    let (base, _) = admin.rsplit_once('/').expect("postgres URL has a database path");
    format!("{base}/{name}")
}

/// One DuckPond home with its own config and metadata database.
pub struct TestEnv {
    pub home: tempfile::TempDir,
    pub backend: Backend,
    pub database_url: String,
}

impl TestEnv {
    /// A home with config.yaml written (admin API enabled) but no schema yet.
    pub fn new(backend: Backend) -> Self {
        Self::with_home(backend, tempfile::tempdir().unwrap())
    }

    fn with_home(backend: Backend, home: tempfile::TempDir) -> Self {
        let database_url = match backend {
            Backend::Sqlite => "sqlite:metadata.db".to_string(),
            Backend::Postgres => fresh_postgres_database(),
        };
        let env = Self { home, backend, database_url };
        env.write_config("");
        env
    }

    /// A home created inside `parent` (a file system of the test's own).
    pub fn new_in(backend: Backend, parent: &Path) -> Self {
        Self::with_home(backend, tempfile::tempdir_in(parent).unwrap())
    }

    /// [`TestEnv::migrated`] inside `parent`.
    pub fn migrated_in(backend: Backend, parent: &Path) -> Self {
        let env = Self::new_in(backend, parent);
        env.ok(&["db", "upgrade"]);
        env
    }

    /// A home whose schema is migrated.
    pub fn migrated(backend: Backend) -> Self {
        let env = Self::new(backend);
        env.ok(&["db", "upgrade"]);
        env
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// A fresh file name for the next daemon's log: `server-N.log` in the
    /// test home, kept until the home is removed.
    fn next_server_log(&self) -> PathBuf {
        (0..).map(|n| self.path().join(format!("server-{n}.log"))).find(|p| !p.exists()).unwrap()
    }

    /// Writes config.yaml; `extra` is appended YAML.
    pub fn write_config(&self, extra: &str) {
        let yaml = format!(
            "server:\n  admin_api_key: {ADMIN_KEY}\ndatabase:\n  url: {}\nduckdb:\n  extension_directory: {}\n  memory_limit_mb: 512\n  threads: 1\n{extra}",
            self.database_url,
            extension_dir().display()
        );
        std::fs::write(self.path().join("config.yaml"), yaml).unwrap();
    }

    /// A `duckpond` command with this home and no inherited DUCKPOND_* settings.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("DUCKPOND_") {
                c.env_remove(k);
            }
        }
        c.env("DUCKPOND_HOME", self.path()).env("DUCKPOND_LOG", "warn").stdin(Stdio::null());
        // A small disk reserve: the default 64 MiB written by every test
        // daemon would cost the suite gigabytes of writes.
        c.env("DUCKPOND_STORAGE__RESERVE_BYTES", (4u64 << 20).to_string());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "duckpond {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "duckpond {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Creates an account; returns (account JSON, api key).
    pub fn create_account(&self, name: &str) -> (serde_json::Value, String) {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["account", "create", name, "--json"])).unwrap();
        let key = v["api_key"].as_str().unwrap().to_string();
        (v["account"].clone(), key)
    }

    /// Starts `api serve --port 0` and waits until it is ready.
    pub fn serve(&self) -> Server {
        self.serve_with(|_| {})
    }

    pub fn serve_with(&self, configure: impl FnOnce(&mut Command)) -> Server {
        // The daemon's log goes to a file, never to a pipe nobody drains: a
        // full pipe (64 KiB of log lines) blocks the daemon's next log write
        // and with it whatever request was logging.
        let log_path = self.next_server_log();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = self.command();
        cmd.args(["api", "serve", "--host", "127.0.0.1", "--port", "0"]).stdout(Stdio::piped()).stderr(log);
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("duckpond listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(SERVER_START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
        };
        let server = Server { child: Some(child), url, http: reqwest::blocking::Client::new() };
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Ok(r) = server.http.get(server.url("/readyz")).send() {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

/// A running server; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub http: reqwest::blocking::Client,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> reqwest::blocking::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        r.send().unwrap()
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http.request(method, self.url(path)).header("X-API-Key", ADMIN_KEY)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_sigterm(child.id());
        wait_timeout(&mut child, Duration::from_secs(20)).expect("server did not exit after SIGTERM")
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a dropped server gets to shut down before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(15);

impl Drop for Server {
    /// SIGTERM first: a graceful shutdown stops the daemon's notebook
    /// sessions, which a SIGKILL would leave running (holding their ports
    /// for later runs). Tests that mean to kill -9 do it themselves first.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                unsafe_sigterm(c.id());
                if wait_timeout(&mut c, DROP_GRACE).is_none() {
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
    }
}

/// Reads a JSON response body, asserting its status.
pub fn json_of(res: reqwest::blocking::Response, status: u16) -> serde_json::Value {
    let got = res.status().as_u16();
    let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let text = res.text().unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}, body {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts a JSON error with `status` and `code`; returns the message.
pub fn error_of(res: reqwest::blocking::Response, status: u16, code: &str) -> String {
    let v = json_of(res, status);
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

/// Declares a test for each metadata backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Postgres) })*
        }
    };
}

/// Runs `script` with the test Python (duckdb 1.5.5 and pyarrow); returns
/// its stdout. `EXT` in the script is the extension directory.
pub fn python(script: &str) -> String {
    let python = std::env::var("DUCKPOND_TEST_PYTHON")
        .expect("DUCKPOND_TEST_PYTHON is not set: run the suite with `make test` (it installs duckdb and pyarrow)");
    let ext = extension_dir().join("v1.5.5").join("linux_amd64");
    let out = Command::new(python).args(["-c", script]).env("EXT", ext).output().expect("running python");
    assert!(out.status.success(), "python failed: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `sql` against an account's lake from an independent DuckDB client
/// (Python, read-only attach of the SQLite catalog); one JSON value per row.
pub fn lake_query(account_root: &Path, sql: &str) -> Vec<serde_json::Value> {
    let script = format!(
        r#"
import duckdb, json, os
c = duckdb.connect(config={{"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}})
c.execute("SET enable_progress_bar = false")
for e in ["sqlite_scanner", "ducklake"]:
    c.execute(f"LOAD '{{os.environ['EXT']}}/{{e}}.duckdb_extension'")
c.execute("ATTACH 'ducklake:sqlite:{root}/catalog.sqlite' AS lake (DATA_PATH '{root}/data/', READ_ONLY)")
c.execute("USE lake")
for row in c.execute({sql:?}).fetchall():
    print(json.dumps(list(row), default=str))
"#,
        root = account_root.display(),
        sql = sql
    );
    let out = python(&script);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON row ({e}): {l:?} in:\n{out}")))
        .collect()
}

/// A daemon shared by the tests of one test binary (each test uses its own
/// account in it): started once, on a thread that lives as long as the
/// binary, with `PR_SET_PDEATHSIG` so the daemon dies with the binary even
/// though statics are never dropped.
pub struct Shared {
    pub env: TestEnv,
    pub server: Server,
}

impl Shared {
    /// Starts a daemon for `env` (its config already written).
    pub fn start(env: TestEnv) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server = env.serve_with(|cmd| {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl with constant arguments, between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            });
            tx.send(Shared { env, server }).unwrap();
            // The daemon's parent thread must outlive every test.
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared daemon started")
    }

    /// A new account: (api key, its directory).
    pub fn account(&self, name: &str) -> (String, PathBuf) {
        let (a, key) = self.env.create_account(name);
        let root = self.env.path().join("data").join("accounts").join(a["id"].as_str().unwrap());
        (key, root)
    }
}

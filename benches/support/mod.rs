//! The real daemon for end-to-end benchmarks: a temporary home, one
//! account, `api serve` on a free port.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// DuckDB threads of the daemon (and of references that use DuckDB).
pub const THREADS: u32 = 2;

pub fn wait_drained(http: &reqwest::blocking::Client, url: &str, key: &str) {
    loop {
        let me: serde_json::Value =
            http.get(format!("{url}/api/account")).header("X-API-Key", key).send().unwrap().json().unwrap();
        if me["usage"]["committed_lsn"] == me["usage"]["durable_lsn"] {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn start(dir: &Path, ext: &str) -> (Child, String, String) {
    start_with(dir, ext, "")
}

/// [`start`] with more YAML appended to the config.
pub fn start_with(dir: &Path, ext: &str, extra_yaml: &str) -> (Child, String, String) {
    start_with_memory(dir, ext, 4096, extra_yaml)
}

/// [`start_with`], each DuckDB instance of the daemon limited to
/// `memory_limit_mb`.
pub fn start_with_memory(dir: &Path, ext: &str, memory_limit_mb: u64, extra_yaml: &str) -> (Child, String, String) {
    let bin = env!("CARGO_BIN_EXE_duckpond");
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "duckdb:\n  extension_directory: {ext}\n  threads: {THREADS}\n  memory_limit_mb: {memory_limit_mb}\n\
             limits:\n  max_file_size_mb: 2000\n  \
             default_max_ingest_bytes_per_s: 0\nwal:\n  max_uncompacted_bytes: 4294967296\n{extra_yaml}"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).env("DUCKPOND_HOME", dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["db", "upgrade"]);
    let v: serde_json::Value = serde_json::from_str(&run(&["account", "create", "bench", "--json"])).unwrap();
    let key = v["api_key"].as_str().unwrap().to_string();
    let mut child = Command::new(bin)
        .args(["api", "serve", "--port", "0"])
        .env("DUCKPOND_HOME", dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        // Warnings and errors (a 5xx's cause among them) to `daemon.log`.
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while !line.contains("listening on") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the daemon exited before listening (status {:?})", child.wait());
    }
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(300));
    (child, url, key)
}

/// One headline figure next to its same-run reference, for `make bench`'s
/// summary table in docs/BENCHMARKS.md.
pub struct Figure<'a> {
    /// Stable id, e.g. `csv_upload`.
    pub id: &'a str,
    /// What was measured, in words.
    pub what: &'a str,
    pub value: f64,
    /// Unit of `value` and `reference_value` (`MB/s`, `rows/s`, `ms`, `s`).
    pub unit: &'a str,
    /// Whether more is better (throughput) or less (latency, size).
    pub higher_is_better: bool,
    /// The reference, in words, and its figure measured in the same run.
    pub reference: &'a str,
    pub reference_value: f64,
    /// The original description's claim in the same unit, when it makes one.
    pub claim: Option<f64>,
}

/// Prints the figure and, when `BENCH_RESULTS` names a file (as `make
/// bench` does), appends it there as one JSON line.
pub fn record(bench: &str, f: &Figure) {
    let ratio = if f.higher_is_better { f.value / f.reference_value } else { f.reference_value / f.value };
    println!(
        "{bench}/{}: {:.3} {} ({}); reference {:.3} {} ({}); {ratio:.2}x the reference",
        f.id, f.value, f.unit, f.what, f.reference_value, f.unit, f.reference
    );
    let Ok(path) = std::env::var("BENCH_RESULTS") else { return };
    let line = serde_json::json!({
        "bench": bench, "id": f.id, "what": f.what, "value": f.value, "unit": f.unit,
        "higher_is_better": f.higher_is_better, "reference": f.reference,
        "reference_value": f.reference_value, "claim": f.claim,
    });
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    writeln!(out, "{line}").unwrap();
}

/// A `perf record` attached to the daemon for one phase of a benchmark,
/// when `BENCH_PROFILE_DIR` is set (`make profile`); a no-op otherwise.
/// DWARF call graphs, because neither the daemon nor DuckDB keeps frame
/// pointers.
pub struct Profile(Option<Child>);

impl Profile {
    pub fn start(pid: u32, name: &str) -> Profile {
        let Ok(dir) = std::env::var("BENCH_PROFILE_DIR") else { return Profile(None) };
        let out = Path::new(&dir).join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-F", "499", "--call-graph", "dwarf,32768", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .spawn()
            .expect("perf (Debian's linux-perf) is needed for BENCH_PROFILE_DIR");
        // perf needs a moment to attach before the phase begins.
        std::thread::sleep(Duration::from_millis(500));
        Profile(Some(child))
    }
}

impl Drop for Profile {
    /// SIGINT: perf finishes its file (SIGKILL would leave it unreadable).
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }
}

/// The daemon, killed when dropped (a panicking benchmark leaves none
/// behind).
pub struct Daemon(pub Child);

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM (a graceful shutdown) and wait.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

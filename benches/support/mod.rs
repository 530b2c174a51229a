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
    let bin = env!("CARGO_BIN_EXE_duckpond");
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "duckdb:\n  extension_directory: {ext}\n  threads: {THREADS}\nlimits:\n  max_file_size_mb: 2000\n  \
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
        .stderr(Stdio::null())
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

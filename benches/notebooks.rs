//! Notebook cold start: `POST /api/notebooks/{id}/start` to a ready session
//! (marimo answering its health endpoint through DuckPond), per backend, next
//! to the same server started by hand in the same run (the reference:
//! `marimo edit` as a bare process, and `docker run` of the same image),
//! polled the same way. Each round stops the session, so every start is
//! cold (a new process or container).
//!
//! Run: `make bench-notebooks` (needs DUCKPOND_TEST_EXTENSION_DIR,
//! DUCKPOND_TEST_NOTEBOOK_ENV, and for Docker a running engine with the
//! image DUCKPOND_TEST_NOTEBOOK_IMAGE; BENCH_NOTEBOOK_ROUNDS, default 10).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{record, start_with, Figure};

mod support;

const POLL: Duration = Duration::from_millis(25);
const READY_LIMIT: Duration = Duration::from_secs(60);
const PORT_FIRST: u16 = 21_000;

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn wait_health(http: &reqwest::blocking::Client, url: &str) {
    let deadline = Instant::now() + READY_LIMIT;
    while !http.get(url).send().is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(POLL);
    }
}

/// Seconds from `start` to ready through DuckPond, `rounds` times.
fn duckpond_starts(dir: &Path, ext: &str, notebooks_yaml: &str, rounds: usize) -> Vec<f64> {
    let (mut child, url, key) = start_with(dir, ext, notebooks_yaml);
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(READY_LIMIT).build().unwrap();
    let nb: serde_json::Value = http
        .post(format!("{url}/api/notebooks"))
        .header("X-API-Key", &key)
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = nb["id"].as_str().unwrap().to_string();
    let mut out = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let v: serde_json::Value = http
            .post(format!("{url}/api/notebooks/{id}/start?wait=true"))
            .header("X-API-Key", &key)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["state"], "ready", "{v}");
        out.push(t.elapsed().as_secs_f64());
        eprintln!("  duckpond start {:.2} s", t.elapsed().as_secs_f64());
        let health = http.get(format!("{url}/notebooks/{id}/health")).header("X-API-Key", &key).send().unwrap();
        assert!(health.status().is_success(), "ready but not proxied: {}", health.status());
        http.post(format!("{url}/api/notebooks/{id}/stop")).header("X-API-Key", &key).send().unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

/// The reference: the same marimo started by hand, polled the same way.
fn bare_starts(mut launch: impl FnMut(u16) -> Box<dyn FnMut()>, rounds: usize) -> Vec<f64> {
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
    (0..rounds)
        .map(|i| {
            let port = PORT_FIRST + 50 + i as u16;
            let t = Instant::now();
            let mut stop = launch(port);
            wait_health(&http, &format!("http://127.0.0.1:{port}/notebooks/bench/health"));
            let s = t.elapsed().as_secs_f64();
            eprintln!("  bare start {s:.2} s");
            stop();
            s
        })
        .collect()
}

fn main() {
    // `cargo test --all-targets` runs bench targets too: benchmarks are not tests.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ext = std::env::var("DUCKPOND_TEST_EXTENSION_DIR").expect("DUCKPOND_TEST_EXTENSION_DIR");
    let venv = std::env::var("DUCKPOND_TEST_NOTEBOOK_ENV").expect("DUCKPOND_TEST_NOTEBOOK_ENV");
    let image = std::env::var("DUCKPOND_TEST_NOTEBOOK_IMAGE").ok();
    let rounds: usize = std::env::var("BENCH_NOTEBOOK_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let work = tempfile::tempdir().unwrap();
    let nb_file = work.path().join("bench.py");
    std::fs::write(&nb_file, "import marimo\napp = marimo.App()\n").unwrap();
    let ports = format!("  port_range: {PORT_FIRST}-{}\n", PORT_FIRST + 9);

    // Process backend and a bare `marimo edit`.
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("notebooks:\n  python_env: {venv}\n{ports}");
    let ours = duckpond_starts(dir.path(), &ext, &yaml, rounds);
    let bare = bare_starts(
        |port| {
            let mut child = Command::new(format!("{venv}/bin/marimo"))
                .args(["edit", nb_file.to_str().unwrap(), "--headless", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--base-url", "/notebooks/bench", "--token", "--token-password", "bench", "--skip-update-check"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Box::new(move || {
                // No browser connected, so no kernel: the server is all.
                let _ = child.kill();
                let _ = child.wait();
            })
        },
        rounds,
    );
    let (a, b) = (p50(ours), p50(bare));
    record(
        "notebooks",
        &Figure {
            id: "start_process",
            what: "notebook cold start to ready, process backend, p50",
            value: a,
            unit: "s",
            higher_is_better: false,
            reference: "bare `marimo edit --headless`, polled the same way, p50",
            reference_value: b,
            claim: Some(3.0),
        },
    );

    // Docker backend and a bare `docker run` of the same image.
    let Some(image) = image else {
        println!("docker backend: skipped (DUCKPOND_TEST_NOTEBOOK_IMAGE not set)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("notebooks:\n  backend: docker\n  docker_image: {image}\n  python_env: {venv}\n{ports}");
    let ours = duckpond_starts(dir.path(), &ext, &yaml, rounds);
    let nb_dir = work.path().to_str().unwrap().to_string();
    let bare = bare_starts(
        |port| {
            let name = format!("duckpond-bench-{port}");
            let status = Command::new("docker")
                .args(["run", "-d", "--rm", "--name", &name, "--network", "host", "-m", "2048m", "--cpus", "2"])
                .args(["--shm-size", "256m", "-v", &format!("{nb_dir}:/work:ro"), &image])
                .args(["/opt/nb/bin/marimo", "edit", "/work/bench.py", "--headless", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--base-url", "/notebooks/bench", "--token", "--token-password", "bench", "--skip-update-check"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            Box::new(move || {
                let _ = Command::new("docker").args(["rm", "-f", &name]).stdout(Stdio::null()).status();
            })
        },
        rounds,
    );
    let (a, b) = (p50(ours), p50(bare));
    record(
        "notebooks",
        &Figure {
            id: "start_docker",
            what: "notebook cold start to ready, docker backend, p50",
            value: a,
            unit: "s",
            higher_is_better: false,
            reference: "bare `docker run` of the same image, polled the same way, p50",
            reference_value: b,
            claim: Some(3.0),
        },
    );
}

//! What an attack without credentials costs the clients it is not aimed
//! at (issue 18): 1,000 connections from one loopback address that never
//! finish their headers, held open (re-opened as the daemon closes them)
//! while a normal client on another address of 127.0.0.0/8 asks
//! `GET /api/account` back to back.
//!
//! Figure: p99 latency of that client under the attack; reference: the
//! same client's p99 in the same run with no attack. The daemon runs its
//! default caps (256 connections per client address, a 10 s header read
//! timeout).
//!
//! Run: `make bench-security` (needs DUCKPOND_TEST_EXTENSION_DIR).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{record, start, Figure};

mod support;

const REQUESTS: usize = 500;
const SLOW_CLIENTS: usize = 1000;

fn latencies(url: &str, key: &str) -> Vec<f64> {
    let http = reqwest::blocking::Client::builder().local_address("127.0.0.2".parse().ok()).build().unwrap();
    let mut out = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let r = http.get(format!("{url}/api/account")).header("X-API-Key", key).send().unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn slow_connection(addr: SocketAddr) -> Option<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&"127.0.0.60:0".parse::<SocketAddr>().unwrap().into()).ok()?;
    sock.connect(&addr.into()).ok()?;
    let mut s: TcpStream = sock.into();
    s.write_all(b"GET /api/account HTTP/1.1\r\nHost: x\r\n").ok()?;
    Some(s)
}

fn main() {
    let ext = std::env::var("DUCKPOND_TEST_EXTENSION_DIR").expect("DUCKPOND_TEST_EXTENSION_DIR");
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, key) = start(dir.path(), &ext);
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();

    // Warm-up (connection, caches), then the quiet reference.
    latencies(&url, &key);
    let quiet = latencies(&url, &key);

    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Drop what the daemon closed, open more up to the target.
                held.retain(|s| {
                    let mut b = [0u8; 1];
                    s.set_nonblocking(true).ok();
                    matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                while held.len() < SLOW_CLIENTS {
                    match slow_connection(addr) {
                        Some(s) => held.push(s),
                        None => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let attacked = latencies(&url, &key);
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();

    println!(
        "GET /api/account from 127.0.0.2: quiet p50 {:.2} ms p99 {:.2} ms; with {SLOW_CLIENTS} slow clients on 127.0.0.60 p50 {:.2} ms p99 {:.2} ms",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        pct(&attacked, 0.5),
        pct(&attacked, 0.99)
    );
    record(
        "security",
        &Figure {
            id: "latency_under_slow_clients",
            what: "p99 of GET /api/account from one address while 1,000 slow clients hold connections from another",
            value: pct(&attacked, 0.99),
            unit: "ms",
            higher_is_better: false,
            reference: "the same client's p99 with no attack, same run",
            reference_value: pct(&quiet, 0.99),
            claim: None,
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}

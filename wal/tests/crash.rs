//! Crash test: a child process appends from several threads and prints each
//! acknowledgement; the parent kills it with SIGKILL at random moments, many
//! times over the same log, and after each kill checks that every
//! acknowledged record reads back intact, with strictly increasing LSNs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duckpond_wal::testing::torture_payload;
use duckpond_wal::{Lsn, Wal, WalOptions};

const KILLS: u32 = 25;

#[test]
fn sigkill_never_loses_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<u64, (u32, u32, usize)> = HashMap::new();
    let mut rng_state: u64 = 0x9e3779b97f4a7c15;
    for round in 0..KILLS {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let delay = Duration::from_millis(20 + rng_state % 250);
        let mut child = Command::new(env!("CARGO_BIN_EXE_duckpond-wal-torture"))
            .arg(dir.path())
            .arg("8")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader =
            std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>());
        let start = Instant::now();
        std::thread::sleep(delay);
        // SIGKILL: no destructor, no flush, no chance to finish a write.
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            let f: Vec<&str> = line.split(' ').collect();
            // A line cut by the kill was never fully printed: ignore it.
            if f.len() != 4 || f.iter().any(|x| x.is_empty()) {
                continue;
            }
            let Ok(lsn) = f[0].parse::<u64>() else { continue };
            let (Ok(t), Ok(s), Ok(l)) = (f[1].parse(), f[2].parse(), f[3].parse()) else { continue };
            assert!(acked.insert(lsn, (t, s, l)).is_none(), "LSN {lsn} acknowledged twice");
        }
        let (wal, report) =
            Wal::open(dir.path(), WalOptions { segment_size_bytes: 256 * 1024, ..Default::default() }).unwrap();
        assert!(report.corrupt.is_empty(), "round {round}: a kill must not look like corruption: {report:?}");
        let mut found = HashMap::new();
        let mut prev = 0u64;
        for r in wal.read_from(Lsn::FIRST).unwrap() {
            let r = r.unwrap();
            assert!(r.lsn.get() > prev, "LSNs strictly increase");
            prev = r.lsn.get();
            found.insert(r.lsn.get(), r.payload);
        }
        for (lsn, (t, s, l)) in &acked {
            let p = found.get(lsn).unwrap_or_else(|| panic!("round {round}: acknowledged LSN {lsn} lost"));
            assert_eq!(p, &torture_payload(*t, *s, *l), "round {round}: LSN {lsn} content differs");
        }
        eprintln!(
            "round {round}: killed after {:?}, {} acknowledged so far, {} in log, torn tail {} bytes",
            start.elapsed(),
            acked.len(),
            found.len(),
            report.torn_tail_bytes
        );
    }
    assert!(acked.len() > 1000, "the child acknowledged too little to prove anything: {}", acked.len());
}

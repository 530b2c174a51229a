//! Crash test: a child process ingests while its flush loop and maintenance
//! run; the parent SIGKILLs it at random moments, restarts it, and finally
//! drains the log. Every acknowledged append must then be in the lake
//! exactly once (row count and distinct rows per append), and nothing that
//! appears may be duplicated or partial.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{extensions, Account, SETTINGS};

const KILLS: u64 = 12;

fn child(dir: &std::path::Path, mode: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_duckpond-compactor-torture"));
    c.arg(dir).arg(std::env::var_os("DUCKPOND_TEST_EXTENSION_DIR").expect("DUCKPOND_TEST_EXTENSION_DIR")).arg(mode);
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn sigkill_during_ingest_flush_and_maintenance_is_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    // (writer, seq) -> (table, rows)
    let mut acked: HashMap<(i64, i64), (String, i64)> = HashMap::new();
    let mut x: u64 = 0x243f6a8885a308d3;
    for round in 0..KILLS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run_ms = 300 + x % 1000;
        let mut c = child(d.path(), "run").stdout(Stdio::piped()).spawn().unwrap();
        let out = c.stdout.take().unwrap();
        let reader = std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(run_ms));
        c.kill().unwrap();
        c.wait().unwrap();
        let mut n = 0;
        for line in reader.join().unwrap() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 5 || f[0] != "ack" {
                continue; // a line cut by the kill
            }
            let (Ok(w), Ok(s), Ok(rows)) = (f[1].parse(), f[2].parse(), f[4].parse()) else { continue };
            assert!(acked.insert((w, s), (f[3].to_string(), rows)).is_none(), "acknowledged twice");
            n += 1;
        }
        eprintln!("round {round}: killed after {run_ms} ms, {n} acks");
    }
    assert!(acked.len() > 200, "too few acknowledged appends to prove anything: {}", acked.len());
    let st = child(d.path(), "drain").output().unwrap();
    assert!(st.status.success(), "drain failed: {}", String::from_utf8_lossy(&st.stderr));

    let conn = extensions().open_instance(&SETTINGS).unwrap();
    conn.execute_batch(&acct.location().attach_sql("lake", true)).unwrap();
    let mut seen: HashMap<(i64, i64), (String, i64, i64)> = HashMap::new();
    for t in ["t0", "t1", "t2"] {
        let mut q = conn
            .prepare(&format!("SELECT writer, seq, count(*), count(DISTINCT i) FROM lake.{t} GROUP BY ALL"))
            .unwrap();
        let rows = q.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
        });
        for r in rows.unwrap() {
            let (w, s, count, distinct) = r.unwrap();
            assert!(seen.insert((w, s), (t.to_string(), count, distinct)).is_none(), "append ({w},{s}) in two tables");
        }
    }
    for ((w, s), (count_table, count, distinct)) in &seen {
        let expected_rows = 1 + (*s * 7) % 50;
        assert_eq!(
            *count, expected_rows,
            "append ({w},{s}) in {count_table}: {count} rows, expected {expected_rows} (duplicated or partial)"
        );
        assert_eq!(*distinct, expected_rows);
    }
    for ((w, s), (table, rows)) in &acked {
        let (t, count, _) = seen.get(&(*w, *s)).unwrap_or_else(|| panic!("acknowledged append ({w},{s}) lost"));
        assert_eq!((t, count), (table, rows));
    }
    eprintln!("{} acknowledged appends, {} in the lake, all exactly once", acked.len(), seen.len());
}

//! `duckpond-compactor-torture ACCOUNT_DIR EXTENSION_DIR run|drain`
//!
//! `run`: opens the account's compactor with a fast flush loop (50 ms) and
//! constant maintenance (every 300 ms, retention 0), appends rows from four
//! tasks forever, and prints `ack <writer> <seq> <table> <rows>` after each
//! durable acknowledgement. The crash test SIGKILLs it at random moments,
//! so kills land in appends, flushes, commits and maintenance.
//! `drain`: opens, flushes everything, prints `drained`, exits.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use duckpond_compactor::testing::{ipc_stream, narrow_batch};
use duckpond_compactor::{AccountCompactor, CatalogLocation, CompactorOptions, Extensions, InstanceSettings};
use duckpond_schema::{LogRecord, TableName};
use duckpond_wal::WalOptions;

const WRITERS: i64 = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, ext, mode) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]), args[3].as_str());
    let ext = Extensions::locate(&ext).expect("extensions");
    let settings = InstanceSettings { memory_limit_mb: 1024, threads: 1 };
    let location = CatalogLocation::sqlite(dir.join("catalog.sqlite"), dir.join("data"));
    if !dir.join("catalog.sqlite").exists() {
        location.create(&ext, &settings).expect("create catalog");
    }
    let opts = CompactorOptions {
        flush_interval_ms: 50,
        maintenance_interval_ms: 300,
        snapshot_retention_ms: 0,
        file_cleanup_grace_ms: 0,
        quarantine_dir: dir.join("quarantine"),
        scratch_dir: dir.join("scratch"),
        staged_dir: dir.join("staged"),
        metrics_label: "torture".into(),
        ..Default::default()
    };
    let (c, _) = AccountCompactor::open(&ext, &settings, &location, &dir.join("wal"), WalOptions::default(), opts)
        .expect("open");
    if mode == "drain" {
        c.flush_blocking().expect("flush");
        println!("drained");
        return;
    }
    let c = Arc::new(c);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nonce = i64::from(std::process::id());
    rt.block_on(async move {
        let pool = Arc::new(tokio::sync::Semaphore::new(1));
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(c.clone().run(pool, stop_rx));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let c = c.clone();
                tokio::spawn(async move {
                    let writer = nonce * 100 + w;
                    for seq in 0i64.. {
                        let table = format!("t{}", seq % 3);
                        let n = 1 + (seq as usize * 7) % 50;
                        let rec = LogRecord::Rows {
                            table: TableName::parse(&table).unwrap(),
                            ipc: ipc_stream(&[narrow_batch(writer, seq, n)]),
                        };
                        c.append(&[rec]).await.expect("append");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {writer} {seq} {table} {n}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

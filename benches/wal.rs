//! WAL append throughput against the raw disk, measured in the same run.
//!
//! `wal/<record bytes>/<appenders>`: concurrent appenders (tokio tasks), each
//! awaiting its durable acknowledgement before the next append, fsync mode.
//! `wal_batch` hands over 100 records per append; `wal_pipelined` appends
//! one record per call but keeps up to 64 appends per appender in flight.
//! `raw_disk/<chunk bytes>`: one thread doing pwrite + fdatasync of the same
//! bytes sequentially, in chunks of the record size and of the WAL's
//! `max_batch_bytes`, on the same filesystem. Ratios are computed by
//! `.ci/bench-report.py` from criterion's estimates.
//!
//! Run: `make bench-wal` (or `cargo bench --bench wal`). Set
//! `DUCKPOND_BENCH_DIR` to benchmark another disk.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duckpond_wal::{Lsn, RecordKind, Wal, WalOptions};

const RECORD_SIZES: [usize; 3] = [100, 4096, 1 << 20];
const APPENDERS: [usize; 3] = [1, 8, 64];

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("DUCKPOND_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// Runs `appenders` concurrent tasks that together make about `iters`
/// appends of `batch` (each awaiting its acknowledgement), and returns the
/// time per `iters` appends. Truncates the log afterwards so samples do not
/// fill the disk.
fn drive(
    rt: &tokio::runtime::Runtime,
    wal: &Arc<Wal>,
    appenders: usize,
    iters: u64,
    batch: &[(RecordKind, Bytes)],
) -> Duration {
    let per = iters.div_ceil(appenders as u64);
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let (wal, batch) = (wal.clone(), batch.to_vec());
                tokio::spawn(async move {
                    for _ in 0..per {
                        wal.append_batch(batch.clone()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = start.elapsed();
    if let Some(l) = wal.durable_lsn() {
        wal.truncate_before(Lsn::new(l.get() + 1)).unwrap();
    }
    elapsed.mul_f64(iters as f64 / (per * appenders as u64) as f64)
}

fn raw_disk(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw_disk");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for chunk in RECORD_SIZES.into_iter().chain([16 << 20]) {
        let dir = bench_dir();
        let path = dir.path().join("raw");
        let buf = vec![0x5au8; chunk];
        g.throughput(Throughput::Bytes(chunk as u64));
        g.bench_with_input(BenchmarkId::from_parameter(chunk), &chunk, |b, _| {
            b.iter_custom(|iters| {
                let f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path).unwrap();
                let start = Instant::now();
                for i in 0..iters {
                    f.write_all_at(&buf, i * chunk as u64).unwrap();
                    f.sync_data().unwrap();
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn wal_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("wal");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for size in RECORD_SIZES {
        for appenders in APPENDERS {
            let dir = bench_dir();
            let opts = WalOptions {
                max_uncompacted_bytes: 8 << 30,
                max_inflight_bytes: 1 << 30,
                max_record_bytes: 2 << 20,
                ..Default::default()
            };
            let (wal, _) = Wal::open(dir.path(), opts).unwrap();
            let wal = Arc::new(wal);
            let batch = vec![(RecordKind(1), Bytes::from(vec![0xa5u8; size]))];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(size.to_string(), appenders), &appenders, |b, &appenders| {
                b.iter_custom(|iters| drive(&rt, &wal, appenders, iters, &batch))
            });
        }
    }
    g.finish();
}

/// Appenders that hand over many small records per call (one ingest request
/// carries many rows or samples): records/s acknowledged with fsync.
fn wal_batch(c: &mut Criterion) {
    const RECORDS_PER_APPEND: usize = 100;
    const RECORD_BYTES: usize = 100;
    const APPENDERS: usize = 64;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("wal_batch");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    let dir = bench_dir();
    let opts = WalOptions { max_uncompacted_bytes: 8 << 30, max_inflight_bytes: 1 << 30, ..Default::default() };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let wal = Arc::new(wal);
    let batch: Vec<(RecordKind, Bytes)> =
        (0..RECORDS_PER_APPEND).map(|_| (RecordKind(1), Bytes::from(vec![0x3cu8; RECORD_BYTES]))).collect();
    g.throughput(Throughput::Elements(RECORDS_PER_APPEND as u64));
    let id = format!("{RECORD_BYTES}B_x{RECORDS_PER_APPEND}");
    g.bench_with_input(BenchmarkId::new(id, APPENDERS), &APPENDERS, |b, &appenders| {
        b.iter_custom(|iters| drive(&rt, &wal, appenders, iters, &batch))
    });
    g.finish();
}

/// Appenders that append one small record per call but keep up to
/// `IN_FLIGHT_PER_APPENDER` appends queued ([`Wal::enqueue`]) and await their
/// acknowledgements in order: records/s acknowledged with fsync. An appender
/// that awaits each append before the next is bounded by appenders divided
/// by the write and fdatasync round trip, whatever the log does; this is how
/// a client with many records gets past that bound without batching them.
fn wal_pipelined(c: &mut Criterion) {
    const IN_FLIGHT_PER_APPENDER: usize = 64;
    const RECORD_BYTES: usize = 100;
    const APPENDERS: usize = 64;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("wal_pipelined");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    let dir = bench_dir();
    let opts = WalOptions { max_uncompacted_bytes: 8 << 30, max_inflight_bytes: 1 << 30, ..Default::default() };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let wal = Arc::new(wal);
    let record = Bytes::from(vec![0x6du8; RECORD_BYTES]);
    g.throughput(Throughput::Elements(1));
    let id = format!("{RECORD_BYTES}B_window{IN_FLIGHT_PER_APPENDER}");
    g.bench_with_input(BenchmarkId::new(id, APPENDERS), &APPENDERS, |b, &appenders| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(appenders as u64);
            let start = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..appenders)
                    .map(|_| {
                        let (wal, record) = (wal.clone(), record.clone());
                        tokio::spawn(async move {
                            let mut window = std::collections::VecDeque::with_capacity(IN_FLIGHT_PER_APPENDER);
                            for _ in 0..per {
                                if window.len() == IN_FLIGHT_PER_APPENDER {
                                    let oldest: duckpond_wal::PendingAppend = window.pop_front().unwrap();
                                    oldest.durable().await.unwrap();
                                }
                                window.push_back(wal.enqueue(vec![(RecordKind(1), record.clone())]).unwrap());
                            }
                            for p in window {
                                p.durable().await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let elapsed = start.elapsed();
            if let Some(l) = wal.durable_lsn() {
                wal.truncate_before(Lsn::new(l.get() + 1)).unwrap();
            }
            elapsed.mul_f64(iters as f64 / (per * appenders as u64) as f64)
        })
    });
    g.finish();
}

criterion_group!(benches, raw_disk, wal_append, wal_batch, wal_pipelined);
criterion_main!(benches);

//! The log through a power loss: on lazyfs (testing/lazyfs), which at a
//! cut forgets everything no fsync covered, every acknowledged append
//! survives in each durability mode that syncs, across segment rotations
//! and truncations; with `Durability::None` acknowledged appends are lost,
//! so the check can fail. (SIGKILL tests cannot tell: the page cache
//! outlives a killed process.) Needs root and /dev/fuse.

use bytes::Bytes;
use duckpond_lazyfs::LazyFs;
use duckpond_wal::{Durability, Lsn, RecordKind, Wal, WalOptions};

const KIND: RecordKind = RecordKind(1);

fn opts(durability: Durability) -> WalOptions {
    WalOptions { segment_size_bytes: 4096, max_record_bytes: 2048, durability, ..Default::default() }
}

fn payload(i: u64) -> Bytes {
    Bytes::from((0..(100 + i % 300)).map(|j| (i * 7 + j) as u8).collect::<Vec<u8>>())
}

/// Records as (LSN, payload).
type Records = Vec<(Lsn, Vec<u8>)>;

/// How the log meets the cut.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// The log creates its own directory, nothing is truncated: every
    /// record counts, the first segment's (made by open) included.
    Fresh,
    /// As `Fresh`, but only a few records: no rotation ever syncs the
    /// directory, so the first segment's entry is durable only if open
    /// made it so.
    OneSegment,
    /// The directory exists, durably, before the log opens, and the log is
    /// truncated part-way: what is lost can only come from the log's own
    /// files after the truncation point.
    Truncated,
}

/// Appends records (300, rotating segments; 5 for `OneSegment`), cuts the
/// power, reopens;
/// returns the acknowledged and the found records (above the truncation
/// point), and the next LSN the reopened log gives.
fn acked_and_found(durability: Durability, setup: Setup) -> (Records, Records, Lsn) {
    let mount = tempfile::tempdir().unwrap();
    let mut fs = LazyFs::mount(mount.path()).expect("mounting lazyfs (needs root and /dev/fuse)");
    let dir = fs.path().join("wal");
    let floor = match setup {
        Setup::Fresh | Setup::OneSegment => 1,
        Setup::Truncated => {
            std::fs::create_dir(&dir).unwrap();
            std::fs::File::open(fs.path()).unwrap().sync_all().unwrap();
            100
        }
    };
    let (wal, _) = Wal::open(&dir, opts(durability)).unwrap();
    let mut acked = Vec::new();
    let n = if matches!(setup, Setup::OneSegment) { 5 } else { 300 };
    for i in 0..n {
        let p = payload(i);
        let lsn = wal.append_batch_blocking(vec![(KIND, p.clone())]).unwrap().first;
        acked.push((lsn, p.to_vec()));
        if i == 150 && floor > 1 {
            wal.truncate_before(Lsn::new(floor)).unwrap();
        }
    }
    drop(wal);
    fs.power_loss().unwrap();
    let (wal, report) = Wal::open(&dir, opts(durability)).unwrap();
    let found: Records =
        wal.read_from(Lsn::new(floor)).unwrap().map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect();
    acked.retain(|(l, _)| l.get() >= floor);
    (acked, found, report.next_lsn)
}

#[test]
fn acknowledged_appends_survive_a_power_loss() {
    for durability in [Durability::Fsync, Durability::Batch { window_ms: 1 }] {
        for setup in [Setup::Fresh, Setup::OneSegment, Setup::Truncated] {
            let (acked, found, next) = acked_and_found(durability, setup);
            assert_eq!(found.len(), acked.len(), "{durability:?} {setup:?}: records lost");
            assert!(found == acked, "{durability:?} {setup:?}: records differ");
            assert!(next > acked.last().unwrap().0, "{durability:?} {setup:?}: an acknowledged LSN would be reused");
        }
    }
}

#[test]
fn without_sync_acknowledged_appends_are_lost() {
    let (acked, found, _) = acked_and_found(Durability::None, Setup::Truncated);
    assert!(found.len() < acked.len(), "nothing lost without fsync: the check above could not fail");
}

//! Disk full: on a small tmpfs, appends fail cleanly with `DiskFull`, the log
//! stays readable and uncorrupted, and appends work again once space returns.
//! Needs root (it mounts a tmpfs); CI runs as root.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use duckpond_wal::{Lsn, RecordKind, Wal, WalOptions};

struct Mount(tempfile::TempDir);

impl Mount {
    fn tmpfs(size: &str) -> Self {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs failed: the disk-full test needs root (CAP_SYS_ADMIN)");
        Mount(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn enospc_fails_cleanly_and_recovers() {
    let m = Mount::tmpfs("512k");
    let wal_dir = m.path().join("wal");
    let opts = || WalOptions { segment_size_bytes: 64 * 1024, max_record_bytes: 16 * 1024, ..Default::default() };
    // Leave room for the log, then fill the rest with a file we can delete.
    std::fs::write(m.path().join("filler"), vec![1u8; 200 * 1024]).unwrap();
    let (wal, _) = Wal::open(&wal_dir, opts()).unwrap();
    let mut acked = Vec::new();
    let err = loop {
        let p = Bytes::from(vec![(acked.len() % 251) as u8; 4000]);
        match wal.append_batch_blocking(vec![(RecordKind(2), p.clone())]) {
            Ok(r) => acked.push((r.first, p.to_vec())),
            Err(e) => break e,
        }
        assert!(acked.len() < 10_000, "never ran out of space");
    };
    assert!(err.is_disk_full(), "expected DiskFull, got {err}");
    assert!(!acked.is_empty());
    // The failure left nothing behind: the log reads back exactly what was acknowledged.
    let read: Vec<_> = wal.read_from(Lsn::FIRST).unwrap().map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect();
    assert_eq!(read, acked);
    // A second attempt while still full fails the same way, without damage.
    assert!(wal.append_batch_blocking(vec![(RecordKind(2), Bytes::from(vec![0u8; 4000]))]).unwrap_err().is_disk_full());
    // Space returns: appends work again, continuing the LSN sequence.
    std::fs::remove_file(m.path().join("filler")).unwrap();
    let r = wal.append_batch_blocking(vec![(RecordKind(2), Bytes::from_static(b"after"))]).unwrap();
    assert_eq!(r.first, Lsn::new(acked.last().unwrap().0.get() + 1));
    drop(wal);
    let (wal, report) = Wal::open(&wal_dir, opts()).unwrap();
    assert!(report.corrupt.is_empty() && report.torn_tail_bytes == 0, "{report:?}");
    assert_eq!(wal.read_from(Lsn::FIRST).unwrap().count(), acked.len() + 1);
}

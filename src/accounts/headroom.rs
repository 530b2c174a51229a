//! Disk headroom: a reserve file held on the storage file system and let go
//! when the disk fills, so that what must still write a little can: the
//! compactor's flush of what was already acknowledged, and the catalog
//! readers (a SQLite catalog whose last write failed on a full disk has to
//! recover its WAL index before anyone can read it: every read of the
//! account answered 503 until space returned, issue 18). While the reserve
//! is released, every write the daemon accepts answers 507 (see
//! `server::middleware::refuse_writes_without_headroom`); once free space
//! is back above twice the reserve, the reserve is made again and writes
//! are accepted.
//!
//! The reserve is headroom, not a quota: a notebook or another program on
//! the same file system can use it up again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often free space is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Name of the reserve file in the storage directory.
const RESERVE_FILE: &str = ".headroom";

/// The reserve of one storage directory.
#[derive(Debug)]
pub struct Headroom {
    dir: PathBuf,
    bytes: u64,
    released: AtomicBool,
}

impl Headroom {
    /// Holds `bytes` (storage.reserve_bytes; 0: no reserve) in `dir`. A
    /// reserve that cannot be made (the disk is already full) starts
    /// released: writes answer 507 until there is space for it.
    pub fn hold(dir: &Path, bytes: u64) -> Arc<Self> {
        let me = Arc::new(Self { dir: dir.to_path_buf(), bytes, released: AtomicBool::new(false) });
        if bytes > 0 && me.make().is_err() {
            tracing::warn!(
                bytes,
                "no room for the disk reserve (storage.reserve_bytes): writes are refused until there is"
            );
            me.released.store(true, Ordering::Release);
        }
        me
    }

    /// Whether writes are refused (the reserve is released).
    pub fn writes_refused(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Watches free space for as long as `self` lives.
    pub fn watch(self: &Arc<Self>) {
        if self.bytes == 0 {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let Some(h) = me.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || h.check()).await;
            }
        });
    }

    fn check(&self) {
        let Some(free) = free_bytes(&self.dir) else { return };
        if !self.writes_refused() && free < (self.bytes / 8).clamp(1 << 20, 16 << 20) {
            let _ = std::fs::remove_file(self.dir.join(RESERVE_FILE));
            self.released.store(true, Ordering::Release);
            metrics::counter!("duckpond_disk_reserve_released_total").increment(1);
            tracing::warn!(
                free_bytes = free,
                reserve_bytes = self.bytes,
                "the disk is full: released the reserve so flushes and reads go on; writes answer 507 until space returns"
            );
        } else if self.writes_refused() && free >= self.bytes.saturating_mul(2) && self.make().is_ok() {
            self.released.store(false, Ordering::Release);
            tracing::info!(free_bytes = free, "disk space is back: the reserve is held again and writes are accepted");
        }
    }

    /// Writes the reserve file (real blocks: random bytes written, then
    /// synced), or keeps the one there.
    fn make(&self) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(RESERVE_FILE);
        // Kept from the last run: writing it again would need twice the
        // space, on the disk that may be nearly full.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == self.bytes) {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{RESERVE_FILE}.tmp"));
        let made = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            // Not zeros: a compressing file system (ZFS, btrfs) would
            // store those in nothing.
            let mut chunk = vec![0u8; 1 << 20];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut chunk);
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if made.is_err() {
            // No room: whatever of a reserve there is goes too, so that its
            // space serves now.
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&path);
        }
        made
    }
}

/// Bytes an unprivileged writer can still use on `dir`'s file system.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs filled by the call; `c` is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s) == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_real_file_of_its_size_and_none_when_zero() {
        let dir = tempfile::tempdir().unwrap();
        let h = Headroom::hold(dir.path(), 3 << 20);
        assert!(!h.writes_refused());
        assert_eq!(std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap().len(), 3 << 20);
        let none = tempfile::tempdir().unwrap();
        let h = Headroom::hold(none.path(), 0);
        assert!(!h.writes_refused() && !none.path().join(RESERVE_FILE).exists());
        assert!(free_bytes(dir.path()).is_some_and(|f| f > 0));
    }
}

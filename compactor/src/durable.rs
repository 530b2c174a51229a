//! Making the lake's files durable before the catalog commit that names
//! them.
//!
//! DuckDB writes a flush's Parquet files (`<data>/main/<table>/ducklake-
//! <uuid>.parquet`) and closes them without an fsync, then the catalog
//! commit records the flush's LSN and the log is truncated behind it. After
//! a power loss the catalog would point at files the page cache never
//! wrote, and recovery would not replay the rows (the LSN says they were
//! applied): InfluxDB 3 lost acknowledged writes in this hand-off (fixed in
//! 3.11.7). So before every commit that adds files (a flush, a merge) the
//! writer fsyncs every file it has not synced before and every directory
//! that gained an entry ([`DataFiles::sync_new`]).
//!
//! Only the lake's single writer (the compactor, holding the writer lock)
//! adds files below the data path, so a file there that the writer has not
//! seen is one its current transaction wrote, or an orphan of one that
//! failed (syncing that is harmless). Each commit walks the whole data
//! tree: O(files), a few milliseconds for thousands; merges keep the count
//! down.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// fsyncs a file (its data and size).
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// fsyncs a directory (its entries: files created, renamed or removed in it).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// fsyncs every file and directory below `root`, `root` itself, and
/// `root`'s parent (which holds its entry). For trees made once (an
/// account's directories and catalog at creation).
pub fn sync_tree(root: &Path) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                sync_file(&entry.path())?;
            }
        }
        sync_dir(&dir)?;
    }
    if let Some(parent) = root.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// The files and directories below a lake's data path that are known to
/// be durable.
#[derive(Debug)]
pub struct DataFiles {
    root: PathBuf,
    durable: HashSet<PathBuf>,
}

/// What [`DataFiles::sync_new`] synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Files fsynced.
    pub files: usize,
    /// Directories fsynced.
    pub directories: usize,
}

impl DataFiles {
    /// Starts from what is below `root` now, taken as durable: every file
    /// a committed snapshot names was synced before its commit, and any
    /// other is an orphan of a flush that never committed. (Files written by
    /// a version before this rule were written back by the kernel long
    /// before any restart onto this one.)
    pub fn open(root: &Path) -> io::Result<Self> {
        let mut files = DataFiles { root: root.to_path_buf(), durable: HashSet::new() };
        files.durable = files.walk(|_| Ok(()))?;
        Ok(files)
    }

    /// fsyncs every file below the data path not synced before, then every
    /// directory that gained a file or a subdirectory (new directories
    /// included), so all of them survive a power loss. Call before the
    /// commit that names the files.
    pub fn sync_new(&mut self) -> io::Result<Synced> {
        let mut synced = Synced::default();
        let known = std::mem::take(&mut self.durable);
        let mut dirty_dirs: HashSet<PathBuf> = HashSet::new();
        let seen = self.walk(|path| {
            if known.contains(path) {
                return Ok(());
            }
            if path.is_file() {
                sync_file(path)?;
                synced.files += 1;
            } else {
                // A new directory: its own entries too.
                dirty_dirs.insert(path.to_path_buf());
            }
            if let Some(parent) = path.parent() {
                dirty_dirs.insert(parent.to_path_buf());
            }
            Ok(())
        });
        let seen = match seen {
            Ok(seen) => seen,
            Err(e) => {
                self.durable = known;
                return Err(e);
            }
        };
        for dir in &dirty_dirs {
            if let Err(e) = sync_dir(dir) {
                self.durable = known;
                return Err(e);
            }
            synced.directories += 1;
        }
        self.durable = seen;
        Ok(synced)
    }

    /// Every file and directory below the root (the root included), each
    /// passed to `visit`; vanished entries are skipped.
    fn walk(&self, mut visit: impl FnMut(&Path) -> io::Result<()>) -> io::Result<HashSet<PathBuf>> {
        let mut seen = HashSet::new();
        if !self.root.exists() {
            return Ok(seen);
        }
        visit(&self.root)?;
        seen.insert(self.root.clone());
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                let ty = match entry.file_type() {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if ty.is_dir() {
                    stack.push(path.clone());
                } else if !ty.is_file() {
                    continue;
                }
                match visit(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                seen.insert(path);
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_new_is_synced_and_every_dir_that_gained_an_entry() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        std::fs::create_dir_all(root.join("main/a")).unwrap();
        std::fs::write(root.join("main/a/old.parquet"), b"x").unwrap();
        let mut files = DataFiles::open(&root).unwrap();
        assert_eq!(files.sync_new().unwrap(), Synced::default(), "nothing new");
        std::fs::write(root.join("main/a/new.parquet"), b"y").unwrap();
        std::fs::create_dir_all(root.join("main/b")).unwrap();
        std::fs::write(root.join("main/b/1.parquet"), b"z").unwrap();
        std::fs::write(root.join("main/b/2.parquet"), b"z").unwrap();
        // Files: new, 1, 2. Directories: main/a (new file), main (new
        // subdirectory b), main/b (new itself).
        assert_eq!(files.sync_new().unwrap(), Synced { files: 3, directories: 3 });
        assert_eq!(files.sync_new().unwrap(), Synced::default());
        std::fs::remove_file(root.join("main/a/old.parquet")).unwrap();
        assert_eq!(files.sync_new().unwrap(), Synced::default(), "a removal needs no sync before a commit");
    }

    #[test]
    fn a_missing_root_is_empty_until_made() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        let mut files = DataFiles::open(&root).unwrap();
        assert_eq!(files.sync_new().unwrap(), Synced::default());
        std::fs::create_dir_all(root.join("main")).unwrap();
        // data (new, and its entry in its parent) and main.
        assert_eq!(files.sync_new().unwrap(), Synced { files: 0, directories: 3 });
    }
}

//! The file system's own rules, through a real mount.

use std::fs::{self, File, OpenOptions};
use std::io::Write;

use super::*;

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

fn mounted() -> (tempfile::TempDir, LazyFs) {
    let dir = tempfile::tempdir().unwrap();
    let fs = LazyFs::mount(dir.path()).expect("mounting lazyfs (needs root and /dev/fuse)");
    (dir, fs)
}

#[test]
fn a_write_nobody_synced_is_gone_after_the_cut() {
    let (_d, mut fs) = mounted();
    let p = fs.path().join("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    sync_dir(fs.path());
    f.write_all(b" and not").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"synced and not");
    let cut = fs.power_loss().unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"synced");
    assert_eq!(cut, Cut { files_reverted: 1, directories_reverted: 0, bytes_lost: 8 });
}

#[test]
fn a_new_file_needs_its_directory_synced() {
    let (_d, mut fs) = mounted();
    fs::create_dir(fs.path().join("d")).unwrap();
    sync_dir(fs.path());
    let (a, b) = (fs.path().join("d/a"), fs.path().join("d/b"));
    for p in [&a, &b] {
        let mut f = File::create(p).unwrap();
        f.write_all(b"x").unwrap();
        f.sync_all().unwrap();
    }
    // Only a's entry reaches the disk: the directory is synced between.
    let d = fs.path().join("d");
    fs::remove_file(&b).unwrap();
    sync_dir(&d);
    let mut f = File::create(&b).unwrap();
    f.write_all(b"y").unwrap();
    f.sync_all().unwrap();
    fs.power_loss().unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"x");
    assert!(!b.exists(), "b's second entry was never synced");
}

#[test]
fn an_unsynced_unlink_or_rename_comes_undone() {
    let (_d, mut fs) = mounted();
    let (a, b, c) = (fs.path().join("a"), fs.path().join("b"), fs.path().join("c"));
    for p in [&a, &b] {
        let mut f = File::create(p).unwrap();
        f.write_all(p.file_name().unwrap().as_encoded_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    sync_dir(fs.path());
    fs::remove_file(&a).unwrap();
    fs::rename(&b, &c).unwrap();
    assert!(!a.exists() && !b.exists() && c.exists());
    fs.power_loss().unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"a");
    assert_eq!(fs::read(&b).unwrap(), b"b");
    assert!(!c.exists());
}

#[test]
fn a_synced_rename_replaces_atomically() {
    let (_d, mut fs) = mounted();
    let (tmp, dst) = (fs.path().join("tmp"), fs.path().join("dst"));
    fs::write(&dst, b"old").unwrap();
    File::open(&dst).unwrap().sync_all().unwrap();
    sync_dir(fs.path());
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp).unwrap();
    f.write_all(b"new").unwrap();
    f.sync_all().unwrap();
    fs::rename(&tmp, &dst).unwrap();
    sync_dir(fs.path());
    fs.power_loss().unwrap();
    assert_eq!(fs::read(&dst).unwrap(), b"new");
    assert!(!tmp.exists());
    assert!(fs.counters().file_syncs >= 2 && fs.counters().directory_syncs >= 2);
}

#[test]
fn truncation_and_extension_follow_the_last_sync() {
    let (_d, mut fs) = mounted();
    let p = fs.path().join("f");
    fs::write(&p, vec![7u8; 10_000]).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.sync_all().unwrap();
    sync_dir(fs.path());
    f.set_len(3).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), 3);
    fs.power_loss().unwrap();
    assert_eq!(fs::read(&p).unwrap(), vec![7u8; 10_000]);
}

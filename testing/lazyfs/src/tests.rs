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

#[test]
fn an_open_unlinked_file_reads_and_the_old_mount_fails_after_a_cut() {
    use std::io::Read;
    let (_d, mut fs) = mounted();
    let p = fs.path().join("f");
    std::fs::write(&p, b"still here").unwrap();
    let mut open = File::open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    let mut got = String::new();
    open.read_to_string(&mut got).unwrap();
    assert_eq!(got, "still here");
    // A process that kept a file of the old mount open gets EIO, never a
    // write or sync that would count after the cut.
    let mut kept = OpenOptions::new().create(true).truncate(true).write(true).open(fs.path().join("g")).unwrap();
    fs.power_loss().unwrap();
    assert!(kept.write_all(b"late").and_then(|()| kept.sync_all()).is_err());
    assert!(!fs.path().join("g").exists());
}

#[test]
fn a_rename_across_directories_is_durable_per_directory() {
    let (_d, mut fs) = mounted();
    for d in ["a", "b"] {
        fs::create_dir(fs.path().join(d)).unwrap();
    }
    sync_dir(fs.path());
    let (from, to) = (fs.path().join("a/f"), fs.path().join("b/f"));
    let mut f = File::create(&from).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    sync_dir(&fs.path().join("a"));
    fs::rename(&from, &to).unwrap();
    // Only the target directory synced: strictly, both entries may be on
    // disk (the source's removal was never synced).
    sync_dir(&fs.path().join("b"));
    fs.power_loss().unwrap();
    assert_eq!(fs::read(&from).unwrap(), b"x");
    assert_eq!(fs::read(&to).unwrap(), b"x");
    // An empty directory's removal needs its parent synced too.
    fs::create_dir(fs.path().join("c")).unwrap();
    sync_dir(fs.path());
    fs::remove_dir(fs.path().join("c")).unwrap();
    fs.power_loss().unwrap();
    assert!(fs.path().join("c").is_dir());
}

#[test]
fn a_large_directory_lists_every_entry_once_while_it_changes() {
    let (_d, fs) = mounted();
    let dir = fs.path().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..500 {
        fs::write(dir.join(format!("f{i:03}")), b"").unwrap();
    }
    let mut seen = Vec::new();
    for (n, e) in fs::read_dir(&dir).unwrap().enumerate() {
        seen.push(e.unwrap().file_name().into_string().unwrap());
        if n == 10 {
            // Removals and additions mid-listing do not make it skip or
            // repeat entries that stay.
            for i in 0..5 {
                fs::remove_file(dir.join(format!("f{i:03}"))).unwrap();
            }
            fs::write(dir.join("new"), b"").unwrap();
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "an entry was listed twice");
    assert!((5..500).all(|i| seen.contains(&format!("f{i:03}"))), "an entry that stayed was skipped");
}

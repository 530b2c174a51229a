//! A file system for power-loss tests, after LazyFS (Ramos et al., "When
//! Amnesia Strikes", VLDB 2024): it remembers, for every file and
//! directory, what the last `fsync`/`fdatasync` (`fsyncdir` for a
//! directory) made durable, and at a cut ([`LazyFs::power_loss`]) forgets
//! everything else, as a machine that loses power forgets its page cache.
//!
//! What counts as durable is POSIX's strict reading:
//! - a file's bytes and size: as of its last fsync or fdatasync;
//! - a directory's entries (files created, renamed into it, unlinked from
//!   it, subdirectories): as of its last fsync. A new file whose data was
//!   synced but whose directory was not is gone after the cut; an unlinked
//!   file whose directory was not synced comes back.
//!
//! A cut produces one crash state, the one with nothing unsynced: no
//! partial write-back, no torn tail, no unsynced rename that happened to
//! reach the disk. So it finds missing fsyncs of data and of directory
//! entries; it does not find code that relies on an unsynced rename being
//! all or nothing (a real disk may keep such a rename with the new file
//! empty), nor exercise torn-record recovery (the WAL's own tests do).
//!
//! Everything lives in memory (tests write megabytes, not gigabytes). After
//! a cut the file system is mounted again, so no kernel cache of the old
//! mount survives either; processes that used the old mount must be dead
//! by then (requests still arriving through it fail with EIO).
//!
//! Mounting needs root and /dev/fuse (the `fuser` crate's own mount(2); no
//! libfuse, no fusermount).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

/// Size the file system reports (`statfs`), so free-space checks see room.
pub const CAPACITY_BYTES: u64 = 16 << 30;
const BLOCK_BYTES: u32 = 4096;
const ROOT: u64 = fuser::FUSE_ROOT_ID;
/// How long the kernel may cache an entry or attributes. Safe because all
/// changes go through the kernel; a cut remounts.
const TTL: Duration = Duration::from_secs(1);

/// What a cut threw away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    /// Files whose content or size went back to their last fsync.
    pub files_reverted: usize,
    /// Directories whose entries went back to their last fsync.
    pub directories_reverted: usize,
    /// How much the reverted files' sizes changed (overwrites in place
    /// count as 0: a rough measure that the cut threw work away).
    pub bytes_lost: u64,
}

/// Operations seen, for tests that want to show syncing happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// fsync and fdatasync of files.
    pub file_syncs: u64,
    /// fsync of directories.
    pub directory_syncs: u64,
    /// write calls.
    pub writes: u64,
}

#[derive(Debug, Clone)]
struct Node {
    dir: bool,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    data: Vec<u8>,
    durable_data: Vec<u8>,
    children: BTreeMap<OsString, u64>,
    durable_children: BTreeMap<OsString, u64>,
    open: u32,
}

impl Node {
    fn new(dir: bool, perm: u16, req: &Request<'_>) -> Self {
        Node::owned_by(dir, perm, req.uid(), req.gid())
    }

    fn owned_by(dir: bool, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Node {
            dir,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            data: Vec::new(),
            durable_data: Vec::new(),
            children: BTreeMap::new(),
            durable_children: BTreeMap::new(),
            open: 0,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = if self.dir { 4096 } else { self.data.len() as u64 };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind: if self.dir { FileType::Directory } else { FileType::RegularFile },
            perm: self.perm,
            nlink: if self.dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_BYTES,
            flags: 0,
        }
    }
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Bumped at every cut; requests through an older mount fail.
    mount_generation: u64,
    counters: Counters,
}

impl State {
    fn new() -> Self {
        let root = Node::owned_by(true, 0o755, 0, 0);
        State {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            mount_generation: 0,
            counters: Counters::default(),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.nodes.values().map(|n| n.data.len().max(n.durable_data.len()) as u64).sum()
    }

    /// Whether any directory names `ino`, now or durably.
    fn referenced(&self, ino: u64) -> bool {
        self.nodes
            .values()
            .any(|n| n.children.values().any(|&c| c == ino) || n.durable_children.values().any(|&c| c == ino))
    }

    /// Frees a node nothing can reach any more (not open, not named).
    fn collect(&mut self, ino: u64) {
        if ino != ROOT && self.nodes.get(&ino).is_some_and(|n| n.open == 0) && !self.referenced(ino) {
            self.nodes.remove(&ino);
        }
    }

    /// The power cut: every node back to what was durable; what no durable
    /// entry reaches is gone.
    fn revert(&mut self) -> Cut {
        let mut cut = Cut::default();
        for node in self.nodes.values_mut() {
            if node.dir {
                if node.children != node.durable_children {
                    cut.directories_reverted += 1;
                    node.children = node.durable_children.clone();
                }
            } else if node.data != node.durable_data {
                cut.files_reverted += 1;
                cut.bytes_lost += node.data.len().abs_diff(node.durable_data.len()) as u64;
                node.data = node.durable_data.clone();
            }
            node.open = 0;
        }
        let mut reachable = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(n) = self.nodes.get(&ino) {
                for &c in n.children.values() {
                    if reachable.insert(c) {
                        todo.push(c);
                    }
                }
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
        cut
    }
}

/// A mounted lazy file system.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl LazyFs {
    /// Mounts an empty file system at `mountpoint` (an existing directory).
    pub fn mount(mountpoint: &Path) -> io::Result<LazyFs> {
        let state = Arc::new(Mutex::new(State::new()));
        let mut fs = LazyFs { state, mountpoint: mountpoint.to_path_buf(), session: None };
        fs.session = Some(fs.spawn()?);
        Ok(fs)
    }

    fn spawn(&self) -> io::Result<BackgroundSession> {
        let generation = self.state.lock().unwrap().mount_generation;
        let fs = Handle { state: self.state.clone(), generation, listings: HashMap::new(), next_fh: 1 };
        let options = [MountOption::FSName("lazyfs".into()), MountOption::Subtype("lazyfs".into())];
        fuser::spawn_mount2(fs, &self.mountpoint, &options)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power loss: unmounts, forgets everything not durable, mounts
    /// again. Stop every process using the file system first.
    pub fn power_loss(&mut self) -> io::Result<Cut> {
        // From this instant nothing through the old mount counts: a process
        // still holding a file there (a lingering child of a killed daemon)
        // gets EIO, not a sync recorded after the cut.
        self.state.lock().unwrap().mount_generation += 1;
        self.detach();
        let cut = self.state.lock().unwrap().revert();
        self.session = Some(self.spawn()?);
        Ok(cut)
    }

    /// Unmounts even while files are open (MNT_DETACH: a plain umount, what
    /// the session does on drop, fails with EBUSY then).
    fn detach(&mut self) {
        if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        drop(self.session.take());
    }

    /// Operations counted since the first mount (across cuts).
    pub fn counters(&self) -> Counters {
        self.state.lock().unwrap().counters
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        // Requests through the detached mount fail from here on.
        self.state.lock().unwrap().mount_generation += 1;
        self.detach();
    }
}

/// The mount's view of the shared state.
struct Handle {
    state: Arc<Mutex<State>>,
    generation: u64,
    /// Each open directory's listing as of its opendir: offsets index into
    /// it, so entries added or removed meanwhile never make a listing skip
    /// or repeat one that stayed.
    listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
}

impl Handle {
    /// The state, unless this mount was cut off (then EIO).
    fn state(&self) -> Result<MutexGuard<'_, State>, i32> {
        let s = self.state.lock().unwrap();
        if s.mount_generation != self.generation {
            return Err(libc::EIO);
        }
        Ok(s)
    }
}

fn child(s: &State, parent: u64, name: &OsStr) -> Result<u64, i32> {
    let p = s.nodes.get(&parent).ok_or(libc::ENOENT)?;
    if !p.dir {
        return Err(libc::ENOTDIR);
    }
    p.children.get(name).copied().ok_or(libc::ENOENT)
}

fn node(s: &mut State, ino: u64) -> Result<&mut Node, i32> {
    s.nodes.get_mut(&ino).ok_or(libc::ENOENT)
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Handle {
    fn make(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, dir: bool, mode: u32) -> Result<FileAttr, i32> {
        let mut s = self.state()?;
        match child(&s, parent, name) {
            Ok(_) => return Err(libc::EEXIST),
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let ino = s.next_ino;
        s.next_ino += 1;
        let n = Node::new(dir, (mode & 0o7777) as u16, req);
        let attr = n.attr(ino);
        s.nodes.insert(ino, n);
        let p = node(&mut s, parent)?;
        p.children.insert(name.to_os_string(), ino);
        p.mtime = SystemTime::now();
        Ok(attr)
    }

    /// A directory's entries now, `.` and `..` first.
    fn listing(&self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>, i32> {
        let s = self.state()?;
        let n = s.nodes.get(&ino).ok_or(libc::ENOENT)?;
        if !n.dir {
            return Err(libc::ENOTDIR);
        }
        let mut entries =
            vec![(ino, FileType::Directory, OsString::from(".")), (ino, FileType::Directory, "..".into())];
        for (name, &c) in &n.children {
            let kind = if s.nodes.get(&c).is_some_and(|n| n.dir) { FileType::Directory } else { FileType::RegularFile };
            entries.push((c, kind, name.clone()));
        }
        Ok(entries)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), i32> {
        let mut s = self.state()?;
        let ino = child(&s, parent, name)?;
        let n = &s.nodes[&ino];
        if n.dir != dir {
            return Err(if dir { libc::ENOTDIR } else { libc::EISDIR });
        }
        if dir && !n.children.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        node(&mut s, parent)?.children.remove(name);
        s.collect(ino);
        Ok(())
    }

    fn rename_entry(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), i32> {
        let mut s = self.state()?;
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        let ino = child(&s, parent, name)?;
        let replaced = match child(&s, newparent, newname) {
            Ok(t) if flags & libc::RENAME_NOREPLACE != 0 => {
                let _ = t;
                return Err(libc::EEXIST);
            }
            Ok(t) => {
                let (src_dir, dst) = (s.nodes[&ino].dir, &s.nodes[&t]);
                if dst.dir && !dst.children.is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
                if dst.dir != src_dir {
                    return Err(if dst.dir { libc::EISDIR } else { libc::ENOTDIR });
                }
                Some(t)
            }
            Err(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        node(&mut s, parent)?.children.remove(name);
        node(&mut s, newparent)?.children.insert(newname.to_os_string(), ino);
        if let Some(t) = replaced.filter(|&t| t != ino) {
            s.collect(t);
        }
        Ok(())
    }
}

impl Filesystem for Handle {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let r = self.state().and_then(|s| child(&s, parent, name).map(|ino| s.nodes[&ino].attr(ino)));
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state().and_then(|mut s| node(&mut s, ino).map(|n| n.attr(ino))) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let r = self.state().and_then(|mut s| {
            let n = node(&mut s, ino)?;
            if let Some(m) = mode {
                n.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            if let Some(len) = size {
                if n.dir {
                    return Err(libc::EISDIR);
                }
                n.data.resize(len as usize, 0);
                n.mtime = SystemTime::now();
            }
            if let Some(t) = atime {
                n.atime = time(t);
            }
            if let Some(t) = mtime {
                n.mtime = time(t);
            }
            n.ctime = SystemTime::now();
            Ok(n.attr(ino))
        });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.make(req, parent, name, true, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        match self.rename_entry(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.state().and_then(|mut s| node(&mut s, ino).map(|n| n.open += 1)) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.make(req, parent, name, false, mode & !umask).and_then(|attr| {
            let mut s = self.state()?;
            node(&mut s, attr.ino)?.open += 1;
            Ok(attr)
        });
        match r {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let r = self.state().and_then(|mut s| {
            let n = node(&mut s, ino)?;
            let start = (offset.max(0) as usize).min(n.data.len());
            let end = start.saturating_add(size as usize).min(n.data.len());
            Ok(n.data[start..end].to_vec())
        });
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let r = self.state().and_then(|mut s| {
            s.counters.writes += 1;
            let n = node(&mut s, ino)?;
            let start = offset.max(0) as usize;
            let end = start + data.len();
            if n.data.len() < end {
                n.data.resize(end, 0);
            }
            n.data[start..end].copy_from_slice(data);
            n.mtime = SystemTime::now();
            Ok(data.len() as u32)
        });
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut s) = self.state() {
            if let Some(n) = s.nodes.get_mut(&ino) {
                n.open = n.open.saturating_sub(1);
            }
            s.collect(ino);
        }
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let r = self.state().and_then(|mut s| {
            s.counters.file_syncs += 1;
            let n = node(&mut s, ino)?;
            n.durable_data.clone_from(&n.data);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: fuser::ReplyOpen) {
        match self.listing(ino) {
            Ok(entries) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.listings.insert(fh, entries);
                reply.opened(fh, 0)
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let entries = match self.listings.get(&fh) {
            Some(l) => l.clone(),
            None => match self.listing(ino) {
                Ok(l) => l,
                Err(e) => return reply.error(e),
            },
        };
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.listings.remove(&fh);
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let r = self.state().and_then(|mut s| {
            s.counters.directory_syncs += 1;
            let n = node(&mut s, ino)?;
            let before: Vec<u64> = n.durable_children.values().copied().collect();
            n.durable_children.clone_from(&n.children);
            for ino in before {
                s.collect(ino);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match self.state() {
            Ok(s) => {
                let blocks = CAPACITY_BYTES / BLOCK_BYTES as u64;
                let free = blocks.saturating_sub(s.used_bytes().div_ceil(BLOCK_BYTES as u64));
                reply.statfs(blocks, free, free, 1 << 20, 1 << 20, BLOCK_BYTES, 255, BLOCK_BYTES)
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.state().and_then(|mut s| {
            let n = node(&mut s, ino)?;
            match mode {
                0 => {
                    let end = (offset + length).max(0) as usize;
                    if n.data.len() < end {
                        n.data.resize(end, 0);
                    }
                    Ok(())
                }
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                _ => Err(libc::EOPNOTSUPP),
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests;

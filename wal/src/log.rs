//! [`Wal`]: opening with recovery, appending, reading, truncating.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};

use crate::format::{self, RecordKind, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::reader::{Reader, SegmentView};
use crate::segment::{self, Damage, CORRUPT_MARKER};
use crate::telemetry as m;
use crate::writer::{Request, Writer};
use crate::{AppendError, Durability, Lsn, LsnRange, OpenError, ReadError, TruncateError, WalOptions};

/// An append queued by [`Wal::enqueue`], waiting for its sync.
#[must_use = "an append is acknowledged only when its PendingAppend resolves"]
pub struct PendingAppend {
    rx: tokio::sync::oneshot::Receiver<Result<LsnRange, AppendError>>,
    start: Instant,
    shared: Arc<Shared>,
}

impl PendingAppend {
    /// Resolves with the records' LSNs once they are durable.
    pub async fn durable(self) -> Result<LsnRange, AppendError> {
        let res = self.rx.await.unwrap_or(Err(AppendError::Closed));
        observe(self.start, &self.shared.opts.metrics_label, &res);
        res
    }

    /// [`PendingAppend::durable`] for threads outside an async runtime.
    pub fn durable_blocking(self) -> Result<LsnRange, AppendError> {
        let res = self.rx.blocking_recv().unwrap_or(Err(AppendError::Closed));
        observe(self.start, &self.shared.opts.metrics_label, &res);
        res
    }
}

fn observe(start: Instant, label: &str, res: &Result<LsnRange, AppendError>) {
    if res.is_ok() {
        metrics::histogram!(m::APPEND_DURATION_SECONDS, "log" => label.to_owned())
            .record(start.elapsed().as_secs_f64());
    }
}

/// Requests the writer queue holds at most; beyond it appends get backpressure.
const WRITER_QUEUE_CAPACITY: usize = 16 * 1024;

/// A segment known to the log.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub first_lsn: Lsn,
    pub path: PathBuf,
    pub durable_len: u64,
    pub last_lsn: Option<Lsn>,
}

/// State shared by appenders, readers and the writer thread.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub opts: WalOptions,
    /// In LSN order; the last one is the active segment.
    pub segments: Mutex<Vec<SegmentInfo>>,
    /// Highest durable LSN, 0 if none.
    pub durable_lsn: AtomicU64,
    pub retained_bytes: AtomicU64,
    pub inflight_bytes: AtomicU64,
    pub poisoned: AtomicBool,
    /// Set by a truncation that covers the whole active segment: the writer
    /// starts a new segment before its next write, so the next truncation
    /// can delete the old one (the active segment is never deleted).
    pub rotate_requested: AtomicBool,
}

/// What recovery found and did when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Valid records found.
    pub records: u64,
    /// Bytes of an interrupted last write cut off the active segment.
    pub torn_tail_bytes: u64,
    /// Segments with damage inside them, moved aside.
    pub corrupt: Vec<CorruptSegment>,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
}

/// A damaged segment: its valid prefix stays in the log, the whole original
/// file is kept next to it for inspection, and the records after the damage
/// are missing from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptSegment {
    /// The segment's path in the log.
    pub path: PathBuf,
    /// Where the original file was moved.
    pub moved_to: PathBuf,
    /// Offset of the first damaged byte range (frame start, or 0 for the header).
    pub offset: u64,
    /// Which check failed.
    pub reason: String,
    /// First LSN that is missing from the log because of the damage.
    pub first_lost_lsn: Lsn,
    /// Bytes of the original file after the valid prefix.
    pub lost_bytes: u64,
}

/// What a truncation removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TruncateOutcome {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Bytes freed.
    pub bytes_removed: u64,
}

/// One account's write-ahead log. Cheap to share behind an `Arc`; the writer
/// thread stops when the `Wal` is dropped, after answering queued appends.
pub struct Wal {
    shared: Arc<Shared>,
    sender: Option<Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.shared.dir).finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering it first.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, RecoveryReport), OpenError> {
        opts.validate().map_err(OpenError::InvalidOptions)?;
        m::describe();
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { op, path, source }
        };
        segment::create_dir_durably(dir, opts.durability != Durability::None).map_err(io("creating", dir))?;
        let mut names: Vec<(Lsn, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("listing", dir))? {
            let entry = entry.map_err(io("listing", dir))?;
            let name = entry.file_name();
            if let Some(lsn) = name.to_str().and_then(segment::parse_segment_file_name) {
                names.push((lsn, entry.path()));
            }
        }
        names.sort();
        let mut report = RecoveryReport { segments: names.len(), ..Default::default() };
        let mut segments: Vec<SegmentInfo> = Vec::new();
        let mut max_lsn_seen = 0u64;
        let sync = opts.durability != Durability::None;
        let n = names.len();
        for (i, (name_lsn, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == n;
            let scan = segment::scan(&path, name_lsn, is_last, opts.max_record_bytes).map_err(io("scanning", &path))?;
            max_lsn_seen = max_lsn_seen.max(name_lsn.get().saturating_sub(1));
            if let Some(l) = scan.last_lsn {
                max_lsn_seen = max_lsn_seen.max(l.get());
            }
            report.records += scan.records;
            let mut keep_len = scan.valid_end;
            match &scan.damage {
                None => {}
                Some(Damage::TornTail { offset }) => {
                    report.torn_tail_bytes += scan.file_len - offset;
                    // A damaged length field can pass for a torn write; in case
                    // the cut bytes held acknowledged records, never reuse
                    // their LSNs (each record takes at least a frame header).
                    let first_cut = scan.last_lsn.map(Lsn::next).unwrap_or(scan.first_lsn);
                    max_lsn_seen =
                        max_lsn_seen.max(first_cut.get() + (scan.file_len - offset) / FRAME_HEADER_BYTES as u64);
                    tracing::warn!(path = %path.display(), offset, bytes = scan.file_len - offset,
                        "cutting torn tail of the write-ahead log (an append interrupted by a crash; never acknowledged)");
                    metrics::counter!(m::TORN_TAIL_BYTES_TOTAL, "log" => opts.metrics_label.clone())
                        .increment(scan.file_len - offset);
                    if scan.header_ok {
                        let f = OpenOptions::new().write(true).open(&path).map_err(io("opening", &path))?;
                        f.set_len(*offset).map_err(io("truncating", &path))?;
                        f.sync_all().map_err(io("syncing", &path))?;
                    } else {
                        std::fs::remove_file(&path).map_err(io("removing", &path))?;
                        segment::create_segment(dir, name_lsn, sync).map_err(io("creating", &path))?;
                        keep_len = SEGMENT_HEADER_BYTES as u64;
                    }
                }
                Some(Damage::Corrupt { offset, reason }) => {
                    let c = move_aside(dir, &path, &scan, *offset, reason, is_last, sync)?;
                    tracing::error!(path = %path.display(), offset, reason = %reason, moved_to = %c.moved_to.display(),
                        first_lost_lsn = %c.first_lost_lsn, "corrupt write-ahead log segment moved aside");
                    metrics::counter!(m::CORRUPT_SEGMENTS_TOTAL, "log" => opts.metrics_label.clone()).increment(1);
                    // The lost region may have held records up to this LSN
                    // (every frame is at least a header long): never reuse them.
                    let lost_upper = c.first_lost_lsn.get() + c.lost_bytes / FRAME_HEADER_BYTES as u64;
                    max_lsn_seen = max_lsn_seen.max(lost_upper);
                    report.corrupt.push(c);
                    if !path.exists() {
                        continue;
                    }
                    keep_len = keep_len.max(SEGMENT_HEADER_BYTES as u64);
                }
            }
            segments.push(SegmentInfo { first_lsn: name_lsn, path, durable_len: keep_len, last_lsn: scan.last_lsn });
        }
        let next_lsn = Lsn::new((max_lsn_seen + 1).max(opts.min_next_lsn).max(1));
        // The active segment must continue exactly at next_lsn; otherwise
        // (an empty log, a gap after damage, a caller's min_next_lsn) start a
        // fresh one there.
        let active_fits = segments.last().is_some_and(|s| {
            let expected = s.last_lsn.map(Lsn::next).unwrap_or(s.first_lsn);
            expected == next_lsn
        });
        if !active_fits {
            if let Some(last) = segments.last() {
                if last.last_lsn.is_none() {
                    // An empty segment at the wrong LSN holds nothing: replace it.
                    std::fs::remove_file(&last.path).map_err(io("removing", &last.path))?;
                    segments.pop();
                }
            }
            let (_, path) = segment::create_segment(dir, next_lsn, sync).map_err(io("creating segment", dir))?;
            segments.push(SegmentInfo {
                first_lsn: next_lsn,
                path,
                durable_len: SEGMENT_HEADER_BYTES as u64,
                last_lsn: None,
            });
        }
        if sync {
            segment::sync_dir(dir).map_err(io("syncing", dir))?;
        }
        report.next_lsn = next_lsn;
        let active = segments.last().expect("an active segment exists").clone();
        let file = OpenOptions::new().read(true).write(true).open(&active.path).map_err(io("opening", &active.path))?;
        let retained: u64 = segments.iter().map(|s| s.durable_len).sum();
        let durable = segments.iter().rev().find_map(|s| s.last_lsn).map(Lsn::get).unwrap_or(0);
        metrics::gauge!(m::UNCOMPACTED_BYTES, "log" => opts.metrics_label.clone()).set(retained as f64);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            segments: Mutex::new(segments),
            durable_lsn: AtomicU64::new(durable),
            retained_bytes: AtomicU64::new(retained),
            inflight_bytes: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            rotate_requested: AtomicBool::new(false),
        });
        let writer = Writer {
            shared: shared.clone(),
            file,
            path: active.path.clone(),
            offset: active.durable_len,
            seg_records: active.last_lsn.map(|l| l.get() + 1 - active.first_lsn.get()).unwrap_or(0),
            next_lsn,
        };
        let (tx, rx) = crossbeam_channel::bounded(WRITER_QUEUE_CAPACITY);
        let handle = std::thread::Builder::new()
            .name("duckpond-wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io("spawning writer for", dir))?;
        Ok((Wal { shared, sender: Some(tx), writer: Some(handle) }, report))
    }

    /// Appends one record; resolves once it is durable (per the durability mode).
    pub async fn append(&self, kind: RecordKind, payload: impl Into<Bytes>) -> Result<Lsn, AppendError> {
        self.append_batch(vec![(kind, payload.into())]).await.map(|r| r.first)
    }

    /// Appends records with consecutive LSNs, all or nothing.
    pub async fn append_batch(&self, records: Vec<(RecordKind, Bytes)>) -> Result<LsnRange, AppendError> {
        self.enqueue(records)?.durable().await
    }

    /// [`Wal::append_batch`] for threads outside an async runtime.
    pub fn append_batch_blocking(&self, records: Vec<(RecordKind, Bytes)>) -> Result<LsnRange, AppendError> {
        self.enqueue(records)?.durable_blocking()
    }

    /// Queues records (consecutive LSNs, all or nothing) and returns at once;
    /// the [`PendingAppend`] resolves after the sync that covers them.
    ///
    /// This lets one appender keep many appends in flight instead of paying
    /// a whole write + fdatasync round trip per append: records queued by one
    /// caller get increasing LSNs in the order they were queued. Each pending
    /// append succeeds or fails on its own: when one fails (a failed write,
    /// disk full), one queued after it may still succeed, so a caller that
    /// needs a gap-free prefix must stop at the first failure and account
    /// for the later appends that did succeed. Limits (backpressure, record
    /// size) are checked here, so a refused append never enters the queue.
    pub fn enqueue(&self, records: Vec<(RecordKind, Bytes)>) -> Result<PendingAppend, AppendError> {
        let start = Instant::now();
        let rx = self.submit(records)?;
        Ok(PendingAppend { rx, start, shared: self.shared.clone() })
    }

    fn submit(
        &self,
        records: Vec<(RecordKind, Bytes)>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<LsnRange, AppendError>>, AppendError> {
        if records.is_empty() {
            return Err(AppendError::Empty);
        }
        let opts = &self.shared.opts;
        let mut bytes = 0u64;
        for (_, p) in &records {
            if p.len() as u64 > opts.max_record_bytes {
                return Err(AppendError::RecordTooLarge {
                    bytes: p.len() as u64,
                    max_record_bytes: opts.max_record_bytes,
                });
            }
            bytes += format::frame_len(p.len()) as u64;
        }
        if self.shared.poisoned.load(Ordering::Acquire) {
            let path = self.shared.segments.lock().expect("segments lock").last().map(|s| s.path.clone());
            return Err(AppendError::Poisoned(path.unwrap_or_default()));
        }
        let retained = self.shared.retained_bytes.load(Ordering::Acquire);
        let inflight = self.shared.inflight_bytes.fetch_add(bytes, Ordering::AcqRel);
        let backpressure = || {
            metrics::counter!(m::BACKPRESSURE_TOTAL, "log" => opts.metrics_label.clone()).increment(1);
            AppendError::Backpressure {
                uncompacted_bytes: retained,
                max_uncompacted_bytes: opts.max_uncompacted_bytes,
                inflight_bytes: inflight,
            }
        };
        if retained + inflight + bytes > opts.max_uncompacted_bytes || inflight + bytes > opts.max_inflight_bytes {
            self.shared.inflight_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(backpressure());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = self.sender.as_ref().ok_or(AppendError::Closed)?;
        match sender.try_send(Request { records, bytes, reply: tx }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.shared.inflight_bytes.fetch_sub(bytes, Ordering::AcqRel);
                Err(backpressure())
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.inflight_bytes.fetch_sub(bytes, Ordering::AcqRel);
                Err(AppendError::Closed)
            }
        }
    }

    /// Records with LSN >= `from` that were durable when this was called.
    pub fn read_from(&self, from: Lsn) -> Result<Reader, ReadError> {
        let segs = self.shared.segments.lock().expect("segments lock").clone();
        let upto = Lsn::new(self.shared.durable_lsn.load(Ordering::Acquire) + 1);
        if let Some(oldest) = segs.first().map(|s| s.first_lsn) {
            if from < oldest && segs.iter().any(|s| s.last_lsn.is_some()) {
                return Err(ReadError::Truncated { requested: from, oldest });
            }
        }
        // Skip segments that end before `from`.
        let views = segs
            .iter()
            .enumerate()
            .filter(|(i, _)| segs.get(i + 1).is_none_or(|next| next.first_lsn > from))
            .map(|(_, s)| SegmentView { path: s.path.clone(), durable_len: s.durable_len })
            .collect();
        Ok(Reader::new(views, from, upto, self.shared.opts.max_record_bytes))
    }

    /// Deletes segments all of whose records are below `lsn` (the compactor
    /// calls this after committing everything below `lsn`). The active
    /// segment is never deleted; if all its records are below `lsn`, the
    /// writer starts a new segment at its next write so that the next
    /// truncation frees it.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<TruncateOutcome, TruncateError> {
        let mut out = TruncateOutcome::default();
        let mut segs = self.shared.segments.lock().expect("segments lock");
        while segs.len() > 1 && segs[1].first_lsn <= lsn {
            let s = &segs[0];
            match std::fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(TruncateError { path: s.path.clone(), source }),
            }
            out.segments_removed += 1;
            out.bytes_removed += s.durable_len;
            self.shared.retained_bytes.fetch_sub(s.durable_len, Ordering::AcqRel);
            segs.remove(0);
        }
        if segs.last().and_then(|s| s.last_lsn).is_some_and(|l| l < lsn) {
            self.shared.rotate_requested.store(true, Ordering::Release);
        }
        drop(segs);
        if out.segments_removed > 0 {
            // Best effort: a removal lost to a crash only means the segment
            // is read (and skipped by LSN) again.
            let _ = segment::sync_dir(&self.shared.dir);
        }
        let retained = self.shared.retained_bytes.load(Ordering::Acquire);
        metrics::gauge!(m::UNCOMPACTED_BYTES, "log" => self.shared.opts.metrics_label.clone()).set(retained as f64);
        Ok(out)
    }

    /// Highest durable LSN, if any record was ever appended.
    pub fn durable_lsn(&self) -> Option<Lsn> {
        Some(self.shared.durable_lsn.load(Ordering::Acquire)).filter(|v| *v > 0).map(Lsn::new)
    }

    /// Bytes held in segments (what backpressure limits).
    pub fn uncompacted_bytes(&self) -> u64 {
        self.shared.retained_bytes.load(Ordering::Acquire)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Stops the writer after it answers every queued append.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.sender.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Moves a damaged segment aside and puts its valid prefix back in its place.
fn move_aside(
    dir: &Path,
    path: &Path,
    scan: &segment::Scan,
    offset: u64,
    reason: &str,
    is_last: bool,
    sync: bool,
) -> Result<CorruptSegment, OpenError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| OpenError::Io { op, path: p, source }
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
    let moved_to = dir.join(format!("{file_name}{CORRUPT_MARKER}{stamp}"));
    std::fs::rename(path, &moved_to).map_err(io("moving aside", path))?;
    let first_lost_lsn = scan.last_lsn.map(Lsn::next).unwrap_or(scan.first_lsn);
    if scan.header_ok && (scan.records > 0 || is_last) {
        // Keep the valid prefix in the log.
        let prefix_len = scan.valid_end;
        let mut src = std::fs::File::open(&moved_to).map_err(io("opening", &moved_to))?;
        let mut dst = OpenOptions::new().write(true).create_new(true).open(path).map_err(io("creating", path))?;
        std::io::copy(&mut std::io::Read::take(&mut src, prefix_len), &mut dst).map_err(io("copying", path))?;
        if sync {
            dst.sync_all().map_err(io("syncing", path))?;
        }
    } else if is_last {
        segment::create_segment(dir, scan.first_lsn, sync).map_err(io("creating", path))?;
    }
    if sync {
        segment::sync_dir(dir).map_err(io("syncing", dir))?;
    }
    Ok(CorruptSegment {
        path: path.to_path_buf(),
        moved_to,
        offset,
        reason: reason.to_string(),
        first_lost_lsn,
        lost_bytes: scan.file_len - scan.valid_end.min(scan.file_len),
    })
}

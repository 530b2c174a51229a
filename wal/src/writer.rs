//! The writer thread: group commit.
//!
//! Appenders queue requests on a bounded channel and park on a oneshot. The
//! writer takes everything queued (up to `max_batch_bytes`), assigns LSNs,
//! encodes the frames (large payloads stay in their own buffers), writes them
//! with one vectored write, makes them durable with one fdatasync, and only
//! then answers every appender in the batch. A failed write or sync is undone
//! (the file is cut back to where the batch began) and reported to exactly
//! the appenders of that batch, so the log never keeps a record whose
//! appender was told it failed. After a crash, recovery cuts the
//! unacknowledged tail.

use std::fs::File;
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;

use crate::format::{self, RecordKind, SEGMENT_HEADER_BYTES};

/// Payloads at least this large are written from their own buffer (one
/// iovec each) instead of being copied into the batch buffer.
const VECTORED_PAYLOAD_MIN_BYTES: usize = 64 * 1024;
use crate::log::{SegmentInfo, Shared};
use crate::segment;
use crate::telemetry as m;
use crate::{AppendError, Durability, Lsn, LsnRange};

/// One append waiting for the writer.
pub(crate) struct Request {
    pub records: Vec<(RecordKind, Bytes)>,
    pub bytes: u64,
    pub reply: tokio::sync::oneshot::Sender<Result<LsnRange, AppendError>>,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub file: File,
    pub path: PathBuf,
    /// Where the next frame goes in the active segment.
    pub offset: u64,
    /// Records in the active segment.
    pub seg_records: u64,
    pub next_lsn: Lsn,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Request>) {
        let max_batch = self.shared.opts.max_batch_bytes;
        let mut batch: Vec<Request> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut bytes = first.bytes;
            batch.push(first);
            if let Durability::Batch { window_ms } = self.shared.opts.durability {
                let deadline = Instant::now() + Duration::from_millis(window_ms);
                while bytes < max_batch {
                    match rx.recv_deadline(deadline) {
                        Ok(r) => {
                            bytes += r.bytes;
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
            }
            while bytes < max_batch {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.bytes;
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    fn commit(&mut self, batch: &mut Vec<Request>) {
        let seg_size = self.shared.opts.segment_size_bytes;
        if self.shared.rotate_requested.swap(false, Ordering::AcqRel) && self.seg_records > 0 {
            // Everything in the active segment is compacted: move on so the
            // next truncation can delete it. On failure keep appending here.
            if let Err(e) = self.rotate() {
                tracing::warn!(path = %self.path.display(), error = %e, "could not start a new segment after truncation");
            }
        }
        let mut buf = Frames::default();
        let mut chunk: Vec<(Request, LsnRange)> = Vec::new();
        let mut chunk_first = self.next_lsn;
        for req in batch.drain(..) {
            self.shared.inflight_bytes.fetch_sub(req.bytes, Ordering::AcqRel);
            if self.shared.poisoned.load(Ordering::Acquire) {
                let _ = req.reply.send(Err(AppendError::Poisoned(self.path.clone())));
                continue;
            }
            let used = self.offset + buf.len();
            if used + req.bytes > seg_size && (self.seg_records > 0 || !buf.is_empty()) {
                self.finish_chunk(&mut buf, &mut chunk, chunk_first);
                if let Err(e) = self.rotate() {
                    let _ = req.reply.send(Err(e));
                    chunk_first = self.next_lsn;
                    continue;
                }
                chunk_first = self.next_lsn;
            }
            let first = self.next_lsn;
            for (kind, payload) in &req.records {
                buf.push(self.next_lsn, *kind, payload);
                self.next_lsn = self.next_lsn.next();
            }
            let last = Lsn::new(self.next_lsn.get() - 1);
            chunk.push((req, LsnRange { first, last }));
        }
        self.finish_chunk(&mut buf, &mut chunk, chunk_first);
    }

    /// Writes and syncs `buf`, then answers the appenders in `chunk`.
    fn finish_chunk(&mut self, buf: &mut Frames, chunk: &mut Vec<(Request, LsnRange)>, chunk_first: Lsn) {
        if chunk.is_empty() {
            return;
        }
        let records: u64 = chunk.iter().map(|(r, _)| r.records.len() as u64).sum();
        match self.write_and_sync(buf) {
            Ok(()) => {
                self.seg_records += records;
                let last = Lsn::new(self.next_lsn.get() - 1);
                self.publish(last, buf.len(), records);
                for (req, range) in chunk.drain(..) {
                    let _ = req.reply.send(Ok(range));
                }
            }
            Err(e) => {
                // Nothing of this chunk is in the log: give its LSNs back.
                self.next_lsn = chunk_first;
                for (req, _) in chunk.drain(..) {
                    let _ = req.reply.send(Err(clone_err(&e)));
                }
            }
        }
        buf.clear();
    }

    fn write_and_sync(&mut self, buf: &mut Frames) -> Result<(), AppendError> {
        let start = self.offset;
        if let Err(e) = buf.write_at(&mut self.file, start) {
            // Cut back whatever part was written so the tail stays clean.
            let _ = self.file.set_len(start);
            return Err(self.io_error("writing", e));
        }
        if self.shared.opts.durability != Durability::None {
            if let Err(e) = self.file.sync_data() {
                // After a failed fsync the kernel may have dropped dirty pages:
                // undo the write and make the undo durable, or stop trusting
                // this file until it is reopened and recovered.
                let undone = self.file.set_len(start).and_then(|_| self.file.sync_data());
                if undone.is_err() {
                    self.shared.poisoned.store(true, Ordering::Release);
                    tracing::error!(path = %self.path.display(), error = %e, "fsync failed twice; WAL poisoned");
                }
                return Err(self.io_error("syncing", e));
            }
            metrics::counter!(m::FSYNCS_TOTAL, "log" => self.shared.opts.metrics_label.clone()).increment(1);
        }
        self.offset = start + buf.len();
        Ok(())
    }

    fn publish(&self, last: Lsn, bytes: u64, records: u64) {
        {
            let mut segs = self.shared.segments.lock().expect("segments lock");
            let active = segs.last_mut().expect("there is always an active segment");
            active.durable_len = self.offset;
            active.last_lsn = Some(last);
        }
        self.shared.durable_lsn.store(last.get(), Ordering::Release);
        let retained = self.shared.retained_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let label = self.shared.opts.metrics_label.clone();
        metrics::counter!(m::WRITTEN_BYTES_TOTAL, "log" => label.clone()).increment(bytes);
        metrics::counter!(m::APPENDED_RECORDS_TOTAL, "log" => label.clone()).increment(records);
        metrics::histogram!(m::RECORDS_PER_FSYNC, "log" => label.clone()).record(records as f64);
        metrics::gauge!(m::UNCOMPACTED_BYTES, "log" => label).set(retained as f64);
    }

    /// Closes the active segment and starts a new one at `next_lsn`.
    fn rotate(&mut self) -> Result<(), AppendError> {
        let sync = self.shared.opts.durability != Durability::None;
        let (file, path) = segment::create_segment(&self.shared.dir, self.next_lsn, sync)
            .map_err(|e| self.io_error("creating segment", e))?;
        self.file = file;
        self.path = path.clone();
        self.offset = SEGMENT_HEADER_BYTES as u64;
        self.seg_records = 0;
        self.shared.segments.lock().expect("segments lock").push(SegmentInfo {
            first_lsn: self.next_lsn,
            path,
            durable_len: SEGMENT_HEADER_BYTES as u64,
            last_lsn: None,
        });
        self.shared.retained_bytes.fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::AcqRel);
        metrics::counter!(m::WRITTEN_BYTES_TOTAL, "log" => self.shared.opts.metrics_label.clone())
            .increment(SEGMENT_HEADER_BYTES as u64);
        Ok(())
    }

    fn io_error(&self, op: &'static str, e: std::io::Error) -> AppendError {
        if e.raw_os_error() == Some(ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull {
            AppendError::DiskFull { path: self.path.clone() }
        } else {
            AppendError::Io { op, path: self.path.clone(), source: e }
        }
    }
}

/// errno of "no space left on device" on Linux and macOS.
const ENOSPC: i32 = 28;

fn clone_err(e: &AppendError) -> AppendError {
    match e {
        AppendError::DiskFull { path } => AppendError::DiskFull { path: path.clone() },
        AppendError::Io { op, path, source } => {
            AppendError::Io { op, path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
        }
        AppendError::Poisoned(p) => AppendError::Poisoned(p.clone()),
        _ => AppendError::Closed,
    }
}

/// The frames of one write: headers and small payloads copied into one
/// buffer, large payloads referenced where they are, written with writev.
#[derive(Default)]
struct Frames {
    inline: Vec<u8>,
    parts: Vec<Part>,
    /// Start of the inline run not yet closed into a part.
    open_from: usize,
    len: u64,
}

enum Part {
    Inline(Range<usize>),
    Payload(Bytes),
}

impl Frames {
    fn push(&mut self, lsn: Lsn, kind: RecordKind, payload: &Bytes) {
        format::encode_frame_header(&mut self.inline, lsn, kind, payload);
        if payload.len() >= VECTORED_PAYLOAD_MIN_BYTES {
            self.close_run();
            self.parts.push(Part::Payload(payload.clone()));
        } else {
            self.inline.extend_from_slice(payload);
        }
        self.len += format::frame_len(payload.len()) as u64;
    }

    fn close_run(&mut self) {
        if self.open_from < self.inline.len() {
            self.parts.push(Part::Inline(self.open_from..self.inline.len()));
            self.open_from = self.inline.len();
        }
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.inline.clear();
        self.parts.clear();
        self.open_from = 0;
        self.len = 0;
    }

    /// Writes every frame at `offset` with as few writev calls as the
    /// kernel allows.
    fn write_at(&mut self, file: &mut File, offset: u64) -> std::io::Result<()> {
        self.close_run();
        let mut slices: Vec<IoSlice<'_>> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Inline(r) => IoSlice::new(&self.inline[r.clone()]),
                Part::Payload(b) => IoSlice::new(b),
            })
            .collect();
        file.seek(SeekFrom::Start(offset))?;
        let mut rest: &mut [IoSlice<'_>] = &mut slices;
        while !rest.is_empty() {
            match file.write_vectored(rest) {
                Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "writev wrote nothing")),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

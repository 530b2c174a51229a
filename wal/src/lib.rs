//! The per-account durable write-ahead log.
//!
//! Every write of an account is appended here and acknowledged only once it
//! is on disk. Main types:
//!
//! - [`Wal`]: one log in one directory. [`Wal::open`] recovers it and returns
//!   a [`RecoveryReport`]; [`Wal::append`] / [`Wal::append_batch`] resolve with
//!   the [`Lsn`] after the fdatasync that covers the record (group commit:
//!   one writer thread batches concurrent appends into one write + one sync);
//!   [`Wal::enqueue`] queues an append and returns a [`PendingAppend`], so
//!   one appender can keep many appends in flight;
//!   [`Wal::read_from`] iterates durable records; [`Wal::truncate_before`]
//!   deletes segments the compactor has committed.
//! - [`WalOptions`]: segment size, record and backlog limits, [`Durability`].
//! - Errors: [`OpenError`], [`AppendError`] (with `is_backpressure`,
//!   `is_disk_full`), [`ReadError`], [`TruncateError`].
//!
//! Layering: [`format`] (pure frame and header codec) -> `segment` (files,
//! scanning, recovery of one file) -> `writer` (group commit) -> `log` (the
//! `Wal`). Payloads are opaque bytes with a [`RecordKind`]; the `schema`
//! crate gives them meaning.
//!
//! # Recovery
//!
//! At open every segment is scanned and every frame checked (length, CRC32C,
//! LSN continuity):
//!
//! - A damaged frame at the end of the *last* segment (cut short, running
//!   past the end, failing its checksum as the final frame, or followed only
//!   by zero bytes) is the trace of an append interrupted by a crash. It was
//!   never acknowledged: it is cut off, logged, counted in
//!   `duckpond_wal_torn_tail_bytes_total`, and the log continues. LSNs the cut
//!   bytes could have held are skipped (a damaged length field can look like
//!   a torn write), so LSNs stay unique even then.
//! - Any other damage is corruption. The original file is moved aside to
//!   `<segment>.corrupt-<unix ms>` (kept for inspection), its valid prefix is
//!   put back under the segment's name, and the report, an error log line and
//!   `duckpond_wal_corrupt_segments_total` name the segment, the offset and
//!   the first lost LSN. Records after the damage in that segment are missing
//!   from the log; later segments are kept. LSNs of the lost region are never
//!   reused.
//! - I/O errors while opening are [`OpenError::Io`], never treated as damage.
#![deny(missing_docs)]

mod error;
pub mod format;
mod log;
mod lsn;
mod options;
mod reader;
mod segment;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
mod writer;

pub use error::{AppendError, OpenError, ReadError, TruncateError};
pub use format::RecordKind;
pub use log::{CorruptSegment, PendingAppend, RecoveryReport, TruncateOutcome, Wal};
pub use lsn::{Lsn, LsnRange};
pub use options::{Durability, WalOptions};
pub use reader::{Reader, Record};

#[cfg(test)]
mod tests;

//! One error enum per operation, each carrying the context to act on.

use std::path::PathBuf;

use crate::Lsn;

/// Opening (and recovering) a log failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A filesystem operation failed; not corruption.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The options are inconsistent.
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
}

/// An append was not made durable; nothing of it will be read back.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The log holds `max_uncompacted_bytes` of records not yet truncated, or
    /// too many bytes are waiting for the writer: retry after the compactor
    /// catches up.
    #[error("write-ahead log full: {uncompacted_bytes} bytes not yet compacted (max {max_uncompacted_bytes}), {inflight_bytes} bytes in flight")]
    Backpressure {
        /// Bytes retained in segments.
        uncompacted_bytes: u64,
        /// The configured cap.
        max_uncompacted_bytes: u64,
        /// Bytes queued for the writer.
        inflight_bytes: u64,
    },
    /// One record exceeds `max_record_bytes`.
    #[error("record of {bytes} bytes exceeds max_record_bytes ({max_record_bytes})")]
    RecordTooLarge {
        /// Size of the record.
        bytes: u64,
        /// The configured maximum.
        max_record_bytes: u64,
    },
    /// The filesystem is full; the log is unchanged and appends work again
    /// once space is freed.
    #[error("disk full writing {path}")]
    DiskFull {
        /// The segment being written.
        path: PathBuf,
    },
    /// Another I/O failure; the log is unchanged.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An fsync failed and a retry failed too: the page cache may have
    /// dropped data, so the log refuses appends until it is reopened.
    #[error("write-ahead log {0} is poisoned after a failed fsync; reopen it")]
    Poisoned(PathBuf),
    /// The log was closed.
    #[error("write-ahead log closed")]
    Closed,
    /// An empty batch was given.
    #[error("empty append")]
    Empty,
}

impl AppendError {
    /// True for errors that go away by waiting (backpressure).
    pub fn is_backpressure(&self) -> bool {
        matches!(self, AppendError::Backpressure { .. })
    }

    /// True when the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, AppendError::DiskFull { .. })
    }
}

/// Reading records failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A record that was valid at open no longer is.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Byte offset of the frame.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The records asked for were truncated already.
    #[error("LSN {requested} is before the oldest retained record ({oldest})")]
    Truncated {
        /// Requested start.
        requested: Lsn,
        /// Oldest LSN still in the log.
        oldest: Lsn,
    },
}

/// Truncation failed; the log is still consistent (segments are deleted whole).
#[derive(Debug, thiserror::Error)]
#[error("removing {path}: {source}")]
pub struct TruncateError {
    /// The segment that could not be removed.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

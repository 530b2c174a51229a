//! Errors of the compactor.

use duckpond_wal::{AppendError, OpenError, ReadError};

pub use crate::lake::LakeError;

/// Why a flush, maintenance run or open failed. A failed flush changes
/// nothing: its transaction is rolled back and the records stay in the log.
#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    /// Reaching or writing the DuckLake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Opening the account's log failed.
    #[error("opening the write-ahead log: {0}")]
    WalOpen(#[from] OpenError),
    /// Reading the account's log failed.
    #[error("reading the write-ahead log: {0}")]
    WalRead(#[from] ReadError),
    /// Appending to the log failed (backpressure, disk full, ...).
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Quarantining an unusable record failed.
    #[error("quarantining a record: {0}")]
    Quarantine(std::io::Error),
    /// The write does not fit the table (checked before logging).
    #[error(transparent)]
    Schema(#[from] crate::tables::SchemaConflict),
    /// A record to append is malformed (e.g. not an Arrow IPC stream).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// Waiting for a commit timed out.
    #[error("not committed within {timeout_ms} ms (the compactor is behind or failing)")]
    CommitTimeout {
        /// How long was waited.
        timeout_ms: u64,
    },
    /// A record of the write was refused by the lake and quarantined: its
    /// rows are in no snapshot.
    #[error("the write was logged but the lake refused it (quarantined as LSN {lsn}): {reason}")]
    Quarantined {
        /// The refused record.
        lsn: u64,
        /// The lake's reason.
        reason: String,
    },
    /// The compactor stopped.
    #[error("compactor stopped")]
    Stopped,
}

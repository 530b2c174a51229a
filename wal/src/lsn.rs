//! Log sequence numbers.

use std::fmt;

/// A log sequence number: the position of a record in one account's log.
/// Starts at 1 and increases by 1 per record; recovery may leave a gap after
/// cutting a torn tail or moving damaged records aside, never a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// The first LSN of a new log.
    pub const FIRST: Lsn = Lsn(1);

    /// Wraps a raw value.
    pub const fn new(v: u64) -> Self {
        Self(v)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The LSN after this one.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The LSNs given to one acknowledged append: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsnRange {
    /// First LSN of the append.
    pub first: Lsn,
    /// Last LSN of the append (equal to `first` for a single record).
    pub last: Lsn,
}

//! Settings of one log. Every bound has its unit in its name.

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync after every write batch, before acknowledging (default).
    Fsync,
    /// Collect appends for up to `window_ms` before one write + fdatasync;
    /// still acknowledges only after the sync. Trades latency for fewer syncs.
    Batch {
        /// How long the writer waits for more appends.
        window_ms: u64,
    },
    /// Never fsync; acknowledge after write(2). Loses data on power failure.
    /// For benchmarks only.
    None,
}

/// Options of one log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one started when the next write would
    /// take it past this size (a single larger record gets a segment of its own).
    pub segment_size_bytes: u64,
    /// Largest single record.
    pub max_record_bytes: u64,
    /// Appends fail with backpressure while this many bytes of records sit in
    /// the log un-truncated (i.e. not yet compacted).
    pub max_uncompacted_bytes: u64,
    /// Appends fail with backpressure while this many bytes wait for the writer;
    /// bounds the memory of the queue.
    pub max_inflight_bytes: u64,
    /// Largest amount the writer gathers into one write + sync.
    pub max_batch_bytes: u64,
    /// Durability mode.
    pub durability: Durability,
    /// New records get LSNs of at least this value (the caller's committed
    /// position + 1), so LSNs never go backwards even if recovery moved the
    /// newest records aside.
    pub min_next_lsn: u64,
    /// Label for this log's metrics (e.g. the account id).
    pub metrics_label: String,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 * 1024 * 1024,
            max_record_bytes: 32 * 1024 * 1024,
            max_uncompacted_bytes: 1024 * 1024 * 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            durability: Durability::Fsync,
            min_next_lsn: 1,
            metrics_label: String::new(),
        }
    }
}

impl WalOptions {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.segment_size_bytes < 4096 {
            return Err("segment_size_bytes must be at least 4096".into());
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u64::from(u32::MAX) {
            return Err("max_record_bytes must be between 1 and 4294967295".into());
        }
        if self.max_batch_bytes == 0 || self.max_inflight_bytes == 0 || self.max_uncompacted_bytes == 0 {
            return Err("max_batch_bytes, max_inflight_bytes and max_uncompacted_bytes must be positive".into());
        }
        if self.max_record_bytes > self.max_inflight_bytes {
            return Err("max_record_bytes must not exceed max_inflight_bytes".into());
        }
        Ok(())
    }
}

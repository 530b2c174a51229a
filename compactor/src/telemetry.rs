//! The compactor's metrics, named once. Label `account` is the account id.

/// Histogram: time to apply and commit one flush.
pub const FLUSH_DURATION_SECONDS: &str = "duckpond_compactor_flush_duration_seconds";
/// Histogram: rows committed by one flush.
pub const FLUSH_ROWS: &str = "duckpond_compactor_flush_rows";
/// Histogram: log bytes consumed by one flush.
pub const FLUSH_BYTES: &str = "duckpond_compactor_flush_bytes";
/// Counter: rows committed.
pub const FLUSHED_ROWS_TOTAL: &str = "duckpond_compactor_flushed_rows_total";
/// Counter: failed flush attempts (each is retried).
pub const FLUSH_FAILURES_TOTAL: &str = "duckpond_compactor_flush_failures_total";
/// Counter: records that could never apply, quarantined.
pub const QUARANTINED_RECORDS_TOTAL: &str = "duckpond_compactor_quarantined_records_total";
/// Gauge: log bytes not yet committed.
pub const WAL_LAG_BYTES: &str = "duckpond_compactor_wal_lag_bytes";
/// Gauge: age of the oldest record not yet committed.
pub const WAL_LAG_SECONDS: &str = "duckpond_compactor_wal_lag_seconds";
/// Gauge: data files per table (after maintenance).
pub const DATA_FILES: &str = "duckpond_compactor_data_files";

/// Describes every metric.
pub fn describe() {
    metrics::describe_histogram!(FLUSH_DURATION_SECONDS, metrics::Unit::Seconds, "Flush apply+commit time");
    metrics::describe_histogram!(FLUSH_ROWS, "Rows committed per flush");
    metrics::describe_histogram!(FLUSH_BYTES, metrics::Unit::Bytes, "Log bytes consumed per flush");
    metrics::describe_counter!(FLUSHED_ROWS_TOTAL, "Rows committed to the lake");
    metrics::describe_counter!(FLUSH_FAILURES_TOTAL, "Failed flush attempts");
    metrics::describe_counter!(QUARANTINED_RECORDS_TOTAL, "Records quarantined as never applicable");
    metrics::describe_gauge!(WAL_LAG_BYTES, metrics::Unit::Bytes, "Log bytes not yet committed");
    metrics::describe_gauge!(WAL_LAG_SECONDS, metrics::Unit::Seconds, "Age of the oldest uncommitted record");
    metrics::describe_gauge!(DATA_FILES, "Data files per table");
}

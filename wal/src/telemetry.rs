//! The log's metrics, named once. Label `log` is [`crate::WalOptions::metrics_label`].

/// Histogram: time from append call to durable acknowledgement.
pub const APPEND_DURATION_SECONDS: &str = "duckpond_wal_append_duration_seconds";
/// Counter: bytes written to segments (frames and headers).
pub const WRITTEN_BYTES_TOTAL: &str = "duckpond_wal_written_bytes_total";
/// Counter: records acknowledged.
pub const APPENDED_RECORDS_TOTAL: &str = "duckpond_wal_appended_records_total";
/// Counter: fdatasync calls.
pub const FSYNCS_TOTAL: &str = "duckpond_wal_fsyncs_total";
/// Histogram: records made durable by one fdatasync (group commit width).
pub const RECORDS_PER_FSYNC: &str = "duckpond_wal_records_per_fsync";
/// Gauge: bytes retained in segments, i.e. not yet compacted and truncated.
pub const UNCOMPACTED_BYTES: &str = "duckpond_wal_uncompacted_bytes";
/// Counter: appends refused by backpressure.
pub const BACKPRESSURE_TOTAL: &str = "duckpond_wal_backpressure_total";
/// Counter: segments found corrupt at open and moved aside.
pub const CORRUPT_SEGMENTS_TOTAL: &str = "duckpond_wal_corrupt_segments_total";
/// Counter: bytes of torn tails cut off at open.
pub const TORN_TAIL_BYTES_TOTAL: &str = "duckpond_wal_torn_tail_bytes_total";

/// Describes every metric (call once per process; repeated calls are harmless).
pub fn describe() {
    metrics::describe_histogram!(APPEND_DURATION_SECONDS, metrics::Unit::Seconds, "WAL append latency to durable ack");
    metrics::describe_counter!(WRITTEN_BYTES_TOTAL, metrics::Unit::Bytes, "Bytes written to WAL segments");
    metrics::describe_counter!(APPENDED_RECORDS_TOTAL, "Records acknowledged by the WAL");
    metrics::describe_counter!(FSYNCS_TOTAL, "fdatasync calls by the WAL writer");
    metrics::describe_histogram!(RECORDS_PER_FSYNC, "Records made durable per fdatasync");
    metrics::describe_gauge!(UNCOMPACTED_BYTES, metrics::Unit::Bytes, "Bytes in WAL segments not yet truncated");
    metrics::describe_counter!(BACKPRESSURE_TOTAL, "Appends refused by WAL backpressure");
    metrics::describe_counter!(CORRUPT_SEGMENTS_TOTAL, "WAL segments moved aside as corrupt");
    metrics::describe_counter!(TORN_TAIL_BYTES_TOTAL, metrics::Unit::Bytes, "Torn WAL tail bytes cut at open");
}

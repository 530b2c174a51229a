//! Record kinds carried by the write-ahead log and table naming rules.
//!
//! The WAL treats payloads as opaque bytes; this crate will define what they
//! mean (Arrow IPC batches, staged-file references, Prometheus samples,
//! dataset commands) so the ingest side and the compactor agree on one
//! encoding. It is filled by the WAL and compactor issues (#3, #4); today it
//! exists so the workspace has its final shape.
#![deny(missing_docs)]

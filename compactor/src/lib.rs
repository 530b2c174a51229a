//! The compactor turns each account's write-ahead log into its DuckLake,
//! exactly once, and keeps the lake healthy.
//!
//! - [`lake`]: reaching a lake (extensions loaded by path, ATTACH, catalog
//!   creation with a round trip).
//! - [`LakeWriter`]: the single writer of one lake; applies a slice of the
//!   log as one snapshot recording the highest LSN in its commit metadata.
//! - [`AccountCompactor`]: one account's log + writer, `append`,
//!   `wait_committed`, `flush_blocking`, `maintain_blocking`, and the flush
//!   loop `run` (interval, size threshold, wake-ups, shutdown, backoff).
//! - [`storable`] (from `duckpond-schema`, so it is fuzzed without DuckDB):
//!   what the lake keeps exactly; every write's columns are checked (or
//!   converted by a documented rule) before they are logged.
//! - [`tables`]: each table's schema once the log is applied, checked on
//!   every append so a write that cannot apply never reaches the log;
//!   columns widen where DuckLake can promote their type.
//! - [`durable`]: the files a commit names are fsynced (with their
//!   directories) before it.
//! - [`maintenance`]: merge small files, expire snapshots past retention,
//!   delete unreferenced files.
#![deny(missing_docs)]

pub mod durable;
mod error;
pub mod lake;
pub mod maintenance;
mod service;
pub use duckpond_schema::storable;
pub mod tables;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
mod writer;

pub use error::CompactorError;
pub use lake::{CatalogLocation, CatalogMetadata, Extensions, InstanceSettings, LakeError};
pub use maintenance::MaintenanceOutcome;
pub use service::{AccountCompactor, Committed, CompactorOptions, QuarantinedRecord};
pub use tables::SchemaConflict;
pub use writer::{FlushOutcome, LakeWriter, COMMIT_AUTHOR, LAKE_ALIAS, LSN_KEY};

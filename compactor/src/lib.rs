//! The compactor turns each account's write-ahead log into its DuckLake.
//!
//! Today this crate holds [`lake`]: how DuckPond reaches an account's DuckLake
//! catalog (extension loading, ATTACH, catalog creation). The flush loop that
//! commits WAL records as snapshots is built on it (issue 4).
#![deny(missing_docs)]

pub mod lake;

pub use lake::{CatalogLocation, Extensions, LakeError};

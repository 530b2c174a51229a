//! The per-account durable write-ahead log (issue #3). Not implemented yet:
//! this crate exists so the workspace has its final shape.
#![deny(missing_docs)]

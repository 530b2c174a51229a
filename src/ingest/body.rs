//! [`IngestBody`]: a request body read chunk by chunk, never whole, with
//! every ingest limit applied as the bytes arrive:
//!
//! - `max_bytes` (413) for uploads: refused as soon as the count passes it,
//!   without reading the rest;
//! - the storage quota (507): bytes on disk plus bytes received so far;
//! - the ingest rate: reading pauses instead of failing;
//! - `body_read_timeout_ms` (408): the client sent nothing for that long;
//! - revocation (401): the key was revoked while the body streamed; what
//!   was logged before the chunk stays (the stream's prefix reply).

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::rate::IngestRate;
use crate::accounts::revocation::KeyWatch;
use crate::accounts::AccountId;
use crate::server::error::ApiError;

/// The limits one body is read under.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest body (None: only the quota bounds it).
    pub max_bytes: Option<u64>,
    /// Account bytes on disk when the request started.
    pub storage_used_bytes: u64,
    /// The account's storage quota.
    pub storage_quota_bytes: u64,
    /// The account's ingest rate (0: unlimited).
    pub ingest_bytes_per_s: u64,
    /// Longest wait for the next chunk.
    pub idle_timeout: Duration,
}

impl BodyLimits {
    /// 507 if `more` bytes on top of current usage exceed the quota.
    pub fn check_quota(&self, more: u64) -> Result<(), ApiError> {
        let total = self.storage_used_bytes.saturating_add(more);
        if total > self.storage_quota_bytes {
            return Err(ApiError::InsufficientStorage(format!(
                "storage quota exceeded: the account uses {} bytes of its {} byte quota and this write needs {} more",
                self.storage_used_bytes, self.storage_quota_bytes, more
            )));
        }
        Ok(())
    }

    /// 413 if a declared length is over `max_bytes` (before reading any of it).
    pub fn check_declared(&self, content_length: Option<u64>) -> Result<(), ApiError> {
        if let (Some(len), Some(max)) = (content_length, self.max_bytes) {
            if len > max {
                return Err(too_large(max));
            }
        }
        if let Some(len) = content_length {
            self.check_quota(len)?;
        }
        Ok(())
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "upload is larger than the {max} byte limit (limits.max_file_size_mb = {} MiB)",
        max / (1024 * 1024)
    ))
}

/// A body stream with limits.
pub struct IngestBody<S> {
    stream: S,
    limits: BodyLimits,
    rate: Arc<IngestRate>,
    account: AccountId,
    key: KeyWatch,
    received: u64,
}

impl<S, E> IngestBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    /// Wraps `stream`, sent with the key `key` watches.
    pub fn new(stream: S, limits: BodyLimits, rate: Arc<IngestRate>, account: AccountId, key: KeyWatch) -> Self {
        Self { stream, limits, rate, account, key, received: 0 }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next chunk, or None at the end of the body.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        let next = tokio::time::timeout(self.limits.idle_timeout, self.stream.next()).await.map_err(|_| {
            ApiError::RequestTimeout(format!(
                "no body data for {} ms (server.body_read_timeout_ms)",
                self.limits.idle_timeout.as_millis()
            ))
        })?;
        let chunk = match next {
            None => return Ok(None),
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(ApiError::BadRequest(format!("reading the request body failed: {e}"))),
        };
        if self.key.check().await.is_err() {
            return Err(ApiError::Unauthorized(
                "the API key was revoked while the body was being sent; nothing from this chunk on is stored".into(),
            ));
        }
        self.received += chunk.len() as u64;
        if let Some(max) = self.limits.max_bytes {
            if self.received > max {
                return Err(too_large(max));
            }
        }
        self.limits.check_quota(self.received)?;
        self.rate.admit(&self.account, chunk.len() as u64, self.limits.ingest_bytes_per_s).await;
        Ok(Some(chunk))
    }
}

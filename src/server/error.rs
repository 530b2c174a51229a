//! The one mapping from errors to HTTP status and the JSON error body
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! 5xx details are logged here, once, and hidden from the client.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use duckpond_compactor::{CompactorError, LakeError};
use duckpond_wal::AppendError;

use crate::accounts::{AccountError, AuthError};
use crate::meta::MetaError;
use crate::notebooks::NotebookError;

/// Every error an API handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or a wrong credential.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists with other methods.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the client stopped sending the body.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over a limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: content type not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: over a rate or concurrency limit; retry later.
    #[error("{message}")]
    TooManyRequests {
        /// What limit was hit.
        message: String,
        /// Seconds after which a retry makes sense.
        retry_after_s: u64,
    },
    /// 502: a notebook session behind the proxy did not answer.
    #[error("{0}")]
    BadGateway(String),
    /// 503: a dependency is temporarily unavailable; retry later.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// Seconds after which a retry makes sense.
        retry_after_s: u64,
    },
    /// 507: the account's storage quota is exhausted.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 500: a bug or an unexpected failure. Never caused by client input.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// Any of the above with structured details for the client (e.g. which
    /// batches of a broken stream were kept).
    #[error("{error}")]
    WithDetails {
        /// The error.
        error: Box<ApiError>,
        /// Put under `error.details`.
        details: serde_json::Value,
    },
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and human-readable message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unauthorized`.
    pub code: &'static str,
    /// What went wrong and, where useful, what to do.
    pub message: String,
    /// Machine-readable context, when the error has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// HTTP status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::InsufficientStorage(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::WithDetails { error, .. } => error.status_and_code(),
        }
    }

    /// Attaches details to the error body.
    pub fn with_details(self, details: serde_json::Value) -> Self {
        ApiError::WithDetails { error: Box::new(self), details }
    }

    /// The same error with `more` appended to its message (internal errors
    /// keep their generic message).
    pub fn with_more(self, more: &str) -> Self {
        let add = |m: String| format!("{m}; {more}");
        match self {
            ApiError::BadRequest(m) => ApiError::BadRequest(add(m)),
            ApiError::Unauthorized(m) => ApiError::Unauthorized(add(m)),
            ApiError::Forbidden(m) => ApiError::Forbidden(add(m)),
            ApiError::NotFound(m) => ApiError::NotFound(add(m)),
            ApiError::RequestTimeout(m) => ApiError::RequestTimeout(add(m)),
            ApiError::Conflict(m) => ApiError::Conflict(add(m)),
            ApiError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(add(m)),
            ApiError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(add(m)),
            ApiError::TooManyRequests { message, retry_after_s } => {
                ApiError::TooManyRequests { message: add(message), retry_after_s }
            }
            ApiError::BadGateway(m) => ApiError::BadGateway(add(m)),
            ApiError::Unavailable { message, retry_after_s } => {
                ApiError::Unavailable { message: add(message), retry_after_s }
            }
            ApiError::InsufficientStorage(m) => ApiError::InsufficientStorage(add(m)),
            ApiError::WithDetails { error, details } => {
                ApiError::WithDetails { error: Box::new(error.with_more(more)), details }
            }
            other @ (ApiError::MethodNotAllowed | ApiError::Internal(_)) => other,
        }
    }

    /// Builds the error for a status produced outside our handlers (framework
    /// rejections, timeouts), keeping its text as the message.
    pub fn from_status(status: StatusCode, message: String) -> Self {
        match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(message),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
            StatusCode::FORBIDDEN => ApiError::Forbidden(message),
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(message),
            StatusCode::CONFLICT => ApiError::Conflict(message),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            StatusCode::TOO_MANY_REQUESTS => ApiError::TooManyRequests { message, retry_after_s: 1 },
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable { message, retry_after_s: 1 },
            StatusCode::BAD_GATEWAY => ApiError::BadGateway(message),
            StatusCode::INSUFFICIENT_STORAGE => ApiError::InsufficientStorage(message),
            s if s.is_client_error() => ApiError::BadRequest(message),
            _ => ApiError::Internal(anyhow::anyhow!("{status}: {message}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (inner, details) = match self {
            ApiError::WithDetails { error, details } => (*error, Some(details)),
            other => (other, None),
        };
        inner.respond(details)
    }
}

pub use crate::security::redact::{scrub, set_private_paths};

impl ApiError {
    fn respond(self, details: Option<serde_json::Value>) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(source) => {
                tracing::error!(error = ?source, "internal error");
                "internal error; see the server log".to_string()
            }
            other => scrub(&other.to_string()),
        };
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after_s, .. } | ApiError::Unavailable { retry_after_s, .. } => {
                Some(*retry_after_s)
            }
            _ => None,
        };
        let mut res = (status, axum::Json(ErrorBody { error: ErrorDetail { code, message, details } })).into_response();
        if let Some(s) = retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// The reply to a write the disk had no room for.
fn disk_full() -> ApiError {
    ApiError::InsufficientStorage("the server's disk is full; nothing was stored (retry when space is freed)".into())
}

/// Whether another component's error text says the disk is full (DuckDB
/// and SQLite report it in words, not as an errno).
pub fn says_disk_full(text: &str) -> bool {
    ["No space left on device", "database or disk is full", "disk is full", "could not extend file"]
        .iter()
        .any(|k| text.contains(k))
}

fn io_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC)
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            // SQLite's SQLITE_FULL (13), PostgreSQL's disk_full (53100).
            MetaError::Db(sqlx::Error::Database(ref db))
                if matches!(db.code().as_deref(), Some("13") | Some("53100")) || says_disk_full(db.message()) =>
            {
                disk_full()
            }
            MetaError::Db(sqlx::Error::Io(ref io)) if io_disk_full(io) => disk_full(),
            MetaError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            MetaError::Conflict(msg) => ApiError::Conflict(msg),
            MetaError::Db(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed) => {
                ApiError::Unavailable { message: "metadata database unavailable".into(), retry_after_s: 1 }
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<NotebookError> for ApiError {
    fn from(e: NotebookError) -> Self {
        let message = e.to_string();
        match e {
            NotebookError::InvalidId(_) | NotebookError::InvalidName(_) => ApiError::BadRequest(message),
            NotebookError::NotFound(_) => ApiError::NotFound(message),
            NotebookError::NameTaken(_) | NotebookError::NotRunning(_) | NotebookError::Unreadable(_) => {
                ApiError::Conflict(message)
            }
            NotebookError::TooLarge { .. } => ApiError::PayloadTooLarge(message),
            NotebookError::SessionLimit { .. } => ApiError::TooManyRequests { message, retry_after_s: 5 },
            NotebookError::PortsExhausted { .. } => ApiError::Unavailable { message, retry_after_s: 5 },
            NotebookError::Starting => ApiError::Unavailable { message, retry_after_s: 1 },
            NotebookError::Upstream(_) => ApiError::BadGateway(message),
            NotebookError::Backend(e) => ApiError::Internal(e),
            NotebookError::Io(e) if io_disk_full(&e) => disk_full(),
            NotebookError::Io(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidInput(msg) => ApiError::BadRequest(msg),
            AccountError::Meta(m) => m.into(),
            AccountError::Io { ref source, .. } if io_disk_full(source) => disk_full(),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Invalid | AuthError::SessionEnded => ApiError::Unauthorized(e.to_string()),
            AuthError::Scope { .. } => ApiError::Forbidden(e.to_string()),
            AuthError::Meta(m) => m.into(),
        }
    }
}

impl From<CompactorError> for ApiError {
    fn from(e: CompactorError) -> Self {
        match e {
            CompactorError::Append(a) => a.into(),
            CompactorError::Schema(c) => ApiError::Conflict(c.to_string()),
            e @ CompactorError::Quarantined { .. } => ApiError::Conflict(e.to_string()),
            CompactorError::InvalidRecord(msg) => ApiError::BadRequest(msg),
            CompactorError::Stopped => {
                ApiError::Unavailable { message: "the account's pipeline is stopping".into(), retry_after_s: 1 }
            }
            // The account's lake or log cannot be reached (catalog database
            // down, say): the write was not taken; retrying later is right.
            other @ (CompactorError::Lake(_) | CompactorError::WalOpen(_) | CompactorError::WalRead(_)) => {
                tracing::error!(error = %other, "account pipeline unavailable");
                ApiError::Unavailable {
                    message: "the account's storage is unavailable; retry later".into(),
                    retry_after_s: 5,
                }
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Backpressure { .. } => ApiError::TooManyRequests {
                message: format!("ingest backlog is full, retry later: {e}"),
                retry_after_s: BACKPRESSURE_RETRY_AFTER_S,
            },
            AppendError::RecordTooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            // The log is intact and appends resume when space returns.
            AppendError::DiskFull { .. } => ApiError::InsufficientStorage(
                "the server's disk is full; the write was not stored (retry when space is freed)".into(),
            ),
            AppendError::Empty => ApiError::BadRequest("nothing to write".into()),
            AppendError::Closed => {
                ApiError::Unavailable { message: "the account's log is closing".into(), retry_after_s: 1 }
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Retry-After of a 503 when an account's lake cannot be read.
pub const LAKE_RETRY_AFTER_S: u64 = 2;

/// Reading an account's lake failed (catalog database or files out of
/// reach): 503, with the detail in the log, not in the reply (it names
/// server paths).
impl From<LakeError> for ApiError {
    fn from(e: LakeError) -> Self {
        tracing::error!(error = %e, "reading an account's lake failed");
        ApiError::Unavailable {
            message: "the account's lake cannot be read right now; retry later".into(),
            retry_after_s: LAKE_RETRY_AFTER_S,
        }
    }
}

/// Retry-After of a 429 caused by the log backlog: about one flush interval.
pub const BACKPRESSURE_RETRY_AFTER_S: u64 = 1;

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::from_status(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(e: ApiError) -> (StatusCode, serde_json::Value, Option<String>) {
        let res = e.into_response();
        let status = res.status();
        let retry = res.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap(), retry)
    }

    #[tokio::test]
    async fn every_error_has_json_body_and_status() {
        let (s, b, _) = body_of(ApiError::Conflict("taken".into())).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(b["error"]["code"], "conflict");
        assert_eq!(b["error"]["message"], "taken");
        let (s, _, retry) = body_of(ApiError::TooManyRequests { message: "slow".into(), retry_after_s: 3 }).await;
        assert_eq!((s, retry.as_deref()), (StatusCode::TOO_MANY_REQUESTS, Some("3")));
        let (s, b, _) = body_of(ApiError::InsufficientStorage("full".into())).await;
        assert_eq!((s, b["error"]["code"].as_str()), (StatusCode::INSUFFICIENT_STORAGE, Some("insufficient_storage")));
    }

    #[test]
    fn messages_lose_server_paths_and_account_ids() {
        set_private_paths(&[std::path::Path::new("/srv/duckpond/data")]);
        let id = "0123456789abcdef0123456789abcdef";
        let m = format!(
            "LINE 1: COPY (SELECT * FROM read_json('/srv/duckpond/data/accounts/{id}/incoming/x.json')) and \
             /srv/duckpond/data/accounts/{id}/staged/y.parquet, schema duckpond_{id}.t"
        );
        let s = scrub(&m);
        assert!(!s.contains("/srv/duckpond") && !s.contains(id), "{s}");
        assert!(s.contains("read_json('<server path>')"), "{s}");
        assert!(s.contains("duckpond_<account>.t"), "{s}");
        // Nothing else changes.
        assert_eq!(scrub("column \"a/b\" is 1/2"), "column \"a/b\" is 1/2");
    }

    #[tokio::test]
    async fn internal_errors_hide_their_detail() {
        let (s, b, _) = body_of(ApiError::Internal(anyhow::anyhow!("secret path /etc/x"))).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!b.to_string().contains("/etc/x"));
    }
}

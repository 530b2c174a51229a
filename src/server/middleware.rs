//! Cross-cutting HTTP behaviour: JSON bodies for every error, metrics,
//! fallbacks, panics.

use std::any::Any;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::error::ApiError;
use crate::telemetry;

/// Longest framework error text kept as a message.
const FRAMEWORK_ERROR_TEXT_MAX_BYTES: usize = 4096;

/// Answers unknown routes.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path()))
}

/// Answers known routes called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A panic becomes a JSON 500 (and is logged), never a dropped connection.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    ApiError::Internal(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}

/// Marks a response produced by a notebook session (through the proxy):
/// passed to the client as it is.
#[derive(Debug, Clone, Copy)]
pub struct Passthrough;

/// Rewrites error responses produced outside our handlers (timeouts, body
/// limits, rejections) into the JSON error body, so every error a client sees
/// has the same shape.
pub async fn json_error_bodies(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || res.extensions().get::<Passthrough>().is_some() {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = match http_body_util::Limited::new(body, FRAMEWORK_ERROR_TEXT_MAX_BYTES).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        match status {
            StatusCode::REQUEST_TIMEOUT => "request timed out (server.request_timeout_ms)".to_string(),
            s => s.canonical_reason().unwrap_or("error").to_lowercase(),
        }
    } else {
        text
    };
    let mut out = ApiError::from_status(status, message).into_response();
    // Keep headers such as Allow or Retry-After that the producer set.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().entry(name.clone()).or_insert(value.clone());
        }
    }
    *out.status_mut() = status;
    out
}

/// Counts requests and their latency by route template (never the raw path,
/// which would make every account and dataset name a new series).
pub async fn record_metrics(req: Request<Body>, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    telemetry::record_http_request(&method, &route, res.status().as_u16(), start.elapsed());
    res
}

/// POSTs that only read.
const READING_POSTS: &[&str] = &["/api/query", "/api/v1/read", "/api/ui/session"];

/// 507 for every write while the disk reserve is released (see
/// [`crate::accounts::headroom`]). Reads, deletions and session stops (how
/// space is freed), sign-in and the notebook proxy pass (a notebook's own
/// saves meet the disk as it is: 507 once it is full).
pub async fn refuse_writes_without_headroom(
    axum::extract::State(state): axum::extract::State<crate::server::AppState>,
    req: Request,
    next: Next,
) -> Response {
    let writes =
        matches!(*req.method(), axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH);
    let path = req.uri().path();
    // Stopping a notebook session frees what it holds.
    let frees = path.starts_with("/api/notebooks/") && path.ends_with("/stop");
    if writes
        && state.headroom.writes_refused()
        && !READING_POSTS.contains(&path)
        && !path.starts_with("/notebooks/")
        && !frees
    {
        return ApiError::InsufficientStorage(
            "the server's disk is full: writes are refused until space is freed (deleting data is allowed); \
             nothing was stored"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
}

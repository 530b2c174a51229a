//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::server::error::ApiError;
use crate::server::AppState;

/// Health or readiness status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok`.
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: the metadata DB answers and DuckDB runs with ducklake loaded.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Status), (status = 503, body = crate::server::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    state.accounts.meta().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: metadata database");
        ApiError::Unavailable { message: "metadata database unavailable".into(), retry_after_s: 1 }
    })?;
    let engine = state.engine.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<i64, String> {
        let conn = engine.lock().map_err(|_| "engine lock poisoned".to_string())?;
        conn.query_row(
            "SELECT count(*) FROM duckdb_extensions() WHERE loaded AND extension_name = 'ducklake'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    match loaded {
        Ok(1) => Ok(Json(Status { status: "ok" })),
        Ok(_) => {
            Err(ApiError::Unavailable { message: "DuckDB ducklake extension not loaded".into(), retry_after_s: 5 })
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness: duckdb");
            Err(ApiError::Unavailable { message: "DuckDB unavailable".into(), retry_after_s: 1 })
        }
    }
}

/// Prometheus text exposition of the daemon's metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

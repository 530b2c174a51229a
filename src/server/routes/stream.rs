//! `/api/stream/arrow/{table}`: Arrow IPC streaming ingest.

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;

use super::datasets::{body_limits, maybe_wait, pipeline_of, table_name, WaitParams};
use crate::ingest::arrow_stream::{self, StreamOutcome, ARROW_STREAM_CONTENT_TYPE};
use crate::ingest::body::IngestBody;
use crate::server::auth::Writer;
use crate::server::error::{ApiError, ErrorBody};
use crate::server::AppState;

/// Appends an Arrow IPC stream to a table, decoding it as it arrives. On
/// error, `error.details` says which batches were kept (always the first
/// `batches_kept`), so the client can resume from there.
#[utoipa::path(post, path = "/api/stream/arrow/{table}", tag = "ingest", security(("api_key" = [])),
    params(("table" = String, Path), WaitParams),
    request_body(content = Vec<u8>, content_type = "application/vnd.apache.arrow.stream"),
    responses((status = 200, body = StreamOutcome), (status = 202, body = StreamOutcome),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn arrow(
    State(state): State<AppState>,
    auth: Writer,
    Path(table): Path<String>,
    params: Result<Query<WaitParams>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<(StatusCode, Json<StreamOutcome>), ApiError> {
    let Query(params) = params?;
    let table = table_name(&table)?;
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim() != ARROW_STREAM_CONTENT_TYPE {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be {ARROW_STREAM_CONTENT_TYPE} (the Arrow IPC stream format), got {ct:?}"
        )));
    }
    let limits = body_limits(&state, &auth, None).await?;
    limits.check_quota(0)?;
    let pipeline = pipeline_of(&state, &auth).await?;
    let mut body = IngestBody::new(
        req.into_body().into_data_stream(),
        limits,
        state.ingest_rate.clone(),
        auth.account.id.clone(),
        state.accounts.revocations().watch(&auth.key_id),
    );
    let res = arrow_stream::ingest(
        pipeline.clone(),
        table,
        &mut body,
        state.config.limits.stream_record_target_bytes,
        state.config.wal.max_record_bytes,
        state.config.limits.max_nesting_depth as usize,
    )
    .await;
    match res {
        Ok(mut out) => {
            if !out.appends.is_empty() {
                let appends = out.appends.clone();
                let (status, committed, snapshot_id) = maybe_wait(&state, &pipeline, params.wait, &appends).await?;
                out.committed = committed;
                out.snapshot_id = snapshot_id;
                return Ok((status, Json(out)));
            }
            Ok((StatusCode::ACCEPTED, Json(out)))
        }
        Err((e, kept)) => {
            let details = serde_json::to_value(&kept).unwrap_or_default();
            // The error's own words may say "not stored"; what came before it was.
            let e = if kept.batches_kept > 0 {
                e.with_more(&format!(
                    "the stream's first {} batches ({} rows) were stored before this; resume from batch {}",
                    kept.batches_kept, kept.rows_kept, kept.batches_kept
                ))
            } else {
                e
            };
            Err(e.with_details(details))
        }
    }
}

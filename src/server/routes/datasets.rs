//! `/api/datasets`: uploads, listings, previews and deletion. Every change
//! goes through the account's log; reads see committed snapshots.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use duckpond_compactor::{AccountCompactor, CompactorError};
use duckpond_schema::{DatasetCommand, LogRecord, StagedFileName, TableName};
use duckpond_wal::LsnRange;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::accounts::AccountLayout;
use crate::ingest::body::{BodyLimits, IngestBody};
use crate::ingest::csv_dialect::Encoding;
use crate::ingest::upload::{self, Cleanup, Format, Preparation, UploadOutcome};
use crate::ingest::{Mode, Wait};
use crate::query::catalog::{self, DatasetDetail, DatasetSummary, Preview};
use crate::server::auth::{AuthedAccount, Writer};
use crate::server::error::{ApiError, ErrorBody};
use crate::server::AppState;

/// Largest `limit` of a preview.
pub const PREVIEW_MAX_ROWS: u64 = 1_000;
/// `limit` of a preview when none is given.
pub const PREVIEW_DEFAULT_ROWS: u64 = 20;

/// Query of an upload.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// csv, json, ndjson or parquet (default: from Content-Type or file name).
    pub format: Option<String>,
    /// append (default), replace or create.
    #[serde(default)]
    pub mode: Mode,
    /// A CSV's character encoding: utf-8 (default), utf-16 (also detected
    /// from its byte-order mark) or latin-1.
    pub encoding: Option<String>,
    /// durable (default) or committed.
    pub wait: Option<Wait>,
}

/// Query of a write that can wait for its commit.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// durable (default) or committed.
    pub wait: Option<Wait>,
}

/// Query of a preview.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PreviewParams {
    /// Rows to return (default 20, at most 1000).
    pub limit: Option<u64>,
}

/// A logged dataset change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangeOutcome {
    /// The table.
    pub table: String,
    /// Log position of the change.
    pub lsn: u64,
    /// Whether it is committed (only with `?wait=committed`).
    pub committed: bool,
    /// The snapshot holding it (`?wait=committed`).
    pub snapshot_id: Option<i64>,
}

pub(crate) fn table_name(name: &str) -> Result<TableName, ApiError> {
    TableName::parse(name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The limits a write of `auth`'s account is read under.
pub(crate) async fn body_limits(
    state: &AppState,
    auth: &AuthedAccount,
    max_bytes: Option<u64>,
) -> Result<BodyLimits, ApiError> {
    let quotas = auth.account.overrides.resolve(state.accounts.limits());
    Ok(BodyLimits {
        max_bytes,
        storage_used_bytes: state.accounts.storage_used_bytes(&auth.account).await?,
        storage_quota_bytes: quotas.max_storage_bytes,
        ingest_bytes_per_s: quotas.max_ingest_bytes_per_s,
        idle_timeout: Duration::from_millis(state.config.server.body_read_timeout_ms),
    })
}

/// Waits for the snapshot of the write's records `lsns` if asked. A
/// timeout is not an error: the write is durable and will be committed; the
/// reply says it is not yet. A record the lake refused is (409): the reply
/// never says committed for rows that are in no snapshot.
pub(crate) async fn maybe_wait(
    state: &AppState,
    pipeline: &AccountCompactor,
    wait: Option<Wait>,
    lsns: &[LsnRange],
) -> Result<(StatusCode, bool, Option<i64>), ApiError> {
    if wait != Some(Wait::Committed) {
        return Ok((StatusCode::ACCEPTED, false, None));
    }
    let timeout = Duration::from_millis(state.config.compactor.commit_wait_timeout_ms);
    match pipeline.wait_committed(lsns, timeout).await {
        Ok(c) => Ok((StatusCode::OK, true, c.snapshot_id)),
        Err(e @ CompactorError::Quarantined { .. }) => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, appends = lsns.len(), "write durable but not committed in time");
            Ok((StatusCode::ACCEPTED, false, None))
        }
    }
}

pub(crate) async fn pipeline_of(state: &AppState, auth: &AuthedAccount) -> Result<Arc<AccountCompactor>, ApiError> {
    Ok(state.pipelines.get(&auth.account).await?)
}

/// `?encoding=` applies to CSV only.
fn encoding_for(format: Format, encoding: Option<Encoding>) -> Result<Option<Encoding>, ApiError> {
    match (format, encoding) {
        (Format::Csv, e) => Ok(e),
        (_, None) => Ok(None),
        (f, Some(_)) => Err(ApiError::BadRequest(format!(
            "encoding applies to CSV uploads; a {} upload is read as its format defines",
            f.extension()
        ))),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Uploads a file into a dataset (body = the file, or multipart/form-data
/// with one file field). 202 once durable; 200 with the snapshot id when
/// `?wait=committed` and the commit came in time.
#[utoipa::path(post, path = "/api/datasets/{name}/upload", tag = "datasets", security(("api_key" = [])),
    params(("name" = String, Path), UploadParams),
    request_body(content = Vec<u8>, description = "the file", content_type = "text/csv"),
    responses((status = 200, body = UploadOutcome), (status = 202, body = UploadOutcome),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    auth: Writer,
    Path(name): Path<String>,
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<(StatusCode, Json<UploadOutcome>), ApiError> {
    let Query(params) = params?;
    let table = table_name(&name)?;
    let ct = content_type(req.headers());
    let explicit = params.format.as_deref().map(Format::parse).transpose()?;
    let encoding = params
        .encoding
        .as_deref()
        .map(|e| {
            Encoding::parse(e)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown encoding {e:?}; use utf-8, utf-16 or latin-1")))
        })
        .transpose()?;
    let limits = body_limits(&state, &auth, Some(state.config.limits.max_file_size_bytes())).await?;
    limits.check_declared(content_length(req.headers()))?;
    let pipeline = pipeline_of(&state, &auth).await?;
    let layout = AccountLayout::new(&state.config.storage.local_path, &auth.account.id);
    let id = upload::new_file_id();
    let file = StagedFileName::from_hex_id(&id).map_err(|e| ApiError::Internal(e.into()))?;
    let staged = layout.staged_dir().join(file.as_str());
    let mut cleanup = Cleanup::default();
    cleanup.add(staged.clone());
    let started = std::time::Instant::now();
    // The conversion starts while the body arrives, in either body shape.
    let prepare = |format: Format, path: &std::path::Path| -> Result<Preparation, ApiError> {
        let settings = state.instance_settings();
        let extensions = state.engines.extensions().clone();
        Ok(Preparation::start(
            format,
            path,
            &staged,
            settings,
            extensions,
            encoding_for(format, encoding)?,
            state.config.limits.max_nesting_depth as usize,
        ))
    };

    let (spooled, format, preparation) = if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        loop {
            let field = mp
                .next_field()
                .await
                .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text())))?
                .ok_or_else(|| ApiError::BadRequest("the multipart body has no file field".into()))?;
            if field.file_name().is_none() && field.name() != Some("file") {
                continue;
            }
            let format = match explicit {
                Some(f) => f,
                None => field
                    .content_type()
                    .and_then(Format::from_content_type)
                    .or_else(|| field.file_name().and_then(Format::from_file_name))
                    .ok_or_else(|| {
                        ApiError::UnsupportedMediaType(
                            "cannot tell the file's format: give ?format=csv|json|ndjson|parquet".into(),
                        )
                    })?,
            };
            let path = upload::spool_path(&layout.incoming_dir(), &id, format);
            cleanup.add(path.clone());
            let mut preparation = prepare(format, &path)?;
            let mut body = IngestBody::new(
                field,
                limits,
                state.ingest_rate.clone(),
                auth.account.id.clone(),
                state.accounts.revocations().watch(&auth.key_id),
            );
            upload::spool(&mut body, &path, &mut preparation).await?;
            break (path, format, preparation);
        }
    } else {
        let format = match explicit {
            Some(f) => f,
            None => Format::from_content_type(&ct).ok_or_else(|| {
                ApiError::UnsupportedMediaType(format!(
                    "unsupported Content-Type {ct:?}: send text/csv, application/json, application/x-ndjson or \
                     application/vnd.apache.parquet, multipart/form-data, or give ?format="
                ))
            })?,
        };
        let mut body = IngestBody::new(
            req.into_body().into_data_stream(),
            limits,
            state.ingest_rate.clone(),
            auth.account.id.clone(),
            state.accounts.revocations().watch(&auth.key_id),
        );
        let path = upload::spool_path(&layout.incoming_dir(), &id, format);
        cleanup.add(path.clone());
        let mut preparation = prepare(format, &path)?;
        upload::spool(&mut body, &path, &mut preparation).await?;
        (path, format, preparation)
    };
    let bytes_received = std::fs::metadata(&spooled).map(|m| m.len()).unwrap_or(0);
    if bytes_received == 0 {
        return Err(ApiError::BadRequest("the upload is empty".into()));
    }

    let spooled_at = started.elapsed();
    let converted = {
        let prepared = preparation.ready().await?;
        let _slot = state.conversions.clone().acquire_owned().await.map_err(|e| ApiError::Internal(e.into()))?;
        let (src, dst) = (spooled.clone(), staged.clone());
        let max_depth = state.config.limits.max_nesting_depth as usize;
        tokio::task::spawn_blocking(move || upload::convert(prepared, &src, &dst, format, max_depth))
            .await
            .map_err(|e| ApiError::Internal(e.into()))??
    };
    let converted_at = started.elapsed();
    let records = upload::records(&table, params.mode, file, &converted)?;
    let range = pipeline.append(&records).await?;
    tracing::info!(
        table = %table, ?format, bytes = bytes_received, rows = converted.rows,
        spool_ms = spooled_at.as_millis() as u64,
        convert_ms = (converted_at - spooled_at).as_millis() as u64,
        log_ms = (started.elapsed() - converted_at).as_millis() as u64,
        "upload durable"
    );
    // The log names the staged file now; the compactor owns it.
    cleanup.keep(&staged);
    drop(cleanup);
    let (status, committed, snapshot_id) = maybe_wait(&state, &pipeline, params.wait, &[range]).await?;
    Ok((
        status,
        Json(UploadOutcome {
            table: table.to_string(),
            format,
            mode: params.mode,
            rows: converted.rows,
            bytes_received,
            parquet_bytes: converted.parquet_bytes,
            lsn: range.last.get(),
            committed,
            snapshot_id,
        }),
    ))
}

async fn engine(state: &AppState, auth: &AuthedAccount) -> Result<Arc<crate::query::AccountEngine>, ApiError> {
    // The catalog exists once the pipeline has opened it.
    pipeline_of(state, auth).await?;
    Ok(state.engines.get(&auth.account).await?)
}

/// The account's datasets with rows, bytes, files and last snapshot.
#[utoipa::path(get, path = "/api/datasets", tag = "datasets", security(("api_key" = [])),
    responses((status = 200, body = Vec<DatasetSummary>)))]
pub async fn list(State(state): State<AppState>, auth: AuthedAccount) -> Result<Json<Vec<DatasetSummary>>, ApiError> {
    let engine = engine(&state, &auth).await?;
    let m = engine.metadata_tables().to_string();
    Ok(Json(engine.run(move |c| catalog::list(c, &m)).await?))
}

/// One dataset: schema, stats and snapshots.
#[utoipa::path(get, path = "/api/datasets/{name}", tag = "datasets", security(("api_key" = [])),
    params(("name" = String, Path)), responses((status = 200, body = DatasetDetail), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthedAccount,
    Path(name): Path<String>,
) -> Result<Json<DatasetDetail>, ApiError> {
    let table = table_name(&name)?;
    let engine = engine(&state, &auth).await?;
    let (t, m) = (table.clone(), engine.metadata_tables().to_string());
    engine
        .run(move |c| catalog::describe(c, &m, &t))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("dataset {table} not found")))
}

/// The first rows of a dataset.
#[utoipa::path(get, path = "/api/datasets/{name}/preview", tag = "datasets", security(("api_key" = [])),
    params(("name" = String, Path), PreviewParams), responses((status = 200, body = Preview), (status = 404, body = ErrorBody)))]
pub async fn preview(
    State(state): State<AppState>,
    auth: AuthedAccount,
    Path(name): Path<String>,
    params: Result<Query<PreviewParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Preview>, ApiError> {
    let Query(params) = params?;
    let table = table_name(&name)?;
    let limit = params.limit.unwrap_or(PREVIEW_DEFAULT_ROWS);
    if limit > PREVIEW_MAX_ROWS {
        return Err(ApiError::BadRequest(format!("limit must be at most {PREVIEW_MAX_ROWS}")));
    }
    let engine = engine(&state, &auth).await?;
    let (t, m) = (table.clone(), engine.metadata_tables().to_string());
    engine
        .run(move |c| catalog::preview(c, &m, &t, limit))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("dataset {table} not found")))
}

/// Drops a dataset (through the log; gone from queries once committed).
#[utoipa::path(delete, path = "/api/datasets/{name}", tag = "datasets", security(("api_key" = [])),
    params(("name" = String, Path), WaitParams),
    responses((status = 200, body = ChangeOutcome), (status = 202, body = ChangeOutcome), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Writer,
    Path(name): Path<String>,
    params: Result<Query<WaitParams>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<ChangeOutcome>), ApiError> {
    let Query(params) = params?;
    let table = table_name(&name)?;
    let pipeline = pipeline_of(&state, &auth).await?;
    if pipeline.table_schema(&table).is_none() {
        return Err(ApiError::NotFound(format!("dataset {table} not found")));
    }
    let range = pipeline.append(&[LogRecord::Command(DatasetCommand::Drop { table: table.clone() })]).await?;
    let (status, committed, snapshot_id) = maybe_wait(&state, &pipeline, params.wait, &[range]).await?;
    Ok((status, Json(ChangeOutcome { table: table.to_string(), lsn: range.last.get(), committed, snapshot_id })))
}

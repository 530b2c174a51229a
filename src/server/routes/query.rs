//! `/api/query`: SQL over the account's committed snapshots, as JSON or as
//! a CSV / Parquet / Arrow IPC download streamed with bounded memory.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::query::exec::{self, Carrier, Message, QueryError, Running};
use crate::query::guard;
use crate::query::render::{self, ResultColumn};
use crate::query::worker::wire::Request;
use crate::server::auth::AuthedAccount;
use crate::server::error::{ApiError, ErrorBody, LAKE_RETRY_AFTER_S};
use crate::server::extract::ApiJson;
use crate::server::AppState;

/// Rows per Parquet row group of a download (bounds the writer's memory).
pub const PARQUET_ROW_GROUP_ROWS: usize = 122_880;

/// Result formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `application/json` (default).
    Json,
    /// `text/csv` download.
    Csv,
    /// `application/vnd.apache.parquet` download.
    Parquet,
    /// `application/vnd.apache.arrow.stream` download.
    Arrow,
}

impl OutputFormat {
    fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::Csv => "text/csv",
            OutputFormat::Parquet => "application/vnd.apache.parquet",
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            OutputFormat::Json => "json",
            OutputFormat::Csv => "csv",
            OutputFormat::Parquet => "parquet",
            OutputFormat::Arrow => "arrows",
        }
    }

    /// The first acceptable type of an `Accept` header.
    fn from_accept(accept: &str) -> Option<Self> {
        accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).find_map(|t| {
            Some(match t.as_str() {
                "application/json" => OutputFormat::Json,
                "text/csv" => OutputFormat::Csv,
                "application/vnd.apache.parquet" | "application/parquet" => OutputFormat::Parquet,
                "application/vnd.apache.arrow.stream" => OutputFormat::Arrow,
                _ => return None,
            })
        })
    }
}

/// A query.
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One read statement.
    pub sql: String,
    /// json, csv, parquet or arrow (default: from Accept, else json).
    pub format: Option<OutputFormat>,
    /// Read this snapshot instead of the latest (time travel).
    pub snapshot: Option<i64>,
    /// At most this many rows.
    pub limit: Option<u64>,
}

/// A JSON result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryResult {
    /// Columns.
    pub columns: Vec<ResultColumn>,
    /// Rows, one array per row, in column order.
    pub rows: Vec<serde_json::Value>,
    /// Rows returned.
    pub row_count: u64,
    /// Whether rows were left out (`limit` or `limits.max_json_result_bytes`).
    pub truncated: bool,
    /// Time from start to the last row.
    pub elapsed_ms: u64,
    /// The snapshot the query read.
    pub snapshot_id: Option<i64>,
}

/// Runs a query (JSON body).
#[utoipa::path(post, path = "/api/query", tag = "query", security(("api_key" = [])), request_body = QueryRequest,
    responses((status = 200, body = QueryResult), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn post_query(
    State(state): State<AppState>,
    auth: AuthedAccount,
    headers: HeaderMap,
    ApiJson(req): ApiJson<QueryRequest>,
) -> Result<Response, ApiError> {
    run(state, auth, headers, req).await
}

/// Runs a query (`?sql=...`).
#[utoipa::path(get, path = "/api/query", tag = "query", security(("api_key" = [])), params(QueryRequest),
    responses((status = 200, body = QueryResult), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_query(
    State(state): State<AppState>,
    auth: AuthedAccount,
    headers: HeaderMap,
    req: Result<Query<QueryRequest>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(req) = req?;
    run(state, auth, headers, req).await
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Invalid(m) => ApiError::BadRequest(m),
        QueryError::Unrepresentable { column, duckdb_type, format } => ApiError::BadRequest(format!(
            "column {column:?} is {duckdb_type}, which format {format} cannot carry exactly; cast it in the query \
             (for example {column}::VARCHAR) or ask for format json or csv"
        )),
        QueryError::Denied(m) => ApiError::Forbidden(format!("not allowed: {m}")),
        QueryError::NoSnapshot(v) => {
            ApiError::NotFound(format!("snapshot {v} does not exist or has expired (see GET /api/datasets/{{name}})"))
        }
        QueryError::Crashed(why) => ApiError::BadRequest(format!(
            "this query, or another query of the account running at the same time, stopped the account's query \
             process: {why}. Nothing else was affected and the next query starts a new process. A value nested \
             very deeply (JSON text built with repeat(), say) is the usual cause"
        )),
        QueryError::TimedOut => {
            ApiError::RequestTimeout("the query ran past limits.query_timeout_ms and was stopped".into())
        }
        QueryError::Unavailable(m) => {
            tracing::error!(error = %m, "query storage unavailable");
            ApiError::Unavailable {
                message: "the account's lake cannot be read right now".into(),
                retry_after_s: LAKE_RETRY_AFTER_S,
            }
        }
    }
}

async fn run(
    state: AppState,
    auth: AuthedAccount,
    headers: HeaderMap,
    req: QueryRequest,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let limits = &state.config.limits;
    let format = match req.format {
        Some(f) => f,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(OutputFormat::from_accept)
            .unwrap_or(OutputFormat::Json),
    };
    if req.sql.trim().is_empty() {
        return Err(ApiError::BadRequest("sql is empty".into()));
    }
    // The pipeline creates the catalog; the engine reads it.
    state.pipelines.get(&auth.account).await?;
    let engine = state.engines.get(&auth.account).await?;
    let sql = req.sql.clone();
    engine.run(move |c| Ok(guard::check(c, &sql))).await?.map_err(|r| match r {
        guard::Refused::Syntax(m) => ApiError::BadRequest(m),
        guard::Refused::NotAllowed(m) => ApiError::Forbidden(m),
    })?;

    // The worker's start is not the query's time (limits.query_timeout_ms
    // counts from here on): a short query timeout must not fail every
    // first query after an idle worker stopped. The wait is bounded on its
    // own.
    // Queued behind another request's start, a little more than one start.
    let ready_within = Duration::from_millis(state.config.duckdb.query_worker_start_timeout_ms) * 3 / 2;
    tokio::time::timeout(ready_within, state.engines.ready(&auth.account))
        .await
        .map_err(|_| query_error(QueryError::Unavailable("the account's query worker did not start in time".into())))?
        .map_err(query_error)?;
    let deadline = Instant::now() + Duration::from_millis(limits.query_timeout_ms);
    let quotas = auth.account.overrides.resolve(state.accounts.limits());
    let queue = Duration::from_millis(limits.query_queue_timeout_ms);
    let permit =
        state.admission.acquire(&auth.account.id, quotas.max_concurrent_queries, queue).await.ok_or_else(|| {
            ApiError::TooManyRequests {
                message: format!(
                    "the account already runs {} queries (its max_concurrent_queries) and none finished within {} ms",
                    quotas.max_concurrent_queries, limits.query_queue_timeout_ms
                ),
                retry_after_s: 1,
            }
        })?;
    // JSON reads one row past the limit to know whether it truncated.
    let max_rows = match format {
        OutputFormat::Json => req.limit.map(|l| l.saturating_add(1)),
        _ => req.limit,
    };
    let carrier = match format {
        OutputFormat::Json => Carrier::Json,
        OutputFormat::Csv => Carrier::Csv,
        OutputFormat::Arrow => Carrier::Arrow,
        OutputFormat::Parquet => Carrier::Parquet,
    };
    let request = Request { sql: req.sql, max_rows, carrier, snapshot: req.snapshot };
    let mut running = state.engines.query(&auth.account, request, permit).await.map_err(query_error)?;
    let (schema, snapshot_id, as_text) = match next(&mut running, deadline).await? {
        Some(Message::Start { schema, snapshot_id, as_text }) => (schema, snapshot_id, as_text),
        Some(Message::Failed(e)) => return Err(query_error(e)),
        _ => return Err(ApiError::Internal(anyhow::anyhow!("query produced no schema"))),
    };
    if format == OutputFormat::Json {
        let mut columns = render::columns(&schema);
        for (c, t) in columns.iter_mut().zip(as_text) {
            if let Some(t) = t {
                c.data_type = t;
            }
        }
        return json_result(running, deadline, columns, snapshot_id, req.limit, limits.max_json_result_bytes, started)
            .await;
    }
    let encoder = Encoder::new(format, &schema)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("starting a {format:?} download: {e}")))?;
    let mut res = Response::new(download(running, deadline, encoder));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    let disposition = format!("attachment; filename=\"result.{}\"", format.extension());
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("ascii"));
    if let Some(id) = snapshot_id {
        h.insert("x-duckpond-snapshot-id", HeaderValue::from(id));
    }
    Ok(res)
}

/// The next message before the deadline (None: the query ended).
async fn next(running: &mut Running, deadline: Instant) -> Result<Option<Message>, ApiError> {
    match tokio::time::timeout(exec::remaining(deadline), running.rx.recv()).await {
        Ok(m) => Ok(m),
        Err(_) => {
            running.interrupt();
            Err(query_error(QueryError::TimedOut))
        }
    }
}

async fn json_result(
    mut running: Running,
    deadline: Instant,
    columns: Vec<ResultColumn>,
    snapshot_id: Option<i64>,
    limit: Option<u64>,
    max_bytes: u64,
    started: Instant,
) -> Result<Response, ApiError> {
    let mut rows = Vec::new();
    let (mut bytes, mut truncated) = (0u64, false);
    'read: loop {
        match next(&mut running, deadline).await? {
            None => break,
            Some(Message::Failed(e)) => return Err(query_error(e)),
            Some(Message::Start { .. }) => {}
            Some(Message::Batch(b)) => {
                for i in 0..b.num_rows() {
                    if limit.is_some_and(|l| rows.len() as u64 >= l) {
                        truncated = true;
                        break 'read;
                    }
                    let row = render::row(&b, i);
                    bytes += row.to_string().len() as u64 + 1;
                    if bytes > max_bytes {
                        truncated = true;
                        break 'read;
                    }
                    rows.push(row);
                }
            }
        }
    }
    if !truncated {
        running.finish();
    }
    drop(running);
    let body = QueryResult {
        columns,
        row_count: rows.len() as u64,
        rows,
        truncated,
        elapsed_ms: started.elapsed().as_millis() as u64,
        snapshot_id,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

enum Encoder {
    Csv { header: Option<Vec<String>> },
    Arrow(arrow::ipc::writer::StreamWriter<Vec<u8>>),
    Parquet(Box<parquet::arrow::ArrowWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: OutputFormat, schema: &arrow::datatypes::SchemaRef) -> Result<Self, String> {
        Ok(match format {
            OutputFormat::Csv | OutputFormat::Json => {
                Encoder::Csv { header: Some(schema.fields().iter().map(|f| f.name().clone()).collect()) }
            }
            OutputFormat::Arrow => Encoder::Arrow(
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema).map_err(|e| e.to_string())?,
            ),
            OutputFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
                    .build();
                Encoder::Parquet(Box::new(
                    parquet::arrow::ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                        .map_err(|e| e.to_string())?,
                ))
            }
        })
    }

    fn write(&mut self, b: &RecordBatchRef) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Csv { header } => {
                let mut out = String::new();
                if let Some(names) = header.take() {
                    let fields: Vec<Option<&str>> = names.iter().map(|n| Some(n.as_str())).collect();
                    render::csv_line(&mut out, &fields);
                }
                let columns = b.columns();
                for i in 0..b.num_rows() {
                    let cells: Vec<Option<String>> = columns.iter().map(|c| render::text(c, i)).collect();
                    let fields: Vec<Option<&str>> = cells.iter().map(|c| c.as_deref()).collect();
                    render::csv_line(&mut out, &fields);
                }
                Ok(out.into_bytes())
            }
            Encoder::Arrow(w) => {
                w.write(b).map_err(|e| e.to_string())?;
                Ok(std::mem::take(w.get_mut()))
            }
            Encoder::Parquet(w) => {
                w.write(b).map_err(|e| e.to_string())?;
                Ok(std::mem::take(w.inner_mut()))
            }
        }
    }

    fn finish(self) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Csv { .. } => Ok(Vec::new()),
            Encoder::Arrow(mut w) => {
                w.finish().map_err(|e| e.to_string())?;
                Ok(std::mem::take(w.get_mut()))
            }
            Encoder::Parquet(w) => w.into_inner().map_err(|e| e.to_string()),
        }
    }
}

type RecordBatchRef = arrow::array::RecordBatch;

/// The download body: batches encoded as they come. An error after the
/// headers went out aborts the body (the chunked encoding never gets its
/// last chunk, so every HTTP client reports an incomplete transfer), never
/// a silently short file; it is logged at error.
fn download(running: Running, deadline: Instant, encoder: Encoder) -> Body {
    // State: the query and its encoder until the body ends.
    let stream = futures_util::stream::unfold(Some((running, encoder)), move |state| async move {
        let (mut running, mut encoder) = state?;
        let err = |m: String| {
            tracing::error!(error = %m, "a download failed after its first byte; the body is cut short");
            Some((Err(std::io::Error::other(m)), None))
        };
        loop {
            match tokio::time::timeout(exec::remaining(deadline), running.rx.recv()).await {
                Err(_) => {
                    running.interrupt();
                    return err("query timed out".into());
                }
                Ok(Some(Message::Batch(b))) => match encoder.write(&b) {
                    Ok(bytes) if bytes.is_empty() => continue,
                    Ok(bytes) => return Some((Ok(Bytes::from(bytes)), Some((running, encoder)))),
                    Err(e) => return err(e),
                },
                Ok(Some(Message::Start { .. })) => continue,
                Ok(Some(Message::Failed(e))) => return err(format!("{e:?}")),
                Ok(None) => {
                    running.finish();
                    return match encoder.finish() {
                        Ok(bytes) => Some((Ok(Bytes::from(bytes)), None)),
                        Err(e) => err(e),
                    };
                }
            }
        }
    });
    Body::from_stream(stream)
}

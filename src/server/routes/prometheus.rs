//! `/api/v1/write` (alias `/api/v1/push`): Prometheus remote write 1.0 and
//! 2.0 into the account's metrics tables, through its log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use duckpond_compactor::AccountCompactor;
use duckpond_schema::TableName;

use crate::accounts::AccountId;
use crate::ingest::prometheus::{self as prom, Limits, PromError, Protocol, Stored};
use crate::query::Engines;
use crate::server::auth::{AuthedAccount, Writer};
use crate::server::error::{ApiError, LAKE_RETRY_AFTER_S};
use crate::server::AppState;

/// What each account has stored, loaded on its first remote write.
#[derive(Default)]
pub struct PromStates {
    accounts: Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<Option<Stored>>>>>,
}

impl PromStates {
    fn of(&self, id: &AccountId) -> Arc<tokio::sync::Mutex<Option<Stored>>> {
        self.accounts.lock().expect("prom states lock").entry(id.clone()).or_default().clone()
    }

    /// Forgets an account (deleted).
    pub fn forget(&self, id: &AccountId) {
        self.accounts.lock().expect("prom states lock").remove(id);
    }
}

const WRITTEN_SAMPLES: &str = "x-prometheus-remote-write-samples-written";
const WRITTEN_HISTOGRAMS: &str = "x-prometheus-remote-write-histograms-written";
const WRITTEN_EXEMPLARS: &str = "x-prometheus-remote-write-exemplars-written";

/// Receives a remote-write request. 204 on success; 400 for malformed data
/// (not retried by Prometheus), 413 over the size caps, 415 for another
/// type or encoding, 503 with Retry-After when the log is full (retried).
#[utoipa::path(post, path = "/api/v1/write", tag = "prometheus", security(("api_key" = [])),
    request_body(content = Vec<u8>, content_type = "application/x-protobuf"),
    responses((status = 204), (status = 400, body = crate::server::error::ErrorBody),
        (status = 413, body = crate::server::error::ErrorBody), (status = 415, body = crate::server::error::ErrorBody),
        (status = 503, body = crate::server::error::ErrorBody)))]
pub async fn write(State(state): State<AppState>, auth: Writer, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let proto = Protocol::from_content_type(ct);
    let mut res = match proto {
        None => ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {ct:?}: remote write 1.0 is application/x-protobuf, 2.0 is \
             application/x-protobuf;proto=io.prometheus.write.v2.Request"
        ))
        .into_response(),
        Some(p) => match handle(&state, &auth, &headers, &body, p).await {
            Ok(written) => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                set_written(&mut r, written);
                r
            }
            Err(e) => e.into_response(),
        },
    };
    // The 2.0 spec wants the counts on failures too (nothing was written).
    if proto == Some(Protocol::V2) && res.headers().get(WRITTEN_SAMPLES).is_none() {
        set_written(&mut res, (0, 0, 0));
    }
    if proto != Some(Protocol::V2) {
        for h in [WRITTEN_SAMPLES, WRITTEN_HISTOGRAMS, WRITTEN_EXEMPLARS] {
            res.headers_mut().remove(h);
        }
    }
    res
}

fn set_written(r: &mut Response, (s, h, e): (u64, u64, u64)) {
    let hs = r.headers_mut();
    hs.insert(WRITTEN_SAMPLES, HeaderValue::from(s));
    hs.insert(WRITTEN_HISTOGRAMS, HeaderValue::from(h));
    hs.insert(WRITTEN_EXEMPLARS, HeaderValue::from(e));
}

async fn handle(
    state: &AppState,
    auth: &AuthedAccount,
    headers: &HeaderMap,
    body: &Bytes,
    proto: Protocol,
) -> Result<(u64, u64, u64), ApiError> {
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !encoding.eq_ignore_ascii_case("snappy") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {encoding:?}: remote write bodies are snappy (block format)"
        )));
    }
    let cfg = &state.config.prometheus;
    let limits = Limits {
        max_decoded_bytes: cfg.max_decoded_bytes,
        max_labels_per_series: cfg.max_labels_per_series as usize,
        max_label_bytes: cfg.max_label_bytes as usize,
    };
    super::datasets::body_limits(state, auth, None).await?.check_quota(body.len() as u64)?;
    let body = body.clone();
    let decoded = tokio::task::spawn_blocking(move || prom::decode(&body, proto, &limits))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| prom_error(e.into()))?;
    let pipeline = state.pipelines.get(&auth.account).await?;
    let cell = state.prometheus.of(&auth.account.id);
    // Held across the append: two copies of one request cannot both pass
    // the duplicate check.
    let mut guard = cell.lock().await;
    if guard.is_none() {
        *guard = Some(load(&state.engines, &auth.account, &pipeline, state).await?);
    }
    let stored = guard.as_mut().expect("loaded");
    let now_ms = chrono::Utc::now().timestamp_millis();
    let plan = stored.plan(&decoded, now_ms).map_err(|e| {
        let reason = match e {
            PromError::TooOld { .. } => Some("too_old"),
            PromError::ChangedValue { .. } => Some("changed_value"),
            _ => None,
        };
        if let Some(reason) = reason {
            metrics::counter!(crate::telemetry::PROMETHEUS_REFUSED_REQUESTS_TOTAL,
                "account" => auth.account.id.to_string(), "reason" => reason)
            .increment(1);
        }
        prom_error(e)
    })?;
    if plan.duplicates > 0 {
        metrics::counter!(crate::telemetry::PROMETHEUS_DUPLICATES_TOTAL, "account" => auth.account.id.to_string())
            .increment(plan.duplicates);
    }
    if plan.out_of_order > 0 {
        metrics::counter!(crate::telemetry::PROMETHEUS_OUT_OF_ORDER_TOTAL, "account" => auth.account.id.to_string())
            .increment(plan.out_of_order);
    }
    if !plan.records.is_empty() {
        pipeline.append(&plan.records).await.map_err(|e| match ApiError::from(e) {
            // Prometheus retries 5xx always, 429 only when configured to.
            ApiError::TooManyRequests { message, retry_after_s } => ApiError::Unavailable { message, retry_after_s },
            other => other,
        })?;
        stored.commit(&plan);
    }
    let (samples, histograms, _) = plan.written;
    metrics::counter!(crate::telemetry::PROMETHEUS_SAMPLES_TOTAL, "account" => auth.account.id.to_string())
        .increment(samples + histograms);
    Ok(plan.written)
}

/// The largest out-of-order window honoured (100 years, in ms).
const MAX_WINDOW_MS: u64 = 100 * 365 * 86_400_000;

fn prom_error(e: PromError) -> ApiError {
    match e {
        PromError::TooLarge(m) => ApiError::PayloadTooLarge(m),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// What the account has stored: the log is drained into the lake first, so
/// the lake is the whole truth.
async fn load(
    engines: &Engines,
    account: &crate::accounts::Account,
    pipeline: &AccountCompactor,
    state: &AppState,
) -> Result<Stored, ApiError> {
    if let Some(durable) = pipeline.wal().durable_lsn() {
        let timeout = Duration::from_millis(state.config.compactor.commit_wait_timeout_ms);
        pipeline.wait_flushed(durable, timeout).await.map_err(|e| ApiError::Unavailable {
            message: format!("the account's metrics are not loaded yet ({e}); retry"),
            retry_after_s: LAKE_RETRY_AFTER_S,
        })?;
    }
    let exists = |t: &str| pipeline.table_schema(&TableName::parse(t).expect("valid")).is_some();
    let has_meta = exists(prom::METADATA_TABLE);
    let (has_series, has_samples, has_hist, has_ex) = (
        exists(prom::SERIES_TABLE),
        exists(prom::SAMPLES_TABLE),
        exists(prom::HISTOGRAMS_TABLE),
        exists(prom::EXEMPLARS_TABLE),
    );
    let engine = engines.get(account).await?;
    // Bounded so `newest - window` cannot overflow (a century is plenty).
    let window_ms = state.config.prometheus.out_of_order_window_ms.min(MAX_WINDOW_MS) as i64;
    let stored = engine
        .run(move |c| {
            let mut s = Stored { window_ms, ..Default::default() };
            let err = duckpond_compactor::LakeError::duckdb("loading stored series");
            if has_series {
                let mut st =
                    c.prepare(&format!("SELECT DISTINCT series_id FROM {}", prom::SERIES_TABLE)).map_err(err)?;
                let ids = st
                    .query_map([], |r| r.get::<_, u64>(0))
                    .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                    .map_err(duckpond_compactor::LakeError::duckdb("loading series"))?;
                s.series.extend(ids);
            }
            let newest = |table: &str, out: &mut HashMap<u64, i64>| -> Result<(), duckpond_compactor::LakeError> {
                let mut st = c
                    .prepare(&format!("SELECT series_id, max(timestamp_ms) FROM {table} GROUP BY series_id"))
                    .map_err(duckpond_compactor::LakeError::duckdb("loading newest timestamps"))?;
                let rows = st
                    .query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, i64>(1)?)))
                    .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                    .map_err(duckpond_compactor::LakeError::duckdb("loading newest timestamps"))?;
                out.extend(rows);
                Ok(())
            };
            // Each series' samples inside the window below its newest: the
            // duplicate and changed-value checks compare with them.
            let recent = |table: &str, value: &str| {
                format!(
                    "WITH n AS (SELECT series_id, max(timestamp_ms) AS newest FROM {table} GROUP BY series_id) \
                     SELECT t.series_id, t.timestamp_ms, {value} FROM {table} t JOIN n USING (series_id) \
                     WHERE t.timestamp_ms >= n.newest - {window_ms}"
                )
            };
            if has_samples {
                let mut st = c
                    .prepare(&recent(prom::SAMPLES_TABLE, "t.value, t.stale"))
                    .map_err(duckpond_compactor::LakeError::duckdb("loading recent samples"))?;
                let rows = st
                    .query_map([], |r| {
                        Ok((r.get::<_, u64>(0)?, r.get::<_, i64>(1)?, r.get::<_, f64>(2)?, r.get::<_, bool>(3)?))
                    })
                    .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                    .map_err(duckpond_compactor::LakeError::duckdb("loading recent samples"))?;
                for (id, ts, v, stale) in rows {
                    s.load_sample(id, ts, if stale { prom::STALE_NAN_BITS } else { v.to_bits() });
                }
            }
            if has_hist {
                let sql = format!(
                    "WITH n AS (SELECT series_id, max(timestamp_ms) AS newest FROM {t} GROUP BY series_id) \
                     SELECT {cols} FROM {t} JOIN n USING (series_id) WHERE timestamp_ms >= n.newest - {window_ms}",
                    t = prom::HISTOGRAMS_TABLE,
                    cols = prom::HISTOGRAM_COLUMNS
                );
                let err = duckpond_compactor::LakeError::duckdb("loading recent histograms");
                let mut st = c.prepare(&sql).map_err(err)?;
                let batches: Vec<arrow::array::RecordBatch> = st
                    .query_arrow([])
                    .map_err(duckpond_compactor::LakeError::duckdb("loading recent histograms"))?
                    .collect();
                use arrow::array::AsArray;
                for b in &batches {
                    for i in 0..b.num_rows() {
                        match prom::histogram_of_row(b, i) {
                            Some((id, h)) => s.load_histogram(id, &h),
                            // A row that does not read back as written keeps
                            // its timestamp (a resend there is a duplicate).
                            None => {
                                let id = b.column(0).as_primitive::<arrow::datatypes::UInt64Type>().value(i);
                                let ts = b.column(1).as_primitive::<arrow::datatypes::Int64Type>().value(i);
                                s.load_histogram_unknown(id, ts);
                            }
                        }
                    }
                }
            }
            if has_ex {
                newest(prom::EXEMPLARS_TABLE, &mut s.exemplars)?;
            }
            if has_meta {
                let mut st = c
                    .prepare(&format!(
                        "SELECT DISTINCT metric_family_name, type, help, unit FROM {}",
                        prom::METADATA_TABLE
                    ))
                    .map_err(duckpond_compactor::LakeError::duckdb("loading metadata"))?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                    .map_err(duckpond_compactor::LakeError::duckdb("loading metadata"))?;
                s.metadata.extend(rows);
            }
            let views: i64 = c
                .query_row(
                    "SELECT count(*) FROM duckdb_views() WHERE database_name = 'lake' AND view_name = ?",
                    [prom::SAMPLES_VIEW],
                    |r| r.get(0),
                )
                .map_err(duckpond_compactor::LakeError::duckdb("looking up the view"))?;
            s.view = views > 0;
            Ok(s)
        })
        .await?;
    Ok(stored)
}

/// Prometheus remote read, SAMPLES response type: what a Prometheus server
/// with `remote_read` pointed here gets back for its selectors.
#[utoipa::path(post, path = "/api/v1/read", tag = "prometheus", security(("api_key" = [])),
    request_body(content = Vec<u8>, content_type = "application/x-protobuf"),
    responses((status = 200, content_type = "application/x-protobuf"), (status = 400, body = crate::server::error::ErrorBody),
        (status = 415, body = crate::server::error::ErrorBody)))]
pub async fn read(
    State(state): State<AppState>,
    auth: AuthedAccount,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    use duckpond_schema::prompb;
    use prost::Message;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-protobuf")
        || !encoding.eq_ignore_ascii_case("snappy")
    {
        return Err(ApiError::UnsupportedMediaType(
            "remote read takes a snappy-compressed application/x-protobuf ReadRequest".into(),
        ));
    }
    let cfg = &state.config.prometheus;
    let len = snap::raw::decompress_len(&body).map_err(|e| ApiError::BadRequest(format!("bad snappy body: {e}")))?;
    if len as u64 > cfg.max_decoded_bytes {
        return Err(ApiError::PayloadTooLarge(format!("decoded body over {} bytes", cfg.max_decoded_bytes)));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .map_err(|e| ApiError::BadRequest(format!("bad snappy body: {e}")))?;
    let req = prompb::ReadRequest::decode(raw.as_slice())
        .map_err(|e| ApiError::BadRequest(format!("not a prometheus.ReadRequest: {e}")))?;
    let samples = prompb::read_request::ResponseType::Samples as i32;
    if !req.accepted_response_types.is_empty() && !req.accepted_response_types.contains(&samples) {
        return Err(ApiError::BadRequest(
            "only the SAMPLES response type is implemented; accept it in the request".into(),
        ));
    }
    let pipeline = state.pipelines.get(&auth.account).await?;
    let exists = [prom::SAMPLES_TABLE, prom::SERIES_TABLE]
        .iter()
        .all(|t| pipeline.table_schema(&TableName::parse(t).expect("valid")).is_some());
    let engine = state.engines.get(&auth.account).await?;
    let max = cfg.max_read_samples;
    let results = engine
        .run(move |c| {
            Ok(req
                .queries
                .iter()
                .map(|q| crate::query::prometheus::read(c, q, max, exists))
                .collect::<Result<Vec<_>, _>>())
        })
        .await?
        .map_err(|e| match e {
            crate::query::prometheus::ReadError::Lake(l) => ApiError::from(l),
            other => ApiError::BadRequest(other.to_string()),
        })?;
    let out = duckpond_schema::prom_wire::encode_read_response(&prompb::ReadResponse { results });
    let body = snap::raw::Encoder::new().compress_vec(&out).map_err(|e| ApiError::Internal(e.into()))?;
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    res.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
    Ok(res)
}

//! Prometheus remote read (SAMPLES response type): label matchers become
//! SQL over the metrics tables, with every name and value bound as a
//! parameter, never spliced into the statement.

use duckdb::Connection;
use duckpond_compactor::LakeError;
use duckpond_schema::prompb;

use crate::ingest::prometheus::{SAMPLES_TABLE, SERIES_TABLE, STALE_NAN_BITS};

/// Why a read query is refused (400).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A matcher or range is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Over `max_samples`.
    #[error("the query selects more than {0} samples; narrow its time range or matchers")]
    TooMany(u64),
    /// The lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// Answers one query of a `ReadRequest`. `tables_exist`: whether the
/// account has received any samples yet.
pub fn read(
    conn: &Connection,
    q: &prompb::Query,
    max_samples: u64,
    tables_exist: bool,
) -> Result<prompb::QueryResult, ReadError> {
    if !tables_exist {
        return Ok(prompb::QueryResult::default());
    }
    if q.end_timestamp_ms < q.start_timestamp_ms {
        return Err(ReadError::Invalid("end before start".into()));
    }
    let mut conds = Vec::new();
    let mut params: Vec<String> = Vec::new();
    for m in &q.matchers {
        let kind = prompb::label_matcher::Type::try_from(m.r#type)
            .map_err(|_| ReadError::Invalid(format!("unknown matcher type {}", m.r#type)))?;
        // `__name__` is its own column; other labels are map entries
        // (absent = empty string, as Prometheus treats them).
        let subject = if m.name == "__name__" {
            "s.metric_name".to_string()
        } else {
            params.push(m.name.clone());
            "coalesce(s.labels[?::VARCHAR], '')".to_string()
        };
        params.push(m.value.clone());
        conds.push(match kind {
            prompb::label_matcher::Type::Eq => format!("{subject} = ?::VARCHAR"),
            prompb::label_matcher::Type::Neq => format!("{subject} <> ?::VARCHAR"),
            prompb::label_matcher::Type::Re => format!("regexp_full_match({subject}, ?::VARCHAR)"),
            prompb::label_matcher::Type::Nre => format!("NOT regexp_full_match({subject}, ?::VARCHAR)"),
        });
    }
    let filter = if conds.is_empty() { "TRUE".to_string() } else { conds.join(" AND ") };
    let sql = format!(
        "SELECT s.metric_name, map_keys(s.labels), map_values(s.labels), v.timestamp_ms, v.value, v.stale \
         FROM {SAMPLES_TABLE} v JOIN (SELECT series_id, any_value(metric_name) AS metric_name, any_value(labels) AS labels \
         FROM {SERIES_TABLE} GROUP BY series_id) s USING (series_id) \
         WHERE {filter} AND v.timestamp_ms BETWEEN {} AND {} ORDER BY v.series_id, v.timestamp_ms LIMIT {}",
        q.start_timestamp_ms,
        q.end_timestamp_ms,
        max_samples + 1
    );
    let mut st = conn.prepare(&sql).map_err(LakeError::duckdb("preparing a remote read"))?;
    let bound: Vec<&dyn duckdb::ToSql> = params.iter().map(|p| p as &dyn duckdb::ToSql).collect();
    let mut rows = st.query(bound.as_slice()).map_err(|e| ReadError::Invalid(format!("remote read failed: {e}")))?;
    let mut out = prompb::QueryResult::default();
    let mut n = 0u64;
    let mut current: Option<(String, Vec<String>, Vec<String>)> = None;
    while let Some(r) = rows.next().map_err(|e| ReadError::Invalid(format!("remote read failed: {e}")))? {
        n += 1;
        if n > max_samples {
            return Err(ReadError::TooMany(max_samples));
        }
        let metric: String = r.get(0).map_err(LakeError::duckdb("reading a row"))?;
        let keys: Vec<String> = list_of(r.get_ref(1).map_err(LakeError::duckdb("reading a row"))?);
        let values: Vec<String> = list_of(r.get_ref(2).map_err(LakeError::duckdb("reading a row"))?);
        let ts: i64 = r.get(3).map_err(LakeError::duckdb("reading a row"))?;
        let value: f64 = r.get(4).map_err(LakeError::duckdb("reading a row"))?;
        let stale: bool = r.get(5).map_err(LakeError::duckdb("reading a row"))?;
        let key = (metric, keys, values);
        if current.as_ref() != Some(&key) {
            let mut labels: Vec<prompb::Label> = key
                .1
                .iter()
                .zip(&key.2)
                .map(|(n, v)| prompb::Label { name: n.clone(), value: v.clone() })
                .chain(std::iter::once(prompb::Label { name: "__name__".into(), value: key.0.clone() }))
                .collect();
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            out.timeseries.push(prompb::TimeSeries { labels, ..Default::default() });
            current = Some(key);
        }
        let value = if stale { f64::from_bits(STALE_NAN_BITS) } else { value };
        out.timeseries.last_mut().expect("pushed").samples.push(prompb::Sample { value, timestamp: ts });
    }
    Ok(out)
}

fn list_of(v: duckdb::types::ValueRef<'_>) -> Vec<String> {
    match v.to_owned() {
        duckdb::types::Value::List(items) => items
            .into_iter()
            .filter_map(|i| match i {
                duckdb::types::Value::Text(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

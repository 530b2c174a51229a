//! Prometheus remote write 1.0 and 2.0: decoding, validation, the metrics
//! tables, and idempotent appends.
//!
//! Layout (one set per account, ordinary lake tables):
//!
//! | table | columns |
//! |---|---|
//! | `prom_series` | `series_id UBIGINT` (stable hash of the sorted labels), `metric_name`, `labels MAP(VARCHAR, VARCHAR)` (without `__name__`), `first_seen_ms` |
//! | `prom_samples` | `series_id`, `timestamp_ms BIGINT`, `value DOUBLE`, `stale BOOLEAN` (the stale-marker NaN, kept so it can be given back bit-exact) |
//! | `prom_histograms` | `series_id`, `timestamp_ms`, counts (int or float), `sum`, `schema`, zero bucket, spans, deltas/counts, `reset_hint`, `custom_values` |
//! | `prom_exemplars` | `series_id`, `timestamp_ms`, `value`, `labels` |
//! | `prom_metadata` | `metric_family_name`, `type`, `help`, `unit`, `received_ms` |
//!
//! and the view `prometheus_samples(metric_name, labels, timestamp, value)`
//! (stale markers left out). A series row is written once per series.
//!
//! Idempotence: per account and series the newest stored timestamp is
//! known; a sample (histogram, exemplar) at or before it is a duplicate and
//! is not written again, so a resent request stores nothing twice. The
//! account's Prometheus writes hold one lock across check and log append, so
//! two copies of one request cannot both pass. Duplicates are counted
//! (`duckpond_prometheus_duplicates_total`, and the v2 `*-Written` headers
//! say what was written).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, Int8Builder, ListBuilder, MapBuilder,
    RecordBatch, StringBuilder, UInt32Builder, UInt64Builder,
};
use bytes::Bytes;
use duckpond_schema::{prompb, prompb_v2, DatasetCommand, LogRecord, TableName};
use prost::Message;

/// Bits of Prometheus's stale marker (a NaN).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;
/// The series table.
pub const SERIES_TABLE: &str = "prom_series";
/// The float samples table.
pub const SAMPLES_TABLE: &str = "prom_samples";
/// The native histograms table.
pub const HISTOGRAMS_TABLE: &str = "prom_histograms";
/// The exemplars table.
pub const EXEMPLARS_TABLE: &str = "prom_exemplars";
/// The metric metadata table.
pub const METADATA_TABLE: &str = "prom_metadata";
/// The SQL surface.
pub const SAMPLES_VIEW: &str = "prometheus_samples";

/// The view's query (table names resolve in the lake).
pub const SAMPLES_VIEW_SQL: &str =
    "SELECT s.metric_name, s.labels, epoch_ms(v.timestamp_ms) AS \"timestamp\", v.value \
     FROM prom_samples v JOIN (SELECT series_id, any_value(metric_name) AS metric_name, any_value(labels) AS labels \
     FROM prom_series GROUP BY series_id) s USING (series_id) WHERE NOT v.stale";

/// Which protocol a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `prometheus.WriteRequest`.
    V1,
    /// `io.prometheus.write.v2.Request`.
    V2,
}

impl Protocol {
    /// From Content-Type, as the 2.0 spec says: bare `application/x-protobuf`
    /// or `proto=prometheus.WriteRequest` is 1.0. None: unsupported (415).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let mut parts = ct.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case("application/x-protobuf") {
            return None;
        }
        let proto = parts.find_map(|p| p.strip_prefix("proto="));
        match proto {
            None | Some("prometheus.WriteRequest") => Some(Protocol::V1),
            Some("io.prometheus.write.v2.Request") => Some(Protocol::V2),
            Some(_) => None,
        }
    }
}

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest decoded (uncompressed) body.
    pub max_decoded_bytes: u64,
    /// Most labels on one series.
    pub max_labels_per_series: usize,
    /// Longest label name or value.
    pub max_label_bytes: usize,
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// Malformed: bad snappy, bad protobuf, bad labels, unordered samples (400).
    #[error("{0}")]
    Invalid(String),
    /// Decoded body over the limit (413).
    #[error("{0}")]
    TooLarge(String),
}

/// A native histogram, protocol-independent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    timestamp_ms: i64,
    count_int: Option<u64>,
    count_float: Option<f64>,
    sum: f64,
    schema: i32,
    zero_threshold: f64,
    zero_count_int: Option<u64>,
    zero_count_float: Option<f64>,
    negative_spans: Vec<(i32, u32)>,
    negative_deltas: Vec<i64>,
    negative_counts: Vec<f64>,
    positive_spans: Vec<(i32, u32)>,
    positive_deltas: Vec<i64>,
    positive_counts: Vec<f64>,
    reset_hint: i32,
    custom_values: Vec<f64>,
}

/// Sorted label pairs.
pub type Labels = Vec<(String, String)>;

/// An exemplar: timestamp ms, value, its labels.
type Exemplar = (i64, f64, Labels);

/// Per series, the newest sample, histogram and exemplar a plan writes.
type Newest = (u64, Option<i64>, Option<i64>, Option<i64>);

/// One series of a request with everything it carries.
#[derive(Debug, Clone, Default)]
pub struct SeriesData {
    /// Stable id of the label set.
    pub id: u64,
    /// `__name__`.
    pub metric: String,
    /// The other labels, sorted.
    pub labels: Vec<(String, String)>,
    /// (timestamp ms, value).
    pub samples: Vec<(i64, f64)>,
    histograms: Vec<Hist>,
    exemplars: Vec<Exemplar>,
}

/// Metric metadata.
#[derive(Debug, Clone)]
pub struct Meta {
    family: String,
    kind: String,
    help: String,
    unit: String,
}

/// A decoded, validated request.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Its series.
    pub series: Vec<SeriesData>,
    /// Its metadata.
    pub metadata: Vec<Meta>,
}

impl Decoded {
    /// (samples, histograms, exemplars) in the request.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64, u64) {
        self.series.iter().fold((0, 0, 0), |(s, h, e), d| {
            (s + d.samples.len() as u64, h + d.histograms.len() as u64, e + d.exemplars.len() as u64)
        })
    }
}

/// Stable 64-bit id of a sorted label set (FNV-1a over name, 0xff, value,
/// 0xff): the same labels give the same id in every process and version.
pub fn series_id(metric: &str, labels: &[(String, String)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for x in b.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(b"__name__");
    feed(metric.as_bytes());
    for (n, v) in labels {
        feed(n.as_bytes());
        feed(v.as_bytes());
    }
    h
}

/// Snappy-decodes (block format) and decodes `body`, then validates it.
pub fn decode(body: &[u8], proto: Protocol, limits: &Limits) -> Result<Decoded, PromError> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| PromError::Invalid(format!("body is not snappy block-compressed: {e}")))?;
    if len as u64 > limits.max_decoded_bytes {
        return Err(PromError::TooLarge(format!(
            "decoded body of {len} bytes exceeds {} bytes (prometheus.max_decoded_bytes)",
            limits.max_decoded_bytes
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| PromError::Invalid(format!("body is not snappy block-compressed: {e}")))?;
    match proto {
        Protocol::V1 => {
            let req = prompb::WriteRequest::decode(raw.as_slice())
                .map_err(|e| PromError::Invalid(format!("not a prometheus.WriteRequest: {e}")))?;
            from_v1(req, limits)
        }
        Protocol::V2 => {
            let req = prompb_v2::Request::decode(raw.as_slice())
                .map_err(|e| PromError::Invalid(format!("not an io.prometheus.write.v2.Request: {e}")))?;
            from_v2(req, limits)
        }
    }
}

/// Checks a series' labels and splits off `__name__`.
fn check_labels(pairs: Vec<(String, String)>, limits: &Limits) -> Result<(String, Vec<(String, String)>), PromError> {
    let bad = |m: String| Err(PromError::Invalid(m));
    if pairs.len() > limits.max_labels_per_series {
        return bad(format!(
            "a series has {} labels, more than {} (prometheus.max_labels_per_series)",
            pairs.len(),
            limits.max_labels_per_series
        ));
    }
    for (i, (n, v)) in pairs.iter().enumerate() {
        if n.is_empty() {
            return bad("a label name is empty".into());
        }
        if v.is_empty() {
            return bad(format!("label {n:?} has an empty value"));
        }
        if n.len() > limits.max_label_bytes || v.len() > limits.max_label_bytes {
            return bad(format!("label {n:?} is longer than {} bytes", limits.max_label_bytes));
        }
        if i > 0 && pairs[i - 1].0 >= *n {
            return bad(format!("labels are not sorted and unique at {n:?}"));
        }
    }
    let mut metric = None;
    let mut rest = Vec::with_capacity(pairs.len().saturating_sub(1));
    for (n, v) in pairs {
        if n == "__name__" {
            metric = Some(v);
        } else {
            rest.push((n, v));
        }
    }
    let metric = metric.ok_or_else(|| PromError::Invalid("a series has no __name__ label".into()))?;
    Ok((metric, rest))
}

fn check_order(what: &str, metric: &str, ts: impl Iterator<Item = i64>) -> Result<(), PromError> {
    let mut last = i64::MIN;
    for t in ts {
        if t <= last {
            return Err(PromError::Invalid(format!("{what} of {metric} are not in increasing timestamp order")));
        }
        last = t;
    }
    Ok(())
}

fn from_v1(req: prompb::WriteRequest, limits: &Limits) -> Result<Decoded, PromError> {
    let mut out = Decoded::default();
    for ts in req.timeseries {
        let (metric, labels) = check_labels(ts.labels.into_iter().map(|l| (l.name, l.value)).collect(), limits)?;
        check_order("samples", &metric, ts.samples.iter().map(|s| s.timestamp))?;
        check_order("histograms", &metric, ts.histograms.iter().map(|h| h.timestamp))?;
        let exemplars = ts
            .exemplars
            .into_iter()
            .map(|e| (e.timestamp, e.value, e.labels.into_iter().map(|l| (l.name, l.value)).collect()))
            .collect();
        out.series.push(SeriesData {
            id: series_id(&metric, &labels),
            samples: ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            histograms: ts.histograms.into_iter().map(hist_v1).collect(),
            exemplars,
            metric,
            labels,
        });
    }
    for m in req.metadata {
        let kind = prompb::metric_metadata::MetricType::try_from(m.r#type)
            .map(|t| t.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "unknown".into());
        out.metadata.push(Meta { family: m.metric_family_name, kind, help: m.help, unit: m.unit });
    }
    Ok(out)
}

fn from_v2(req: prompb_v2::Request, limits: &Limits) -> Result<Decoded, PromError> {
    let symbols = req.symbols;
    if symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err(PromError::Invalid("symbols[0] must be the empty string".into()));
    }
    let sym = |i: u32| {
        symbols.get(i as usize).cloned().ok_or_else(|| PromError::Invalid(format!("symbol reference {i} out of range")))
    };
    let pairs = |refs: &[u32]| -> Result<Vec<(String, String)>, PromError> {
        if refs.len() % 2 != 0 {
            return Err(PromError::Invalid("labels_refs has an odd length".into()));
        }
        refs.chunks(2).map(|c| Ok((sym(c[0])?, sym(c[1])?))).collect()
    };
    let mut out = Decoded::default();
    for ts in req.timeseries {
        let (metric, labels) = check_labels(pairs(&ts.labels_refs)?, limits)?;
        check_order("samples", &metric, ts.samples.iter().map(|s| s.timestamp))?;
        check_order("histograms", &metric, ts.histograms.iter().map(|h| h.timestamp))?;
        if let Some(m) = &ts.metadata {
            let kind = prompb_v2::metadata::MetricType::try_from(m.r#type)
                .map(|t| t.as_str_name().trim_start_matches("METRIC_TYPE_").to_ascii_lowercase())
                .unwrap_or_else(|_| "unspecified".into());
            let (help, unit) = (sym(m.help_ref)?, sym(m.unit_ref)?);
            if kind != "unspecified" || !help.is_empty() || !unit.is_empty() {
                out.metadata.push(Meta { family: metric.clone(), kind, help, unit });
            }
        }
        let mut exemplars = Vec::with_capacity(ts.exemplars.len());
        for e in ts.exemplars {
            exemplars.push((e.timestamp, e.value, pairs(&e.labels_refs)?));
        }
        out.series.push(SeriesData {
            id: series_id(&metric, &labels),
            samples: ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            histograms: ts.histograms.into_iter().map(hist_v2).collect(),
            exemplars,
            metric,
            labels,
        });
    }
    Ok(out)
}

/// The 1.0 and 2.0 histograms are the same message in two packages.
macro_rules! hist_from {
    ($name:ident, $msg:ty, $module:ident) => {
        fn $name(h: $msg) -> Hist {
            use $module::histogram::{Count, ZeroCount};
            let (count_int, count_float) = match h.count {
                Some(Count::CountInt(c)) => (Some(c), None),
                Some(Count::CountFloat(c)) => (None, Some(c)),
                None => (None, None),
            };
            let (zero_count_int, zero_count_float) = match h.zero_count {
                Some(ZeroCount::ZeroCountInt(c)) => (Some(c), None),
                Some(ZeroCount::ZeroCountFloat(c)) => (None, Some(c)),
                None => (None, None),
            };
            Hist {
                timestamp_ms: h.timestamp,
                count_int,
                count_float,
                sum: h.sum,
                schema: h.schema,
                zero_threshold: h.zero_threshold,
                zero_count_int,
                zero_count_float,
                negative_spans: h.negative_spans.iter().map(|s| (s.offset, s.length)).collect(),
                negative_deltas: h.negative_deltas,
                negative_counts: h.negative_counts,
                positive_spans: h.positive_spans.iter().map(|s| (s.offset, s.length)).collect(),
                positive_deltas: h.positive_deltas,
                positive_counts: h.positive_counts,
                reset_hint: h.reset_hint,
                custom_values: h.custom_values,
            }
        }
    };
}

hist_from!(hist_v1, prompb::Histogram, prompb);
hist_from!(hist_v2, prompb_v2::Histogram, prompb_v2);

/// What one account has stored, for de-duplication.
#[derive(Debug, Default)]
pub struct Stored {
    /// Series with a row in `prom_series`.
    pub series: HashSet<u64>,
    /// Newest sample timestamp per series.
    pub samples: HashMap<u64, i64>,
    /// Newest histogram timestamp per series.
    pub histograms: HashMap<u64, i64>,
    /// Newest exemplar timestamp per series.
    pub exemplars: HashMap<u64, i64>,
    /// Whether the view exists (or is in the log).
    pub view: bool,
    /// Metadata tuples (family, type, help, unit) stored: metadata is
    /// resent with every batch and only written when it changes.
    pub metadata: HashSet<(String, String, String, String)>,
}

/// What a request will write, after de-duplication.
#[derive(Debug, Default)]
pub struct Plan {
    new_metadata: Vec<(String, String, String, String)>,
    /// Log records (one per non-empty table, plus the view the first time).
    pub records: Vec<LogRecord>,
    /// Samples, histograms, exemplars written.
    pub written: (u64, u64, u64),
    /// Duplicates skipped.
    pub duplicates: u64,
    new_series: Vec<u64>,
    last: Vec<Newest>,
}

impl Stored {
    /// Plans `req` against what is stored; nothing changes until [`Stored::commit`].
    pub fn plan(&self, req: &Decoded, now_ms: i64) -> Result<Plan, PromError> {
        let mut plan = Plan::default();
        let mut t = Tables::default();
        for s in &req.series {
            let keep_after = |m: &HashMap<u64, i64>| m.get(&s.id).copied().unwrap_or(i64::MIN);
            let (ls, lh, le) = (keep_after(&self.samples), keep_after(&self.histograms), keep_after(&self.exemplars));
            let mut last = (s.id, None, None, None);
            for &(ts, v) in &s.samples {
                if ts <= ls {
                    plan.duplicates += 1;
                    continue;
                }
                t.sample(s.id, ts, v);
                plan.written.0 += 1;
                last.1 = Some(ts);
            }
            for h in &s.histograms {
                if h.timestamp_ms <= lh {
                    plan.duplicates += 1;
                    continue;
                }
                t.histogram(s.id, h);
                plan.written.1 += 1;
                last.2 = Some(h.timestamp_ms);
            }
            let mut last_ex = le;
            for (ts, v, labels) in &s.exemplars {
                if *ts <= last_ex {
                    plan.duplicates += 1;
                    continue;
                }
                t.exemplar(s.id, *ts, *v, labels);
                plan.written.2 += 1;
                last_ex = *ts;
                last.3 = Some(*ts);
            }
            let has_data = last.1.is_some() || last.2.is_some() || last.3.is_some();
            if has_data && !self.series.contains(&s.id) && !plan.new_series.contains(&s.id) {
                t.series(s, now_ms);
                plan.new_series.push(s.id);
            }
            plan.last.push(last);
        }
        for m in &req.metadata {
            let key = (m.family.clone(), m.kind.clone(), m.help.clone(), m.unit.clone());
            if !self.metadata.contains(&key) && !plan.new_metadata.contains(&key) {
                t.metadata(m, now_ms);
                plan.new_metadata.push(key);
            }
        }
        plan.records = t.into_records().map_err(|e| PromError::Invalid(format!("encoding rows: {e}")))?;
        if !self.view && !plan.records.is_empty() {
            let view = TableName::parse(SAMPLES_VIEW).expect("valid name");
            // After the tables it reads exist.
            if plan.records.iter().any(|r| r.table().as_str() == SAMPLES_TABLE)
                && plan.records.iter().any(|r| r.table().as_str() == SERIES_TABLE)
            {
                plan.records
                    .push(LogRecord::Command(DatasetCommand::View { table: view, sql: SAMPLES_VIEW_SQL.into() }));
            }
        }
        Ok(plan)
    }

    /// Records a plan whose records are durably logged.
    pub fn commit(&mut self, plan: &Plan) {
        self.series.extend(plan.new_series.iter().copied());
        self.metadata.extend(plan.new_metadata.iter().cloned());
        for (id, s, h, e) in &plan.last {
            if let Some(t) = s {
                self.samples.insert(*id, *t);
            }
            if let Some(t) = h {
                self.histograms.insert(*id, *t);
            }
            if let Some(t) = e {
                self.exemplars.insert(*id, *t);
            }
        }
        if plan.records.iter().any(|r| matches!(r, LogRecord::Command(DatasetCommand::View { .. }))) {
            self.view = true;
        }
    }
}

fn list_i32() -> ListBuilder<Int32Builder> {
    ListBuilder::new(Int32Builder::new())
}
fn list_u32() -> ListBuilder<UInt32Builder> {
    ListBuilder::new(UInt32Builder::new())
}
fn list_i64() -> ListBuilder<Int64Builder> {
    ListBuilder::new(Int64Builder::new())
}
fn list_f64() -> ListBuilder<Float64Builder> {
    ListBuilder::new(Float64Builder::new())
}

fn map() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

/// Column builders of every table for one request.
struct Tables {
    se_id: UInt64Builder,
    se_metric: StringBuilder,
    se_labels: MapBuilder<StringBuilder, StringBuilder>,
    se_first: Int64Builder,
    sa_id: UInt64Builder,
    sa_ts: Int64Builder,
    sa_v: Float64Builder,
    sa_stale: BooleanBuilder,
    h_id: UInt64Builder,
    h_ts: Int64Builder,
    h_count_int: UInt64Builder,
    h_count_float: Float64Builder,
    h_sum: Float64Builder,
    h_schema: Int32Builder,
    h_zt: Float64Builder,
    h_zc_int: UInt64Builder,
    h_zc_float: Float64Builder,
    h_neg_off: ListBuilder<Int32Builder>,
    h_neg_len: ListBuilder<UInt32Builder>,
    h_neg_deltas: ListBuilder<Int64Builder>,
    h_neg_counts: ListBuilder<Float64Builder>,
    h_pos_off: ListBuilder<Int32Builder>,
    h_pos_len: ListBuilder<UInt32Builder>,
    h_pos_deltas: ListBuilder<Int64Builder>,
    h_pos_counts: ListBuilder<Float64Builder>,
    h_reset: Int8Builder,
    h_custom: ListBuilder<Float64Builder>,
    e_id: UInt64Builder,
    e_ts: Int64Builder,
    e_v: Float64Builder,
    e_labels: MapBuilder<StringBuilder, StringBuilder>,
    m_family: StringBuilder,
    m_type: StringBuilder,
    m_help: StringBuilder,
    m_unit: StringBuilder,
    m_at: Int64Builder,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            se_id: UInt64Builder::new(),
            se_metric: StringBuilder::new(),
            se_labels: map(),
            se_first: Int64Builder::new(),
            sa_id: UInt64Builder::new(),
            sa_ts: Int64Builder::new(),
            sa_v: Float64Builder::new(),
            sa_stale: BooleanBuilder::new(),
            h_id: UInt64Builder::new(),
            h_ts: Int64Builder::new(),
            h_count_int: UInt64Builder::new(),
            h_count_float: Float64Builder::new(),
            h_sum: Float64Builder::new(),
            h_schema: Int32Builder::new(),
            h_zt: Float64Builder::new(),
            h_zc_int: UInt64Builder::new(),
            h_zc_float: Float64Builder::new(),
            h_neg_off: list_i32(),
            h_neg_len: list_u32(),
            h_neg_deltas: list_i64(),
            h_neg_counts: list_f64(),
            h_pos_off: list_i32(),
            h_pos_len: list_u32(),
            h_pos_deltas: list_i64(),
            h_pos_counts: list_f64(),
            h_reset: Int8Builder::new(),
            h_custom: list_f64(),
            e_id: UInt64Builder::new(),
            e_ts: Int64Builder::new(),
            e_v: Float64Builder::new(),
            e_labels: map(),
            m_family: StringBuilder::new(),
            m_type: StringBuilder::new(),
            m_help: StringBuilder::new(),
            m_unit: StringBuilder::new(),
            m_at: Int64Builder::new(),
        }
    }
}

impl Tables {
    fn series(&mut self, s: &SeriesData, now_ms: i64) {
        self.se_id.append_value(s.id);
        self.se_metric.append_value(&s.metric);
        for (n, v) in &s.labels {
            self.se_labels.keys().append_value(n);
            self.se_labels.values().append_value(v);
        }
        self.se_labels.append(true).expect("map entries match");
        self.se_first.append_value(now_ms);
    }

    fn sample(&mut self, id: u64, ts: i64, v: f64) {
        self.sa_id.append_value(id);
        self.sa_ts.append_value(ts);
        self.sa_v.append_value(v);
        self.sa_stale.append_value(v.to_bits() == STALE_NAN_BITS);
    }

    fn histogram(&mut self, id: u64, h: &Hist) {
        self.h_id.append_value(id);
        self.h_ts.append_value(h.timestamp_ms);
        self.h_count_int.append_option(h.count_int);
        self.h_count_float.append_option(h.count_float);
        self.h_sum.append_value(h.sum);
        self.h_schema.append_value(h.schema);
        self.h_zt.append_value(h.zero_threshold);
        self.h_zc_int.append_option(h.zero_count_int);
        self.h_zc_float.append_option(h.zero_count_float);
        self.h_neg_off.append_value(h.negative_spans.iter().map(|s| Some(s.0)));
        self.h_neg_len.append_value(h.negative_spans.iter().map(|s| Some(s.1)));
        self.h_neg_deltas.append_value(h.negative_deltas.iter().map(|v| Some(*v)));
        self.h_neg_counts.append_value(h.negative_counts.iter().map(|v| Some(*v)));
        self.h_pos_off.append_value(h.positive_spans.iter().map(|s| Some(s.0)));
        self.h_pos_len.append_value(h.positive_spans.iter().map(|s| Some(s.1)));
        self.h_pos_deltas.append_value(h.positive_deltas.iter().map(|v| Some(*v)));
        self.h_pos_counts.append_value(h.positive_counts.iter().map(|v| Some(*v)));
        self.h_reset.append_value(h.reset_hint as i8);
        self.h_custom.append_value(h.custom_values.iter().map(|v| Some(*v)));
    }

    fn exemplar(&mut self, id: u64, ts: i64, v: f64, labels: &[(String, String)]) {
        self.e_id.append_value(id);
        self.e_ts.append_value(ts);
        self.e_v.append_value(v);
        for (n, l) in labels {
            self.e_labels.keys().append_value(n);
            self.e_labels.values().append_value(l);
        }
        self.e_labels.append(true).expect("map entries match");
    }

    fn metadata(&mut self, m: &Meta, now_ms: i64) {
        self.m_family.append_value(&m.family);
        self.m_type.append_value(&m.kind);
        self.m_help.append_value(&m.help);
        self.m_unit.append_value(&m.unit);
        self.m_at.append_value(now_ms);
    }

    fn into_records(mut self) -> Result<Vec<LogRecord>, arrow::error::ArrowError> {
        let mut out = Vec::new();
        let mut push = |table: &str, cols: Vec<(&str, ArrayRef)>| -> Result<(), arrow::error::ArrowError> {
            if cols[0].1.is_empty() {
                return Ok(());
            }
            let batch = RecordBatch::try_from_iter(cols)?;
            let ipc = super::ipc_stream(&batch.schema(), &[batch])?;
            out.push(LogRecord::Rows { table: TableName::parse(table).expect("valid name"), ipc: Bytes::from(ipc) });
            Ok(())
        };
        // Series first: a snapshot never holds samples of a series it lacks.
        push(
            SERIES_TABLE,
            vec![
                ("series_id", Arc::new(self.se_id.finish())),
                ("metric_name", Arc::new(self.se_metric.finish())),
                ("labels", Arc::new(self.se_labels.finish())),
                ("first_seen_ms", Arc::new(self.se_first.finish())),
            ],
        )?;
        push(
            SAMPLES_TABLE,
            vec![
                ("series_id", Arc::new(self.sa_id.finish())),
                ("timestamp_ms", Arc::new(self.sa_ts.finish())),
                ("value", Arc::new(self.sa_v.finish())),
                ("stale", Arc::new(self.sa_stale.finish())),
            ],
        )?;
        push(
            HISTOGRAMS_TABLE,
            vec![
                ("series_id", Arc::new(self.h_id.finish())),
                ("timestamp_ms", Arc::new(self.h_ts.finish())),
                ("count_int", Arc::new(self.h_count_int.finish())),
                ("count_float", Arc::new(self.h_count_float.finish())),
                ("sum", Arc::new(self.h_sum.finish())),
                ("schema", Arc::new(self.h_schema.finish())),
                ("zero_threshold", Arc::new(self.h_zt.finish())),
                ("zero_count_int", Arc::new(self.h_zc_int.finish())),
                ("zero_count_float", Arc::new(self.h_zc_float.finish())),
                ("negative_span_offsets", Arc::new(self.h_neg_off.finish())),
                ("negative_span_lengths", Arc::new(self.h_neg_len.finish())),
                ("negative_deltas", Arc::new(self.h_neg_deltas.finish())),
                ("negative_counts", Arc::new(self.h_neg_counts.finish())),
                ("positive_span_offsets", Arc::new(self.h_pos_off.finish())),
                ("positive_span_lengths", Arc::new(self.h_pos_len.finish())),
                ("positive_deltas", Arc::new(self.h_pos_deltas.finish())),
                ("positive_counts", Arc::new(self.h_pos_counts.finish())),
                ("reset_hint", Arc::new(self.h_reset.finish())),
                ("custom_values", Arc::new(self.h_custom.finish())),
            ],
        )?;
        push(
            EXEMPLARS_TABLE,
            vec![
                ("series_id", Arc::new(self.e_id.finish())),
                ("timestamp_ms", Arc::new(self.e_ts.finish())),
                ("value", Arc::new(self.e_v.finish())),
                ("labels", Arc::new(self.e_labels.finish())),
            ],
        )?;
        push(
            METADATA_TABLE,
            vec![
                ("metric_family_name", Arc::new(self.m_family.finish())),
                ("type", Arc::new(self.m_type.finish())),
                ("help", Arc::new(self.m_help.finish())),
                ("unit", Arc::new(self.m_unit.finish())),
                ("received_ms", Arc::new(self.m_at.finish())),
            ],
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_decoded_bytes: 1 << 20, max_labels_per_series: 8, max_label_bytes: 64 };

    fn label(n: &str, v: &str) -> prompb::Label {
        prompb::Label { name: n.into(), value: v.into() }
    }

    fn v1(series: Vec<prompb::TimeSeries>) -> Vec<u8> {
        let raw = prompb::WriteRequest { timeseries: series, metadata: vec![] }.encode_to_vec();
        snap::raw::Encoder::new().compress_vec(&raw).unwrap()
    }

    fn ts(labels: Vec<prompb::Label>, samples: &[(i64, f64)]) -> prompb::TimeSeries {
        prompb::TimeSeries {
            labels,
            samples: samples.iter().map(|&(t, v)| prompb::Sample { timestamp: t, value: v }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(Protocol::from_content_type("application/x-protobuf"), Some(Protocol::V1));
        assert_eq!(
            Protocol::from_content_type("application/x-protobuf;proto=prometheus.WriteRequest"),
            Some(Protocol::V1)
        );
        assert_eq!(
            Protocol::from_content_type("application/x-protobuf; proto=io.prometheus.write.v2.Request"),
            Some(Protocol::V2)
        );
        assert_eq!(Protocol::from_content_type("application/x-protobuf;proto=other.Thing"), None);
        assert_eq!(Protocol::from_content_type("application/json"), None);
    }

    #[test]
    fn bad_requests_are_refused() {
        let ok = v1(vec![ts(vec![label("__name__", "up"), label("job", "a")], &[(1, 1.0)])]);
        assert_eq!(decode(&ok, Protocol::V1, &LIMITS).unwrap().counts(), (1, 0, 0));
        let cases = [
            b"not snappy".to_vec(),
            snap::raw::Encoder::new().compress_vec(b"\xff\xff\xff garbage").unwrap(),
            v1(vec![ts(vec![label("job", "a"), label("__name__", "up")], &[(1, 1.0)])]),
            v1(vec![ts(vec![label("__name__", "up"), label("a", "1"), label("a", "2")], &[(1, 1.0)])]),
            v1(vec![ts(vec![label("__name__", "up"), label("", "x")], &[(1, 1.0)])]),
            v1(vec![ts(vec![label("__name__", "up"), label("a", "")], &[(1, 1.0)])]),
            v1(vec![ts(vec![label("job", "a")], &[(1, 1.0)])]),
            v1(vec![ts(vec![label("__name__", "up")], &[(2, 1.0), (1, 1.0)])]),
            v1(vec![ts(
                (0..20).map(|i| label(&format!("l{i:02}"), "v")).chain([label("__name__", "x")]).collect(),
                &[(1, 1.0)],
            )]),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(matches!(decode(c, Protocol::V1, &LIMITS), Err(PromError::Invalid(_))), "case {i}");
        }
        let big = v1(vec![ts(vec![label("__name__", "up")], &(0..100_000).map(|i| (i, 1.0)).collect::<Vec<_>>())]);
        assert!(matches!(decode(&big, Protocol::V1, &LIMITS), Err(PromError::TooLarge(_))));
    }

    #[test]
    fn resent_samples_are_not_planned_twice() {
        let req = decode(
            &v1(vec![ts(
                vec![label("__name__", "up"), label("job", "a")],
                &[(1, 1.0), (2, f64::from_bits(STALE_NAN_BITS))],
            )]),
            Protocol::V1,
            &LIMITS,
        )
        .unwrap();
        let mut stored = Stored::default();
        let plan = stored.plan(&req, 0).unwrap();
        assert_eq!((plan.written.0, plan.duplicates), (2, 0));
        // series, samples, view
        assert_eq!(plan.records.len(), 3);
        stored.commit(&plan);
        let again = stored.plan(&req, 0).unwrap();
        assert_eq!((again.written.0, again.duplicates, again.records.len()), (0, 2, 0));
    }

    #[test]
    fn series_ids_are_stable() {
        let l = vec![("job".to_string(), "a".to_string())];
        assert_eq!(series_id("up", &l), series_id("up", &l.clone()));
        assert_ne!(series_id("up", &l), series_id("down", &l));
        // Pinned: the id of a series must never change between versions.
        assert_eq!(series_id("up", &l), 0xc237_d525_5576_4807);
    }
}

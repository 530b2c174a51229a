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
//! Ordering, as Prometheus's own TSDB (2.39+, `out_of_order_time_window`)
//! decides it, per series: a sample newer than the series' newest is
//! stored; one older than the newest but within
//! `prometheus.out_of_order_window_ms` of it is stored too (out of order,
//! counted); one older than that is refused with 400 "too old" naming the
//! series. A sample at a timestamp the series already has (stored, or
//! earlier in the same request) is a duplicate when its value is the same
//! bit for bit (not written again, 204, counted: so a resent request stores
//! nothing twice) and refused with 400 when it differs. A refused sample
//! refuses the whole request: nothing of it is logged (Prometheus does not
//! retry a 400, and a 2xx never covers a partial write). Native histograms
//! follow the same rules; exemplars older than the series' newest exemplar
//! are dropped, as Prometheus does.
//!
//! The checks cost per series, not per stored sample: each series keeps
//! its newest timestamp and the value bits of its samples inside the
//! window in memory (loaded from the lake on the account's first write).
//! The account's Prometheus writes hold one lock across check and log
//! append, so two copies of one request cannot both pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, Int8Builder, ListBuilder, MapBuilder,
    RecordBatch, StringBuilder, UInt32Builder, UInt64Builder,
};
use bytes::Bytes;
pub use duckpond_schema::prom_decode::{decode, DecodeError, Decoded, Hist, Limits, Meta, Protocol, SeriesData};
use duckpond_schema::{DatasetCommand, LogRecord, TableName};

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

/// One series' recent past: its newest timestamp and, for every stored
/// timestamp inside the out-of-order window below it, a fingerprint of the
/// value (a sample's bits, a histogram's hash; None when unknown, as for
/// histograms loaded from the lake).
#[derive(Debug, Clone, Default)]
pub struct Recent {
    newest: Option<i64>,
    /// (timestamp, fingerprint), sorted by timestamp, all within the window.
    window: Vec<(i64, Option<u64>)>,
}

/// What checking one sample against a series' past says.
enum Verdict {
    /// Newer than anything, or inside the window at a free timestamp.
    Store { in_order: bool },
    /// The same value at a timestamp the series has.
    Duplicate,
}

impl Recent {
    /// Checks a sample (timestamp, fingerprint) against the series' past.
    fn check(&self, ts: i64, fp: Option<u64>, window_ms: i64) -> Result<Verdict, (i64, bool)> {
        let Some(newest) = self.newest else { return Ok(Verdict::Store { in_order: true }) };
        if ts > newest {
            return Ok(Verdict::Store { in_order: true });
        }
        if let Ok(i) = self.window.binary_search_by_key(&ts, |e| e.0) {
            // An unknown fingerprint (loaded from the lake) cannot be
            // compared: taken as the same value.
            return match (self.window[i].1, fp) {
                (Some(a), Some(b)) if a != b => Err((newest, true)),
                _ => Ok(Verdict::Duplicate),
            };
        }
        if ts < newest.saturating_sub(window_ms) {
            return Err((newest, false));
        }
        Ok(Verdict::Store { in_order: false })
    }

    /// Records a stored sample and drops what fell out of the window.
    fn record(&mut self, ts: i64, fp: Option<u64>, window_ms: i64) {
        match self.window.binary_search_by_key(&ts, |e| e.0) {
            Ok(_) => return,
            Err(i) => self.window.insert(i, (ts, fp)),
        }
        let newest = self.newest.map_or(ts, |n| n.max(ts));
        self.newest = Some(newest);
        let low = newest.saturating_sub(window_ms);
        let cut = self.window.partition_point(|e| e.0 < low);
        self.window.drain(..cut);
    }
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// Malformed: bad snappy, bad protobuf, bad labels (400).
    #[error("{0}")]
    Invalid(String),
    /// A sample older than its series' out-of-order window allows (400).
    #[error("sample of series {series} at {timestamp_ms} ms is too old: the series has samples up to {newest_ms} ms and the out-of-order window is {window_ms} ms (prometheus.out_of_order_window_ms)")]
    TooOld {
        /// The series, as `metric{labels}`.
        series: String,
        /// The sample's timestamp.
        timestamp_ms: i64,
        /// The series' newest timestamp.
        newest_ms: i64,
        /// The window.
        window_ms: i64,
    },
    /// A second, different value at a timestamp the series has (400).
    #[error("series {series} already has a different {what} at {timestamp_ms} ms (a changed value for a stored timestamp is refused)")]
    ChangedValue {
        /// The series, as `metric{labels}`.
        series: String,
        /// "sample" or "histogram".
        what: &'static str,
        /// The timestamp.
        timestamp_ms: i64,
    },
    /// Decoded body over the limit (413).
    #[error("{0}")]
    TooLarge(String),
}

impl From<DecodeError> for PromError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Invalid(m) => PromError::Invalid(m),
            DecodeError::TooLarge(m) => PromError::TooLarge(m),
        }
    }
}

/// What one account has stored, for the ordering and duplicate checks.
#[derive(Debug, Default)]
pub struct Stored {
    /// Series with a row in `prom_series`.
    pub series: HashSet<u64>,
    /// Each series' recent samples.
    pub samples: HashMap<u64, Recent>,
    /// Each series' recent native histograms.
    pub histograms: HashMap<u64, Recent>,
    /// Newest exemplar timestamp per series.
    pub exemplars: HashMap<u64, i64>,
    /// Whether the view exists (or is in the log).
    pub view: bool,
    /// Metadata tuples (family, type, help, unit) stored: metadata is
    /// resent with every batch and only written when it changes.
    pub metadata: HashSet<(String, String, String, String)>,
    /// `prometheus.out_of_order_window_ms`.
    pub window_ms: i64,
}

/// What a request will write, after the checks.
#[derive(Debug, Default)]
pub struct Plan {
    new_metadata: Vec<(String, String, String, String)>,
    /// Log records (one per non-empty table, plus the view the first time).
    pub records: Vec<LogRecord>,
    /// Samples, histograms, exemplars written.
    pub written: (u64, u64, u64),
    /// Duplicates skipped (samples, histograms and exemplars).
    pub duplicates: u64,
    /// Samples and histograms stored out of order (inside the window).
    pub out_of_order: u64,
    new_series: Vec<u64>,
    /// Per series, what it stores.
    stored: Vec<SeriesWrite>,
}

/// What a plan stores of one series: samples and histograms as
/// (timestamp, fingerprint), and the newest exemplar.
#[derive(Debug, Default)]
struct SeriesWrite {
    id: u64,
    samples: Vec<(i64, u64)>,
    histograms: Vec<(i64, u64)>,
    exemplar: Option<i64>,
}

/// The columns of `prom_histograms` that [`histogram_of_row`] reads, in
/// its order.
pub const HISTOGRAM_COLUMNS: &str = "series_id, timestamp_ms, count_int, count_float, sum, schema, zero_threshold, \
     zero_count_int, zero_count_float, negative_span_offsets, negative_span_lengths, negative_deltas, \
     negative_counts, positive_span_offsets, positive_span_lengths, positive_deltas, positive_counts, reset_hint, \
     custom_values";

/// A stored histogram back from a row of [`HISTOGRAM_COLUMNS`] (as DuckDB
/// hands it over in Arrow): its series and the histogram as written.
pub fn histogram_of_row(b: &RecordBatch, i: usize) -> Option<(u64, Hist)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes as dt;
    let c = |k: usize| b.column(k);
    let opt_u64 = |k: usize| {
        let a = c(k).as_primitive_opt::<dt::UInt64Type>()?;
        Some(a.is_valid(i).then(|| a.value(i)))
    };
    let opt_f64 = |k: usize| {
        let a = c(k).as_primitive_opt::<dt::Float64Type>()?;
        Some(a.is_valid(i).then(|| a.value(i)))
    };
    fn list<T: dt::ArrowPrimitiveType>(a: &dyn Array, i: usize) -> Option<Vec<T::Native>> {
        let l = a.as_list_opt::<i32>()?;
        if l.is_null(i) {
            return Some(Vec::new());
        }
        Some(l.value(i).as_primitive_opt::<T>()?.values().to_vec())
    }
    let spans = |off: usize, len: usize| -> Option<Vec<(i32, u32)>> {
        let o = list::<dt::Int32Type>(c(off).as_ref(), i)?;
        let l = list::<dt::UInt32Type>(c(len).as_ref(), i)?;
        Some(o.into_iter().zip(l).collect())
    };
    let id = c(0).as_primitive_opt::<dt::UInt64Type>()?.value(i);
    let h = Hist {
        timestamp_ms: c(1).as_primitive_opt::<dt::Int64Type>()?.value(i),
        count_int: opt_u64(2)?,
        count_float: opt_f64(3)?,
        sum: c(4).as_primitive_opt::<dt::Float64Type>()?.value(i),
        schema: c(5).as_primitive_opt::<dt::Int32Type>()?.value(i),
        zero_threshold: c(6).as_primitive_opt::<dt::Float64Type>()?.value(i),
        zero_count_int: opt_u64(7)?,
        zero_count_float: opt_f64(8)?,
        negative_spans: spans(9, 10)?,
        negative_deltas: list::<dt::Int64Type>(c(11).as_ref(), i)?,
        negative_counts: list::<dt::Float64Type>(c(12).as_ref(), i)?,
        positive_spans: spans(13, 14)?,
        positive_deltas: list::<dt::Int64Type>(c(15).as_ref(), i)?,
        positive_counts: list::<dt::Float64Type>(c(16).as_ref(), i)?,
        reset_hint: i32::from(c(17).as_primitive_opt::<dt::Int8Type>()?.value(i)),
        custom_values: list::<dt::Float64Type>(c(18).as_ref(), i)?,
    };
    Some((id, h))
}

/// A fingerprint of a histogram's content (for "same value" at a timestamp).
fn hist_fingerprint(h: &Hist) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut s = std::collections::hash_map::DefaultHasher::new();
    let f = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    (h.count_int, h.count_float.map(f64::to_bits), h.sum.to_bits(), h.schema, h.zero_threshold.to_bits()).hash(&mut s);
    (h.zero_count_int, h.zero_count_float.map(f64::to_bits), &h.negative_spans, &h.negative_deltas).hash(&mut s);
    (f(&h.negative_counts), &h.positive_spans, &h.positive_deltas, f(&h.positive_counts)).hash(&mut s);
    (h.reset_hint, f(&h.custom_values)).hash(&mut s);
    s.finish()
}

fn series_text(s: &SeriesData) -> String {
    let labels: Vec<String> = s.labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{}{{{}}}", s.metric, labels.join(", "))
}

impl Stored {
    /// Plans `req` against what is stored; nothing changes until
    /// [`Stored::commit`]. Any sample the ordering rules refuse refuses the
    /// request.
    pub fn plan(&self, req: &Decoded, now_ms: i64) -> Result<Plan, PromError> {
        let mut plan = Plan::default();
        let mut t = Tables::default();
        let window = self.window_ms;
        // A series may appear more than once in a request: its past grows
        // with what the request already planned for it.
        let mut seen: HashMap<u64, (Recent, Recent, i64)> = HashMap::new();
        for s in &req.series {
            let (mut rs, mut rh, mut le) = seen.remove(&s.id).unwrap_or_else(|| {
                (
                    self.samples.get(&s.id).cloned().unwrap_or_default(),
                    self.histograms.get(&s.id).cloned().unwrap_or_default(),
                    self.exemplars.get(&s.id).copied().unwrap_or(i64::MIN),
                )
            });
            let refuse = |ts: i64, (newest, changed): (i64, bool), what: &'static str| {
                if changed {
                    PromError::ChangedValue { series: series_text(s), what, timestamp_ms: ts }
                } else {
                    PromError::TooOld { series: series_text(s), timestamp_ms: ts, newest_ms: newest, window_ms: window }
                }
            };
            let mut stored = SeriesWrite { id: s.id, ..Default::default() };
            let mut samples: Vec<(i64, f64)> = s.samples.clone();
            samples.sort_by_key(|x| x.0);
            for (ts, v) in samples {
                let fp = v.to_bits();
                match rs.check(ts, Some(fp), window).map_err(|e| refuse(ts, e, "sample"))? {
                    Verdict::Duplicate => plan.duplicates += 1,
                    Verdict::Store { in_order } => {
                        plan.out_of_order += u64::from(!in_order);
                        t.sample(s.id, ts, v);
                        plan.written.0 += 1;
                        rs.record(ts, Some(fp), window);
                        stored.samples.push((ts, fp));
                    }
                }
            }
            let mut hists: Vec<&Hist> = s.histograms.iter().collect();
            hists.sort_by_key(|h| h.timestamp_ms);
            for h in hists {
                let fp = hist_fingerprint(h);
                match rh.check(h.timestamp_ms, Some(fp), window).map_err(|e| refuse(h.timestamp_ms, e, "histogram"))? {
                    Verdict::Duplicate => plan.duplicates += 1,
                    Verdict::Store { in_order } => {
                        plan.out_of_order += u64::from(!in_order);
                        t.histogram(s.id, h);
                        plan.written.1 += 1;
                        rh.record(h.timestamp_ms, Some(fp), window);
                        stored.histograms.push((h.timestamp_ms, fp));
                    }
                }
            }
            for (ts, v, labels) in &s.exemplars {
                if *ts <= le {
                    plan.duplicates += 1;
                    continue;
                }
                t.exemplar(s.id, *ts, *v, labels);
                plan.written.2 += 1;
                le = *ts;
                stored.exemplar = Some(*ts);
            }
            let has_data = !stored.samples.is_empty() || !stored.histograms.is_empty() || stored.exemplar.is_some();
            if has_data && !self.series.contains(&s.id) && !plan.new_series.contains(&s.id) {
                t.series(s, now_ms);
                plan.new_series.push(s.id);
            }
            plan.stored.push(stored);
            seen.insert(s.id, (rs, rh, le));
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

    /// Records a sample loaded from the lake (at start).
    pub fn load_sample(&mut self, series: u64, ts: i64, bits: u64) {
        self.samples.entry(series).or_default().record(ts, Some(bits), self.window_ms);
    }

    /// Records a histogram timestamp loaded from the lake whose content did
    /// not read back: a resend at it counts as a duplicate.
    pub fn load_histogram_unknown(&mut self, series: u64, ts: i64) {
        self.histograms.entry(series).or_default().record(ts, None, self.window_ms);
    }

    /// Records a histogram loaded from the lake (its content is compared
    /// with a resend at its timestamp).
    pub fn load_histogram(&mut self, series: u64, h: &Hist) {
        self.histograms.entry(series).or_default().record(h.timestamp_ms, Some(hist_fingerprint(h)), self.window_ms);
    }

    /// Records a plan whose records are durably logged.
    pub fn commit(&mut self, plan: &Plan) {
        self.series.extend(plan.new_series.iter().copied());
        self.metadata.extend(plan.new_metadata.iter().cloned());
        let window = self.window_ms;
        for w in &plan.stored {
            if !w.samples.is_empty() {
                let r = self.samples.entry(w.id).or_default();
                w.samples.iter().for_each(|&(ts, fp)| r.record(ts, Some(fp), window));
            }
            if !w.histograms.is_empty() {
                let r = self.histograms.entry(w.id).or_default();
                w.histograms.iter().for_each(|&(ts, fp)| r.record(ts, Some(fp), window));
            }
            if let Some(t) = w.exemplar {
                let e = self.exemplars.entry(w.id).or_insert(i64::MIN);
                *e = (*e).max(t);
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
    use duckpond_schema::prompb;

    const LIMITS: Limits = Limits { max_decoded_bytes: 1 << 20, max_labels_per_series: 8, max_label_bytes: 64 };

    fn label(n: &str, v: &str) -> prompb::Label {
        prompb::Label { name: n.into(), value: v.into() }
    }

    /// Encoded as Prometheus does (prost alone would drop a -0.0 value).
    fn v1(series: Vec<prompb::TimeSeries>) -> Vec<u8> {
        let raw = duckpond_schema::prom_wire::encode_write_request(&prompb::WriteRequest {
            timeseries: series,
            metadata: vec![],
        });
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
            v1(vec![ts(
                (0..20).map(|i| label(&format!("l{i:02}"), "v")).chain([label("__name__", "x")]).collect(),
                &[(1, 1.0)],
            )]),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(matches!(decode(c, Protocol::V1, &LIMITS), Err(DecodeError::Invalid(_))), "case {i}");
        }
        let big = v1(vec![ts(vec![label("__name__", "up")], &(0..100_000).map(|i| (i, 1.0)).collect::<Vec<_>>())]);
        assert!(matches!(decode(&big, Protocol::V1, &LIMITS), Err(DecodeError::TooLarge(_))));
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
        let mut stored = Stored { window_ms: 60_000, ..Default::default() };
        let plan = stored.plan(&req, 0).unwrap();
        assert_eq!((plan.written.0, plan.duplicates), (2, 0));
        // series, samples, view
        assert_eq!(plan.records.len(), 3);
        stored.commit(&plan);
        let again = stored.plan(&req, 0).unwrap();
        assert_eq!((again.written.0, again.duplicates, again.records.len()), (0, 2, 0));
    }

    fn plan_of(stored: &Stored, samples: &[(i64, f64)]) -> Result<Plan, PromError> {
        let req =
            decode(&v1(vec![ts(vec![label("__name__", "up"), label("job", "a")], samples)]), Protocol::V1, &LIMITS)
                .unwrap();
        stored.plan(&req, 0)
    }

    /// Prometheus's ordering rules, sample by sample (window 30 s).
    #[test]
    fn ordering_follows_the_out_of_order_window() {
        let mut stored = Stored { window_ms: 30_000, ..Default::default() };
        let p = plan_of(&stored, &[(60_000, 1.0)]).unwrap();
        stored.commit(&p);
        // Older than the newest but inside the window: stored, out of order.
        let p = plan_of(&stored, &[(40_000, 2.0), (90_000, 3.0)]).unwrap();
        assert_eq!((p.written.0, p.out_of_order, p.duplicates), (2, 1, 0));
        stored.commit(&p);
        // Older than the window below the new newest (90 s): too old, and
        // the whole request is refused (the in-order sample too).
        let e = plan_of(&stored, &[(59_999, 1.0), (100_000, 1.0)]).unwrap_err();
        assert!(matches!(&e, PromError::TooOld { newest_ms: 90_000, .. }), "{e}");
        assert!(e.to_string().contains("up{job=\"a\"}"), "{e}");
        // A changed value at a stored timestamp: refused, naming the series.
        let e = plan_of(&stored, &[(90_000, 4.0)]).unwrap_err();
        assert!(matches!(e, PromError::ChangedValue { timestamp_ms: 90_000, .. }), "{e}");
        let e = plan_of(&stored, &[(60_000, -1.0)]).unwrap_err();
        assert!(matches!(e, PromError::ChangedValue { .. }), "{e}");
        // An exact resend inside the window: duplicates, nothing written.
        let p = plan_of(&stored, &[(60_000, 1.0), (90_000, 3.0)]).unwrap();
        assert_eq!((p.written.0, p.duplicates, p.records.len()), (0, 2, 0));
        // Duplicates inside one request are stored once; unsorted input is
        // fine; -0.0 and 0.0 are different values.
        let p = plan_of(&stored, &[(95_000, 5.0), (91_000, 0.0), (95_000, 5.0)]).unwrap();
        assert_eq!((p.written.0, p.duplicates), (2, 1));
        stored.commit(&p);
        assert!(plan_of(&stored, &[(91_000, -0.0)]).is_err());
        // A stale marker is a value like any other (bit-exact).
        let stale = f64::from_bits(STALE_NAN_BITS);
        assert!(plan_of(&stored, &[(95_000, stale)]).is_err());
        let p = plan_of(&stored, &[(96_000, stale)]).unwrap();
        stored.commit(&p);
        assert_eq!(plan_of(&stored, &[(96_000, stale)]).unwrap().duplicates, 1);
    }

    /// With window 0 (Prometheus's default) only the newest timestamp can
    /// take a resend; anything older is too old.
    #[test]
    fn window_zero_is_in_order_only() {
        let mut stored = Stored::default();
        let p = plan_of(&stored, &[(10, 1.0), (20, 2.0)]).unwrap();
        stored.commit(&p);
        assert_eq!(plan_of(&stored, &[(20, 2.0)]).unwrap().duplicates, 1);
        assert!(matches!(plan_of(&stored, &[(10, 1.0)]), Err(PromError::TooOld { .. })));
        assert!(matches!(plan_of(&stored, &[(15, 1.0)]), Err(PromError::TooOld { .. })));
    }

    /// A histogram read back from its table row has the fingerprint it was
    /// written with, so a changed histogram at a stored timestamp is refused
    /// after a restart too.
    #[test]
    fn histograms_read_back_from_their_rows() {
        let h = Hist {
            timestamp_ms: 5_000,
            count_int: Some(7),
            sum: 2.5,
            schema: 3,
            zero_threshold: 1e-128,
            zero_count_int: Some(1),
            negative_spans: vec![(-2, 1)],
            negative_deltas: vec![4],
            positive_spans: vec![(0, 2), (3, 1)],
            positive_deltas: vec![1, 2, -1],
            reset_hint: 1,
            ..Default::default()
        };
        let mut t = Tables::default();
        t.histogram(42, &h);
        let records = t.into_records().unwrap();
        let LogRecord::Rows { ipc, .. } =
            records.iter().find(|r| r.table().as_str() == HISTOGRAMS_TABLE).expect("a histograms record")
        else {
            panic!("rows")
        };
        let batch = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc.to_vec()), None)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names.join(", "), HISTOGRAM_COLUMNS.split_whitespace().collect::<Vec<_>>().join(" "));
        let (id, back) = histogram_of_row(&batch, 0).expect("reads back");
        assert_eq!((id, &back), (42, &h));
        let mut stored = Stored { window_ms: 60_000, ..Default::default() };
        stored.load_histogram(42, &back);
        let same = stored.histograms[&42].check(5_000, Some(hist_fingerprint(&h)), 60_000);
        assert!(matches!(same, Ok(Verdict::Duplicate)));
        let changed = Hist { sum: 3.0, ..h };
        assert!(stored.histograms[&42].check(5_000, Some(hist_fingerprint(&changed)), 60_000).is_err());
    }

    #[test]
    fn series_ids_are_stable() {
        let l = vec![("job".to_string(), "a".to_string())];
        use duckpond_schema::prom_decode::series_id;
        assert_eq!(series_id("up", &l), series_id("up", &l.clone()));
        assert_ne!(series_id("up", &l), series_id("down", &l));
        // Pinned: the id of a series must never change between versions.
        assert_eq!(series_id("up", &l), 0xc237_d525_5576_4807);
    }
}

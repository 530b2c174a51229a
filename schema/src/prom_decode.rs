//! Decoding Prometheus remote-write bodies (1.0 and 2.0): snappy block
//! decompression within a size limit, protobuf decoding, and the checks of
//! the specs (labels sorted, unique and non-empty, `__name__` present,
//! symbol references in range). Pure: no I/O, no DuckDB, so it is fuzzed
//! on its own (`fuzz/`, `make fuzz`).
//!
//! Sources: the remote-write 1.0 and 2.0 specs (prometheus/docs
//! `remote_write_spec.md`, `remote_write_spec_2_0.md`).

use prost::Message;

use crate::{prompb, prompb_v2};

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

/// Why a remote-write body is refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Malformed: bad snappy, bad protobuf, bad labels (400).
    #[error("{0}")]
    Invalid(String),
    /// Decoded body over the limit (413).
    #[error("{0}")]
    TooLarge(String),
}

/// A native histogram, protocol-independent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    /// Timestamp (Unix ms).
    pub timestamp_ms: i64,
    /// Integer count (`count_int` of the oneof), if sent.
    pub count_int: Option<u64>,
    /// Float count (`count_float` of the oneof), if sent.
    pub count_float: Option<f64>,
    /// Sum of observations.
    pub sum: f64,
    /// Bucket schema (resolution).
    pub schema: i32,
    /// Width of the zero bucket.
    pub zero_threshold: f64,
    /// Integer zero-bucket count, if sent.
    pub zero_count_int: Option<u64>,
    /// Float zero-bucket count, if sent.
    pub zero_count_float: Option<f64>,
    /// Negative buckets: (offset, length) spans.
    pub negative_spans: Vec<(i32, u32)>,
    /// Negative buckets: integer count deltas.
    pub negative_deltas: Vec<i64>,
    /// Negative buckets: float counts.
    pub negative_counts: Vec<f64>,
    /// Positive buckets: (offset, length) spans.
    pub positive_spans: Vec<(i32, u32)>,
    /// Positive buckets: integer count deltas.
    pub positive_deltas: Vec<i64>,
    /// Positive buckets: float counts.
    pub positive_counts: Vec<f64>,
    /// Counter reset hint.
    pub reset_hint: i32,
    /// Custom bucket bounds (schema -53).
    pub custom_values: Vec<f64>,
}

/// Sorted label pairs.
pub type Labels = Vec<(String, String)>;

/// An exemplar: timestamp ms, value, its labels.
pub type Exemplar = (i64, f64, Labels);

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
    /// Native histograms.
    pub histograms: Vec<Hist>,
    /// Exemplars.
    pub exemplars: Vec<Exemplar>,
}

/// Metric metadata.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `metric_family_name`.
    pub family: String,
    /// Its type, lower case (`counter`, `gauge`, ...).
    pub kind: String,
    /// Help text.
    pub help: String,
    /// Unit.
    pub unit: String,
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
pub fn decode(body: &[u8], proto: Protocol, limits: &Limits) -> Result<Decoded, DecodeError> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| DecodeError::Invalid(format!("body is not snappy block-compressed: {e}")))?;
    if len as u64 > limits.max_decoded_bytes {
        return Err(DecodeError::TooLarge(format!(
            "decoded body of {len} bytes exceeds {} bytes (prometheus.max_decoded_bytes)",
            limits.max_decoded_bytes
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Invalid(format!("body is not snappy block-compressed: {e}")))?;
    match proto {
        Protocol::V1 => {
            let req = prompb::WriteRequest::decode(raw.as_slice())
                .map_err(|e| DecodeError::Invalid(format!("not a prometheus.WriteRequest: {e}")))?;
            from_v1(req, limits)
        }
        Protocol::V2 => {
            let req = prompb_v2::Request::decode(raw.as_slice())
                .map_err(|e| DecodeError::Invalid(format!("not an io.prometheus.write.v2.Request: {e}")))?;
            from_v2(req, limits)
        }
    }
}

/// Checks a series' labels and splits off `__name__`.
fn check_labels(pairs: Vec<(String, String)>, limits: &Limits) -> Result<(String, Vec<(String, String)>), DecodeError> {
    let bad = |m: String| Err(DecodeError::Invalid(m));
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
    let metric = metric.ok_or_else(|| DecodeError::Invalid("a series has no __name__ label".into()))?;
    Ok((metric, rest))
}

fn from_v1(req: prompb::WriteRequest, limits: &Limits) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    for ts in req.timeseries {
        let (metric, labels) = check_labels(ts.labels.into_iter().map(|l| (l.name, l.value)).collect(), limits)?;
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

fn from_v2(req: prompb_v2::Request, limits: &Limits) -> Result<Decoded, DecodeError> {
    let symbols = req.symbols;
    if symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err(DecodeError::Invalid("symbols[0] must be the empty string".into()));
    }
    let sym = |i: u32| {
        symbols
            .get(i as usize)
            .cloned()
            .ok_or_else(|| DecodeError::Invalid(format!("symbol reference {i} out of range")))
    };
    let pairs = |refs: &[u32]| -> Result<Vec<(String, String)>, DecodeError> {
        if refs.len() % 2 != 0 {
            return Err(DecodeError::Invalid("labels_refs has an odd length".into()));
        }
        refs.chunks(2).map(|c| Ok((sym(c[0])?, sym(c[1])?))).collect()
    };
    let mut out = Decoded::default();
    for ts in req.timeseries {
        let (metric, labels) = check_labels(pairs(&ts.labels_refs)?, limits)?;
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

//! Query results as JSON, faithfully: nothing is rounded or lost on the way
//! to a JavaScript client.
//!
//! - integers within ±(2^53 − 1) are numbers, beyond that strings (a JSON
//!   parser would round them);
//! - decimals (and HUGEINT, which arrives as a 38-digit decimal) are
//!   strings, exact;
//! - NaN and infinities are the strings `"NaN"`, `"Infinity"`,
//!   `"-Infinity"` (JSON has no such numbers);
//! - dates, times and timestamps are ISO 8601 strings (with the offset when
//!   the type has a time zone), `"infinity"` / `"-infinity"` for DuckDB's
//!   infinite values, with years beyond 9999 written out; intervals and
//!   other types use DuckDB's/Arrow's display form;
//! - a UNION cell is the value of its active member;
//! - blobs are base64; lists are arrays; structs are objects; maps are
//!   arrays of `{"key", "value"}` (keys need not be strings).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{self as dt, DataType};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use base64::Engine;
use serde_json::{json, Value};

/// Largest integer a JSON number carries exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A result column: name and type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResultColumn {
    /// Column name.
    pub name: String,
    /// Type name in DuckDB's terms where they match (BIGINT, VARCHAR, ...).
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The columns of a result schema.
pub fn columns(schema: &arrow::datatypes::Schema) -> Vec<ResultColumn> {
    schema
        .fields()
        .iter()
        .map(|f| ResultColumn { name: f.name().clone(), data_type: type_name(f.data_type()) })
        .collect()
}

/// DuckDB's name of an Arrow type (the form DuckDB hands results in).
pub fn type_name(t: &DataType) -> String {
    use DataType::*;
    match t {
        Null => "NULL".into(),
        Boolean => "BOOLEAN".into(),
        Int8 => "TINYINT".into(),
        Int16 => "SMALLINT".into(),
        Int32 => "INTEGER".into(),
        Int64 => "BIGINT".into(),
        UInt8 => "UTINYINT".into(),
        UInt16 => "USMALLINT".into(),
        UInt32 => "UINTEGER".into(),
        UInt64 => "UBIGINT".into(),
        Float16 | Float32 => "FLOAT".into(),
        Float64 => "DOUBLE".into(),
        Decimal128(38, 0) => "HUGEINT".into(),
        Decimal128(p, s) | Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        Utf8 | LargeUtf8 | Utf8View => "VARCHAR".into(),
        Binary | LargeBinary | BinaryView => "BLOB".into(),
        FixedSizeBinary(16) => "UUID".into(),
        FixedSizeBinary(_) => "BLOB".into(),
        Date32 | Date64 => "DATE".into(),
        Time32(_) | Time64(_) => "TIME".into(),
        Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        Timestamp(dt::TimeUnit::Second, None) => "TIMESTAMP_S".into(),
        Timestamp(dt::TimeUnit::Millisecond, None) => "TIMESTAMP_MS".into(),
        Timestamp(dt::TimeUnit::Nanosecond, None) => "TIMESTAMP_NS".into(),
        Timestamp(_, None) => "TIMESTAMP".into(),
        Interval(_) | Duration(_) => "INTERVAL".into(),
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) => format!("{}[]", type_name(f.data_type())),
        FixedSizeList(f, n) => format!("{}[{n}]", type_name(f.data_type())),
        Struct(fields) => format!(
            "STRUCT({})",
            fields
                .iter()
                .map(|f| format!("\"{}\" {}", f.name(), type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Map(entries, _) => match entries.data_type() {
            Struct(kv) if kv.len() == 2 => {
                format!("MAP({}, {})", type_name(kv[0].data_type()), type_name(kv[1].data_type()))
            }
            _ => "MAP".into(),
        },
        Dictionary(_, v) => type_name(v),
        Union(..) => "UNION".into(),
        other => other.to_string(),
    }
}

fn int(v: i64) -> Value {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
        json!(v)
    } else {
        Value::String(v.to_string())
    }
}

fn uint(v: u64) -> Value {
    if v <= MAX_SAFE_INTEGER as u64 {
        json!(v)
    } else {
        Value::String(v.to_string())
    }
}

fn float(v: f64) -> Value {
    if v.is_nan() {
        Value::String("NaN".into())
    } else if v.is_infinite() {
        Value::String(if v > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        json!(v)
    }
}

fn display(a: &dyn Array, i: usize) -> Value {
    let opts = FormatOptions::default();
    match ArrayFormatter::try_new(a, &opts) {
        Ok(f) => Value::String(f.value(i).to_string()),
        Err(_) => Value::Null,
    }
}

/// One cell as JSON.
pub fn cell(a: &ArrayRef, i: usize) -> Value {
    use DataType::*;
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        Null => Value::Null,
        Boolean => json!(a.as_boolean().value(i)),
        Int8 => json!(a.as_primitive::<dt::Int8Type>().value(i)),
        Int16 => json!(a.as_primitive::<dt::Int16Type>().value(i)),
        Int32 => json!(a.as_primitive::<dt::Int32Type>().value(i)),
        Int64 => int(a.as_primitive::<dt::Int64Type>().value(i)),
        UInt8 => json!(a.as_primitive::<dt::UInt8Type>().value(i)),
        UInt16 => json!(a.as_primitive::<dt::UInt16Type>().value(i)),
        UInt32 => json!(a.as_primitive::<dt::UInt32Type>().value(i)),
        UInt64 => uint(a.as_primitive::<dt::UInt64Type>().value(i)),
        Float16 => float(f64::from(a.as_primitive::<dt::Float16Type>().value(i))),
        Float32 => float(f64::from(a.as_primitive::<dt::Float32Type>().value(i))),
        Float64 => float(a.as_primitive::<dt::Float64Type>().value(i)),
        Utf8 => json!(a.as_string::<i32>().value(i)),
        LargeUtf8 => json!(a.as_string::<i64>().value(i)),
        Utf8View => json!(a.as_string_view().value(i)),
        Binary => json!(base64::engine::general_purpose::STANDARD.encode(a.as_binary::<i32>().value(i))),
        LargeBinary => json!(base64::engine::general_purpose::STANDARD.encode(a.as_binary::<i64>().value(i))),
        BinaryView => json!(base64::engine::general_purpose::STANDARD.encode(a.as_binary_view().value(i))),
        FixedSizeBinary(16) => {
            let b = a.as_fixed_size_binary().value(i);
            match uuid::Uuid::from_slice(b) {
                Ok(u) => json!(u.to_string()),
                Err(_) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
            }
        }
        FixedSizeBinary(_) => {
            json!(base64::engine::general_purpose::STANDARD.encode(a.as_fixed_size_binary().value(i)))
        }
        Timestamp(unit, tz) => {
            let raw = timestamp_raw(a, i, *unit);
            if let Some(inf) = infinity(raw == i64::MAX, raw == -i64::MAX) {
                return inf;
            }
            let v = match unit {
                dt::TimeUnit::Second => a.as_primitive::<dt::TimestampSecondType>().value(i).checked_mul(1_000_000_000),
                dt::TimeUnit::Millisecond => {
                    a.as_primitive::<dt::TimestampMillisecondType>().value(i).checked_mul(1_000_000)
                }
                dt::TimeUnit::Microsecond => {
                    a.as_primitive::<dt::TimestampMicrosecondType>().value(i).checked_mul(1_000)
                }
                dt::TimeUnit::Nanosecond => Some(a.as_primitive::<dt::TimestampNanosecondType>().value(i)),
            };
            // Instants are UTC: zoned ones say so with `Z`.
            match v.map(chrono::DateTime::from_timestamp_nanos) {
                Some(t) if tz.is_some() => json!(t.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string()),
                Some(t) => json!(t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
                None => json!(wide_timestamp(raw, *unit, tz.is_some())),
            }
        }
        Date32 => {
            let d = a.as_primitive::<dt::Date32Type>().value(i);
            infinity(d == i32::MAX, d == -i32::MAX).unwrap_or_else(|| json!(civil(i64::from(d))))
        }
        Union(..) => {
            let u = a.as_union();
            let (id, at) = (u.type_id(i), u.value_offset(i));
            cell(u.child(id), at)
        }
        Decimal128(_, scale) => json!(decimal(a.as_primitive::<dt::Decimal128Type>().value(i), *scale)),
        Date64 | Time32(_) | Time64(_) => display(a.as_ref(), i),
        List(_) => list(a.as_list::<i32>().value(i)),
        LargeList(_) => list(a.as_list::<i64>().value(i)),
        FixedSizeList(..) => list(a.as_fixed_size_list().value(i)),
        Struct(fields) => {
            let s = a.as_struct();
            let mut obj = serde_json::Map::new();
            for (f, col) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), cell(col, i));
            }
            Value::Object(obj)
        }
        Map(..) => {
            let m = a.as_map().value(i);
            let (k, v) = (m.column(0), m.column(1));
            Value::Array((0..m.len()).map(|j| json!({"key": cell(k, j), "value": cell(v, j)})).collect())
        }
        Dictionary(..) => {
            let d = a.as_any_dictionary();
            let key = d.normalized_keys()[i];
            cell(d.values(), key)
        }
        _ => display(a.as_ref(), i),
    }
}

fn infinity(pos: bool, neg: bool) -> Option<Value> {
    match (pos, neg) {
        (true, _) => Some(json!("infinity")),
        (_, true) => Some(json!("-infinity")),
        _ => None,
    }
}

fn timestamp_raw(a: &ArrayRef, i: usize, unit: dt::TimeUnit) -> i64 {
    match unit {
        dt::TimeUnit::Second => a.as_primitive::<dt::TimestampSecondType>().value(i),
        dt::TimeUnit::Millisecond => a.as_primitive::<dt::TimestampMillisecondType>().value(i),
        dt::TimeUnit::Microsecond => a.as_primitive::<dt::TimestampMicrosecondType>().value(i),
        dt::TimeUnit::Nanosecond => a.as_primitive::<dt::TimestampNanosecondType>().value(i),
    }
}

/// `YYYY-MM-DD` of a day number since 1970-01-01, for any year (DuckDB's
/// dates reach ±5.8 million years; chrono stops at ±262,143). The civil
/// calendar algorithm of Howard Hinnant's `civil_from_days`.
fn civil(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if y < 0 {
        format!("-{:04}-{m:02}-{d:02}", -y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// A timestamp outside chrono's range, written out in full.
fn wide_timestamp(raw: i64, unit: dt::TimeUnit, zoned: bool) -> String {
    let per_s: i64 = match unit {
        dt::TimeUnit::Second => 1,
        dt::TimeUnit::Millisecond => 1_000,
        dt::TimeUnit::Microsecond => 1_000_000,
        dt::TimeUnit::Nanosecond => 1_000_000_000,
    };
    let per_day = 86_400 * per_s;
    let (days, rest) = (raw.div_euclid(per_day), raw.rem_euclid(per_day));
    let (secs, frac) = (rest / per_s, rest % per_s);
    let digits = per_s.to_string().len() - 1;
    let frac = if frac == 0 { String::new() } else { format!(".{frac:0digits$}") };
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{}T{h:02}:{m:02}:{s:02}{frac}{}", civil(days), if zoned { "Z" } else { "" })
}

/// One cell as text (None for NULL): a string as it is, anything else in
/// its JSON form without quotes. What CSV downloads write for columns that
/// DuckDB did not turn into text itself.
pub fn text(a: &ArrayRef, i: usize) -> Option<String> {
    use DataType::*;
    if a.is_null(i) {
        return None;
    }
    Some(match a.data_type() {
        Utf8 => a.as_string::<i32>().value(i).to_string(),
        LargeUtf8 => a.as_string::<i64>().value(i).to_string(),
        Utf8View => a.as_string_view().value(i).to_string(),
        _ => match cell(a, i) {
            Value::String(s) => s,
            Value::Null => return None,
            other => other.to_string(),
        },
    })
}

/// Appends one CSV record (RFC 4180, as DuckDB's CSV writer: a field is
/// quoted when it holds a comma, a quote, a line break or `#` (its comment
/// character), or is the empty string, so it reads back apart from NULL,
/// which is written as nothing).
pub fn csv_line(out: &mut String, fields: &[Option<&str>]) {
    for (k, f) in fields.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        let Some(f) = f else { continue };
        if f.is_empty() || f.contains([',', '"', '\n', '\r', '#']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push('\n');
}

/// An exact decimal string (Arrow's display would cut values wider than
/// the declared precision, which HUGEINT's 39 digits are).
fn decimal(v: i128, scale: i8) -> String {
    if scale <= 0 {
        let zeros = "0".repeat((-scale) as usize);
        return if v == 0 { "0".into() } else { format!("{v}{zeros}") };
    }
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded =
        if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale - digits.len() + 1)) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

fn list(values: ArrayRef) -> Value {
    Value::Array((0..values.len()).map(|j| cell(&values, j)).collect())
}

/// One row of a batch as a JSON array.
pub fn row(batch: &RecordBatch, i: usize) -> Value {
    Value::Array(batch.columns().iter().map(|c| cell(c, i)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_exact() {
        assert_eq!(int(MAX_SAFE_INTEGER), json!(MAX_SAFE_INTEGER));
        assert_eq!(int(MAX_SAFE_INTEGER + 1), json!("9007199254740992"));
        assert_eq!(int(i64::MIN), json!("-9223372036854775808"));
        assert_eq!(uint(u64::MAX), json!("18446744073709551615"));
        assert_eq!(float(f64::NAN), json!("NaN"));
        assert_eq!(float(f64::NEG_INFINITY), json!("-Infinity"));
        assert_eq!(float(0.5), json!(0.5));
        assert_eq!(decimal(125, 2), "1.25");
        assert_eq!(decimal(-5, 3), "-0.005");
        assert_eq!(decimal(i128::MAX, 0), "170141183460469231731687303715884105727");
    }

    #[test]
    fn dates_and_timestamps_beyond_chrono() {
        assert_eq!(civil(0), "1970-01-01");
        assert_eq!(civil(-1), "1969-12-31");
        assert_eq!(civil(19_723), "2024-01-01");
        assert_eq!(civil(i64::from(i32::MAX - 1)), "5881580-07-10");
        assert_eq!(civil(-719_528), "0000-01-01");
        // DuckDB's largest TIMESTAMP, one below its infinity.
        assert_eq!(wide_timestamp(i64::MAX - 1, dt::TimeUnit::Microsecond, false), "294247-01-10T04:00:54.775806");
        assert_eq!(wide_timestamp(1_500, dt::TimeUnit::Millisecond, true), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn csv_records_quote_like_duckdb() {
        let mut out = String::new();
        csv_line(&mut out, &[Some("a"), None, Some(""), Some("x,y"), Some("say \"hi\""), Some("l1\nl2"), Some("#1")]);
        assert_eq!(out, "a,,\"\",\"x,y\",\"say \"\"hi\"\"\",\"l1\nl2\",\"#1\"\n");
    }
}

//! What DuckDB's reading of an upload becomes in the lake.
//!
//! DuckDB reads CSV, JSON and Parquet into its own types; DuckLake then
//! stores some of them inexactly (checked with DuckDB 1.5.5 / DuckLake
//! 1.5.5: HUGEINT and UHUGEINT are written as DOUBLE, TIMETZ loses its
//! offset, TIME_NS breaks the writer, BIT, BIGNUM, UNION and ENUM are
//! refused). So an upload's columns are converted in the copy to the staged
//! file, by these rules:
//!
//! | DuckDB reads | stored as | why |
//! |---|---|---|
//! | HUGEINT, UHUGEINT (also inside lists and structs) | DECIMAL(38,0) | exact up to 38 digits; a larger value refuses the upload |
//! | JSON (a JSON value of varying shape) | VARCHAR, the value's JSON text | a later write of text into a JSON column would fail its cast |
//! | JSON or NULL with no value at all | left out | it has no type; a later write gives it one |
//! | ENUM | VARCHAR | DuckLake has no ENUM |
//! | TIMETZ, TIME_NS, BIT, BIGNUM, UNION | refused (400 naming the column) | the lake cannot keep them |
//!
//! Parquet uploads are checked against their own schema first, because
//! DuckDB's Parquet reader changes some values before any of the above can
//! see them: a decimal of more than 38 digits is read as DOUBLE, a duration
//! as a plain integer, and nanoseconds of `time64[ns]` and zoned
//! `timestamp[ns]` are cut to microseconds. Those are refused unless no
//! value would change. CSV integers beyond 64 bits, which DuckDB's sniffer
//! reads as DOUBLE, are found from the staged file's statistics and read
//! again as exact integers.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::reader::FileReader;
use parquet::file::statistics::Statistics;

use super::upload::Format;

/// A column of an upload the lake cannot keep exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot be stored exactly: column {column:?} ({data_type}) {reason}")]
pub struct Refused {
    /// The column.
    pub column: String,
    /// Its type as read.
    pub data_type: String,
    /// Why, and what to send instead.
    pub reason: String,
}

fn refused(column: &str, data_type: impl ToString, reason: &str) -> Refused {
    Refused { column: column.to_string(), data_type: data_type.to_string(), reason: reason.to_string() }
}

/// The SQL identifier of a column.
fn ident(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

/// The words of a DuckDB type name that name types, quoted names and values
/// skipped: a struct field's name is followed by its type, a type by `,`,
/// `)`, `[`, `(` or the end (so a field called `hugeint` is not a type).
/// Each with its byte range in `t`.
fn type_words(t: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let next = b.get(j).copied();
            let typed = matches!(next, None | Some(b',' | b')' | b'[' | b'('))
                // The words of a multi-word type are followed by the next word.
                || matches!(&t[start..i].to_ascii_uppercase()[..], "TIME" | "TIMESTAMP" | "WITH" | "DOUBLE");
            if typed {
                out.push((t[start..i].to_ascii_uppercase(), start..i));
            }
            continue;
        }
        i += 1;
    }
    out
}

/// `t` with the type words of `words` replaced by `with`.
fn replace_types(t: &str, words: &[&str], with: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut at = 0;
    for (w, r) in type_words(t) {
        if words.contains(&w.as_str()) {
            out.push_str(&t[at..r.start]);
            out.push_str(with);
            at = r.end;
        }
    }
    out.push_str(&t[at..]);
    out
}

/// Why a DuckDB type (at any depth) cannot be stored, if it cannot.
fn unstorable(t: &str) -> Option<&'static str> {
    let words: Vec<String> = type_words(t).into_iter().map(|(w, _)| w).collect();
    let has = |w: &str| words.iter().any(|x| x == w);
    // TIME WITH TIME ZONE (not TIMESTAMP WITH TIME ZONE).
    let timetz = words.windows(4).any(|w| w[0] == "TIME" && w[1] == "WITH" && w[2] == "TIME" && w[3] == "ZONE");
    if has("TIMETZ") || timetz {
        Some("keeps its UTC offset, which the lake drops; send it as text or as a TIMESTAMPTZ")
    } else if has("TIME_NS") {
        Some("has nanoseconds, which the lake cannot store in a TIME; send microseconds")
    } else if has("BIT") || has("BITSTRING") {
        Some("is a bit string, which the lake cannot store; send it as text")
    } else if has("BIGNUM") || has("VARINT") {
        Some("is an integer of unbounded size, which the lake cannot store; send it as text")
    } else if has("UNION") {
        Some("is a union, which the lake cannot store; send each member as its own column")
    } else {
        None
    }
}

/// The select list of the copy into the staged file, for columns (name,
/// DuckDB type) as DuckDB read them; and the columns to leave out if they
/// hold no value.
pub fn select_list(columns: &[(String, String)]) -> Result<SelectList, Refused> {
    let mut items = Vec::with_capacity(columns.len());
    let mut untyped = Vec::new();
    for (name, t) in columns {
        let upper = t.trim().to_ascii_uppercase();
        let c = ident(name);
        if upper.starts_with("ENUM(") {
            items.push((name.clone(), format!("CAST({c} AS VARCHAR) AS {c}")));
            continue;
        }
        if let Some(why) = unstorable(t) {
            return Err(refused(name, t, why));
        }
        let words: Vec<String> = type_words(t).into_iter().map(|(w, _)| w).collect();
        let has = |w: &str| words.iter().any(|x| x == w);
        if upper == "JSON" {
            items.push((name.clone(), format!("CAST({c} AS VARCHAR) AS {c}")));
            untyped.push(name.clone());
        } else if upper == "NULL" || upper == "\"NULL\"" {
            items.push((name.clone(), c.clone()));
            untyped.push(name.clone());
        } else if ["HUGEINT", "UHUGEINT", "INT128", "UINT128", "JSON"].iter().any(|w| has(w)) {
            let target = replace_types(t, &["UHUGEINT", "HUGEINT", "UINT128", "INT128"], "DECIMAL(38,0)");
            let target = replace_types(&target, &["JSON"], "VARCHAR");
            items.push((name.clone(), format!("CAST({c} AS {target}) AS {c}")));
        } else {
            items.push((name.clone(), c));
        }
    }
    Ok(SelectList { items, untyped })
}

/// The copy's select list and what a second look may leave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectList {
    /// (column, select item); empty for `*`.
    items: Vec<(String, String)>,
    /// Columns that have no type of their own (JSON or NULL as read): left
    /// out when they hold no value.
    pub untyped: Vec<String>,
}

impl SelectList {
    /// The list as SQL.
    pub fn sql(&self) -> String {
        if self.items.is_empty() {
            return "*".into();
        }
        self.items.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// All columns as they are.
    pub fn all() -> Self {
        Self { items: Vec::new(), untyped: Vec::new() }
    }

    /// The list for a reading where `columns` arrive as text holding exact
    /// integers: those become DECIMAL(38,0).
    pub fn with_exact_integers(&self, columns: &[String]) -> String {
        let cast = |c: &str| format!("CAST({} AS DECIMAL(38,0)) AS {}", ident(c), ident(c));
        if self.items.is_empty() {
            return format!("* REPLACE ({})", columns.iter().map(|c| cast(c)).collect::<Vec<_>>().join(", "));
        }
        self.items
            .iter()
            .map(|(n, e)| if columns.contains(n) { cast(n) } else { e.clone() })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Refuses a Parquet upload whose values DuckDB's reader would change
/// (see the module's notes). Reads the footer, and for nanosecond columns
/// their values.
///
/// A file the Parquet reader here cannot read is passed on: DuckDB's
/// reading then says what is wrong with it.
pub fn check_parquet_input(path: &Path) -> Result<(), Refused> {
    let Ok(file) = File::open(path) else { return Ok(()) };
    let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(file) else { return Ok(()) };
    let schema = builder.schema().clone();
    let mut scan = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let t = f.data_type();
        if let Some(why) = inexact_in_duckdb(t) {
            return Err(refused(f.name(), t, why));
        }
        if matches!(t, DataType::Time64(TimeUnit::Nanosecond) | DataType::Timestamp(TimeUnit::Nanosecond, Some(_))) {
            scan.push(i);
        } else if has_nested_nanos(t) {
            return Err(refused(
                f.name(),
                t,
                "holds nanoseconds that DuckDB's reader cuts to microseconds; send microseconds",
            ));
        }
    }
    if scan.is_empty() {
        return Ok(());
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), scan.iter().copied());
    let Ok(reader) = builder.with_projection(mask).build() else { return Ok(()) };
    for batch in reader {
        let Ok(batch) = batch else { return Ok(()) };
        for (k, col) in batch.columns().iter().enumerate() {
            let values: Vec<Option<i64>> = match col.data_type() {
                DataType::Time64(TimeUnit::Nanosecond) => {
                    col.as_primitive::<arrow::datatypes::Time64NanosecondType>().iter().collect()
                }
                _ => col.as_primitive::<arrow::datatypes::TimestampNanosecondType>().iter().collect(),
            };
            if let Some(row) = values.iter().position(|v| v.is_some_and(|v| v % 1000 != 0)) {
                let f = batch.schema().field(k).clone();
                return Err(refused(
                    f.name(),
                    f.data_type(),
                    &format!("has a value finer than a microsecond (row {row} of a row group), which DuckDB's reader and the lake cut off; send microseconds"),
                ));
            }
        }
    }
    Ok(())
}

fn inexact_in_duckdb(t: &DataType) -> Option<&'static str> {
    use DataType::*;
    match t {
        Decimal256(p, _) if *p > 38 => Some("has more than 38 digits, which DuckDB reads as DOUBLE; send it as text"),
        Duration(_) => Some("is a duration, which DuckDB reads as a plain integer without its unit; send an interval or an integer named with its unit"),
        List(f) | LargeList(f) | FixedSizeList(f, _) | Map(f, _) => inexact_in_duckdb(f.data_type()),
        Struct(fs) => fs.iter().find_map(|f| inexact_in_duckdb(f.data_type())),
        _ => None,
    }
}

fn has_nested_nanos(t: &DataType) -> bool {
    use DataType::*;
    let nanos = |t: &DataType| {
        matches!(t, Time64(TimeUnit::Nanosecond) | Timestamp(TimeUnit::Nanosecond, Some(_))) || has_nested_nanos(t)
    };
    match t {
        List(f) | LargeList(f) | FixedSizeList(f, _) | Map(f, _) => nanos(f.data_type()),
        Struct(fs) => fs.iter().any(|f| nanos(f.data_type())),
        _ => false,
    }
}

/// What the staged file needs after a second look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redo {
    /// Leave these columns (untyped and without a value) out.
    Exclude(Vec<String>),
    /// These DOUBLE columns reach 2^53: if their text holds only integers,
    /// read them again exactly.
    Integers(Vec<String>),
}

impl Redo {
    /// The select list of a copy that leaves the columns out.
    pub fn exclude(cols: &[String]) -> String {
        format!("* EXCLUDE ({})", cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "))
    }
}

/// The query counting, per column of `columns` (read as text from
/// `reader`), the values that are not plain integers.
pub fn non_integer_counts_sql(reader: &str, columns: &[String]) -> String {
    let counts: Vec<String> = columns
        .iter()
        .map(|c| {
            let c = ident(c);
            format!("count(*) FILTER (WHERE {c} IS NOT NULL AND NOT regexp_full_match(trim({c}), '[+-]?[0-9]+'))")
        })
        .collect();
    format!("SELECT {} FROM {reader}", counts.join(", "))
}

/// 2^53: a DOUBLE holds every integer below it.
const EXACT_DOUBLE: f64 = 9_007_199_254_740_992.0;

/// Looks at the staged file's footer (statistics only): untyped columns
/// (`untyped`) that hold no value, and for CSV and JSON, DOUBLE columns
/// reaching 2^53, where integers may have been rounded.
pub fn second_look(staged: &Path, format: Format, untyped: &[String]) -> Option<Redo> {
    // An unreadable staged file is ours to report (reading its schema next
    // fails as an internal error), not the upload's.
    let Ok(file) = File::open(staged) else { return None };
    let Ok(reader) = parquet::file::reader::SerializedFileReader::new(file) else { return None };
    let meta = reader.metadata();
    let rows: i64 = meta.file_metadata().num_rows();
    let leaf = |name: &str| -> Option<usize> {
        let schema = meta.file_metadata().schema_descr();
        (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == [name.to_string()])
    };
    if !untyped.is_empty() && rows > 0 {
        let empty: Vec<String> = untyped
            .iter()
            .filter(|c| {
                leaf(c).is_some_and(|i| {
                    let nulls: i64 = meta
                        .row_groups()
                        .iter()
                        .map(|rg| {
                            rg.column(i).statistics().and_then(|s| s.null_count_opt()).map(|n| n as i64).unwrap_or(-1)
                        })
                        .sum();
                    nulls == rows
                })
            })
            .cloned()
            .collect();
        if !empty.is_empty() {
            return Some(Redo::Exclude(empty));
        }
    }
    if format != Format::Parquet {
        let schema = meta.file_metadata().schema_descr();
        let mut big = Vec::new();
        for i in 0..schema.num_columns() {
            let col = schema.column(i);
            if col.path().parts().len() != 1 || col.physical_type() != parquet::basic::Type::DOUBLE {
                continue;
            }
            let reaches = meta.row_groups().iter().any(|rg| match rg.column(i).statistics() {
                Some(Statistics::Double(s)) => {
                    s.min_opt().is_some_and(|v| v.abs() >= EXACT_DOUBLE)
                        || s.max_opt().is_some_and(|v| v.abs() >= EXACT_DOUBLE)
                }
                _ => false,
            });
            if reaches {
                big.push(col.name().to_string());
            }
        }
        if !big.is_empty() {
            return Some(Redo::Integers(big));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn duckdb_types_become_lake_types_or_are_refused() {
        let s = select_list(&cols(&[
            ("id", "BIGINT"),
            ("span", "HUGEINT"),
            ("nested", "STRUCT(a UHUGEINT, \"HUGEINT\" VARCHAR, hugeint INTEGER, j JSON)[]"),
            ("doc", "JSON"),
            ("e", "ENUM('BIT', 'x')"),
            ("m", "MAP(VARCHAR, HUGEINT)"),
        ]))
        .unwrap();
        assert_eq!(
            s.sql(),
            "\"id\", CAST(\"span\" AS DECIMAL(38,0)) AS \"span\", \
             CAST(\"nested\" AS STRUCT(a DECIMAL(38,0), \"HUGEINT\" VARCHAR, hugeint INTEGER, j VARCHAR)[]) AS \"nested\", \
             CAST(\"doc\" AS VARCHAR) AS \"doc\", CAST(\"e\" AS VARCHAR) AS \"e\", \
             CAST(\"m\" AS MAP(VARCHAR, DECIMAL(38,0))) AS \"m\""
        );
        assert_eq!(s.untyped, ["doc"]);
        assert_eq!(
            s.with_exact_integers(&["id".to_string()]).split(", ").next(),
            Some("CAST(\"id\" AS DECIMAL(38,0)) AS \"id\"")
        );
        for (t, col) in [
            ("TIME WITH TIME ZONE", "t"),
            ("TIMETZ", "t"),
            ("BIT", "b"),
            ("BIGNUM", "v"),
            ("UNION(a INTEGER, b VARCHAR)", "u"),
            ("STRUCT(x TIME_NS)", "n"),
            ("STRUCT(t TIME WITH TIME ZONE, u TIMESTAMP WITH TIME ZONE)", "s"),
        ] {
            let e = select_list(&cols(&[("ok", "INTEGER"), (col, t)])).unwrap_err();
            assert_eq!(e.column, col, "{t}");
        }
        // Timestamps with zones are fine, and so are fields named like types.
        assert!(select_list(&cols(&[("ts", "TIMESTAMP WITH TIME ZONE")])).is_ok());
        assert!(select_list(&cols(&[("s", "STRUCT(bit INTEGER, \"union\" VARCHAR, timetz DATE)")])).is_ok());
    }
}

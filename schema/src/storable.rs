//! What the lake keeps exactly: every write's columns are checked (and
//! where a documented rule allows, converted) before the write is logged,
//! so a 2xx always means the values come back as sent and no record can
//! reach the log that the flush would have to refuse.
//!
//! The rules follow what DuckDB 1.5.5 and DuckLake 1.5.5 really store
//! (checked by hand and by the conformance tests, `tests/conformance.rs`),
//! not what their type names promise:
//!
//! | Arrow input | stored as | rule |
//! |---|---|---|
//! | null type | (nothing) | a column with no type and no value is left out; a later write gives it its type |
//! | float16 | float32 | every half float is a float |
//! | decimal32/64/256 with precision <= 38 | decimal128 | same digits |
//! | decimal256 with precision > 38 | refused | DuckDB's DECIMAL stops at 38 digits |
//! | date64 | date32 | refused when a value has a time of day |
//! | time64[ns] | time64[us] | refused when a value has nanoseconds (DuckDB reads Parquet TIME(NANOS) as microseconds) |
//! | timestamp[s/ms] | as sent | refused outside DuckDB's microsecond range |
//! | timestamp[ns, tz] | timestamp[us, tz] | refused when a value has nanoseconds (TIMESTAMPTZ is microseconds) |
//! | interval (any unit), duration | interval | refused when negative, finer than a millisecond or with a time part of 2^32 ms or more: DuckLake keeps intervals as Parquet INTERVAL (unsigned months, days, milliseconds); a duration's whole days become days |
//! | dictionary | its values | |
//! | union, run-end encoded, empty struct | refused | DuckLake has no such type |
//! | list, large list, list view, fixed-size list, struct, map | as sent | children by the same rules (an interval inside one is refused) |
//!
//! Everything else (booleans, integers of every width and sign, floats,
//! decimal128, strings and binaries of every layout, date32, time32,
//! time64[us], timestamps without zone, timestamps with zone up to
//! microseconds) is stored as sent. A zoned timestamp is an instant: it
//! comes back in UTC.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::kernels::cast::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, IntervalUnit, Schema, SchemaRef, TimeUnit};

/// A column the lake cannot store exactly, or a value of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column:?} ({data_type}): {reason}")]
pub struct Unstorable {
    /// The column (a path for nested fields: `a.b`).
    pub column: String,
    /// Its type as sent.
    pub data_type: String,
    /// Why, and what to send instead.
    pub reason: String,
}

/// How each column of a schema is stored.
#[derive(Debug, Clone)]
pub struct StoragePlan {
    source: SchemaRef,
    target: SchemaRef,
    /// Per source column: its index in the target, or None (left out).
    columns: Vec<Option<usize>>,
    /// Whether the target types are the source's.
    same_types: bool,
    /// Whether some column's values must be checked even so.
    checks_values: bool,
}

impl StoragePlan {
    /// The plan for `schema`, or the first column that cannot be stored.
    /// All-null columns of the null type are left out; if nothing is left
    /// the write is refused.
    pub fn new(schema: &SchemaRef) -> Result<Self, Unstorable> {
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for f in schema.fields() {
            if f.data_type() == &DataType::Null {
                columns.push(None);
                continue;
            }
            let t = target_type(f.name(), f.data_type(), true)?;
            columns.push(Some(fields.len()));
            fields.push(Field::new(f.name(), t, true).with_metadata(f.metadata().clone()));
        }
        if fields.is_empty() && !schema.fields().is_empty() {
            return Err(Unstorable {
                column: schema.field(0).name().clone(),
                data_type: "null".into(),
                reason: "no column of the write has a type (every column is of Arrow's null type)".into(),
            });
        }
        let target = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let same_types = columns.iter().enumerate().all(|(i, c)| *c == Some(i))
            && target.fields().iter().zip(schema.fields()).all(|(t, s)| t.data_type() == s.data_type());
        let checks_values = schema.fields().iter().any(|f| value_checked(f.data_type()));
        Ok(Self { source: schema.clone(), target, columns, same_types, checks_values })
    }

    /// The schema the lake gets.
    pub fn target(&self) -> &SchemaRef {
        &self.target
    }

    /// Whether the schema is already in the lake's types (its values may
    /// still need checking: see [`StoragePlan::apply`]).
    pub fn keeps_types(&self) -> bool {
        self.same_types
    }

    /// Converts one batch, checking every value the conversion could
    /// change: a value the lake would not give back is refused, naming the
    /// column and the row.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, Unstorable> {
        if self.same_types && !self.checks_values {
            return Ok(batch.clone());
        }
        let mut out: Vec<ArrayRef> = Vec::with_capacity(self.target.fields().len());
        for (i, c) in self.columns.iter().enumerate() {
            let Some(t) = c else { continue };
            let field = self.source.field(i);
            let to = self.target.field(*t).data_type();
            out.push(convert(field.name(), batch.column(i), to)?);
        }
        RecordBatch::try_new(self.target.clone(), out).map_err(|e| Unstorable {
            column: String::new(),
            data_type: String::new(),
            reason: format!("the converted batch is inconsistent: {e}"),
        })
    }
}

/// Types whose values are checked even when the type is kept (at any
/// depth).
fn value_checked(t: &DataType) -> bool {
    use DataType::*;
    match t {
        Interval(_) | Duration(_) | Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => true,
        List(f) | ListView(f) | LargeList(f) | LargeListView(f) | FixedSizeList(f, _) | Map(f, _) => {
            value_checked(f.data_type())
        }
        Struct(fs) => fs.iter().any(|f| value_checked(f.data_type())),
        Dictionary(_, v) => value_checked(v),
        _ => false,
    }
}

fn refuse(column: &str, t: &DataType, reason: impl Into<String>) -> Unstorable {
    Unstorable { column: column.to_string(), data_type: t.to_string(), reason: reason.into() }
}

/// The type `t` is stored as (see the module's table). `top`: intervals are
/// stored only as top-level columns.
pub fn target_type(column: &str, t: &DataType, top: bool) -> Result<DataType, Unstorable> {
    use DataType::*;
    // A child keeps its name, nullability and metadata (a map's keys are
    // never null); only its type may change.
    let child = |f: &FieldRef, name: &str| -> Result<FieldRef, Unstorable> {
        let path = format!("{column}.{name}");
        Ok(Arc::new(f.as_ref().clone().with_data_type(target_type(&path, f.data_type(), false)?)))
    };
    Ok(match t {
        Null => Null,
        Float16 => Float32,
        Decimal32(p, s) | Decimal64(p, s) => Decimal128(*p, *s),
        Decimal256(p, s) if *p <= 38 => Decimal128(*p, *s),
        Decimal256(p, _) => {
            return Err(refuse(column, t, format!("{p} digits: the lake's DECIMAL holds at most 38; send it as text")))
        }
        Date64 => Date32,
        Time64(TimeUnit::Nanosecond) => Time64(TimeUnit::Microsecond),
        Timestamp(TimeUnit::Nanosecond, Some(tz)) => Timestamp(TimeUnit::Microsecond, Some(tz.clone())),
        Interval(_) | Duration(_) if top => Interval(IntervalUnit::MonthDayNano),
        Interval(_) | Duration(_) => {
            return Err(refuse(
                column,
                t,
                "an interval inside a list, struct or map cannot be stored; send it as a top-level column",
            ))
        }
        Dictionary(_, v) => target_type(column, v, top)?,
        Union(..) => return Err(refuse(column, t, "the lake has no union type; send each member as its own column")),
        RunEndEncoded(..) => return Err(refuse(column, t, "send run-end encoded columns decoded")),
        Struct(fs) if fs.is_empty() => return Err(refuse(column, t, "a struct without fields cannot be stored")),
        Struct(fs) => Struct(fs.iter().map(|f| child(f, f.name())).collect::<Result<Fields, _>>()?),
        List(f) | ListView(f) => List(child(f, "[]")?),
        LargeList(f) | LargeListView(f) => LargeList(child(f, "[]")?),
        FixedSizeList(f, n) => FixedSizeList(child(f, "[]")?, *n),
        Map(f, sorted) => {
            let DataType::Struct(kv) = f.data_type() else { return Err(refuse(column, t, "malformed map")) };
            let kv = kv.iter().map(|c| child(c, c.name())).collect::<Result<Fields, _>>()?;
            Map(Arc::new(f.as_ref().clone().with_data_type(Struct(kv))), *sorted)
        }
        other => other.clone(),
    })
}

/// Converts `a` to `to`, refusing any value that would not come back.
fn convert(column: &str, a: &ArrayRef, to: &DataType) -> Result<ArrayRef, Unstorable> {
    use DataType::*;
    // A dictionary is its values: decoded first, then judged like them.
    if let Dictionary(_, values) = a.data_type() {
        let safe = CastOptions { safe: false, ..Default::default() };
        let decoded = cast_with_options(a, values, &safe).map_err(|e| refuse(column, a.data_type(), e.to_string()))?;
        return convert(column, &decoded, to);
    }
    if let (Interval(_) | Duration(_), Interval(IntervalUnit::MonthDayNano)) = (a.data_type(), to) {
        return interval(column, a);
    }
    if a.data_type() == to {
        check_values(column, a)?;
        return Ok(a.clone());
    }
    let safe = CastOptions { safe: false, ..Default::default() };
    let out = cast_with_options(a, to, &safe).map_err(|e| refuse(column, a.data_type(), e.to_string()))?;
    // Lossy-in-principle conversions are proven by the way back.
    if needs_round_trip(a.data_type()) {
        let back =
            cast_with_options(&out, a.data_type(), &safe).map_err(|e| refuse(column, a.data_type(), e.to_string()))?;
        if let Some(row) = first_difference(a.as_ref(), back.as_ref()) {
            let what = match a.data_type() {
                Date64 => "has a time of day (a date64 must be whole days)",
                _ => "is finer than a microsecond, which the lake does not keep",
            };
            return Err(refuse(column, a.data_type(), format!("the value in row {row} {what}")));
        }
    }
    check_values(column, &out)?;
    Ok(out)
}

fn needs_round_trip(t: &DataType) -> bool {
    use DataType::*;
    match t {
        Date64 | Time64(TimeUnit::Nanosecond) | Timestamp(TimeUnit::Nanosecond, Some(_)) => true,
        List(f) | ListView(f) | LargeList(f) | LargeListView(f) | FixedSizeList(f, _) | Map(f, _) => {
            needs_round_trip(f.data_type())
        }
        Struct(fs) => fs.iter().any(|f| needs_round_trip(f.data_type())),
        Dictionary(_, v) => needs_round_trip(v),
        _ => false,
    }
}

fn first_difference(a: &dyn Array, b: &dyn Array) -> Option<usize> {
    (0..a.len()).find(|&i| a.slice(i, 1).to_data() != b.slice(i, 1).to_data())
}

/// Values a stored type holds in Arrow but not in DuckDB: second and
/// millisecond timestamps beyond the microsecond range DuckDB converts
/// them to, at any depth.
fn check_values(column: &str, a: &ArrayRef) -> Result<(), Unstorable> {
    use arrow::datatypes as dt;
    let limit = |per_us: i64| (i64::MAX / per_us) as u64;
    let bad = match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            let l = limit(1_000_000);
            a.as_primitive::<dt::TimestampSecondType>().iter().position(|v| v.is_some_and(|v| v.unsigned_abs() > l))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            let l = limit(1_000);
            a.as_primitive::<dt::TimestampMillisecondType>()
                .iter()
                .position(|v| v.is_some_and(|v| v.unsigned_abs() > l))
        }
        DataType::List(_) => return check_values(&format!("{column}.[]"), a.as_list::<i32>().values()),
        DataType::LargeList(_) => return check_values(&format!("{column}.[]"), a.as_list::<i64>().values()),
        DataType::FixedSizeList(..) => return check_values(&format!("{column}.[]"), a.as_fixed_size_list().values()),
        DataType::Map(..) => {
            let m = a.as_map();
            let entries: ArrayRef = Arc::new(m.entries().clone());
            return check_values(column, &entries);
        }
        DataType::Struct(fields) => {
            for (f, c) in fields.iter().zip(a.as_struct().columns()) {
                check_values(&format!("{column}.{}", f.name()), c)?;
            }
            return Ok(());
        }
        _ => None,
    };
    match bad {
        Some(row) => Err(refuse(
            column,
            a.data_type(),
            format!("the value in row {row} is outside the range of the lake's timestamps (microseconds in 64 bits)"),
        )),
        None => Ok(()),
    }
}

/// Nanoseconds in a DuckLake interval's time part at most (Parquet
/// INTERVAL keeps unsigned 32-bit milliseconds).
const INTERVAL_MAX_NANOS: i64 = (u32::MAX as i64) * 1_000_000;

/// Any interval or duration as month-day-nano, checked against what the
/// lake keeps: no negative part, whole milliseconds, a time part below
/// 2^32 ms.
fn interval(column: &str, a: &ArrayRef) -> Result<ArrayRef, Unstorable> {
    use arrow::array::IntervalMonthDayNanoArray;
    use arrow::datatypes as dt;
    let t = a.data_type();
    let err = |row: usize, why: &str| refuse(column, t, format!("the value in row {row} {why}"));
    let n = a.len();
    let mut out: Vec<Option<dt::IntervalMonthDayNano>> = Vec::with_capacity(n);
    for row in 0..n {
        if a.is_null(row) {
            out.push(None);
            continue;
        }
        let v = match t {
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                a.as_primitive::<dt::IntervalMonthDayNanoType>().value(row)
            }
            DataType::Interval(IntervalUnit::DayTime) => {
                let v = a.as_primitive::<dt::IntervalDayTimeType>().value(row);
                dt::IntervalMonthDayNano::new(0, v.days, i64::from(v.milliseconds) * 1_000_000)
            }
            DataType::Interval(IntervalUnit::YearMonth) => {
                dt::IntervalMonthDayNano::new(a.as_primitive::<dt::IntervalYearMonthType>().value(row), 0, 0)
            }
            DataType::Duration(unit) => {
                let (raw, per) = match unit {
                    TimeUnit::Second => (a.as_primitive::<dt::DurationSecondType>().value(row), 1_000_000_000),
                    TimeUnit::Millisecond => (a.as_primitive::<dt::DurationMillisecondType>().value(row), 1_000_000),
                    TimeUnit::Microsecond => (a.as_primitive::<dt::DurationMicrosecondType>().value(row), 1_000),
                    TimeUnit::Nanosecond => (a.as_primitive::<dt::DurationNanosecondType>().value(row), 1),
                };
                let nanos = raw.checked_mul(per).ok_or_else(|| err(row, "is too long for the lake's intervals"))?;
                // Whole days as days (a day = 86,400 s), so any duration
                // fits the lake's unsigned 32-bit milliseconds of time.
                const DAY: i64 = 86_400_000_000_000;
                let days = i32::try_from(nanos.div_euclid(DAY)).map_err(|_| err(row, "is too long"))?;
                dt::IntervalMonthDayNano::new(0, days, nanos.rem_euclid(DAY))
            }
            _ => unreachable!("only intervals and durations come here"),
        };
        if v.months < 0 || v.days < 0 || v.nanoseconds < 0 {
            return Err(err(row, "is negative; the lake keeps intervals as Parquet INTERVAL, which has no sign"));
        }
        if v.nanoseconds % 1_000_000 != 0 {
            return Err(err(row, "is finer than a millisecond, which the lake's intervals do not keep"));
        }
        if v.nanoseconds > INTERVAL_MAX_NANOS {
            return Err(err(
                row,
                "has a time part of 2^32 milliseconds (about 1193 hours) or more; express it in days",
            ));
        }
        out.push(Some(v));
    }
    Ok(Arc::new(IntervalMonthDayNanoArray::from(out)))
}

/// The Parquet encoding of a month-day-nano interval column inside a
/// flush's scratch file (the Parquet writer has none): a struct of months,
/// days and milliseconds, which the insert turns back into an INTERVAL.
pub fn interval_as_parts(a: &ArrayRef) -> ArrayRef {
    use arrow::array::{Int32Array, Int64Array, StructArray};
    use arrow::datatypes as dt;
    let v = a.as_primitive::<dt::IntervalMonthDayNanoType>();
    let months: Int32Array = v.iter().map(|x| x.map(|x| x.months)).collect();
    let days: Int32Array = v.iter().map(|x| x.map(|x| x.days)).collect();
    let millis: Int64Array = v.iter().map(|x| x.map(|x| x.nanoseconds / 1_000_000)).collect();
    Arc::new(StructArray::new(
        interval_parts_fields(),
        vec![Arc::new(months), Arc::new(days), Arc::new(millis)],
        v.nulls().cloned(),
    ))
}

/// The fields of [`interval_as_parts`].
pub fn interval_parts_fields() -> Fields {
    Fields::from(vec![
        Field::new("months", DataType::Int32, true),
        Field::new("days", DataType::Int32, true),
        Field::new("millis", DataType::Int64, true),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::*;
    use arrow::datatypes::IntervalMonthDayNano;

    fn plan(fields: Vec<Field>) -> Result<StoragePlan, Unstorable> {
        StoragePlan::new(&Arc::new(Schema::new(fields)))
    }

    fn one(name: &str, a: ArrayRef) -> Result<RecordBatch, Unstorable> {
        let schema = Arc::new(Schema::new(vec![Field::new(name, a.data_type().clone(), true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![a]).unwrap();
        StoragePlan::new(&schema)?.apply(&batch)
    }

    #[test]
    fn exact_types_pass_unchanged() {
        let map = DataType::Map(
            Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("keys", DataType::Utf8, false),
                    Field::new("values", DataType::Utf8, true),
                ])),
                false,
            )),
            false,
        );
        let p = plan(vec![
            Field::new("m", map, true),
            Field::new("i", DataType::Int64, true),
            Field::new("u", DataType::UInt64, true),
            Field::new("s", DataType::Utf8View, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("l", DataType::List(Arc::new(Field::new("x", DataType::Int8, true))), true),
        ])
        .unwrap();
        assert!(p.keeps_types());
    }

    #[test]
    fn conversions_keep_values_or_refuse() {
        // 90 minutes, as DuckDB exports INTERVAL.
        let iv = one(
            "d",
            Arc::new(IntervalMonthDayNanoArray::from(vec![
                Some(IntervalMonthDayNano::new(1, 2, 5_400_000_000_000)),
                None,
            ])),
        )
        .unwrap();
        assert_eq!(iv.column(0).data_type(), &DataType::Interval(IntervalUnit::MonthDayNano));
        for bad in [IntervalMonthDayNano::new(0, 0, 1), IntervalMonthDayNano::new(-1, 0, 0)] {
            let e = one("d", Arc::new(IntervalMonthDayNanoArray::from(vec![bad]))).unwrap_err();
            assert_eq!(e.column, "d", "{e}");
        }
        let dur = one("d", Arc::new(DurationSecondArray::from(vec![3600]))).unwrap();
        assert_eq!(
            dur.column(0).as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>().value(0),
            IntervalMonthDayNano::new(0, 0, 3_600_000_000_000)
        );
        // Nanoseconds survive only when there are none.
        let ok = one("t", Arc::new(Time64NanosecondArray::from(vec![1_000_000_000]))).unwrap();
        assert_eq!(ok.column(0).as_primitive::<arrow::datatypes::Time64MicrosecondType>().value(0), 1_000_000);
        assert!(one("t", Arc::new(Time64NanosecondArray::from(vec![1_000_000_001]))).is_err());
        let tz = TimestampNanosecondArray::from(vec![5]).with_timezone("UTC");
        let e = one("ts", Arc::new(tz)).unwrap_err();
        assert!(e.reason.contains("row 0"), "{e}");
        assert!(one("d", Arc::new(Date64Array::from(vec![86_400_000 + 1]))).is_err());
        assert!(one("d", Arc::new(Date64Array::from(vec![86_400_000]))).is_ok());
        assert!(one("ts", Arc::new(TimestampSecondArray::from(vec![i64::MAX / 10]))).is_err());
        let half =
            arrow::compute::cast(&(Arc::new(Float32Array::from(vec![0.5])) as ArrayRef), &DataType::Float16).unwrap();
        let f16 = one("h", half).unwrap();
        assert_eq!(f16.column(0).as_primitive::<arrow::datatypes::Float32Type>().value(0), 0.5);
    }

    #[test]
    fn types_without_a_lake_form_are_refused_by_name() {
        let big = plan(vec![Field::new("amount", DataType::Decimal256(40, 2), true)]).unwrap_err();
        assert_eq!(big.column, "amount");
        let u = DataType::Union(
            arrow::datatypes::UnionFields::try_new(vec![0], vec![Field::new("a", DataType::Int32, true)]).unwrap(),
            arrow::datatypes::UnionMode::Sparse,
        );
        assert!(plan(vec![Field::new("u", u, true)]).is_err());
        let nested = DataType::List(Arc::new(Field::new("x", DataType::Duration(TimeUnit::Second), true)));
        assert_eq!(plan(vec![Field::new("l", nested, true)]).unwrap_err().column, "l.[]");
        assert!(plan(vec![Field::new("n", DataType::Null, true)]).is_err());
        // A null-typed column next to a typed one is left out.
        let p = plan(vec![Field::new("id", DataType::Int64, true), Field::new("c", DataType::Null, true)]).unwrap();
        assert_eq!(p.target().fields().len(), 1);
    }
}

#[cfg(test)]
mod properties {
    //! Random values of the converted types: every conversion either gives
    //! back exactly the values sent (cast back) or refuses, and refuses only
    //! when some value could not be kept.
    use super::*;
    use arrow::array::*;
    use arrow::datatypes::{IntervalMonthDayNano, IntervalMonthDayNanoType};
    use proptest::prelude::*;

    fn through(a: ArrayRef) -> Result<ArrayRef, Unstorable> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", a.data_type().clone(), true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![a]).unwrap();
        Ok(StoragePlan::new(&schema)?.apply(&batch)?.column(0).clone())
    }

    fn edge_i64() -> impl Strategy<Value = Option<i64>> {
        prop_oneof![
            Just(None),
            Just(Some(0)),
            Just(Some(i64::MAX)),
            Just(Some(i64::MIN)),
            Just(Some(-1)),
            any::<i64>().prop_map(Some),
            (-1_000_000_000i64..1_000_000_000).prop_map(|v| Some(v * 1000)),
        ]
    }

    proptest! {
        #[test]
        fn nanosecond_timestamps_with_a_zone(v in proptest::collection::vec(edge_i64(), 0..40)) {
            let a: ArrayRef = Arc::new(TimestampNanosecondArray::from(v.clone()).with_timezone("UTC"));
            let keepable = v.iter().all(|x| x.is_none_or(|x| x % 1000 == 0));
            match through(a.clone()) {
                Ok(out) => {
                    prop_assert!(keepable);
                    let back = arrow::compute::cast(&out, a.data_type()).unwrap();
                    prop_assert_eq!(back.to_data(), a.to_data());
                }
                Err(e) => prop_assert!(!keepable, "refused keepable values: {}", e),
            }
        }

        #[test]
        fn nanosecond_times(v in proptest::collection::vec(prop_oneof![Just(None), (0i64..86_400_000_000_000).prop_map(Some)], 0..40)) {
            let a: ArrayRef = Arc::new(Time64NanosecondArray::from(v.clone()));
            let keepable = v.iter().all(|x| x.is_none_or(|x| x % 1000 == 0));
            match through(a.clone()) {
                Ok(out) => {
                    prop_assert!(keepable);
                    prop_assert_eq!(arrow::compute::cast(&out, a.data_type()).unwrap().to_data(), a.to_data());
                }
                Err(_) => prop_assert!(!keepable),
            }
        }

        #[test]
        fn intervals(v in proptest::collection::vec(prop_oneof![
            Just(None),
            (any::<i32>(), any::<i32>(), any::<i64>()).prop_map(|(m, d, n)| Some(IntervalMonthDayNano::new(m, d, n))),
            (0..1200i32, 0..10_000i32, 0..4_000_000i64).prop_map(|(m, d, ms)| Some(IntervalMonthDayNano::new(m, d, ms * 1_000_000))),
        ], 0..30)) {
            let a: ArrayRef = Arc::new(IntervalMonthDayNanoArray::from(v.clone()));
            let keepable = v.iter().all(|x| x.is_none_or(|x| {
                x.months >= 0 && x.days >= 0 && x.nanoseconds >= 0 && x.nanoseconds % 1_000_000 == 0
                    && x.nanoseconds <= INTERVAL_MAX_NANOS
            }));
            match through(a.clone()) {
                Ok(out) => {
                    prop_assert!(keepable);
                    let got: Vec<_> = out.as_primitive::<IntervalMonthDayNanoType>().iter().collect();
                    prop_assert_eq!(got, v);
                }
                Err(_) => prop_assert!(!keepable),
            }
        }

        #[test]
        fn second_timestamps_stay_in_range(v in proptest::collection::vec(edge_i64(), 0..40)) {
            let a: ArrayRef = Arc::new(TimestampSecondArray::from(v.clone()));
            let keepable = v.iter().all(|x| x.is_none_or(|x| x.checked_mul(1_000_000).is_some()));
            match through(a.clone()) {
                Ok(out) => {
                    prop_assert!(keepable);
                    prop_assert_eq!(out.to_data(), a.to_data());
                }
                Err(_) => prop_assert!(!keepable),
            }
        }

        #[test]
        fn floats_pass_bit_for_bit(v in proptest::collection::vec(prop_oneof![
            Just(None), Just(Some(f64::NAN)), Just(Some(-0.0)), Just(Some(f64::INFINITY)), Just(Some(f64::NEG_INFINITY)),
            any::<u64>().prop_map(|b| Some(f64::from_bits(b))),
        ], 0..40)) {
            let a: ArrayRef = Arc::new(Float64Array::from(v.clone()));
            let out = through(a.clone()).unwrap();
            let bits = |x: &ArrayRef| x.as_primitive::<arrow::datatypes::Float64Type>().iter().map(|v| v.map(f64::to_bits)).collect::<Vec<_>>();
            prop_assert_eq!(bits(&out), bits(&a));
        }
    }
}

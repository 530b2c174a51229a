//! [`TableSchemas`]: the schema each table will have once the log is
//! applied, so a write that cannot apply is refused *before* it reaches the
//! log (409 naming the column) instead of being quarantined by the flush.
//!
//! It starts from the lake's tables at open, replays the records still in
//! the log, and then follows every append. A write is checked and its
//! effect recorded under one short lock, before its WAL append: two
//! concurrent writers with conflicting types cannot both pass. If that
//! append then fails, the recorded effect stays (a table or column may be
//! known here before it exists in the lake); that can only make a later
//! conflicting write fail early, never let a bad one through, and a restart
//! rebuilds the registry from the lake and the log.
//!
//! A write fits a table when every value comes back exactly through the
//! compactor's `INSERT ... BY NAME`: the same type; a narrower type the
//! column holds exactly ([`widens`]: int32 into int64, int32 into double,
//! float into double, date into timestamp, a decimal into one with as many
//! integer and fraction digits); or any type into a string column (stored as
//! its text). Where the column is the narrower one and DuckLake can promote
//! it exactly (its `ALTER COLUMN ... SET DATA TYPE` allows only widening,
//! and old rows are converted as they are read), the column is widened to
//! the write's type. Anything else is a 409 naming the column. Lossy
//! promotions DuckLake would allow (bigint to double, integer to float) are
//! never made. New columns are added; missing columns are filled with NULL.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use duckpond_schema::{DatasetCommand, TableName};

/// A write that does not fit the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaConflict {
    /// A column's type cannot be converted to the table's.
    #[error("column {column:?} of table {table} is {existing}; the write has {incoming}, which cannot be converted")]
    ColumnType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The table's type.
        existing: String,
        /// The write's type.
        incoming: String,
    },
    /// `mode=create` on a table that exists.
    #[error("table {table} already exists")]
    TableExists {
        /// The table.
        table: String,
    },
    /// Integers into a floating-point column: a value of the write is too
    /// large for the column to hold exactly.
    #[error(
        "column {column:?} of table {table} is {existing}; the write has {incoming} values beyond ±{limit}, \
         which {existing} would round"
    )]
    Rounded {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The table's type.
        existing: String,
        /// The write's type.
        incoming: String,
        /// The largest magnitude the column holds exactly (2^53, 2^24).
        limit: u64,
    },
    /// A column name appears twice (case-insensitively, as DuckDB compares).
    #[error("column {column:?} appears more than once")]
    DuplicateColumn {
        /// The column.
        column: String,
    },
}

/// What a record does to the table schemas.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaEffect {
    /// Rows with this schema (creates the table or adds columns).
    Rows(TableName, SchemaRef),
    /// `mode=create`: the table must not exist yet.
    Create(TableName, SchemaRef),
    /// The table is dropped (a later write re-creates it with its schema).
    Drop(TableName),
    /// Nothing changes.
    None,
}

impl SchemaEffect {
    /// The effect of a dataset command.
    pub fn of_command(c: &DatasetCommand, create_schema: Option<SchemaRef>) -> Self {
        match (c, create_schema) {
            (DatasetCommand::Create { table, .. }, Some(s)) => SchemaEffect::Create(table.clone(), s),
            (DatasetCommand::Drop { table }, _) => SchemaEffect::Drop(table.clone()),
            _ => SchemaEffect::None,
        }
    }
}

/// Table name -> schema after the whole log is applied.
#[derive(Debug, Default, Clone)]
pub struct TableSchemas {
    /// Keyed by the lower-cased name: DuckDB's identifiers are
    /// case-insensitive, so `Events` and `events` are one table.
    tables: HashMap<String, SchemaRef>,
}

fn key(t: &TableName) -> String {
    t.as_str().to_ascii_lowercase()
}

impl TableSchemas {
    /// From the lake's tables.
    pub fn new(tables: impl IntoIterator<Item = (TableName, SchemaRef)>) -> Self {
        Self { tables: tables.into_iter().map(|(t, s)| (key(&t), s)).collect() }
    }

    /// The schema a table will have, if it exists.
    pub fn get(&self, table: &TableName) -> Option<SchemaRef> {
        self.tables.get(&key(table)).cloned()
    }

    /// Checks `effects` in order and, only if all fit, records them. The
    /// fits that depend on the values ([`RangeCheck`]: integers into a
    /// floating-point column) are handed to `verify`, which looks at the
    /// write's values; a refusal there records nothing.
    pub fn apply_all(
        &mut self,
        effects: &[SchemaEffect],
        mut verify: impl FnMut(&RangeCheck) -> Result<(), SchemaConflict>,
    ) -> Result<(), SchemaConflict> {
        let mut next = self.tables.clone();
        let mut checks = Vec::new();
        for e in effects {
            apply(&mut next, e, &mut checks)?;
        }
        for c in &checks {
            verify(c)?;
        }
        self.tables = next;
        Ok(())
    }

    /// Checks `effects` by their types alone, without recording them (to
    /// refuse a stream as soon as its schema is known; its values are
    /// checked when each record is appended).
    pub fn check(&self, effects: &[SchemaEffect]) -> Result<(), SchemaConflict> {
        self.clone().apply_all(effects, |_| Ok(()))
    }

    /// Records an effect already in the log (replay at open). Conflicts are
    /// ignored here: the flush quarantines such a record, and the table
    /// keeps its schema.
    pub fn replay(&mut self, effect: &SchemaEffect) {
        let _ = apply(&mut self.tables, effect, &mut Vec::new());
    }
}

/// A fit that depends on the values: integers of `column` (of a write into
/// `table`) go into a floating-point column, which holds them exactly only
/// up to ±`limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeCheck {
    /// The table.
    pub table: TableName,
    /// The write's column (its own spelling).
    pub column: String,
    /// The table's type.
    pub existing: DataType,
    /// The write's type.
    pub incoming: DataType,
    /// 2^53 for DOUBLE, 2^24 for FLOAT.
    pub limit: u64,
}

impl RangeCheck {
    /// The refusal when a value is beyond the limit.
    pub fn refused(&self) -> SchemaConflict {
        SchemaConflict::Rounded {
            table: self.table.to_string(),
            column: self.column.clone(),
            existing: self.existing.to_string(),
            incoming: self.incoming.to_string(),
            limit: self.limit,
        }
    }
}

/// Integers a floating-point column holds exactly only up to a magnitude:
/// that magnitude.
fn exact_up_to(from: &DataType, to: &DataType) -> Option<u64> {
    let (from, to) = (normalize(from), normalize(to));
    let (_, bits) = int_rank(&from)?;
    match to {
        DataType::Float64 if bits > 32 => Some(1 << 53),
        DataType::Float32 if bits > 16 => Some(1 << 24),
        _ => None,
    }
}

fn apply(
    tables: &mut HashMap<String, SchemaRef>,
    effect: &SchemaEffect,
    checks: &mut Vec<RangeCheck>,
) -> Result<(), SchemaConflict> {
    match effect {
        SchemaEffect::None => Ok(()),
        SchemaEffect::Drop(t) => {
            tables.remove(&key(t));
            Ok(())
        }
        SchemaEffect::Create(t, schema) => {
            if tables.contains_key(&key(t)) {
                return Err(SchemaConflict::TableExists { table: t.to_string() });
            }
            check_unique(schema)?;
            tables.insert(key(t), schema.clone());
            Ok(())
        }
        SchemaEffect::Rows(t, incoming) => {
            check_unique(incoming)?;
            let Some(existing) = tables.get(&key(t)) else {
                tables.insert(key(t), incoming.clone());
                return Ok(());
            };
            let mut added: Vec<Field> = Vec::new();
            let mut widened: Vec<(String, DataType)> = Vec::new();
            for f in incoming.fields() {
                match existing.fields().iter().find(|e| e.name().eq_ignore_ascii_case(f.name())) {
                    Some(e) if !same_extension(f, e) => {
                        return Err(SchemaConflict::ColumnType {
                            table: t.to_string(),
                            column: e.name().clone(),
                            existing: described(e),
                            incoming: described(f),
                        })
                    }
                    Some(e) if fits(f.data_type(), e.data_type()) => {}
                    Some(e) if exact_up_to(f.data_type(), e.data_type()).is_some() => checks.push(RangeCheck {
                        table: t.clone(),
                        column: f.name().clone(),
                        existing: e.data_type().clone(),
                        incoming: f.data_type().clone(),
                        limit: exact_up_to(f.data_type(), e.data_type()).expect("checked"),
                    }),
                    Some(e) if promotable(e.data_type(), f.data_type()) => {
                        widened.push((e.name().clone(), f.data_type().clone()));
                    }
                    Some(e) => {
                        return Err(SchemaConflict::ColumnType {
                            table: t.to_string(),
                            column: e.name().clone(),
                            existing: e.data_type().to_string(),
                            incoming: f.data_type().to_string(),
                        })
                    }
                    None => added.push(f.as_ref().clone().with_nullable(true)),
                }
            }
            if !added.is_empty() || !widened.is_empty() {
                let fields: Vec<Field> = existing
                    .fields()
                    .iter()
                    .map(|f| match widened.iter().find(|(n, _)| n == f.name()) {
                        Some((_, t)) => f.as_ref().clone().with_data_type(t.clone()),
                        None => f.as_ref().clone(),
                    })
                    .chain(added)
                    .collect();
                tables.insert(key(t), Arc::new(Schema::new(fields)));
            }
            Ok(())
        }
    }
}

/// The canonical extension (UUID, JSON) of a field, if any: it is part of
/// the column's type in the lake.
fn extension(f: &Field) -> Option<&str> {
    f.metadata().get("ARROW:extension:name").map(String::as_str).filter(|n| matches!(*n, "arrow.uuid" | "arrow.json"))
}

/// A UUID or JSON column takes only its own kind (a string into a UUID
/// column could fail the insert's cast); a UUID or JSON value goes into a
/// plain string column as its text.
fn same_extension(incoming: &Field, existing: &Field) -> bool {
    match (extension(incoming), extension(existing)) {
        (a, b) if a == b => true,
        _ if incoming.data_type() == &DataType::Null => true,
        (Some(_), None) => matches!(normalize(existing.data_type()), DataType::Utf8),
        _ => false,
    }
}

fn described(f: &Field) -> String {
    match extension(f) {
        Some(ext) => format!("{} ({ext})", f.data_type()),
        None => f.data_type().to_string(),
    }
}

fn check_unique(schema: &Schema) -> Result<(), SchemaConflict> {
    let fields = schema.fields();
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name().eq_ignore_ascii_case(f.name())) {
            return Err(SchemaConflict::DuplicateColumn { column: f.name().clone() });
        }
    }
    Ok(())
}

/// The class of a type as DuckDB stores it (string, binary and list
/// encodings differ in Arrow but not in the lake).
fn normalize(t: &DataType) -> DataType {
    use DataType::*;
    match t {
        LargeUtf8 | Utf8View => Utf8,
        LargeBinary | BinaryView | FixedSizeBinary(_) => Binary,
        LargeList(f) | ListView(f) | LargeListView(f) | FixedSizeList(f, _) => List(f.clone()),
        Dictionary(_, v) => normalize(v),
        // One interval type in the lake; Parquet readers disagree on units.
        Interval(_) => Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
        // A zoned timestamp is an instant: the zone's spelling ("UTC",
        // "+00:00") does not make another type.
        Timestamp(u, Some(_)) => Timestamp(*u, Some("UTC".into())),
        other => other.clone(),
    }
}

fn int_rank(t: &DataType) -> Option<(bool, u8)> {
    use DataType::*;
    Some(match t {
        Int8 => (true, 8),
        Int16 => (true, 16),
        Int32 => (true, 32),
        Int64 => (true, 64),
        UInt8 => (false, 8),
        UInt16 => (false, 16),
        UInt32 => (false, 32),
        UInt64 => (false, 64),
        _ => return None,
    })
}

/// Whether a column of type `to` holds every value of `from` exactly, so
/// the insert's cast cannot fail or change a value (strings excepted: any
/// value goes into a string column as its text).
pub fn fits(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let (from, to) = (normalize(from), normalize(to));
    if from == to || from == Null {
        return true;
    }
    match (&from, &to) {
        (_, Utf8) => !matches!(from, Binary),
        (List(a), List(b)) => fits(a.data_type(), b.data_type()),
        // The names of a map's entries are not part of its type: Arrow
        // writers say keys/values, DuckDB and Parquet key/value (a table
        // read back after a restart has the latter; found by attack,
        // issue 18: every new Prometheus series got 409 after a restart).
        (Map(a, _), Map(b, _)) => match (a.data_type(), b.data_type()) {
            (Struct(ea), Struct(eb)) if ea.len() == 2 && eb.len() == 2 => {
                fits(ea[0].data_type(), eb[0].data_type()) && fits(ea[1].data_type(), eb[1].data_type())
            }
            _ => false,
        },
        (Struct(a), Struct(b)) => a.iter().all(|fa| {
            b.iter()
                .find(|fb| fb.name().eq_ignore_ascii_case(fa.name()))
                .is_some_and(|fb| fits(fa.data_type(), fb.data_type()))
        }),
        _ => widens(&from, &to),
    }
}

/// Whether a column of type `from` can be promoted to `to` in place:
/// DuckLake allows it (a widening DuckDB casts implicitly) and every stored
/// value stays exact. Scalars only.
pub fn promotable(from: &DataType, to: &DataType) -> bool {
    let (from, to) = (normalize(from), normalize(to));
    from != to && widens(&from, &to)
}

/// The Arrow type of a scalar DuckDB type name (as `DESCRIBE` prints it),
/// for the types [`promotable`] knows; None for the rest.
pub fn arrow_of_duckdb(name: &str) -> Option<DataType> {
    use arrow::datatypes::TimeUnit as U;
    use DataType::*;
    let n = name.trim().to_ascii_uppercase();
    if let Some(args) = n.strip_prefix("DECIMAL(").and_then(|r| r.strip_suffix(')')) {
        let (p, s) = args.split_once(',')?;
        return Some(Decimal128(p.trim().parse().ok()?, s.trim().parse().ok()?));
    }
    Some(match n.as_str() {
        "TINYINT" => Int8,
        "SMALLINT" => Int16,
        "INTEGER" => Int32,
        "BIGINT" => Int64,
        "UTINYINT" => UInt8,
        "USMALLINT" => UInt16,
        "UINTEGER" => UInt32,
        "UBIGINT" => UInt64,
        "FLOAT" => Float32,
        "DOUBLE" => Float64,
        "DATE" => Date32,
        "TIMESTAMP_S" => Timestamp(U::Second, None),
        "TIMESTAMP_MS" => Timestamp(U::Millisecond, None),
        "TIMESTAMP" => Timestamp(U::Microsecond, None),
        _ => return None,
    })
}

/// Integer digits a type needs in a decimal.
fn int_digits(t: &DataType) -> Option<i16> {
    use DataType::*;
    Some(match t {
        Int8 | UInt8 => 3,
        Int16 | UInt16 => 5,
        Int32 | UInt32 => 10,
        Int64 => 19,
        UInt64 => 20,
        _ => return None,
    })
}

/// The exact widenings between scalar types (both normalized).
fn widens(from: &DataType, to: &DataType) -> bool {
    use arrow::datatypes::TimeUnit as U;
    use DataType::*;
    match (from, to) {
        (f, t) if int_rank(f).is_some() && int_rank(t).is_some() => {
            let ((fs, fb), (ts, tb)) = (int_rank(f).unwrap(), int_rank(t).unwrap());
            // Signed into unsigned can fail on negatives; unsigned into
            // signed needs one more bit.
            (fs == ts && fb < tb) || (!fs && ts && fb < tb)
        }
        // A double holds every integer of up to 32 bits and every float;
        // 64-bit integers and decimals would round.
        (f, Float64) => int_rank(f).is_some_and(|(_, bits)| bits <= 32) || matches!(f, Float32),
        (Int8 | Int16 | UInt8 | UInt16, Float32) => true,
        (f, Decimal128(p, s)) if int_digits(f).is_some() => int_digits(f).unwrap() <= i16::from(*p) - i16::from(*s),
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && i16::from(*p2) - i16::from(*s2) >= i16::from(*p1) - i16::from(*s1)
        }
        (Date32, Timestamp(U::Microsecond, None)) => true,
        (Timestamp(U::Second | U::Millisecond, a), Timestamp(U::Microsecond, b)) => a.is_some() == b.is_some(),
        (Timestamp(U::Second, a), Timestamp(U::Millisecond, b)) => a.is_some() == b.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    fn schema(cols: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(cols.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect::<Vec<_>>()))
    }

    fn t(name: &str) -> TableName {
        TableName::parse(name).unwrap()
    }

    #[test]
    fn first_write_creates_and_new_columns_are_added() {
        let mut s = TableSchemas::default();
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", DataType::Int64)]))], |_| Ok(())).unwrap();
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("y", DataType::Utf8)]))], |_| Ok(())).unwrap();
        let names: Vec<_> = s.get(&t("a")).unwrap().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn incompatible_type_names_the_column_and_changes_nothing() {
        let mut s = TableSchemas::default();
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", DataType::Int64)]))], |_| Ok(())).unwrap();
        let err = s
            .apply_all(
                &[
                    SchemaEffect::Rows(t("a"), schema(&[("z", DataType::Int64)])),
                    SchemaEffect::Rows(t("a"), schema(&[("X", DataType::Utf8)])),
                ],
                |_| Ok(()),
            )
            .unwrap_err();
        assert!(matches!(&err, SchemaConflict::ColumnType { column, .. } if column == "x"), "{err}");
        // All or nothing: `z` from the same write was not recorded.
        assert_eq!(s.get(&t("a")).unwrap().fields().len(), 1);
    }

    #[test]
    fn maps_fit_whatever_their_entries_are_called() {
        use DataType::*;
        let map = |entries: &str, k: &str, v: &str, vt: DataType| {
            let fields = vec![Field::new(k, Utf8, false), Field::new(v, vt, true)];
            Map(Arc::new(Field::new(entries, Struct(fields.into()), false)), false)
        };
        let arrow = map("entries", "keys", "values", Utf8);
        let duckdb = map("key_value", "key", "value", Utf8);
        assert!(fits(&arrow, &duckdb) && fits(&duckdb, &arrow));
        assert!(fits(&map("entries", "keys", "values", Int32), &map("key_value", "key", "value", Int64)));
        assert!(!fits(&map("entries", "keys", "values", Utf8), &map("key_value", "key", "value", Int64)));
    }

    #[test]
    fn what_fits_a_column_exactly() {
        use DataType::*;
        let ok = [
            (Int32, Int64),
            (UInt32, Int64),
            (Int32, Float64),
            (Float32, Float64),
            (LargeUtf8, Utf8),
            (Utf8View, Utf8),
            (Int64, Utf8),
            (Null, Int64),
            (Int32, Decimal128(12, 2)),
            (Decimal128(10, 2), Decimal128(18, 4)),
            (Date32, Timestamp(TimeUnit::Microsecond, None)),
            (Timestamp(TimeUnit::Millisecond, None), Timestamp(TimeUnit::Microsecond, None)),
        ];
        for (from, to) in ok {
            assert!(fits(&from, &to), "{from} -> {to}");
        }
        let bad = [
            (Int64, Int32),
            (Int64, UInt64),
            (UInt64, Int64),
            (Utf8, Int64),
            (Float64, Int64),
            (Binary, Utf8),
            // Would round: 2^53 + 1.
            (Int64, Float64),
            (UInt64, Float64),
            (Decimal128(38, 10), Float64),
            (Decimal128(18, 2), Decimal128(18, 4)),
            (Int64, Decimal128(18, 0)),
            (Timestamp(TimeUnit::Nanosecond, None), Timestamp(TimeUnit::Microsecond, None)),
            (Timestamp(TimeUnit::Microsecond, Some("UTC".into())), Timestamp(TimeUnit::Microsecond, None)),
        ];
        for (from, to) in bad {
            assert!(!fits(&from, &to), "{from} -> {to}");
        }
    }

    #[test]
    fn narrower_columns_widen_where_ducklake_promotes() {
        use DataType::*;
        let mut s = TableSchemas::default();
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", Int32), ("d", Decimal128(10, 2))]))], |_| Ok(()))
            .unwrap();
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", Int64), ("d", Decimal128(18, 2))]))], |_| Ok(()))
            .unwrap();
        let after = s.get(&t("a")).unwrap();
        assert_eq!(after.field(0).data_type(), &Int64);
        assert_eq!(after.field(1).data_type(), &Decimal128(18, 2));
        // Narrower again: fits, no change.
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", Int8)]))], |_| Ok(())).unwrap();
        assert_eq!(s.get(&t("a")).unwrap().field(0).data_type(), &Int64);
        // No exact common type: 409.
        let e = s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", UInt64)]))], |_| Ok(())).unwrap_err();
        assert!(matches!(e, SchemaConflict::ColumnType { .. }), "{e}");
        assert!(s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", Float64)]))], |_| Ok(())).is_err());
    }

    #[test]
    fn create_and_drop() {
        let mut s = TableSchemas::default();
        let sch = schema(&[("x", DataType::Int64)]);
        s.apply_all(&[SchemaEffect::Create(t("a"), sch.clone())], |_| Ok(())).unwrap();
        assert!(matches!(
            s.apply_all(&[SchemaEffect::Create(t("a"), sch.clone())], |_| Ok(())),
            Err(SchemaConflict::TableExists { .. })
        ));
        // Replace = drop + rows with any schema.
        s.apply_all(
            &[SchemaEffect::Drop(t("a")), SchemaEffect::Rows(t("a"), schema(&[("x", DataType::Utf8)]))],
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(s.get(&t("a")).unwrap().field(0).data_type(), &DataType::Utf8);
        assert!(matches!(
            s.apply_all(
                &[SchemaEffect::Rows(t("b"), schema(&[("x", DataType::Int64), ("X", DataType::Int64)]))],
                |_| Ok(())
            ),
            Err(SchemaConflict::DuplicateColumn { .. })
        ));
    }
}

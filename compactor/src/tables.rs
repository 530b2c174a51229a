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
//! Compatible means the compactor's `INSERT ... BY NAME` can never fail on
//! the value: same type, a widening (int32 -> int64, int -> double,
//! float -> double, date -> timestamp), anything -> string, or an all-null
//! column. New columns are added; missing columns are filled with NULL.

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
    /// A column name appears twice (case-insensitively, as DuckDB compares).
    #[error("column {column:?} appears more than once")]
    DuplicateColumn {
        /// The column.
        column: String,
    },
}

/// What a record does to the table schemas.
#[derive(Debug, Clone)]
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

    /// Checks `effects` in order and, only if all fit, records them.
    pub fn apply_all(&mut self, effects: &[SchemaEffect]) -> Result<(), SchemaConflict> {
        let mut next = self.tables.clone();
        for e in effects {
            apply(&mut next, e)?;
        }
        self.tables = next;
        Ok(())
    }

    /// Checks `effects` without recording them (to refuse a stream as soon
    /// as its schema is known).
    pub fn check(&self, effects: &[SchemaEffect]) -> Result<(), SchemaConflict> {
        self.clone().apply_all(effects)
    }

    /// Records an effect already in the log (replay at open). Conflicts are
    /// ignored here: the flush quarantines such a record, and the table
    /// keeps its schema.
    pub fn replay(&mut self, effect: &SchemaEffect) {
        let _ = apply(&mut self.tables, effect);
    }
}

fn apply(tables: &mut HashMap<String, SchemaRef>, effect: &SchemaEffect) -> Result<(), SchemaConflict> {
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
            for f in incoming.fields() {
                match existing.fields().iter().find(|e| e.name().eq_ignore_ascii_case(f.name())) {
                    Some(e) if converts(f.data_type(), e.data_type()) => {}
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
            if !added.is_empty() {
                let fields: Vec<Field> = existing.fields().iter().map(|f| f.as_ref().clone()).chain(added).collect();
                tables.insert(key(t), Arc::new(Schema::new(fields)));
            }
            Ok(())
        }
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

/// Whether every value of `from` converts to `to` without error.
fn converts(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let (from, to) = (normalize(from), normalize(to));
    if from == to || from == Null {
        return true;
    }
    match (&from, &to) {
        (_, Utf8) => !matches!(from, Binary),
        (f, t) if int_rank(f).is_some() && int_rank(t).is_some() => {
            let ((fs, fb), (ts, tb)) = (int_rank(f).unwrap(), int_rank(t).unwrap());
            // Signed into unsigned can fail on negatives; unsigned into
            // signed needs one more bit.
            (fs == ts && fb <= tb) || (!fs && ts && fb < tb)
        }
        (f, Float64) => int_rank(f).is_some() || matches!(f, Float16 | Float32 | Decimal128(..) | Decimal256(..)),
        (Float16, Float32) => true,
        (Date32 | Date64, Timestamp(_, None)) => true,
        (Timestamp(_, a), Timestamp(_, b)) => a.is_some() == b.is_some(),
        (List(a), List(b)) => converts(a.data_type(), b.data_type()),
        (Struct(a), Struct(b)) => a.iter().all(|fa| {
            b.iter()
                .find(|fb| fb.name().eq_ignore_ascii_case(fa.name()))
                .is_some_and(|fb| converts(fa.data_type(), fb.data_type()))
        }),
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
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", DataType::Int64)]))]).unwrap();
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("y", DataType::Utf8)]))]).unwrap();
        let names: Vec<_> = s.get(&t("a")).unwrap().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn incompatible_type_names_the_column_and_changes_nothing() {
        let mut s = TableSchemas::default();
        s.apply_all(&[SchemaEffect::Rows(t("a"), schema(&[("x", DataType::Int64)]))]).unwrap();
        let err = s
            .apply_all(&[
                SchemaEffect::Rows(t("a"), schema(&[("z", DataType::Int64)])),
                SchemaEffect::Rows(t("a"), schema(&[("X", DataType::Utf8)])),
            ])
            .unwrap_err();
        assert!(matches!(&err, SchemaConflict::ColumnType { column, .. } if column == "x"), "{err}");
        // All or nothing: `z` from the same write was not recorded.
        assert_eq!(s.get(&t("a")).unwrap().fields().len(), 1);
    }

    #[test]
    fn conversions() {
        use DataType::*;
        let ok = [
            (Int32, Int64),
            (UInt32, Int64),
            (Int64, Float64),
            (Float32, Float64),
            (LargeUtf8, Utf8),
            (Utf8View, Utf8),
            (Int64, Utf8),
            (Null, Int64),
            (Date32, Timestamp(TimeUnit::Microsecond, None)),
            (Timestamp(TimeUnit::Nanosecond, None), Timestamp(TimeUnit::Microsecond, None)),
        ];
        for (from, to) in ok {
            assert!(converts(&from, &to), "{from} -> {to}");
        }
        let bad = [
            (Int64, Int32),
            (Int64, UInt64),
            (UInt64, Int64),
            (Utf8, Int64),
            (Float64, Int64),
            (Binary, Utf8),
            (Timestamp(TimeUnit::Microsecond, Some("UTC".into())), Timestamp(TimeUnit::Microsecond, None)),
        ];
        for (from, to) in bad {
            assert!(!converts(&from, &to), "{from} -> {to}");
        }
    }

    #[test]
    fn create_and_drop() {
        let mut s = TableSchemas::default();
        let sch = schema(&[("x", DataType::Int64)]);
        s.apply_all(&[SchemaEffect::Create(t("a"), sch.clone())]).unwrap();
        assert!(matches!(
            s.apply_all(&[SchemaEffect::Create(t("a"), sch.clone())]),
            Err(SchemaConflict::TableExists { .. })
        ));
        // Replace = drop + rows with any schema.
        s.apply_all(&[SchemaEffect::Drop(t("a")), SchemaEffect::Rows(t("a"), schema(&[("x", DataType::Utf8)]))])
            .unwrap();
        assert_eq!(s.get(&t("a")).unwrap().field(0).data_type(), &DataType::Utf8);
        assert!(matches!(
            s.apply_all(&[SchemaEffect::Rows(t("b"), schema(&[("x", DataType::Int64), ("X", DataType::Int64)]))]),
            Err(SchemaConflict::DuplicateColumn { .. })
        ));
    }
}

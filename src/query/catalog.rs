//! Dataset listings read from the account's DuckLake catalog tables (exact
//! counts from file metadata, no data scans) and previews.

use duckdb::Connection;
use duckpond_compactor::{LakeError, LAKE_ALIAS};
use duckpond_schema::TableName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A dataset in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatasetSummary {
    /// Table name.
    pub name: String,
    /// Live rows (rows in data files minus deleted rows).
    pub rows: i64,
    /// Bytes of its live Parquet files.
    pub bytes: i64,
    /// Number of live Parquet files.
    pub files: i64,
    /// The last snapshot that changed it.
    pub last_snapshot_id: Option<i64>,
    /// When that snapshot was committed (ISO 8601).
    pub last_snapshot_time: Option<String>,
}

/// A column.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Column {
    /// Name.
    pub name: String,
    /// DuckDB type.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether it may hold NULL.
    pub nullable: bool,
}

/// A snapshot that touched a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// Snapshot id (usable for time travel).
    pub snapshot_id: i64,
    /// Commit time (ISO 8601).
    pub time: String,
    /// Commit message.
    pub message: Option<String>,
}

/// A dataset in detail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatasetDetail {
    /// Name and stats.
    #[serde(flatten)]
    pub summary: DatasetSummary,
    /// Its columns.
    pub columns: Vec<Column>,
    /// The newest snapshots that changed it (at most [`SNAPSHOTS_LISTED`]).
    pub snapshots: Vec<SnapshotInfo>,
}

/// Most snapshots listed by [`describe`].
pub const SNAPSHOTS_LISTED: usize = 100;

/// Rows of a preview.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    /// Columns.
    pub columns: Vec<Column>,
    /// Rows as JSON objects.
    pub rows: Vec<serde_json::Value>,
}

fn summaries(conn: &Connection, m: &str, only: Option<&str>) -> Result<Vec<DatasetSummary>, LakeError> {
    let sql = format!(
        "WITH t AS (SELECT table_id, table_name, begin_snapshot FROM {m}.ducklake_table WHERE end_snapshot IS NULL
                    AND (?::VARCHAR IS NULL OR lower(table_name) = lower(?::VARCHAR))),
              d AS (SELECT table_id, sum(record_count) AS rows, sum(file_size_bytes) AS bytes, count(*) AS files
                    FROM {m}.ducklake_data_file WHERE end_snapshot IS NULL GROUP BY table_id),
              x AS (SELECT table_id, sum(delete_count) AS deleted FROM {m}.ducklake_delete_file
                    WHERE end_snapshot IS NULL GROUP BY table_id),
              s AS (SELECT table_id, max(greatest(begin_snapshot, coalesce(end_snapshot, 0))) AS last
                    FROM (SELECT table_id, begin_snapshot, end_snapshot FROM {m}.ducklake_data_file
                          UNION ALL SELECT table_id, begin_snapshot, end_snapshot FROM {m}.ducklake_delete_file)
                    GROUP BY table_id)
         SELECT t.table_name, (coalesce(d.rows, 0) - coalesce(x.deleted, 0))::BIGINT, coalesce(d.bytes, 0)::BIGINT,
                coalesce(d.files, 0)::BIGINT, greatest(t.begin_snapshot, coalesce(s.last, 0))::BIGINT AS last,
                strftime(sn.snapshot_time::TIMESTAMP, '%Y-%m-%dT%H:%M:%S.%fZ')
         FROM t LEFT JOIN d USING (table_id) LEFT JOIN x USING (table_id) LEFT JOIN s USING (table_id)
                LEFT JOIN {m}.ducklake_snapshot sn ON sn.snapshot_id = greatest(t.begin_snapshot, coalesce(s.last, 0))
         ORDER BY t.table_name"
    );
    let mut st = conn.prepare(&sql).map_err(LakeError::duckdb("listing datasets"))?;
    let rows = st
        .query_map([only, only], |r| {
            Ok(DatasetSummary {
                name: r.get(0)?,
                rows: r.get(1)?,
                bytes: r.get(2)?,
                files: r.get(3)?,
                last_snapshot_id: r.get(4)?,
                last_snapshot_time: r.get(5)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(LakeError::duckdb("listing datasets"))?;
    Ok(rows)
}

/// Every dataset with its stats. `m`: the catalog tables
/// ([`crate::query::AccountEngine::metadata_tables`]).
pub fn list(conn: &Connection, m: &str) -> Result<Vec<DatasetSummary>, LakeError> {
    summaries(conn, m, None)
}

fn columns(conn: &Connection, from: &str) -> Result<Vec<Column>, LakeError> {
    let mut st = conn.prepare(&format!("DESCRIBE {from}")).map_err(LakeError::duckdb("describing a dataset"))?;
    st.query_map([], |r| {
        Ok(Column { name: r.get(0)?, data_type: r.get(1)?, nullable: r.get::<_, String>(2)? == "YES" })
    })
    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
    .map_err(LakeError::duckdb("describing a dataset"))
}

/// One dataset with columns and snapshots (None if it does not exist).
pub fn describe(conn: &Connection, m: &str, table: &TableName) -> Result<Option<DatasetDetail>, LakeError> {
    let Some(summary) = summaries(conn, m, Some(table.as_str()))?.into_iter().next() else { return Ok(None) };
    let name = TableName::parse(&summary.name).map_err(|e| LakeError::RoundTrip(e.to_string()))?;
    let columns = columns(conn, &format!("{LAKE_ALIAS}.main.{}", name.quoted()))?;
    // A snapshot's changes name the table by id (inserts, deletes) or by
    // qualified name (creation, alteration).
    let sql = format!(
        "WITH id AS (SELECT table_id FROM {m}.ducklake_table WHERE end_snapshot IS NULL AND table_name = ?)
         SELECT s.snapshot_id, strftime(s.snapshot_time::TIMESTAMP, '%Y-%m-%dT%H:%M:%S.%fZ'),
                s.commit_message
         FROM {LAKE_ALIAS}.snapshots() s, id
         WHERE list_contains(flatten(map_values(s.changes)), id.table_id::VARCHAR)
            OR list_contains(flatten(map_values(s.changes)), 'main.' || ?)
         ORDER BY s.snapshot_id DESC LIMIT {SNAPSHOTS_LISTED}"
    );
    let mut st = conn.prepare(&sql).map_err(LakeError::duckdb("listing snapshots"))?;
    let snapshots = st
        .query_map([name.as_str(), name.as_str()], |r| {
            Ok(SnapshotInfo { snapshot_id: r.get(0)?, time: r.get(1)?, message: r.get(2)? })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(LakeError::duckdb("listing snapshots"))?;
    Ok(Some(DatasetDetail { summary, columns, snapshots }))
}

/// The first `limit` rows (None if the dataset does not exist).
pub fn preview(conn: &Connection, m: &str, table: &TableName, limit: u64) -> Result<Option<Preview>, LakeError> {
    let Some(summary) = summaries(conn, m, Some(table.as_str()))?.into_iter().next() else { return Ok(None) };
    let name = TableName::parse(&summary.name).map_err(|e| LakeError::RoundTrip(e.to_string()))?;
    let from = format!("{LAKE_ALIAS}.main.{}", name.quoted());
    let columns = columns(conn, &from)?;
    let mut st = conn
        .prepare(&format!("SELECT to_json(p)::VARCHAR FROM (SELECT * FROM {from} LIMIT {limit}) p"))
        .map_err(LakeError::duckdb("previewing a dataset"))?;
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(LakeError::duckdb("previewing a dataset"))?;
    let rows = rows.iter().map(|s| serde_json::from_str(s).unwrap_or(serde_json::Value::Null)).collect();
    Ok(Some(Preview { columns, rows }))
}

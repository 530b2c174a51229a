//! Keeping a lake healthy for months of ingestion: merge small files, expire
//! old snapshots, delete files nothing references. Runs under the writer's
//! lock, so it never races a flush of the same catalog.
//!
//! Time travel: snapshots younger than `snapshot_retention_ms` (default 7
//! days) stay queryable with `AT (VERSION => n)`; older ones are expired,
//! except the newest snapshot carrying the compactor's committed LSN, which
//! is never expired (recovery reads the LSN from it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::lake::LakeError;
use crate::telemetry as m;
use crate::writer::{LakeWriter, LAKE_ALIAS, LSN_KEY};

/// What a maintenance run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceOutcome {
    /// Snapshots this run expired (a merge adds one of its own).
    pub snapshots_expired: i64,
    /// Data files before the run minus after it (merges and cleanup).
    pub data_files_removed: i64,
    /// Data files per table after the run.
    pub data_files: Vec<(String, i64)>,
}

/// Runs merge, expire and cleanup on the writer's lake.
///
/// Files DuckLake no longer needs (replaced by a merge, or used only by
/// expired snapshots) are deleted `cleanup_grace` after DuckLake scheduled
/// them, so a query that began on an older snapshot finds its files.
pub fn run(
    writer: &mut LakeWriter,
    retention: Duration,
    cleanup_grace: Duration,
    label: &str,
) -> Result<MaintenanceOutcome, LakeError> {
    let files_sql = format!("SELECT coalesce(sum(file_count), 0)::BIGINT FROM ducklake_table_info('{LAKE_ALIAS}')");
    let count = |conn: &duckdb::Connection, sql: &str| -> Result<i64, LakeError> {
        conn.query_row(sql, [], |r| r.get(0)).map_err(LakeError::duckdb("counting"))
    };
    let files_before = count(writer.connection(), &files_sql)?;

    // The merged files are made durable before the commit that swaps them
    // in (and schedules the files they replace for deletion).
    writer.connection().execute_batch("BEGIN TRANSACTION").map_err(LakeError::duckdb("beginning a merge"))?;
    let merged = writer
        .connection()
        .execute_batch(&format!("CALL ducklake_merge_adjacent_files('{LAKE_ALIAS}')"))
        .map_err(LakeError::duckdb("merging adjacent files"))
        .and_then(|()| writer.sync_then_commit());
    if let Err(e) = merged {
        let _ = writer.connection().execute_batch("ROLLBACK");
        return Err(e);
    }
    let conn = writer.connection();

    // Expire by id, not by time: exactly the snapshots older than the
    // retention window and older than the newest snapshot carrying the
    // committed LSN (which recovery needs), whatever the clock precision.
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let cutoff_us = ((now_s - retention.as_secs_f64()) * 1e6) as i64;
    let ids: Vec<i64> = {
        let mut st = conn
            .prepare(&format!(
                "SELECT snapshot_id FROM {LAKE_ALIAS}.snapshots() WHERE epoch_us(snapshot_time) < ? \
                 AND snapshot_id < (SELECT coalesce(max(snapshot_id), 0) FROM {LAKE_ALIAS}.snapshots() \
                     WHERE json_extract_string(commit_extra_info, '$.{LSN_KEY}') IS NOT NULL) \
                 ORDER BY snapshot_id"
            ))
            .map_err(LakeError::duckdb("choosing snapshots to expire"))?;
        let rows = st
            .query_map([cutoff_us], |r| r.get::<_, i64>(0))
            .map_err(LakeError::duckdb("choosing snapshots to expire"))?;
        rows.collect::<Result<_, _>>().map_err(LakeError::duckdb("choosing snapshots to expire"))?
    };
    if !ids.is_empty() {
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        conn.execute_batch(&format!("CALL ducklake_expire_snapshots('{LAKE_ALIAS}', versions => [{list}])"))
            .map_err(LakeError::duckdb("expiring snapshots"))?;
    }
    cleanup(writer, now_s, cleanup_grace)?;

    let mut st = conn
        .prepare(&format!("SELECT table_name, file_count::BIGINT FROM ducklake_table_info('{LAKE_ALIAS}') ORDER BY 1"))
        .map_err(LakeError::duckdb("listing data files"))?;
    let data_files = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(LakeError::duckdb("listing data files"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(LakeError::duckdb("listing data files"))?;
    for (table, files) in &data_files {
        metrics::gauge!(m::DATA_FILES, "account" => label.to_string(), "table" => table.clone()).set(*files as f64);
    }
    let outcome = MaintenanceOutcome {
        snapshots_expired: ids.len() as i64,
        data_files_removed: files_before - count(conn, &files_sql)?,
        data_files,
    };
    tracing::info!(
        account = label,
        expired = outcome.snapshots_expired,
        files_removed = outcome.data_files_removed,
        "lake maintenance done"
    );
    Ok(outcome)
}

/// Deletes the files DuckLake scheduled for deletion more than `grace` ago
/// (all of them when `grace` is zero).
///
/// A merge schedules the files it replaced at once (merged files keep
/// time travel), so without a grace a query already reading them would
/// find them gone. DuckLake's own `ducklake_cleanup_old_files(older_than
/// => ...)` cannot express the grace with a SQLite catalog (it compares
/// the cutoff as text, so every file scheduled the same day matches):
/// this reads DuckLake's schedule, deletes the old enough files and their
/// schedule rows itself. A file that cannot be deleted keeps its row and is
/// tried again next run.
fn cleanup(writer: &LakeWriter, now_s: f64, grace: Duration) -> Result<(), LakeError> {
    let conn = writer.connection();
    let location = writer.location();
    let schedule = format!("{}.ducklake_files_scheduled_for_deletion", location.metadata_tables(LAKE_ALIAS));
    let cutoff_us = ((now_s - grace.as_secs_f64()) * 1e6) as i64;
    let due: Vec<(i64, String, bool)> = {
        let mut st = conn
            .prepare(&format!(
                "SELECT data_file_id, path, path_is_relative::BOOLEAN FROM {schedule} \
                 WHERE epoch_us(schedule_start::TIMESTAMPTZ) < ?"
            ))
            .map_err(LakeError::duckdb("reading the deletion schedule"))?;
        let rows = st
            .query_map([cutoff_us], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(LakeError::duckdb("reading the deletion schedule"))?;
        rows.collect::<Result<_, _>>().map_err(LakeError::duckdb("reading the deletion schedule"))?
    };
    let mut deleted = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (id, path, relative) in due {
        let file = if relative { location.data_path.join(&path) } else { std::path::PathBuf::from(&path) };
        match std::fs::remove_file(&file) {
            Ok(()) => deleted.push(id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted.push(id),
            Err(e) => tracing::warn!(file = %file.display(), error = %e, "could not delete an unreferenced data file"),
        }
        if let Some(dir) = file.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    // The unlinks are durable before their schedule rows go: after a power
    // loss a file must not come back with nothing left to delete it.
    for dir in &dirs {
        match crate::durable::sync_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(LakeError::Io { context: format!("syncing {}", dir.display()), error }),
        }
    }
    for ids in deleted.chunks(CLEANUP_ROWS_PER_STATEMENT) {
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        conn.execute_batch(&format!("DELETE FROM {schedule} WHERE data_file_id IN ({list})"))
            .map_err(LakeError::duckdb("updating the deletion schedule"))?;
    }
    Ok(())
}

/// Schedule rows removed per DELETE statement.
const CLEANUP_ROWS_PER_STATEMENT: usize = 500;

//! Where an account's files live: `<storage.local_path>/accounts/<id>/`.
//!
//! Everything of an account is below its root, so deleting the root deletes
//! the account's data and nothing else, and the query sandbox can be limited
//! to it.

use std::path::{Path, PathBuf};

use duckpond_compactor::{CatalogLocation, CatalogMetadata, LakeError};

use crate::config::{CatalogBackend, Config, NotebookBackend};

use super::AccountId;

/// Where accounts' catalogs go, from the `storage:` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogPlacement {
    /// `<account root>/catalog.sqlite`, in SQLite's WAL journal mode when
    /// `wal` (see [`catalog_journal_mode`]).
    Sqlite {
        /// WAL journal mode; rollback journal mode otherwise.
        wal: bool,
    },
    /// Schema `duckpond_<account id>` in this PostgreSQL database.
    Postgres {
        /// Connection string or URL.
        conninfo: String,
    },
}

impl CatalogPlacement {
    /// From the configuration. SQLite catalogs use WAL journal mode unless
    /// notebooks run in Docker: a container reads the catalog through a
    /// read-only mount, and SQLite cannot open a WAL database there (it
    /// needs to create the `-shm` file), so those deployments keep the
    /// rollback journal and its reader/writer lock contention (PostgreSQL
    /// catalogs have neither problem).
    pub fn from_config(config: &Config) -> Self {
        let storage = &config.storage;
        match storage.catalog_backend {
            CatalogBackend::Sqlite => {
                CatalogPlacement::Sqlite { wal: !matches!(config.notebooks.backend, NotebookBackend::Docker) }
            }
            CatalogBackend::Postgres => CatalogPlacement::Postgres { conninfo: storage.catalog_postgres_url.clone() },
        }
    }

    /// Whether SQLite catalogs are to be in WAL journal mode.
    pub fn sqlite_wal(&self) -> bool {
        matches!(self, CatalogPlacement::Sqlite { wal: true })
    }
}

/// The paths of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLayout {
    root: PathBuf,
    id: AccountId,
}

impl AccountLayout {
    /// The layout of `id` under the storage root.
    pub fn new(storage_root: &Path, id: &AccountId) -> Self {
        Self { root: storage_root.join("accounts").join(id.as_str()), id: id.clone() }
    }

    /// The account's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Parquet files of the account's DuckLake.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The account's write-ahead log.
    pub fn wal_dir(&self) -> PathBuf {
        self.root.join("wal")
    }

    /// Upload bodies being received and converted; nothing here is in the
    /// log yet, so the directory is emptied whenever the pipeline opens.
    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// Uploads converted to Parquet and named by a log record, until the
    /// compactor commits them.
    pub fn staged_dir(&self) -> PathBuf {
        self.root.join("staged")
    }

    /// The compactor's temporary files.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// The account's marimo notebooks.
    pub fn notebooks_dir(&self) -> PathBuf {
        self.root.join("notebooks")
    }

    /// The account's DuckLake catalog. The PostgreSQL schema name is derived
    /// from the random account id, never from user input.
    pub fn catalog(&self, placement: &CatalogPlacement) -> CatalogLocation {
        let metadata = match placement {
            CatalogPlacement::Sqlite { .. } => CatalogMetadata::Sqlite(self.root.join("catalog.sqlite")),
            CatalogPlacement::Postgres { conninfo } => {
                CatalogMetadata::Postgres { conninfo: conninfo.clone(), schema: format!("duckpond_{}", self.id) }
            }
        };
        CatalogLocation { metadata, data_path: self.data_dir() }
    }

    /// Creates every directory of the layout.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        for dir in [self.data_dir(), self.wal_dir(), self.incoming_dir(), self.staged_dir(), self.notebooks_dir()] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

/// fsyncs an account's new tree: every file and directory below `root`,
/// and the entries of `accounts/` and the storage root above it.
pub fn make_durable(root: &Path) -> std::io::Result<()> {
    duckpond_compactor::durable::sync_tree(root)?;
    match root.parent().and_then(Path::parent) {
        Some(storage_root) => duckpond_compactor::durable::sync_dir(storage_root),
        None => Ok(()),
    }
}

/// Total size of the regular files below `dir` (0 if it does not exist).
/// Symlinks are not followed: they are not the account's bytes.
pub fn dir_size_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // The compactor, cleanup and uploads delete files while this walks:
        // one gone between listing and measuring counts as 0 bytes.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for entry in entries {
            let entry = entry?;
            let ty = match entry.file_type() {
                Ok(t) => t,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                match entry.metadata() {
                    Ok(m) => total += m.len(),
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(total)
}

/// Puts a SQLite DuckLake catalog in write-ahead-log journal mode, or back
/// in rollback mode when `wal` is false (the mode is kept in the file; a
/// no-op for PostgreSQL catalogs). In SQLite's rollback mode a commit locks
/// readers out, and DuckDB's SQLite reader does not wait: queries and
/// notebooks reading while the compactor commits failed with "database is
/// locked", and a commit that met a reader could be left holding the lock.
/// In WAL mode readers and the one writer never block each other.
pub async fn catalog_journal_mode(location: &CatalogLocation, wal: bool) -> Result<(), LakeError> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{ConnectOptions, Connection};
    let CatalogMetadata::Sqlite(file) = &location.metadata else { return Ok(()) };
    if !file.exists() {
        return Ok(());
    }
    let failed = |e: sqlx::Error| LakeError::Io {
        context: format!("setting the journal mode of {}", file.display()),
        error: std::io::Error::other(e),
    };
    let conn = SqliteConnectOptions::new()
        .filename(file)
        .journal_mode(if wal { SqliteJournalMode::Wal } else { SqliteJournalMode::Delete })
        .busy_timeout(CATALOG_BUSY_TIMEOUT)
        .connect()
        .await
        .map_err(failed)?;
    conn.close().await.map_err(failed)
}

/// How long switching a catalog's journal mode waits for other
/// connections' locks.
const CATALOG_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    /// Files deleted while the walk runs (the compactor and cleanup do
    /// that all the time) are not an error (the soak run got a 500 here).
    #[test]
    fn dir_size_tolerates_files_vanishing_during_the_walk() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (root, stop) = (root.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sub = root.join(format!("d{}", i % 7));
                    let _ = std::fs::create_dir_all(&sub);
                    let f = sub.join(format!("f{i}"));
                    let _ = std::fs::write(&f, b"x");
                    let _ = std::fs::remove_file(&f);
                    if i % 50 == 0 {
                        let _ = std::fs::remove_dir_all(&sub);
                    }
                    i += 1;
                }
            })
        };
        for _ in 0..2_000 {
            dir_size_bytes(&root).expect("a vanished file is not an error");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/x"), [0u8; 10]).unwrap();
        std::fs::write(d.path().join("a/b/y"), [0u8; 5]).unwrap();
        assert_eq!(dir_size_bytes(d.path()).unwrap(), 15);
        assert_eq!(dir_size_bytes(&d.path().join("missing")).unwrap(), 0);
    }
}

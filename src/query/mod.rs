//! The read side: one DuckDB instance per account with its lake attached
//! read-only, so readers only ever see committed snapshots and never
//! contend with the compactor's writer instance.
//!
//! - [`Engines`]: the instances, opened on first use and closed with the
//!   account.
//! - [`catalog`]: what the dataset endpoints read (tables, stats, schema,
//!   snapshots, previews).

pub mod catalog;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use duckpond_compactor::{Extensions, InstanceSettings, LakeError, LAKE_ALIAS};

use crate::accounts::{Account, AccountId, AccountLayout, CatalogPlacement};
use crate::config::Config;

/// One account's read-only DuckDB instance. Each call runs on a fresh
/// connection to it (connections are cheap; the instance holds the cache).
pub struct AccountEngine {
    base: Mutex<duckdb::Connection>,
    /// DuckLake's own tables of this account, qualified.
    metadata_tables: String,
}

impl AccountEngine {
    /// DuckLake's catalog tables as `<database>.<schema>` (they live in the
    /// account's PostgreSQL schema or the SQLite file's `main`).
    pub fn metadata_tables(&self) -> &str {
        &self.metadata_tables
    }

    /// Runs `f` on a connection of this instance, off the async runtime.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, LakeError>
    where
        F: FnOnce(&duckdb::Connection) -> Result<T, LakeError> + Send + 'static,
        T: Send + 'static,
    {
        let conn =
            self.base.lock().expect("engine lock").try_clone().map_err(LakeError::duckdb("opening a connection"))?;
        tokio::task::spawn_blocking(move || f(&conn))
            .await
            .unwrap_or_else(|e| Err(LakeError::RoundTrip(format!("query task failed: {e}"))))
    }
}

/// Every account's read instance.
pub struct Engines {
    extensions: Extensions,
    settings: InstanceSettings,
    storage_root: PathBuf,
    catalogs: CatalogPlacement,
    open: tokio::sync::Mutex<HashMap<AccountId, Arc<AccountEngine>>>,
}

impl Engines {
    /// A registry configured from `config`; opens nothing yet.
    pub fn new(config: &Config, extensions: Extensions) -> Self {
        Self {
            extensions,
            settings: InstanceSettings {
                memory_limit_mb: config.duckdb.memory_limit_mb,
                threads: config.duckdb.threads,
            },
            storage_root: config.storage.local_path.clone(),
            catalogs: CatalogPlacement::from_config(&config.storage),
            open: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The account's instance, opened on first use.
    pub async fn get(&self, account: &Account) -> Result<Arc<AccountEngine>, LakeError> {
        if let Some(e) = self.open.lock().await.get(&account.id) {
            return Ok(e.clone());
        }
        let layout = AccountLayout::new(&self.storage_root, &account.id);
        let (ext, settings, location) = (self.extensions.clone(), self.settings, layout.catalog(&self.catalogs));
        let metadata_tables = location.metadata_tables(LAKE_ALIAS);
        let conn = tokio::task::spawn_blocking(move || {
            let conn = ext.open_instance(&settings)?;
            conn.execute_batch(&location.attach_sql(LAKE_ALIAS, true))
                .map_err(LakeError::duckdb("attaching the account's DuckLake read-only"))?;
            conn.execute_batch(&format!("USE {LAKE_ALIAS}")).map_err(LakeError::duckdb("selecting the lake"))?;
            Ok::<_, LakeError>(conn)
        })
        .await
        .unwrap_or_else(|e| Err(LakeError::RoundTrip(format!("opening the engine failed: {e}"))))?;
        let engine = Arc::new(AccountEngine { base: Mutex::new(conn), metadata_tables });
        // Two first requests may both open one; the first stored wins.
        Ok(self.open.lock().await.entry(account.id.clone()).or_insert(engine).clone())
    }

    /// Closes the account's instance (before deleting it).
    pub async fn close(&self, id: &AccountId) {
        self.open.lock().await.remove(id);
    }
}

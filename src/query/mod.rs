//! The read side: one DuckDB instance per account with its lake attached
//! read-only, so readers only ever see committed snapshots and never
//! contend with the compactor's writer instance.
//!
//! - [`Engines`]: the instances, opened on first use and closed with the
//!   account.
//! - [`catalog`]: what the dataset endpoints read (tables, stats, schema,
//!   snapshots, previews).
//! - [`guard`]: which SQL the query API accepts (one read statement, no
//!   state-changing functions).
//! - [`exec`]: running a query and streaming its batches back, with
//!   admission, deadline and cancellation.
//! - [`worker`]: the per-account processes the account's SQL runs in, so
//!   a native crash in DuckDB stops only that process.
//! - [`render`]: results as exact JSON.
//! - [`prometheus`]: Prometheus remote read over the metrics tables.
//!
//! Sandbox: each instance is opened with extension autoloading and
//! autoinstall off, attaches the account's lake read-only, then sets
//! `allowed_directories` to the account's own directory, turns external
//! access off and locks the configuration, so no later statement can widen
//! any of it. ../shared/notes/ducklake.md lists what these settings close;
//! [`guard`] closes the rest (COPY TO the account's own directory,
//! statements that change state).

pub mod catalog;
pub mod exec;
pub mod guard;
pub mod prometheus;
pub mod render;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

    /// A new connection to this instance.
    pub fn connection(&self) -> Result<duckdb::Connection, LakeError> {
        let conn =
            self.base.lock().expect("engine lock").try_clone().map_err(LakeError::duckdb("opening a connection"))?;
        // The default database is per connection.
        conn.execute_batch(&format!("USE {LAKE_ALIAS}")).map_err(LakeError::duckdb("selecting the lake"))?;
        Ok(conn)
    }

    /// Runs `f` on a connection of this instance, off the async runtime
    /// (opening the connection included: it reads the catalog, which can
    /// wait on a flush's lock).
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, LakeError>
    where
        F: FnOnce(&duckdb::Connection) -> Result<T, LakeError> + Send + 'static,
        T: Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me.connection()?))
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
    workers: worker::Workers,
}

impl Engines {
    /// A registry configured from `config`; opens nothing yet. Fails when
    /// the query workers' socket directory cannot be made or this
    /// executable cannot be found.
    pub fn new(config: &Config, extensions: Extensions) -> std::io::Result<Self> {
        let idle = Duration::from_millis(config.duckdb.query_worker_idle_timeout_ms);
        let start = Duration::from_millis(config.duckdb.query_worker_start_timeout_ms);
        Ok(Self {
            extensions,
            settings: config.duckdb.instance_settings(),
            storage_root: config.storage.local_path.clone(),
            catalogs: CatalogPlacement::from_config(config),
            open: tokio::sync::Mutex::new(HashMap::new()),
            workers: worker::Workers::new(std::env::current_exe()?, idle, start)?,
        })
    }

    /// Starts the account's query worker unless it runs; call before
    /// taking an admission slot, so that no slot waits on a start. The
    /// start runs in a task of its own: a caller that stops waiting (its
    /// deadline passed) does not abort it, so a start slower than the
    /// query timeout still completes for the next query.
    pub async fn ready(self: &Arc<Self>, account: &Account) -> Result<(), exec::QueryError> {
        let (me, account) = (self.clone(), account.clone());
        tokio::spawn(async move { me.workers.ready(&account.id, |socket| me.worker_spec(&account, socket)).await })
            .await
            .unwrap_or_else(|e| Err(exec::QueryError::Unavailable(format!("starting the query worker failed: {e}"))))
    }

    /// Starts `request` in the account's query worker (see [`worker`]).
    pub async fn query(
        &self,
        account: &Account,
        request: worker::wire::Request,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<exec::Running, exec::QueryError> {
        self.workers.start(&account.id, |socket| self.worker_spec(account, socket), request, permit).await
    }

    fn worker_spec(&self, account: &Account, socket: PathBuf) -> worker::Spec {
        let layout = AccountLayout::new(&self.storage_root, &account.id);
        worker::Spec {
            extension_dir: self.extensions.dir().to_path_buf(),
            memory_limit_mb: self.settings.memory_limit_mb,
            threads: self.settings.threads,
            attach_sql: layout.catalog(&self.catalogs).attach_sql(LAKE_ALIAS, true),
            account_root: layout.root().to_path_buf(),
            socket,
        }
    }

    /// Stops query workers idle past `duckdb.query_worker_idle_timeout_ms`,
    /// every so often, for as long as `self` lives.
    pub fn reap_idle_workers(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(interval) = me.upgrade().map(|e| e.workers.reap_interval()) else { return };
                tokio::time::sleep(interval).await;
                let Some(engines) = me.upgrade() else { return };
                engines.workers.reap_idle().await;
            }
        });
    }

    /// The verified extension binaries (conversions load from them too).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The account's instance, opened on first use.
    pub async fn get(&self, account: &Account) -> Result<Arc<AccountEngine>, LakeError> {
        if let Some(e) = self.open.lock().await.get(&account.id) {
            return Ok(e.clone());
        }
        // Once per account and process (not per time-travel engine).
        let location = AccountLayout::new(&self.storage_root, &account.id).catalog(&self.catalogs);
        crate::accounts::layout::catalog_journal_mode(&location, self.catalogs.sqlite_wal()).await?;
        let engine = self.open_engine(account).await?;
        // Two first requests may both open one; the first stored wins.
        Ok(self.open.lock().await.entry(account.id.clone()).or_insert(engine).clone())
    }

    /// Opens a sandboxed instance on the account's lake, following the
    /// latest snapshot.
    async fn open_engine(&self, account: &Account) -> Result<Arc<AccountEngine>, LakeError> {
        let layout = AccountLayout::new(&self.storage_root, &account.id);
        let (ext, settings, location) = (self.extensions.clone(), self.settings, layout.catalog(&self.catalogs));
        let metadata_tables = location.metadata_tables(LAKE_ALIAS);
        let root = layout.root().to_path_buf();
        let attach = location.attach_sql(LAKE_ALIAS, true);
        let conn = tokio::task::spawn_blocking(move || sandboxed(&ext, &settings, &attach, &root))
            .await
            .unwrap_or_else(|e| Err(LakeError::RoundTrip(format!("opening the engine failed: {e}"))))?;
        Ok(Arc::new(AccountEngine { base: Mutex::new(conn), metadata_tables }))
    }

    /// Closes the account's instance and stops its query worker (before
    /// deleting the account).
    pub async fn close(&self, id: &AccountId) {
        self.open.lock().await.remove(id);
        self.workers.stop(id).await;
    }
}

/// `attach` (a read-only DuckLake ATTACH) pinned to snapshot `version`.
pub(crate) fn pinned(attach: &str, version: i64) -> String {
    format!("{}, SNAPSHOT_VERSION {version})", attach.trim_end_matches(')'))
}

/// Opens an instance, attaches the lake with `attach`, and closes every
/// door behind it (see the module docs). Blocking.
pub(crate) fn sandboxed(
    ext: &Extensions,
    settings: &InstanceSettings,
    attach: &str,
    account_root: &std::path::Path,
) -> Result<duckdb::Connection, LakeError> {
    let conn = ext.open_instance(settings)?;
    conn.execute_batch(attach).map_err(LakeError::duckdb("attaching the account's DuckLake read-only"))?;
    conn.execute_batch(&format!("USE {LAKE_ALIAS}")).map_err(LakeError::duckdb("selecting the lake"))?;
    let root = format!("{}/", account_root.display()).replace('\'', "''");
    // Spill files go inside the account too: the default (`.tmp` in the
    // daemon's directory) would be shared by every account and readable.
    conn.execute_batch(&format!(
        "SET temp_directory = '{root}.duckdb_tmp'; SET allowed_directories = ['{root}']; \
         SET enable_external_access = false; SET lock_configuration = true;"
    ))
    .map_err(LakeError::duckdb("sandboxing the query engine"))?;
    Ok(conn)
}

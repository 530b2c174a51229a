//! One pipeline per account: its write-ahead log and compactor, opened once
//! and kept for the daemon's life, with the flush loop running.
//!
//! Every account's pipeline is opened at start-up, so records left in a log
//! by a crash are committed without waiting for a new write. Shutdown stops
//! every loop after one last flush.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use duckpond_compactor::{AccountCompactor, CompactorError, CompactorOptions, Extensions, InstanceSettings};
use duckpond_wal::{Durability, WalOptions};
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinHandle;

use crate::accounts::{Account, AccountId, AccountLayout, CatalogPlacement};
use crate::config::{Config, WalDurability};

struct Running {
    compactor: Arc<AccountCompactor>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The open pipelines.
pub struct Pipelines {
    extensions: Extensions,
    settings: InstanceSettings,
    storage_root: PathBuf,
    catalogs: CatalogPlacement,
    wal: WalOptions,
    compactor: CompactorOptions,
    pool: Arc<Semaphore>,
    open: Mutex<HashMap<AccountId, Running>>,
}

impl Pipelines {
    /// A registry configured from `config`; opens nothing yet.
    pub fn new(config: &Config, extensions: Extensions) -> Self {
        let w = &config.wal;
        let c = &config.compactor;
        Self {
            extensions,
            settings: config.duckdb.instance_settings(),
            storage_root: config.storage.local_path.clone(),
            catalogs: CatalogPlacement::from_config(config),
            wal: WalOptions {
                segment_size_bytes: w.segment_size_bytes,
                max_record_bytes: w.max_record_bytes,
                max_uncompacted_bytes: w.max_uncompacted_bytes,
                max_inflight_bytes: w.max_inflight_bytes,
                max_batch_bytes: w.max_batch_bytes,
                durability: match w.durability {
                    WalDurability::Fsync => Durability::Fsync,
                    WalDurability::Batch => Durability::Batch { window_ms: w.batch_window_ms },
                    WalDurability::None => Durability::None,
                },
                ..WalOptions::default()
            },
            compactor: CompactorOptions {
                flush_interval_ms: c.flush_interval_ms,
                flush_threshold_bytes: c.flush_threshold_bytes,
                max_flush_bytes: c.max_flush_bytes,
                maintenance_interval_ms: c.maintenance_interval_ms,
                snapshot_retention_ms: c.snapshot_retention_hours.saturating_mul(3_600_000),
                file_cleanup_grace_ms: c.file_cleanup_grace_ms,
                ..CompactorOptions::default()
            },
            pool: Arc::new(Semaphore::new(c.max_concurrent_flushes as usize)),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The account's pipeline, opened (and its loop started) on first use.
    pub async fn get(&self, account: &Account) -> Result<Arc<AccountCompactor>, CompactorError> {
        let mut open = self.open.lock().await;
        if let Some(r) = open.get(&account.id) {
            return Ok(r.compactor.clone());
        }
        let layout = AccountLayout::new(&self.storage_root, &account.id);
        // Uploads in `incoming/` were never acknowledged, and none can be in
        // flight before the pipeline opens (uploads open it first): a crash
        // left them; drop them.
        if let Ok(entries) = std::fs::read_dir(layout.incoming_dir()) {
            for e in entries.flatten() {
                let _ =
                    if e.path().is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
            }
        }
        let (ext, settings) = (self.extensions.clone(), self.settings);
        let catalog = layout.catalog(&self.catalogs);
        // Catalogs created before WAL journal mode was the rule.
        crate::accounts::layout::catalog_journal_mode(&catalog, self.catalogs.sqlite_wal()).await?;
        let wal = WalOptions { metrics_label: account.id.to_string(), ..self.wal.clone() };
        let opts = CompactorOptions {
            quarantine_dir: layout.root().join("quarantine"),
            scratch_dir: layout.scratch_dir(),
            staged_dir: layout.staged_dir(),
            metrics_label: account.id.to_string(),
            ..self.compactor.clone()
        };
        let (compactor, report) = tokio::task::spawn_blocking(move || {
            AccountCompactor::open(&ext, &settings, &catalog, &layout.wal_dir(), wal, opts)
        })
        .await
        .map_err(|_| CompactorError::Stopped)??;
        if !report.corrupt.is_empty() {
            tracing::error!(account = %account.name, corrupt = ?report.corrupt, "write-ahead log damage found at open");
        }
        let compactor = Arc::new(compactor);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(compactor.clone().run(self.pool.clone(), stop_rx));
        open.insert(account.id.clone(), Running { compactor: compactor.clone(), stop, task });
        Ok(compactor)
    }

    /// Stops an account's loop after a last flush (before deleting it).
    pub async fn close(&self, id: &AccountId) {
        let running = self.open.lock().await.remove(id);
        if let Some(r) = running {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }

    /// Stops every loop after a last flush, waiting at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let all: Vec<Running> = self.open.lock().await.drain().map(|(_, r)| r).collect();
        for r in &all {
            let _ = r.stop.send(true);
        }
        let wait = async {
            for r in all {
                let _ = r.task.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!("compactors did not finish their last flush in time; the log keeps the rest");
        }
    }
}

//! `duckpond api serve`.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Subcommand;
use duckpond_compactor::Extensions;

use crate::accounts::AccountService;
use crate::config::{FlagOverrides, Home};
use crate::ingest::rate::IngestRate;
use crate::notebooks::backend::{instance_id, Backend};
use crate::notebooks::sessions::SessionManager;
use crate::pipelines::Pipelines;
use crate::query::exec::Admission;
use crate::query::Engines;
use crate::security::connections::ConnectionLimits;
use crate::security::throttle::AuthThrottle;
use crate::server::{self, AppState};
use crate::telemetry;
use tokio::sync::Semaphore;

/// API server commands.
#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Serve the HTTP API until SIGTERM/SIGINT.
    Serve {
        /// Bind address (overrides server.host).
        #[arg(long)]
        host: Option<String>,
        /// Port (overrides server.port; 0 picks a free one).
        #[arg(long)]
        port: Option<u16>,
    },
}

pub async fn run(home: &Home, command: ApiCommand) -> anyhow::Result<()> {
    let ApiCommand::Serve { host, port } = command;
    // Nothing running as our user without our privileges may read
    // /proc/<our pid>/ (environ, memory) or ptrace us; notebook sessions
    // are further contained (docs/ARCHITECTURE.md, notebooks/backend).
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let (config, meta) = super::connect(home, &FlagOverrides { host, port }).await?;
    super::require_current_schema(&meta).await?;
    if let Some(admin_key) = config.admin_api_key() {
        crate::security::redact::register_secret(admin_key);
    }
    // Database passwords travel in connection strings (the catalog's also
    // to query workers): never in a log line or reply.
    for url in [&config.database.url, &config.storage.catalog_postgres_url] {
        if let Some(password) = crate::security::redact::password_of(url) {
            crate::security::redact::register_secret(password);
        }
    }
    crate::server::error::set_private_paths(&[
        &home.dir,
        &config.storage.local_path,
        &config.duckdb.extension_directory,
        &config.notebooks.python_env,
    ]);
    let extensions = Extensions::locate(&config.duckdb.extension_directory)?;
    let settings = config.duckdb.instance_settings();
    let pipelines = Arc::new(Pipelines::new(&config, extensions.clone()));
    let engines = Arc::new(Engines::new(&config, extensions.clone()).context("preparing the query workers")?);
    engines.reap_idle_workers();
    let conversions = Arc::new(Semaphore::new(config.limits.max_concurrent_conversions as usize));
    let engine = tokio::task::spawn_blocking(move || extensions.open_instance(&settings))
        .await?
        .context("starting DuckDB with the configured extensions")?;
    let accounts = AccountService::new(meta.clone(), &config);
    // Open every account's pipeline now: records a crash left in a log are
    // committed without waiting for the next write.
    for account in accounts.list().await? {
        pipelines
            .get(&account)
            .await
            .with_context(|| format!("opening the write-ahead log and lake of account {}", account.name))?;
    }
    // Sessions of a previous run (kill -9, crash) are found by what they
    // left (pid files, cgroups, container labels) and removed first.
    let run_dir = config.storage.local_path.join("run").join("notebooks");
    let instance = instance_id(&config.storage.local_path);
    let backend = Backend::new(&config.notebooks, run_dir, instance)
        .await
        .with_context(|| format!("starting the {:?} notebook backend", config.notebooks.backend))?;
    let notebooks = SessionManager::new(config.notebooks.clone(), backend)?;
    notebooks.sweep_orphans().await;
    notebooks.spawn_monitor();
    tracing::info!(backend = notebooks.backend_name(), limits = %notebooks.limits_in_force(), "notebook sessions");
    let config = Arc::new(config);
    let state = AppState {
        config: config.clone(),
        accounts,
        engine: Arc::new(Mutex::new(engine)),
        metrics: telemetry::metrics_handle(),
        pipelines,
        engines,
        ingest_rate: Arc::new(IngestRate::default()),
        conversions,
        admission: Arc::new(Admission::default()),
        prometheus: Arc::default(),
        notebooks,
        proxy_client: crate::notebooks::proxy::http_client(),
        notebook_names: Arc::default(),
        auth_throttle: Arc::new(AuthThrottle::new(&config.security)),
        connections: ConnectionLimits::new(&config.security),
        headroom: {
            let h = crate::accounts::headroom::Headroom::hold(&config.storage.local_path, config.storage.reserve_bytes);
            h.watch();
            h
        },
    };
    server::serve(state).await?;
    meta.close().await;
    Ok(())
}

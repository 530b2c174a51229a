//! Where a session's marimo server runs: a local process tree
//! ([`process`], limited by a [`cgroup`] where the host allows) or a Docker
//! container ([`docker`]). Both serve marimo on a loopback port with a
//! per-session token and are found again after a daemon crash by what they
//! leave behind (a pid file or container labels).

pub mod cgroup;
pub mod docker;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest;

use crate::config::{NotebookBackend, NotebooksConfig};

/// Everything a backend needs to launch one session.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Unique id of this session (labels, cgroup and file names).
    pub session_id: String,
    /// The owning account's id.
    pub account_id: String,
    /// The notebook's id.
    pub notebook_id: String,
    /// Host directory holding `notebook.py` (writable by an edit session,
    /// read-only to a view session).
    pub notebook_dir: PathBuf,
    /// Editor (`marimo edit`) or read-only view (`marimo run`).
    pub mode: crate::notebooks::SessionMode,
    /// The account's root directory (the session reads its lake from here).
    pub account_root: PathBuf,
    /// `ducklake:sqlite:<path>` of the account's catalog, as seen on the
    /// host; None when the catalog is not reachable from a notebook.
    pub catalog_sqlite: Option<PathBuf>,
    /// The lake's data directory on the host.
    pub data_path: PathBuf,
    /// Loopback port marimo listens on.
    pub port: u16,
    /// marimo's auth token (never shown to the user: the proxy injects it).
    pub token: String,
    /// marimo's `--base-url`.
    pub base_url: String,
}

/// Resource caps of every session, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory cap.
    pub memory_limit_mb: u64,
    /// CPU cap in cores.
    pub cpu_limit: f64,
    /// Process cap.
    pub pids_limit: u32,
    /// Docker's /dev/shm.
    pub shm_size_mb: u64,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
}

impl Limits {
    /// From `notebooks:`.
    pub fn from_config(c: &NotebooksConfig) -> Self {
        Self {
            memory_limit_mb: c.memory_limit_mb,
            cpu_limit: c.cpu_limit,
            pids_limit: c.pids_limit,
            shm_size_mb: c.shm_size_mb,
            stop_grace: Duration::from_millis(c.stop_grace_period_ms),
        }
    }
}

/// A launched session, as its backend knows it.
#[derive(Debug)]
pub enum Handle {
    /// A local process tree.
    Process(Box<process::ProcessHandle>),
    /// A container.
    Docker(docker::ContainerHandle),
}

/// The configured backend.
pub enum Backend {
    /// Local processes.
    Process(process::ProcessBackend),
    /// Docker containers.
    Docker(docker::DockerBackend),
}

impl Backend {
    /// Builds the configured backend. `run_dir` holds its runtime state
    /// (pid files, session homes); `instance` tells this daemon's sessions
    /// from another daemon's on the same host.
    pub async fn new(config: &NotebooksConfig, run_dir: PathBuf, instance: String) -> anyhow::Result<Self> {
        let limits = Limits::from_config(config);
        Ok(match config.backend {
            NotebookBackend::Process => {
                Backend::Process(process::ProcessBackend::new(config, limits, run_dir, instance)?)
            }
            NotebookBackend::Docker => {
                Backend::Docker(docker::DockerBackend::new(config, limits, run_dir, instance).await?)
            }
        })
    }

    /// `process` or `docker`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Process(_) => "process",
            Backend::Docker(_) => "docker",
        }
    }

    /// How sessions are limited on this host, for logs and the API.
    pub fn limits_in_force(&self) -> String {
        match self {
            Backend::Process(p) => p.limits_in_force(),
            Backend::Docker(_) => "docker: memory, cpu, pids".into(),
        }
    }

    /// Starts a session's server (not waiting for it to be ready).
    pub async fn launch(&self, spec: &LaunchSpec) -> anyhow::Result<Handle> {
        match self {
            Backend::Process(p) => p.launch(spec).await.map(|h| Handle::Process(Box::new(h))),
            Backend::Docker(d) => d.launch(spec).await.map(Handle::Docker),
        }
    }

    /// Why the session is gone (None while it runs).
    pub async fn exit_reason(&self, handle: &Handle) -> Option<String> {
        match (self, handle) {
            (Backend::Process(p), Handle::Process(h)) => p.exit_reason(h),
            (Backend::Docker(d), Handle::Docker(h)) => d.exit_reason(h).await,
            _ => Some("handle of another backend".into()),
        }
    }

    /// Stops the session and removes everything it left (SIGTERM, then
    /// SIGKILL after the grace period).
    pub async fn stop(&self, handle: &Handle) {
        match (self, handle) {
            (Backend::Process(p), Handle::Process(h)) => p.stop(h).await,
            (Backend::Docker(d), Handle::Docker(h)) => d.stop(h).await,
            _ => {}
        }
    }

    /// Removes sessions a previous run of this daemon left behind (after a
    /// crash or kill -9). Returns how many were found.
    pub async fn sweep_orphans(&self) -> usize {
        match self {
            Backend::Process(p) => p.sweep_orphans(),
            Backend::Docker(d) => d.sweep_orphans().await,
        }
    }

    /// Releases the backend's own resources once every session is stopped.
    pub fn close(&self) {
        if let Backend::Process(p) = self {
            p.close();
        }
    }

    /// The last lines of the session's server output, for failure reasons.
    pub async fn output_tail(&self, handle: &Handle) -> String {
        match (self, handle) {
            (Backend::Process(p), Handle::Process(h)) => p.output_tail(h),
            (Backend::Docker(d), Handle::Docker(h)) => d.output_tail(h).await,
            _ => String::new(),
        }
    }
}

/// A short stable id of a DuckPond home (its storage path), so two daemons
/// on one host never sweep each other's sessions.
pub fn instance_id(storage_root: &std::path::Path) -> String {
    let digest = sha2::Sha256::digest(storage_root.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

/// Lines of server output kept in a failure reason.
pub const OUTPUT_TAIL_LINES: usize = 15;

/// The last `OUTPUT_TAIL_LINES` lines of `text`.
pub fn tail_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n")
}

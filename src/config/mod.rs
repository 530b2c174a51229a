//! Daemon configuration: `$DUCKPOND_HOME/config.yaml`, overridden by
//! `DUCKPOND_<SECTION>__<FIELD>` environment variables, overridden by flags.
//!
//! Every struct denies unknown fields so a typo is an error naming the field,
//! never a silently ignored setting. The commented template written by
//! `duckpond init` lives next to this file (`template.yaml`) and a test checks
//! that it parses to exactly [`Config::default`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The commented configuration file `duckpond init` writes.
pub const TEMPLATE_YAML: &str = include_str!("template.yaml");

/// Environment variable naming the DuckPond home directory.
pub const HOME_ENV: &str = "DUCKPOND_HOME";
/// Prefix of configuration overrides (`DUCKPOND_SERVER__PORT`).
pub const ENV_PREFIX: &str = "DUCKPOND_";
/// Separator between section and field in an override's name.
pub const ENV_SEPARATOR: &str = "__";

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The whole configuration. Sections follow the original product description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Metadata database (accounts, keys).
    pub database: DatabaseConfig,
    /// Where account data lives.
    pub storage: StorageConfig,
    /// DuckDB engine settings.
    pub duckdb: DuckDbConfig,
    /// Notebook sessions.
    pub notebooks: NotebooksConfig,
    /// Limits and per-account quota defaults.
    pub limits: LimitsConfig,
    /// Each account's write-ahead log.
    pub wal: WalConfig,
    /// Each account's compactor (log -> DuckLake).
    pub compactor: CompactorConfig,
    /// Prometheus remote write / read.
    pub prometheus: PrometheusConfig,
    /// What every front door enforces: revocation, failed-authentication
    /// throttling, connection caps.
    pub security: SecurityConfig,
}

/// Shortest admin key accepted: 32 characters, as `duckpond admin-key`
/// (or `openssl rand -hex 32`) makes them.
pub const ADMIN_KEY_MIN_CHARS: usize = 32;

/// `security:` section. Applies to every listener the daemon has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// A file holding the admin key (first line), read at start; keeps the
    /// key out of the daemon's environment. Overrides `server.admin_api_key`.
    pub admin_api_key_file: PathBuf,
    /// Open uploads, streams and websockets re-check their key at least
    /// this often (a revocation through this daemon's API is seen at once;
    /// one made by the CLI or another process within this interval).
    pub revocation_check_interval_ms: u64,
    /// Window over which failed authentications are counted.
    pub auth_failure_window_ms: u64,
    /// Failed authentications from one client address within the window
    /// after which that address gets 429 until the window has passed.
    pub max_auth_failures_per_client: u32,
    /// Failed authentications naming one key id within the window after
    /// which that key id is refused (429) from every address.
    pub max_auth_failures_per_key: u32,
    /// Peers whose `X-Forwarded-For` names the client (a reverse proxy in
    /// front of DuckPond); anyone else's header is ignored. IP addresses.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// A connection must finish sending a request's headers within this.
    pub header_read_timeout_ms: u64,
    /// Most open connections from one client address.
    pub max_connections_per_client: u32,
    /// Most open connections in all.
    pub max_connections: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            admin_api_key_file: PathBuf::new(),
            revocation_check_interval_ms: 1_000,
            auth_failure_window_ms: 60_000,
            max_auth_failures_per_client: 20,
            max_auth_failures_per_key: 20,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 10_000,
            max_connections_per_client: 256,
            max_connections: 4_096,
        }
    }
}

/// `prometheus:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Largest snappy-compressed remote-write body.
    pub max_compressed_bytes: u64,
    /// Largest decoded remote-write body (the reference receiver's 32 MiB).
    pub max_decoded_bytes: u64,
    /// Most labels on one series.
    pub max_labels_per_series: u32,
    /// Longest label name or value.
    pub max_label_bytes: u32,
    /// Most samples one remote-read query returns (400 beyond).
    pub max_read_samples: u64,
    /// A sample older than its series' newest by at most this much is
    /// stored (out of order); older ones are refused with 400. As
    /// Prometheus's `out_of_order_time_window`; each series keeps the value
    /// bits of its samples in this window in memory.
    pub out_of_order_window_ms: u64,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 16 * MIB,
            max_decoded_bytes: 32 * MIB,
            max_labels_per_series: 128,
            max_label_bytes: 4096,
            max_read_samples: 5_000_000,
            out_of_order_window_ms: 300_000,
        }
    }
}

/// When a WAL append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalDurability {
    /// fdatasync before acknowledging (default).
    Fsync,
    /// Wait up to `batch_window_ms` for more appends, then fdatasync, then acknowledge.
    Batch,
    /// Never fsync. Benchmarks only: acknowledged writes can be lost on power failure.
    None,
}

/// `wal:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Size at which a segment file is closed and a new one started.
    pub segment_size_bytes: u64,
    /// Largest single record (one ingest batch).
    pub max_record_bytes: u64,
    /// Appends get 429 while this many bytes wait to be compacted.
    pub max_uncompacted_bytes: u64,
    /// Appends get 429 while this many bytes wait for the log writer.
    pub max_inflight_bytes: u64,
    /// Most bytes one write + fsync carries.
    pub max_batch_bytes: u64,
    /// Durability mode.
    pub durability: WalDurability,
    /// Group-commit window of the `batch` mode.
    pub batch_window_ms: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 * MIB,
            max_record_bytes: 32 * MIB,
            max_uncompacted_bytes: GIB,
            max_inflight_bytes: 256 * MIB,
            max_batch_bytes: 16 * MIB,
            durability: WalDurability::Fsync,
            batch_window_ms: 2,
        }
    }
}

/// `compactor:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactorConfig {
    /// Flush each account's log at least this often while records wait.
    pub flush_interval_ms: u64,
    /// Flush early once this many bytes wait.
    pub flush_threshold_bytes: u64,
    /// Largest slice of the log one flush reads.
    pub max_flush_bytes: u64,
    /// Flushes (of different accounts) running at once.
    pub max_concurrent_flushes: u32,
    /// Interval of maintenance (merge, expire, cleanup) per account.
    pub maintenance_interval_ms: u64,
    /// Snapshots are kept (time travel) this long.
    pub snapshot_retention_hours: u64,
    /// Files DuckLake no longer needs are deleted this long after it
    /// scheduled them, so queries already reading them finish (keep above
    /// `limits.query_timeout_ms`).
    pub file_cleanup_grace_ms: u64,
    /// Longest a `?wait=committed` write waits for its snapshot.
    pub commit_wait_timeout_ms: u64,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 1_000,
            flush_threshold_bytes: 64 * MIB,
            max_flush_bytes: 256 * MIB,
            max_concurrent_flushes: 2,
            maintenance_interval_ms: 3_600_000,
            snapshot_retention_hours: 168,
            file_cleanup_grace_ms: 600_000,
            commit_wait_timeout_ms: 30_000,
        }
    }
}

/// `server:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API binds to.
    pub host: String,
    /// Port the HTTP API binds to; 0 picks a free port (printed at start).
    pub port: u16,
    /// Key guarding `/api/admin/*`; empty disables the admin API.
    pub admin_api_key: String,
    /// Largest JSON request body accepted by non-upload routes.
    pub max_request_body_bytes: u64,
    /// Time allowed for a non-streaming request before it is answered 408.
    pub request_timeout_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_period_ms: u64,
    /// Uploads and streams fail (408) after this long without a body chunk.
    pub body_read_timeout_ms: u64,
    /// Lifetime of the web UI's session cookie.
    pub session_cookie_max_age_seconds: u64,
    /// Mark the session cookie `Secure` even when no proxy says the
    /// browser used https (set it when TLS terminates in front of DuckPond).
    pub secure_cookies: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            admin_api_key: String::new(),
            max_request_body_bytes: MIB,
            request_timeout_ms: 30_000,
            shutdown_grace_period_ms: 10_000,
            body_read_timeout_ms: 60_000,
            session_cookie_max_age_seconds: 12 * 3600,
            secure_cookies: false,
        }
    }
}

/// `database:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:<path>` or `postgresql://...`.
    pub url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// Time allowed to obtain a connection.
    pub connect_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: "sqlite:metadata.db".into(), max_connections: 8, connect_timeout_ms: 5_000 }
    }
}

/// Storage backends. Only `local` is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The local filesystem under `storage.local_path`.
    Local,
}

/// Where accounts' DuckLake catalogs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogBackend {
    /// A SQLite file in each account's directory (embedded default).
    Sqlite,
    /// One schema per account in the PostgreSQL database `catalog_postgres_url`.
    Postgres,
}

/// `storage:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Backend for new accounts.
    pub default_backend: StorageBackend,
    /// Root of account data (relative paths resolve against the home).
    pub local_path: PathBuf,
    /// Where accounts' DuckLake catalogs live.
    pub catalog_backend: CatalogBackend,
    /// PostgreSQL database for `catalog_backend: postgres` (libpq string or
    /// postgresql:// URL); each account gets the schema `duckpond_<id>`.
    pub catalog_postgres_url: String,
    /// Disk space held back in `local_path` and let go when the disk fills,
    /// so flushes of acknowledged writes and catalog reads can finish;
    /// writes answer 507 until free space is twice this again. 0: none.
    pub reserve_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            default_backend: StorageBackend::Local,
            local_path: "data".into(),
            catalog_backend: CatalogBackend::Sqlite,
            catalog_postgres_url: String::new(),
            reserve_bytes: 64 << 20,
        }
    }
}

/// `duckdb:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DuckDbConfig {
    /// Directory holding `v1.5.5/<platform>/<name>.duckdb_extension`.
    pub extension_directory: PathBuf,
    /// Per-account DuckDB `memory_limit`.
    pub memory_limit_mb: u64,
    /// Per-account DuckDB `threads`.
    pub threads: u32,
    /// An account's query worker process (its SQL runs there, so a native
    /// crash stops only that process) exits after this long without a
    /// query; the next query starts it again (some 100 ms).
    pub query_worker_idle_timeout_ms: u64,
    /// Longest wait for a query worker to open its instance and listen
    /// (a query waiting for it gets 503 past this).
    pub query_worker_start_timeout_ms: u64,
}

impl DuckDbConfig {
    /// Memory and threads of each DuckDB instance the daemon opens.
    pub fn instance_settings(&self) -> duckpond_compactor::InstanceSettings {
        duckpond_compactor::InstanceSettings { memory_limit_mb: self.memory_limit_mb, threads: self.threads }
    }
}

impl Default for DuckDbConfig {
    fn default() -> Self {
        Self {
            extension_directory: "extensions".into(),
            memory_limit_mb: 4096,
            threads: 4,
            query_worker_idle_timeout_ms: 300_000,
            query_worker_start_timeout_ms: 60_000,
        }
    }
}

/// Where notebook sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotebookBackend {
    /// Local marimo processes (embedded default).
    Process,
    /// Docker containers through the local engine.
    Docker,
}

/// `notebooks:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotebooksConfig {
    /// Session backend.
    pub backend: NotebookBackend,
    /// Image for the docker backend (built locally, no registry).
    pub docker_image: String,
    /// Memory cap of one session.
    pub memory_limit_mb: u64,
    /// CPU cap of one session, in cores.
    pub cpu_limit: f64,
    /// Idle time after which a session is stopped.
    pub session_timeout_seconds: u64,
    /// Interval between session health checks.
    pub health_check_interval_seconds: u64,
    /// Time a session may take to become ready.
    pub spawn_timeout_seconds: u64,
    /// Inclusive loopback port range for sessions.
    pub port_range: PortRange,
    /// Process limit of one session (cgroup pids controller / Docker).
    pub pids_limit: u32,
    /// /dev/shm of a Docker session (marimo's kernels need it).
    pub shm_size_mb: u64,
    /// Largest notebook file accepted by the API.
    pub max_notebook_bytes: u64,
    /// Time a stopping session gets between SIGTERM and SIGKILL.
    pub stop_grace_period_ms: u64,
    /// Python environment of the `process` backend (a venv with marimo,
    /// duckdb and the ducklake extension; built by `.ci/notebook-env.sh`).
    /// Relative paths are below the home directory.
    pub python_env: PathBuf,
    /// Where the `process` backend creates session cgroups (cgroup v2 or
    /// the v1 memory/cpu/pids hierarchies). Empty: no cgroup limits.
    pub cgroup_root: PathBuf,
    /// Run `process` sessions in a bubblewrap sandbox (own user, mount,
    /// pid and network namespaces; only the account's lake, the notebook's
    /// directory and the Python environment visible). `false` runs them as
    /// the daemon's user with everything it can reach: only for a
    /// single-user machine.
    pub sandbox: bool,
    /// The bubblewrap binary of the sandbox.
    pub bwrap_path: PathBuf,
}

impl Default for NotebooksConfig {
    fn default() -> Self {
        Self {
            backend: NotebookBackend::Process,
            docker_image: "duckpond-notebook:latest".into(),
            memory_limit_mb: 2048,
            cpu_limit: 2.0,
            session_timeout_seconds: 3600,
            health_check_interval_seconds: 30,
            spawn_timeout_seconds: 60,
            port_range: PortRange { first: 10_000, last: 10_099 },
            pids_limit: 512,
            shm_size_mb: 256,
            max_notebook_bytes: 4 * 1024 * 1024,
            stop_grace_period_ms: 3_000,
            python_env: "notebook-env".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            sandbox: true,
            bwrap_path: "/usr/bin/bwrap".into(),
        }
    }
}

/// An inclusive port range written `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port handed out.
    pub first: u16,
    /// Last port handed out (inclusive).
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("expected a port range like 10000-10099, got {s:?}");
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let first: u16 = a.trim().parse().map_err(|_| err())?;
        let last: u16 = b.trim().parse().map_err(|_| err())?;
        if first == 0 || first > last {
            return Err(err());
        }
        Ok(Self { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// `limits:` section: global limits and the quota defaults of accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest file an upload accepts.
    pub max_file_size_mb: u64,
    /// Deepest nesting accepted in any write (JSON, NDJSON, Parquet, Arrow),
    /// in Parquet definition levels: an object/struct counts 1, an
    /// array/list or map 2. Checked while the body streams, before DuckDB
    /// sees it (see `duckpond_schema::nesting` for why; at most 250).
    pub max_nesting_depth: u32,
    /// Uploads converted to Parquet at once; more wait their turn.
    pub max_concurrent_conversions: u32,
    /// Size of the log records an Arrow IPC stream is cut into.
    pub stream_record_target_bytes: u64,
    /// A query running longer is interrupted (408).
    pub query_timeout_ms: u64,
    /// How long a query waits for a slot of its account before 429.
    pub query_queue_timeout_ms: u64,
    /// JSON query results stop (truncated) at this size.
    pub max_json_result_bytes: u64,
    /// Default storage quota.
    pub default_max_storage_gb: u64,
    /// Default number of concurrent queries.
    pub default_max_concurrent_queries: u32,
    /// Default ingest rate.
    pub default_max_ingest_bytes_per_s: u64,
    /// Default number of concurrent notebook sessions.
    pub default_max_notebook_sessions: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_file_size_mb: 500,
            max_nesting_depth: 32,
            max_concurrent_conversions: 2,
            stream_record_target_bytes: 4 * MIB,
            query_timeout_ms: 30_000,
            query_queue_timeout_ms: 2_000,
            max_json_result_bytes: 64 * MIB,
            default_max_storage_gb: 10,
            default_max_concurrent_queries: 5,
            default_max_ingest_bytes_per_s: 100 * MIB,
            default_max_notebook_sessions: 2,
        }
    }
}

impl LimitsConfig {
    /// `max_file_size_mb` in bytes.
    pub fn max_file_size_bytes(&self) -> u64 {
        self.max_file_size_mb.saturating_mul(MIB)
    }

    /// `default_max_storage_gb` in bytes.
    pub fn default_max_storage_bytes(&self) -> u64 {
        self.default_max_storage_gb.saturating_mul(GIB)
    }
}

/// Errors loading or validating configuration. Each names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML, an environment override or a flag did not fit the schema.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    /// A value parsed but is not allowed.
    #[error("invalid configuration: `{field}`: {message}")]
    Value {
        /// Dotted field name, e.g. `server.port`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The home directory could not be determined.
    #[error("cannot determine the DuckPond home: set {HOME_ENV} or HOME")]
    NoHome,
}

/// Settings given on the command line; they win over file and environment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlagOverrides {
    /// `--host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `--port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The resolved home directory and configuration file path.
#[derive(Debug, Clone)]
pub struct Home {
    /// `$DUCKPOND_HOME` or `~/.duckpond`.
    pub dir: PathBuf,
    /// The configuration file (default `<home>/config.yaml`).
    pub config_file: PathBuf,
}

impl Home {
    /// Resolves the home from an explicit flag, `$DUCKPOND_HOME`, or `~/.duckpond`.
    pub fn resolve(dir: Option<PathBuf>, config_file: Option<PathBuf>) -> Result<Self, ConfigError> {
        let dir = match dir.or_else(|| std::env::var_os(HOME_ENV).map(PathBuf::from)) {
            Some(d) => d,
            None => dirs::home_dir().ok_or(ConfigError::NoHome)?.join(".duckpond"),
        };
        let dir = absolute(&dir);
        let config_file = config_file.map(|f| absolute(&f)).unwrap_or_else(|| dir.join("config.yaml"));
        Ok(Self { dir, config_file })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Config {
    /// Loads defaults, then the file (if it exists), then the environment,
    /// then flags; validates; resolves relative paths against the home.
    pub fn load(home: &Home, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        Self::load_with_env(home, flags, Env::prefixed(ENV_PREFIX))
    }

    fn load_with_env(home: &Home, flags: &FlagOverrides, env: Env) -> Result<Self, ConfigError> {
        // Only SECTION__FIELD variables are configuration; DUCKPOND_HOME,
        // DUCKPOND_API_KEY and friends are read elsewhere.
        let env = env.filter(|k| k.as_str().contains(ENV_SEPARATOR)).split(ENV_SEPARATOR);
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if home.config_file.exists() {
            fig = fig.merge(Yaml::file_exact(&home.config_file));
        }
        let mut server_flags = serde_json::Map::new();
        if let Some(h) = &flags.host {
            server_flags.insert("host".into(), h.clone().into());
        }
        if let Some(p) = flags.port {
            server_flags.insert("port".into(), p.into());
        }
        fig = fig.merge(env);
        if !server_flags.is_empty() {
            fig = fig.merge(Serialized::default("server", server_flags));
        }
        let mut config: Config = fig.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        config.resolve_paths(&home.dir);
        config.load_admin_key_file()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let value = |field, message: &str| Err(ConfigError::Value { field, message: message.to_string() });
        let url = self.database.url.as_str();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return value("database.url", "must start with sqlite:, postgres:// or postgresql://");
        }
        if self.database.max_connections == 0 {
            return value("database.max_connections", "must be at least 1");
        }
        if self.server.host.trim().is_empty() {
            return value("server.host", "must not be empty");
        }
        if self.server.max_request_body_bytes == 0 {
            return value("server.max_request_body_bytes", "must be at least 1");
        }
        if self.server.request_timeout_ms == 0 {
            return value("server.request_timeout_ms", "must be at least 1");
        }
        if self.duckdb.threads == 0 {
            return value("duckdb.threads", "must be at least 1");
        }
        if self.duckdb.query_worker_idle_timeout_ms == 0 || self.duckdb.query_worker_start_timeout_ms == 0 {
            return value(
                "duckdb.query_worker_idle_timeout_ms",
                "and query_worker_start_timeout_ms must be at least 1",
            );
        }
        if self.duckdb.memory_limit_mb < 64 {
            return value("duckdb.memory_limit_mb", "must be at least 64");
        }
        if !(self.notebooks.cpu_limit.is_finite() && self.notebooks.cpu_limit > 0.0) {
            return value("notebooks.cpu_limit", "must be a positive number of cores");
        }
        if self.notebooks.memory_limit_mb < 128 {
            return value("notebooks.memory_limit_mb", "must be at least 128");
        }
        if self.notebooks.pids_limit < 16 {
            return value("notebooks.pids_limit", "must be at least 16");
        }
        if self.notebooks.spawn_timeout_seconds == 0 || self.notebooks.health_check_interval_seconds == 0 {
            return value("notebooks.spawn_timeout_seconds", "and health_check_interval_seconds must be at least 1");
        }
        if self.notebooks.session_timeout_seconds == 0 {
            return value("notebooks.session_timeout_seconds", "must be at least 1");
        }
        if self.notebooks.max_notebook_bytes == 0 {
            return value("notebooks.max_notebook_bytes", "must be at least 1");
        }
        if !(1..=250).contains(&self.limits.max_nesting_depth) {
            return value("limits.max_nesting_depth", "must be between 1 and 250 (DuckDB reads 255 levels at most)");
        }
        if self.limits.max_file_size_mb == 0 {
            return value("limits.max_file_size_mb", "must be at least 1");
        }
        if self.storage.catalog_backend == CatalogBackend::Postgres && self.storage.catalog_postgres_url.is_empty() {
            return value("storage.catalog_postgres_url", "is required when storage.catalog_backend is postgres");
        }
        if self.wal.segment_size_bytes < 4096 {
            return value("wal.segment_size_bytes", "must be at least 4096");
        }
        if self.wal.max_record_bytes == 0 || self.wal.max_record_bytes > self.wal.max_inflight_bytes {
            return value("wal.max_record_bytes", "must be positive and at most wal.max_inflight_bytes");
        }
        if self.limits.max_concurrent_conversions == 0 {
            return value("limits.max_concurrent_conversions", "must be at least 1");
        }
        if self.limits.stream_record_target_bytes == 0
            || self.limits.stream_record_target_bytes >= self.wal.max_record_bytes
        {
            return value("limits.stream_record_target_bytes", "must be positive and below wal.max_record_bytes");
        }
        if self.limits.query_timeout_ms == 0 {
            return value("limits.query_timeout_ms", "must be at least 1");
        }
        if self.server.body_read_timeout_ms == 0 {
            return value("server.body_read_timeout_ms", "must be at least 1");
        }
        if self.compactor.flush_interval_ms == 0 {
            return value("compactor.flush_interval_ms", "must be at least 1");
        }
        if self.compactor.max_concurrent_flushes == 0 {
            return value("compactor.max_concurrent_flushes", "must be at least 1");
        }
        if self.limits.default_max_concurrent_queries == 0 {
            return value("limits.default_max_concurrent_queries", "must be at least 1");
        }
        let sec = &self.security;
        if sec.revocation_check_interval_ms == 0 || sec.auth_failure_window_ms == 0 || sec.header_read_timeout_ms == 0 {
            return value(
                "security.revocation_check_interval_ms",
                "auth_failure_window_ms and header_read_timeout_ms must be at least 1",
            );
        }
        if sec.max_auth_failures_per_client == 0 || sec.max_auth_failures_per_key == 0 {
            return value("security.max_auth_failures_per_client", "and max_auth_failures_per_key must be at least 1");
        }
        if sec.max_connections_per_client == 0 || sec.max_connections < sec.max_connections_per_client {
            return value(
                "security.max_connections_per_client",
                "must be at least 1 and at most security.max_connections",
            );
        }
        if let Some(key) = self.admin_api_key() {
            check_admin_key(key).map_err(|message| ConfigError::Value { field: "server.admin_api_key", message })?;
        }
        Ok(())
    }

    /// Reads `security.admin_api_key_file` into the admin key (start-up).
    pub fn load_admin_key_file(&mut self) -> Result<(), ConfigError> {
        if self.security.admin_api_key_file.as_os_str().is_empty() {
            return Ok(());
        }
        let path = &self.security.admin_api_key_file;
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Value {
            field: "security.admin_api_key_file",
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        let key = text.lines().next().unwrap_or_default().trim().to_string();
        check_admin_key(&key)
            .map_err(|message| ConfigError::Value { field: "security.admin_api_key_file", message })?;
        self.server.admin_api_key = key;
        Ok(())
    }

    fn resolve_paths(&mut self, home: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = home.join(&*p);
            }
        };
        resolve(&mut self.storage.local_path);
        resolve(&mut self.duckdb.extension_directory);
        resolve(&mut self.notebooks.python_env);
        if !self.security.admin_api_key_file.as_os_str().is_empty() {
            resolve(&mut self.security.admin_api_key_file);
        }
        if let Some(rest) = self.database.url.strip_prefix("sqlite:") {
            let rest = rest.trim_start_matches("//");
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut path = PathBuf::from(path);
            resolve(&mut path);
            let query = if query.is_empty() { String::new() } else { format!("?{query}") };
            self.database.url = format!("sqlite://{}{query}", path.display());
        }
    }

    /// The admin key, if the admin API is enabled (set in the file, the
    /// environment or `security.admin_api_key_file`).
    pub fn admin_api_key(&self) -> Option<&str> {
        Some(self.server.admin_api_key.as_str()).filter(|k| !k.is_empty())
    }
}

/// An admin key is long enough and printable: guessing it must be as hard
/// as guessing an account key's secret.
fn check_admin_key(key: &str) -> Result<(), String> {
    if key.chars().count() < ADMIN_KEY_MIN_CHARS || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "the admin key must be at least {ADMIN_KEY_MIN_CHARS} printable characters without spaces; \
             make one with `duckpond admin-key` (or `openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

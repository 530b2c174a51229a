//! Session lifecycle: start (port, launch, readiness with backoff), stop,
//! health checks, idle culling, orphan sweeps and shutdown.
//!
//! States: starting -> ready -> stopping -> stopped, or failed (with a
//! reason) from starting or ready. One session per notebook; the record of
//! a stopped or failed session stays until the next start so its reason can
//! be read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::backend::{Backend, Handle, LaunchSpec};
use super::ports::{PortLease, PortPool};
use super::{NotebookError, SessionKey};
use crate::accounts::AccountId;
use crate::config::NotebooksConfig;

/// Pause between readiness polls while a start is young (a poll is one
/// loopback GET; a coarse backoff here would add up to its own length to
/// every start).
const READY_POLL_FIRST_MS: u64 = 25;
/// After this long, polls back off (doubling) up to the maximum.
const READY_POLL_FAST_FOR_MS: u64 = 5_000;
/// Longest pause between readiness polls.
const READY_POLL_MAX_MS: u64 = 1_000;
/// Deadline of one health or connections request to a session.
const PROBE_TIMEOUT_MS: u64 = 2_000;
/// Consecutive failed health checks after which a session is failed.
const HEALTH_FAILURES_TO_FAIL: u32 = 3;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Launched, not answering yet.
    Starting,
    /// Serving; reachable through the proxy.
    Ready,
    /// Being stopped.
    Stopping,
    /// Not running.
    Stopped,
    /// Died or never became ready; see `reason`.
    Failed,
}

impl SessionState {
    /// Holds a port and counts against the account's session cap.
    fn is_live(self) -> bool {
        matches!(self, SessionState::Starting | SessionState::Ready | SessionState::Stopping)
    }
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionView {
    /// The notebook.
    pub notebook_id: String,
    /// State.
    pub state: SessionState,
    /// Why it failed or was stopped by the server, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the editor is served (through DuckPond's proxy), when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When it was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Last proxied request or websocket message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<DateTime<Utc>>,
    /// `process` or `docker`.
    pub backend: &'static str,
    /// Editor or read-only view.
    pub mode: super::SessionMode,
}

struct Inner {
    state: SessionState,
    reason: Option<String>,
    handle: Option<Arc<Handle>>,
    lease: Option<PortLease>,
    /// Keeps the account's SQLite catalog's `-wal` and `-shm` files in
    /// existence while the session runs (see [`catalog_keepalive`]).
    catalog: Option<sqlx::SqliteConnection>,
}

/// One session.
pub struct Session {
    key: SessionKey,
    id: String,
    token: String,
    port: u16,
    started_at: DateTime<Utc>,
    last_activity_ms: AtomicI64,
    /// Proxied requests and websockets open now.
    open: AtomicUsize,
    health_failures: AtomicU32,
    inner: Mutex<Inner>,
}

impl Session {
    /// The loopback port marimo listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// marimo's token, injected by the proxy.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.inner.lock().expect("session lock").state
    }

    /// Records proxied activity.
    pub fn touch(&self) {
        self.last_activity_ms.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Marks a proxied request or websocket open until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ConnectionGuard(self.clone())
    }

    fn view(&self, backend: &'static str) -> SessionView {
        let inner = self.inner.lock().expect("session lock");
        SessionView {
            notebook_id: self.key.notebook.to_string(),
            state: inner.state,
            reason: inner.reason.clone(),
            url: (inner.state == SessionState::Ready).then(|| format!("{}/", self.key.base_url())),
            started_at: Some(self.started_at),
            last_activity: Utc.timestamp_millis_opt(self.last_activity_ms.load(Ordering::Relaxed)).single(),
            backend,
            mode: self.key.mode,
        }
    }

    /// Moves a starting or ready session to `stopping` and hands back its
    /// backend handle (None while it is still being launched). None if it
    /// is not starting or ready: someone else is stopping it or it is over.
    fn begin_stop(&self, reason: Option<String>) -> Option<Option<Arc<Handle>>> {
        let mut inner = self.inner.lock().expect("session lock");
        if !matches!(inner.state, SessionState::Starting | SessionState::Ready) {
            return None;
        }
        inner.state = SessionState::Stopping;
        if reason.is_some() {
            inner.reason = reason;
        }
        Some(inner.handle.take())
    }

    /// Ends a stop once its server is gone: the port goes back to the pool
    /// only now, so no new session can be given a port still bound.
    fn settle(&self, to: SessionState) {
        let (lease, catalog) = {
            let mut inner = self.inner.lock().expect("session lock");
            inner.state = to;
            (inner.lease.take(), inner.catalog.take())
        };
        drop(lease);
        drop(catalog);
    }
}

/// Counts an open proxied connection.
pub struct ConnectionGuard(Arc<Session>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The daemon's sessions.
pub struct SessionManager {
    config: NotebooksConfig,
    backend: Backend,
    ports: Arc<PortPool>,
    /// Keyed by account and notebook: a session is only ever found by its
    /// owner, whatever ids other accounts have.
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    http: reqwest::Client,
}

impl SessionManager {
    /// A manager over `backend`. Call [`SessionManager::sweep_orphans`] and
    /// [`SessionManager::spawn_monitor`] before serving.
    pub fn new(config: NotebooksConfig, backend: Backend) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            // Sessions are on loopback; an environment proxy must not apply.
            .no_proxy()
            .timeout(Duration::from_millis(PROBE_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Self {
            ports: PortPool::new(config.port_range),
            config,
            backend,
            sessions: Mutex::new(HashMap::new()),
            http,
        }))
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// What limits sessions on this host.
    pub fn limits_in_force(&self) -> String {
        self.backend.limits_in_force()
    }

    /// Kills what a previous run left behind.
    pub async fn sweep_orphans(&self) -> usize {
        let n = self.backend.sweep_orphans().await;
        if n > 0 {
            tracing::warn!(sessions = n, "removed notebook sessions left by a previous run");
        }
        n
    }

    /// Live sessions of `account`.
    pub fn live_count(&self, account: &AccountId) -> u32 {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions.values().filter(|s| &s.key.account == account && s.state().is_live()).count() as u32
    }

    fn find(&self, key: &SessionKey) -> Option<Arc<Session>> {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions.get(key).cloned()
    }

    /// The session's view (`stopped` if there never was one).
    pub fn view(&self, key: &SessionKey) -> SessionView {
        match self.find(key) {
            Some(s) => s.view(self.backend.name()),
            None => SessionView {
                notebook_id: key.notebook.to_string(),
                state: SessionState::Stopped,
                reason: None,
                url: None,
                started_at: None,
                last_activity: None,
                backend: self.backend.name(),
                mode: key.mode,
            },
        }
    }

    /// The ready session the proxy may forward to.
    pub fn ready(&self, key: &SessionKey) -> Result<Arc<Session>, NotebookError> {
        let Some(s) = self.find(key) else {
            return Err(NotebookError::NotRunning(format!("notebook {} has no session; start it first", key.notebook)));
        };
        match s.state() {
            SessionState::Ready => Ok(s),
            SessionState::Starting => Err(NotebookError::Starting),
            other => Err(NotebookError::NotRunning(format!(
                "the session of notebook {} is {}; start it first",
                key.notebook,
                serde_json::to_value(other).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ))),
        }
    }

    /// Starts a session for `key` (or returns the live one) and returns its
    /// view and whether it was started by this call.
    pub fn start(
        self: &Arc<Self>,
        key: SessionKey,
        spec: impl FnOnce(&str, u16, &str) -> LaunchSpec,
        max_sessions: u32,
    ) -> Result<(SessionView, bool), NotebookError> {
        let session = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            if let Some(s) = sessions.get(&key) {
                if s.state().is_live() {
                    return Ok((s.view(self.backend.name()), false));
                }
            }
            let running =
                sessions.values().filter(|s| s.key.account == key.account && s.state().is_live()).count() as u32;
            if running >= max_sessions {
                return Err(NotebookError::SessionLimit { running });
            }
            let range = self.ports.range();
            let lease =
                self.ports.lease().ok_or(NotebookError::PortsExhausted { first: range.first, last: range.last })?;
            let session = Arc::new(Session {
                id: uuid::Uuid::new_v4().simple().to_string(),
                token: hex::encode(rand::random::<[u8; 24]>()),
                port: lease.port(),
                started_at: Utc::now(),
                last_activity_ms: AtomicI64::new(Utc::now().timestamp_millis()),
                open: AtomicUsize::new(0),
                health_failures: AtomicU32::new(0),
                inner: Mutex::new(Inner {
                    state: SessionState::Starting,
                    reason: None,
                    handle: None,
                    lease: Some(lease),
                    catalog: None,
                }),
                key: key.clone(),
            });
            sessions.insert(key.clone(), session.clone());
            session
        };
        metrics::counter!("duckpond_notebook_sessions_started_total").increment(1);
        let spec = spec(&session.id, session.port, &session.token);
        tracing::info!(notebook = %key.notebook, account = %key.account, port = session.port, session = %session.id, "starting notebook session");
        let view = session.view(self.backend.name());
        let this = self.clone();
        tokio::spawn(async move { this.bring_up(session, spec).await });
        Ok((view, true))
    }

    /// Waits until the session leaves `starting` or `timeout` passes.
    pub async fn wait_ready(&self, key: &SessionKey, timeout: Duration) -> SessionView {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let view = self.view(key);
            if view.state != SessionState::Starting || tokio::time::Instant::now() >= deadline {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_FIRST_MS)).await;
        }
    }

    async fn bring_up(&self, session: Arc<Session>, spec: LaunchSpec) {
        let started = std::time::Instant::now();
        if let Some(catalog) = &spec.catalog_sqlite {
            let keepalive = catalog_keepalive(catalog).await;
            session.inner.lock().expect("session lock").catalog = keepalive;
        }
        let handle = match self.backend.launch(&spec).await {
            Ok(h) => Arc::new(h),
            Err(e) => {
                if session.state() == SessionState::Stopping {
                    // Stopped while launching, and nothing was launched.
                    session.settle(SessionState::Stopped);
                } else {
                    self.fail(&session, format!("could not start: {e:#}")).await;
                }
                return;
            }
        };
        let still_starting = {
            let mut inner = session.inner.lock().expect("session lock");
            let starting = inner.state == SessionState::Starting;
            if starting {
                inner.handle = Some(handle.clone());
            }
            starting
        };
        if !still_starting {
            // Stopped while launching: the stopper left this to us.
            self.backend.stop(&handle).await;
            session.settle(SessionState::Stopped);
            return;
        }
        let deadline = started + Duration::from_secs(self.config.spawn_timeout_seconds);
        let mut pause = Duration::from_millis(READY_POLL_FIRST_MS);
        loop {
            if session.state() != SessionState::Starting {
                return;
            }
            if self.healthy(&session).await {
                {
                    let mut inner = session.inner.lock().expect("session lock");
                    if inner.state == SessionState::Starting {
                        inner.state = SessionState::Ready;
                    }
                }
                session.touch();
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                metrics::histogram!("duckpond_notebook_start_ms", "backend" => self.backend.name()).record(ms);
                tracing::info!(notebook = %session.key.notebook, ms = ms as u64, "notebook session ready");
                return;
            }
            if let Some(reason) = self.backend.exit_reason(&handle).await {
                let tail = self.backend.output_tail(&handle).await;
                self.fail(&session, with_output(format!("exited while starting: {reason}"), &tail)).await;
                return;
            }
            if std::time::Instant::now() >= deadline {
                let tail = self.backend.output_tail(&handle).await;
                let msg = format!(
                    "not ready within {} s (notebooks.spawn_timeout_seconds)",
                    self.config.spawn_timeout_seconds
                );
                self.fail(&session, with_output(msg, &tail)).await;
                return;
            }
            tokio::time::sleep(pause).await;
            if started.elapsed() > Duration::from_millis(READY_POLL_FAST_FOR_MS) {
                pause = (pause * 2).min(Duration::from_millis(READY_POLL_MAX_MS));
            }
        }
    }

    async fn healthy(&self, session: &Session) -> bool {
        let url = format!("http://127.0.0.1:{}{}/health", session.port, session.key.base_url());
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// marimo's count of connected editors (None if it does not answer).
    async fn marimo_connections(&self, session: &Session) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}{}/api/status/connections", session.port, session.key.base_url());
        let r = self.http.get(url).bearer_auth(&session.token).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v.get("active").and_then(|a| a.as_u64())
    }

    async fn fail(&self, session: &Session, reason: String) {
        // marimo prints its URL with the access token at start, and errors
        // name server paths: neither may reach the reason or the log.
        let reason = crate::security::redact::scrub(&reason);
        tracing::warn!(notebook = %session.key.notebook, account = %session.key.account, %reason, "notebook session failed");
        metrics::counter!("duckpond_notebook_sessions_failed_total").increment(1);
        // `stopping` until the server is gone: a start in the meantime must
        // not launch a second server on the same notebook directory.
        let Some(handle) = session.begin_stop(Some(reason)) else { return };
        // Only bring_up fails a session without a handle, and then nothing
        // is running.
        if let Some(h) = handle {
            self.backend.stop(&h).await;
        }
        session.settle(SessionState::Failed);
    }

    /// Stops the session of `key`; `reason` is recorded when the server
    /// (not the user) stops it.
    pub async fn stop(&self, key: &SessionKey, reason: Option<String>) -> Result<SessionView, NotebookError> {
        let Some(session) = self.find(key) else { return Ok(self.view(key)) };
        let Some(handle) = session.begin_stop(reason) else { return Ok(session.view(self.backend.name())) };
        tracing::info!(notebook = %key.notebook, account = %key.account, "stopping notebook session");
        // Without a handle it is still launching: bring_up stops what it
        // launched, then settles (the view says `stopping` until then).
        if let Some(h) = handle {
            self.backend.stop(&h).await;
            session.settle(SessionState::Stopped);
        }
        Ok(session.view(self.backend.name()))
    }

    /// Stops every session of `account` (account deletion).
    pub async fn stop_account(&self, account: &AccountId) {
        let keys: Vec<SessionKey> = {
            let sessions = self.sessions.lock().expect("sessions lock");
            sessions.values().filter(|s| &s.key.account == account).map(|s| s.key.clone()).collect()
        };
        for key in keys {
            let _ = self.stop(&key, Some("account deleted".into())).await;
            self.sessions.lock().expect("sessions lock").remove(&key);
        }
    }

    /// Stops a session and forgets it (its notebook was deleted).
    pub async fn forget(&self, key: &SessionKey) {
        let _ = self.stop(key, None).await;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.remove(key);
    }

    /// Stops every session (daemon shutdown).
    pub async fn shutdown(&self) {
        let keys: Vec<SessionKey> = {
            let sessions = self.sessions.lock().expect("sessions lock");
            sessions.values().filter(|s| s.state().is_live()).map(|s| s.key.clone()).collect()
        };
        if !keys.is_empty() {
            tracing::info!(sessions = keys.len(), "stopping notebook sessions");
        }
        futures_util::future::join_all(keys.iter().map(|k| self.stop(k, Some("server shut down".into())))).await;
        self.backend.close();
    }

    /// Runs health checks and idle culling every
    /// `health_check_interval_seconds` until the manager is dropped.
    pub fn spawn_monitor(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = Duration::from_secs(self.config.health_check_interval_seconds);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.check_all().await;
            }
        });
    }

    async fn check_all(&self) {
        let ready: Vec<Arc<Session>> = {
            let sessions = self.sessions.lock().expect("sessions lock");
            sessions.values().filter(|s| s.state() == SessionState::Ready).cloned().collect()
        };
        let idle_after_ms = (self.config.session_timeout_seconds * 1000) as i64;
        let live = ready.len();
        for s in ready {
            let handle = s.inner.lock().expect("session lock").handle.clone();
            let Some(handle) = handle else { continue };
            if let Some(reason) = self.backend.exit_reason(&handle).await {
                let tail = self.backend.output_tail(&handle).await;
                self.fail(&s, with_output(reason, &tail)).await;
                continue;
            }
            if self.healthy(&s).await {
                s.health_failures.store(0, Ordering::Relaxed);
            } else if s.health_failures.fetch_add(1, Ordering::Relaxed) + 1 >= HEALTH_FAILURES_TO_FAIL {
                self.fail(&s, format!("did not answer {HEALTH_FAILURES_TO_FAIL} health checks in a row")).await;
                continue;
            }
            let idle_ms = Utc::now().timestamp_millis() - s.last_activity_ms.load(Ordering::Relaxed);
            if s.open.load(Ordering::Relaxed) == 0 && idle_ms > idle_after_ms {
                // An editor connected some other way still counts.
                if self.marimo_connections(&s).await.unwrap_or(0) == 0 {
                    let reason = format!(
                        "stopped after {} s without activity (notebooks.session_timeout_seconds)",
                        self.config.session_timeout_seconds
                    );
                    metrics::counter!("duckpond_notebook_sessions_culled_total").increment(1);
                    let _ = self.stop(&s.key, Some(reason)).await;
                } else {
                    s.touch();
                }
            }
        }
        metrics::gauge!("duckpond_notebook_sessions_ready").set(live as f64);
        metrics::gauge!("duckpond_notebook_ports_in_use").set(self.ports.in_use() as f64);
    }
}

/// A read-only connection to the account's SQLite catalog, held by the
/// daemon while a session runs. A session sees the catalog read-only (a
/// read-only mount), and SQLite can read a WAL-mode database read-only only
/// while its `-wal` and `-shm` files exist; they are deleted when the last
/// connection closes, which the daemon's own may do between flushes. An
/// idle connection holds no read lock, so checkpoints go on. None (logged)
/// when it cannot be opened: the session then reports the catalog's error.
async fn catalog_keepalive(path: &std::path::Path) -> Option<sqlx::SqliteConnection> {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true);
    let opened = async {
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
        // Reading opens the WAL index (creating -shm).
        sqlx::query("SELECT count(*) FROM sqlite_master").execute(&mut conn).await?;
        Ok::<_, sqlx::Error>(conn)
    };
    match opened.await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "could not hold the catalog open for a notebook session");
            None
        }
    }
}

fn with_output(reason: String, tail: &str) -> String {
    if tail.is_empty() {
        reason
    } else {
        format!("{reason}; last output:\n{tail}")
    }
}

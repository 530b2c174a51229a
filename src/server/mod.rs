//! The HTTP API: state, router and server lifecycle.
//!
//! [`router`] builds the whole application from an [`AppState`], so tests can
//! drive it in process; [`serve`] binds it and handles graceful shutdown.

pub mod auth;
pub mod error;
mod extract;
mod listener;
pub(crate) mod middleware;
pub mod openapi;
mod routes;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::accounts::AccountService;
use crate::config::Config;
use crate::ingest::rate::IngestRate;
use crate::notebooks::sessions::SessionManager;
use crate::pipelines::Pipelines;
use crate::query::exec::Admission;
use crate::query::Engines;
use duckpond_compactor::InstanceSettings;
use tokio::sync::Semaphore;

/// Header carrying the request id (generated unless the client sent one).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The loaded configuration.
    pub config: Arc<Config>,
    /// Accounts and keys.
    pub accounts: AccountService,
    /// A DuckDB instance with the extensions loaded, for readiness checks.
    pub engine: Arc<Mutex<duckdb::Connection>>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Each account's log and compactor.
    pub pipelines: Arc<Pipelines>,
    /// Each account's read-only DuckDB instance.
    pub engines: Arc<Engines>,
    /// Per-account ingest rate.
    pub ingest_rate: Arc<IngestRate>,
    /// Upload conversions running at once.
    pub conversions: Arc<Semaphore>,
    /// Per-account query slots.
    pub admission: Arc<Admission>,
    /// What each account has stored of its Prometheus series.
    pub prometheus: Arc<routes::prometheus::PromStates>,
    /// Notebook sessions.
    pub notebooks: Arc<SessionManager>,
    /// Forwards proxied requests to sessions.
    pub proxy_client: reqwest::Client,
    /// Serialises notebook creates and renames (names are unique).
    pub notebook_names: Arc<tokio::sync::Mutex<()>>,
    /// Failed-authentication throttle (shared by every door).
    pub auth_throttle: Arc<crate::security::throttle::AuthThrottle>,
    /// Connection caps (shared by every listener).
    pub connections: Arc<crate::security::connections::ConnectionLimits>,
    /// The disk reserve: writes are refused while it is released.
    pub headroom: Arc<crate::accounts::headroom::Headroom>,
}

impl AppState {
    /// Memory and threads of each DuckDB instance.
    pub fn instance_settings(&self) -> InstanceSettings {
        self.config.duckdb.instance_settings()
    }
}

/// Builds the application.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let body_limit = usize::try_from(state.config.server.max_request_body_bytes).unwrap_or(usize::MAX);
    let timeout = Duration::from_millis(state.config.server.request_timeout_ms);
    routes::routes()
        .route_layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .merge(routes::ingest_routes())
        .merge(routes::query_routes())
        .merge(routes::prometheus_routes(state.config.prometheus.max_compressed_bytes))
        .merge(routes::notebook_proxy_routes())
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::refuse_writes_without_headroom))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn(middleware::json_error_bodies))
        .layer(axum::middleware::from_fn(middleware::record_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %req.method(),
                        path = %req.uri().path(),
                        account = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(|res: &axum::response::Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_millis() as u64, "response");
                }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Serves `state` on `server.host:server.port` until SIGTERM/SIGINT. Prints
/// the bound address on stdout (useful with port 0).
pub async fn serve(state: AppState) -> anyhow::Result<()> {
    let addr = format!("{}:{}", state.config.server.host, state.config.server.port);
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    let local: SocketAddr = listener.local_addr()?;
    let grace = Duration::from_millis(state.config.server.shutdown_grace_period_ms);
    let pipelines = state.pipelines.clone();
    let notebooks = state.notebooks.clone();
    println!("duckpond listening on http://{local}");
    tracing::info!(%local, "listening");
    let listener = listener::Listener {
        socket: listener,
        limits: state.connections.clone(),
        header_read_timeout: Duration::from_millis(state.config.security.header_read_timeout_ms),
        trusted_proxies: state.config.security.trusted_proxies.clone(),
    };
    let app = router(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; draining in-flight requests");
        let _ = stop_tx.send(true);
    });
    listener.serve(app, stop_rx, grace).await;
    notebooks.shutdown().await;
    pipelines.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

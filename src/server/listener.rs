//! The HTTP listener: admits connections against the shared caps
//! ([`crate::security::connections`]), gives each a header read timeout,
//! tags every request with the peer's address, and drains on shutdown.
//!
//! axum's own `serve` offers none of the first three, so connections are
//! served with hyper-util's auto (HTTP/1 and HTTP/2) builder directly, as
//! axum's `serve` does inside.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::security::connections::{ConnectionLimits, Refusal};

/// Pause after a failed accept (out of descriptors): the error repeats at
/// once otherwise and the loop would spin.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// What one listener needs.
pub struct Listener {
    /// The bound socket.
    pub socket: TcpListener,
    /// Caps shared with every other listener.
    pub limits: std::sync::Arc<ConnectionLimits>,
    /// Time a connection has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Reverse proxies (`security.trusted_proxies`): held to the total cap only.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Listener {
    /// Serves `app` until `shutdown` turns true, then lets open connections
    /// finish for up to `grace`.
    pub async fn serve(self, app: Router, mut shutdown: tokio::sync::watch::Receiver<bool>, grace: Duration) {
        let mut builder = Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.socket.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                        continue;
                    }
                },
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let trusted = self.trusted_proxies.contains(&peer.ip());
            let permit = match self.limits.admit(peer.ip(), trusted) {
                Ok(p) => p,
                Err(refusal) => {
                    let cap = match refusal {
                        Refusal::PerClient => "per_client",
                        Refusal::Total => "total",
                    };
                    metrics::counter!("duckpond_connections_refused_total", "cap" => cap).increment(1);
                    tracing::debug!(client = %peer.ip(), cap, "connection refused: over the cap");
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = app.clone().map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(self.socket);
        tokio::select! {
            _ = graceful.shutdown() => {},
            _ = tokio::time::sleep(grace) => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; closing remaining connections");
            }
        }
    }
}

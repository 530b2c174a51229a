//! Revocation of keys that are in use on open connections.
//!
//! A request authenticates once, at its start; an upload, an Arrow stream
//! or a notebook websocket can stay open for hours after that. Each holds a
//! [`KeyWatch`] and asks it at every chunk (or waits on it, for a
//! websocket). A watch asks the metadata database whether its key is still
//! live at most once per `security.revocation_check_interval_ms`, and at
//! once after this daemon revoked a key or deleted an account (the
//! announcement is a generation counter, so a watch learns only that
//! *something* was revoked and checks its own key). Revocations made by
//! another process (the CLI) are seen within the interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::AuthError;
use crate::meta::MetaStore;

/// Announces revocations to the watches of this daemon.
#[derive(Debug)]
pub struct Revocations {
    meta: MetaStore,
    interval: Duration,
    generation: watch::Sender<u64>,
}

impl Revocations {
    /// Watches re-check every `interval` at least.
    pub fn new(meta: MetaStore, interval: Duration) -> Self {
        Self { meta, interval, generation: watch::Sender::new(0) }
    }

    /// Tells every watch to re-check its key now.
    pub fn notify(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// A watch on `key_id`, which was live when the caller authenticated.
    pub fn watch(self: &Arc<Self>, key_id: &str) -> KeyWatch {
        let mut announcements = self.generation.subscribe();
        announcements.mark_unchanged();
        KeyWatch {
            revocations: self.clone(),
            key_id: key_id.to_string(),
            announcements,
            next_check: Instant::now() + self.interval,
        }
    }
}

/// Whether one key is still live, for a long-lived connection.
#[derive(Debug)]
pub struct KeyWatch {
    revocations: Arc<Revocations>,
    key_id: String,
    announcements: watch::Receiver<u64>,
    next_check: Instant,
}

impl KeyWatch {
    /// `Ok` while the key is live; [`AuthError::Invalid`] once it is revoked
    /// or its account deleted. Costs a database query only when the
    /// interval has passed or a revocation was announced.
    pub async fn check(&mut self) -> Result<(), AuthError> {
        let announced = self.announcements.has_changed().unwrap_or(false);
        if !announced && Instant::now() < self.next_check {
            return Ok(());
        }
        self.announcements.mark_unchanged();
        self.next_check = Instant::now() + self.revocations.interval;
        match self.revocations.meta.live_key_ids(std::slice::from_ref(&self.key_id)).await {
            Ok(live) if live.is_empty() => {
                tracing::info!(key_id = %self.key_id, "a revoked key's open connection is being closed");
                metrics::counter!("duckpond_revoked_connections_closed_total").increment(1);
                Err(AuthError::Invalid)
            }
            Ok(_) => Ok(()),
            // The key was live when the connection opened; an unreachable
            // database is not a revocation. The next check asks again.
            Err(e) => {
                tracing::warn!(error = %e, "could not check an open connection's key");
                Ok(())
            }
        }
    }

    /// Resolves once the key is revoked (for connections that may sit idle,
    /// such as websockets).
    pub async fn revoked(&mut self) {
        loop {
            let wait = tokio::time::sleep_until(self.next_check);
            tokio::select! {
                changed = self.announcements.changed() => {
                    if changed.is_err() {
                        // No more announcements: fall back to the interval.
                        tokio::time::sleep_until(self.next_check).await;
                    }
                }
                _ = wait => {}
            }
            if self.check().await.is_err() {
                return;
            }
        }
    }
}

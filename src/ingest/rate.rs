//! The per-account ingest rate limit (`max_ingest_bytes_per_s`).
//!
//! Over the rate, a write is slowed rather than refused: reading its body
//! pauses, so TCP pushes back on the client and nothing is lost or retried.
//! One second of burst is allowed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::accounts::AccountId;

/// Burst allowed above the rate before reading pauses.
pub const BURST_MS: u64 = 1_000;

/// Virtual finish time of each account's admitted bytes (GCRA).
#[derive(Debug, Default)]
pub struct IngestRate {
    accounts: Mutex<HashMap<AccountId, Instant>>,
}

impl IngestRate {
    /// Admits `bytes` for `account` at `bytes_per_s`, sleeping as long as the
    /// account is more than [`BURST_MS`] ahead of its rate. 0 means unlimited.
    pub async fn admit(&self, account: &AccountId, bytes: u64, bytes_per_s: u64) {
        if bytes_per_s == 0 || bytes == 0 {
            return;
        }
        let delay = {
            let mut accounts = self.accounts.lock().expect("rate lock");
            let now = Instant::now();
            let tat = accounts.entry(account.clone()).or_insert(now);
            let start = (*tat).max(now);
            *tat = start + Duration::from_secs_f64(bytes as f64 / bytes_per_s as f64);
            tat.saturating_duration_since(now + Duration::from_millis(BURST_MS))
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

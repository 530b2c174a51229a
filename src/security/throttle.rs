//! Failed-authentication throttling, per client address and per key id.
//!
//! A fixed window per subject: once `max` failures fall within
//! `window`, the subject is refused until the window that started with its
//! first failure is over. A client address is refused before its
//! credentials are looked at; a key id only when the secret presented for
//! it is wrong (its id is public, so refusing it outright would let anyone
//! lock out its owner). Successful
//! authentications do not reset a client's count (an attacker holding one
//! valid key must not earn unlimited guesses at others).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::client_bucket;
use crate::config::SecurityConfig;

/// Subjects tracked at most; past this, expired windows are dropped first
/// and then the table is cleared (failing open beats growing without bound
/// under a spoofed-address flood).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Client(IpAddr),
    Key(String),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Refused without checking: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Until the window ends.
    pub retry_after: Duration,
}

/// The throttle of the whole daemon (every door shares it).
#[derive(Debug)]
pub struct AuthThrottle {
    window: Duration,
    per_client: u32,
    per_key: u32,
    windows: Mutex<HashMap<Subject, Window>>,
}

impl AuthThrottle {
    /// From `security:`.
    pub fn new(config: &SecurityConfig) -> Self {
        Self {
            window: Duration::from_millis(config.auth_failure_window_ms),
            per_client: config.max_auth_failures_per_client,
            per_key: config.max_auth_failures_per_key,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Before checking credentials: refused if the client or the key id has
    /// used up its failures.
    pub fn check(&self, client: IpAddr, key_id: Option<&str>) -> Result<(), Throttled> {
        let now = Instant::now();
        let windows = self.windows.lock().expect("throttle lock");
        let blocked = |subject: &Subject, max: u32| {
            windows.get(subject).and_then(|w| {
                let end = w.started + self.window;
                (w.failures >= max && now < end).then(|| Throttled { retry_after: end - now })
            })
        };
        if let Some(t) = blocked(&Subject::Client(client_bucket(client)), self.per_client) {
            return Err(t);
        }
        if let Some(t) = key_id.and_then(|k| blocked(&Subject::Key(k.to_string()), self.per_key)) {
            return Err(t);
        }
        Ok(())
    }

    /// Records a failed authentication (logged with the client address).
    pub fn failed(&self, client: IpAddr, key_id: Option<&str>, door: &'static str) {
        tracing::warn!(%client, key_id = key_id.unwrap_or(""), door, "failed authentication");
        metrics::counter!("duckpond_auth_failures_total", "door" => door).increment(1);
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("throttle lock");
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, w| now < w.started + self.window);
            if windows.len() >= MAX_TRACKED {
                windows.clear();
            }
        }
        let mut bump = |subject: Subject| {
            let w = windows.entry(subject).or_insert(Window { started: now, failures: 0 });
            if now >= w.started + self.window {
                *w = Window { started: now, failures: 0 };
            }
            w.failures = w.failures.saturating_add(1);
        };
        bump(Subject::Client(client_bucket(client)));
        if let Some(k) = key_id {
            bump(Subject::Key(k.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(window_ms: u64, per_client: u32, per_key: u32) -> AuthThrottle {
        AuthThrottle::new(&SecurityConfig {
            auth_failure_window_ms: window_ms,
            max_auth_failures_per_client: per_client,
            max_auth_failures_per_key: per_key,
            ..SecurityConfig::default()
        })
    }

    #[test]
    fn a_client_is_refused_after_its_failures_and_others_are_not() {
        let t = throttle(60_000, 3, 100);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(a, None).is_ok());
            t.failed(a, None, "test");
        }
        let refused = t.check(a, None).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(50) && refused.retry_after <= Duration::from_secs(60));
        assert!(t.check(b, None).is_ok());
    }

    #[test]
    fn a_key_id_is_refused_from_every_address() {
        let t = throttle(60_000, 100, 2);
        for i in 0..2u8 {
            t.failed(IpAddr::from([127, 0, 0, 10 + i]), Some("k1"), "test");
        }
        assert!(t.check("127.0.0.99".parse().unwrap(), Some("k1")).is_err());
        assert!(t.check("127.0.0.99".parse().unwrap(), Some("k2")).is_ok());
    }

    #[test]
    fn the_window_ends() {
        let t = throttle(50, 1, 1);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        t.failed(a, Some("k"), "test");
        assert!(t.check(a, Some("k")).is_err());
        std::thread::sleep(Duration::from_millis(80));
        assert!(t.check(a, Some("k")).is_ok());
    }
}

//! Connection caps: per client address and in all, for every listener.
//!
//! A connection is admitted before a byte of it is read; one over a cap is
//! closed at once. Together with the header read timeout this bounds what a
//! client without credentials can hold: slow or idle connections from one
//! address cannot exhaust the daemon's descriptors or starve other
//! addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::client::client_bucket;
use crate::config::SecurityConfig;

/// Open connections of the whole daemon (all listeners share the caps).
#[derive(Debug)]
pub struct ConnectionLimits {
    per_client: u32,
    total: u32,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: u32,
    by_client: HashMap<IpAddr, u32>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client address holds `security.max_connections_per_client`.
    PerClient,
    /// The daemon holds `security.max_connections`.
    Total,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    client: IpAddr,
}

impl ConnectionLimits {
    /// From `security:`.
    pub fn new(config: &SecurityConfig) -> Arc<Self> {
        Arc::new(Self {
            per_client: config.max_connections_per_client,
            total: config.max_connections,
            open: Mutex::new(Open::default()),
        })
    }

    /// Admits a connection from `peer`, or says which cap it hits. A
    /// trusted proxy carries many clients' connections: only the total cap
    /// applies to it.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, trusted_proxy: bool) -> Result<ConnectionPermit, Refusal> {
        let client = client_bucket(peer);
        let mut open = self.open.lock().expect("connections lock");
        if open.total >= self.total {
            return Err(Refusal::Total);
        }
        let mine = open.by_client.entry(client).or_insert(0);
        if *mine >= self.per_client && !trusted_proxy {
            return Err(Refusal::PerClient);
        }
        *mine += 1;
        open.total += 1;
        metrics::gauge!("duckpond_open_connections").set(f64::from(open.total));
        Ok(ConnectionPermit { limits: self.clone(), client })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("connections lock");
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
        metrics::gauge!("duckpond_open_connections").set(f64::from(open.total));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_client_and_in_all() {
        let limits = ConnectionLimits::new(&SecurityConfig {
            max_connections_per_client: 2,
            max_connections: 3,
            ..SecurityConfig::default()
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = limits.admit(a, false).unwrap();
        let _a2 = limits.admit(a, false).unwrap();
        assert_eq!(limits.admit(a, false).unwrap_err(), Refusal::PerClient);
        let _b1 = limits.admit(b, false).unwrap();
        assert_eq!(limits.admit(b, false).unwrap_err(), Refusal::Total);
        drop(a1);
        assert!(limits.admit(b, false).is_ok());
        // A trusted proxy is held to the total only.
        let proxy: IpAddr = "127.0.0.9".parse().unwrap();
        let limits = ConnectionLimits::new(&SecurityConfig {
            max_connections_per_client: 1,
            max_connections: 3,
            ..SecurityConfig::default()
        });
        let held: Vec<_> = (0..3).map(|_| limits.admit(proxy, true).unwrap()).collect();
        assert_eq!(limits.admit(proxy, true).unwrap_err(), Refusal::Total);
        drop(held);
    }
}

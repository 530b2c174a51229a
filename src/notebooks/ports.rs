//! Loopback ports for sessions, from `notebooks.port_range`.
//!
//! A port is reserved under the pool's lock before anything is launched on
//! it, so two starts can never pick the same port (no check-then-use race
//! inside the daemon). A port some other program holds is skipped by a bind
//! probe; if that program grabs it between the probe and marimo's bind, the
//! session fails to become ready and its port is released.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex};

use crate::config::PortRange;

/// The pool of session ports.
#[derive(Debug)]
pub struct PortPool {
    range: PortRange,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    taken: BTreeSet<u16>,
    /// Where the next search starts: round robin, so a port just released
    /// (whose old server may still be in TIME_WAIT) is reused last.
    next: u16,
}

/// A reserved port, released when dropped.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
    port: u16,
}

impl PortLease {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.state.lock().expect("port pool lock").taken.remove(&self.port);
    }
}

impl PortPool {
    /// A pool over `range`.
    pub fn new(range: PortRange) -> Arc<Self> {
        Arc::new(Self { range, state: Mutex::new(PoolState { taken: BTreeSet::new(), next: range.first }) })
    }

    /// The configured range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Reserves a free port, or None when every port is reserved or busy.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        let mut st = self.state.lock().expect("port pool lock");
        let span = u32::from(self.range.last - self.range.first) + 1;
        for i in 0..span {
            let offset = (u32::from(st.next - self.range.first) + i) % span;
            let port = self.range.first + offset as u16;
            if st.taken.contains(&port) || !bindable(port) {
                continue;
            }
            st.taken.insert(port);
            st.next = if port == self.range.last { self.range.first } else { port + 1 };
            return Some(PortLease { pool: self.clone(), port });
        }
        None
    }

    /// Ports reserved now.
    pub fn in_use(&self) -> usize {
        self.state.lock().expect("port pool lock").taken.len()
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range the OS is not using right now, from `base` up (each test
    /// has its own base: tests run in parallel).
    fn free_range(base: u16, n: u16) -> PortRange {
        let mut first = base;
        while let Some(busy) = (first..first + n).find(|&p| !bindable(p)) {
            first = busy + 1;
        }
        PortRange { first, last: first + n - 1 }
    }

    #[test]
    fn leases_are_exclusive_and_released_on_drop() {
        let pool = PortPool::new(free_range(41_000, 3));
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        let mut ports = [a.port(), b.port(), c.port()];
        ports.sort();
        assert_eq!(ports, [pool.range().first, pool.range().first + 1, pool.range().last]);
        assert!(pool.lease().is_none(), "a fourth lease from a range of three");
        let freed = b.port();
        drop(b);
        assert_eq!(pool.in_use(), 2);
        assert_eq!(pool.lease().unwrap().port(), freed);
    }

    #[test]
    fn ports_held_by_others_are_skipped() {
        let range = free_range(42_000, 2);
        let _held = TcpListener::bind((Ipv4Addr::LOCALHOST, range.first)).unwrap();
        let pool = PortPool::new(range);
        let only = pool.lease().unwrap();
        assert_eq!(only.port(), range.last);
        assert!(pool.lease().is_none());
    }

    #[test]
    fn concurrent_leases_never_collide() {
        let pool = PortPool::new(free_range(43_000, 40));
        let leases: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| (0..5).filter_map(|_| pool.lease()).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let ports: BTreeSet<u16> = leases.iter().map(|l| l.port()).collect();
        assert_eq!(leases.len(), 40);
        assert_eq!(ports.len(), 40, "two leases got the same port");
    }
}

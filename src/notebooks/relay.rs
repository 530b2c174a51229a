//! A relay from the daemon's loopback into a session's network namespace.
//!
//! Sandboxed sessions (bubblewrap or a `--network none` container) have a
//! network namespace of their own with nothing but a loopback device, so
//! they reach no service of the host (PostgreSQL, the API, other sessions).
//! marimo listens on 127.0.0.1:<port> *inside*; the relay listens on the
//! same port on the host's loopback (where the proxy and the health checks
//! connect, unchanged) and forwards each connection.
//!
//! Network namespaces are per thread: the relay's thread binds its listener
//! while still in the daemon's namespace, then enters the session's with
//! `setns(2)`, so every socket it opens afterwards (the inner connections)
//! is created inside. It runs a single-threaded runtime: no task can wander
//! to a thread of another namespace.

use std::fs::File;
use std::os::fd::AsRawFd;

use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// A running relay; dropping it stops accepting (open connections end with
/// the session).
#[derive(Debug)]
pub struct Relay {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Relay {
    /// Listens on the host's 127.0.0.1:`port` and forwards each connection
    /// to 127.0.0.1:`port` in the network namespace `netns` (an open
    /// `/proc/<pid>/ns/net`). Needs CAP_SYS_ADMIN (the daemon runs as root
    /// where it sandboxes sessions).
    pub fn start(netns: File, port: u16) -> std::io::Result<Relay> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        std::thread::Builder::new().name(format!("relay-{port}")).spawn(move || {
            // SAFETY: setns on this thread with a namespace fd we own.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            drop(netns);
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else {
                                // Out of descriptors: the error repeats at once.
                                tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                                continue;
                            };
                            tokio::spawn(async move {
                                if let Ok(mut inner) = TcpStream::connect(("127.0.0.1", port)).await {
                                    let _ = inner.set_nodelay(true);
                                    let _ = inbound.set_nodelay(true);
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut inner).await;
                                }
                            });
                        }
                    }
                }
            });
        })?;
        ready_rx.recv().map_err(|_| std::io::Error::other("the relay thread ended before it was ready"))??;
        Ok(Relay { stop: Some(stop_tx) })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

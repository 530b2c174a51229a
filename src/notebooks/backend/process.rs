//! The embedded default backend: `marimo edit` as a local process tree.
//!
//! Each session gets its own process group, a cgroup where the host allows
//! one ([`super::cgroup`]), `oom_score_adj` 1000 (so the host's OOM killer
//! takes a notebook before the daemon), a clean environment (no daemon
//! secrets), its own HOME under the run directory, and a marker variable
//! `DUCKPOND_SESSION=<id>` that every descendant inherits: without cgroups,
//! stop and orphan sweeps find marimo's kernels (which call setsid()) by it.
//! The token reaches marimo on stdin, never on a command line.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::cgroup::{Cgroups, SessionCgroup};
use super::{tail_lines, LaunchSpec, Limits};
use crate::config::NotebooksConfig;

/// Name of the marker variable every process of a session carries.
const SESSION_ENV: &str = "DUCKPOND_SESSION";
/// What a session's state file is called in its run directory.
const STATE_FILE: &str = "session.json";
/// Bytes of the server log read for a failure reason.
const LOG_TAIL_BYTES: u64 = 8 * 1024;
/// Poll interval while waiting for a stopped server to exit.
const EXIT_POLL_MS: u64 = 25;

/// The backend.
pub struct ProcessBackend {
    marimo: PathBuf,
    env_bin: PathBuf,
    limits: Limits,
    sessions_dir: PathBuf,
    cgroups: Cgroups,
}

/// A running session's process tree.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: i32,
    session_id: String,
    child: Mutex<tokio::process::Child>,
    cgroup: Option<SessionCgroup>,
    dir: PathBuf,
}

/// What survives a daemon crash: enough to find and kill the tree.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    pid: i32,
    /// /proc start time of `pid`, so a reused pid is never killed.
    start_ticks: u64,
    session_id: String,
    cgroup_dirs: Vec<PathBuf>,
}

impl ProcessBackend {
    /// The backend for `config`; sessions' runtime files go below `run_dir`.
    pub fn new(config: &NotebooksConfig, limits: Limits, run_dir: PathBuf, instance: String) -> anyhow::Result<Self> {
        let env_bin = config.python_env.join("bin");
        let marimo = env_bin.join("marimo");
        if !marimo.exists() {
            tracing::warn!(
                path = %marimo.display(),
                "no marimo in notebooks.python_env: sessions will fail to start until it is built (make run, or .ci/notebook-env.sh {})",
                config.python_env.display()
            );
        }
        let sessions_dir = run_dir.join("sessions");
        std::fs::create_dir_all(&sessions_dir).with_context(|| format!("creating {}", sessions_dir.display()))?;
        // Session logs hold marimo's token: the daemon's user only.
        std::fs::set_permissions(&sessions_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let cgroups = Cgroups::detect(&config.cgroup_root, &instance);
        if cgroups.available() {
            tracing::info!(limits = %cgroups.describe(), "notebook sessions are limited by cgroups");
        } else {
            tracing::warn!(
                reason = %cgroups.describe(),
                "notebook sessions run WITHOUT memory, CPU and pids caps on this host; use the docker backend for enforced limits"
            );
        }
        Ok(Self { marimo, env_bin, limits, sessions_dir, cgroups })
    }

    /// What limits sessions on this host.
    pub fn limits_in_force(&self) -> String {
        format!("process: {}", self.cgroups.describe())
    }

    /// Spawns marimo for `spec`.
    pub async fn launch(&self, spec: &LaunchSpec) -> anyhow::Result<ProcessHandle> {
        if !self.marimo.exists() {
            anyhow::bail!(
                "marimo is not installed at {} (notebooks.python_env); build it with .ci/notebook-env.sh",
                self.marimo.display()
            );
        }
        let dir = self.sessions_dir.join(&spec.session_id);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let log = std::fs::File::create(dir.join("marimo.log")).context("creating the session log")?;
        let cgroup = self
            .cgroups
            .create(&spec.session_id, &self.limits)
            .context("creating the session's cgroup (set notebooks.cgroup_root to \"\" to run without)")?;
        let launched = self.spawn(spec, &home, log, cgroup.as_ref()).await;
        let child = match launched {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.kill_all();
                    cg.remove();
                }
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let handle = ProcessHandle {
            pid: child.id().unwrap_or(0) as i32,
            session_id: spec.session_id.clone(),
            child: Mutex::new(child),
            cgroup,
            dir,
        };
        let recorded = (|| {
            anyhow::ensure!(handle.pid > 0, "marimo exited at once");
            let state = StateFile {
                pid: handle.pid,
                start_ticks: start_ticks(handle.pid).unwrap_or(0),
                session_id: spec.session_id.clone(),
                cgroup_dirs: handle.cgroup.as_ref().map(|c| c.dirs().to_vec()).unwrap_or_default(),
            };
            std::fs::write(handle.dir.join(STATE_FILE), serde_json::to_vec(&state)?)
                .context("writing the session state file")
        })();
        if let Err(e) = recorded {
            // Nothing may run that a restart could not find.
            self.stop(&handle).await;
            return Err(e);
        }
        Ok(handle)
    }

    async fn spawn(
        &self,
        spec: &LaunchSpec,
        home: &Path,
        log: std::fs::File,
        cgroup: Option<&SessionCgroup>,
    ) -> anyhow::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.marimo);
        cmd.arg("edit")
            .arg(spec.notebook_dir.join(super::super::files::NOTEBOOK_FILE))
            .args(["--headless", "--host", "127.0.0.1", "--port", &spec.port.to_string()])
            .args(["--base-url", &spec.base_url, "--token", "--token-password-file", "-"])
            .args(["--skip-update-check", "--no-sandbox"])
            .current_dir(&spec.notebook_dir)
            .env_clear()
            .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", self.env_bin.display()))
            .env("HOME", home)
            .env("LANG", "C.UTF-8")
            .env("MARIMO_SKIP_UPDATE_CHECK", "1")
            .env(SESSION_ENV, &spec.session_id)
            .env("DUCKPOND_DATA_PATH", format!("{}/", spec.data_path.display()))
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if let Some(catalog) = &spec.catalog_sqlite {
            cmd.env("DUCKPOND_CATALOG", format!("ducklake:sqlite:{}", catalog.display()));
        }
        // Opened here, written by the child between fork and exec: the tree
        // is inside its cgroup before marimo runs a single instruction.
        let procs: Vec<std::fs::File> = match cgroup {
            Some(cg) => cg
                .procs_files()
                .iter()
                .map(|p| {
                    std::fs::OpenOptions::new().write(true).open(p).with_context(|| format!("opening {}", p.display()))
                })
                .collect::<anyhow::Result<_>>()?,
            None => Vec::new(),
        };
        let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: the closure only calls async-signal-safe functions (write,
        // open, close) on memory prepared before fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    // "0" moves the writing process (v1 and v2).
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let adj = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
                if adj >= 0 {
                    libc::write(adj, b"1000".as_ptr().cast(), 4);
                    libc::close(adj);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.marimo.display()))?;
        drop(procs);
        let mut stdin = child.stdin.take().context("marimo's stdin")?;
        stdin.write_all(format!("{}\n", spec.token).as_bytes()).await.context("passing the token to marimo")?;
        drop(stdin);
        Ok(child)
    }

    /// Why the session is gone, or None while it runs.
    pub fn exit_reason(&self, h: &ProcessHandle) -> Option<String> {
        let oom = h.cgroup.as_ref().map(|c| c.oom_kills()).unwrap_or(0);
        if oom > 0 {
            return Some(format!(
                "out of memory: a process of the session went past notebooks.memory_limit_mb ({} MB) and was killed",
                self.limits.memory_limit_mb
            ));
        }
        match h.child.lock().expect("child lock").try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!("marimo exited ({status})")),
            Err(e) => Some(format!("cannot wait for marimo: {e}")),
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace period, then every
    /// process left in the cgroup (or carrying the session marker).
    pub async fn stop(&self, h: &ProcessHandle) {
        // kill(-0) would signal the daemon's own process group.
        let group = (h.pid > 0).then_some(-h.pid);
        // SAFETY: signalling our own child's process group.
        if let Some(g) = group {
            unsafe { libc::kill(g, libc::SIGTERM) };
        }
        let deadline = tokio::time::Instant::now() + self.limits.stop_grace;
        loop {
            let exited = matches!(h.child.lock().expect("child lock").try_wait(), Ok(Some(_)));
            if exited || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(EXIT_POLL_MS)).await;
        }
        // SAFETY: as above; harmless if the group is gone.
        if let Some(g) = group {
            unsafe { libc::kill(g, libc::SIGKILL) };
        }
        let _ = h.child.lock().expect("child lock").start_kill();
        let cgroup = h.cgroup.clone();
        let session = h.session_id.clone();
        let dir = h.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            kill_tree(cgroup.as_ref(), &session);
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
        // Reap the server so it does not stay a zombie.
        let _ = h.child.lock().expect("child lock").try_wait();
    }

    /// Kills what a previous run left (state files and cgroups).
    pub fn sweep_orphans(&self) -> usize {
        let mut found = 0;
        if let Ok(entries) = std::fs::read_dir(&self.sessions_dir) {
            for e in entries.flatten() {
                let dir = e.path();
                if let Some(state) =
                    std::fs::read(dir.join(STATE_FILE)).ok().and_then(|b| serde_json::from_slice::<StateFile>(&b).ok())
                {
                    let alive =
                        state.pid > 0 && state.start_ticks != 0 && start_ticks(state.pid) == Some(state.start_ticks);
                    if alive {
                        found += 1;
                        // SAFETY: the pid and its start time match our record.
                        unsafe { libc::kill(-state.pid, libc::SIGKILL) };
                    }
                    kill_tree(SessionCgroup::from_dirs(state.cgroup_dirs).as_ref(), &state.session_id);
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        found + self.cgroups.sweep()
    }

    /// Removes what the backend made for itself (parent cgroups).
    pub fn close(&self) {
        self.cgroups.remove_parents();
    }

    /// The end of the server's log.
    pub fn output_tail(&self, h: &ProcessHandle) -> String {
        read_tail(&h.dir.join("marimo.log"))
    }
}

/// Kills everything of a session: by cgroup where there is one, and by the
/// marker variable in any case (catches processes that left the group).
fn kill_tree(cgroup: Option<&SessionCgroup>, session: &str) {
    if let Some(cg) = cgroup {
        cg.kill_all();
        cg.remove();
    }
    let marker = format!("{SESSION_ENV}={session}");
    for _ in 0..3 {
        let pids = processes_with_env(&marker);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: a process carrying this session's marker.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(EXIT_POLL_MS));
    }
}

/// Pids whose environment contains exactly `entry` (`NAME=value`).
fn processes_with_env(entry: &str) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id() as i32;
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it don't.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    tail_lines(&String::from_utf8_lossy(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_of_self_is_stable() {
        let me = std::process::id() as i32;
        let a = start_ticks(me).unwrap();
        assert!(a > 0);
        assert_eq!(start_ticks(me), Some(a));
        assert_eq!(start_ticks(i32::MAX), None);
    }

    #[test]
    fn marker_finds_a_descendant_that_left_the_group() {
        let marker = format!("{SESSION_ENV}=test-{}", std::process::id());
        let (k, v) = marker.split_once('=').unwrap();
        // `setsid` puts the sleeper in its own session, like marimo's kernel.
        let mut child = std::process::Command::new("setsid").args(["sleep", "30"]).env(k, v).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while processes_with_env(&marker).is_empty() {
            assert!(std::time::Instant::now() < deadline, "marker not found");
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_tree(None, &format!("test-{}", std::process::id()));
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert!(processes_with_env(&marker).is_empty());
    }
}

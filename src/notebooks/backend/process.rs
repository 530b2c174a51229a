//! The embedded default backend: `marimo edit` as a local process tree.
//!
//! Each session gets its own process group, a cgroup where the host allows
//! one ([`super::cgroup`]), `oom_score_adj` 1000 (so the host's OOM killer
//! takes a notebook before the daemon), a clean environment (no daemon
//! secrets), its own HOME under the run directory, and a marker variable
//! `DUCKPOND_SESSION=<id>` that every descendant inherits: without cgroups,
//! stop and orphan sweeps find marimo's kernels (which call setsid()) by it.
//! The token reaches marimo on stdin, never on a command line.
//!
//! With `notebooks.sandbox` (the default) the session runs in bubblewrap:
//! new user (no capabilities, `no_new_privs`), mount, pid, IPC, UTS and
//! network namespaces. Its file system is the system's `/usr` (and the
//! `/bin`, `/lib` links), the Python environment and its base interpreter,
//! read-only; the account's directory read-only; the notebook's directory
//! and the session's home writable; a private `/tmp`, `/dev` and `/proc`.
//! Nothing else exists for it: not other accounts, the metadata database,
//! the configuration, the daemon's `/proc` entry or other sessions' files.
//! Its network namespace has only a loopback device; the daemon reaches
//! marimo through a [`Relay`] into it.

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
use crate::notebooks::relay::Relay;

/// The descriptor bubblewrap reports the sandbox's pid on (`--info-fd`).
const BWRAP_INFO_FD: i32 = 3;
/// Longest wait for bubblewrap to report the sandbox's pid.
const BWRAP_INFO_TIMEOUT_MS: u64 = 10_000;
/// The session's home inside the sandbox.
const SANDBOX_HOME: &str = "/home/notebook";
/// Where a sandboxed session sees its notebook's directory (the docker
/// backend's path too).
const SANDBOX_WORK: &str = "/work";
/// `/etc/hosts` inside the sandbox.
const SANDBOX_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";
/// The session's user and group inside its user namespace.
const SANDBOX_UID: u32 = 1000;

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
    sandbox: Option<Sandbox>,
}

/// What the bubblewrap sandbox needs to know about this host.
#[derive(Debug, Clone)]
struct Sandbox {
    bwrap: PathBuf,
    /// Directories mounted read-only at the same path: the Python
    /// environment and the interpreter it was made from.
    python_dirs: Vec<PathBuf>,
}

/// A running session's process tree.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: i32,
    session_id: String,
    child: Mutex<tokio::process::Child>,
    cgroup: Option<SessionCgroup>,
    dir: PathBuf,
    /// Into the sandbox's network namespace (sandboxed sessions only).
    _relay: Option<Relay>,
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
        let sandbox = if config.sandbox {
            if !config.bwrap_path.exists() {
                tracing::warn!(
                    path = %config.bwrap_path.display(),
                    "bubblewrap is not installed: sandboxed notebook sessions will fail to start (apt install \
                     bubblewrap, or set notebooks.sandbox: false on a single-user machine)"
                );
            }
            Some(Sandbox { bwrap: config.bwrap_path.clone(), python_dirs: python_dirs(&config.python_env) })
        } else {
            tracing::warn!(
                "notebooks.sandbox is false: notebook sessions can read and write whatever the daemon's user can, \
                 and reach every loopback service"
            );
            None
        };
        Ok(Self { marimo, env_bin, limits, sessions_dir, cgroups, sandbox })
    }

    /// What limits sessions on this host.
    pub fn limits_in_force(&self) -> String {
        let isolation = if self.sandbox.is_some() { "bubblewrap sandbox" } else { "no sandbox" };
        format!("process: {isolation}; {}", self.cgroups.describe())
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
        let (child, relay) = match launched {
            Ok(c) => c,
            Err(e) => {
                // Whatever started (a sandbox whose relay failed) goes too:
                // nothing may run that no record points to.
                let (cg, session) = (cgroup.clone(), spec.session_id.clone());
                let _ = tokio::task::spawn_blocking(move || kill_tree(cg.as_ref(), &session)).await;
                // A server that exited at once (before the sandbox could be
                // reached) said why in its output.
                let tail = read_tail(&dir.join("marimo.log"));
                let _ = std::fs::remove_dir_all(&dir);
                return Err(if tail.is_empty() { e } else { anyhow::anyhow!("{e:#}; last output:\n{tail}") });
            }
        };
        let handle = ProcessHandle {
            pid: child.id().unwrap_or(0) as i32,
            session_id: spec.session_id.clone(),
            child: Mutex::new(child),
            cgroup,
            dir,
            _relay: relay,
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
    ) -> anyhow::Result<(tokio::process::Child, Option<Relay>)> {
        let notebook = match &self.sandbox {
            Some(_) => Path::new(SANDBOX_WORK).join(super::super::files::NOTEBOOK_FILE),
            None => spec.notebook_dir.join(super::super::files::NOTEBOOK_FILE),
        };
        let mut cmd = match &self.sandbox {
            Some(sandbox) => {
                if !sandbox.bwrap.exists() {
                    anyhow::bail!(
                        "bubblewrap is not installed (notebooks.bwrap_path); install it (apt install bubblewrap) \
                         or set notebooks.sandbox: false on a single-user machine"
                    );
                }
                let mut cmd = tokio::process::Command::new(&sandbox.bwrap);
                cmd.args(sandbox.args(spec, home)).arg("--").arg(&self.marimo);
                cmd
            }
            None => tokio::process::Command::new(&self.marimo),
        };
        cmd.arg(spec.mode.marimo_command())
            .arg(&notebook)
            .args(["--headless", "--host", "127.0.0.1", "--port", &spec.port.to_string()])
            .args(["--base-url", &spec.base_url, "--token", "--token-password-file", "-"])
            .args(spec.mode.edit_only(&["--skip-update-check"]))
            .arg("--no-sandbox")
            .current_dir(&spec.notebook_dir)
            .env_clear()
            .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", self.env_bin.display()))
            .env("HOME", if self.sandbox.is_some() { Path::new(SANDBOX_HOME) } else { home })
            .env("TMPDIR", "/tmp")
            .env("USER", "notebook")
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
        // bubblewrap writes `{"child-pid": N}` on this pipe once the
        // sandbox exists: N's network namespace is where the relay goes.
        let info = if self.sandbox.is_some() { Some(InfoPipe::new()?) } else { None };
        let info_write = info.as_ref().map(|p| p.write_fd());
        // SAFETY: the closure only calls async-signal-safe functions (write,
        // open, close, dup2, fcntl) on memory prepared before fork; it
        // allocates nothing.
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
                if let Some(fd) = info_write {
                    // dup2 onto itself would keep close-on-exec.
                    if fd == BWRAP_INFO_FD {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, BWRAP_INFO_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let program = cmd.as_std().get_program().to_owned();
        let mut child = cmd.spawn().with_context(|| format!("starting {}", Path::new(&program).display()))?;
        drop(procs);
        let mut stdin = child.stdin.take().context("marimo's stdin")?;
        stdin.write_all(format!("{}\n", spec.token).as_bytes()).await.context("passing the token to marimo")?;
        drop(stdin);
        let relay = match info {
            None => None,
            Some(info) => {
                let started = async {
                    let pid = info.child_pid().await?;
                    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                        .context("opening the sandbox's network namespace")?;
                    Relay::start(netns, spec.port).context("starting the relay into the sandbox (needs root)")
                };
                match started.await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let _ = child.start_kill();
                        return Err(e);
                    }
                }
            }
        };
        Ok((child, relay))
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

impl Sandbox {
    /// bubblewrap's arguments for `spec`, up to the program to run.
    fn args(&self, spec: &LaunchSpec, home: &Path) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |parts: &[&std::ffi::OsStr]| a.extend(parts.iter().map(|p| p.to_os_string()));
        let uid = SANDBOX_UID.to_string();
        push(&["--unshare-all".as_ref(), "--new-session".as_ref()]);
        push(&["--uid".as_ref(), uid.as_ref(), "--gid".as_ref(), uid.as_ref()]);
        // Private /proc, /dev and /tmp first: the binds below may lie inside
        // /tmp (a test's home) and must not be hidden by the new one.
        push(&["--proc".as_ref(), "/proc".as_ref(), "--dev".as_ref(), "/dev".as_ref()]);
        push(&["--tmpfs".as_ref(), "/tmp".as_ref(), "--tmpfs".as_ref(), "/dev/shm".as_ref()]);
        push(&["--ro-bind".as_ref(), "/usr".as_ref(), "/usr".as_ref()]);
        // Merged-/usr systems have these as links into /usr.
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            match std::fs::symlink_metadata(top) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(top) {
                        push(&["--symlink".as_ref(), target.as_os_str(), top.as_ref()]);
                    }
                }
                Ok(_) => push(&["--ro-bind".as_ref(), top.as_ref(), top.as_ref()]),
                Err(_) => {}
            }
        }
        // What Python and its libraries read from /etc; nothing secret.
        for etc in ["/etc/ssl", "/etc/ca-certificates", "/etc/fonts", "/etc/localtime", "/etc/mime.types"] {
            push(&["--ro-bind-try".as_ref(), etc.as_ref(), etc.as_ref()]);
        }
        // marimo's kernel talks to its server on `localhost`: the name must
        // resolve inside (the host's own /etc/hosts is not shown).
        if let Some(dir) = home.parent() {
            let hosts = dir.join("hosts");
            if std::fs::write(&hosts, SANDBOX_HOSTS).is_ok() {
                push(&["--ro-bind".as_ref(), hosts.as_os_str(), "/etc/hosts".as_ref()]);
            }
        }
        for dir in &self.python_dirs {
            push(&["--ro-bind".as_ref(), dir.as_os_str(), dir.as_os_str()]);
        }
        push(&["--ro-bind".as_ref(), spec.account_root.as_os_str(), spec.account_root.as_os_str()]);
        // A view session (`marimo run`, a read key) cannot change the
        // notebook, whatever its cells do.
        let notebook_bind = match spec.mode {
            crate::notebooks::SessionMode::Edit => "--bind",
            crate::notebooks::SessionMode::View => "--ro-bind",
        };
        // At a neutral path, as in a container: marimo's pages show the
        // notebook's file name, which must not name a server path.
        push(&[notebook_bind.as_ref(), spec.notebook_dir.as_os_str(), SANDBOX_WORK.as_ref()]);
        // The session's home at a neutral path: nothing of the daemon's run
        // directory (where other sessions live) appears inside.
        push(&["--bind".as_ref(), home.as_os_str(), SANDBOX_HOME.as_ref()]);
        push(&["--chdir".as_ref(), SANDBOX_WORK.as_ref()]);
        let info = BWRAP_INFO_FD.to_string();
        push(&["--info-fd".as_ref(), info.as_ref()]);
        a
    }
}

/// The Python environment and, for a venv, the installation its
/// `pyvenv.cfg` names (`home = <prefix>/bin`): both must be visible.
fn python_dirs(env: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![env.to_path_buf()];
    if let Ok(cfg) = std::fs::read_to_string(env.join("pyvenv.cfg")) {
        for line in cfg.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "home" {
                    let bin = PathBuf::from(v.trim());
                    let prefix = std::fs::canonicalize(&bin).unwrap_or(bin);
                    // Never the whole file system (a venv of /usr/bin/python3
                    // on a system whose /bin is not a link says `home = /bin`).
                    if let Some(p) = prefix.parent().filter(|p| p.components().count() > 1) {
                        dirs.push(p.to_path_buf());
                    }
                }
            }
        }
    }
    // The interpreter the venv links to may live elsewhere still.
    if let Ok(real) = std::fs::canonicalize(env.join("bin").join("python")) {
        if let Some(prefix) = real.parent().and_then(Path::parent).filter(|p| p.components().count() > 1) {
            if !dirs.iter().any(|d| prefix.starts_with(d)) {
                dirs.push(prefix.to_path_buf());
            }
        }
    }
    dirs
}

/// The pipe bubblewrap reports on.
struct InfoPipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl InfoPipe {
    fn new() -> anyhow::Result<Self> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("creating bubblewrap's info pipe");
        }
        // SAFETY: fresh descriptors from pipe2.
        unsafe {
            Ok(Self {
                read: std::os::fd::FromRawFd::from_raw_fd(fds[0]),
                write: std::os::fd::FromRawFd::from_raw_fd(fds[1]),
            })
        }
    }

    fn write_fd(&self) -> i32 {
        self.write.as_raw_fd()
    }

    /// The sandbox's pid as bubblewrap reports it (the parent's copy of the
    /// write end is closed first, so a bubblewrap that fails reads as EOF).
    async fn child_pid(self) -> anyhow::Result<i32> {
        let InfoPipe { read, write } = self;
        drop(write);
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = std::fs::File::from(read);
            let mut buf = Vec::new();
            // bubblewrap writes one small JSON object, then keeps the fd
            // open; read until it parses.
            let mut chunk = [0u8; 256];
            loop {
                let n = f.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if serde_json::from_slice::<serde_json::Value>(&buf).is_ok() {
                    break;
                }
            }
            Ok::<_, std::io::Error>(buf)
        });
        let buf = tokio::time::timeout(Duration::from_millis(BWRAP_INFO_TIMEOUT_MS), read)
            .await
            .context("bubblewrap did not report the sandbox in time")?
            .context("reading bubblewrap's report")??;
        let v: serde_json::Value =
            serde_json::from_slice(&buf).context("bubblewrap exited before starting the sandbox")?;
        v.get("child-pid")
            .and_then(|p| p.as_i64())
            .and_then(|p| i32::try_from(p).ok())
            .context("bubblewrap's report has no child-pid")
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

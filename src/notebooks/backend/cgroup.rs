//! Session cgroups of the process backend: a memory, CPU and pids cap for a
//! whole marimo process tree (server, kernels, LSP), and a way to kill all of
//! it at once. marimo's kernels call setsid() and LSP servers start their
//! own sessions, so process groups alone do not contain them.
//!
//! cgroup v2 is used when `notebooks.cgroup_root` is a unified hierarchy;
//! the v1 memory, cpu and pids hierarchies below it otherwise (still common
//! on VMs). Where neither can be written (no root, a delegated cgroup with
//! processes in it), sessions run without caps and the reason is logged at
//! start and reported by the API: see docs/ARCHITECTURE.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Limits;

/// CFS period used for the CPU cap.
const CPU_PERIOD_US: u64 = 100_000;
/// Rounds of "kill every process in the cgroup" before giving up.
const KILL_ROUNDS: usize = 100;
/// Pause between kill rounds.
const KILL_ROUND_PAUSE_MS: u64 = 20;

#[derive(Debug, Clone)]
enum Mode {
    /// `<root>/duckpond-<instance>` with memory, cpu and pids enabled.
    V2 { parent: PathBuf },
    /// `<root>/<controller>/duckpond-<instance>` per v1 controller present.
    V1 { memory: PathBuf, cpu: Option<PathBuf>, pids: Option<PathBuf> },
}

/// Where this daemon's session cgroups go, if anywhere.
#[derive(Debug, Clone)]
pub struct Cgroups {
    mode: Option<Mode>,
    why_not: String,
}

/// One session's cgroup (one directory per v1 controller).
#[derive(Debug, Clone)]
pub struct SessionCgroup {
    /// The directory whose `cgroup.procs` lists the session's processes.
    main: PathBuf,
    /// Every directory (main first).
    dirs: Vec<PathBuf>,
    v2: bool,
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

impl Cgroups {
    /// Detects what `root` offers and prepares this instance's parent.
    pub fn detect(root: &Path, instance: &str) -> Self {
        if root.as_os_str().is_empty() {
            return Self { mode: None, why_not: "notebooks.cgroup_root is empty".into() };
        }
        let name = format!("duckpond-{instance}");
        let result = if root.join("cgroup.controllers").exists() {
            Self::prepare_v2(root, &name)
        } else if root.join("memory").join("memory.limit_in_bytes").exists() {
            Self::prepare_v1(root, &name)
        } else {
            Err(std::io::Error::other(format!("{} is neither a cgroup v2 nor a v1 memory hierarchy", root.display())))
        };
        match result {
            Ok(mode) => Self { mode: Some(mode), why_not: String::new() },
            Err(e) => Self { mode: None, why_not: e.to_string() },
        }
    }

    fn prepare_v2(root: &Path, name: &str) -> std::io::Result<Mode> {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))?;
        for c in ["memory", "cpu", "pids"] {
            if !controllers.split_whitespace().any(|x| x == c) {
                return Err(std::io::Error::other(format!("cgroup v2 controller {c} is not available")));
            }
        }
        write(&root.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
        let parent = root.join(name);
        mkdir(&parent)?;
        write(&parent.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
        Ok(Mode::V2 { parent })
    }

    fn prepare_v1(root: &Path, name: &str) -> std::io::Result<Mode> {
        let memory = root.join("memory").join(name);
        mkdir(&memory)?;
        let optional = |ctrl: &str, probe: &str| -> std::io::Result<Option<PathBuf>> {
            if !root.join(ctrl).join(probe).exists() {
                return Ok(None);
            }
            let dir = root.join(ctrl).join(name);
            mkdir(&dir)?;
            Ok(Some(dir))
        };
        let cpu = optional("cpu", "cpu.cfs_quota_us")?;
        let pids = optional("pids", "cgroup.procs")?;
        Ok(Mode::V1 { memory, cpu, pids })
    }

    /// "cgroup v2", "cgroup v1 (memory, cpu, pids)" or why there are none.
    pub fn describe(&self) -> String {
        match &self.mode {
            Some(Mode::V2 { .. }) => "cgroup v2: memory, cpu, pids".into(),
            Some(Mode::V1 { cpu, pids, .. }) => format!(
                "cgroup v1: memory{}{}",
                if cpu.is_some() { ", cpu" } else { "" },
                if pids.is_some() { ", pids" } else { "" }
            ),
            None => format!("none ({})", self.why_not),
        }
    }

    /// Removes this instance's (empty) parent cgroups at shutdown.
    pub fn remove_parents(&self) {
        let dirs: Vec<&PathBuf> = match &self.mode {
            Some(Mode::V2 { parent }) => vec![parent],
            Some(Mode::V1 { memory, cpu, pids }) => {
                std::iter::once(memory).chain(cpu.iter()).chain(pids.iter()).collect()
            }
            None => Vec::new(),
        };
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Whether sessions get caps.
    pub fn available(&self) -> bool {
        self.mode.is_some()
    }

    /// Creates the cgroup of `session` with `limits` applied.
    pub fn create(&self, session: &str, limits: &Limits) -> std::io::Result<Option<SessionCgroup>> {
        let Some(mode) = &self.mode else { return Ok(None) };
        let memory_bytes = (limits.memory_limit_mb * 1024 * 1024).to_string();
        let quota_us = ((limits.cpu_limit * CPU_PERIOD_US as f64).round() as u64).max(1_000);
        let cg = match mode {
            Mode::V2 { parent } => {
                let dir = parent.join(session);
                mkdir(&dir)?;
                let cg = SessionCgroup { main: dir.clone(), dirs: vec![dir.clone()], v2: true };
                let applied = (|| {
                    write(&dir.join("memory.max"), &memory_bytes)?;
                    // No swap: the cap is a cap. Absent without swap accounting.
                    let _ = write(&dir.join("memory.swap.max"), "0");
                    // An OOM kill takes the whole session, not one kernel.
                    write(&dir.join("memory.oom.group"), "1")?;
                    write(&dir.join("cpu.max"), &format!("{quota_us} {CPU_PERIOD_US}"))?;
                    write(&dir.join("pids.max"), &limits.pids_limit.to_string())
                })();
                applied.map(|_| cg)
            }
            Mode::V1 { memory, cpu, pids } => {
                let main = memory.join(session);
                mkdir(&main)?;
                let mut cg = SessionCgroup { main: main.clone(), dirs: vec![main.clone()], v2: false };
                let applied = (|| {
                    write(&main.join("memory.limit_in_bytes"), &memory_bytes)?;
                    if main.join("memory.memsw.limit_in_bytes").exists() {
                        write(&main.join("memory.memsw.limit_in_bytes"), &memory_bytes)?;
                    }
                    if let Some(cpu) = cpu {
                        let d = cpu.join(session);
                        mkdir(&d)?;
                        cg.dirs.push(d.clone());
                        write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&d.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
                    }
                    if let Some(pids) = pids {
                        let d = pids.join(session);
                        mkdir(&d)?;
                        cg.dirs.push(d.clone());
                        write(&d.join("pids.max"), &limits.pids_limit.to_string())?;
                    }
                    Ok(())
                })();
                applied.map(|_| cg.clone())
            }
        };
        match cg {
            Ok(cg) => Ok(Some(cg)),
            Err(e) => {
                // Leave nothing half made.
                if let Some(mode) = &self.mode {
                    for d in self.session_dirs(mode, session) {
                        let _ = std::fs::remove_dir(d);
                    }
                }
                Err(e)
            }
        }
    }

    fn session_dirs(&self, mode: &Mode, session: &str) -> Vec<PathBuf> {
        match mode {
            Mode::V2 { parent } => vec![parent.join(session)],
            Mode::V1 { memory, cpu, pids } => {
                std::iter::once(memory).chain(cpu.iter()).chain(pids.iter()).map(|p| p.join(session)).collect()
            }
        }
    }

    /// Kills and removes every session cgroup of this instance (orphans of
    /// a previous run). Returns how many held processes.
    pub fn sweep(&self) -> usize {
        let Some(mode) = &self.mode else { return 0 };
        let main_parent = match mode {
            Mode::V2 { parent } => parent,
            Mode::V1 { memory, .. } => memory,
        };
        let Ok(entries) = std::fs::read_dir(main_parent) else { return 0 };
        let mut found = 0;
        for e in entries.flatten() {
            if !e.path().is_dir() {
                continue;
            }
            let session = e.file_name().to_string_lossy().to_string();
            let dirs = self.session_dirs(mode, &session);
            let cg = SessionCgroup { main: dirs[0].clone(), dirs, v2: matches!(mode, Mode::V2 { .. }) };
            if !cg.pids().is_empty() {
                found += 1;
            }
            cg.kill_all();
            cg.remove();
        }
        found
    }
}

impl SessionCgroup {
    /// The `cgroup.procs` files a new process must join (one per v1
    /// controller), opened before fork so the child only writes to them.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Processes in the session's cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.main.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many processes the kernel's OOM killer took in this session.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        std::fs::read_to_string(self.main.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// SIGKILLs every process in the session until none is left.
    pub fn kill_all(&self) {
        if self.v2 {
            let _ = std::fs::write(self.main.join("cgroup.kill"), "1");
        }
        for _ in 0..KILL_ROUNDS {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids.into_iter().filter(|&p| p > 0) {
                // SAFETY: kill(2) with a pid read from our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(KILL_ROUND_PAUSE_MS));
        }
        tracing::warn!(cgroup = %self.main.display(), "processes survived SIGKILL rounds");
    }

    /// Removes the (empty) cgroup directories.
    pub fn remove(&self) {
        for d in &self.dirs {
            for _ in 0..KILL_ROUNDS {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // EBUSY while the last exits are being reaped.
                    Err(_) => std::thread::sleep(Duration::from_millis(KILL_ROUND_PAUSE_MS)),
                }
            }
        }
    }

    /// The directories, for the pid file.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Rebuilds from a pid file's directories.
    pub fn from_dirs(dirs: Vec<PathBuf>) -> Option<Self> {
        let main = dirs.first()?.clone();
        let v2 = main.join("cgroup.kill").exists() || main.join("memory.max").exists();
        Some(Self { main, dirs, v2 })
    }
}

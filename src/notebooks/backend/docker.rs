//! The `docker` backend: one container per session through the local engine
//! (bollard), built from the image `.ci/notebook-image.sh` makes locally.
//!
//! The container has no network (`--network none`: a loopback device of its
//! own), so it reaches no service of the host; the daemon reaches marimo
//! through a [`Relay`] into the container's network namespace (found by
//! the container's pid). It runs as an unprivileged user with every
//! capability dropped, `no-new-privileges`, a read-only root with a tmpfs
//! /tmp, memory (no swap), CPU quota, pids and shm caps, the account's
//! directory mounted read-only at /lake and only its own notebook's
//! directory writable at /work. Labels name the daemon instance, account,
//! notebook and session; orphans are found by the instance label.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::{tail_lines, LaunchSpec, Limits, OUTPUT_TAIL_LINES};
use crate::config::NotebooksConfig;
use crate::notebooks::relay::Relay;

/// Label every DuckPond container carries: the daemon instance.
const LABEL_INSTANCE: &str = "duckpond.instance";
/// Where the account directory appears inside the container.
const LAKE_MOUNT: &str = "/lake";
/// Where the notebook's own directory appears.
const WORK_MOUNT: &str = "/work";
/// Where marimo reads its token.
const TOKEN_MOUNT: &str = "/run/duckpond/token";
/// The image's notebook environment.
const IMAGE_VENV: &str = "/opt/nb";
/// Size of the writable /tmp (also HOME).
const TMPFS_SIZE_MB: u64 = 512;
/// CFS period of the CPU quota.
const CPU_PERIOD_US: i64 = 100_000;
/// Unprivileged uid:gid the session runs as (the image's `nb` user).
const SESSION_UID: u32 = 1000;

/// The backend.
pub struct DockerBackend {
    docker: Docker,
    image: String,
    limits: Limits,
    instance: String,
    sessions_dir: PathBuf,
    /// Containers the engine reported an OOM kill for.
    ooms: Arc<Mutex<HashSet<String>>>,
}

/// A session's container.
#[derive(Debug)]
pub struct ContainerHandle {
    id: String,
    dir: PathBuf,
    /// Into the container's network namespace.
    _relay: Option<Relay>,
}

impl DockerBackend {
    /// Connects to the local engine and starts listening for OOM events.
    pub async fn new(
        config: &NotebooksConfig,
        limits: Limits,
        run_dir: PathBuf,
        instance: String,
    ) -> anyhow::Result<Self> {
        let docker = Docker::connect_with_local_defaults().context("connecting to the Docker engine")?;
        docker.ping().await.context("the Docker engine does not answer (is dockerd running?)")?;
        if docker.inspect_image(&config.docker_image).await.is_err() {
            tracing::warn!(
                image = %config.docker_image,
                "notebook image not found: sessions will fail until it is built with .ci/notebook-image.sh"
            );
        }
        let sessions_dir = run_dir.join("sessions");
        std::fs::create_dir_all(&sessions_dir).with_context(|| format!("creating {}", sessions_dir.display()))?;
        // Token files: the daemon's user only (bind mounts ignore this).
        std::fs::set_permissions(&sessions_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let ooms = Arc::new(Mutex::new(HashSet::new()));
        tokio::spawn(watch_ooms(docker.clone(), instance.clone(), ooms.clone()));
        Ok(Self { docker, image: config.docker_image.clone(), limits, instance, sessions_dir, ooms })
    }

    fn container_name(&self, session_id: &str) -> String {
        format!("duckpond-{}-{session_id}", self.instance)
    }

    /// Creates and starts the container of `spec`.
    pub async fn launch(&self, spec: &LaunchSpec) -> anyhow::Result<ContainerHandle> {
        let dir = self.sessions_dir.join(&spec.session_id);
        std::fs::create_dir_all(&dir)?;
        // The token reaches marimo as a read-only file, not on a command line
        // that `docker inspect` would show.
        let token_file = dir.join("token");
        std::fs::write(&token_file, &spec.token)?;
        let as_root = unsafe { libc::geteuid() } == 0;
        let user = if as_root {
            // The session's directory must be writable by the session user.
            chown_tree(&spec.notebook_dir, SESSION_UID)?;
            format!("{SESSION_UID}:{SESSION_UID}")
        } else {
            // SAFETY: getuid/getgid cannot fail.
            unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) }
        };
        let memory = (self.limits.memory_limit_mb * 1024 * 1024) as i64;
        let mut cmd: Vec<String> = vec![
            format!("{IMAGE_VENV}/bin/marimo"),
            spec.mode.marimo_command().into(),
            format!("{WORK_MOUNT}/{}", super::super::files::NOTEBOOK_FILE),
        ];
        cmd.extend(
            [
                "--headless",
                "--host",
                "127.0.0.1",
                "--port",
                &spec.port.to_string(),
                "--base-url",
                &spec.base_url,
                "--token",
                "--token-password-file",
                TOKEN_MOUNT,
                "--no-sandbox",
            ]
            .map(String::from),
        );
        cmd.extend(spec.mode.edit_only(&["--skip-update-check"]).iter().map(|a| a.to_string()));
        let mut env = vec![
            format!("PATH={IMAGE_VENV}/bin:/usr/bin:/bin"),
            "HOME=/tmp".into(),
            "LANG=C.UTF-8".into(),
            "MARIMO_SKIP_UPDATE_CHECK=1".into(),
            format!("DUCKPOND_DATA_PATH={LAKE_MOUNT}/data/"),
        ];
        if spec.catalog_sqlite.is_some() {
            env.push(format!("DUCKPOND_CATALOG=ducklake:sqlite:{LAKE_MOUNT}/catalog.sqlite"));
        }
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            ("duckpond.account".to_string(), spec.account_id.clone()),
            ("duckpond.notebook".to_string(), spec.notebook_id.clone()),
            ("duckpond.session".to_string(), spec.session_id.clone()),
        ]);
        let host_config = HostConfig {
            network_mode: Some("none".into()),
            memory: Some(memory),
            memory_swap: Some(memory),
            cpu_period: Some(CPU_PERIOD_US),
            cpu_quota: Some(((self.limits.cpu_limit * CPU_PERIOD_US as f64).round() as i64).max(1_000)),
            pids_limit: Some(i64::from(self.limits.pids_limit)),
            shm_size: Some((self.limits.shm_size_mb * 1024 * 1024) as i64),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                format!("rw,nosuid,nodev,size={TMPFS_SIZE_MB}m,mode=1777"),
            )])),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            binds: Some(vec![
                format!("{}:{LAKE_MOUNT}:ro", spec.account_root.display()),
                format!(
                    "{}:{WORK_MOUNT}:{}",
                    spec.notebook_dir.display(),
                    match spec.mode {
                        crate::notebooks::SessionMode::Edit => "rw",
                        crate::notebooks::SessionMode::View => "ro",
                    }
                ),
                format!("{}:{TOKEN_MOUNT}:ro", token_file.display()),
            ]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(labels),
            user: Some(user),
            working_dir: Some(WORK_MOUNT.into()),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = self.container_name(&spec.session_id);
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body)
            .await
            .with_context(|| format!("creating container {name} from image {}", self.image))?;
        let mut handle = ContainerHandle { id: created.id, dir, _relay: None };
        if let Err(e) = self.docker.start_container(&handle.id, None).await {
            self.remove(&handle).await;
            return Err(anyhow::Error::new(e).context(format!("starting container {name}")));
        }
        match self.relay_into(&handle.id, spec.port).await {
            Ok(relay) => handle._relay = Some(relay),
            Err(e) => {
                self.remove(&handle).await;
                return Err(e.context(format!("reaching container {name}")));
            }
        }
        Ok(handle)
    }

    /// A relay from the host's loopback `port` into the container's network
    /// namespace.
    async fn relay_into(&self, id: &str, port: u16) -> anyhow::Result<Relay> {
        let info = self.docker.inspect_container(id, None).await.context("inspecting the container")?;
        let pid = info.state.and_then(|s| s.pid).filter(|&p| p > 0).context("the container has no process")?;
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .context("opening the container's network namespace (the daemon must run as root)")?;
        Relay::start(netns, port).context("starting the relay into the container")
    }

    /// Why the container is gone (or its kernel was OOM-killed).
    pub async fn exit_reason(&self, h: &ContainerHandle) -> Option<String> {
        let oom = || {
            format!(
                "out of memory: a process of the session went past notebooks.memory_limit_mb ({} MB) and was killed",
                self.limits.memory_limit_mb
            )
        };
        if self.ooms.lock().expect("oom set").contains(&h.id) {
            return Some(oom());
        }
        match self.docker.inspect_container(&h.id, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.running == Some(true) {
                    return None;
                }
                if state.oom_killed == Some(true) {
                    return Some(oom());
                }
                Some(format!("container exited with code {}", state.exit_code.unwrap_or(-1)))
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Some("container disappeared".into())
            }
            // The engine is unreachable: not a verdict about the session.
            Err(e) => {
                tracing::warn!(error = %e, "cannot inspect a notebook container");
                None
            }
        }
    }

    /// Stops (SIGTERM, then SIGKILL after the grace period) and removes.
    pub async fn stop(&self, h: &ContainerHandle) {
        let grace_s = self.limits.stop_grace.as_secs().max(1) as i32;
        let _ = self.docker.stop_container(&h.id, Some(StopContainerOptionsBuilder::new().t(grace_s).build())).await;
        self.remove(h).await;
    }

    async fn remove(&self, h: &ContainerHandle) {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.docker.remove_container(&h.id, Some(opts)).await {
            if !matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) {
                tracing::warn!(container = %h.id, error = %e, "removing a notebook container");
            }
        }
        self.ooms.lock().expect("oom set").remove(&h.id);
        let _ = std::fs::remove_dir_all(&h.dir);
    }

    /// Removes every container of this instance (found by label).
    pub async fn sweep_orphans(&self) -> usize {
        let filters = HashMap::from([("label", vec![format!("{LABEL_INSTANCE}={}", self.instance)])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build()))
            .await;
        let containers = match list {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listing notebook containers for the orphan sweep");
                return 0;
            }
        };
        let mut n = 0;
        for c in containers {
            if let Some(id) = c.id {
                n += 1;
                let dir = self.sessions_dir.join("-");
                self.remove(&ContainerHandle { id, dir, _relay: None }).await;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.sessions_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        n
    }

    /// The container's last output lines.
    pub async fn output_tail(&self, h: &ContainerHandle) -> String {
        let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&OUTPUT_TAIL_LINES.to_string()).build();
        let mut logs = self.docker.logs(&h.id, Some(opts));
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&chunk.to_string());
        }
        tail_lines(&out)
    }
}

/// Records OOM events of this instance's containers until the engine goes
/// away (then sessions fall back to the exit state's OOMKilled flag).
async fn watch_ooms(docker: Docker, instance: String, ooms: Arc<Mutex<HashSet<String>>>) {
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["oom".to_string()]),
        ("label", vec![format!("{LABEL_INSTANCE}={instance}")]),
    ]);
    let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                if let Some(id) = ev.actor.and_then(|a| a.id) {
                    tracing::warn!(container = %id, "notebook container hit its memory limit");
                    ooms.lock().expect("oom set").insert(id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Docker event stream ended");
                return;
            }
        }
    }
}

/// chown -R to `uid:uid` (the daemon runs as root here), never following
/// a symbolic link (a previous session may have planted some). It runs
/// while no session of this notebook runs, so nothing swaps entries under it.
fn chown_tree(dir: &std::path::Path, uid: u32) -> std::io::Result<()> {
    if !std::fs::symlink_metadata(dir)?.is_dir() {
        return std::os::unix::fs::lchown(dir, Some(uid), Some(uid));
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        // DirEntry::file_type does not follow links.
        if e.file_type()?.is_dir() {
            chown_tree(&e.path(), uid)?;
        } else {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

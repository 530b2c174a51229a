//! marimo notebooks: the account's `.py` files ([`files`]), the sessions
//! that serve them ([`sessions`]) on a backend ([`backend`]: local process
//! or Docker container) with a loopback port from [`ports`], and the
//! authenticated proxy in front of them ([`proxy`]).
//!
//! Trust boundary: a session runs code the account wrote. It sees that
//! account's lake read-only and nothing of other accounts; the Docker backend
//! enforces this with mounts, the process backend only with the host user's
//! file permissions (see docs/ARCHITECTURE.md).

pub mod backend;
pub mod files;
pub mod ports;
pub mod proxy;
pub mod relay;
pub mod sessions;

use std::fmt;

use crate::accounts::AccountId;

/// Characters of a notebook id (lowercase hex).
const NOTEBOOK_ID_LEN: usize = 16;

/// A notebook's id: random, so URLs do not reveal names and ids are unique
/// across accounts (the proxy path `/notebooks/{id}` names no account).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotebookId(String);

impl NotebookId {
    /// A fresh random id.
    pub fn random() -> Self {
        let bytes: [u8; NOTEBOOK_ID_LEN / 2] = rand::random();
        Self(hex::encode(bytes))
    }

    /// Parses an id from a URL: exactly 16 lowercase hex digits, so it can
    /// never be a path trick.
    pub fn parse(s: &str) -> Result<Self, NotebookError> {
        if s.len() == NOTEBOOK_ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_string()))
        } else {
            Err(NotebookError::InvalidId(s.chars().take(64).collect()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NotebookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything that can go wrong with notebooks and sessions.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    /// Not a notebook id.
    #[error("invalid notebook id {0:?}: expected 16 lowercase hex digits")]
    InvalidId(String),
    /// Not an acceptable name.
    #[error("invalid notebook name: {0}")]
    InvalidName(String),
    /// No such notebook in this account.
    #[error("notebook {0} not found")]
    NotFound(NotebookId),
    /// The account already has a notebook of that name.
    #[error("a notebook named {0:?} already exists")]
    NameTaken(String),
    /// The file on disk is not something the API will read back (a link,
    /// not a regular file, not text).
    #[error("the notebook file cannot be read: {0}")]
    Unreadable(String),
    /// The content is over `notebooks.max_notebook_bytes`.
    #[error("notebook content is {size} bytes; the limit is {limit} bytes (notebooks.max_notebook_bytes)")]
    TooLarge {
        /// Bytes sent.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The account runs as many sessions as its quota allows.
    #[error(
        "the account already runs {running} notebook session(s), its limit (max_notebook_sessions); stop one first"
    )]
    SessionLimit {
        /// Sessions running.
        running: u32,
    },
    /// Every port of `notebooks.port_range` is taken.
    #[error(
        "no free notebook port in {first}-{last} (notebooks.port_range): too many sessions on this server; retry later"
    )]
    PortsExhausted {
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },
    /// The session is not in a state that allows the operation.
    #[error("{0}")]
    NotRunning(String),
    /// The session is still starting.
    #[error("the notebook session is starting; retry in a moment")]
    Starting,
    /// The session's server did not answer the proxy.
    #[error("the notebook session did not answer: {0}")]
    Upstream(String),
    /// The backend failed (spawn, Docker API, filesystem).
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
    /// Reading or writing the notebook files.
    #[error("notebook storage: {0}")]
    Io(#[from] std::io::Error),
}

/// How a session serves its notebook. A notebook may have one session of
/// each mode at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// marimo's editor (`marimo edit`): code is changed, saved and run.
    /// Needs a `write` key.
    Edit,
    /// marimo's app view (`marimo run`): the notebook runs and its outputs
    /// and widgets work, its code cannot be changed and its directory is
    /// mounted read-only. A `read` key suffices.
    View,
}

impl SessionMode {
    /// The marimo command serving this mode.
    pub fn marimo_command(self) -> &'static str {
        match self {
            SessionMode::Edit => "edit",
            SessionMode::View => "run",
        }
    }

    /// `args` for the editor, nothing for the view (`marimo run` does not
    /// take editor flags such as `--skip-update-check`; the environment's
    /// MARIMO_SKIP_UPDATE_CHECK covers it there).
    pub fn edit_only<'a>(self, args: &'a [&'a str]) -> &'a [&'a str] {
        match self {
            SessionMode::Edit => args,
            SessionMode::View => &[],
        }
    }
}

/// Who a session belongs to: the proxy checks every part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The owning account.
    pub account: AccountId,
    /// The notebook served.
    pub notebook: NotebookId,
    /// Editor or read-only view.
    pub mode: SessionMode,
}

impl SessionKey {
    /// marimo's `--base-url` and the proxy prefix of this session:
    /// `/notebooks/{id}` (edit) or `/notebooks/view/{id}` (view; "view" is
    /// never an id, which is 16 hex digits).
    pub fn base_url(&self) -> String {
        match self.mode {
            SessionMode::Edit => format!("/notebooks/{}", self.notebook),
            SessionMode::View => format!("/notebooks/view/{}", self.notebook),
        }
    }
}

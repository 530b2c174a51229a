//! An account's notebook files.
//!
//! `<account>/notebooks/<id>/notebook.py` is the marimo file (marimo also
//! keeps its `__marimo__/` cache beside it; the directory is what a Docker
//! session mounts writable), and `<account>/notebooks/<id>.json` holds the
//! name and times, out of the session's reach. Every write is a temp file,
//! fsync and rename, so a crash leaves the old or the new version.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{NotebookError, NotebookId};

/// File name of the notebook inside its directory.
pub const NOTEBOOK_FILE: &str = "notebook.py";
/// Longest notebook name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The new-notebook template. Its setup cell attaches the account's lake
/// read-only from the environment the session backend sets, so
/// `mo.sql("SELECT * FROM mytable")` works at once. Extensions are loaded by
/// path from their pip packages: nothing is downloaded at run time.
pub const TEMPLATE: &str = r#"import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")

with app.setup:
    import os
    import pathlib
    import time

    import duckdb
    import duckdb_extension_ducklake
    import duckdb_extension_sqlite_scanner
    import marimo as mo

    # DuckPond sets DUCKPOND_CATALOG and DUCKPOND_DATA_PATH for the session:
    # the account's DuckLake, attached read-only as `lake` and made current
    # (in a container the data directory is mounted elsewhere than on the
    # host, hence OVERRIDE_DATA_PATH).
    for _pkg, _name in [(duckdb_extension_sqlite_scanner, "sqlite_scanner"), (duckdb_extension_ducklake, "ducklake")]:
        _path = pathlib.Path(_pkg.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{_name}.duckdb_extension"
        duckdb.execute(f"LOAD '{_path}'")
    if os.environ.get("DUCKPOND_CATALOG"):
        # A commit holds a SQLite catalog's lock for a moment, and DuckDB's
        # SQLite reader does not wait for it: retry for up to 10 s.
        for _attempt in range(100):
            try:
                duckdb.execute(
                    f"ATTACH IF NOT EXISTS '{os.environ['DUCKPOND_CATALOG']}' AS lake "
                    f"(READ_ONLY, DATA_PATH '{os.environ['DUCKPOND_DATA_PATH']}', OVERRIDE_DATA_PATH true)"
                )
                break
            except duckdb.Error as _e:
                if "database is locked" not in str(_e) or _attempt == 99:
                    raise
                time.sleep(0.1)
        duckdb.execute("USE lake")


@app.cell
def _():
    mo.md("""
    # New notebook

    Your datasets are tables of the `lake` database, e.g.
    `mo.sql("SELECT * FROM my_table LIMIT 10")`. It is read-only here:
    write through DuckPond's upload and streaming APIs.
    """)
    return


@app.cell
def _():
    tables = mo.sql("SELECT table_name FROM information_schema.tables WHERE table_catalog = 'lake' ORDER BY 1")
    return (tables,)


if __name__ == "__main__":
    app.run()
"#;

/// What is kept beside a notebook file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    name: String,
    created_at: DateTime<Utc>,
}

/// A notebook as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotebookSummary {
    /// Id (used in URLs).
    #[schema(value_type = String)]
    pub id: String,
    /// Name, unique in the account.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of the file (through the API or the editor).
    pub updated_at: DateTime<Utc>,
    /// Size of the `.py` file.
    pub size_bytes: u64,
}

/// A validated notebook name: 1-100 characters, no control characters,
/// slashes or backslashes, not `.` or `..`, no surrounding blanks.
pub fn validate_name(name: &str) -> Result<String, NotebookError> {
    let bad = |why: &str| Err(NotebookError::InvalidName(why.to_string()));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.trim() != name {
        return bad("must not start or end with blanks");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return bad(&format!("at most {MAX_NAME_CHARS} characters"));
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || matches!(c, '/' | '\\')) {
        return bad(&format!("must not contain {c:?}"));
    }
    Ok(name.to_string())
}

/// One account's notebooks on disk.
#[derive(Debug, Clone)]
pub struct NotebookStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl NotebookStore {
    /// The store below `dir` (the account's `notebooks/`).
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    /// The directory a session of `id` works in.
    pub fn notebook_dir(&self, id: &NotebookId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    fn meta_path(&self, id: &NotebookId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn file_path(&self, id: &NotebookId) -> PathBuf {
        self.notebook_dir(id).join(NOTEBOOK_FILE)
    }

    fn check_size(&self, content: &str) -> Result<(), NotebookError> {
        let size = content.len() as u64;
        if size > self.max_bytes {
            return Err(NotebookError::TooLarge { size, limit: self.max_bytes });
        }
        Ok(())
    }

    fn read_meta(&self, id: &NotebookId) -> Result<Meta, NotebookError> {
        match std::fs::read(self.meta_path(id)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| NotebookError::Backend(anyhow::anyhow!("notebook {id}: unreadable metadata: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(NotebookError::NotFound(id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    fn summary(&self, id: &NotebookId, meta: Meta) -> Result<NotebookSummary, NotebookError> {
        // symlink_metadata: a session may have replaced its file by a link;
        // its target's details are not the account's to learn.
        let (updated_at, size_bytes) = match std::fs::symlink_metadata(self.file_path(id)) {
            Ok(m) if m.is_file() => (m.modified().map(DateTime::<Utc>::from).unwrap_or(meta.created_at), m.len()),
            Ok(_) => (meta.created_at, 0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (meta.created_at, 0),
            Err(e) => return Err(e.into()),
        };
        Ok(NotebookSummary { id: id.to_string(), name: meta.name, created_at: meta.created_at, updated_at, size_bytes })
    }

    /// Every notebook, by name.
    pub fn list(&self) -> Result<Vec<NotebookSummary>, NotebookError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let name = entry?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| NotebookId::parse(n).ok())
            else {
                continue;
            };
            match self.read_meta(&id) {
                Ok(meta) => out.push(self.summary(&id, meta)?),
                // Deleted between read_dir and read.
                Err(NotebookError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.to_lowercase().cmp(&b.name.to_lowercase()).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One notebook's summary.
    pub fn get(&self, id: &NotebookId) -> Result<NotebookSummary, NotebookError> {
        let meta = self.read_meta(id)?;
        self.summary(id, meta)
    }

    /// One notebook's content.
    pub fn content(&self, id: &NotebookId) -> Result<String, NotebookError> {
        self.read_meta(id)?;
        // The session can write this directory: never follow a link it
        // planted (it would read any file the daemon can) and never read
        // anything but a regular file of bounded size.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.file_path(id));
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(NotebookError::Unreadable("notebook.py is a symbolic link".into()))
            }
            Err(e) => return Err(e.into()),
        };
        let m = file.metadata()?;
        if !m.is_file() {
            return Err(NotebookError::Unreadable("notebook.py is not a regular file".into()));
        }
        let mut text = String::new();
        let read = std::io::Read::take(file, self.max_bytes + 1).read_to_string(&mut text);
        read.map_err(|_| NotebookError::Unreadable("notebook.py is not UTF-8 text".into()))?;
        if text.len() as u64 > self.max_bytes {
            return Err(NotebookError::TooLarge { size: m.len(), limit: self.max_bytes });
        }
        Ok(text)
    }

    fn name_taken(&self, name: &str, except: Option<&NotebookId>) -> Result<bool, NotebookError> {
        Ok(self
            .list()?
            .iter()
            .any(|n| n.name.to_lowercase() == name.to_lowercase() && Some(n.id.as_str()) != except.map(|i| i.as_str())))
    }

    /// Creates a notebook (the template when `content` is None). The caller
    /// serialises creates and renames of one account.
    pub fn create(&self, name: &str, content: Option<&str>) -> Result<NotebookSummary, NotebookError> {
        let name = validate_name(name)?;
        let content = content.unwrap_or(TEMPLATE);
        self.check_size(content)?;
        if self.name_taken(&name, None)? {
            return Err(NotebookError::NameTaken(name));
        }
        let id = NotebookId::random();
        let dir = self.notebook_dir(&id);
        let written = (|| {
            std::fs::create_dir_all(&dir)?;
            write_atomically(&self.file_path(&id), content.as_bytes())?;
            // The metadata last: a notebook exists once it has a name.
            let meta = Meta { name, created_at: Utc::now() };
            write_atomically(&self.meta_path(&id), &serde_json::to_vec(&meta).expect("metadata serialises"))?;
            Ok::<_, NotebookError>(meta)
        })();
        match written {
            Ok(meta) => self.summary(&id, meta),
            Err(e) => {
                // A disk that filled up halfway leaves no nameless directory.
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Renames and/or replaces the content.
    pub fn update(
        &self,
        id: &NotebookId,
        name: Option<&str>,
        content: Option<&str>,
    ) -> Result<NotebookSummary, NotebookError> {
        let mut meta = self.read_meta(id)?;
        let name = name.map(validate_name).transpose()?;
        if let Some(c) = content {
            self.check_size(c)?;
        }
        if let Some(name) = name {
            if self.name_taken(&name, Some(id))? {
                return Err(NotebookError::NameTaken(name));
            }
            meta.name = name;
            write_atomically(&self.meta_path(id), &serde_json::to_vec(&meta).expect("metadata serialises"))?;
        }
        if let Some(c) = content {
            write_atomically(&self.file_path(id), c.as_bytes())?;
        }
        self.summary(id, meta)
    }

    /// Deletes a notebook and its directory.
    pub fn delete(&self, id: &NotebookId) -> Result<(), NotebookError> {
        self.read_meta(id)?;
        // The name first: a half-deleted notebook is invisible, not broken.
        std::fs::remove_file(self.meta_path(id))?;
        match std::fs::remove_dir_all(self.notebook_dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes `bytes` to `path` through a temporary sibling, fsync and rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("notebook paths have a parent");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    // Readable by a Docker session's user, and owned like the file it
    // replaces (the session may save it in place).
    tmp.as_file().set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    if let Ok(old) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(old.uid()), Some(old.gid()));
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for bad in ["", " x", "x ", ".", "..", "a/b", "a\\b", "a\nb", "a\0b", &"x".repeat(101)] {
            assert!(matches!(validate_name(bad), Err(NotebookError::InvalidName(_))), "{bad:?} accepted");
        }
        for good in ["x", "Sales report 2026", "données-été", "a.b", "..x", &"x".repeat(100)] {
            assert_eq!(validate_name(good).unwrap(), good);
        }
    }

    #[test]
    fn ids_reject_path_tricks() {
        for bad in ["..", "../../etc/passwd", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "%2e%2e"] {
            assert!(NotebookId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let id = NotebookId::random();
        assert_eq!(NotebookId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn create_list_update_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = NotebookStore::new(dir.path().join("notebooks"), 1_000_000);
        std::fs::create_dir_all(dir.path().join("notebooks")).unwrap();
        let a = store.create("Alpha", None).unwrap();
        let id = NotebookId::parse(&a.id).unwrap();
        assert_eq!(store.content(&id).unwrap(), TEMPLATE);
        assert!(matches!(store.create("alpha", Some("x")), Err(NotebookError::NameTaken(_))));
        let b = store.create("beta", Some("print(1)")).unwrap();
        assert_eq!(store.list().unwrap().iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["Alpha", "beta"]);
        assert!(matches!(
            store.update(&NotebookId::parse(&b.id).unwrap(), Some("ALPHA"), None),
            Err(NotebookError::NameTaken(_))
        ));
        // Renaming to itself in another case is fine.
        store.update(&id, Some("ALPHA"), Some("x = 1")).unwrap();
        assert_eq!(store.content(&id).unwrap(), "x = 1");
        assert_eq!(store.get(&id).unwrap().name, "ALPHA");
        store.delete(&id).unwrap();
        assert!(matches!(store.get(&id), Err(NotebookError::NotFound(_))));
        assert!(!store.notebook_dir(&id).exists());
        assert_eq!(store.list().unwrap().len(), 1);
        // A session replaces its file by a link to a secret: the API reads
        // neither the target's content nor its size.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "admin key").unwrap();
        let b_id = NotebookId::parse(&b.id).unwrap();
        std::fs::remove_file(store.file_path(&b_id)).unwrap();
        std::os::unix::fs::symlink(&secret, store.file_path(&b_id)).unwrap();
        assert!(matches!(store.content(&b_id), Err(NotebookError::Unreadable(_))));
        assert_eq!(store.get(&b_id).unwrap().size_bytes, 0);
        // A directory or a FIFO in its place is refused too (no hang).
        std::fs::remove_file(store.file_path(&b_id)).unwrap();
        let fifo = std::ffi::CString::new(store.file_path(&b_id).to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(matches!(store.content(&b_id), Err(NotebookError::Unreadable(_))));
        let small = NotebookStore::new(dir.path().join("notebooks"), 3);
        assert!(matches!(small.create("big", Some("1234")), Err(NotebookError::TooLarge { size: 4, limit: 3 })));
    }
}

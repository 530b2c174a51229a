//! Reaching an account's DuckLake: the pinned DuckDB's extensions, the catalog
//! location, and a sandbox-ready in-memory DuckDB instance to attach it to.
//!
//! Extensions are never installed or autoloaded: DuckPond LOADs the official
//! 1.5.5 binaries by absolute path from `duckdb.extension_directory`, so what
//! runs is exactly what the setup step fetched.

use std::path::{Path, PathBuf};

use duckdb::{Config, Connection};

/// The DuckDB release the `duckdb` crate bundles; extension binaries must match.
pub const DUCKDB_VERSION: &str = "v1.5.5";

/// Extensions the daemon loads at start, in load order. `icu` gives every
/// instance time zones (zoned timestamps read as TIMESTAMPTZ, `timezone()`,
/// `AT TIME ZONE`) and collations, as stock DuckDB has them.
pub const REQUIRED_EXTENSIONS: [&str; 5] = ["icu", "sqlite_scanner", "postgres_scanner", "httpfs", "ducklake"];

/// The session time zone of every instance: rendering TIMESTAMPTZ as text
/// must not depend on the server's local zone.
pub const TIME_ZONE: &str = "UTC";

/// The command that fetches missing extension binaries into a directory.
pub const FETCH_COMMAND: &str = ".ci/fetch-duckdb-extensions.sh";

/// Errors reaching or creating a DuckLake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// An extension binary is not where the configuration says.
    #[error(
        "DuckDB extension `{name}` not found: expected {expected} (duckdb.extension_directory = {dir}); \
         fetch the official {DUCKDB_VERSION} binaries with `{FETCH_COMMAND} {dir}` (or `make extensions`)"
    )]
    MissingExtension {
        /// Extension name.
        name: &'static str,
        /// Full path that was checked.
        expected: String,
        /// The configured directory.
        dir: String,
    },
    /// This machine's platform has no official binaries we know of.
    #[error("no DuckDB extension platform for {os}/{arch}")]
    UnsupportedPlatform {
        /// `std::env::consts::OS`.
        os: &'static str,
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// DuckDB refused an operation; `context` says which.
    // The cause is part of the message (and deliberately not a `source`,
    // which would print it twice in error chains).
    #[error("{context}: {error}")]
    DuckDb {
        /// What was being done.
        context: String,
        /// DuckDB's error.
        error: duckdb::Error,
    },
    /// A filesystem operation on the lake's directories failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A round trip through a new catalog returned something else than written.
    #[error("catalog round trip failed: {0}")]
    RoundTrip(String),
}

impl LakeError {
    /// Maps a DuckDB error to this error with what was being done.
    pub fn duckdb(context: impl Into<String>) -> impl FnOnce(duckdb::Error) -> Self {
        let context = context.into();
        move |source| LakeError::DuckDb { context, error: source }
    }

    /// True when the error is a missing extension binary (a setup problem).
    pub fn is_missing_extension(&self) -> bool {
        matches!(self, LakeError::MissingExtension { .. })
    }
}

/// The verified set of extension binaries.
#[derive(Debug, Clone)]
pub struct Extensions {
    dir: PathBuf,
    platform_dir: PathBuf,
}

impl Extensions {
    /// Checks that every [`REQUIRED_EXTENSIONS`] binary exists under `dir`.
    pub fn locate(dir: &Path) -> Result<Self, LakeError> {
        let platform = platform()?;
        let platform_dir = dir.join(DUCKDB_VERSION).join(platform);
        let me = Self { dir: dir.to_path_buf(), platform_dir };
        for name in REQUIRED_EXTENSIONS {
            let path = me.path_of(name);
            if !path.is_file() {
                return Err(LakeError::MissingExtension {
                    name,
                    expected: path.display().to_string(),
                    dir: dir.display().to_string(),
                });
            }
        }
        Ok(me)
    }

    /// The configured directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the binary of `name` lives.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.platform_dir.join(format!("{name}.duckdb_extension"))
    }

    /// LOADs every required extension into `conn`.
    pub fn load_into(&self, conn: &Connection) -> Result<(), LakeError> {
        self.load_some(conn, &REQUIRED_EXTENSIONS)
    }

    /// LOADs the named extensions (each one of [`REQUIRED_EXTENSIONS`]).
    pub fn load_some(&self, conn: &Connection, names: &[&str]) -> Result<(), LakeError> {
        for name in names {
            let path = self.path_of(name);
            let sql = format!("LOAD {}", sql_string(&path.display().to_string()));
            conn.execute_batch(&sql)
                .map_err(LakeError::duckdb(format!("loading DuckDB extension {}", path.display())))?;
        }
        Ok(())
    }

    /// Opens an in-memory DuckDB with autoinstall and autoload off and every
    /// required extension loaded. Proves at start that the binaries load.
    pub fn open_instance(&self, settings: &InstanceSettings) -> Result<Connection, LakeError> {
        let config = Config::default()
            .with("autoinstall_known_extensions", "false")
            .and_then(|c| c.with("autoload_known_extensions", "false"))
            .and_then(|c| c.with("extension_directory", self.dir.display().to_string()))
            .and_then(|c| c.with("memory_limit", format!("{}MB", settings.memory_limit_mb)))
            .and_then(|c| c.threads(i64::from(settings.threads)))
            .map_err(LakeError::duckdb("configuring DuckDB"))?;
        let conn = Connection::open_in_memory_with_flags(config).map_err(LakeError::duckdb("opening DuckDB"))?;
        self.load_into(&conn)?;
        conn.execute_batch(&format!("SET TimeZone = {}", sql_string(TIME_ZONE)))
            .map_err(LakeError::duckdb("setting the time zone"))?;
        Ok(conn)
    }
}

/// Resource settings of one DuckDB instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceSettings {
    /// DuckDB `memory_limit`.
    pub memory_limit_mb: u64,
    /// DuckDB `threads`.
    pub threads: u32,
}

fn platform() -> Result<&'static str, LakeError> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Ok("linux_amd64"),
        ("linux", "aarch64") => Ok("linux_arm64"),
        ("macos", "x86_64") => Ok("osx_amd64"),
        ("macos", "aarch64") => Ok("osx_arm64"),
        (os, arch) => Err(LakeError::UnsupportedPlatform { os, arch }),
    }
}

/// Quotes `s` as a SQL string literal.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where a DuckLake's catalog (metadata) lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogMetadata {
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A schema of a PostgreSQL database, one per account; DuckLake creates
    /// the schema on first attach.
    Postgres {
        /// libpq connection string or `postgresql://` URL.
        conninfo: String,
        /// The account's metadata schema.
        schema: String,
    },
}

/// Where an account's DuckLake catalog and data files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogLocation {
    /// The catalog.
    pub metadata: CatalogMetadata,
    /// Directory of the Parquet data files (ends up with a trailing slash).
    pub data_path: PathBuf,
}

impl CatalogLocation {
    /// A SQLite-backed catalog.
    pub fn sqlite(catalog_file: PathBuf, data_path: PathBuf) -> Self {
        Self { metadata: CatalogMetadata::Sqlite(catalog_file), data_path }
    }

    /// Where DuckLake's own tables are, qualified, in an instance that
    /// attached this catalog as `alias` (`__ducklake_metadata_<alias>.<schema>`).
    pub fn metadata_tables(&self, alias: &str) -> String {
        let schema = match &self.metadata {
            CatalogMetadata::Sqlite(_) => "main".to_string(),
            CatalogMetadata::Postgres { schema, .. } => format!("\"{}\"", schema.replace('"', "\"\"")),
        };
        format!("__ducklake_metadata_{alias}.{schema}")
    }

    /// A human-readable name of the catalog (never includes a password).
    pub fn describe(&self) -> String {
        match &self.metadata {
            CatalogMetadata::Sqlite(f) => f.display().to_string(),
            CatalogMetadata::Postgres { schema, .. } => format!("PostgreSQL schema {schema}"),
        }
    }

    /// The `ATTACH` statement for this catalog under `alias`.
    pub fn attach_sql(&self, alias: &str, read_only: bool) -> String {
        let mut data_path = self.data_path.display().to_string();
        if !data_path.ends_with('/') {
            data_path.push('/');
        }
        let (target, schema) = match &self.metadata {
            CatalogMetadata::Sqlite(f) => (format!("ducklake:sqlite:{}", f.display()), String::new()),
            CatalogMetadata::Postgres { conninfo, schema } => {
                (format!("ducklake:postgres:{conninfo}"), format!(", METADATA_SCHEMA {}", sql_string(schema)))
            }
        };
        let ro = if read_only { ", READ_ONLY" } else { "" };
        format!("ATTACH {} AS {alias} (DATA_PATH {}{schema}{ro})", sql_string(&target), sql_string(&data_path))
    }

    /// Creates the catalog (and its data directory) and proves it works by
    /// writing, reading back and dropping a probe table.
    pub fn create(&self, extensions: &Extensions, settings: &InstanceSettings) -> Result<(), LakeError> {
        std::fs::create_dir_all(&self.data_path).map_err(|source| LakeError::Io {
            context: format!("creating {}", self.data_path.display()),
            error: source,
        })?;
        let conn = extensions.open_instance(settings)?;
        conn.execute_batch(&self.attach_sql("lake", false))
            .map_err(LakeError::duckdb(format!("creating DuckLake catalog {}", self.describe())))?;
        let probe = "lake.main.__duckpond_probe";
        conn.execute_batch(&format!(
            "CREATE TABLE {probe} (id INTEGER, label VARCHAR); INSERT INTO {probe} VALUES (1, 'duckpond'), (2, 'lake');"
        ))
        .map_err(LakeError::duckdb("writing the catalog probe table"))?;
        let (count, labels): (i64, String) = conn
            .query_row(&format!("SELECT count(*), string_agg(label, ',' ORDER BY id) FROM {probe}"), [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(LakeError::duckdb("reading the catalog probe table"))?;
        if count != 2 || labels != "duckpond,lake" {
            return Err(LakeError::RoundTrip(format!("read back {count} rows {labels:?}")));
        }
        conn.execute_batch(&format!("DROP TABLE {probe}; DETACH lake;"))
            .map_err(LakeError::duckdb("dropping the catalog probe table"))?;
        Ok(())
    }

    /// Removes the catalog's metadata where it does not live in the
    /// account's directory (a PostgreSQL schema). Data files go with the
    /// directory. Idempotent.
    pub fn destroy(&self, extensions: &Extensions, settings: &InstanceSettings) -> Result<(), LakeError> {
        let CatalogMetadata::Postgres { conninfo, schema } = &self.metadata else { return Ok(()) };
        let conn = extensions.open_instance(settings)?;
        conn.execute_batch(&format!("ATTACH {} AS pg (TYPE postgres)", sql_string(conninfo)))
            .map_err(LakeError::duckdb("connecting to the PostgreSQL catalog database"))?;
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.replace('"', "\"\""));
        conn.execute_batch(&format!("CALL postgres_execute('pg', {})", sql_string(&drop)))
            .map_err(LakeError::duckdb(format!("dropping PostgreSQL schema {schema}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_string_escapes_quotes() {
        assert_eq!(sql_string("a'b"), "'a''b'");
    }

    #[test]
    fn attach_sql_quotes_paths_and_marks_read_only() {
        let loc = CatalogLocation::sqlite("/x/it's/catalog.sqlite".into(), "/x/data".into());
        assert_eq!(
            loc.attach_sql("lake", true),
            "ATTACH 'ducklake:sqlite:/x/it''s/catalog.sqlite' AS lake (DATA_PATH '/x/data/', READ_ONLY)"
        );
        let pg = CatalogLocation {
            metadata: CatalogMetadata::Postgres { conninfo: "dbname=d host=h".into(), schema: "duckpond_ab".into() },
            data_path: "/x/data/".into(),
        };
        assert_eq!(
            pg.attach_sql("lake", false),
            "ATTACH 'ducklake:postgres:dbname=d host=h' AS lake (DATA_PATH '/x/data/', METADATA_SCHEMA 'duckpond_ab')"
        );
    }

    #[test]
    fn missing_extension_names_file_and_fetch_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = Extensions::locate(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_missing_extension());
        // The first of the load order that is missing.
        assert!(msg.contains("icu.duckdb_extension"), "{msg}");
        assert!(msg.contains(FETCH_COMMAND), "{msg}");
    }
}

#![allow(dead_code)]
use std::path::{Path, PathBuf};

use duckpond_compactor::{
    AccountCompactor, CatalogLocation, CatalogMetadata, CompactorOptions, Extensions, InstanceSettings,
};
use duckpond_wal::WalOptions;

pub fn extensions() -> Extensions {
    let dir = std::env::var_os("DUCKPOND_TEST_EXTENSION_DIR")
        .expect("DUCKPOND_TEST_EXTENSION_DIR is not set: run the suite with `make test`");
    Extensions::locate(Path::new(&dir)).expect("extensions")
}

pub const SETTINGS: InstanceSettings = InstanceSettings { memory_limit_mb: 1024, threads: 2 };

/// An account directory laid out like the daemon's.
pub struct Account {
    pub root: PathBuf,
    location: CatalogLocation,
}

impl Account {
    /// With a SQLite catalog in the directory.
    pub fn new(root: &Path) -> Self {
        Self::with(root, CatalogMetadata::Sqlite(root.join("catalog.sqlite")))
    }

    /// With its catalog in a fresh schema of the test PostgreSQL database
    /// (dropped again when the account is dropped).
    pub fn new_postgres(root: &Path) -> Self {
        let conninfo = std::env::var("DUCKPOND_TEST_POSTGRES_URL")
            .expect("DUCKPOND_TEST_POSTGRES_URL is not set: run the suite with `make test`");
        let schema = format!("duckpond_test_{}", std::process::id() as u64 * 1000 + rand_suffix());
        Self::with(root, CatalogMetadata::Postgres { conninfo, schema })
    }

    fn with(root: &Path, metadata: CatalogMetadata) -> Self {
        let location = CatalogLocation { metadata, data_path: root.join("data") };
        location.create(&extensions(), &SETTINGS).expect("create catalog");
        Account { root: root.to_path_buf(), location }
    }

    pub fn location(&self) -> CatalogLocation {
        self.location.clone()
    }
    pub fn options(&self) -> CompactorOptions {
        CompactorOptions {
            quarantine_dir: self.root.join("quarantine"),
            scratch_dir: self.root.join("scratch"),
            staged_dir: self.root.join("staged"),
            metrics_label: "test".into(),
            ..Default::default()
        }
    }
    pub fn open(&self) -> AccountCompactor {
        self.open_with(self.options())
    }
    pub fn open_with(&self, opts: CompactorOptions) -> AccountCompactor {
        AccountCompactor::open(
            &extensions(),
            &SETTINGS,
            &self.location(),
            &self.root.join("wal"),
            WalOptions::default(),
            opts,
        )
        .expect("open compactor")
        .0
    }
}

/// Runs `sql` against the lake through a fresh read-only DuckDB (not the writer).
pub fn query_i64(account: &Account, sql: &str) -> i64 {
    let ext = extensions();
    let conn = ext.open_instance(&SETTINGS).unwrap();
    conn.execute_batch(&account.location().attach_sql("lake", true)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = self.location.destroy(&extensions(), &SETTINGS);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    (t % 997) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

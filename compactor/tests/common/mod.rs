#![allow(dead_code)]
use std::path::{Path, PathBuf};

use duckpond_compactor::{AccountCompactor, CatalogLocation, CompactorOptions, Extensions, InstanceSettings};
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
}

impl Account {
    pub fn new(root: &Path) -> Self {
        let a = Account { root: root.to_path_buf() };
        a.location().create(&extensions(), &SETTINGS).expect("create catalog");
        a
    }
    pub fn location(&self) -> CatalogLocation {
        CatalogLocation { catalog_file: self.root.join("catalog.sqlite"), data_path: self.root.join("data") }
    }
    pub fn options(&self) -> CompactorOptions {
        CompactorOptions {
            quarantine_dir: self.root.join("quarantine"),
            scratch_dir: self.root.join("staging"),
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

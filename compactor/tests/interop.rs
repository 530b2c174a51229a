//! The lake is a standard DuckLake: Python `duckdb==1.5.5` with the official
//! ducklake extension opens an account's catalog directly (no DuckPond in
//! between) and reads exactly the rows the compactor committed.
//!
//! Needs `DUCKPOND_TEST_PYTHON`: a Python with duckdb==1.5.5 (set up by
//! `make test`).

mod common;

use std::process::Command;

use common::{extensions, query_i64, Account};
use duckpond_compactor::testing::{ipc_stream, narrow_batch};
use duckpond_schema::{LogRecord, TableName};

const SCRIPT: &str = r#"
import duckdb, json, sys
ext_dir, catalog, data = sys.argv[1:4]
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
for name in ("sqlite_scanner", "ducklake"):
    con.execute(f"LOAD '{ext_dir}/{name}.duckdb_extension'")
con.execute(f"ATTACH 'ducklake:sqlite:{catalog}' AS lake (DATA_PATH '{data}/', READ_ONLY)")
count, key_sum, labels = con.execute(
    "SELECT count(*), sum(writer * 1000000 + seq * 1000 + i)::BIGINT, count(DISTINCT label) FROM lake.events"
).fetchone()
version = con.execute("SELECT library_version FROM pragma_version()").fetchone()[0]
print(json.dumps({"count": count, "key_sum": key_sum, "labels": labels, "version": version}))
"#;

#[test]
fn python_duckdb_reads_the_lake_directly() {
    let python = std::env::var("DUCKPOND_TEST_PYTHON")
        .expect("DUCKPOND_TEST_PYTHON is not set: run the suite with `make test` (it installs duckdb==1.5.5)");
    let d = tempfile::tempdir().unwrap();
    let acct = Account::new(d.path());
    let c = acct.open();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for seq in 0..5 {
        let rec = LogRecord::Rows {
            table: TableName::parse("events").unwrap(),
            ipc: ipc_stream(&[narrow_batch(7, seq, 100)]),
        };
        rt.block_on(c.append(&[rec])).unwrap();
        c.flush_blocking().unwrap();
    }
    drop(c);
    let ext = extensions();
    let ext_dir = ext.path_of("ducklake").parent().unwrap().to_path_buf();
    let loc = acct.location();
    let out = Command::new(python)
        .args(["-c", SCRIPT])
        .arg(&ext_dir)
        .arg(acct.root.join("catalog.sqlite"))
        .arg(&loc.data_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "v1.5.5");
    assert_eq!(v["count"], 500);
    let key_sum = query_i64(&acct, "SELECT sum(writer * 1000000 + seq * 1000 + i)::BIGINT FROM lake.events");
    assert_eq!(v["key_sum"], key_sum);
    assert_eq!(v["labels"], 500);
}

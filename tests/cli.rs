//! The `duckpond` CLI end to end: init, db upgrade, accounts and keys, on
//! both metadata backends, with the real DuckDB extensions.

mod common;

use common::{Backend, TestEnv};

/// `init` writes the template once and refuses to overwrite without --force.
#[test]
fn init_writes_config_once() {
    let env = TestEnv::new(Backend::Sqlite);
    std::fs::remove_file(env.path().join("config.yaml")).unwrap();
    env.ok(&["init"]);
    let written = std::fs::read_to_string(env.path().join("config.yaml")).unwrap();
    for section in ["server:", "database:", "storage:", "duckdb:", "notebooks:", "limits:"] {
        assert!(written.contains(section), "missing {section}");
    }
    assert!(env.fails(&["init"]).contains("--force"));
    env.ok(&["init", "--force"]);
}

/// An unknown key in config.yaml stops every command with the key's name.
#[test]
fn unknown_config_field_is_named() {
    let env = TestEnv::new(Backend::Sqlite);
    env.write_config("limits:\n  max_file_size_mbb: 3\n");
    let err = env.fails(&["db", "upgrade"]);
    assert!(err.contains("max_file_size_mbb"), "{err}");
    // And an unknown environment override too.
    env.write_config("");
    let out = env.command().args(["db", "upgrade"]).env("DUCKPOND_SERVER__PORTT", "1").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("portt"));
}

fn upgrade_then_status_current(b: Backend) {
    let env = TestEnv::new(b);
    assert!(env.ok(&["db", "status"]).contains("uninitialised"));
    assert!(env.fails(&["account", "list"]).contains("duckpond db upgrade"));
    env.ok(&["db", "upgrade"]);
    assert!(env.ok(&["db", "status"]).starts_with("current"));
    // Idempotent.
    assert!(env.ok(&["db", "upgrade"]).contains("0 migration"));
}

fn account_lifecycle(b: Backend) {
    let env = TestEnv::migrated(b);
    let (account, key) = env.create_account("acme");
    assert_eq!(account["name"], "acme");
    assert!(key.starts_with("dpk_"), "{key}");
    let id = account["id"].as_str().unwrap();
    let root = env.path().join("data/accounts").join(id);
    assert!(root.join("catalog.sqlite").is_file(), "catalog created");
    for d in ["data", "wal", "incoming", "staged", "notebooks"] {
        assert!(root.join(d).is_dir(), "{d} created");
    }
    // Default quotas come from the config.
    assert_eq!(account["quotas"]["max_concurrent_queries"], 5);
    assert_eq!(account["quota_overrides"]["max_concurrent_queries"], serde_json::Value::Null);

    let err = env.fails(&["account", "create", "acme"]);
    assert!(err.contains("already exists"), "{err}");

    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["account", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let updated: serde_json::Value = serde_json::from_str(&env.ok(&[
        "account",
        "update",
        "acme",
        "--max-storage-gb",
        "2",
        "--max-concurrent-queries",
        "9",
        "--json",
    ]))
    .unwrap();
    assert_eq!(updated["quotas"]["max_storage_bytes"], 2u64 * 1024 * 1024 * 1024);
    assert_eq!(updated["quotas"]["max_concurrent_queries"], 9);
    assert!(env.fails(&["account", "update", "acme"]).contains("nothing to update"));
    assert!(env.fails(&["account", "update", "acme", "--max-concurrent-queries", "0"]).contains("at least 1"));

    // Without a terminal and without --yes, delete refuses and keeps the data.
    assert!(env.fails(&["account", "delete", "acme"]).contains("--yes"));
    assert!(root.is_dir());
    env.ok(&["account", "delete", "acme", "--yes"]);
    assert!(!root.exists(), "account directory removed");
    assert!(env.fails(&["account", "delete", "acme", "--yes"]).contains("not found"));
}

fn invalid_account_names_are_refused(b: Backend) {
    let env = TestEnv::migrated(b);
    for bad in ["", "Acme", "../x", "a/b", "a b", "-x"] {
        let err = env.fails(&["account", "create", "--", bad]);
        assert!(err.contains("invalid account name"), "{bad:?}: {err}");
    }
    // Nothing was created for any of them.
    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["account", "list", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]));
}

fn api_keys_create_list_revoke(b: Backend) {
    let env = TestEnv::migrated(b);
    env.create_account("acme");
    let k: serde_json::Value =
        serde_json::from_str(&env.ok(&["account", "api-key", "create", "acme", "--label", "ci", "--json"])).unwrap();
    let key_id = k["id"].as_str().unwrap();
    assert!(k["api_key"].as_str().unwrap().starts_with(&format!("dpk_{key_id}_")));
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["account", "api-key", "list", "acme", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|k| k.get("api_key").is_none()), "listing never shows secrets");
    env.ok(&["account", "api-key", "revoke", "acme", key_id]);
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["account", "api-key", "list", "acme", "--json"])).unwrap();
    let revoked = list.as_array().unwrap().iter().find(|k| k["id"] == key_id).unwrap();
    assert!(revoked["revoked_at"].is_string());
    assert!(env.fails(&["account", "api-key", "revoke", "acme", "ffffffffffffffff"]).contains("not found"));
}

/// The metadata store keeps only hashes: no key appears in the database file.
#[test]
fn keys_are_stored_hashed() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("acme");
    let secret = key.rsplit('_').next().unwrap();
    let mut raw = Vec::new();
    for f in ["metadata.db", "metadata.db-wal"] {
        if let Ok(b) = std::fs::read(env.path().join(f)) {
            raw.extend(b);
        }
    }
    assert!(!raw.is_empty());
    assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()), "secret stored in clear");
}

/// Account creation without the extensions fails naming the file and the
/// fetch command, and leaves no account behind.
#[test]
fn account_create_without_extensions_leaves_nothing() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let empty = tempfile::tempdir().unwrap();
    let out = env
        .command()
        .args(["account", "create", "acme"])
        .env("DUCKPOND_DUCKDB__EXTENSION_DIRECTORY", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duckdb_extension") && err.contains("fetch-duckdb-extensions.sh"), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["account", "list", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]));
}

fn postgres_schema_exists(url: &str, schema: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1")
            .bind(schema)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n == 1
    })
}

/// With `storage.catalog_backend: postgres`, an account's DuckLake catalog
/// is the schema duckpond_<id> in that database: created (and round-tripped)
/// with the account, used by the server's compactor, dropped with the account.
#[test]
fn account_catalog_in_postgres() {
    let url = std::env::var("DUCKPOND_TEST_POSTGRES_URL").expect("DUCKPOND_TEST_POSTGRES_URL (run via make test)");
    let env = TestEnv::new(Backend::Sqlite);
    env.write_config(&format!("storage:\n  catalog_backend: postgres\n  catalog_postgres_url: \"{url}\"\n"));
    env.ok(&["db", "upgrade"]);
    let (account, key) = env.create_account("acme");
    let schema = format!("duckpond_{}", account["id"].as_str().unwrap());
    assert!(postgres_schema_exists(&url, &schema), "catalog schema {schema} created");
    assert!(!env.path().join("data/accounts").join(account["id"].as_str().unwrap()).join("catalog.sqlite").exists());
    {
        let s = env.serve();
        assert_eq!(s.get("/api/account", Some(&key)).status(), 200);
    }
    env.ok(&["account", "delete", "acme", "--yes"]);
    assert!(!postgres_schema_exists(&url, &schema), "catalog schema {schema} dropped");
}

/// Choosing the postgres catalog backend without a database is refused.
#[test]
fn postgres_catalog_backend_needs_a_url() {
    let env = TestEnv::new(Backend::Sqlite);
    env.write_config("storage:\n  catalog_backend: postgres\n");
    assert!(env.fails(&["db", "upgrade"]).contains("storage.catalog_postgres_url"));
}

both_backends!(
    upgrade_then_status_current,
    account_lifecycle,
    invalid_account_names_are_refused,
    api_keys_create_list_revoke
);

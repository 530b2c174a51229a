//! The metadata database: accounts and API keys.
//!
//! One implementation over sqlx's `Any` driver with portable SQL, run against
//! SQLite (default) and PostgreSQL by the same tests. Migrations live in
//! `migrations/` and are applied only by `duckpond db upgrade`; the server
//! refuses to start on a schema that is behind or ahead of this binary.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::{AnyPool, Executor, Row};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// SQLite waits this long for a competing writer (the CLI next to a running
/// server) before reporting "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

/// Which database engine the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaBackend {
    /// A local SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The row asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique constraint would be broken (e.g. account name taken).
    #[error("{0}")]
    Conflict(String),
    /// The database could not be reached or failed.
    #[error("metadata database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("metadata migration failed: {0}")]
    Migrate(#[from] MigrateError),
}

/// Where the schema stands relative to this binary's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// No migration was ever applied.
    Uninitialised,
    /// Some of this binary's migrations are not applied yet.
    Behind {
        /// Versions still to apply.
        pending: Vec<i64>,
    },
    /// Exactly this binary's migrations are applied.
    Current {
        /// The latest applied version.
        version: i64,
    },
    /// The database has migrations this binary does not know: a newer DuckPond
    /// wrote it.
    Ahead {
        /// Unknown applied versions.
        unknown: Vec<i64>,
    },
}

/// A row of `accounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// Internal id (directory name).
    pub id: String,
    /// Unique, user-facing name.
    pub name: String,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Storage quota override.
    pub max_storage_bytes: Option<i64>,
    /// Concurrent query override.
    pub max_concurrent_queries: Option<i64>,
    /// Ingest rate override.
    pub max_ingest_bytes_per_s: Option<i64>,
    /// Notebook session override.
    pub max_notebook_sessions: Option<i64>,
}

/// A row of `api_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Public key id (the part of the key before the secret).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Free-form label.
    pub label: String,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Last successful authentication, Unix ms (updated at most once a minute).
    pub last_used_at_ms: Option<i64>,
    /// Revocation time, Unix ms.
    pub revoked_at_ms: Option<i64>,
    /// `read`, `write` or `manage`.
    pub scope: String,
}

/// A row of `browser_sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSessionRow {
    /// Hex SHA-256 of the cookie's session id.
    pub id_sha256: String,
    /// The key that signed the browser in.
    pub key_id: String,
    /// Its account.
    pub account_id: String,
    /// Sign-in time, Unix ms.
    pub created_at_ms: i64,
    /// When the session ends, Unix ms.
    pub expires_at_ms: i64,
}

/// Handle to the metadata database.
#[derive(Debug, Clone)]
pub struct MetaStore {
    pool: AnyPool,
    backend: MetaBackend,
}

const ACCOUNT_COLUMNS: &str = "id, name, created_at_ms, max_storage_bytes, max_concurrent_queries, \
                               max_ingest_bytes_per_s, max_notebook_sessions";
const KEY_COLUMNS: &str = "id, account_id, secret_sha256, label, created_at_ms, last_used_at_ms, revoked_at_ms, scope";

impl MetaStore {
    /// Connects (creating a SQLite file if needed); applies no migration.
    pub async fn connect(url: &str, max_connections: u32, connect_timeout_ms: u64) -> Result<Self, MetaError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { MetaBackend::Sqlite } else { MetaBackend::Postgres };
        let url = match backend {
            MetaBackend::Sqlite if !url.contains("mode=") => {
                if let Some(parent) =
                    sqlite_path(url).and_then(|p| std::path::Path::new(p).parent().map(|p| p.to_owned()))
                {
                    std::fs::create_dir_all(parent).map_err(|e| MetaError::Db(sqlx::Error::Io(e)))?;
                }
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_millis(connect_timeout_ms))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == MetaBackend::Sqlite {
                        conn.execute(
                            format!(
                                "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
                                 PRAGMA foreign_keys = ON;"
                            )
                            .as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Self { pool, backend })
    }

    /// Applies pending migrations; returns how many were applied.
    pub async fn migrate(&self) -> Result<usize, MetaError> {
        let pending = match self.schema_status().await? {
            SchemaStatus::Uninitialised => MIGRATOR.iter().count(),
            SchemaStatus::Behind { pending } => pending.len(),
            SchemaStatus::Current { .. } => 0,
            SchemaStatus::Ahead { unknown } => {
                return Err(MetaError::Conflict(format!(
                    "the metadata database has migrations {unknown:?} that this duckpond does not know; \
                     upgrade duckpond instead"
                )))
            }
        };
        MIGRATOR.run(&self.pool).await?;
        Ok(pending)
    }

    /// Compares applied migrations with the ones this binary carries.
    pub async fn schema_status(&self) -> Result<SchemaStatus, MetaError> {
        let exists_sql = match self.backend {
            MetaBackend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            MetaBackend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
            }
        };
        let exists: i64 = sqlx::query_scalar(exists_sql).fetch_one(&self.pool).await?;
        if exists == 0 {
            return Ok(SchemaStatus::Uninitialised);
        }
        let mut conn = self.pool.acquire().await?;
        let applied: Vec<i64> = conn.list_applied_migrations().await?.into_iter().map(|m| m.version).collect();
        let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        let unknown: Vec<i64> = applied.iter().copied().filter(|v| !known.contains(v)).collect();
        if !unknown.is_empty() {
            return Ok(SchemaStatus::Ahead { unknown });
        }
        let pending: Vec<i64> = known.iter().copied().filter(|v| !applied.contains(v)).collect();
        if applied.is_empty() {
            return Ok(SchemaStatus::Uninitialised);
        }
        if !pending.is_empty() {
            return Ok(SchemaStatus::Behind { pending });
        }
        Ok(SchemaStatus::Current { version: *applied.iter().max().unwrap_or(&0) })
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), MetaError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts an account; a taken name is a [`MetaError::Conflict`].
    pub async fn insert_account(&self, a: &AccountRow) -> Result<(), MetaError> {
        let sql = format!("INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
        let res = sqlx::query(&sql)
            .bind(&a.id)
            .bind(&a.name)
            .bind(a.created_at_ms)
            .bind(a.max_storage_bytes)
            .bind(a.max_concurrent_queries)
            .bind(a.max_ingest_bytes_per_s)
            .bind(a.max_notebook_sessions)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(MetaError::Conflict(format!("account {:?} already exists", a.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks an account up by name.
    pub async fn account_by_name(&self, name: &str) -> Result<AccountRow, MetaError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1");
        let row = sqlx::query(&sql).bind(name).fetch_optional(&self.pool).await?;
        row.map(account_from_row).transpose()?.ok_or_else(|| MetaError::NotFound(format!("account {name:?}")))
    }

    /// Every account, by name.
    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>, MetaError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.into_iter().map(account_from_row).collect::<Result<_, _>>().map_err(Into::into)
    }

    /// Writes the quota overrides of an account.
    pub async fn update_account_quotas(&self, a: &AccountRow) -> Result<(), MetaError> {
        let res = sqlx::query(
            "UPDATE accounts SET max_storage_bytes = $1, max_concurrent_queries = $2, \
             max_ingest_bytes_per_s = $3, max_notebook_sessions = $4 WHERE id = $5",
        )
        .bind(a.max_storage_bytes)
        .bind(a.max_concurrent_queries)
        .bind(a.max_ingest_bytes_per_s)
        .bind(a.max_notebook_sessions)
        .bind(&a.id)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(MetaError::NotFound(format!("account {:?}", a.name)));
        }
        Ok(())
    }

    /// Deletes an account and its keys in one transaction.
    pub async fn delete_account(&self, id: &str) -> Result<(), MetaError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM browser_sessions WHERE account_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM api_keys WHERE account_id = $1").bind(id).execute(&mut *tx).await?;
        let res = sqlx::query("DELETE FROM accounts WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if res.rows_affected() == 0 {
            return Err(MetaError::NotFound(format!("account id {id:?}")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a new key.
    pub async fn insert_api_key(&self, k: &ApiKeyRow) -> Result<(), MetaError> {
        let sql = format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        sqlx::query(&sql)
            .bind(&k.id)
            .bind(&k.account_id)
            .bind(&k.secret_sha256)
            .bind(&k.label)
            .bind(k.created_at_ms)
            .bind(k.last_used_at_ms)
            .bind(k.revoked_at_ms)
            .bind(&k.scope)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The keys of an account, oldest first (revoked ones included).
    pub async fn list_api_keys(&self, account_id: &str) -> Result<Vec<ApiKeyRow>, MetaError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY created_at_ms, id");
        let rows = sqlx::query(&sql).bind(account_id).fetch_all(&self.pool).await?;
        rows.into_iter().map(key_from_row).collect::<Result<_, _>>().map_err(Into::into)
    }

    /// A key and its account, by key id.
    pub async fn api_key_with_account(&self, key_id: &str) -> Result<(ApiKeyRow, AccountRow), MetaError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let key = sqlx::query(&sql)
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?
            .map(key_from_row)
            .transpose()?
            .ok_or_else(|| MetaError::NotFound("api key".into()))?;
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
        let account = sqlx::query(&sql)
            .bind(&key.account_id)
            .fetch_optional(&self.pool)
            .await?
            .map(account_from_row)
            .transpose()?
            .ok_or_else(|| MetaError::NotFound("account of api key".into()))?;
        Ok((key, account))
    }

    /// Marks a key revoked; revoking twice keeps the first time.
    /// The browser sessions it signed in are deleted in the same transaction.
    pub async fn revoke_api_key(&self, account_id: &str, key_id: &str, now_ms: i64) -> Result<(), MetaError> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2 AND account_id = $3",
        )
        .bind(now_ms)
        .bind(key_id)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(MetaError::NotFound(format!("api key {key_id:?}")));
        }
        sqlx::query("DELETE FROM browser_sessions WHERE key_id = $1").bind(key_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Of `key_ids`, the ones that still exist unrevoked (revocation checks
    /// of open connections; a deleted account's keys are gone).
    pub async fn live_key_ids(&self, key_ids: &[String]) -> Result<Vec<String>, MetaError> {
        let mut live = Vec::new();
        // Portable over the Any driver: no array binds, so one query per
        // chunk of placeholders.
        for chunk in key_ids.chunks(100) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT id FROM api_keys WHERE revoked_at_ms IS NULL AND id IN ({})", marks.join(", "));
            let mut q = sqlx::query_scalar::<_, String>(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            live.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(live)
    }

    /// Stores a browser session.
    pub async fn insert_browser_session(&self, s: &BrowserSessionRow) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO browser_sessions (id_sha256, key_id, account_id, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.id_sha256)
        .bind(&s.key_id)
        .bind(&s.account_id)
        .bind(s.created_at_ms)
        .bind(s.expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The unexpired session with this id hash and the key that made it.
    pub async fn browser_session(&self, id_sha256: &str, now_ms: i64) -> Result<BrowserSessionRow, MetaError> {
        let row = sqlx::query(
            "SELECT id_sha256, key_id, account_id, created_at_ms, expires_at_ms FROM browser_sessions \
             WHERE id_sha256 = $1 AND expires_at_ms > $2",
        )
        .bind(id_sha256)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| MetaError::NotFound("browser session".into()))?;
        Ok(BrowserSessionRow {
            id_sha256: row.try_get("id_sha256")?,
            key_id: row.try_get("key_id")?,
            account_id: row.try_get("account_id")?,
            created_at_ms: row.try_get("created_at_ms")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
        })
    }

    /// Deletes one browser session (sign-out); deleting a missing one is fine.
    pub async fn delete_browser_session(&self, id_sha256: &str) -> Result<(), MetaError> {
        sqlx::query("DELETE FROM browser_sessions WHERE id_sha256 = $1").bind(id_sha256).execute(&self.pool).await?;
        Ok(())
    }

    /// Deletes sessions past their expiry; returns how many.
    pub async fn purge_expired_browser_sessions(&self, now_ms: i64) -> Result<u64, MetaError> {
        let res = sqlx::query("DELETE FROM browser_sessions WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }

    /// Records a use of a key, at most once per `resolution_ms` so that
    /// authentication is not a write per request.
    pub async fn touch_api_key(&self, key_id: &str, now_ms: i64, resolution_ms: i64) -> Result<(), MetaError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at_ms = $1 WHERE id = $2 \
             AND (last_used_at_ms IS NULL OR last_used_at_ms < $3)",
        )
        .bind(now_ms)
        .bind(key_id)
        .bind(now_ms - resolution_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    Some(rest.split('?').next().unwrap_or(rest))
}

fn account_from_row(r: AnyRow) -> Result<AccountRow, sqlx::Error> {
    Ok(AccountRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at_ms: r.try_get("created_at_ms")?,
        max_storage_bytes: r.try_get("max_storage_bytes")?,
        max_concurrent_queries: r.try_get("max_concurrent_queries")?,
        max_ingest_bytes_per_s: r.try_get("max_ingest_bytes_per_s")?,
        max_notebook_sessions: r.try_get("max_notebook_sessions")?,
    })
}

fn key_from_row(r: AnyRow) -> Result<ApiKeyRow, sqlx::Error> {
    Ok(ApiKeyRow {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        secret_sha256: r.try_get("secret_sha256")?,
        label: r.try_get("label")?,
        created_at_ms: r.try_get("created_at_ms")?,
        last_used_at_ms: r.try_get("last_used_at_ms")?,
        revoked_at_ms: r.try_get("revoked_at_ms")?,
        scope: r.try_get("scope")?,
    })
}

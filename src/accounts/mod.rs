//! Accounts: identity, quotas, on-disk layout, API keys, and the service that
//! creates and deletes them (CLI and admin API share it).

pub mod browser;
pub mod headroom;
pub mod keys;
pub mod layout;
pub mod revocation;

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{Config, LimitsConfig};
use crate::meta::{AccountRow, ApiKeyRow, MetaError, MetaStore};
use duckpond_compactor::lake::InstanceSettings;
use duckpond_compactor::{Extensions, LakeError};
pub use keys::Scope;
pub use layout::{AccountLayout, CatalogPlacement};
use revocation::Revocations;
use std::sync::Arc;

/// A key's `last_used_at` is written at most this often.
const KEY_LAST_USED_RESOLUTION_MS: i64 = 60_000;
/// Longest account name.
pub const ACCOUNT_NAME_MAX_CHARS: usize = 63;
/// Longest key label.
pub const KEY_LABEL_MAX_CHARS: usize = 200;
const BYTES_PER_GB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Internal, immutable account id: the name of its directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated account name: 1-63 characters of `a-z 0-9 _ -`, starting
/// with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(transparent)]
pub struct AccountName(String);

impl AccountName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, AccountError> {
        let bad = |why: &str| Err(AccountError::InvalidInput(format!("invalid account name {name:?}: {why}")));
        if name.is_empty() {
            return bad("must not be empty");
        }
        if name.chars().count() > ACCOUNT_NAME_MAX_CHARS {
            return bad("at most 63 characters");
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
            return bad("use only lowercase letters, digits, '_' and '-'");
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return bad("must start with a letter or digit");
        }
        Ok(Self(name.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-account quota overrides; `None` means "the configured default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaOverrides {
    /// Storage quota.
    pub max_storage_bytes: Option<u64>,
    /// Concurrent queries.
    pub max_concurrent_queries: Option<u32>,
    /// Ingest rate.
    pub max_ingest_bytes_per_s: Option<u64>,
    /// Concurrent notebook sessions.
    pub max_notebook_sessions: Option<u32>,
}

/// The quotas in force for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Quotas {
    /// Storage quota.
    pub max_storage_bytes: u64,
    /// Concurrent queries.
    pub max_concurrent_queries: u32,
    /// Ingest rate.
    pub max_ingest_bytes_per_s: u64,
    /// Concurrent notebook sessions.
    pub max_notebook_sessions: u32,
}

impl QuotaOverrides {
    /// Fills unset quotas from the configuration.
    pub fn resolve(&self, limits: &LimitsConfig) -> Quotas {
        Quotas {
            max_storage_bytes: self.max_storage_bytes.unwrap_or_else(|| limits.default_max_storage_bytes()),
            max_concurrent_queries: self.max_concurrent_queries.unwrap_or(limits.default_max_concurrent_queries),
            max_ingest_bytes_per_s: self.max_ingest_bytes_per_s.unwrap_or(limits.default_max_ingest_bytes_per_s),
            max_notebook_sessions: self.max_notebook_sessions.unwrap_or(limits.default_max_notebook_sessions),
        }
    }
}

/// A change to quotas: for each field, `None` keeps it, `Some(None)` resets it
/// to the default, `Some(Some(v))` sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    /// Storage quota in bytes (`null` resets to the default).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub max_storage_bytes: Option<Option<u64>>,
    /// Concurrent queries (`null` resets to the default).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub max_concurrent_queries: Option<Option<u32>>,
    /// Ingest rate (`null` resets to the default).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub max_ingest_bytes_per_s: Option<Option<u64>>,
    /// Notebook sessions (`null` resets to the default).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub max_notebook_sessions: Option<Option<u32>>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl QuotaPatch {
    fn apply(&self, q: &mut QuotaOverrides) {
        fn set<T: Copy>(field: &mut Option<T>, patch: Option<Option<T>>) {
            if let Some(v) = patch {
                *field = v;
            }
        }
        set(&mut q.max_storage_bytes, self.max_storage_bytes);
        set(&mut q.max_concurrent_queries, self.max_concurrent_queries);
        set(&mut q.max_ingest_bytes_per_s, self.max_ingest_bytes_per_s);
        set(&mut q.max_notebook_sessions, self.max_notebook_sessions);
    }

    fn validate(&self) -> Result<(), AccountError> {
        let zero = |field: &str| Err(AccountError::InvalidInput(format!("{field} must be at least 1")));
        if self.max_concurrent_queries == Some(Some(0)) {
            return zero("max_concurrent_queries");
        }
        if self.max_ingest_bytes_per_s == Some(Some(0)) {
            return zero("max_ingest_bytes_per_s");
        }
        Ok(())
    }
}

/// Converts a GB figure from the CLI into bytes.
pub fn gb_to_bytes(gb: f64) -> Result<u64, AccountError> {
    if !(gb.is_finite() && gb >= 0.0) {
        return Err(AccountError::InvalidInput(format!("storage quota must be a non-negative number of GB, got {gb}")));
    }
    Ok((gb * BYTES_PER_GB).round() as u64)
}

/// An account as the rest of the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Internal id.
    pub id: AccountId,
    /// Unique name.
    pub name: AccountName,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Quota overrides.
    pub overrides: QuotaOverrides,
}

/// The JSON shape of an account (CLI `--json`, admin and account APIs).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    /// Internal id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created_at: DateTime<Utc>,
    /// Quotas in force.
    pub quotas: Quotas,
    /// Which quotas are set on the account rather than inherited.
    pub quota_overrides: QuotaOverrides,
}

impl Account {
    /// The JSON view, with quotas resolved against `limits`.
    pub fn view(&self, limits: &LimitsConfig) -> AccountView {
        AccountView {
            id: self.id.to_string(),
            name: self.name.to_string(),
            created_at: self.created_at,
            quotas: self.overrides.resolve(limits),
            quota_overrides: self.overrides.clone(),
        }
    }
}

/// A key as listed (never with its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// Public id (`dpk_<id>_...`).
    pub id: String,
    /// Label given at creation.
    pub label: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// What the key may do.
    pub scope: Scope,
}

/// A key just created: the only time its token is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    /// The key's listing.
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The whole key. Store it now; it cannot be shown again.
    pub api_key: String,
}

/// Errors of account operations.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Input failed validation (name, quota, label).
    #[error("{0}")]
    InvalidInput(String),
    /// The metadata store failed or found nothing/a conflict.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The account's DuckLake could not be created.
    #[error("creating the account's DuckLake catalog failed")]
    Lake(#[from] LakeError),
    /// The account's directories could not be created or removed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stored row is inconsistent (e.g. negative quota).
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

/// Why a presented key was refused. Deliberately not more specific to the
/// client than "invalid or revoked".
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key was presented.
    #[error("missing API key: send X-API-Key or Authorization: Bearer")]
    Missing,
    /// Malformed, unknown, wrong or revoked.
    #[error("invalid or revoked API key")]
    Invalid,
    /// A browser session that does not exist (signed out, expired, or its
    /// key revoked).
    #[error("the browser session has ended: sign in again")]
    SessionEnded,
    /// The key is valid but its scope does not allow this.
    #[error("this needs a key with the {needed} scope; the key used has {have}")]
    Scope {
        /// The scope the operation needs.
        needed: Scope,
        /// The key's scope.
        have: Scope,
    },
    /// The store could not answer.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Who made a request: an account, through one of its keys.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The account.
    pub account: Account,
    /// Id of the key used (directly or by the browser session it signed in).
    pub key_id: String,
    /// What the key may do.
    pub scope: Scope,
}

/// Account operations over the metadata store and the filesystem.
#[derive(Debug, Clone)]
pub struct AccountService {
    meta: MetaStore,
    revocations: Arc<Revocations>,
    limits: LimitsConfig,
    storage_root: PathBuf,
    extension_dir: PathBuf,
    instance: InstanceSettings,
    catalogs: CatalogPlacement,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn time_of(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn to_db<T: Into<u64>>(v: Option<T>) -> Result<Option<i64>, AccountError> {
    v.map(|v| i64::try_from(v.into()).map_err(|_| AccountError::InvalidInput("quota too large".into()))).transpose()
}

fn from_db<T: TryFrom<i64>>(v: Option<i64>, field: &str) -> Result<Option<T>, AccountError> {
    v.map(|v| T::try_from(v).map_err(|_| AccountError::Corrupt(format!("{field} = {v}")))).transpose()
}

impl AccountService {
    /// A service over `meta` with the daemon's configuration.
    pub fn new(meta: MetaStore, config: &Config) -> Self {
        let interval = std::time::Duration::from_millis(config.security.revocation_check_interval_ms);
        Self {
            revocations: Arc::new(Revocations::new(meta.clone(), interval)),
            meta,
            limits: config.limits.clone(),
            storage_root: config.storage.local_path.clone(),
            extension_dir: config.duckdb.extension_directory.clone(),
            instance: config.duckdb.instance_settings(),
            catalogs: CatalogPlacement::from_config(config),
        }
    }

    /// The limits quotas resolve against.
    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// The metadata store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// Where accounts' catalogs are.
    pub fn catalog_placement(&self) -> &CatalogPlacement {
        &self.catalogs
    }

    /// Where an account's files live.
    pub fn layout(&self, account: &Account) -> AccountLayout {
        AccountLayout::new(&self.storage_root, &account.id)
    }

    /// Creates an account with its directories, its DuckLake catalog (proven
    /// by a round trip) and a first API key. On any failure nothing is left.
    pub async fn create(&self, name: &str, overrides: QuotaOverrides) -> Result<(Account, IssuedKey), AccountError> {
        let name = AccountName::parse(name)?;
        let patch = QuotaPatch {
            max_storage_bytes: Some(overrides.max_storage_bytes),
            max_concurrent_queries: Some(overrides.max_concurrent_queries),
            max_ingest_bytes_per_s: Some(overrides.max_ingest_bytes_per_s),
            max_notebook_sessions: Some(overrides.max_notebook_sessions),
        };
        patch.validate()?;
        // Fail before touching anything if the lake cannot be created.
        let extensions = Extensions::locate(&self.extension_dir)?;
        let account = Account { id: AccountId::generate(), name, created_at: time_of(now_ms()), overrides };
        self.meta.insert_account(&self.row_of(&account)?).await?;
        let layout = self.layout(&account);
        let catalog = layout.catalog(&self.catalogs);
        let setup = {
            let layout = layout.clone();
            let catalog = catalog.clone();
            let extensions = extensions.clone();
            let instance = self.instance;
            tokio::task::spawn_blocking(move || -> Result<(), AccountError> {
                layout.create_dirs().map_err(|source| AccountError::Io {
                    context: format!("creating {}", layout.root().display()),
                    source,
                })?;
                catalog.create(&extensions, &instance)?;
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(AccountError::Corrupt(format!("catalog setup task failed: {e}"))))
        };
        let setup = match setup {
            Ok(()) => Ok(layout::catalog_journal_mode(&catalog, self.catalogs.sqlite_wal()).await?),
            Err(e) => Err(e),
        };
        // Durable before its first key is issued: the account's directories,
        // the catalog file and their entries up to the storage root (SQLite
        // syncs what it writes later, but not the directory entry of the
        // file it made). The metadata row is committed before this; a power
        // loss in between leaves a row whose tree may be incomplete (the
        // account holds no data yet; opening it attaches an empty lake).
        let setup = match setup {
            Ok(()) => {
                let root = layout.root().to_path_buf();
                tokio::task::spawn_blocking(move || layout::make_durable(&root))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|source| AccountError::Io { context: "syncing the account's new files".into(), source })
            }
            Err(e) => Err(e),
        };
        let result = match setup {
            Ok(()) => self.create_key(&account, "initial", Scope::Manage).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(key) => Ok((account, key)),
            Err(e) => {
                // Leave nothing half-made behind.
                if let Err(cleanup) = self.meta.delete_account(account.id.as_str()).await {
                    tracing::error!(account = %account.name, error = %cleanup, "cleanup of failed account creation");
                }
                let _ = std::fs::remove_dir_all(layout.root());
                let _ = catalog.destroy(&extensions, &self.instance);
                Err(e)
            }
        }
    }

    /// Looks an account up by name.
    pub async fn get(&self, name: &str) -> Result<Account, AccountError> {
        let name = AccountName::parse(name)?;
        let row = self.meta.account_by_name(name.as_str()).await?;
        Self::account_of(row)
    }

    /// Every account, by name.
    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        self.meta.list_accounts().await?.into_iter().map(Self::account_of).collect()
    }

    /// Changes quota overrides.
    pub async fn update(&self, name: &str, patch: &QuotaPatch) -> Result<Account, AccountError> {
        patch.validate()?;
        let mut account = self.get(name).await?;
        patch.apply(&mut account.overrides);
        self.meta.update_account_quotas(&self.row_of(&account)?).await?;
        Ok(account)
    }

    /// Deletes an account: its keys stop working at once, then its files
    /// (and a PostgreSQL catalog schema) go.
    pub async fn delete(&self, name: &str) -> Result<Account, AccountError> {
        let account = self.get(name).await?;
        self.meta.delete_account(account.id.as_str()).await?;
        self.revocations.notify();
        let layout = self.layout(&account);
        let root = layout.root().to_path_buf();
        let catalog = layout.catalog(&self.catalogs);
        let (extension_dir, instance) = (self.extension_dir.clone(), self.instance);
        tokio::task::spawn_blocking(move || {
            if matches!(catalog.metadata, duckpond_compactor::CatalogMetadata::Postgres { .. }) {
                catalog.destroy(&Extensions::locate(&extension_dir)?, &instance)?;
            }
            match std::fs::remove_dir_all(&root) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(AccountError::Io { context: format!("removing {}", root.display()), source }),
            }
        })
        .await
        .unwrap_or_else(|e| Err(AccountError::Corrupt(format!("delete task failed: {e}"))))?;
        Ok(account)
    }

    /// Issues a new key for `account` with `scope`.
    pub async fn create_key(&self, account: &Account, label: &str, scope: Scope) -> Result<IssuedKey, AccountError> {
        if label.chars().count() > KEY_LABEL_MAX_CHARS || label.chars().any(char::is_control) {
            return Err(AccountError::InvalidInput(format!(
                "key label must be at most {KEY_LABEL_MAX_CHARS} printable characters"
            )));
        }
        let k = keys::generate();
        let row = ApiKeyRow {
            id: k.id.clone(),
            account_id: account.id.to_string(),
            secret_sha256: k.secret_sha256,
            label: label.to_string(),
            created_at_ms: now_ms(),
            last_used_at_ms: None,
            revoked_at_ms: None,
            scope: scope.as_str().to_string(),
        };
        self.meta.insert_api_key(&row).await?;
        Ok(IssuedKey { key: key_view(&row), api_key: k.token })
    }

    /// Lists the keys of `account`.
    pub async fn list_keys(&self, account: &Account) -> Result<Vec<ApiKeyView>, AccountError> {
        Ok(self.meta.list_api_keys(account.id.as_str()).await?.iter().map(key_view).collect())
    }

    /// Revokes a key of `account` (by id, or by the whole token).
    pub async fn revoke_key(&self, account: &Account, key: &str) -> Result<(), AccountError> {
        let id = keys::parse(key).map(|(id, _)| id).unwrap_or(key);
        self.meta.revoke_api_key(account.id.as_str(), id, now_ms()).await?;
        // Open connections of this daemon re-check their keys now.
        self.revocations.notify();
        Ok(())
    }

    /// Revocation checks of open uploads, streams and websockets.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Resolves a presented key to its account.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let (id, secret) = keys::parse(token).ok_or(AuthError::Invalid)?;
        let (key, row) = match self.meta.api_key_with_account(id).await {
            Ok(found) => found,
            Err(MetaError::NotFound(_)) => return Err(AuthError::Invalid),
            Err(e) => return Err(e.into()),
        };
        if !keys::secret_matches(secret, &key.secret_sha256) || key.revoked_at_ms.is_some() {
            return Err(AuthError::Invalid);
        }
        if let Err(e) = self.meta.touch_api_key(&key.id, now_ms(), KEY_LAST_USED_RESOLUTION_MS).await {
            // Losing a last-used timestamp must not refuse a valid request.
            tracing::warn!(error = %e, "could not record key use");
        }
        let account = Self::account_of(row).map_err(|e| AuthError::Meta(MetaError::NotFound(e.to_string())))?;
        let scope = key.scope.parse().map_err(|e: String| AuthError::Meta(MetaError::NotFound(e)))?;
        Ok(Principal { account, key_id: key.id, scope })
    }

    /// Bytes the account occupies on disk (catalog, data, log, uploads).
    pub async fn storage_used_bytes(&self, account: &Account) -> Result<u64, AccountError> {
        let root = self.layout(account).root().to_path_buf();
        tokio::task::spawn_blocking(move || layout::dir_size_bytes(&root))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| AccountError::Io { context: "measuring account storage".into(), source })
    }

    fn row_of(&self, a: &Account) -> Result<AccountRow, AccountError> {
        Ok(AccountRow {
            id: a.id.to_string(),
            name: a.name.to_string(),
            created_at_ms: a.created_at.timestamp_millis(),
            max_storage_bytes: to_db(a.overrides.max_storage_bytes)?,
            max_concurrent_queries: to_db(a.overrides.max_concurrent_queries)?,
            max_ingest_bytes_per_s: to_db(a.overrides.max_ingest_bytes_per_s)?,
            max_notebook_sessions: to_db(a.overrides.max_notebook_sessions)?,
        })
    }

    fn account_of(r: AccountRow) -> Result<Account, AccountError> {
        Ok(Account {
            id: AccountId(r.id),
            name: AccountName(r.name),
            created_at: time_of(r.created_at_ms),
            overrides: QuotaOverrides {
                max_storage_bytes: from_db(r.max_storage_bytes, "max_storage_bytes")?,
                max_concurrent_queries: from_db(r.max_concurrent_queries, "max_concurrent_queries")?,
                max_ingest_bytes_per_s: from_db(r.max_ingest_bytes_per_s, "max_ingest_bytes_per_s")?,
                max_notebook_sessions: from_db(r.max_notebook_sessions, "max_notebook_sessions")?,
            },
        })
    }
}

fn key_view(r: &ApiKeyRow) -> ApiKeyView {
    ApiKeyView {
        id: r.id.clone(),
        label: r.label.clone(),
        created_at: time_of(r.created_at_ms),
        last_used_at: r.last_used_at_ms.map(time_of),
        revoked_at: r.revoked_at_ms.map(time_of),
        // A scope this binary does not know grants the least.
        scope: r.scope.parse().unwrap_or(Scope::Read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for ok in ["acme", "a", "team-1_x", "0day"] {
            assert!(AccountName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "Acme", "a/b", "..", "-x", "_x", "a b", "é", long.as_str(), "a\0"] {
            assert!(AccountName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quota_patch_distinguishes_absent_null_and_value() {
        let p: QuotaPatch =
            serde_json::from_str(r#"{"max_storage_bytes": null, "max_concurrent_queries": 7}"#).unwrap();
        let mut q = QuotaOverrides { max_storage_bytes: Some(5), max_notebook_sessions: Some(3), ..Default::default() };
        p.apply(&mut q);
        assert_eq!(q.max_storage_bytes, None);
        assert_eq!(q.max_concurrent_queries, Some(7));
        assert_eq!(q.max_notebook_sessions, Some(3));
        assert!(serde_json::from_str::<QuotaPatch>(r#"{"max_storage": 1}"#).is_err());
    }

    #[test]
    fn overrides_resolve_against_defaults() {
        let limits = LimitsConfig::default();
        let q = QuotaOverrides { max_concurrent_queries: Some(9), ..Default::default() }.resolve(&limits);
        assert_eq!(q.max_concurrent_queries, 9);
        assert_eq!(q.max_storage_bytes, 10 * 1024 * 1024 * 1024);
    }

    #[test]
    fn gb_conversion_rejects_nonsense() {
        assert_eq!(gb_to_bytes(1.5).unwrap(), 1610612736);
        assert!(gb_to_bytes(-1.0).is_err());
        assert!(gb_to_bytes(f64::NAN).is_err());
    }
}

//! The caller's own account: `/api/account` and its keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::accounts::{AccountView, ApiKeyView, IssuedKey, Scope};
use crate::server::auth::{AuthedAccount, Manager};
use crate::server::error::ApiError;
use crate::server::AppState;

use crate::server::extract::JsonOrDefault;

/// What the account uses of its quotas, and how far its pipeline is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Bytes on disk (catalog, data files, log, uploads).
    pub storage_bytes: u64,
    /// Bytes in the write-ahead log not yet truncated after compaction.
    pub wal_uncompacted_bytes: u64,
    /// Age of the oldest write not yet visible to queries.
    pub wal_lag_seconds: f64,
    /// Highest log position acknowledged (durable) so far.
    pub durable_lsn: u64,
    /// Highest log position committed to the lake; writes up to
    /// `durable_lsn` are all visible once this reaches it.
    pub committed_lsn: u64,
    /// The snapshot that committed it (null before the first flush since start).
    pub committed_snapshot_id: Option<i64>,
    /// Notebook sessions starting, running or stopping.
    pub notebook_sessions: u32,
    /// Records of the log the lake refused, kept in the account's
    /// quarantine (listed by `GET /api/account/quarantine`). The API's own
    /// doors check every write before logging it, so this stays 0 unless
    /// something is wrong.
    pub quarantined_records: u64,
}

/// A record of the account's log that the lake refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuarantineEntry {
    /// Its log position.
    pub lsn: u64,
    /// The table it was for (null if the record did not decode).
    pub table: Option<String>,
    /// Why the lake refused it.
    pub reason: String,
    /// Size of the record.
    pub bytes: u64,
    /// When it was quarantined (Unix ms).
    pub quarantined_at_ms: i64,
}

/// The caller's account with usage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountWithUsage {
    /// The account.
    #[serde(flatten)]
    pub account: AccountView,
    /// Current usage.
    pub usage: Usage,
    /// Id of the key this request used.
    pub key_id: String,
    /// That key's scope.
    pub scope: Scope,
}

/// A new key's label and scope.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// Free-form label shown in listings.
    #[serde(default)]
    pub label: String,
    /// What the key may do: `read` (the default: least privilege),
    /// `write` (read plus ingest) or `manage` (write plus keys and notebooks).
    #[serde(default)]
    pub scope: Option<Scope>,
}

impl NewKeyRequest {
    /// The scope asked for, `read` when none was.
    pub fn scope(&self) -> Scope {
        self.scope.unwrap_or(Scope::Read)
    }
}

/// The caller's account, quotas and usage.
#[utoipa::path(get, path = "/api/account", tag = "account", security(("api_key" = [])),
    responses((status = 200, body = AccountWithUsage), (status = 401, body = crate::server::error::ErrorBody)))]
pub async fn get_account(
    State(state): State<AppState>,
    auth: AuthedAccount,
) -> Result<Json<AccountWithUsage>, ApiError> {
    let storage_bytes = state.accounts.storage_used_bytes(&auth.account).await?;
    let pipeline = state.pipelines.get(&auth.account).await?;
    let committed = pipeline.committed();
    Ok(Json(AccountWithUsage {
        account: auth.account.view(state.accounts.limits()),
        usage: Usage {
            storage_bytes,
            wal_uncompacted_bytes: pipeline.wal().uncompacted_bytes(),
            wal_lag_seconds: pipeline.lag_seconds(),
            durable_lsn: pipeline.wal().durable_lsn().map(|l| l.get()).unwrap_or(0).max(committed.lsn.get()),
            committed_lsn: committed.lsn.get(),
            committed_snapshot_id: committed.snapshot_id,
            notebook_sessions: state.notebooks.live_count(&auth.account.id),
            quarantined_records: pipeline.quarantined().len() as u64,
        },
        key_id: auth.key_id,
        scope: auth.scope,
    }))
}

/// The records of the account's log that the lake refused, oldest first.
#[utoipa::path(get, path = "/api/account/quarantine", tag = "account", security(("api_key" = [])),
    responses((status = 200, body = Vec<QuarantineEntry>), (status = 401, body = crate::server::error::ErrorBody)))]
pub async fn quarantine(
    State(state): State<AppState>,
    auth: AuthedAccount,
) -> Result<Json<Vec<QuarantineEntry>>, ApiError> {
    let pipeline = state.pipelines.get(&auth.account).await?;
    Ok(Json(
        pipeline
            .quarantined()
            .into_iter()
            .map(|q| QuarantineEntry {
                lsn: q.lsn,
                table: q.table,
                reason: crate::server::error::scrub(&q.reason),
                bytes: q.bytes,
                quarantined_at_ms: q.quarantined_at_ms,
            })
            .collect(),
    ))
}

/// The caller's keys (never their secrets).
#[utoipa::path(get, path = "/api/account/keys", tag = "account", security(("api_key" = [])),
    responses((status = 200, body = Vec<ApiKeyView>)))]
pub async fn list_keys(State(state): State<AppState>, auth: Manager) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    Ok(Json(state.accounts.list_keys(&auth.account).await?))
}

/// Issues a key for the caller's account; the response is the only time
/// the key is shown.
#[utoipa::path(post, path = "/api/account/keys", tag = "account", security(("api_key" = [])),
    request_body = NewKeyRequest, responses((status = 201, body = IssuedKey)))]
pub async fn create_key(
    State(state): State<AppState>,
    auth: Manager,
    JsonOrDefault(req): JsonOrDefault<NewKeyRequest>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.accounts.create_key(&auth.account, &req.label, req.scope()).await?)))
}

/// Revokes one of the caller's keys.
#[utoipa::path(delete, path = "/api/account/keys/{key_id}", tag = "account", security(("api_key" = [])),
    params(("key_id" = String, Path)), responses((status = 204), (status = 404, body = crate::server::error::ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    auth: Manager,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.accounts.revoke_key(&auth.account, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! The admin API: `/api/admin/accounts...`, mirroring the account CLI.
//! Guarded by `server.admin_api_key`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::accounts::{AccountView, ApiKeyView, IssuedKey, QuotaOverrides, QuotaPatch};
use crate::server::auth::Admin;
use crate::server::error::ApiError;
use crate::server::extract::{ApiJson, JsonOrDefault};
use crate::server::AppState;

use super::account::NewKeyRequest;

/// Body of `POST /api/admin/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// Account name: 1-63 of `a-z 0-9 _ -`.
    pub name: String,
    /// Quota overrides; omitted ones use the configured defaults.
    #[serde(default)]
    pub quotas: QuotaOverrides,
}

/// A created account and its first key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedAccount {
    /// The account.
    pub account: AccountView,
    /// Its first API key, shown only here.
    pub api_key: String,
}

/// Every account.
#[utoipa::path(get, path = "/api/admin/accounts", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, body = Vec<AccountView>)))]
pub async fn list_accounts(State(state): State<AppState>, _: Admin) -> Result<Json<Vec<AccountView>>, ApiError> {
    let limits = state.accounts.limits();
    Ok(Json(state.accounts.list().await?.iter().map(|a| a.view(limits)).collect()))
}

/// Creates an account with its catalog and first key.
#[utoipa::path(post, path = "/api/admin/accounts", tag = "admin", security(("admin_key" = [])),
    request_body = CreateAccountRequest,
    responses((status = 201, body = CreatedAccount), (status = 409, body = crate::server::error::ErrorBody)))]
pub async fn create_account(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<CreateAccountRequest>,
) -> Result<(StatusCode, Json<CreatedAccount>), ApiError> {
    let (account, key) = state.accounts.create(&req.name, req.quotas).await?;
    let view = account.view(state.accounts.limits());
    Ok((StatusCode::CREATED, Json(CreatedAccount { account: view, api_key: key.api_key })))
}

/// One account.
#[utoipa::path(get, path = "/api/admin/accounts/{name}", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path)), responses((status = 200, body = AccountView)))]
pub async fn get_account(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    Ok(Json(state.accounts.get(&name).await?.view(state.accounts.limits())))
}

/// Changes quotas (`null` resets a quota to the default).
#[utoipa::path(patch, path = "/api/admin/accounts/{name}", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path)), request_body = QuotaPatch, responses((status = 200, body = AccountView)))]
pub async fn update_account(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<QuotaPatch>,
) -> Result<Json<AccountView>, ApiError> {
    Ok(Json(state.accounts.update(&name, &patch).await?.view(state.accounts.limits())))
}

/// Deletes an account, its keys and all its data.
#[utoipa::path(delete, path = "/api/admin/accounts/{name}", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = crate::server::error::ErrorBody)))]
pub async fn delete_account(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let account = state.accounts.get(&name).await?;
    // Stop its compactor before its files go.
    state.pipelines.close(&account.id).await;
    state.engines.close(&account.id).await;
    state.prometheus.forget(&account.id);
    state.notebooks.stop_account(&account.id).await;
    state.accounts.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The keys of an account.
#[utoipa::path(get, path = "/api/admin/accounts/{name}/keys", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path)), responses((status = 200, body = Vec<ApiKeyView>)))]
pub async fn list_keys(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let account = state.accounts.get(&name).await?;
    Ok(Json(state.accounts.list_keys(&account).await?))
}

/// Issues a key for an account.
#[utoipa::path(post, path = "/api/admin/accounts/{name}/keys", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path)), request_body = NewKeyRequest, responses((status = 201, body = IssuedKey)))]
pub async fn create_key(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    JsonOrDefault(req): JsonOrDefault<NewKeyRequest>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let account = state.accounts.get(&name).await?;
    Ok((StatusCode::CREATED, Json(state.accounts.create_key(&account, &req.label, req.scope()).await?)))
}

/// Revokes a key of an account.
#[utoipa::path(delete, path = "/api/admin/accounts/{name}/keys/{key_id}", tag = "admin",
    security(("admin_key" = [])), params(("name" = String, Path), ("key_id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::server::error::ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    _: Admin,
    Path((name, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let account = state.accounts.get(&name).await?;
    state.accounts.revoke_key(&account, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

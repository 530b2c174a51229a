//! `/api/notebooks`: the account's notebook files and their sessions, and
//! `/notebooks/{id}/...`: the proxy to a ready session.

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use duckpond_compactor::CatalogMetadata;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::accounts::keys::Scope;
use crate::notebooks::backend::LaunchSpec;
use crate::notebooks::files::{NotebookStore, NotebookSummary};
use crate::notebooks::sessions::SessionView;
use crate::notebooks::{proxy, NotebookError, NotebookId, SessionKey, SessionMode};
use crate::server::auth::{AuthedAccount, Manager};
use crate::server::error::{ApiError, ErrorBody};
use crate::server::extract::JsonOrDefault;
use crate::server::AppState;

/// A notebook with its session.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotebookInfo {
    /// The notebook.
    #[serde(flatten)]
    pub notebook: NotebookSummary,
    /// Its session.
    pub session: SessionView,
}

/// A notebook with its content.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotebookDetail {
    /// The notebook and its session.
    #[serde(flatten)]
    pub info: NotebookInfo,
    /// The `.py` source.
    pub content: String,
}

/// A new notebook.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNotebook {
    /// Unique name in the account.
    pub name: String,
    /// The `.py` source (default: a template whose setup cell attaches the
    /// account's lake read-only).
    pub content: Option<String>,
}

/// A rename and/or new content.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotebookUpdate {
    /// New name.
    pub name: Option<String>,
    /// New `.py` source.
    pub content: Option<String>,
}

/// Query of a start.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    /// Reply once the session is ready (or failed) instead of at once.
    #[serde(default)]
    pub wait: bool,
    /// `edit` (marimo's editor; a `write` key) or `view` (the notebook
    /// run as a read-only app; any key). Default: `edit` for write and
    /// manage keys, `view` for read keys.
    #[param(value_type = Option<String>)]
    pub mode: Option<SessionMode>,
}

/// Which of a notebook's sessions a request is about.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ModeParams {
    /// `edit` or `view`; default as for a start.
    #[param(value_type = Option<String>)]
    pub mode: Option<SessionMode>,
}

fn store(state: &AppState, auth: &AuthedAccount) -> NotebookStore {
    NotebookStore::new(state.accounts.layout(&auth.account).notebooks_dir(), state.config.notebooks.max_notebook_bytes)
}

/// The caller's session of notebook `id` in its natural mode: the editor
/// for keys that may write, the read-only view for read keys.
fn key(auth: &AuthedAccount, id: &NotebookId) -> SessionKey {
    let mode = if auth.scope >= Scope::Write { SessionMode::Edit } else { SessionMode::View };
    SessionKey { account: auth.account.id.clone(), notebook: id.clone(), mode }
}

/// The caller's session of notebook `id` in `mode` (or its natural one);
/// 403 when a read key asks for the editor.
fn key_in(auth: &AuthedAccount, id: &NotebookId, mode: Option<SessionMode>) -> Result<SessionKey, ApiError> {
    let mut k = key(auth, id);
    if let Some(mode) = mode {
        k.mode = mode;
    }
    if k.mode == SessionMode::Edit && auth.scope < Scope::Write {
        return Err(ApiError::Forbidden(format!(
            "this key has the {} scope: it opens notebooks read-only (mode=view); the editor needs a write key",
            auth.scope
        )));
    }
    Ok(k)
}

/// The caller's notebook `raw` (400 for a malformed id, 404 when the account
/// has no such notebook), with the account's store.
async fn existing(state: &AppState, auth: &AuthedAccount, raw: &str) -> Result<(NotebookId, NotebookStore), ApiError> {
    let id = NotebookId::parse(raw)?;
    let store = store(state, auth);
    let (s, i) = (store.clone(), id.clone());
    files(move || s.get(&i).map(|_| ())).await?;
    Ok((id, store))
}

/// Runs blocking file work off the async threads.
async fn files<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NotebookError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.into()))??)
}

/// The account's notebooks with their session states.
#[utoipa::path(get, path = "/api/notebooks", tag = "notebooks", security(("api_key" = [])),
    responses((status = 200, body = Vec<NotebookInfo>)))]
pub async fn list(State(state): State<AppState>, auth: AuthedAccount) -> Result<Json<Vec<NotebookInfo>>, ApiError> {
    let store = store(&state, &auth);
    let notebooks = files(move || store.list()).await?;
    let out = notebooks
        .into_iter()
        .map(|n| {
            let id = NotebookId::parse(&n.id).expect("listed ids are valid");
            NotebookInfo { session: state.notebooks.view(&key(&auth, &id)), notebook: n }
        })
        .collect();
    Ok(Json(out))
}

/// Creates a notebook.
#[utoipa::path(post, path = "/api/notebooks", tag = "notebooks", security(("api_key" = [])),
    request_body = NewNotebook,
    responses((status = 201, body = NotebookInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Manager,
    JsonOrDefault(req): JsonOrDefault<NewNotebook>,
) -> Result<(StatusCode, Json<NotebookInfo>), ApiError> {
    let store = store(&state, &auth);
    // One writer of names per daemon: uniqueness is checked then written.
    let _names = state.notebook_names.lock().await;
    let n = files(move || store.create(&req.name, req.content.as_deref())).await?;
    let id = NotebookId::parse(&n.id).expect("new ids are valid");
    Ok((StatusCode::CREATED, Json(NotebookInfo { session: state.notebooks.view(&key(&auth, &id)), notebook: n })))
}

/// One notebook with its content and session.
#[utoipa::path(get, path = "/api/notebooks/{id}", tag = "notebooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = NotebookDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    auth: AuthedAccount,
    Path(id): Path<String>,
) -> Result<Json<NotebookDetail>, ApiError> {
    let id = NotebookId::parse(&id)?;
    let store = store(&state, &auth);
    let i = id.clone();
    let (notebook, content) = files(move || Ok((store.get(&i)?, store.content(&i)?))).await?;
    let session = state.notebooks.view(&key(&auth, &id));
    Ok(Json(NotebookDetail { info: NotebookInfo { notebook, session }, content }))
}

/// Renames a notebook and/or replaces its content.
#[utoipa::path(put, path = "/api/notebooks/{id}", tag = "notebooks", security(("api_key" = [])),
    params(("id" = String, Path)), request_body = NotebookUpdate,
    responses((status = 200, body = NotebookInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Manager,
    Path(id): Path<String>,
    JsonOrDefault(req): JsonOrDefault<NotebookUpdate>,
) -> Result<Json<NotebookInfo>, ApiError> {
    let id = NotebookId::parse(&id)?;
    if req.name.is_none() && req.content.is_none() {
        return Err(ApiError::BadRequest("nothing to update: send name and/or content".into()));
    }
    let store = store(&state, &auth);
    let _names = state.notebook_names.lock().await;
    let i = id.clone();
    let n = files(move || store.update(&i, req.name.as_deref(), req.content.as_deref())).await?;
    Ok(Json(NotebookInfo { session: state.notebooks.view(&key(&auth, &id)), notebook: n }))
}

/// Deletes a notebook (stopping its session first).
#[utoipa::path(delete, path = "/api/notebooks/{id}", tag = "notebooks", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Manager,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Under the lock a start takes too: no session can begin between the
    // stop and the removal of the files.
    let _names = state.notebook_names.lock().await;
    let (id, store) = existing(&state, &auth, &id).await?;
    for mode in [SessionMode::Edit, SessionMode::View] {
        let k = SessionKey { account: auth.account.id.clone(), notebook: id.clone(), mode };
        state.notebooks.forget(&k).await;
    }
    files(move || store.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts the notebook's session (202 while starting, 200 when it already
/// runs or, with `wait=true`, once ready).
#[utoipa::path(post, path = "/api/notebooks/{id}/start", tag = "notebooks", security(("api_key" = [])),
    params(("id" = String, Path), StartParams),
    responses((status = 200, body = SessionView), (status = 202, body = SessionView), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    auth: AuthedAccount,
    Path(id): Path<String>,
    params: Result<Query<StartParams>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    let Query(params) = params?;
    let k = key_in(&auth, &NotebookId::parse(&id)?, params.mode)?;
    // Held until the session is registered (see `delete`).
    let names = state.notebook_names.lock().await;
    let (id, store) = existing(&state, &auth, &id).await?;
    let notebook_dir = store.notebook_dir(&id);
    let layout = state.accounts.layout(&auth.account);
    let location = layout.catalog(state.accounts.catalog_placement());
    let catalog_sqlite = match location.metadata {
        CatalogMetadata::Sqlite(path) => Some(path),
        // A notebook would need the catalog database's credentials, which
        // reach every account's schema: not handed out (docs/ARCHITECTURE.md).
        CatalogMetadata::Postgres { .. } => None,
    };
    let quotas = auth.account.overrides.resolve(state.accounts.limits());
    let (view, new) = state.notebooks.start(
        k.clone(),
        |session_id, port, token| LaunchSpec {
            session_id: session_id.to_string(),
            account_id: auth.account.id.to_string(),
            notebook_id: id.to_string(),
            notebook_dir,
            mode: k.mode,
            account_root: layout.root().to_path_buf(),
            catalog_sqlite,
            data_path: location.data_path.clone(),
            port,
            token: token.to_string(),
            base_url: k.base_url(),
        },
        quotas.max_notebook_sessions,
    )?;
    drop(names);
    if params.wait {
        let limit = Duration::from_secs(state.config.notebooks.spawn_timeout_seconds + 5);
        return Ok((StatusCode::OK, Json(state.notebooks.wait_ready(&k, limit).await)));
    }
    Ok((if new { StatusCode::ACCEPTED } else { StatusCode::OK }, Json(view)))
}

/// Stops the notebook's session.
#[utoipa::path(post, path = "/api/notebooks/{id}/stop", tag = "notebooks", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 200, body = SessionView), (status = 404, body = ErrorBody)))]
pub async fn stop(
    State(state): State<AppState>,
    auth: AuthedAccount,
    Path(id): Path<String>,
    params: Result<Query<ModeParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionView>, ApiError> {
    let Query(params) = params?;
    let (id, _) = existing(&state, &auth, &id).await?;
    Ok(Json(state.notebooks.stop(&key_in(&auth, &id, params.mode)?, None).await?))
}

/// The notebook's session.
#[utoipa::path(get, path = "/api/notebooks/{id}/session", tag = "notebooks", security(("api_key" = [])),
    params(("id" = String, Path)), responses((status = 200, body = SessionView), (status = 404, body = ErrorBody)))]
pub async fn session(
    State(state): State<AppState>,
    auth: AuthedAccount,
    Path(id): Path<String>,
    params: Result<Query<ModeParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionView>, ApiError> {
    let Query(params) = params?;
    let (id, _) = existing(&state, &auth, &id).await?;
    let mut k = key(&auth, &id);
    // Looking at the editor's state needs no write scope.
    k.mode = params.mode.unwrap_or(k.mode);
    Ok(Json(state.notebooks.view(&k)))
}

/// `/notebooks/{id}` and everything below: the proxy.
pub async fn proxy(
    State(state): State<AppState>,
    auth: AuthedAccount,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let rest = req.uri().path().strip_prefix("/notebooks/").unwrap_or_default();
    let (mode, rest) = match rest.strip_prefix("view/") {
        Some(rest) => (SessionMode::View, rest),
        None => (SessionMode::Edit, rest),
    };
    let id = NotebookId::parse(rest.split('/').next().unwrap_or_default())?;
    let session = match state.notebooks.ready(&key_in(&auth, &id, Some(mode))?) {
        Ok(s) => s,
        // A notebook this account does not have (another account's
        // included) is 404, as everywhere else in the API; only one it has
        // is "not running". Checked off the hot path.
        Err(e @ NotebookError::NotRunning(_)) => {
            existing(&state, &auth, id.as_str()).await?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut res = match upgrade {
        Ok(upgrade) => {
            if !proxy::same_origin(req.headers()) {
                return Err(ApiError::Forbidden("cross-origin websocket refused".into()));
            }
            let path_and_query = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            drop(req);
            let key = state.accounts.revocations().watch(&auth.key_id);
            proxy::forward_websocket(&session, upgrade, &path_and_query, key).await.map_err(NotebookError::Upstream)?
        }
        Err(_) => {
            let limit = usize::try_from(state.config.server.max_request_body_bytes).unwrap_or(usize::MAX);
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
                ApiError::PayloadTooLarge(format!("request body over {limit} bytes (server.max_request_body_bytes)"))
            })?;
            let req = Request::from_parts(parts, axum::body::Body::empty());
            proxy::forward_http(&state.proxy_client, &session, req, body).await.map_err(NotebookError::Upstream)?
        }
    };
    // marimo's own pages and errors pass through unchanged.
    res.extensions_mut().insert(crate::server::middleware::Passthrough);
    Ok(res.into_response())
}

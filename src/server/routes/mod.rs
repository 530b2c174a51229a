//! Route table. One module per resource.

pub mod account;
pub mod admin;
pub mod datasets;
pub mod health;
pub mod notebooks;
pub mod prometheus;
pub mod query;
pub mod stream;
pub mod ui;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, delete, get, post};
use axum::Router;

use super::AppState;

/// Every route of the API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(ui::index))
        .route("/assets/{*path}", get(ui::assets))
        .route("/api/ui/session", post(ui::sign_in).delete(ui::sign_out))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/openapi.json", get(super::openapi::openapi_json))
        .route("/api/account", get(account::get_account))
        .route("/api/account/quarantine", get(account::quarantine))
        .route("/api/account/keys", get(account::list_keys).post(account::create_key))
        .route("/api/account/keys/{key_id}", delete(account::revoke_key))
        .route("/api/admin/accounts", get(admin::list_accounts).post(admin::create_account))
        .route(
            "/api/admin/accounts/{name}",
            get(admin::get_account).patch(admin::update_account).delete(admin::delete_account),
        )
        .route("/api/admin/accounts/{name}/keys", get(admin::list_keys).post(admin::create_key))
        .route("/api/admin/accounts/{name}/keys/{key_id}", delete(admin::revoke_key))
        .route("/api/datasets", get(datasets::list))
        .route("/api/datasets/{name}", get(datasets::get).delete(datasets::delete))
        .route("/api/datasets/{name}/preview", get(datasets::preview))
        .route("/api/notebooks", get(notebooks::list).post(notebooks::create))
        .route("/api/notebooks/{id}", get(notebooks::get).put(notebooks::update).delete(notebooks::delete))
        .route("/api/notebooks/{id}/start", post(notebooks::start))
        .route("/api/notebooks/{id}/stop", post(notebooks::stop))
        .route("/api/notebooks/{id}/session", get(notebooks::session))
}

/// The notebook proxy: no request timeout (websockets and long requests
/// live as long as the editor is open) and its own body cap.
pub fn notebook_proxy_routes() -> Router<AppState> {
    Router::new()
        .route("/notebooks/{id}", any(notebooks::proxy))
        .route("/notebooks/{id}/", any(notebooks::proxy))
        .route("/notebooks/{id}/{*rest}", any(notebooks::proxy))
        .layer(DefaultBodyLimit::disable())
}

/// Queries: their own deadline (`limits.query_timeout_ms`) instead of the
/// request timeout, since downloads stream for as long as the result does.
pub fn query_routes() -> Router<AppState> {
    Router::new().route("/api/query", get(query::get_query).post(query::post_query))
}

/// Prometheus remote write: bodies up to `prometheus.max_compressed_bytes`.
pub fn prometheus_routes(max_compressed_bytes: u64) -> Router<AppState> {
    Router::new()
        .route("/api/v1/write", post(prometheus::write))
        .route("/api/v1/push", post(prometheus::write))
        .route("/api/v1/read", post(prometheus::read))
        .layer(DefaultBodyLimit::max(usize::try_from(max_compressed_bytes).unwrap_or(usize::MAX)))
}

/// Routes whose bodies are streamed: no whole-body limit (they enforce their
/// own caps as bytes arrive) and no overall timeout (an idle timeout instead).
pub fn ingest_routes() -> Router<AppState> {
    Router::new()
        .route("/api/datasets/{name}/upload", post(datasets::upload))
        .route("/api/stream/arrow/{table}", post(stream::arrow))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(close_after_refusal))
}

/// A refused upload may leave most of its body unread; the connection
/// cannot carry another request, so tell the client not to reuse it.
async fn close_after_refusal(mut res: axum::response::Response) -> axum::response::Response {
    if res.status().is_client_error() || res.status().is_server_error() {
        res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    res
}

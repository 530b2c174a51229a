//! Route table. One module per resource.

pub mod account;
pub mod admin;
pub mod health;

use axum::routing::{delete, get};
use axum::Router;

use super::AppState;

/// Every route of the API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/openapi.json", get(super::openapi::openapi_json))
        .route("/api/account", get(account::get_account))
        .route("/api/account/keys", get(account::list_keys).post(account::create_key))
        .route("/api/account/keys/{key_id}", delete(account::revoke_key))
        .route("/api/admin/accounts", get(admin::list_accounts).post(admin::create_account))
        .route(
            "/api/admin/accounts/{name}",
            get(admin::get_account).patch(admin::update_account).delete(admin::delete_account),
        )
        .route("/api/admin/accounts/{name}/keys", get(admin::list_keys).post(admin::create_key))
        .route("/api/admin/accounts/{name}/keys/{key_id}", delete(admin::revoke_key))
}

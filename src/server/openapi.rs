//! The OpenAPI document served at `/api/openapi.json`. Later resources add
//! their paths here. It is public: it describes the API, not any data.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes::{account, admin, datasets, health, notebooks, prometheus, query, stream, ui};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "DuckPond API", description = "Multi-account WAL-first data platform on DuckLake."),
    paths(
        health::healthz, health::readyz, health::metrics,
        account::get_account, account::quarantine, account::list_keys, account::create_key, account::revoke_key,
        admin::list_accounts, admin::create_account, admin::get_account, admin::update_account,
        admin::delete_account, admin::list_keys, admin::create_key, admin::revoke_key,
        datasets::upload, datasets::list, datasets::get, datasets::preview, datasets::delete, stream::arrow,
        query::post_query, query::get_query, prometheus::write, prometheus::read,
        notebooks::list, notebooks::create, notebooks::get, notebooks::update, notebooks::delete,
        notebooks::start, notebooks::stop, notebooks::session, ui::sign_in, ui::sign_out,
    ),
    modifiers(&Security),
    tags((name = "health"), (name = "account"), (name = "admin"), (name = "datasets"), (name = "ingest"), (name = "query"), (name = "prometheus"), (name = "notebooks")),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An account key (dpk_...). Authorization: Bearer <key> works too.",
            ))),
        );
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The admin key from server.admin_api_key.",
            ))),
        );
    }
}

/// Serves the document.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

//! The web UI: its embedded files (`ui/dist`, see build.rs) and the
//! browser session: `POST /api/ui/session` checks an API key and opens a
//! browser session (`accounts::browser`) whose random id goes into an
//! HttpOnly, SameSite=Strict cookie; `DELETE` ends the session.
//!
//! The cookie never holds the key: a copied cookie dies with sign-out or
//! with its key's revocation. Page scripts cannot read it (HttpOnly) and
//! other sites cannot send it (SameSite plus the Origin check of
//! cookie-authenticated writes in `auth`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::server::auth::{same_site_write, session_cookie, too_many, ClientAddr, SESSION_COOKIE};
use crate::server::error::{ApiError, ErrorBody};
use crate::server::AppState;

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// Shown at `/` by a binary built without `ui/dist`.
const MISSING_UI: &str = "<!doctype html><meta charset=utf-8><title>DuckPond</title>\
<p>The web UI was not built into this binary. Run <code>make ui</code> (npm ci &amp;&amp; npm run build in ui/) \
and build again; the API works without it.</p>";

/// What a browser may load on UI pages: our own files only (marimo's
/// editor opens in its own tab, under its own policy).
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "json" | "map" => "application/json",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

fn file_response(path: &str, body: &'static [u8]) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(path)));
    // Names are not content-hashed: revalidate every time.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    res
}

/// `/`: the single page.
pub async fn index() -> Response {
    match asset("index.html") {
        Some(b) => file_response("index.html", b),
        None => file_response("index.html", MISSING_UI.as_bytes()),
    }
}

/// `/assets/{*path}`.
pub async fn assets(Path(path): Path<String>) -> Result<Response, ApiError> {
    let path = format!("assets/{path}");
    asset(&path).map(|b| file_response(&path, b)).ok_or_else(|| ApiError::NotFound(format!("{path} not found")))
}

/// A sign-in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An account key.
    pub api_key: String,
}

fn cookie(state: &AppState, headers: &HeaderMap, value: &str, max_age_s: u64) -> HeaderValue {
    // Secure when the browser reached us over TLS (directly or through a
    // proxy that says so), or when configured.
    let https = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if https || state.config.server.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .expect("cookie is ASCII")
}

/// Signs the browser in: checks the key and sets the session cookie.
#[utoipa::path(post, path = "/api/ui/session", tag = "account", request_body = SignIn,
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn sign_in(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Json(req): Json<SignIn>,
) -> Result<Response, ApiError> {
    // A sign-in posted by another site would sign the browser into the
    // attacker's account (login CSRF). Browsers always send Origin here.
    if headers.contains_key(header::ORIGIN) && !same_site_write(&Method::POST, &headers) {
        return Err(ApiError::Forbidden("cross-site sign-in refused".into()));
    }
    let key = req.api_key.trim();
    let key_id = crate::accounts::keys::parse(key).map(|(id, _)| id);
    state.auth_throttle.check(client, None).map_err(|t| too_many(t.retry_after))?;
    let max_age = state.config.server.session_cookie_max_age_seconds;
    let (_, session) = match state.accounts.sign_in(key, std::time::Duration::from_secs(max_age)).await {
        Ok(signed_in) => signed_in,
        Err(e @ crate::accounts::AuthError::Invalid) => {
            if let Err(t) = state.auth_throttle.check(client, key_id) {
                return Err(too_many(t.retry_after));
            }
            state.auth_throttle.failed(client, key_id, "http-sign-in");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, cookie(&state, &headers, &session, max_age));
    Ok(res)
}

/// Signs the browser out: ends the session server-side (a copy of the
/// cookie stops working too) and clears the cookie.
#[utoipa::path(delete, path = "/api/ui/session", tag = "account", responses((status = 204)))]
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(session) = session_cookie(&headers) {
        state.accounts.sign_out(&session).await?;
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, cookie(&state, &headers, "", 0));
    Ok(res)
}

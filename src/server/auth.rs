//! Authentication extractors: handlers receive an [`AuthedAccount`] or an
//! [`Admin`], never a raw header.
//!
//! A key is accepted from `X-API-Key`, `Authorization: Bearer <key>`, or
//! `Authorization: Basic` with the key as password (all three are what a
//! Prometheus `remote_write` block can send).

use axum::extract::FromRequestParts;
use axum::http::header::{self, AUTHORIZATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use base64::Engine;

use super::error::ApiError;
use super::AppState;
use crate::accounts::{keys, Account, AuthError};

/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The web UI's session cookie (holds the key; HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "duckpond_session";

/// The account a valid key belongs to.
#[derive(Debug, Clone)]
pub struct AuthedAccount {
    /// The caller's account.
    pub account: Account,
    /// Id of the key used.
    pub key_id: String,
}

/// Proof that the request carried the admin key.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The key in the session cookie, if any.
fn cookie_key(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// Whether a cookie-authenticated request may change state: safe methods
/// always; others only when the browser says the page that sent it is ours
/// (Origin, or Referer when a browser sends no Origin). This is the CSRF
/// defence behind SameSite=Strict.
pub fn same_site_write(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let source = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER));
    let Some(source) = source.and_then(|s| s.to_str().ok()) else { return false };
    let authority = source.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or_default());
    authority == Some(host)
}

/// The credential presented, from whichever header carried it.
pub fn presented_key(parts: &Parts) -> Result<String, AuthError> {
    if let Some(v) = parts.headers.get(API_KEY_HEADER) {
        return v.to_str().map(|s| s.trim().to_string()).map_err(|_| AuthError::Invalid);
    }
    let Some(v) = parts.headers.get(AUTHORIZATION) else {
        return cookie_key(parts).ok_or(AuthError::Missing);
    };
    let v = v.to_str().map_err(|_| AuthError::Invalid)?.trim();
    let (scheme, rest) = v.split_once(' ').ok_or(AuthError::Invalid)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| AuthError::Invalid)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (_user, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
        return Ok(password.to_string());
    }
    Err(AuthError::Invalid)
}

impl FromRequestParts<AppState> for AuthedAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = presented_key(parts)?;
        let by_cookie = parts.headers.get(API_KEY_HEADER).is_none() && parts.headers.get(AUTHORIZATION).is_none();
        if by_cookie && !same_site_write(&parts.method, &parts.headers) {
            return Err(ApiError::Forbidden(
                "cross-site request refused: a signed-in browser may only change data from DuckPond's own pages".into(),
            ));
        }
        let (account, key_id) = state.accounts.authenticate(&token).await?;
        tracing::Span::current().record("account", account.name.as_str());
        Ok(AuthedAccount { account, key_id })
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.config.admin_api_key() else {
            return Err(ApiError::Forbidden(
                "the admin API is disabled: set server.admin_api_key (or DUCKPOND_SERVER__ADMIN_API_KEY)".into(),
            ));
        };
        let token = presented_key(parts)?;
        if !keys::constant_time_str_eq(&token, expected) {
            return Err(ApiError::Unauthorized("invalid admin key".into()));
        }
        tracing::Span::current().record("account", "admin");
        Ok(Admin)
    }
}

//! Authentication extractors: handlers receive an [`AuthedAccount`] (any
//! valid key: the `read` scope), a [`Writer`] or [`Manager`] (keys whose
//! scope includes `write` / `manage`), or an [`Admin`]; never a raw header.
//!
//! A key is accepted from `X-API-Key`, `Authorization: Bearer <key>`, or
//! `Authorization: Basic` with the key as password (all three are what a
//! Prometheus `remote_write` block can send); a browser session from the
//! `duckpond_session` cookie. Every attempt is throttled per client address
//! and key id first ([`crate::security::throttle`]); failures are logged
//! with the client's address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{self, AUTHORIZATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use base64::Engine;

use super::error::ApiError;
use super::AppState;
use crate::accounts::{keys, Account, AuthError, Principal, Scope};
use crate::security::client::client_address;

/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The web UI's session cookie (a browser session id, never a key;
/// HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "duckpond_session";

/// The account a valid key (or browser session) belongs to: the `read` scope.
#[derive(Debug, Clone)]
pub struct AuthedAccount {
    /// The caller's account.
    pub account: Account,
    /// Id of the key used.
    pub key_id: String,
    /// The key's scope.
    pub scope: Scope,
}

/// A caller whose key has the `write` scope (ingest, notebook sessions).
#[derive(Debug, Clone)]
pub struct Writer(pub AuthedAccount);

/// A caller whose key has the `manage` scope (keys, notebooks).
#[derive(Debug, Clone)]
pub struct Manager(pub AuthedAccount);

impl Deref for Writer {
    type Target = AuthedAccount;
    fn deref(&self) -> &AuthedAccount {
        &self.0
    }
}

impl Deref for Manager {
    type Target = AuthedAccount;
    fn deref(&self) -> &AuthedAccount {
        &self.0
    }
}

/// Proof that the request carried the admin key.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The session id in the cookie, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
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

/// What a request presented to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A key, from a header.
    Key(String),
    /// A browser session id, from the cookie.
    Session(String),
}

/// The key presented in a header (never the cookie).
pub fn header_key(parts: &Parts) -> Result<Option<String>, AuthError> {
    if let Some(v) = parts.headers.get(API_KEY_HEADER) {
        return v.to_str().map(|s| Some(s.trim().to_string())).map_err(|_| AuthError::Invalid);
    }
    let Some(v) = parts.headers.get(AUTHORIZATION) else { return Ok(None) };
    let v = v.to_str().map_err(|_| AuthError::Invalid)?.trim();
    let (scheme, rest) = v.split_once(' ').ok_or(AuthError::Invalid)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.trim().to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| AuthError::Invalid)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (_user, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
        return Ok(Some(password.to_string()));
    }
    Err(AuthError::Invalid)
}

/// The credential presented: a header's key first, else the session cookie.
pub fn presented(parts: &Parts) -> Result<Credential, AuthError> {
    if let Some(key) = header_key(parts)? {
        return Ok(Credential::Key(key));
    }
    session_cookie(&parts.headers).map(Credential::Session).ok_or(AuthError::Missing)
}

/// The client a request is attributed to (throttling, logs).
pub fn client_of(parts: &Parts, state: &AppState) -> IpAddr {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    client_of_headers(state, peer, &parts.headers)
}

fn client_of_headers(state: &AppState, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
    let peer = peer.map(|p| p.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    client_address(peer, forwarded, &state.config.security.trusted_proxies)
}

/// The client address, for handlers that authenticate by themselves
/// (sign-in).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, std::convert::Infallible> {
        Ok(ClientAddr(client_of(parts, state)))
    }
}

/// The key id a failed attempt names (for per-key throttling), if the key
/// is shaped like one of ours.
fn named_key_id(credential: &Credential) -> Option<&str> {
    match credential {
        Credential::Key(k) => keys::parse(k).map(|(id, _)| id),
        Credential::Session(_) => None,
    }
}

/// The 429 of a throttled authentication.
pub fn too_many(retry_after: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests {
        message: "too many failed authentications from this client or for this key; try again later".into(),
        retry_after_s: retry_after.as_secs().max(1),
    }
}

/// Authenticates `parts` as an account principal, throttled.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<AuthedAccount, ApiError> {
    let client = client_of(parts, state);
    let credential = presented(parts)?;
    let key_id = named_key_id(&credential);
    // The client's count is checked first; a key id's only once the secret
    // was wrong, so those guessing at a key (its id is public) cannot lock
    // out its owner, who holds the right secret.
    state.auth_throttle.check(client, None).map_err(|t| too_many(t.retry_after))?;
    if matches!(credential, Credential::Session(_)) && !same_site_write(&parts.method, &parts.headers) {
        return Err(ApiError::Forbidden(
            "cross-site request refused: a signed-in browser may only change data from DuckPond's own pages".into(),
        ));
    }
    let result = match &credential {
        Credential::Key(k) => state.accounts.authenticate(k).await,
        Credential::Session(s) => state.accounts.authenticate_session(s).await,
    };
    let principal: Principal = match result {
        Ok(p) => p,
        Err(e @ AuthError::Invalid) => {
            if let Err(t) = state.auth_throttle.check(client, key_id) {
                return Err(too_many(t.retry_after));
            }
            state.auth_throttle.failed(client, key_id, "http");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    tracing::Span::current().record("account", principal.account.name.as_str());
    Ok(AuthedAccount { account: principal.account, key_id: principal.key_id, scope: principal.scope })
}

impl AuthedAccount {
    fn require(self, needed: Scope) -> Result<Self, ApiError> {
        if self.scope >= needed {
            Ok(self)
        } else {
            Err(AuthError::Scope { needed, have: self.scope }.into())
        }
    }
}

impl FromRequestParts<AppState> for AuthedAccount {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state).await
    }
}

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state).await?.require(Scope::Write).map(Writer)
    }
}

impl FromRequestParts<AppState> for Manager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state).await?.require(Scope::Manage).map(Manager)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    /// Only a header carries the admin key: a browser's cookie never
    /// authenticates the admin API.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.config.admin_api_key() else {
            return Err(ApiError::Forbidden(
                "the admin API is disabled: set server.admin_api_key or security.admin_api_key_file".into(),
            ));
        };
        let client = client_of(parts, state);
        state.auth_throttle.check(client, None).map_err(|t| too_many(t.retry_after))?;
        let token = header_key(parts)?.ok_or(AuthError::Missing)?;
        if !keys::constant_time_str_eq(&token, expected) {
            state.auth_throttle.failed(client, None, "http-admin");
            return Err(ApiError::Unauthorized("invalid admin key".into()));
        }
        tracing::Span::current().record("account", "admin");
        Ok(Admin)
    }
}

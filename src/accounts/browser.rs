//! Browser sessions of the web UI.
//!
//! Signing in with a key creates a session: the cookie holds a random id
//! (`dps_<64 hex>`, 256 bits), the metadata database only its SHA-256, with
//! an expiry and the key that created it. The session acts with that key's
//! account and scope; signing out deletes it, revoking the key deletes its
//! sessions (and every use checks the key again), so a copied cookie stops
//! working as soon as either happens. The key itself never reaches the
//! browser's cookie jar.

use std::time::Duration;

use rand::RngCore;

use super::keys::{self, Scope};
use super::{now_ms, AccountService, AuthError, Principal};
use crate::meta::{BrowserSessionRow, MetaError};

/// Every session id starts with this.
pub const SESSION_PREFIX: &str = "dps_";
const SESSION_ID_BYTES: usize = 32;

/// A session id as the cookie carries it; `None` if not shaped like one.
fn parse(cookie: &str) -> Option<&str> {
    let hex = cookie.strip_prefix(SESSION_PREFIX)?;
    (hex.len() == SESSION_ID_BYTES * 2 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(cookie)
}

impl AccountService {
    /// Checks `key` and opens a browser session for it lasting `max_age`.
    /// Returns who signed in and the cookie value.
    pub async fn sign_in(&self, key: &str, max_age: Duration) -> Result<(Principal, String), AuthError> {
        let principal = self.authenticate(key).await?;
        let mut id = [0u8; SESSION_ID_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let cookie = format!("{SESSION_PREFIX}{}", hex::encode(id));
        let now = now_ms();
        let row = BrowserSessionRow {
            id_sha256: keys::sha256_hex(&cookie),
            key_id: principal.key_id.clone(),
            account_id: principal.account.id.to_string(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX)),
        };
        self.meta.insert_browser_session(&row).await?;
        // Expired sessions are only garbage; sign-ins are rare enough to sweep them.
        if let Err(e) = self.meta.purge_expired_browser_sessions(now).await {
            tracing::warn!(error = %e, "purging expired browser sessions");
        }
        Ok((principal, cookie))
    }

    /// The principal of a live browser session: the session exists, has not
    /// expired, and its key is neither revoked nor deleted.
    pub async fn authenticate_session(&self, cookie: &str) -> Result<Principal, AuthError> {
        let cookie = parse(cookie).ok_or(AuthError::SessionEnded)?;
        let session = match self.meta.browser_session(&keys::sha256_hex(cookie), now_ms()).await {
            Ok(s) => s,
            Err(MetaError::NotFound(_)) => return Err(AuthError::SessionEnded),
            Err(e) => return Err(e.into()),
        };
        let (key, row) = match self.meta.api_key_with_account(&session.key_id).await {
            Ok(found) => found,
            Err(MetaError::NotFound(_)) => return Err(AuthError::SessionEnded),
            Err(e) => return Err(e.into()),
        };
        if key.revoked_at_ms.is_some() || key.account_id != session.account_id {
            return Err(AuthError::SessionEnded);
        }
        let account = Self::account_of(row).map_err(|e| AuthError::Meta(MetaError::NotFound(e.to_string())))?;
        let scope: Scope = key.scope.parse().map_err(|e: String| AuthError::Meta(MetaError::NotFound(e)))?;
        Ok(Principal { account, key_id: key.id, scope })
    }

    /// Ends a browser session (nothing happens for an unknown one).
    pub async fn sign_out(&self, cookie: &str) -> Result<(), AuthError> {
        if let Some(cookie) = parse(cookie) {
            self.meta.delete_browser_session(&keys::sha256_hex(cookie)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_shaped() {
        let good = format!("{SESSION_PREFIX}{}", "ab".repeat(32));
        assert!(parse(&good).is_some());
        for bad in ["", "dps_", "dpk_0011", &good[..good.len() - 1], &format!("{good}0"), &good.replace('a', "g")] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}

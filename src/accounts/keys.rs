//! API keys: `dpk_<id>_<secret>`.
//!
//! The id (64 random bits, hex) is public: it finds the row and names the key
//! in listings. The secret (256 random bits, hex) is shown once and stored only
//! as its SHA-256, compared in constant time. A fast hash is right here: with
//! 256 bits of entropy there is nothing to brute-force, and authentication is
//! on every request's path.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

/// What a key may do. Each scope includes the ones before it, so scopes
/// compare: `Read < Write < Manage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Queries, listings, remote read, notebook files and session states.
    Read,
    /// Read, plus every ingest door (uploads, streams, remote write, dataset
    /// deletion) and running notebook sessions.
    Write,
    /// Write, plus the account's keys and creating, renaming and deleting
    /// notebooks.
    Manage,
}

impl Scope {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Manage => "manage",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "manage" => Ok(Scope::Manage),
            other => Err(format!("unknown key scope {other:?}: use read, write or manage")),
        }
    }
}

/// Every account key starts with this, so leaked keys are recognisable.
pub const KEY_PREFIX: &str = "dpk_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A freshly generated key: the only time the secret exists in clear.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Public id.
    pub id: String,
    /// The whole key to hand to the user.
    pub token: String,
    /// Hex SHA-256 of the secret, to store.
    pub secret_sha256: String,
}

/// Generates a key from the OS random source.
pub fn generate() -> NewKey {
    let mut rng = rand::rngs::OsRng;
    let mut id = [0u8; KEY_ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    NewKey { token: format!("{KEY_PREFIX}{id}_{secret}"), secret_sha256: sha256_hex(&secret), id }
}

/// A presented key split into id and secret; `None` if it is not shaped like one.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |s: &str, bytes: usize| s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(id, KEY_ID_BYTES) && is_hex(secret, SECRET_BYTES)).then_some((id, secret))
}

/// Whether `secret` hashes to `stored_sha256`, in constant time.
pub fn secret_matches(secret: &str, stored_sha256: &str) -> bool {
    sha256_hex(secret).as_bytes().ct_eq(stored_sha256.as_bytes()).into()
}

/// Compares two arbitrary strings (the admin key) in time independent of
/// where they differ and of their lengths.
pub fn constant_time_str_eq(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()).ct_eq(&Sha256::digest(b.as_bytes())).into()
}

/// Hex SHA-256 of `s` (how secrets and session ids are stored).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_their_hash() {
        let k = generate();
        let (id, secret) = parse(&k.token).expect("parses");
        assert_eq!(id, k.id);
        assert!(secret_matches(secret, &k.secret_sha256));
        // Every one-character change of the secret is refused (a tamper
        // that always changes something, whatever the secret holds).
        for i in 0..secret.len() {
            let mut tampered = secret.as_bytes().to_vec();
            tampered[i] = if tampered[i] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(tampered).unwrap();
            assert_ne!(tampered, secret);
            assert!(!secret_matches(&tampered, &k.secret_sha256), "{tampered}");
        }
    }

    #[test]
    fn keys_are_unique_and_long() {
        let a = generate();
        let b = generate();
        assert_ne!(a.token, b.token);
        assert_ne!(a.id, b.id);
        // 4 prefix + 16 id + 1 + 64 secret
        assert_eq!(a.token.len(), 85);
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for t in ["", "dpk_", "dpk_abc_def", "xyz_0011223344556677_00", "dpk_00112233445566zz_".to_string().as_str()] {
            assert!(parse(t).is_none(), "{t}");
        }
        let good = generate().token;
        assert!(parse(&good[..good.len() - 1]).is_none());
    }

    #[test]
    fn scopes_order_and_round_trip() {
        assert!(Scope::Read < Scope::Write && Scope::Write < Scope::Manage);
        for s in [Scope::Read, Scope::Write, Scope::Manage] {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
        }
        assert!("admin".parse::<Scope>().is_err());
        assert!("Read".parse::<Scope>().is_err());
    }

    #[test]
    fn constant_time_eq_of_strings() {
        assert!(constant_time_str_eq("admin-key", "admin-key"));
        assert!(!constant_time_str_eq("admin-key", "admin-kez"));
        assert!(!constant_time_str_eq("admin-key", "admin-key-longer"));
    }
}

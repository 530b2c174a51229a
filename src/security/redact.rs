//! What never leaves the daemon in a message: server paths, account ids,
//! and secrets (API keys, browser session ids, the admin key, marimo's
//! tokens, credentials configured for storage). Every reply, session
//! reason and log line built from another component's text (DuckDB,
//! marimo, the OS) goes through [`scrub`] or [`redact_secrets`].

use std::sync::{OnceLock, RwLock};

static PRIVATE_PATHS: OnceLock<Vec<String>> = OnceLock::new();
/// Exact secrets known to this process (the admin key; S3 credentials later).
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret that must never appear in a message (the admin key,
/// credentials). Short strings are ignored: they would blank ordinary words.
pub fn register_secret(secret: &str) {
    if secret.len() >= 8 {
        let mut secrets = SECRETS.write().expect("secrets lock");
        if !secrets.iter().any(|s| s == secret) {
            secrets.push(secret.to_string());
        }
    }
}

/// Marks where a secret-shaped token starts: DuckPond keys and session ids,
/// and the parameters marimo and other servers carry tokens in.
const TOKEN_MARKERS: [&str; 6] = ["dpk_", "dps_", "access_token=", "token=", "--token-password ", "Bearer "];

/// The password in a database URL (`postgresql://user:pass@host/db`) or
/// libpq key/value string (`... password=pass ...`), if it has one.
pub fn password_of(url: &str) -> Option<&str> {
    if let (Some(s), Some(at)) = (url.find("://"), url.rfind('@')) {
        if at > s {
            return url[s + 3..at].split_once(':').map(|(_, p)| p).filter(|p| !p.is_empty());
        }
    }
    url.split_whitespace()
        .find_map(|kv| kv.strip_prefix("password="))
        .map(|p| p.trim_matches('\''))
        .filter(|p| !p.is_empty())
}

/// `text` with every secret replaced by `<redacted>`: registered secrets,
/// DuckPond key- and session-shaped tokens, and the value after
/// `access_token=`, `token=`, `--token-password` and `Bearer`.
pub fn redact_secrets(text: &str) -> String {
    let mut out = text.to_string();
    for secret in SECRETS.read().expect("secrets lock").iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
    }
    for marker in TOKEN_MARKERS {
        let mut from = 0;
        while let Some(at) = out[from..].find(marker).map(|i| i + from) {
            // DuckPond tokens are redacted whole; elsewhere only the value.
            let whole = marker.starts_with("dp");
            let value_start = at + marker.len();
            let len = out[value_start..]
                .find(|c: char| {
                    !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '~' | '%' | '+' | '/' | '='))
                })
                .unwrap_or(out.len() - value_start);
            if len == 0 {
                from = value_start;
                continue;
            }
            let start = if whole { at } else { value_start };
            out.replace_range(start..value_start + len, "<redacted>");
            from = start + "<redacted>".len();
        }
    }
    out
}

/// Registers the server's private directories: every message sent to a
/// client has any path below them replaced by `<server path>`. Call once at
/// start; later calls are ignored.
pub fn set_private_paths(dirs: &[&std::path::Path]) {
    let mut out: Vec<String> = Vec::new();
    for d in dirs {
        let mut forms = vec![d.display().to_string()];
        if let Ok(c) = d.canonicalize() {
            forms.push(c.display().to_string());
        }
        for f in forms {
            let f = f.trim_end_matches('/').to_string();
            if f.len() > 1 && !out.contains(&f) {
                out.push(f);
            }
        }
    }
    // Longest first, so a root inside another is replaced whole.
    out.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let _ = PRIVATE_PATHS.set(out);
}

/// `message` without secrets ([`redact_secrets`]), server paths and account ids: a path below a private
/// directory becomes `<server path>` up to the end of its token (DuckDB
/// quotes paths inside the SQL it echoes), and a PostgreSQL catalog schema
/// `duckpond_<account id>` becomes `duckpond_<account>`.
pub fn scrub(message: &str) -> String {
    let mut out = redact_secrets(message);
    for root in PRIVATE_PATHS.get().map(Vec::as_slice).unwrap_or_default() {
        while let Some(at) = out.find(root.as_str()) {
            let rest = &out[at + root.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | ')' | ',' | '`'))
                .unwrap_or(rest.len());
            out.replace_range(at..at + root.len() + end, "<server path>");
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..].find("duckpond_").map(|i| i + from) {
        let id = out[i + 9..].chars().take_while(|c| c.is_ascii_hexdigit()).count();
        if id == 32 {
            out.replace_range(i + 9..i + 9 + 32, "<account>");
        }
        from = i + 9;
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn passwords_are_found_in_urls_and_libpq_strings() {
        assert_eq!(password_of("postgresql://u:s3cret@127.0.0.1:5432/db"), Some("s3cret"));
        assert_eq!(password_of("host=127.0.0.1 user=u password=s3cret dbname=db"), Some("s3cret"));
        assert_eq!(password_of("postgresql://u@h/db"), None);
        assert_eq!(password_of("sqlite:///x/metadata.db"), None);
        assert_eq!(password_of(""), None);
    }

    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let key = format!("dpk_{}_{}", "0".repeat(16), "a".repeat(64));
        let text = format!("key {key} in http://127.0.0.1:9/x?access_token=s3cr3t&y=1 and Bearer abc.def");
        let out = redact_secrets(&text);
        assert!(!out.contains(&key) && !out.contains("s3cr3t") && !out.contains("abc.def"), "{out}");
        assert!(out.contains("&y=1"), "{out}");
        assert_eq!(redact_secrets("the dpk_ prefix"), "the dpk_ prefix");
        register_secret("admin-secret-value-123");
        assert_eq!(redact_secrets("got admin-secret-value-123!"), "got <redacted>!");
    }
}

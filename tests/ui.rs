//! The web UI in a real headless Chromium (playwright-core, driven by
//! ui/e2e/run.mjs) against the real daemon with a real marimo: sign in,
//! notebooks, an upload, a query with a chart, keys, sign out. Screenshots
//! of every page at 1280 px and at phone width go to
//! `$CARGO_TARGET_DIR/ui-screenshots/` (or the system temp dir).
//!
//! Also: the session cookie's attributes and the CSRF rule, over plain HTTP.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{error_of, Backend, TestEnv};

fn ui_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui")
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join("ui-screenshots")
}

#[test]
fn the_ui_works_in_a_real_browser() {
    assert!(
        ui_dir().join("node_modules/playwright-core").exists(),
        "ui/node_modules is missing: run the suite with `make test` (it runs `make ui`: npm ci && npm run build)"
    );
    let venv = std::env::var("DUCKPOND_TEST_NOTEBOOK_ENV").expect("DUCKPOND_TEST_NOTEBOOK_ENV (set by make test)");
    let env = TestEnv::migrated(Backend::Sqlite);
    env.write_config(&format!("notebooks:\n  python_env: {venv}\n  port_range: 20100-20103\n"));
    let (_, key) = env.create_account("browser");
    let server = env.serve();
    let index = server.get("/", None);
    assert_eq!(index.status(), 200);
    assert!(index.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    assert!(index.text().unwrap().contains("/assets/app.js"), "the UI is not embedded: run `make ui` and rebuild");
    // Screenshots of an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(screenshot_dir());
    let started = std::time::SystemTime::now();
    let out = Command::new("node")
        .arg(ui_dir().join("e2e/run.mjs"))
        .current_dir(ui_dir())
        .env("DUCKPOND_URL", &server.url)
        .env("DUCKPOND_KEY", &key)
        .env("SCREENSHOT_DIR", screenshot_dir())
        .env("CHROMIUM", std::env::var("DUCKPOND_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
        .output()
        .expect("running node");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{log}");
    assert!(out.status.success(), "browser test failed (screenshots in {}):\n{log}", screenshot_dir().display());
    for page in ["signin", "notebooks", "datasets", "dataset-detail", "sql", "account"] {
        for size in ["1280", "phone"] {
            let shot = screenshot_dir().join(format!("{page}-{size}.png"));
            assert!(
                std::fs::metadata(&shot).map(|m| m.len() > 1000 && m.modified().unwrap() >= started).unwrap_or(false),
                "no screenshot {}",
                shot.display()
            );
        }
    }
}

/// With `server.secure_cookies` (behind TLS) the cookie is `Secure`, and
/// `session_cookie_max_age_seconds` is its `Max-Age`.
#[test]
fn secure_cookies_and_max_age_follow_the_config() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("cookie");
    let server = env.serve_with(|c| {
        c.env("DUCKPOND_SERVER__SECURE_COOKIES", "true").env("DUCKPOND_SERVER__SESSION_COOKIE_MAX_AGE_SECONDS", "600");
    });
    let res =
        server.http.post(server.url("/api/ui/session")).json(&serde_json::json!({"api_key": key})).send().unwrap();
    assert_eq!(res.status(), 204);
    let set = res.headers()["set-cookie"].to_str().unwrap().to_string();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"Secure") && attrs.contains(&"Max-Age=600"), "{set}");
}

#[test]
fn session_cookie_is_httponly_strict_and_writes_need_our_origin() {
    let env = TestEnv::migrated(Backend::Sqlite);
    let (_, key) = env.create_account("cookie");
    let server = env.serve();
    let http = reqwest::blocking::Client::new();
    // A wrong key sets nothing.
    let res =
        http.post(server.url("/api/ui/session")).json(&serde_json::json!({"api_key": "dpk_nope"})).send().unwrap();
    assert!(res.headers().get("set-cookie").is_none());
    error_of(res, 401, "unauthorized");
    // Login CSRF: a sign-in posted from another site is refused.
    let res = http
        .post(server.url("/api/ui/session"))
        .header("Origin", "http://evil.example")
        .json(&serde_json::json!({"api_key": key}))
        .send()
        .unwrap();
    assert!(res.headers().get("set-cookie").is_none());
    error_of(res, 403, "forbidden");
    // Cookie smuggling attempts never reach Set-Cookie.
    let res = http
        .post(server.url("/api/ui/session"))
        .json(&serde_json::json!({"api_key": format!("{key}; Domain=evil")}))
        .send()
        .unwrap();
    error_of(res, 401, "unauthorized");
    let res = http.post(server.url("/api/ui/session")).json(&serde_json::json!({"api_key": key})).send().unwrap();
    assert_eq!(res.status(), 204);
    let set = res.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["duckpond_session=", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Secure"), "Secure on plain HTTP (server.secure_cookies is off): {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    // The cookie is a session id, never the key.
    assert!(cookie.starts_with("duckpond_session=dps_") && !cookie.contains(&key), "{cookie}");
    // Reads work with the cookie alone.
    let res = http.get(server.url("/api/account")).header("Cookie", &cookie).send().unwrap();
    assert_eq!(res.status(), 200);
    // A write from another site (or with no Origin at all) is refused...
    let host = server.url.trim_start_matches("http://").to_string();
    let res = http
        .post(server.url("/api/account/keys"))
        .header("Cookie", &cookie)
        .header("Origin", "http://evil.example")
        .json(&serde_json::json!({"label": "csrf"}))
        .send()
        .unwrap();
    error_of(res, 403, "forbidden");
    let res = http
        .post(server.url("/api/account/keys"))
        .header("Cookie", &cookie)
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    error_of(res, 403, "forbidden");
    let res = http
        .delete(server.url("/api/datasets/x"))
        .header("Cookie", &cookie)
        .header("Referer", "http://evil.example/page")
        .send()
        .unwrap();
    error_of(res, 403, "forbidden");
    // ...and allowed from our own pages.
    let res = http
        .post(server.url("/api/account/keys"))
        .header("Cookie", &cookie)
        .header("Origin", format!("http://{host}"))
        .json(&serde_json::json!({"label": "ok"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().unwrap());
    // A Referer from our own pages is the same proof when Origin is absent.
    let res = http
        .post(server.url("/api/account/keys"))
        .header("Cookie", &cookie)
        .header("Referer", format!("http://{host}/#/account"))
        .json(&serde_json::json!({"label": "by-referer"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().unwrap());
    // API clients with a key header are not affected by the Origin rule.
    let res = http
        .post(server.url("/api/account/keys"))
        .header("X-API-Key", &key)
        .header("Origin", "http://elsewhere.example")
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    // The admin API never takes a cookie, same-origin or not: neither a
    // browser session nor the admin key itself set as the cookie (which
    // the API accepted before sessions were not keys).
    for c in [cookie.clone(), format!("duckpond_session={}", common::ADMIN_KEY)] {
        let res = http
            .get(server.url("/api/admin/accounts"))
            .header("Cookie", &c)
            .header("Origin", format!("http://{host}"))
            .send()
            .unwrap();
        error_of(res, 401, "unauthorized");
    }
    // Sign-out clears the cookie and ends the session: a copy of the cookie
    // kept elsewhere stops working.
    let res = http.delete(server.url("/api/ui/session")).header("Cookie", &cookie).send().unwrap();
    assert!(res.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    error_of(http.get(server.url("/api/account")).header("Cookie", &cookie).send().unwrap(), 401, "unauthorized");
    // A revoked key's sessions stop working at once.
    let res = http.post(server.url("/api/ui/session")).json(&serde_json::json!({"api_key": key})).send().unwrap();
    assert_eq!(res.status(), 204);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert_eq!(http.get(server.url("/api/account")).header("Cookie", &cookie).send().unwrap().status(), 200);
    // The id of the key that signed in (`dpk_<id>_<secret>`).
    let first = key.split('_').nth(1).unwrap().to_string();
    let other = http
        .post(server.url("/api/account/keys"))
        .header("X-API-Key", &key)
        .json(&serde_json::json!({"scope": "manage"}))
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap();
    let other_key = other["api_key"].as_str().unwrap().to_string();
    let res =
        http.delete(server.url(&format!("/api/account/keys/{first}"))).header("X-API-Key", &other_key).send().unwrap();
    assert_eq!(res.status(), 204);
    let res = http.get(server.url("/api/account")).header("Cookie", &cookie).send().unwrap();
    error_of(res, 401, "unauthorized");
}

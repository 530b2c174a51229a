//! The authenticated proxy in front of sessions: `/notebooks/{id}/...`
//! (HTTP and websockets) after DuckPond's own auth.
//!
//! The caller's credentials (API key, Authorization, DuckPond cookies) never
//! reach marimo; marimo's token is injected instead, so nobody sees marimo's
//! login page, and marimo's own cookies are not handed to the browser. The
//! path is forwarded whole (marimo serves under `--base-url`).

use axum::body::Body;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::sessions::{ConnectionGuard, Session};
use crate::accounts::revocation::KeyWatch;
use std::sync::Arc;

/// Connect deadline to a session's server.
pub const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Headers that describe one hop, never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Request headers that carry DuckPond credentials (or that we set).
const STRIPPED_REQUEST: [&str; 5] = ["authorization", "x-api-key", "cookie", "host", "content-length"];

/// Response headers not passed to the client: marimo's own auth cookie stays
/// on the server side of the proxy.
const STRIPPED_RESPONSE: [&str; 2] = ["set-cookie", "content-length"];

/// The client for forwarded HTTP requests.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building the proxy's HTTP client")
}

fn forwardable(name: &HeaderName, stripped: &[&str]) -> bool {
    let n = name.as_str();
    !HOP_BY_HOP.contains(&n) && !stripped.contains(&n) && !n.starts_with("sec-websocket")
}

/// Whether a browser's websocket comes from the page that DuckPond served:
/// an `Origin` naming another host is a cross-site websocket (the cookie
/// would be sent along), so it is refused. Non-browser clients send none.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/')) == Some(host)
}

/// Forwards one HTTP request to `session` (body already read, at most
/// the configured size).
pub async fn forward_http(
    client: &reqwest::Client,
    session: &Arc<Session>,
    req: Request<Body>,
    body: bytes::Bytes,
) -> Result<Response<Body>, String> {
    let guard = session.connection();
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("http://127.0.0.1:{}{path_and_query}", session.port());
    let mut upstream = client.request(req.method().clone(), url).body(body);
    for (name, value) in req.headers() {
        if forwardable(name, &STRIPPED_REQUEST) {
            upstream = upstream.header(name, value);
        }
    }
    // marimo builds redirects from Host: keep the address the client used.
    if let Some(host) = req.headers().get(header::HOST) {
        upstream = upstream.header(header::HOST, host);
    }
    upstream = upstream.bearer_auth(session.token());
    let res = upstream.send().await.map_err(|e| e.to_string())?;
    let mut out = Response::builder().status(res.status());
    for (name, value) in res.headers() {
        if forwardable(name, &STRIPPED_RESPONSE) {
            out = out.header(name, value);
        }
    }
    // The guard lives as long as the body streams.
    let stream = res.bytes_stream().map(move |chunk| {
        let _keep: &ConnectionGuard = &guard;
        chunk
    });
    out.body(Body::from_stream(stream)).map_err(|e| e.to_string())
}

/// Connects to the session's websocket, then upgrades the client's and
/// pumps messages both ways (ping and pong included) until either closes.
///
/// The pump ends, closing both sides, when `key` (the key the websocket
/// was opened with) is revoked.
pub async fn forward_websocket(
    session: &Arc<Session>,
    upgrade: WebSocketUpgrade,
    path_and_query: &str,
    key: KeyWatch,
) -> Result<Response<Body>, String> {
    let mut upstream_req = format!("ws://127.0.0.1:{}{path_and_query}", session.port())
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", session.token())).map_err(|e| e.to_string())?;
    upstream_req.headers_mut().insert(header::AUTHORIZATION, bearer);
    let connect = tokio_tungstenite::connect_async(upstream_req);
    let (upstream, _) =
        tokio::time::timeout(std::time::Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS * 5), connect)
            .await
            .map_err(|_| "websocket handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
    let guard = session.connection();
    let session = session.clone();
    Ok(upgrade.on_upgrade(move |client| pump(client, upstream, session, guard, key)))
}

type Upstream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn pump(
    client: WebSocket,
    upstream: Upstream,
    session: Arc<Session>,
    _guard: ConnectionGuard,
    mut key: KeyWatch,
) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    let s1 = session.clone();
    let to_upstream = async move {
        while let Some(Ok(msg)) = client_rx.next().await {
            s1.touch();
            let close = matches!(msg, ws::Message::Close(_));
            if up_tx.send(to_tungstenite(msg)).await.is_err() || close {
                break;
            }
        }
        let _ = up_tx.close().await;
    };
    let to_client = async move {
        while let Some(Ok(msg)) = up_rx.next().await {
            session.touch();
            let Some(msg) = to_axum(msg) else { continue };
            let close = matches!(msg, ws::Message::Close(_));
            if client_tx.send(msg).await.is_err() || close {
                break;
            }
        }
        let _ = client_tx.close().await;
    };
    // Either side ending ends both; so does the key's revocation (the
    // dropped halves close both connections).
    tokio::select! {
        _ = to_upstream => {},
        _ = to_client => {},
        _ = key.revoked() => {},
    }
}

fn to_tungstenite(msg: ws::Message) -> tungstenite::Message {
    match msg {
        ws::Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
        ws::Message::Binary(b) => tungstenite::Message::Binary(b),
        ws::Message::Ping(b) => tungstenite::Message::Ping(b),
        ws::Message::Pong(b) => tungstenite::Message::Pong(b),
        ws::Message::Close(f) => tungstenite::Message::Close(
            f.map(|f| tungstenite::protocol::CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
        ),
    }
}

fn to_axum(msg: tungstenite::Message) -> Option<ws::Message> {
    Some(match msg {
        tungstenite::Message::Text(t) => ws::Message::Text(t.as_str().into()),
        tungstenite::Message::Binary(b) => ws::Message::Binary(b),
        tungstenite::Message::Ping(b) => ws::Message::Ping(b),
        tungstenite::Message::Pong(b) => ws::Message::Pong(b),
        tungstenite::Message::Close(f) => {
            ws::Message::Close(f.map(|f| ws::CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }))
        }
        tungstenite::Message::Frame(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cross_site_websockets_are_refused() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8000")])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8000"), ("origin", "http://127.0.0.1:8000")])));
        assert!(same_origin(&headers(&[("host", "pond.example"), ("origin", "https://pond.example")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8000"), ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8000"), ("origin", "http://127.0.0.1:8001")])));
        assert!(!same_origin(&headers(&[("origin", "http://127.0.0.1:8000")])));
    }

    #[test]
    fn credentials_are_never_forwarded() {
        for h in ["authorization", "x-api-key", "cookie", "connection", "upgrade", "sec-websocket-key"] {
            assert!(!forwardable(&HeaderName::from_static(h), &STRIPPED_REQUEST), "{h} forwarded");
        }
        assert!(forwardable(&HeaderName::from_static("marimo-server-token"), &STRIPPED_REQUEST));
        assert!(!forwardable(&HeaderName::from_static("set-cookie"), &STRIPPED_RESPONSE));
    }
}

//! A marimo kernel reached through DuckPond's notebook proxy: the editor
//! page (for marimo's skew-protection token), the kernel websocket, and
//! cells run through marimo's HTTP API. Shared by tests/notebooks.rs and
//! the soak run (benches/soak.rs).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, stream::MaybeTlsStream, Message, WebSocket};

/// How long a cell may take to produce its output.
pub const OUTPUT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Kernel {
    ws: WebSocket<MaybeTlsStream<std::net::TcpStream>>,
    url: String,
    http: reqwest::blocking::Client,
    key: String,
    notebook: String,
    session_id: String,
    server_token: String,
    setup_code: String,
}

impl Kernel {
    /// Loads the editor page of notebook `id` on the DuckPond server at
    /// `url`, opens the kernel websocket and waits for `kernel-ready`.
    pub fn open(url: &str, http: &reqwest::blocking::Client, key: &str, id: &str) -> Kernel {
        let page = http.get(format!("{url}/notebooks/{id}/")).header("X-API-Key", key).send().unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().unwrap();
        assert!(!html.contains("Login"), "marimo's login page reached the user");
        let server_token = html
            .split("server-token data-token=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("marimo's server token in the page")
            .to_string();
        let session_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        let ws_url = format!("{}/notebooks/{id}/ws?session_id={session_id}", url.replace("http://", "ws://"));
        let mut req = ws_url.into_client_request().unwrap();
        req.headers_mut().insert("X-API-Key", key.parse().unwrap());
        let (mut ws, res) = tungstenite::connect(req).expect("websocket through the proxy");
        assert_eq!(res.status(), 101);
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let mut kernel = Kernel {
            ws,
            url: url.to_string(),
            http: http.clone(),
            key: key.to_string(),
            notebook: id.to_string(),
            session_id,
            server_token,
            setup_code: String::new(),
        };
        let ready = kernel.next_op("kernel-ready", OUTPUT_TIMEOUT, |_| true);
        let ids = ready["data"]["cell_ids"].as_array().unwrap();
        let pos = ids.iter().position(|c| c == "setup").expect("the template has a setup cell");
        kernel.setup_code = ready["data"]["codes"][pos].as_str().unwrap().to_string();
        kernel
    }

    /// Reads messages until one with `op` satisfies `pred`. Pings from the
    /// server are answered by tungstenite (they pass the proxy both ways).
    pub fn next_op(&mut self, op: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            assert!(Instant::now() < deadline, "no {op} message within {limit:?}");
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["op"] == op && pred(&v) {
                        return v;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("websocket failed: {e}"),
            }
        }
    }

    /// Whether the websocket ends (closed or reset by the other side)
    /// within `limit`, reading and dropping whatever arrives until then.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(_)) => return true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Runs cells (id, code) through marimo's HTTP API; results arrive on
    /// the websocket.
    pub fn run(&mut self, cells: &[(&str, &str)]) {
        let body = json!({
            "cellIds": cells.iter().map(|c| c.0).collect::<Vec<_>>(),
            "codes": cells.iter().map(|c| c.1).collect::<Vec<_>>(),
        });
        let res = self
            .http
            .post(format!("{}/notebooks/{}/api/kernel/run", self.url, self.notebook))
            .header("X-API-Key", &self.key)
            .header("Marimo-Session-Id", &self.session_id)
            .header("Marimo-Server-Token", &self.server_token)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().unwrap());
    }

    /// The output of `cell` once it has one (errors included, as JSON).
    pub fn output(&mut self, cell: &str) -> Value {
        let v =
            self.next_op("cell-op", OUTPUT_TIMEOUT, |v| v["data"]["cell_id"] == cell && !v["data"]["output"].is_null());
        v["data"]["output"].clone()
    }

    /// Runs the setup cell and `code` as cell `probe`; returns the probe's
    /// output text, panicking on an error output.
    pub fn eval(&mut self, code: &str) -> String {
        self.try_eval(code).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Kernel::eval`], with a failed cell as the error (its output and the
    /// setup cell's, as JSON).
    pub fn try_eval(&mut self, code: &str) -> Result<String, String> {
        let setup = self.setup_code.clone();
        self.run(&[("setup", &setup), ("probe", code)]);
        // The setup cell's own output too: when it fails, the probe only
        // says "an ancestor raised".
        let mut setup_out = Value::Null;
        let out = loop {
            let v = self.next_op("cell-op", OUTPUT_TIMEOUT, |v| {
                (v["data"]["cell_id"] == "probe" || v["data"]["cell_id"] == "setup") && !v["data"]["output"].is_null()
            });
            if v["data"]["cell_id"] == "probe" {
                break v["data"]["output"].clone();
            }
            setup_out = v["data"]["output"].clone();
        };
        if out["channel"] == "marimo-error" {
            return Err(format!("cell failed: {out}; setup cell: {setup_out}"));
        }
        Ok(out["data"].as_str().unwrap_or_default().to_string())
    }
}

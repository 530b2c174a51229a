//! `duckpond stream prometheus-test`: sends synthetic remote-write 1.0 and
//! 2.0 requests to a running server, reads them back through SQL and remote
//! read, and prints PASS or FAIL per check.

use std::time::{Duration, Instant};

use anyhow::bail;
use duckpond_schema::{prompb, prompb_v2};
use prost::Message;
use serde_json::json;

use super::data::{check_account, connect, ClientArgs};
use crate::config::Home;

/// Longest wait for the written samples to be committed.
pub const COMMIT_WAIT_MS: u64 = 30_000;

fn snappy(b: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(snap::raw::Encoder::new().compress_vec(b)?)
}

/// Runs the checks; fails if any does.
pub async fn run(home: &Home, client: ClientArgs) -> anyhow::Result<()> {
    let api = connect(home, &client).await?;
    let account = client.account.clone();
    tokio::task::spawn_blocking(move || {
        check_account(&api, &account)?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let now = chrono::Utc::now().timestamp_millis();
        let post = |path: &str, ct: &str, body: Vec<u8>| {
            api.http
                .post(api.url(path))
                .header("X-API-Key", &api.key)
                .header("Content-Type", ct)
                .header("Content-Encoding", "snappy")
                .body(body)
                .send()
        };
        let mut failed = 0;
        let mut check = |name: &str, ok: bool, detail: String| {
            println!(
                "{} {name}{}",
                if ok { "PASS" } else { "FAIL" },
                if ok { String::new() } else { format!(": {detail}") }
            );
            if !ok {
                failed += 1;
            }
        };
        let label = |n: &str, v: &str| prompb::Label { name: n.into(), value: v.into() };
        let v1 = prompb::WriteRequest {
            timeseries: vec![prompb::TimeSeries {
                labels: vec![label("__name__", "duckpond_selftest"), label("proto", "v1"), label("run", &run)],
                samples: (0..10)
                    .map(|i| prompb::Sample { value: i as f64, timestamp: now - 10_000 + i * 1_000 })
                    .collect(),
                ..Default::default()
            }],
            metadata: vec![],
        };
        let r = post("/api/v1/write", "application/x-protobuf", snappy(&v1.encode_to_vec())?)?;
        check(
            "remote write 1.0 accepted",
            r.status().as_u16() == 204,
            format!("{} {}", r.status(), r.text().unwrap_or_default()),
        );
        let symbols = ["", "__name__", "duckpond_selftest", "proto", "v2", "run", run.as_str()];
        let v2 = prompb_v2::Request {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            timeseries: vec![prompb_v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 4, 5, 6],
                samples: (0..10)
                    .map(|i| prompb_v2::Sample { value: 100.0 + i as f64, timestamp: now - 10_000 + i * 1_000 })
                    .collect(),
                ..Default::default()
            }],
        };
        let r = post(
            "/api/v1/write",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            snappy(&v2.encode_to_vec())?,
        )?;
        let written = r
            .headers()
            .get("x-prometheus-remote-write-samples-written")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        check(
            "remote write 2.0 accepted, 10 samples written",
            r.status().as_u16() == 204 && written == "10",
            format!("{} written={written:?}", r.status()),
        );
        // Wait until what was acknowledged is committed.
        let deadline = Instant::now() + Duration::from_millis(COMMIT_WAIT_MS);
        loop {
            let me: serde_json::Value =
                api.http.get(api.url("/api/account")).header("X-API-Key", &api.key).send()?.json()?;
            if me["usage"]["committed_lsn"] == me["usage"]["durable_lsn"] {
                break;
            }
            if Instant::now() > deadline {
                bail!("the writes were not committed within {COMMIT_WAIT_MS} ms");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let sql = format!(
            "SELECT labels['proto'], count(*), sum(value) FROM prometheus_samples \
             WHERE metric_name = 'duckpond_selftest' AND labels['run'] = '{run}' GROUP BY ALL ORDER BY 1"
        );
        let v: serde_json::Value = api
            .http
            .post(api.url("/api/query"))
            .header("X-API-Key", &api.key)
            .json(&json!({"sql": sql}))
            .send()?
            .json()?;
        let expect = json!([["v1", 10, 45.0], ["v2", 10, 1045.0]]);
        check("SQL sees both writes exactly once", v["rows"] == expect, v.to_string());
        let q = prompb::Query {
            start_timestamp_ms: now - 20_000,
            end_timestamp_ms: now,
            matchers: vec![
                prompb::LabelMatcher { r#type: 0, name: "__name__".into(), value: "duckpond_selftest".into() },
                prompb::LabelMatcher { r#type: 0, name: "run".into(), value: run.clone() },
            ],
            hints: None,
        };
        let r = post(
            "/api/v1/read",
            "application/x-protobuf",
            snappy(&prompb::ReadRequest { queries: vec![q], accepted_response_types: vec![] }.encode_to_vec())?,
        )?;
        let ok = r.status().is_success();
        let series = if ok {
            let raw = snap::raw::Decoder::new().decompress_vec(&r.bytes()?)?;
            prompb::ReadResponse::decode(raw.as_slice())?.results.first().map(|q| q.timeseries.len()).unwrap_or(0)
        } else {
            0
        };
        check("remote read returns both series", series == 2, format!("{series} series"));
        if failed > 0 {
            bail!("{failed} check(s) failed");
        }
        println!("all checks passed");
        Ok(())
    })
    .await?
}

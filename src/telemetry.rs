//! Logs and metrics, defined in one place.
//!
//! Metric names follow `duckpond_<area>_<name>_<unit>[_total]`. Each metric is
//! described here once; code elsewhere records through these helpers so a
//! name cannot drift between recording and documentation.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Counter: HTTP requests answered, by method, route template and status.
pub const HTTP_REQUESTS_TOTAL: &str = "duckpond_http_requests_total";
/// Histogram: HTTP request latency, by method and route template.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "duckpond_http_request_duration_seconds";
/// Prometheus samples and histograms written, per account.
pub const PROMETHEUS_SAMPLES_TOTAL: &str = "duckpond_prometheus_samples_total";
/// Prometheus samples, histograms and exemplars skipped as already stored.
pub const PROMETHEUS_DUPLICATES_TOTAL: &str = "duckpond_prometheus_duplicates_total";
/// Counter: samples and histograms stored out of order (inside the window).
pub const PROMETHEUS_OUT_OF_ORDER_TOTAL: &str = "duckpond_prometheus_out_of_order_total";
/// Counter: remote-write requests refused by the ordering rules, by reason
/// (`too_old`, `changed_value`).
pub const PROMETHEUS_REFUSED_REQUESTS_TOTAL: &str = "duckpond_prometheus_refused_requests_total";

const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global metrics recorder once and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
                .expect("static bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (tests in one
            // process): then this handle still renders its own registry.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered");
    metrics::describe_counter!(PROMETHEUS_SAMPLES_TOTAL, "Prometheus samples and histograms written");
    metrics::describe_counter!(PROMETHEUS_DUPLICATES_TOTAL, "Prometheus samples skipped as already stored (resends)");
    metrics::describe_counter!(
        PROMETHEUS_OUT_OF_ORDER_TOTAL,
        "Prometheus samples stored out of order, inside the window"
    );
    metrics::describe_counter!(
        PROMETHEUS_REFUSED_REQUESTS_TOTAL,
        "Prometheus remote-write requests refused (400) by the ordering rules"
    );
    metrics::describe_histogram!(HTTP_REQUEST_DURATION_SECONDS, metrics::Unit::Seconds, "HTTP request latency");
}

/// Records one answered HTTP request.
pub fn record_http_request(method: &str, route: &str, status: u16, latency: Duration) {
    let labels = [("method", method.to_string()), ("route", route.to_string()), ("status", status.to_string())];
    metrics::counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
    let labels = [("method", method.to_string()), ("route", route.to_string())];
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels).record(latency.as_secs_f64());
}

/// Initialises structured logging to stderr. `DUCKPOND_LOG` (or `RUST_LOG`)
/// sets the filter; `DUCKPOND_LOG_FORMAT=json` switches to JSON lines.
/// stderr that drops what it cannot write (a full disk, a closed pipe) and
/// counts it in `duckpond_log_write_failures_total`, instead of failing or
/// panicking in the middle of a request.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            metrics::counter!("duckpond_log_write_failures_total").increment(1);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

pub fn init_logging() {
    let filter = std::env::var("DUCKPOND_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A failed log write must never reach a request: tracing's default
        // reports it with eprintln!, which panics when stderr's disk is full.
        .log_internal_errors(false)
        .with_writer(|| LossyStderr);
    let json = std::env::var("DUCKPOND_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

//! Metrics and health: process-wide counters, per-pipeline statistics, and the HTTP endpoint
//! (`--metrics-addr`) that serves them as Prometheus text on `/metrics`, readiness on `/health`
//! and liveness on `/live`.
//!
//! Each counter is incremented in the one place that also logs (or reports) what it counts.
//! Labels hold pipeline and sink names and HTTP status codes only: never a key, a URL or a
//! sandbox id (a fleet of thousands would explode the series count).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }

    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Take one away.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Miosa API requests retried after a retryable failure.
pub static API_RETRIES: Counter = Counter::new();
/// Socket data frames received.
pub static FRAMES_RECEIVED: Counter = Counter::new();
/// Sockets that closed or failed after the handshake.
pub static SOCKET_DROPS: Counter = Counter::new();
/// Live tails on their socket.
pub static TAILS_WEBSOCKET: Gauge = Gauge::new();
/// Live tails on the polling fallback.
pub static TAILS_POLLING: Gauge = Gauge::new();
/// Live tails connecting or catching up (after a start or a dropped socket).
pub static TAILS_CONNECTING: Gauge = Gauge::new();

/// Miosa API responses by HTTP status; 0 counts requests that got no response.
static API_RESPONSES: Mutex<BTreeMap<u16, u64>> = Mutex::new(BTreeMap::new());

/// Count one API response (`status` 0: no response, a transport error).
pub fn api_response(status: u16) {
    let mut m = API_RESPONSES.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(status).or_default() += 1;
}

/// The client's reports ([`auditship_client::Observer`]) into the counters above: the
/// pipeline gives every client it builds one of these.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientMetrics;

impl ClientMetrics {
    /// The gauge counting tails in state `s` (none for a stopped tail).
    fn transport_gauge(s: auditship_client::ActiveTransport) -> Option<&'static Gauge> {
        use auditship_client::ActiveTransport;
        match s {
            ActiveTransport::Connecting => Some(&TAILS_CONNECTING),
            ActiveTransport::WebSocket => Some(&TAILS_WEBSOCKET),
            ActiveTransport::Polling => Some(&TAILS_POLLING),
            ActiveTransport::Stopped => None,
        }
    }
}

impl auditship_client::Observer for ClientMetrics {
    fn api_response(&self, status: u16) {
        api_response(status);
    }

    fn api_retry(&self) {
        API_RETRIES.inc();
    }

    fn frame_received(&self) {
        FRAMES_RECEIVED.inc();
    }

    fn socket_dropped(&self) {
        SOCKET_DROPS.inc();
    }

    fn tail_transport(&self, from: auditship_client::ActiveTransport, to: auditship_client::ActiveTransport) {
        if let Some(g) = Self::transport_gauge(from) {
            g.dec();
        }
        if let Some(g) = Self::transport_gauge(to) {
            g.inc();
        }
    }
}

/// What one sink has done.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// The sink's name.
    pub name: String,
    /// Events made durable by the sink (after routing and transforms).
    pub shipped: Counter,
    /// Events its route or transforms dropped.
    pub filtered: Counter,
    /// Write or flush failures that were retried.
    pub retries: Counter,
    /// Whether the sink is failing now (retrying).
    pub failing: AtomicBool,
}

/// Counters of one pipeline run; a caller can watch them (the backfill progress bar does) and
/// `/metrics` serves them.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events handed to the sinks.
    pub emitted: AtomicU64,
    /// Events whose checkpoint has committed.
    pub committed: AtomicU64,
    /// Events the pipeline's `[[transforms]]` dropped (they count as shipped: nothing is owed).
    pub filtered: AtomicU64,
    /// Dead letters that were not events (unreadable frames).
    pub dead_not_events: AtomicU64,
    /// Dead letters a sink refused for good.
    pub dead_refused: AtomicU64,
    /// Dead letters a transform failed on.
    pub dead_transform: AtomicU64,
    /// Newest cursor time committed, µs since the Unix epoch (0: none yet).
    pub newest_committed_us: AtomicI64,
    /// When the last commit happened, µs since the Unix epoch (0: none yet).
    pub last_commit_us: AtomicI64,
    /// Sandboxes followed.
    pub sandboxes: AtomicU64,
    /// Sinks prepared and sources started.
    pub running: AtomicBool,
    /// Per sink.
    pub sinks: Mutex<Vec<Arc<SinkStats>>>,
}

impl PipelineStats {
    /// Payloads dead-lettered, for every reason.
    pub fn dead_lettered(&self) -> u64 {
        [&self.dead_not_events, &self.dead_refused, &self.dead_transform]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Counters for a new sink, registered with this pipeline.
    pub fn sink(&self, name: &str) -> Arc<SinkStats> {
        let s = Arc::new(SinkStats {
            name: name.to_string(),
            ..Default::default()
        });
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.clone());
        s
    }
}

/// The pipelines `/metrics` reports, by name (a pipeline run again replaces its entry).
static PIPELINES: Mutex<BTreeMap<String, Arc<PipelineStats>>> = Mutex::new(BTreeMap::new());

/// Report `stats` under `pipeline` from now on.
pub fn register(pipeline: &str, stats: Arc<PipelineStats>) {
    PIPELINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pipeline.to_string(), stats);
}

/// Escape a label value (Prometheus text format).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Every metric, as Prometheus text (format 0.0.4).
pub fn render() -> String {
    let now_us = chrono::Utc::now().timestamp_micros();
    let pipelines: Vec<(String, Arc<PipelineStats>)> = PIPELINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut out = String::with_capacity(4096);
    let per_pipeline = |out: &mut String,
                        name: &str,
                        kind: &str,
                        help: &str,
                        get: &dyn Fn(&PipelineStats) -> Option<f64>| {
        family(out, name, kind, help);
        for (p, s) in &pipelines {
            if let Some(v) = get(s) {
                let _ = writeln!(out, "{name}{{pipeline=\"{}\"}} {v}", label(p));
            }
        }
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    per_pipeline(
        &mut out,
        "auditship_events_received_total",
        "counter",
        "Events read from the Miosa API and handed to the sinks.",
        &|s| Some(load(&s.emitted)),
    );
    per_pipeline(
        &mut out,
        "auditship_events_committed_total",
        "counter",
        "Events whose position is checkpointed (every sink has them, or dropped them).",
        &|s| Some(load(&s.committed)),
    );
    per_pipeline(
        &mut out,
        "auditship_events_filtered_total",
        "counter",
        "Events the pipeline's transforms dropped.",
        &|s| Some(load(&s.filtered)),
    );
    family(
        &mut out,
        "auditship_dead_letters_total",
        "counter",
        "Payloads written to the dead-letter file, by why.",
    );
    for (p, s) in &pipelines {
        for (why, v) in [
            ("not_an_event", &s.dead_not_events),
            ("sink_refused", &s.dead_refused),
            ("transform_failed", &s.dead_transform),
        ] {
            let _ = writeln!(
                out,
                "auditship_dead_letters_total{{pipeline=\"{}\",reason=\"{why}\"}} {}",
                label(p),
                load(v)
            );
        }
    }
    per_pipeline(
        &mut out,
        "auditship_sandboxes",
        "gauge",
        "Sandboxes the pipeline follows.",
        &|s| Some(load(&s.sandboxes)),
    );
    per_pipeline(
        &mut out,
        "auditship_lag_seconds",
        "gauge",
        "Now minus the newest checkpointed event time (absent before the first commit).",
        &|s| {
            let t = s.newest_committed_us.load(Ordering::Relaxed);
            (t > 0).then(|| (now_us - t).max(0) as f64 / 1e6)
        },
    );
    per_pipeline(
        &mut out,
        "auditship_checkpoint_age_seconds",
        "gauge",
        "Seconds since the last checkpoint commit (absent before the first).",
        &|s| {
            let t = s.last_commit_us.load(Ordering::Relaxed);
            (t > 0).then(|| (now_us - t).max(0) as f64 / 1e6)
        },
    );
    let sinks: Vec<(String, Arc<SinkStats>)> = pipelines
        .iter()
        .flat_map(|(p, s)| {
            s.sinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|k| (p.clone(), k.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let per_sink = |out: &mut String, name: &str, kind: &str, help: &str, get: &dyn Fn(&SinkStats) -> u64| {
        family(out, name, kind, help);
        for (p, s) in &sinks {
            let _ = writeln!(
                out,
                "{name}{{pipeline=\"{}\",sink=\"{}\"}} {}",
                label(p),
                label(&s.name),
                get(s)
            );
        }
    };
    per_sink(
        &mut out,
        "auditship_events_shipped_total",
        "counter",
        "Events a sink made durable (after its route and transforms).",
        &|s| s.shipped.get(),
    );
    per_sink(
        &mut out,
        "auditship_sink_filtered_total",
        "counter",
        "Events a sink's route or transforms dropped.",
        &|s| s.filtered.get(),
    );
    per_sink(
        &mut out,
        "auditship_sink_retries_total",
        "counter",
        "Sink writes that failed and were retried.",
        &|s| s.retries.get(),
    );
    per_sink(
        &mut out,
        "auditship_sink_failing",
        "gauge",
        "1 while the sink is failing and retrying.",
        &|s| u64::from(s.failing.load(Ordering::Relaxed)),
    );

    family(
        &mut out,
        "auditship_api_responses_total",
        "counter",
        "Miosa API responses by HTTP status (status=\"error\": no response).",
    );
    for (status, n) in API_RESPONSES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let s = if *status == 0 {
            "error".to_string()
        } else {
            status.to_string()
        };
        let _ = writeln!(out, "auditship_api_responses_total{{status=\"{s}\"}} {n}");
    }
    for (name, kind, help, v) in [
        (
            "auditship_api_retries_total",
            "counter",
            "Miosa API requests retried.",
            API_RETRIES.get() as i64,
        ),
        (
            "auditship_frames_received_total",
            "counter",
            "Socket frames received.",
            FRAMES_RECEIVED.get() as i64,
        ),
        (
            "auditship_socket_drops_total",
            "counter",
            "Sockets that closed or failed after the handshake.",
            SOCKET_DROPS.get() as i64,
        ),
        (
            "auditship_sockets_open",
            "gauge",
            "Live tails on their socket.",
            TAILS_WEBSOCKET.get(),
        ),
        (
            "auditship_sandboxes_polling",
            "gauge",
            "Live tails on the polling fallback.",
            TAILS_POLLING.get(),
        ),
        (
            "auditship_sandboxes_connecting",
            "gauge",
            "Live tails connecting or catching up.",
            TAILS_CONNECTING.get(),
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    out
}

/// Readiness: every pipeline running, no live tail still connecting, no sink failing. Returns
/// whether ready and a JSON explanation.
pub fn health() -> (bool, serde_json::Value) {
    let pipelines: Vec<(String, Arc<PipelineStats>)> = PIPELINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut ready = !pipelines.is_empty();
    let mut reasons = Vec::new();
    if pipelines.is_empty() {
        reasons.push("no pipeline has started".to_string());
    }
    let mut detail = Vec::new();
    for (name, s) in &pipelines {
        let running = s.running.load(Ordering::Relaxed);
        if !running {
            ready = false;
            reasons.push(format!("pipeline {name} is not running"));
        }
        let failing: Vec<String> = s
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|k| k.failing.load(Ordering::Relaxed))
            .map(|k| k.name.clone())
            .collect();
        for f in &failing {
            ready = false;
            reasons.push(format!("pipeline {name}: sink {f} is failing"));
        }
        detail.push(serde_json::json!({"pipeline": name, "running": running, "failing_sinks": failing}));
    }
    let connecting = TAILS_CONNECTING.get();
    if connecting > 0 {
        ready = false;
        reasons.push(format!("{connecting} sandbox(es) connecting or catching up"));
    }
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "reasons": reasons,
        "pipelines": detail,
        "sockets_open": TAILS_WEBSOCKET.get(),
        "sandboxes_polling": TAILS_POLLING.get(),
        "sandboxes_connecting": connecting,
    });
    (ready, body)
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be listened on.
    #[error("cannot listen on {addr} for metrics: {source}; pick another --metrics-addr")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Listen on `addr` (before returning, so a taken port is reported at once) and serve
/// `/metrics`, `/health` and `/live` until `shutdown`. Returns the bound address.
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) -> Result<SocketAddr, ServeError> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    render(),
                )
            }),
        )
        .route(
            "/health",
            get(|| async {
                let (ready, body) = health();
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, axum::Json(body))
            }),
        )
        .route("/live", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /health and /live");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_every_family_is_typed() {
        let stats = Arc::new(PipelineStats::default());
        stats.emitted.store(5, Ordering::Relaxed);
        let sink = stats.sink("arch\"ive");
        sink.shipped.add(3);
        register("pipe\\1", stats);
        api_response(200);
        api_response(0);
        let text = render();
        assert!(
            text.contains("auditship_events_received_total{pipeline=\"pipe\\\\1\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("auditship_events_shipped_total{pipeline=\"pipe\\\\1\",sink=\"arch\\\"ive\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("auditship_api_responses_total{status=\"error\"}"),
            "{text}"
        );
        // Every sample's family has HELP and TYPE lines.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}

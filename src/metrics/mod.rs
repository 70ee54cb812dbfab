//! Metrics and health: process-wide counters, per-pipeline statistics, and the HTTP endpoint
//! (`--metrics-addr`) that serves them as Prometheus text on `/metrics`, readiness on `/health`
//! and liveness on `/live`.
//!
//! Each counter is incremented in the one place that also logs (or reports) what it counts.
//! Labels hold pipeline and sink names and HTTP status codes only: never a key, a URL or a
//! sandbox id (a fleet of thousands would explode the series count).
//!
//! # Layout
//! - `mod.rs`: the process-wide counters of the Miosa client and [`ClientMetrics`], which
//!   feeds them from the client's [`Observer`](auditship_client::Observer) reports.
//! - `stats.rs`: [`PipelineStats`] and [`SinkStats`], the counters of one run, which the
//!   backfill progress bar reads as well; [`register`] puts a run on `/metrics`.
//! - `exposition.rs`: [`render`], the Prometheus text. The `prometheus-client` crate encodes
//!   it (escaping, `_total` suffixes, number formats); we only say what each family holds.
//! - `health.rs`: [`health`], the readiness verdict and its reasons.
//! - `serve.rs`: [`serve`], the HTTP endpoint.

mod exposition;
mod health;
mod serve;
mod stats;

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

pub use exposition::render;
pub use health::health;
pub use serve::{serve, ServeError};
pub use stats::{register, PipelineStats, SinkStats};

/// Miosa API requests retried after a retryable failure.
pub static API_RETRIES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Socket data frames received.
pub static FRAMES_RECEIVED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Sockets that closed or failed after the handshake.
pub static SOCKET_DROPS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Live tails on their socket.
pub static TAILS_WEBSOCKET: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Live tails on the polling fallback.
pub static TAILS_POLLING: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Live tails connecting or catching up (after a start or a dropped socket).
pub static TAILS_CONNECTING: LazyLock<Gauge> = LazyLock::new(Gauge::default);

/// The `status` label of `auditship_api_responses_total`: an HTTP status, or `error` for a
/// request that got no response.
type StatusLabel = [(&'static str, String); 1];

/// Miosa API responses by HTTP status.
static API_RESPONSES: LazyLock<Family<StatusLabel, Counter>> = LazyLock::new(Family::default);

/// Count one API response (`status` 0: no response, a transport error).
pub fn api_response(status: u16) {
    let status = if status == 0 {
        "error".to_string()
    } else {
        status.to_string()
    };
    API_RESPONSES.get_or_create(&[("status", status)]).inc();
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

//! `/metrics`: every family as Prometheus text (format 0.0.4), encoded by the
//! `prometheus-client` crate from the counters as they are at the scrape.
//!
//! One [`Collector`] reads everything at scrape time rather than the crate's own registered
//! metrics, for two reasons: a run's counters are atomics its caller reads too (the backfill
//! progress bar), and a registered family with no sample yet is left out by the crate, while
//! dashboards and alerts expect every family declared from the first scrape on.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::stats::{pipelines, PipelineStats};
use super::{
    API_RESPONSES, API_RETRIES, FRAMES_RECEIVED, SOCKET_DROPS, TAILS_CONNECTING, TAILS_POLLING,
    TAILS_WEBSOCKET,
};
use crate::transform::ocsf::OcsfCounters;

/// The registry `/metrics` encodes: one collector, [`Auditship`].
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Auditship));
    registry
});

/// Every metric, as Prometheus text (format 0.0.4).
pub fn render() -> String {
    let mut out = String::with_capacity(4096);
    // A `String` takes every write, so the encoder has nothing to fail on; were that to
    // change, a partial page is still better than none.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &REGISTRY) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    out
}

/// The collector of every auditship family.
#[derive(Debug)]
struct Auditship;

/// A counter family: `name` as served (the encoder adds the `_total` that counters end in, so
/// it is taken off here and the series stay greppable as written), then a sample per label set.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let bare = name.strip_suffix("_total").unwrap_or(name);
    let mut family = enc.encode_descriptor(bare, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family, a sample per label set.
fn gauges<L: EncodeLabelSet, N: EncodeGaugeValue + fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, N)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A process-wide metric (no labels of ours).
fn process(enc: &mut DescriptorEncoder, name: &str, help: &str, metric: &dyn EncodeMetric) -> fmt::Result {
    let kind = metric.metric_type();
    let bare = match kind {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    metric.encode(enc.encode_descriptor(bare, help, None, kind)?)
}

/// Microseconds since `t_us` until `now_us` in seconds, absent while `t_us` is 0 (never).
fn age_seconds(now_us: i64, t_us: i64) -> Option<f64> {
    (t_us > 0).then(|| (now_us - t_us).max(0) as f64 / 1e6)
}

impl Collector for Auditship {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let now_us = chrono::Utc::now().timestamp_micros();
        let pipelines = pipelines();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let per_pipeline = |get: &dyn Fn(&PipelineStats) -> u64| -> Vec<_> {
            pipelines
                .iter()
                .map(|(p, s)| ([("pipeline", p.as_str())], get(s)))
                .collect()
        };
        counters(
            &mut enc,
            "auditship_events_received_total",
            "Events read from the Miosa API and handed to the sinks.",
            per_pipeline(&|s| load(&s.emitted)),
        )?;
        counters(
            &mut enc,
            "auditship_events_committed_total",
            "Events whose position is checkpointed (every sink has them, or dropped them).",
            per_pipeline(&|s| load(&s.committed)),
        )?;
        counters(
            &mut enc,
            "auditship_events_filtered_total",
            "Events the pipeline's transforms dropped.",
            per_pipeline(&|s| load(&s.filtered)),
        )?;
        counters(
            &mut enc,
            "auditship_dead_letters_total",
            "Payloads written to the dead-letter file, by why.",
            pipelines.iter().flat_map(|(p, s)| {
                [
                    ("not_an_event", &s.dead_not_events),
                    ("sink_refused", &s.dead_refused),
                    ("transform_failed", &s.dead_transform),
                ]
                .map(|(why, v)| ([("pipeline", p.as_str()), ("reason", why)], load(v)))
            }),
        )?;
        gauges(
            &mut enc,
            "auditship_sandboxes",
            "Sandboxes the pipeline follows.",
            per_pipeline(&|s| load(&s.sandboxes)),
        )?;
        gauges(
            &mut enc,
            "auditship_lag_seconds",
            "Now minus the newest checkpointed event time (absent before the first commit).",
            pipelines.iter().filter_map(|(p, s)| {
                age_seconds(now_us, s.newest_committed_us.load(Ordering::Relaxed))
                    .map(|v| ([("pipeline", p.as_str())], v))
            }),
        )?;
        gauges(
            &mut enc,
            "auditship_checkpoint_age_seconds",
            "Seconds since the last checkpoint commit (absent before the first).",
            pipelines.iter().filter_map(|(p, s)| {
                age_seconds(now_us, s.last_commit_us.load(Ordering::Relaxed))
                    .map(|v| ([("pipeline", p.as_str())], v))
            }),
        )?;

        let sinks: Vec<_> = pipelines
            .iter()
            .flat_map(|(p, s)| s.sinks_now().into_iter().map(move |k| (p.as_str(), k)))
            .collect();
        let per_sink = |get: &dyn Fn(&super::SinkStats) -> u64| -> Vec<_> {
            sinks
                .iter()
                .map(|(p, k)| ([("pipeline", *p), ("sink", k.name.as_str())], get(k)))
                .collect()
        };
        counters(
            &mut enc,
            "auditship_events_shipped_total",
            "Events a sink made durable (after its route and transforms).",
            per_sink(&|k| k.shipped.get()),
        )?;
        counters(
            &mut enc,
            "auditship_sink_filtered_total",
            "Events a sink's route or transforms dropped.",
            per_sink(&|k| k.filtered.get()),
        )?;
        counters(
            &mut enc,
            "auditship_sink_retries_total",
            "Sink writes that failed and were retried.",
            per_sink(&|k| k.retries.get()),
        )?;
        counters(
            &mut enc,
            "auditship_sink_replays_skipped_total",
            "Events a sink found already delivered past the last checkpoint (after a crash or a producer rebuild) and did not send again.",
            per_sink(&|k| k.replays_skipped.load(Ordering::Relaxed)),
        )?;
        // The `ocsf` transform, where one runs: `at` is `transforms` (the pipeline's list) or
        // `sinks.NAME` (a sink's own list), as configuration errors name them.
        let ocsf_places: Vec<(&str, String, &OcsfCounters)> = pipelines
            .iter()
            .map(|(p, s)| (p.as_str(), "transforms".to_string(), &*s.ocsf))
            .chain(
                sinks
                    .iter()
                    .map(|(p, k)| (*p, format!("sinks.{}", k.name), &*k.ocsf)),
            )
            .filter(|(_, _, c)| c.active.load(Ordering::Relaxed))
            .collect();
        counters(
            &mut enc,
            "auditship_ocsf_events_total",
            "Events the ocsf transform mapped (outcome=\"mapped\") or could not map (outcome=\"failed\", dead-lettered with the reason).",
            ocsf_places.iter().flat_map(|(p, at, c)| {
                [("mapped", &c.mapped), ("failed", &c.failed)]
                    .map(|(outcome, v)| ([("pipeline", *p), ("at", at.as_str()), ("outcome", outcome)], load(v)))
            }),
        )?;
        counters(
            &mut enc,
            "auditship_ocsf_unmapped_fields_total",
            "Source fields the ocsf transform placed under `unmapped` (summed over the events it mapped).",
            ocsf_places
                .iter()
                .map(|(p, at, c)| ([("pipeline", *p), ("at", at.as_str())], load(&c.unmapped_fields))),
        )?;
        gauges(
            &mut enc,
            "auditship_sink_failing",
            "1 while the sink is failing and retrying.",
            per_sink(&|k| u64::from(k.failing.load(Ordering::Relaxed))),
        )?;

        process(
            &mut enc,
            "auditship_api_responses_total",
            "Miosa API responses by HTTP status (status=\"error\": no response).",
            &*API_RESPONSES,
        )?;
        process(
            &mut enc,
            "auditship_api_retries_total",
            "Miosa API requests retried.",
            &*API_RETRIES,
        )?;
        process(
            &mut enc,
            "auditship_frames_received_total",
            "Socket frames received.",
            &*FRAMES_RECEIVED,
        )?;
        process(
            &mut enc,
            "auditship_socket_drops_total",
            "Sockets that closed or failed after the handshake.",
            &*SOCKET_DROPS,
        )?;
        process(
            &mut enc,
            "auditship_sockets_open",
            "Live tails on their socket.",
            &*TAILS_WEBSOCKET,
        )?;
        process(
            &mut enc,
            "auditship_sandboxes_polling",
            "Live tails on the polling fallback.",
            &*TAILS_POLLING,
        )?;
        process(
            &mut enc,
            "auditship_sandboxes_connecting",
            "Live tails connecting or catching up.",
            &*TAILS_CONNECTING,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{api_response, register};
    use super::*;

    #[test]
    fn labels_are_escaped_and_every_family_is_typed() {
        let stats = Arc::new(PipelineStats::default());
        stats.emitted.store(5, Ordering::Relaxed);
        let sink = stats.sink("arch\"ive");
        sink.shipped.inc_by(3);
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

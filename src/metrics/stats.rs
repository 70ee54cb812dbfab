//! The counters of one pipeline run, per pipeline and per sink. They are plain atomics that
//! the run's stages bump and that two readers share: `/metrics` (through [`register`]) and
//! the caller of the run (the backfill progress bar, the run's closing report).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

use crate::transform::ocsf::OcsfCounters;

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
    /// Events the sink found already delivered and did not send again
    /// ([`auditship_sink::Sink::replays_skipped`]).
    pub replays_skipped: AtomicU64,
    /// Whether the sink is failing now (retrying).
    pub failing: AtomicBool,
    /// What the sink's `ocsf` transform did.
    pub ocsf: Arc<OcsfCounters>,
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
    /// What an `ocsf` step of the pipeline's `[[transforms]]` did.
    pub ocsf: Arc<OcsfCounters>,
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

    /// The sinks' counters as they are now.
    pub(super) fn sinks_now(&self) -> Vec<Arc<SinkStats>> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

/// The registered pipelines, by name, as they are now.
pub(super) fn pipelines() -> Vec<(String, Arc<PipelineStats>)> {
    PIPELINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

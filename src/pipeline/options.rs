//! What a run is asked to do ([`RunOptions`]) and what it did ([`RunReport`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::{format_time, ActiveTransport};

/// A window of the past for `auditship backfill`.
#[derive(Clone, Debug)]
pub struct Window {
    /// Inclusive start, µs since the Unix epoch.
    pub since_us: i64,
    /// Inclusive end; `None` means "now, whenever the run happens".
    pub until_us: Option<i64>,
    /// Sandboxes to backfill; empty means every sandbox of the pipeline.
    pub sandboxes: Vec<String>,
    /// A named job (`--job`): its progress is kept under the job's name.
    pub job: Option<String>,
}

impl Window {
    /// The checkpoint stream of this window: its progress is kept apart from the live
    /// checkpoint, so a backfill never moves a live position.
    pub fn stream_key(&self) -> String {
        if let Some(job) = &self.job {
            return crate::store::Job::stream_key(job);
        }
        format!(
            "backfill:{}:{}",
            format_time(self.since_us),
            self.until_us.map_or_else(|| "open".to_string(), format_time)
        )
    }
}

/// Events the caller gives, shipped once under a checkpoint stream of their own, and not
/// fetched from the API (reconciliation's gap findings).
#[derive(Clone, Debug)]
pub struct Given {
    /// The checkpoint stream they are committed under (a new one each time: nothing is
    /// resumed from an earlier run).
    pub stream: String,
    /// The events, by the source id they are shipped under (its positions and ledger rows
    /// are kept under that id: use one no sandbox has).
    pub events: Arc<BTreeMap<String, Vec<auditship_sink::Event>>>,
    /// The source ids, the keys of `events`.
    pub sources: Vec<String>,
}

/// Live, backfill, or given events.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Follow the sandboxes until stopped.
    Live,
    /// Ship a window and stop.
    Backfill(Window),
    /// Ship the events given and stop.
    Given(Given),
}

impl Mode {
    /// The checkpoint stream a run in this mode keeps its progress under: `live`, or the
    /// window's own (see [`Window::stream_key`]).
    pub fn stream_key(&self) -> String {
        match self {
            Mode::Live => "live".to_string(),
            Mode::Backfill(w) => w.stream_key(),
            Mode::Given(g) => g.stream.clone(),
        }
    }

    /// The sandboxes this mode names (a backfill's `--sandbox`); empty: the pipeline's own.
    pub fn sandboxes(&self) -> &[String] {
        match self {
            Mode::Live => &[],
            Mode::Backfill(w) => &w.sandboxes,
            Mode::Given(g) => &g.sources,
        }
    }
}

/// Counters a caller can watch while the pipeline runs (the backfill progress bar does); the
/// metrics endpoint serves them.
pub type Progress = crate::metrics::PipelineStats;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Live or backfill.
    pub mode: Mode,
    /// Cancel to drain and stop.
    pub shutdown: CancellationToken,
    /// Counters to watch.
    pub progress: Arc<Progress>,
    /// How long a drain may take before pending work is abandoned (it is safe: nothing past
    /// the last commit counts as shipped).
    pub drain_timeout: Duration,
    /// Ship only events with these ids (reconciliation fills gaps with exactly what is
    /// missing); the others still move positions. `None`: every event.
    pub only_ids: Option<Arc<std::collections::HashSet<String>>>,
}

impl RunOptions {
    /// Options for `mode` with a fresh token and counters and an 8 s drain (inside the 10 s a
    /// service manager usually allows).
    pub fn new(mode: Mode) -> Self {
        RunOptions {
            mode,
            shutdown: CancellationToken::new(),
            progress: Arc::new(Progress::default()),
            drain_timeout: Duration::from_secs(8),
            only_ids: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// The pipeline.
    pub pipeline: String,
    /// Per sandbox: events committed this run.
    pub shipped: BTreeMap<String, u64>,
    /// Per sandbox: the transport it ended on (live runs).
    pub transports: BTreeMap<String, ActiveTransport>,
    /// Sandboxes that stopped early, with why.
    pub stopped: BTreeMap<String, String>,
    /// Payloads dead-lettered.
    pub dead_lettered: u64,
    /// Events the pipeline's `[[transforms]]` dropped this run (counted in `shipped`).
    pub filtered: u64,
    /// The dead-letter file.
    pub dead_letter_path: PathBuf,
    /// Whether every source finished its work (always false for a live run stopped by signal).
    pub complete: bool,
}

//! The pipeline runner.
//!
//! ```text
//! per sandbox:  source ──(bounded mpsc)──▶ batcher ──(bounded, per sink)──▶ sink task
//!                                            │ batch positions                 │ acks (through batch N,
//!                                            ▼                                 ▼  + sink state)
//!                                        checkpointer ──▶ SQLite (one transaction: positions + sink state)
//! ```
//! - Every channel is bounded: a slow sink blocks the batcher, which blocks the sources, which
//!   stop reading their sockets; TCP pushes back to the server. Memory stays bounded.
//! - The batcher numbers batches and records, for each, the position every touched sandbox has
//!   reached (newest cursor time and the ids at it). It tells the checkpointer *before* any sink
//!   sees the batch, so an ack never arrives for an unknown batch.
//! - Transforms: the batcher runs the pipeline's `[[transforms]]` on each closed batch (after
//!   recording positions, so a dropped event still moves its sandbox's checkpoint); each sink
//!   task runs its route and transforms on each batch before writing it. Events a transform fails
//!   on are dead-lettered, durably, before the batch goes on. A batch keeps its number however
//!   many events it lost, so acknowledgements work unchanged.
//! - A sink acknowledges "through batch N" only after N is durable, with the state entries (file
//!   lengths) that describe exactly that point.
//! - Every `commit_interval` the checkpointer finds W, the highest batch every sink has
//!   acknowledged and every file sink acknowledged *exactly* (its file lengths describe that
//!   batch; see `commit_point`), and commits the positions of batches ≤ W with the sinks' state
//!   as of W in one transaction. A crash at any moment leaves positions and sink state that
//!   agree.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use auditship_sink::{Batch, DeadLetters, Event, Sink, SinkContext, SinkError, StateEntry};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, Commit, Store, StoreError};
use crate::client::{
    format_time, ActiveTransport, Backoff, Client, CursorText, Position, StartAt, TailOptions,
};
use crate::config::{Pipeline, SinkConfig};
use crate::secret::ApiKey;
use crate::source::{self, DeadLetter, SourceEnd, SourceKind, SourceMsg};
use crate::transform::{Applied, Chain};

/// Errors that stop a pipeline. [`PipelineError::is_retryable`] says whether running it again
/// later can help (cron uses the exit code built from it).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sink failed in a way waiting will not fix.
    #[error("sink {sink:?}: {source}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// What failed.
        #[source]
        source: SinkError,
    },
    /// The Miosa API refused us in a way waiting will not fix (a bad key, say).
    #[error("sandbox {resource_id}: {source}")]
    Source {
        /// The sandbox.
        resource_id: String,
        /// What failed.
        #[source]
        source: crate::client::Error,
    },
    /// Building the client failed.
    #[error(transparent)]
    Client(#[from] crate::client::Error),
}

impl PipelineError {
    /// Whether running again later can succeed without a change of configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Config(_) | PipelineError::Client(_) => false,
            PipelineError::Store(e) => e.is_retryable() || matches!(e, StoreError::Locked { .. }),
            PipelineError::Sink { source, .. } => source.is_retryable(),
            PipelineError::Source { source, .. } => source.is_retryable(),
        }
    }
}

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
            return crate::checkpoint::Job::stream_key(job);
        }
        format!(
            "backfill:{}:{}",
            format_time(self.since_us),
            self.until_us.map_or_else(|| "open".to_string(), format_time)
        )
    }
}

/// Live or backfill.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Follow the sandboxes until stopped.
    Live,
    /// Ship a window and stop.
    Backfill(Window),
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

/// Build the API client of a pipeline.
pub fn client_for(p: &Pipeline) -> Result<Client, PipelineError> {
    let key: ApiKey = p.api_key.clone().ok_or_else(|| {
        PipelineError::Config(format!(
            "{}: no API key; set api_key = \"${{MIOSA_API_KEY}}\" in [source] and export the variable",
            p.file.display()
        ))
    })?;
    let mut b = Client::builder()
        .base_url(&p.base_url)
        .api_key(key)
        .requests_per_minute(p.requests_per_minute)
        .timeout(p.request_timeout)
        .connect_timeout(p.connect_timeout)
        .observer(std::sync::Arc::new(crate::metrics::ClientMetrics));
    if let Some(t) = &p.tenant {
        b = b.tenant(t);
    }
    if let Some(ca) = &p.tls.ca_file {
        b = b.ca_file(ca);
    }
    if p.tls.insecure_skip_verify {
        tracing::warn!(
            pipeline = %p.name,
            "TLS certificate verification is OFF (tls_insecure_skip_verify = true): anyone between auditship and the API can read the key; use tls_ca_file instead"
        );
        b = b.danger_accept_invalid_certs(true);
    }
    Ok(b.build()?)
}

#[cfg_attr(not(feature = "s3"), allow(unused_variables))]
fn build_sink(
    cfg: &SinkConfig,
    ctx: SinkContext,
    checkpoint_path: &Path,
) -> Result<Box<dyn Sink>, SinkError> {
    match cfg {
        #[cfg(feature = "s3")]
        SinkConfig::S3(c) => {
            // Staged objects live beside the checkpoint database that names them.
            let staging = checkpoint_path
                .parent()
                .unwrap_or(Path::new("."))
                .join("s3-staging")
                .join(&ctx.pipeline)
                .join(&ctx.sink);
            Ok(Box::new(auditship_sink_s3::S3Sink::open(
                c.clone(),
                ctx,
                staging,
            )?))
        }
        #[cfg(not(feature = "s3"))]
        SinkConfig::S3(_) => Err(SinkError::Config(
            "this auditship was built without S3 support; rebuild it with the `s3` feature".into(),
        )),
        SinkConfig::File(c) => Ok(Box::new(auditship_sink_file::FileSink::open(c.clone(), ctx)?)),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(c) => Ok(Box::new(auditship_sink_kafka::KafkaSink::open(c.clone(), ctx)?)),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => Err(SinkError::Config(
            "this auditship was built without Kafka support; rebuild it with the `kafka` feature".into(),
        )),
    }
}

/// A dead letter on its way to the file; `done` hears when it is durable (sinks wait for that).
struct DlMsg {
    letter: DeadLetter,
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// The dead-letter path as a sink sees it.
struct SinkDeadLetters {
    tx: mpsc::Sender<DlMsg>,
    sink: String,
}

#[async_trait::async_trait]
impl DeadLetters for SinkDeadLetters {
    async fn reject(&self, event: &Event, reason: &str) -> Result<(), SinkError> {
        let (done, heard) = tokio::sync::oneshot::channel();
        let letter = DeadLetter {
            resource_id: event.resource_id.clone(),
            event_id: Some(event.id.clone()),
            sink: Some(self.sink.clone()),
            transform: false,
            reason: reason.to_string(),
            raw: Some(event.raw.clone()),
        };
        let gone = || {
            SinkError::io(
                "dead-letter file",
                std::io::Error::other("the dead-letter writer stopped"),
            )
        };
        self.tx
            .send(DlMsg {
                letter,
                done: Some(done),
            })
            .await
            .map_err(|_| gone())?;
        match heard.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::io(
                "writing the dead-letter file",
                std::io::Error::other(e),
            )),
            Err(_) => Err(gone()),
        }
    }
}

/// Where one sandbox stands, as events pass the batcher.
#[derive(Clone, Debug, Default)]
struct Running {
    cursor_us: Option<i64>,
    /// The cursor time as the server spelled it (inline: no allocation, and the event's buffer,
    /// perhaps a whole list page, is not kept alive).
    cursor_src: Option<CursorText>,
    ties: Vec<Arc<str>>,
    last_id: Option<Arc<str>>,
    shipped: u64,
    /// Whether the open batch holds an event of this sandbox.
    in_batch: bool,
    /// What the open batch changes, as indices into it, resolved when it closes: pushing an
    /// event then reads only its header, not its bytes or its id's count, which are cold by
    /// the time the batcher sees them (a profile had copying the cursor text here at 3-4% of
    /// the process).
    open: OpenBatch,
}

/// A sandbox's changes in the open batch (see [`Running::resolve`]).
#[derive(Clone, Debug, Default)]
struct OpenBatch {
    /// Whether the cursor time moved forward (the ties then start afresh).
    advanced: bool,
    /// The event that moved it last.
    cursor_at: Option<usize>,
    /// Events at the newest cursor time (or without one).
    ties: Vec<usize>,
    /// The sandbox's last event.
    last: Option<usize>,
}

impl Running {
    fn from_checkpoint(c: &Checkpoint) -> Self {
        Running {
            cursor_us: c.cursor_us,
            cursor_src: c.cursor_text.as_deref().map(CursorText::new),
            ties: c.tie_ids.iter().map(|s| Arc::from(s.as_str())).collect(),
            last_id: c.last_event_id.as_deref().map(Arc::from),
            shipped: c.events_shipped,
            in_batch: false,
            open: OpenBatch::default(),
        }
    }

    /// [`Running::advance`] for the event at `index` of the open batch, read when it closes
    /// ([`Running::resolve`]).
    fn advance_at(&mut self, e: &Event, index: usize) {
        let open = &mut self.open;
        match (e.cursor_us, self.cursor_us) {
            (Some(c), p) if p.is_none_or(|p| c > p) => {
                self.cursor_us = Some(c);
                open.advanced = true;
                open.cursor_at = Some(index);
                open.ties.clear();
                open.ties.push(index);
            }
            (Some(c), Some(p)) if c < p => {}
            // Same cursor time, or an event without one (it cannot move the cursor; remember
            // its id at the current one so a resume skips it).
            _ => open.ties.push(index),
        }
        open.last = Some(index);
        self.shipped += 1;
    }

    /// Fold in the open batch's changes; `events` is that batch.
    fn resolve(&mut self, events: &[Event]) {
        let open = &mut self.open;
        if std::mem::take(&mut open.advanced) {
            self.ties.clear();
            self.cursor_src = open.cursor_at.take().and_then(|i| events.get(i)).and_then(|e| {
                let (s, t) = e.cursor_span?;
                CursorText::from_span(&e.raw, s as usize, t as usize)
            });
        }
        self.ties.extend(
            open.ties
                .drain(..)
                .filter_map(|i| events.get(i).map(|e| e.id.clone())),
        );
        if let Some(e) = open.last.take().and_then(|i| events.get(i)) {
            self.last_id = Some(e.id.clone());
        }
    }

    /// Take `e` in at once (when the batch may not keep it, so its index would not resolve).
    fn advance(&mut self, e: &Event) {
        self.advance_at(e, 0);
        self.resolve(std::slice::from_ref(e));
    }

    fn checkpoint(&self, resource_id: &str) -> Checkpoint {
        Checkpoint {
            resource_id: resource_id.to_string(),
            last_event_id: self.last_id.as_deref().map(str::to_string),
            cursor_us: self.cursor_us,
            cursor_text: self.cursor_src.as_ref().map(|t| t.as_str().to_string()),
            tie_ids: self.ties.iter().map(|s| s.to_string()).collect(),
            events_shipped: self.shipped,
            updated_at_us: chrono::Utc::now().timestamp_micros(),
        }
    }
}

enum CkMsg {
    /// A new batch and the positions it brings (sent before any sink sees it).
    Batch {
        number: u64,
        positions: Vec<Checkpoint>,
        events: u64,
        /// Events per (sandbox, hour of cursor time), for the ledger.
        hours: Vec<(String, i64, u64)>,
    },
    /// Sink `sink` has made every batch through `through` durable; `state` describes that point,
    /// and `sealed` are the stretches of its units closed by then (for the manifest).
    Ack {
        sink: usize,
        through: u64,
        state: Vec<StateEntry>,
        sealed: Vec<crate::manifest::Stretch>,
    },
}

/// Run a pipeline until it is stopped (live) or its window is shipped (backfill).
pub async fn run(p: &Pipeline, opts: RunOptions) -> Result<RunReport, PipelineError> {
    // A pipeline loaded only to validate may lack a transform's secret; never run it masked.
    let chains = std::iter::once(&p.transforms).chain(p.routes.values().map(|r| &r.chain));
    for chain in chains {
        if let Some(step) = chain.not_runnable() {
            return Err(PipelineError::Config(format!(
                "{}: {step} has no HMAC key; export {} (or set hmac_key = \"${{VAR}}\") and load the pipeline again",
                p.file.display(),
                crate::transform::HMAC_KEY_ENV
            )));
        }
    }
    let client = client_for(p)?;
    let store = Store::open(&p.checkpoint_path)?;
    let _lock = store.lock(&p.name)?;
    let stream_key = match &opts.mode {
        Mode::Live => "live".to_string(),
        Mode::Backfill(w) => w.stream_key(),
    };
    let loaded = store.load(&p.name, &stream_key).await?;

    // Dead letters first: sinks may send events they can never deliver there.
    let (dl_tx, dl_rx) = mpsc::channel::<DlMsg>(1_024);
    let dead_letters = tokio::spawn(dead_letter_task(
        p.dead_letter_path.clone(),
        p.name.clone(),
        client.key().clone(),
        dl_rx,
        opts.progress.clone(),
    ));

    crate::metrics::register(&p.name, opts.progress.clone());
    // Sinks next: they roll their output back to the last commit before anything new arrives.
    let mut sinks: Vec<(String, Box<dyn Sink>)> = Vec::new();
    for (name, cfg) in &p.sinks {
        let recovered = store.sink_state(&p.name, name).await?;
        let ctx = SinkContext {
            pipeline: p.name.clone(),
            sink: name.clone(),
            recovered,
            registry: store.registry(&p.name, name),
            dead_letters: Arc::new(SinkDeadLetters {
                tx: dl_tx.clone(),
                sink: name.clone(),
            }),
            manifest: p.manifest_enabled,
        };
        let cfg_owned = cfg.clone();
        let checkpoint_path = p.checkpoint_path.clone();
        let built = tokio::task::spawn_blocking(move || build_sink(&cfg_owned, ctx, &checkpoint_path))
            .await
            .map_err(|e| PipelineError::Config(format!("building sink {name}: {e}")))?;
        let mut sink = built.map_err(|source| PipelineError::Sink {
            sink: name.clone(),
            source,
        })?;
        sink.prepare().await.map_err(|source| PipelineError::Sink {
            sink: name.clone(),
            source,
        })?;
        sinks.push((name.clone(), sink));
    }

    let mut sandboxes: Vec<String> = match (&opts.mode, &p.discovery) {
        (Mode::Backfill(w), _) if !w.sandboxes.is_empty() => w.sandboxes.clone(),
        (_, Some(d)) => discover(&client, d).await?,
        _ => p.sandboxes.clone(),
    };
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<PipelineError>();
    let (ck_tx, ck_rx) = mpsc::unbounded_channel::<CkMsg>();
    let (src_tx, src_rx) = mpsc::channel::<SourceMsg>(source::QUEUE_MESSAGES);
    // Sinks stop retrying on this token; sources stop on `sources_stop`.
    let abandon = CancellationToken::new();
    let sources_stop = CancellationToken::new();

    let mut sink_txs = Vec::new();
    let mut sink_tasks = JoinSet::new();
    let sink_names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
    // Manifests: per sink that keeps one, the chain's end (for the checkpointer) and a task that
    // writes committed entries next to the data.
    let mut chains: Vec<Option<crate::manifest::ChainWriter>> = Vec::new();
    let mut publishers = JoinSet::new();
    let exact: Vec<bool> = sinks.iter().map(|(_, sink)| sink.exact_state()).collect();
    let manifest_publishers: Vec<_> = sinks
        .iter()
        .map(|(_, sink)| sink.manifest_publisher().filter(|_| p.manifest_enabled))
        .collect();
    for (name, publisher) in sink_names.iter().zip(manifest_publishers) {
        let Some(publisher) = publisher else {
            chains.push(None);
            continue;
        };
        let head = store.manifest_head(&p.name, name).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        publishers.spawn(crate::manifest::publisher_task(
            store.clone(),
            p.name.clone(),
            name.clone(),
            publisher,
            rx,
            abandon.clone(),
        ));
        chains.push(Some(crate::manifest::ChainWriter {
            head,
            key: p.manifest_key.clone(),
            publish: tx,
        }));
    }
    for (idx, (name, sink)) in sinks.into_iter().enumerate() {
        let sealer = chains
            .get(idx)
            .is_some_and(Option::is_some)
            .then(|| crate::manifest::Sealer::new(store.clone(), &p.name, &name));
        let (tx, rx) = mpsc::channel::<Arc<Batch>>(SINK_QUEUE_BATCHES);
        let route = p.routes.get(&name).cloned().unwrap_or_default();
        let stats = opts.progress.sink(&name);
        // A sink that skips the pipeline's transforms is handed the batch as received.
        sink_txs.push((tx, route.pipeline_transforms || p.transforms.is_empty()));
        sink_tasks.spawn(sink_task(
            SinkWorker {
                idx,
                name,
                sink,
                chain: route.chain.start(),
                dead_letters: dl_tx.clone(),
                stats,
                sealer,
            },
            rx,
            ck_tx.clone(),
            fatal_tx.clone(),
            abandon.clone(),
        ));
    }

    let running: HashMap<Arc<str>, Running, foldhash::fast::RandomState> = loaded
        .iter()
        .map(|(rid, c)| (Arc::from(rid.as_str()), Running::from_checkpoint(c)))
        .collect();
    let initial_shipped: HashMap<String, u64> = loaded
        .iter()
        .map(|(k, c)| (k.clone(), c.events_shipped))
        .collect();
    let uncommitted = Arc::new(tokio::sync::Semaphore::new(MAX_UNCOMMITTED_BATCHES));
    let batcher = Batcher {
        sinks: sink_txs,
        chain: p.transforms.start(),
        dead_letters: dl_tx.clone(),
        fatal: fatal_tx.clone(),
        ck: ck_tx.clone(),
        running,
        number: 0,
        events: Vec::with_capacity(p.batch_max_events.min(65_536)),
        touched: Vec::new(),
        progress: opts.progress.clone(),
        uncommitted: uncommitted.clone(),
        only_ids: opts.only_ids.clone(),
    };
    let batcher = tokio::spawn(batcher.run(src_rx, dl_tx, p.batch_max_events, p.batch_timeout));
    drop(ck_tx);
    let checkpointer = tokio::spawn(checkpointer_task(
        store.clone(),
        p.name.clone(),
        stream_key.clone(),
        sink_names.clone(),
        ck_rx,
        p.commit_interval,
        opts.progress.clone(),
        fatal_tx.clone(),
        uncommitted,
        chains,
        exact,
    ));

    // Tails on the polling fallback share one org-wide list request per interval.
    let org_poller = (matches!(opts.mode, Mode::Live)
        && p.transport != crate::client::Transport::WebSocket
        && p.org_poll.applies(sandboxes.len()))
    .then(|| crate::client::OrgPoller::start(client.clone(), p.poll_interval, p.page_limit, p.dedupe_window));
    // With a shared poll, socket attempts are shared too: one probe every 30 s while they fail.
    let socket_gate = org_poller
        .as_ref()
        .map(|_| crate::client::SocketGate::new(Duration::from_secs(30)));
    let mut sources = JoinSet::new();
    let spawner = Spawner {
        client: &client,
        p,
        mode: &opts.mode,
        loaded: &loaded,
        org_poller: &org_poller,
        socket_gate: &socket_gate,
        tx: &src_tx,
    };
    // Per followed sandbox, its own stop (discovery stops sandboxes that leave the list).
    let mut active: HashMap<String, CancellationToken> = HashMap::new();
    for rid in &sandboxes {
        let stop = sources_stop.child_token();
        spawner.spawn(&mut sources, rid, stop.clone());
        active.insert(rid.clone(), stop);
    }
    let discovering = p.discovery.is_some() && matches!(opts.mode, Mode::Live);
    let (disc_tx, mut disc_rx) = mpsc::channel::<Vec<String>>(1);
    let discovery_task = match (&p.discovery, discovering) {
        (Some(d), true) => Some(tokio::spawn(discovery_loop(
            client.clone(),
            d.clone(),
            disc_tx,
            fatal_tx.clone(),
        ))),
        _ => None,
    };
    opts.progress
        .sandboxes
        .store(sandboxes.len() as u64, Ordering::Relaxed);
    opts.progress.running.store(true, Ordering::Relaxed);
    tracing::info!(pipeline = %p.name, sandboxes = sandboxes.len(), sinks = sink_names.len(), stream = %stream_key, "pipeline started");

    // Wait for a stop request, a fatal error, or every source to end.
    let mut report = RunReport {
        pipeline: p.name.clone(),
        dead_letter_path: p.dead_letter_path.clone(),
        ..Default::default()
    };
    let mut fatal: Option<PipelineError> = None;
    let mut finished_sources = 0usize;
    let mut total_sources = sandboxes.len();
    let mut ever: std::collections::HashSet<String> = sandboxes.iter().cloned().collect();
    loop {
        tokio::select! {
            _ = opts.shutdown.cancelled() => {
                tracing::info!(pipeline = %p.name, "stopping: draining sources and sinks");
                break;
            }
            Some(e) = fatal_rx.recv() => {
                tracing::error!(pipeline = %p.name, error = %e, "pipeline stopping on a fatal error");
                fatal = Some(e);
                break;
            }
            joined = sources.join_next(), if finished_sources < total_sources => {
                finished_sources += 1;
                if let Some(Ok(r)) = joined {
                    if active.remove(&*r.resource_id).is_some() && discovering {
                        opts.progress.sandboxes.store(active.len() as u64, Ordering::Relaxed);
                    }
                    record_source(&mut report, r, &mut fatal);
                }
                if fatal.is_some() || (!discovering && finished_sources == total_sources) {
                    break;
                }
            }
            Some(listed) = disc_rx.recv(), if discovering => {
                let now: std::collections::HashSet<&String> = listed.iter().collect();
                for rid in &listed {
                    // A sandbox is followed once per run: one that left the list and came back
                    // is followed again after a restart (its in-flight events must commit first).
                    if ever.insert(rid.clone()) {
                        tracing::info!(pipeline = %p.name, resource_id = %rid, "discovered a new sandbox; following it");
                        let stop = sources_stop.child_token();
                        spawner.spawn(&mut sources, rid, stop.clone());
                        active.insert(rid.clone(), stop);
                        sandboxes.push(rid.clone());
                        total_sources += 1;
                    }
                }
                let gone: Vec<String> = active.keys().filter(|k| !now.contains(k)).cloned().collect();
                for rid in gone {
                    if let Some(stop) = active.remove(&rid) {
                        tracing::info!(pipeline = %p.name, resource_id = %rid, "sandbox left the sandbox list; stopped following it (its checkpoint stays)");
                        report.stopped.insert(rid, "left the sandbox list".into());
                        stop.cancel();
                    }
                }
                opts.progress.sandboxes.store(active.len() as u64, Ordering::Relaxed);
            }
        }
    }
    if let Some(t) = discovery_task {
        t.abort();
    }
    drop(disc_rx);
    drop(src_tx);

    // Drain: stop sources; the batcher closes its last batch when their channel closes, sinks
    // flush it, the checkpointer commits what every sink acknowledged.
    sources_stop.cancel();
    let ended_by_itself = fatal.is_none() && !opts.shutdown.is_cancelled();
    let drain = async {
        while let Some(joined) = sources.join_next().await {
            if let Ok(r) = joined {
                record_source(&mut report, r, &mut fatal);
            }
        }
        let _ = batcher.await;
        while sink_tasks.join_next().await.is_some() {}
        let _ = checkpointer.await;
        // The checkpointer is done: the publishers write what it committed last, then end.
        while publishers.join_next().await.is_some() {}
        let _ = dead_letters.await;
    };
    let drained = {
        tokio::pin!(drain);
        if ended_by_itself {
            // Every source ended by itself (a backfill shipped its window): wait for the sinks
            // as long as they retry (a broker that is down must not turn into a "complete"
            // backfill); a stop request then cuts the wait to the drain timeout.
            tokio::select! {
                _ = &mut drain => true,
                _ = opts.shutdown.cancelled() => {
                    tokio::time::timeout(opts.drain_timeout, &mut drain).await.is_ok()
                }
            }
        } else {
            tokio::time::timeout(opts.drain_timeout, &mut drain).await.is_ok()
        }
    };
    opts.progress.running.store(false, Ordering::Relaxed);
    if !drained {
        tracing::warn!(pipeline = %p.name, "drain timed out; events not yet committed will be fetched again on the next start");
        abandon.cancel();
    }
    abandon.cancel();
    while let Ok(e) = fatal_rx.try_recv() {
        fatal.get_or_insert(e);
    }
    if let Some(e) = fatal {
        return Err(e);
    }

    if matches!(opts.mode, Mode::Live)
        && !discovering
        && !opts.shutdown.is_cancelled()
        && finished_sources == total_sources
    {
        // A live pipeline whose every sandbox stopped (all deleted, say) has nothing left to do;
        // exiting non-zero tells the supervisor, and the reasons tell the operator.
        let reasons: Vec<String> = report
            .stopped
            .iter()
            .map(|(sb, why)| format!("{sb}: {why}"))
            .collect();
        return Err(PipelineError::Config(format!(
            "pipeline {}: no sandbox left to follow ({}); check the sandbox ids in {}",
            p.name,
            reasons.join("; "),
            p.file.display()
        )));
    }
    let committed = store.load(&p.name, &stream_key).await?;
    for rid in &sandboxes {
        let now = committed.get(rid).map_or(0, |c| c.events_shipped);
        let before = initial_shipped.get(rid).copied().unwrap_or(0);
        report.shipped.insert(rid.clone(), now.saturating_sub(before));
    }
    report.dead_lettered = opts.progress.dead_lettered();
    report.filtered = opts.progress.filtered.load(Ordering::Relaxed);
    report.complete = matches!(opts.mode, Mode::Backfill(_))
        && drained
        && report.stopped.is_empty()
        && finished_sources == total_sources
        && !opts.shutdown.is_cancelled();
    Ok(report)
}

/// What a backfill would ship (`auditship backfill --dry-run`).
#[derive(Debug, Default)]
pub struct DryRun {
    /// Per sandbox: events in the window not yet shipped by this window's (or job's) progress.
    pub per_sandbox: BTreeMap<String, u64>,
    /// Per sink: how many of them it would get after the transforms and its route.
    pub per_sink: BTreeMap<String, u64>,
    /// Per sink: how many a transform would fail on (they would be dead-lettered).
    pub failing: BTreeMap<String, u64>,
    /// Payloads in the window that are not events (they would be dead-lettered).
    pub not_events: u64,
}

/// Count what a backfill of `w` would ship, from where its progress stands, without writing
/// anything: the same list requests as the backfill, every transform and route applied, no sink
/// contacted and no checkpoint written.
pub async fn count_window(p: &Pipeline, w: &Window) -> Result<DryRun, PipelineError> {
    let client = client_for(p)?;
    let loaded = if p.checkpoint_path.exists() {
        Store::open(&p.checkpoint_path)?
            .load(&p.name, &w.stream_key())
            .await?
    } else {
        HashMap::new()
    };
    let sandboxes = match (&p.discovery, w.sandboxes.is_empty()) {
        (_, false) => w.sandboxes.clone(),
        (Some(d), true) => discover(&client, d).await?,
        (None, true) => p.sandboxes.clone(),
    };
    let until = format_time(
        w.until_us
            .unwrap_or_else(|| chrono::Utc::now().timestamp_micros()),
    );
    let (tx, mut rx) = mpsc::channel::<SourceMsg>(source::QUEUE_MESSAGES);
    let mut sources = JoinSet::new();
    for rid in &sandboxes {
        let kind = SourceKind::Window {
            start: start_for(loaded.get(rid), StartAt::Time(w.since_us)),
            until: Some(until.clone()),
            page_limit: p.page_limit,
        };
        sources.spawn(source::run(
            client.clone(),
            Arc::from(rid.as_str()),
            kind,
            tx.clone(),
            CancellationToken::new(),
        ));
    }
    drop(tx);
    let mut out = DryRun::default();
    for rid in &sandboxes {
        out.per_sandbox.insert(rid.clone(), 0);
    }
    let mut pipeline_chain = p.transforms.start();
    let mut routes: Vec<(String, bool, Chain)> = p
        .routes
        .iter()
        .map(|(name, r)| (name.clone(), r.pipeline_transforms, r.chain.start()))
        .collect();
    while let Some(msg) = rx.recv().await {
        let events = match msg {
            SourceMsg::Events(events) => events,
            SourceMsg::DeadLetter(_) => {
                out.not_events += 1;
                continue;
            }
        };
        for e in events {
            out.count(&e, &mut pipeline_chain, &mut routes);
        }
    }
    while let Some(joined) = sources.join_next().await {
        if let Ok(r) = joined {
            // A count that stopped early would understate the window.
            if let SourceEnd::Fatal(e) | SourceEnd::Unfinished(e) = r.end {
                return Err(PipelineError::Source {
                    resource_id: r.resource_id.to_string(),
                    source: e,
                });
            }
        }
    }
    Ok(out)
}

impl DryRun {
    /// Count `e` for its sandbox, and for each sink its transforms and route let through.
    fn count(&mut self, e: &Event, pipeline_chain: &mut Chain, routes: &mut [(String, bool, Chain)]) {
        let out = self;
        *out.per_sandbox.entry(e.resource_id.to_string()).or_default() += 1;
        let first = pipeline_chain.apply(e);
        for (name, after_pipeline, chain) in routes.iter_mut() {
            let input = match (&first, *after_pipeline) {
                (_, false) => e,
                (crate::transform::Outcome::Keep(t), true) => t,
                (crate::transform::Outcome::Drop { .. }, true) => continue,
                (crate::transform::Outcome::Fail(_), true) => {
                    *out.failing.entry(name.clone()).or_default() += 1;
                    continue;
                }
            };
            match chain.apply(input) {
                crate::transform::Outcome::Keep(_) => *out.per_sink.entry(name.clone()).or_default() += 1,
                crate::transform::Outcome::Drop { .. } => {}
                crate::transform::Outcome::Fail(_) => *out.failing.entry(name.clone()).or_default() += 1,
            }
        }
    }
}

/// What starting a source needs.
struct Spawner<'a> {
    client: &'a Client,
    p: &'a Pipeline,
    mode: &'a Mode,
    loaded: &'a HashMap<String, Checkpoint>,
    org_poller: &'a Option<crate::client::OrgPoller>,
    socket_gate: &'a Option<crate::client::SocketGate>,
    tx: &'a mpsc::Sender<SourceMsg>,
}

impl Spawner<'_> {
    fn spawn(&self, sources: &mut JoinSet<source::SourceReport>, rid: &str, stop: CancellationToken) {
        let p = self.p;
        let start = start_for(
            self.loaded.get(rid),
            match self.mode {
                Mode::Live => p.start.clone(),
                Mode::Backfill(w) => StartAt::Time(w.since_us),
            },
        );
        let kind = match self.mode {
            Mode::Live => SourceKind::Live(TailOptions {
                poll_interval: p.poll_interval,
                transport: p.transport,
                start,
                page_limit: p.page_limit,
                dedupe_window: p.dedupe_window,
                socket_retry_max: p.socket_retry_max,
                org_poller: self.org_poller.clone(),
                socket_gate: self.socket_gate.clone(),
                ..TailOptions::default()
            }),
            Mode::Backfill(w) => SourceKind::Window {
                start,
                until: Some(format_time(
                    w.until_us
                        .unwrap_or_else(|| chrono::Utc::now().timestamp_micros()),
                )),
                page_limit: p.page_limit,
            },
        };
        sources.spawn(source::run(
            self.client.clone(),
            Arc::from(rid),
            kind,
            self.tx.clone(),
            stop,
        ));
    }
}

/// The sandboxes discovery follows now.
pub(crate) async fn discover(
    client: &Client,
    d: &crate::config::Discovery,
) -> Result<Vec<String>, PipelineError> {
    Ok(client
        .sandboxes()
        .await?
        .into_iter()
        .map(|s| s.id)
        .filter(|id| d.follows(id))
        .collect())
}

/// Read the sandbox list every `d.interval` and send what discovery follows. A refused key is
/// fatal; other failures are logged and tried at the next interval.
async fn discovery_loop(
    client: Client,
    d: crate::config::Discovery,
    tx: mpsc::Sender<Vec<String>>,
    fatal: mpsc::UnboundedSender<PipelineError>,
) {
    loop {
        tokio::time::sleep(d.interval).await;
        match discover(&client, &d).await {
            Ok(ids) => {
                if tx.send(ids).await.is_err() {
                    return;
                }
            }
            Err(PipelineError::Client(e))
                if !e.is_retryable() && !matches!(e, crate::client::Error::Decode { .. }) =>
            {
                let _ = fatal.send(PipelineError::Client(e));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the sandbox list failed; trying again at the next interval")
            }
        }
    }
}

/// Where a sandbox's source begins: its committed position, else `fresh`.
fn start_for(checkpoint: Option<&Checkpoint>, fresh: StartAt) -> StartAt {
    match checkpoint {
        Some(c) => StartAt::Position(Position {
            cursor_us: c.cursor_us,
            cursor_text: c.cursor_text.clone(),
            ids_at_cursor: c.tie_ids.iter().map(|s| Arc::from(s.as_str())).collect(),
        }),
        None => fresh,
    }
}

fn record_source(report: &mut RunReport, r: source::SourceReport, fatal: &mut Option<PipelineError>) {
    if let Some(t) = r.transport {
        report.transports.insert(r.resource_id.to_string(), t);
    }
    match r.end {
        SourceEnd::Stopped | SourceEnd::Finished => {}
        SourceEnd::Deleted => {
            report
                .stopped
                .insert(r.resource_id.to_string(), "sandbox not found (deleted?)".into());
        }
        SourceEnd::Unfinished(e) => {
            report
                .stopped
                .insert(r.resource_id.to_string(), format!("the listing stopped: {e}"));
        }
        SourceEnd::Fatal(e) => {
            report.stopped.insert(r.resource_id.to_string(), e.to_string());
            if fatal.is_none() {
                *fatal = Some(PipelineError::Source {
                    resource_id: r.resource_id.to_string(),
                    source: e,
                });
            }
        }
    }
}

/// The batcher: numbers batches, tracks each sandbox's position as events pass, and hands every
/// batch to the checkpointer (positions first) and then to every sink.
struct Batcher {
    /// Each sink's queue, and whether it takes the batch after the pipeline's transforms.
    sinks: Vec<(mpsc::Sender<Arc<Batch>>, bool)>,
    /// The pipeline's `[[transforms]]`.
    chain: Chain,
    dead_letters: mpsc::Sender<DlMsg>,
    fatal: mpsc::UnboundedSender<PipelineError>,
    ck: mpsc::UnboundedSender<CkMsg>,
    running: HashMap<Arc<str>, Running, foldhash::fast::RandomState>,
    number: u64,
    events: Vec<Event>,
    /// Sandboxes with an event in the open batch.
    touched: Vec<Arc<str>>,
    progress: Arc<Progress>,
    /// One permit per batch not yet committed: if commits stall (a locked database), the batcher
    /// waits, and the stall reaches the sources, instead of queueing positions without bound.
    uncommitted: Arc<tokio::sync::Semaphore>,
    /// Ship only these ids (see [`RunOptions::only_ids`]).
    only_ids: Option<Arc<std::collections::HashSet<String>>>,
}

impl Batcher {
    fn push(&mut self, e: Event) {
        let r = self.running.entry(e.resource_id.clone()).or_default();
        if !r.in_batch {
            r.in_batch = true;
            self.touched.push(e.resource_id.clone());
        }
        match &self.only_ids {
            // Some events are not kept: read each now.
            Some(only) => {
                r.advance(&e);
                if only.contains(&*e.id) {
                    self.events.push(e);
                }
            }
            None => {
                r.advance_at(&e, self.events.len());
                self.events.push(e);
            }
        }
    }

    /// Close the open batch. `false` when the sinks or the checkpointer are gone (a fatal
    /// error elsewhere): the batcher stops.
    async fn close(&mut self) -> bool {
        if self.events.is_empty() {
            return true;
        }
        match self.uncommitted.acquire().await {
            // The checkpointer hands the permit back when the batch commits.
            Ok(permit) => permit.forget(),
            Err(_closed) => return false,
        }
        self.number += 1;
        let number = self.number;
        let running = &mut self.running;
        let events = &self.events;
        let positions = self
            .touched
            .drain(..)
            .filter_map(|rid| {
                running.get_mut(&rid).map(|r| {
                    r.in_batch = false;
                    r.resolve(events);
                    r.checkpoint(&rid)
                })
            })
            .collect();
        let count = self.events.len() as u64;
        let mut by_hour: HashMap<(&Arc<str>, i64), u64, foldhash::fast::RandomState> = HashMap::default();
        for e in &self.events {
            let hour = crate::checkpoint::hour_of(e.cursor_us.or(e.time_us).unwrap_or(0));
            *by_hour.entry((&e.resource_id, hour)).or_default() += 1;
        }
        let hours: Vec<(String, i64, u64)> = by_hour
            .into_iter()
            .map(|((r, h), n)| (r.to_string(), h, n))
            .collect();
        // The next batch starts at full size: grown by doubling from empty, each batch copied
        // its events about twice (the largest realloc copies in the live profile). A batch
        // closed well short of that (a timeout) gives back the rest while it waits in queues.
        let capacity = self.events.capacity();
        let mut events = std::mem::replace(&mut self.events, Vec::with_capacity(capacity));
        if events.len() < capacity / 2 {
            events.shrink_to_fit();
        }
        let batch = Arc::new(Batch { number, events });
        if self
            .ck
            .send(CkMsg::Batch {
                number,
                positions,
                events: count,
                hours,
            })
            .is_err()
        {
            return false;
        }
        let transformed = match run_chain(&mut self.chain, &batch).await {
            Ok(Applied {
                batch: out,
                failed,
                dropped,
            }) => {
                self.progress.filtered.fetch_add(dropped, Ordering::Relaxed);
                if let Err(e) = dead_letter_failures(&self.dead_letters, None, failed).await {
                    let _ = self.fatal.send(PipelineError::Sink {
                        sink: "dead-letter".into(),
                        source: e,
                    });
                    return false;
                }
                out
            }
            Err(e) => {
                let _ = self.fatal.send(PipelineError::Config(e));
                return false;
            }
        };
        for (sink, after_transforms) in &self.sinks {
            let b = if *after_transforms { &transformed } else { &batch };
            if sink.send(b.clone()).await.is_err() {
                return false;
            }
        }
        self.progress.emitted.fetch_add(count, Ordering::Relaxed);
        true
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<SourceMsg>,
        dead_letters: mpsc::Sender<DlMsg>,
        max_events: usize,
        timeout: Duration,
    ) {
        // One timer, re-armed when a batch opens (not a timeout per message).
        let batch_timer = tokio::time::sleep(timeout);
        tokio::pin!(batch_timer);
        loop {
            let msg = if self.events.is_empty() {
                rx.recv().await
            } else {
                tokio::select! {
                    m = rx.recv() => m,
                    _ = &mut batch_timer => {
                        if !self.close().await {
                            return;
                        }
                        continue;
                    }
                }
            };
            match msg {
                Some(SourceMsg::Events(events)) => {
                    for e in events {
                        if self.events.is_empty() {
                            batch_timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                        }
                        self.push(e);
                        if self.events.len() >= max_events && !self.close().await {
                            return;
                        }
                    }
                }
                Some(SourceMsg::DeadLetter(d)) => {
                    // Bounded: a flood of garbage slows the sources rather than memory growing.
                    let _ = dead_letters
                        .send(DlMsg {
                            letter: d,
                            done: None,
                        })
                        .await;
                }
                None => {
                    self.close().await;
                    return;
                }
            }
        }
    }
}

/// Most batches in flight between the batcher and a commit.
const MAX_UNCOMMITTED_BATCHES: usize = 4096;

/// Most batches one flush covers: bounds memory held for a retry.
const MAX_UNFLUSHED_BATCHES: usize = 64;

/// Most batches one flush covers when the sink has transforms: with 33 (a full queue), the
/// live benchmark's OCSF sink peaked at 554–682 MiB; the transforms' CPU, not the fsync,
/// bounds such a sink, so sharing an fsync among more batches gains it nothing.
const TRANSFORMING_MAX_BATCHES: usize = 4;

/// Batches queued for a sink while it writes and flushes. Group commit gathers only what is
/// queued, so this is how far one fsync is shared: with 4, the live benchmark's file sink
/// flushed about 8,000 events per fsync round and was the bottleneck (330k events/s steady);
/// with 32, rounds grow with the load (20,000–45,000 events) and the same run went 25% faster,
/// for about 90 MB more at its peak (2,000-event batches of 560-byte events).
const SINK_QUEUE_BATCHES: usize = 32;

/// Write batches to one sink and acknowledge them once durable.
///
/// Group commit: the task takes every batch already queued (up to a bound), writes them, and
/// flushes once, so a busy pipeline pays one fsync for many batches and a quiet one flushes each
/// batch at once. A sink may keep batches pending after a flush (the S3 sink gathers objects):
/// they are held here, acknowledged when the sink reports them durable, and the sink is flushed
/// again at its deadline even if nothing arrives. On a retryable failure the sink is reset to
/// its last durable state and every batch not yet durable is written again after a backoff,
/// forever, until the pipeline is abandoned; a failure that waiting cannot fix stops the
/// pipeline. When the batches end, the sink is closed, which makes everything durable.
async fn sink_task(
    worker: SinkWorker,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    ck: mpsc::UnboundedSender<CkMsg>,
    fatal: mpsc::UnboundedSender<PipelineError>,
    abandon: CancellationToken,
) {
    let SinkWorker {
        idx,
        name,
        mut sink,
        mut chain,
        dead_letters,
        stats,
        mut sealer,
    } = worker;
    // Written to the sink but not yet durable there.
    let mut held: Vec<Arc<Batch>> = Vec::new();
    let mut acked: u64 = 0;
    loop {
        let deadline = sink.flush_deadline();
        let next = tokio::select! {
            // Batches first: a deadline that is due (a file sink's fsync in flight) waits
            // until nothing else is to be written, so the next round overlaps that fsync.
            biased;
            _ = abandon.cancelled() => return,
            b = rx.recv() => Some(b),
            _ = sleep_until(deadline) => None,
        };
        let mut fresh = Vec::new();
        let closing = match next {
            Some(Some(b)) => {
                fresh.push(b);
                // A sink that transforms holds each batch twice (as received and transformed)
                // and is bound by the transforms' CPU, not by fsyncs: it takes a few at a time.
                let most = if chain.is_empty() {
                    MAX_UNFLUSHED_BATCHES
                } else {
                    TRANSFORMING_MAX_BATCHES
                };
                while fresh.len() < most {
                    match rx.try_recv() {
                        Ok(b) => fresh.push(b),
                        Err(_) => break,
                    }
                }
                false
            }
            Some(None) => true,
            None => false,
        };
        // The sink's route and transforms run once per batch; a retry rewrites their output.
        for b in fresh.iter_mut() {
            let failed = match run_chain(&mut chain, b).await {
                Ok(applied) => {
                    stats.filtered.add(applied.dropped);
                    *b = applied.batch;
                    applied.failed
                }
                Err(e) => {
                    let _ = fatal.send(PipelineError::Config(e));
                    return;
                }
            };
            if let Err(source) = dead_letter_failures(&dead_letters, Some(&name), failed).await {
                let _ = fatal.send(PipelineError::Sink {
                    sink: name.clone(),
                    source,
                });
                return;
            }
        }
        let result = write_durably(&name, sink.as_mut(), &held, &fresh, closing, &abandon, &stats).await;
        held.extend(fresh);
        match result {
            Ok(state) => {
                let sealed = sink.take_sealed();
                let sealed = match sealer.as_mut() {
                    Some(sealer) if !sealed.is_empty() => sealer.stretches(sealed).await,
                    _ => Vec::new(),
                };
                let last = held.last().map(|b| b.number);
                let through = if closing {
                    last
                } else {
                    sink.durable_through().or(last)
                };
                if let Some(t) = through {
                    let durable: usize = held
                        .iter()
                        .filter(|b| b.number <= t)
                        .map(|b| b.events.len())
                        .sum();
                    stats.shipped.add(durable as u64);
                    held.retain(|b| b.number > t);
                    acked = acked.max(t);
                }
                if (through.is_some() || !state.is_empty() || !sealed.is_empty())
                    && ck
                        .send(CkMsg::Ack {
                            sink: idx,
                            through: acked,
                            state,
                            sealed,
                        })
                        .is_err()
                {
                    return;
                }
            }
            Err(Some(source)) => {
                let _ = fatal.send(PipelineError::Sink {
                    sink: name.clone(),
                    source,
                });
                return;
            }
            Err(None) => return,
        }
        if closing {
            return;
        }
    }
}

/// One sink and what it needs besides the pipeline's channels.
struct SinkWorker {
    idx: usize,
    name: String,
    sink: Box<dyn Sink>,
    /// The sink's route (`when`) and `transforms`.
    chain: Chain,
    dead_letters: mpsc::Sender<DlMsg>,
    stats: Arc<crate::metrics::SinkStats>,
    /// Reads the stretches the sink seals, when it keeps a manifest.
    sealer: Option<crate::manifest::Sealer>,
}

/// Run `chain` over `batch` on a blocking thread (transforms are CPU work, and a batch of
/// thousands of events would hold an async worker for milliseconds). An empty chain passes the
/// batch through untouched.
async fn run_chain(chain: &mut Chain, batch: &Arc<Batch>) -> Result<Applied, String> {
    if chain.is_empty() {
        return Ok(chain.apply_batch(batch));
    }
    let mut owned = std::mem::take(chain);
    let b = batch.clone();
    let (owned, out) = tokio::task::spawn_blocking(move || {
        let out = owned.apply_batch(&b);
        (owned, out)
    })
    .await
    .map_err(|e| format!("a transform panicked: {e}"))?;
    *chain = owned;
    Ok(out)
}

/// Write events a transform failed on to the dead-letter file, with the reasons, and return
/// once they are durable: only then may their batch be acknowledged.
async fn dead_letter_failures(
    tx: &mpsc::Sender<DlMsg>,
    sink: Option<&str>,
    failed: Vec<(Event, String)>,
) -> Result<(), SinkError> {
    if failed.is_empty() {
        return Ok(());
    }
    let gone = || {
        SinkError::io(
            "dead-letter file",
            std::io::Error::other("the dead-letter writer stopped"),
        )
    };
    let mut waits = Vec::with_capacity(failed.len());
    for (event, reason) in failed {
        let (done, heard) = tokio::sync::oneshot::channel();
        let letter = DeadLetter {
            resource_id: event.resource_id.clone(),
            event_id: Some(event.id.clone()),
            sink: sink.map(str::to_string),
            transform: true,
            reason,
            raw: Some(event.raw.clone()),
        };
        tx.send(DlMsg {
            letter,
            done: Some(done),
        })
        .await
        .map_err(|_| gone())?;
        waits.push(heard);
    }
    for heard in waits {
        match heard.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(SinkError::io(
                    "writing the dead-letter file",
                    std::io::Error::other(e),
                ))
            }
            Err(_) => return Err(gone()),
        }
    }
    Ok(())
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Write `fresh` and flush (or close, when `closing`). After a retryable failure the sink is
/// reset, and `held` (written before, not yet durable) is written again with `fresh`.
/// `Err(None)`: abandoned while retrying.
async fn write_durably(
    name: &str,
    sink: &mut dyn Sink,
    held: &[Arc<Batch>],
    fresh: &[Arc<Batch>],
    closing: bool,
    abandon: &CancellationToken,
    stats: &crate::metrics::SinkStats,
) -> Result<Vec<StateEntry>, Option<SinkError>> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut failures: u32 = 0;
    let mut last_warn: Option<Instant> = None;
    loop {
        let again = if failures > 0 { held } else { &[] };
        let attempt = async {
            for b in again.iter().chain(fresh) {
                sink.write(b.clone()).await?;
            }
            if closing {
                sink.close().await
            } else {
                sink.flush().await
            }
        };
        match attempt.await {
            Ok(state) => {
                if failures > 0 {
                    stats.failing.store(false, Ordering::Relaxed);
                    tracing::info!(sink = name, failures, "sink recovered; writes are durable again");
                }
                return Ok(state);
            }
            Err(e) if e.is_retryable() => {
                failures += 1;
                stats.retries.inc();
                stats.failing.store(true, Ordering::Relaxed);
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::error!(sink = name, failures, error = %e, "sink write failed; checkpoints wait, retrying (data is kept)");
                    last_warn = Some(Instant::now());
                }
                if let Err(reset) = sink.reset().await {
                    tracing::error!(sink = name, error = %reset, "sink reset failed; retrying");
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = abandon.cancelled() => return Err(None),
                }
            }
            Err(e) => return Err(Some(e)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn checkpointer_task(
    store: Store,
    pipeline: String,
    stream: String,
    sink_names: Vec<String>,
    mut rx: mpsc::UnboundedReceiver<CkMsg>,
    interval: Duration,
    progress: Arc<Progress>,
    fatal: mpsc::UnboundedSender<PipelineError>,
    uncommitted: Arc<tokio::sync::Semaphore>,
    mut chains: Vec<Option<crate::manifest::ChainWriter>>,
    exact: Vec<bool>,
) {
    let sink_count = sink_names.len();
    // The batch the last commit passed.
    let mut committed_through: u64 = 0;
    // Per batch not yet committed: number, positions, events, and events per (sandbox, hour).
    type Pending = (u64, Vec<Checkpoint>, u64, Vec<(String, i64, u64)>);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut acked: Vec<u64> = vec![0; sink_count];
    let mut states: Vec<VecDeque<SinkFacts>> = vec![VecDeque::new(); sink_count];
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    // A steady heartbeat for operators: one line a minute with what was committed.
    let mut status_at = Instant::now() + STATUS_EVERY;
    let mut since_status: u64 = 0;
    loop {
        // Commit on the tick (not per message): one transaction per interval, whatever the rate.
        let (due, closed) = tokio::select! {
            m = rx.recv() => match m {
                Some(CkMsg::Batch { number, positions, events, hours }) => {
                    pending.push_back((number, positions, events, hours));
                    (false, false)
                }
                Some(CkMsg::Ack { sink, through, state, sealed }) => {
                    if let Some(a) = acked.get_mut(sink) {
                        *a = (*a).max(through);
                    }
                    // Entries take their place in the chain as they arrive: commits keep that
                    // order, and a failed commit is retried with the same entries.
                    let mut rows = Vec::new();
                    if let (Some(Some(chain)), Some(name)) = (chains.get_mut(sink), sink_names.get(sink)) {
                        for stretch in sealed {
                            let entry = stretch.into_entry(&mut chain.head, &pipeline, name, chain.key.as_ref());
                            rows.push(crate::checkpoint::ManifestRow::of(&entry));
                        }
                    }
                    if let Some(q) = states.get_mut(sink) {
                        q.push_back((through, state, rows));
                    }
                    (false, false)
                }
                None => (true, true),
            },
            _ = tick.tick() => (true, false),
        };
        let watermark = commit_point(&acked, &states, &exact, committed_through);
        let ready = pending.front().is_some_and(|(n, _, _, _)| *n <= watermark)
            || states
                .iter()
                .any(|q| q.front().is_some_and(|(n, _, _)| *n <= watermark));
        if due && ready {
            let mut positions: HashMap<String, Checkpoint> = HashMap::new();
            let mut events = 0;
            let mut taken = 0;
            let mut hour_counts: HashMap<(String, i64), u64> = HashMap::new();
            for (n, ps, ev, hs) in pending.iter() {
                if *n > watermark {
                    break;
                }
                for p in ps {
                    positions.insert(p.resource_id.clone(), p.clone());
                }
                for (rid, hour, c) in hs {
                    *hour_counts.entry((rid.clone(), *hour)).or_default() += c;
                }
                events += ev;
                taken += 1;
            }
            let mut sink_state: Vec<(String, StateEntry)> = Vec::new();
            let mut manifest: Vec<(String, crate::checkpoint::ManifestRow)> = Vec::new();
            let mut state_taken = vec![0; sink_count];
            for (i, q) in states.iter().enumerate() {
                let mut merged: HashMap<&str, i64> = HashMap::new();
                for (n, entries, rows) in q.iter() {
                    if *n > watermark {
                        break;
                    }
                    for e in entries {
                        merged.insert(&e.key, e.value);
                    }
                    manifest.extend(rows.iter().map(|r| (sink_names[i].clone(), r.clone())));
                    state_taken[i] += 1;
                }
                for (k, v) in merged {
                    sink_state.push((
                        sink_names[i].clone(),
                        StateEntry {
                            key: k.to_string(),
                            value: v,
                        },
                    ));
                }
            }
            let newest = positions.values().filter_map(|c| c.cursor_us).max();
            let published: Vec<(String, auditship_sink::ManifestLine)> = manifest
                .iter()
                .map(|(sink, r)| {
                    let line = auditship_sink::ManifestLine {
                        seq: r.seq,
                        unit: r.unit.clone(),
                        line: r.line.clone(),
                    };
                    (sink.clone(), line)
                })
                .collect();
            let commit = Commit {
                positions: positions.into_values().collect(),
                sink_state,
                hours: hour_counts.into_iter().map(|((r, h), c)| (r, h, c)).collect(),
                manifest,
            };
            match store.commit(&pipeline, &stream, commit).await {
                Ok(()) => {
                    failures = 0;
                    committed_through = committed_through.max(watermark);
                    for (i, chain) in chains.iter().enumerate() {
                        let Some(chain) = chain else { continue };
                        let lines: Vec<_> = published
                            .iter()
                            .filter(|(s, _)| *s == sink_names[i])
                            .map(|(_, l)| l.clone())
                            .collect();
                        if !lines.is_empty() {
                            let _ = chain.publish.send(lines);
                        }
                    }
                    pending.drain(..taken);
                    uncommitted.add_permits(taken);
                    for (i, q) in states.iter_mut().enumerate() {
                        q.drain(..state_taken[i]);
                    }
                    progress.committed.fetch_add(events, Ordering::Relaxed);
                    progress
                        .last_commit_us
                        .store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
                    if let Some(newest) = newest {
                        progress.newest_committed_us.fetch_max(newest, Ordering::Relaxed);
                    }
                    since_status += events;
                }
                Err(e) if e.is_retryable() && !closed => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(40) {
                        tracing::error!(pipeline = %pipeline, error = %e, "checkpoint commit failed; will retry");
                    }
                }
                Err(e) => {
                    let _ = fatal.send(PipelineError::Store(e));
                    return;
                }
            }
        }
        if Instant::now() >= status_at {
            status_at = Instant::now() + STATUS_EVERY;
            tracing::info!(
                pipeline = %pipeline,
                stream = %stream,
                events_committed = since_status,
                dead_lettered = progress.dead_lettered(),
                uncommitted_batches = pending.len(),
                "status: events shipped and checkpointed in the last minute"
            );
            since_status = 0;
        }
        if closed {
            return;
        }
    }
}

/// Per sink, what it reported with an acknowledgement: the batch acknowledged, state entries and
/// manifest entries.
type SinkFacts = (u64, Vec<StateEntry>, Vec<crate::checkpoint::ManifestRow>);

/// The batch a commit may pass: the lowest acknowledgement over all sinks, lowered until it is a
/// batch that every sink with exact state ([`Sink::exact_state`]) acknowledged exactly, so the
/// state committed (file lengths) holds the batches the positions pass and no others. A sink
/// acknowledging in larger steps than another (a group commit over many batches) would otherwise
/// have its older state committed with newer positions, and a restart would cut events the
/// checkpoint counts as shipped. `committed` is the batch the last commit passed, an exact point
/// of every sink.
fn commit_point(acked: &[u64], states: &[VecDeque<SinkFacts>], exact: &[bool], committed: u64) -> u64 {
    let mut point = acked.iter().copied().min().unwrap_or(0);
    loop {
        let mut lowered = point;
        for (q, exact) in states.iter().zip(exact) {
            if !exact {
                continue;
            }
            let at = q
                .iter()
                .map(|(n, _, _)| *n)
                .filter(|n| *n <= lowered)
                .max()
                .unwrap_or(committed);
            lowered = lowered.min(at);
        }
        if lowered == point {
            return point;
        }
        point = lowered;
    }
}

/// How often the checkpointer logs its status line.
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Append dead letters to their NDJSON file: everything queued at once is written with one
/// fsync, and a sink waiting on a letter hears only after that fsync.
async fn dead_letter_task(
    path: PathBuf,
    pipeline: String,
    key: ApiKey,
    mut rx: mpsc::Receiver<DlMsg>,
    progress: Arc<Progress>,
) {
    let mut queued: Vec<DlMsg> = Vec::new();
    while rx.recv_many(&mut queued, 1_024).await > 0 {
        let now = format_time(chrono::Utc::now().timestamp_micros());
        let mut text = String::new();
        for DlMsg { letter: d, .. } in &queued {
            let raw = d.raw.as_ref().map(|r| key.redact(&String::from_utf8_lossy(r)));
            let mut line = serde_json::json!({
                "time": now,
                "pipeline": pipeline,
                "resource_id": &*d.resource_id,
                "reason": key.redact(&d.reason),
                "raw": raw,
            });
            if let Some(map) = line.as_object_mut() {
                if let Some(id) = &d.event_id {
                    map.insert("event_id".into(), serde_json::Value::from(&**id));
                }
                if let Some(sink) = &d.sink {
                    map.insert("sink".into(), serde_json::Value::from(sink.as_str()));
                }
                if d.transform {
                    map.insert("transform_failed".into(), serde_json::Value::Bool(true));
                }
            }
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(dir)?;
            }
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&p)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if written.is_ok() {
            for DlMsg { letter: d, .. } in &queued {
                let kind = match (d.transform, &d.sink) {
                    (true, _) => &progress.dead_transform,
                    (false, Some(_)) => &progress.dead_refused,
                    (false, None) => &progress.dead_not_events,
                };
                kind.fetch_add(1, Ordering::Relaxed);
            }
        }
        for DlMsg { letter: d, done } in queued.drain(..) {
            match (&written, &d.sink) {
                (Ok(()), _) if d.transform => {
                    tracing::warn!(resource_id = %d.resource_id, event_id = d.event_id.as_deref().unwrap_or(""), sink = d.sink.as_deref().unwrap_or("(all)"), reason = %key.redact(&d.reason), file = %path.display(), "a transform failed on this event; dead-lettered")
                }
                (Ok(()), None) => {
                    tracing::warn!(resource_id = %d.resource_id, reason = %key.redact(&d.reason), file = %path.display(), "payload is not an event; dead-lettered")
                }
                (Ok(()), Some(sink)) => {
                    tracing::warn!(resource_id = %d.resource_id, event_id = d.event_id.as_deref().unwrap_or(""), sink = %sink, reason = %key.redact(&d.reason), file = %path.display(), "a sink cannot deliver this event; dead-lettered")
                }
                (Err(e), _) => {
                    tracing::error!(resource_id = %d.resource_id, error = %e, file = %path.display(), "could not write a dead letter")
                }
            }
            if let Some(done) = done {
                let _ = done.send(
                    written
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| format!("{}: {e}", path.display())),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acks(points: &[u64]) -> VecDeque<SinkFacts> {
        points.iter().map(|&n| (n, Vec::new(), Vec::new())).collect()
    }

    #[test]
    fn a_commit_passes_only_batches_a_file_sink_acknowledged_exactly() {
        // The file sink flushed batches 1–5, then 6–9 in one go; Kafka got to 7 and stopped.
        let states = [acks(&[5, 9]), VecDeque::new()];
        assert_eq!(commit_point(&[9, 7], &states, &[true, false], 0), 5);
        // Had the file sink acknowledged 7, that is the point.
        let states = [acks(&[5, 7, 9]), VecDeque::new()];
        assert_eq!(commit_point(&[9, 7], &states, &[true, false], 0), 7);
        // Without exact state (S3's pending deletions), the lowest acknowledgement is the point.
        let states = [acks(&[5, 9]), VecDeque::new()];
        assert_eq!(commit_point(&[9, 7], &states, &[false, false], 0), 7);
        // Nothing new acknowledged at a common point: the last commit's.
        let states = [acks(&[8]), acks(&[6])];
        assert_eq!(commit_point(&[8, 6], &states, &[true, true], 4), 4);
        // Two file sinks meet at 8.
        let states = [acks(&[4, 8]), acks(&[6, 8])];
        assert_eq!(commit_point(&[8, 8], &states, &[true, true], 0), 8);
    }

    fn event(rid: &Arc<str>, id: usize, second: Option<u32>, pad: usize) -> Event {
        let time = second.map(|s| format!("2026-11-26T10:00:{s:02}.5Z"));
        let mut raw = format!(r#"{{"id":"e{id}""#);
        let mut cursor_span = None;
        if let Some(t) = &time {
            raw += r#","inserted_at":""#;
            cursor_span = Some((raw.len() as u32, (raw.len() + t.len()) as u32));
            raw += t;
            raw += "\"";
        }
        // Short events make the cursor text's fast copy fall back; long ones take it.
        raw += &format!(r#","pad":"{}"}}"#, "x".repeat(pad));
        Event {
            raw: bytes::Bytes::from(raw),
            id: Arc::from(format!("e{id}")),
            resource_id: rid.clone(),
            cursor_us: second.map(|s| 1_000_000 * i64::from(s)),
            cursor_span,
            time_us: None,
            seq: id as u64,
        }
    }

    #[test]
    fn positions_resolved_when_a_batch_closes_equal_those_read_per_event() {
        let rid: Arc<str> = Arc::from("sb-1");
        // Forward, ties, an older event, events without a time, a batch with no advance.
        let seconds = [
            Some(1),
            Some(2),
            Some(2),
            None,
            Some(1),
            Some(3),
            Some(3),
            Some(3),
            None,
            Some(2),
            Some(2),
            Some(4),
            None,
            Some(5),
            Some(5),
        ];
        for cuts in [
            vec![15],
            vec![3, 6, 10, 15],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        ] {
            let mut eager = Running::default();
            let mut lazy = Running::default();
            let mut from = 0;
            for (k, cut) in cuts.iter().enumerate() {
                let batch: Vec<Event> = (from..*cut)
                    .map(|i| event(&rid, i, seconds[i], if k % 2 == 0 { 0 } else { 64 }))
                    .collect();
                for (i, e) in batch.iter().enumerate() {
                    eager.advance(e);
                    lazy.advance_at(e, i);
                }
                lazy.resolve(&batch);
                let (a, b) = (eager.checkpoint("sb-1"), lazy.checkpoint("sb-1"));
                assert_eq!(
                    (
                        &a.last_event_id,
                        a.cursor_us,
                        &a.cursor_text,
                        &a.tie_ids,
                        a.events_shipped
                    ),
                    (
                        &b.last_event_id,
                        b.cursor_us,
                        &b.cursor_text,
                        &b.tie_ids,
                        b.events_shipped
                    ),
                    "cuts {cuts:?}, batch {k}"
                );
                from = *cut;
            }
            let end = eager.checkpoint("sb-1");
            assert_eq!(end.cursor_text.as_deref(), Some("2026-11-26T10:00:05.5Z"));
            assert_eq!(end.tie_ids, ["e13", "e14"]);
            assert_eq!(end.last_event_id.as_deref(), Some("e14"));
        }
    }
}

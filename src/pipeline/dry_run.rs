//! `auditship backfill --dry-run`: what a backfill would ship, counted without writing.

use std::collections::{BTreeMap, HashMap};

use auditship_sink::Event;
use tokio::sync::mpsc;

use crate::config::PipelineConfig;
use crate::source::{self, SourceEnd, SourceMsg};
use crate::store::Store;
use crate::transform::{route, Outcome, Transformer};

use super::discovery::sandboxes_to_follow;
use super::sources::Sources;
use super::{client_for, Mode, PipelineError, Window};

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
pub async fn count_window(p: &PipelineConfig, w: &Window) -> Result<DryRun, PipelineError> {
    let client = client_for(p)?;
    let loaded = if p.checkpoint_path.exists() {
        Store::open(&p.checkpoint_path)?
            .load(&p.name, &w.stream_key())
            .await?
    } else {
        HashMap::new()
    };
    let sandboxes = sandboxes_to_follow(&client, p, &w.sandboxes).await?;
    let (tx, mut rx) = mpsc::channel::<SourceMsg>(source::QUEUE_MESSAGES);
    let mode = Mode::Backfill(w.clone());
    let mut sources = Sources::start(&client, p, &mode, &loaded, tx, sandboxes);
    sources.close();
    let mut out = DryRun::default();
    for rid in sources.followed() {
        out.per_sandbox.insert(rid.clone(), 0);
    }
    let mut pipeline_transformer = p.transforms.start();
    let mut routes: Vec<(String, bool, Transformer)> = p
        .routes
        .iter()
        .map(|(name, r)| (name.clone(), r.pipeline_transforms, r.transforms.start()))
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
            out.count(&e, &mut pipeline_transformer, &mut routes);
        }
    }
    for r in sources.join_all().await {
        // A count that stopped early would understate the window.
        if let SourceEnd::Fatal(e) | SourceEnd::Unfinished(e) = r.end {
            return Err(PipelineError::Source {
                resource_id: r.resource_id.to_string(),
                source: e,
            });
        }
    }
    Ok(out)
}

impl DryRun {
    /// Count `e` for its sandbox, and for each sink its transforms and route let through.
    pub(super) fn count(
        &mut self,
        e: &Event,
        pipeline_transformer: &mut Transformer,
        routes: &mut [(String, bool, Transformer)],
    ) {
        let out = self;
        *out.per_sandbox.entry(e.resource_id.to_string()).or_default() += 1;
        let first = pipeline_transformer.apply(e);
        for (name, takes_pipeline, transformer) in routes.iter_mut() {
            match route::for_sink(e, takes_pipeline.then_some(&first), transformer).1 {
                Outcome::Keep(_) => *out.per_sink.entry(name.clone()).or_default() += 1,
                Outcome::Drop { .. } => {}
                Outcome::Fail(_) => *out.failing.entry(name.clone()).or_default() += 1,
            }
        }
    }
}

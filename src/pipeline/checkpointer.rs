//! The checkpointer: commits, every interval, the positions of the batches every sink has made
//! durable, with the sinks' state and manifest entries, in one transaction.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use auditship_sink::{ManifestLine, ManifestPublisher, StateEntry};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::manifest::{ChainWriter, DigestCutter, DigestEntry, Publish, SignedDigest, Stretch};
use crate::store::{Commit, ManifestRow, SavedPosition, Store};

use super::{PipelineError, Progress};

/// What the checkpointer hears: from the batcher, every new batch (before any sink sees it);
/// from each sink task, how far it has made batches durable.
pub(super) enum CkMsg {
    /// A new batch and the positions it brings.
    Batch(NewBatch),
    /// A sink's acknowledgement.
    Ack(SinkAck),
}

/// A new batch and the positions it brings.
pub(super) struct NewBatch {
    /// The batch's number (they count up from 1 in a run).
    pub(super) number: u64,
    /// Where each sandbox with an event in the batch stands after it.
    pub(super) positions: Vec<SavedPosition>,
    /// Events in the batch.
    pub(super) events: u64,
    /// Events per (sandbox, hour of cursor time), for the ledger.
    pub(super) hours: Vec<(String, i64, u64)>,
}

/// Sink `sink` has made every batch through `through` durable; `state` describes that point,
/// and `sealed` are the stretches of its units closed by then (for the manifest).
pub(super) struct SinkAck {
    /// The sink's index in the pipeline's sink list.
    pub(super) sink: usize,
    /// The highest batch durable in the sink.
    pub(super) through: u64,
    /// The sink's state entries (file lengths) as of `through`.
    pub(super) state: Vec<StateEntry>,
    /// Stretches of archive units the sink sealed by then.
    pub(super) sealed: Vec<Stretch>,
}

/// Per sink, an acknowledgement waiting for its commit: the batch acknowledged, the state
/// entries and the manifest entries (already placed in the sink's chain).
struct AckedState {
    through: u64,
    state: Vec<StateEntry>,
    rows: Vec<ManifestRow>,
    /// The same entries as the sink's digest will list them.
    digested: Vec<DigestEntry>,
}

/// What the checkpointer needs of the pipeline.
pub(super) struct Checkpointer {
    /// The checkpoint store.
    pub(super) store: Store,
    /// The pipeline's name (the checkpoints' key).
    pub(super) pipeline: String,
    /// The stream: `live`, or a backfill window's or job's.
    pub(super) stream: String,
    /// The sinks' names, by index.
    pub(super) sink_names: Vec<String>,
    /// How often to commit.
    pub(super) interval: Duration,
    /// Counters to move on each commit.
    pub(super) progress: Arc<Progress>,
    /// Where a commit failure that waiting cannot fix goes.
    pub(super) fatal: mpsc::UnboundedSender<PipelineError>,
    /// One permit per batch not yet committed, handed back on commit (see the batcher).
    pub(super) uncommitted: Arc<tokio::sync::Semaphore>,
    /// Per sink, its manifest chain's end, when it keeps one.
    pub(super) chains: Vec<Option<ChainWriter>>,
    /// Per sink, whether its state is exact ([`auditship_sink::Sink::exact_state`]).
    pub(super) exact: Vec<bool>,
}

/// The checkpointer's bookkeeping between commits.
struct Ledger {
    /// The batch the last commit passed.
    committed_through: u64,
    /// Batches not yet committed, in order.
    pending: VecDeque<NewBatch>,
    /// Per sink, the highest batch acknowledged.
    acked: Vec<u64>,
    /// Per sink, acknowledgements not yet committed, in order.
    states: Vec<VecDeque<AckedState>>,
}

/// What one commit takes: the positions and counts of the batches it passes, and how many
/// entries of each queue.
struct Taken {
    commit: Commit,
    /// Manifest lines to publish once the commit holds, per sink index.
    published: Vec<(usize, ManifestLine)>,
    /// The same entries for the sinks' digests, per sink index.
    digested: Vec<(usize, DigestEntry)>,
    events: u64,
    newest_us: Option<i64>,
    batches: usize,
    per_sink: Vec<usize>,
}

impl Checkpointer {
    /// Take messages until every sender is gone, committing every interval; the last commit
    /// happens when the channel closes.
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<CkMsg>) {
        let sinks = self.sink_names.len();
        let mut ledger = Ledger {
            committed_through: 0,
            pending: VecDeque::new(),
            acked: vec![0; sinks],
            states: (0..sinks).map(|_| VecDeque::new()).collect(),
        };
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        // A steady heartbeat for operators: one line a minute with what was committed.
        let mut status_at = Instant::now() + STATUS_EVERY;
        let mut since_status: u64 = 0;
        loop {
            // Commit on the tick (not per message): one transaction per interval, whatever the rate.
            let (due, closed) = tokio::select! {
                m = rx.recv() => match m {
                    Some(CkMsg::Batch(batch)) => {
                        ledger.pending.push_back(batch);
                        (false, false)
                    }
                    Some(CkMsg::Ack(ack)) => {
                        self.take_ack(&mut ledger, ack);
                        (false, false)
                    }
                    None => (true, true),
                },
                _ = tick.tick() => (true, false),
            };
            let watermark = commit_point(
                &ledger.acked,
                &ledger.states,
                &self.exact,
                ledger.committed_through,
            );
            if due {
                // Digests first: a period's digest lists what earlier commits made durable.
                if let Err(e) = self.cut_digests(false).await {
                    if !e.is_retryable() || closed {
                        let _ = self.fatal.send(PipelineError::Store(e));
                        return;
                    }
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(40) {
                        tracing::error!(pipeline = %self.pipeline, error = %e, "storing a signed digest failed; will retry");
                    }
                }
                if let Some(taken) = ledger.take(watermark, &self.sink_names) {
                    match self
                        .store
                        .commit(&self.pipeline, &self.stream, taken.commit)
                        .await
                    {
                        Ok(()) => {
                            failures = 0;
                            ledger.committed_through = ledger.committed_through.max(watermark);
                            self.publish(taken.published);
                            self.digested(taken.digested);
                            ledger.pending.drain(..taken.batches);
                            self.uncommitted.add_permits(taken.batches);
                            for (q, n) in ledger.states.iter_mut().zip(&taken.per_sink) {
                                q.drain(..*n);
                            }
                            let progress = &self.progress;
                            progress.committed.fetch_add(taken.events, Ordering::Relaxed);
                            progress
                                .last_commit_us
                                .store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
                            if let Some(newest) = taken.newest_us {
                                progress.newest_committed_us.fetch_max(newest, Ordering::Relaxed);
                            }
                            since_status += taken.events;
                        }
                        Err(e) if e.is_retryable() && !closed => {
                            failures += 1;
                            if failures == 1 || failures.is_multiple_of(40) {
                                tracing::error!(pipeline = %self.pipeline, error = %e, "checkpoint commit failed; will retry");
                            }
                        }
                        Err(e) => {
                            let _ = self.fatal.send(PipelineError::Store(e));
                            return;
                        }
                    }
                }
            }
            if Instant::now() >= status_at {
                status_at = Instant::now() + STATUS_EVERY;
                tracing::info!(
                    pipeline = %self.pipeline,
                    stream = %self.stream,
                    events_committed = since_status,
                    dead_lettered = self.progress.dead_lettered(),
                    uncommitted_batches = ledger.pending.len(),
                    "status: events shipped and checkpointed in the last minute"
                );
                since_status = 0;
            }
            if closed {
                // A clean stop is on record, signed: the chain ends here by our word.
                if let Err(e) = self.cut_digests(true).await {
                    tracing::error!(pipeline = %self.pipeline, error = %e, "cannot store the stop's signed digest; the next start's first digest covers this run's last entries");
                }
                return;
            }
        }
    }

    /// Store and publish the digests due (with `stopping`, every sink's stop digest too).
    async fn cut_digests(&mut self, stopping: bool) -> Result<(), crate::store::StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        for (chain, sink) in self.chains.iter_mut().zip(&self.sink_names) {
            let Some(chain) = chain else { continue };
            if let Some(d) = chain.digests.as_ref().and_then(|c| c.due(now)) {
                store_digest(&self.store, &self.pipeline, sink, chain, d).await?;
            }
            if let Some(d) = chain.digests.as_ref().filter(|_| stopping).map(|c| c.stop(now)) {
                store_digest(&self.store, &self.pipeline, sink, chain, d).await?;
            }
        }
        Ok(())
    }

    /// Entries whose commit held go to their sinks' digests.
    fn digested(&mut self, digested: Vec<(usize, DigestEntry)>) {
        for (i, e) in digested {
            if let Some(Some(ChainWriter {
                digests: Some(cutter),
                ..
            })) = self.chains.get_mut(i)
            {
                cutter.committed([e]);
            }
        }
    }

    /// Note a sink's acknowledgement. Its sealed stretches take their place in the chain as
    /// they arrive: commits keep that order, and a failed commit is retried with the same
    /// entries.
    fn take_ack(&mut self, ledger: &mut Ledger, ack: SinkAck) {
        let SinkAck {
            sink,
            through,
            state,
            sealed,
        } = ack;
        if let Some(a) = ledger.acked.get_mut(sink) {
            *a = (*a).max(through);
        }
        let mut rows = Vec::new();
        let mut digested = Vec::new();
        if let (Some(Some(chain)), Some(name)) = (self.chains.get_mut(sink), self.sink_names.get(sink)) {
            for stretch in sealed {
                let entry = stretch.into_entry(&mut chain.head, &self.pipeline, name, chain.key.as_ref());
                if chain.digests.is_some() {
                    digested.push(DigestEntry::from(&entry));
                }
                rows.push(entry.row());
            }
        }
        if let Some(q) = ledger.states.get_mut(sink) {
            q.push_back(AckedState {
                through,
                state,
                rows,
                digested,
            });
        }
    }

    /// Hand committed manifest lines to each sink's publisher.
    fn publish(&self, published: Vec<(usize, ManifestLine)>) {
        for (i, chain) in self.chains.iter().enumerate() {
            let Some(chain) = chain else { continue };
            let lines: Vec<ManifestLine> = published
                .iter()
                .filter(|(s, _)| *s == i)
                .map(|(_, l)| l.clone())
                .collect();
            if !lines.is_empty() {
                let _ = chain.publish.send(Publish::Lines(lines));
            }
        }
    }
}

impl Ledger {
    /// What a commit through `watermark` takes, or `None` when it would take nothing.
    fn take(&self, watermark: u64, sink_names: &[String]) -> Option<Taken> {
        let ready = self.pending.front().is_some_and(|b| b.number <= watermark)
            || self
                .states
                .iter()
                .any(|q| q.front().is_some_and(|a| a.through <= watermark));
        if !ready {
            return None;
        }
        let mut positions: HashMap<String, SavedPosition> = HashMap::new();
        let mut events = 0;
        let mut batches = 0;
        let mut hour_counts: HashMap<(String, i64), u64> = HashMap::new();
        for b in self.pending.iter().take_while(|b| b.number <= watermark) {
            for p in &b.positions {
                positions.insert(p.resource_id.clone(), p.clone());
            }
            for (rid, hour, c) in &b.hours {
                *hour_counts.entry((rid.clone(), *hour)).or_default() += c;
            }
            events += b.events;
            batches += 1;
        }
        let mut sink_state: Vec<(String, StateEntry)> = Vec::new();
        let mut manifest: Vec<(String, ManifestRow)> = Vec::new();
        let mut published: Vec<(usize, ManifestLine)> = Vec::new();
        let mut digested: Vec<(usize, DigestEntry)> = Vec::new();
        let mut per_sink = vec![0; self.states.len()];
        for (i, (q, name)) in self.states.iter().zip(sink_names).enumerate() {
            let mut merged: HashMap<&str, i64> = HashMap::new();
            for a in q.iter().take_while(|a| a.through <= watermark) {
                for e in &a.state {
                    merged.insert(&e.key, e.value);
                }
                for r in &a.rows {
                    manifest.push((name.clone(), r.clone()));
                    published.push((
                        i,
                        ManifestLine {
                            seq: r.seq,
                            unit: r.unit.clone(),
                            line: r.line.clone(),
                        },
                    ));
                }
                digested.extend(a.digested.iter().map(|e| (i, e.clone())));
                per_sink[i] += 1;
            }
            for (k, v) in merged {
                sink_state.push((
                    name.clone(),
                    StateEntry {
                        key: k.to_string(),
                        value: v,
                    },
                ));
            }
        }
        let newest_us = positions.values().filter_map(|c| c.cursor_us).max();
        Some(Taken {
            commit: Commit {
                positions: positions.into_values().collect(),
                sink_state,
                hours: hour_counts.into_iter().map(|((r, h), c)| (r, h, c)).collect(),
                manifest,
            },
            published,
            digested,
            events,
            newest_us,
            batches,
            per_sink,
        })
    }
}

/// Keep a signed digest in the store, hand it to the sink's publisher, and move the chain's
/// cutter past it.
async fn store_digest(
    store: &Store,
    pipeline: &str,
    sink: &str,
    chain: &mut ChainWriter,
    d: SignedDigest,
) -> Result<(), crate::store::StoreError> {
    store.insert_digest(pipeline, sink, DigestCutter::row(&d)).await?;
    tracing::debug!(sink = %sink, seq = d.seq, entries = d.entries.len(), stopped = d.stopped, "digest signed");
    let _ = chain.publish.send(Publish::Digest(d.file()));
    if let Some(cutter) = chain.digests.as_mut() {
        cutter.cut(d);
    }
    Ok(())
}

/// The batch a commit may pass: the lowest acknowledgement over all sinks, lowered until it is a
/// batch that every sink with exact state ([`auditship_sink::Sink::exact_state`]) acknowledged
/// exactly, so the state committed (file lengths) holds the batches the positions pass and no
/// others. A sink acknowledging in larger steps than another (a group commit over many batches)
/// would otherwise have its older state committed with newer positions, and a restart would cut
/// events the checkpoint counts as shipped. `committed` is the batch the last commit passed, an
/// exact point of every sink.
fn commit_point(acked: &[u64], states: &[VecDeque<AckedState>], exact: &[bool], committed: u64) -> u64 {
    let mut point = acked.iter().copied().min().unwrap_or(0);
    loop {
        let mut lowered = point;
        for (q, exact) in states.iter().zip(exact) {
            if !exact {
                continue;
            }
            let at = q
                .iter()
                .map(|a| a.through)
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

/// The manifests of a run: per sink, the chain's end the checkpointer extends (`None`: the sink
/// keeps no manifest), and the tasks that write committed entries next to the data.
pub(super) struct Manifests {
    /// Per sink, in the pipeline's order.
    pub(super) chains: Vec<Option<ChainWriter>>,
    /// One per sink that keeps a manifest; they end after the checkpointer's last commit.
    pub(super) publishers: JoinSet<()>,
}

/// Start a manifest publisher for every sink that keeps a manifest (when `[manifest]` is on).
/// `sinks`: each sink's name and where it publishes manifests, if it does.
pub(super) async fn start_manifests(
    p: &PipelineConfig,
    store: &Store,
    sinks: Vec<(String, Option<Arc<dyn ManifestPublisher>>)>,
    abandon: &CancellationToken,
) -> Result<Manifests, PipelineError> {
    let mut chains = Vec::new();
    let mut publishers = JoinSet::new();
    for (name, publisher) in sinks {
        let Some(publisher) = publisher.filter(|_| p.manifest_enabled) else {
            chains.push(None);
            continue;
        };
        let head = store.manifest_head(&p.name, &name).await?.into();
        let digests = match &p.digests {
            Some(settings) => Some(DigestCutter::restore(store, &p.name, &name, settings.clone()).await?),
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        publishers.spawn(crate::manifest::publisher_task(
            store.clone(),
            p.name.clone(),
            name,
            publisher,
            rx,
            abandon.clone(),
        ));
        chains.push(Some(ChainWriter {
            head,
            key: p.manifest_key.clone(),
            digests,
            publish: tx,
        }));
    }
    Ok(Manifests { chains, publishers })
}

/// How often the checkpointer logs its status line.
const STATUS_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn acks(points: &[u64]) -> VecDeque<AckedState> {
        points
            .iter()
            .map(|&n| AckedState {
                through: n,
                state: Vec::new(),
                rows: Vec::new(),
                digested: Vec::new(),
            })
            .collect()
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
}

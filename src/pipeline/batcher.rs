//! The batcher: numbers batches, tracks each sandbox's position, and hands every batch to the
//! checkpointer (positions first) and then to every sink.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use auditship_sink::{Batch, Event};
use tokio::sync::mpsc;

use crate::config::PipelineConfig;
use crate::source::SourceMsg;
use crate::store::SavedPosition;
use crate::transform::{Applied, Transformer};

use super::checkpointer::{CkMsg, NewBatch};
use super::dead_letter::{dead_letter_failures, DlMsg};
use super::positions::PendingPosition;
use super::run::Links;
use super::sink_task::SinkQueue;
use super::{PipelineError, Progress, RunOptions};

/// The batcher: numbers batches, tracks each sandbox's position as events pass, and hands every
/// batch to the checkpointer (positions first) and then to every sink.
pub(super) struct Batcher {
    /// Each sink's queue, and whether it takes the batch after the pipeline's transforms.
    sinks: Vec<SinkQueue>,
    /// The pipeline's `[[transforms]]`.
    transformer: Transformer,
    dead_letters: mpsc::Sender<DlMsg>,
    fatal: mpsc::UnboundedSender<PipelineError>,
    ck: mpsc::UnboundedSender<CkMsg>,
    pending: HashMap<Arc<str>, PendingPosition, foldhash::fast::RandomState>,
    number: u64,
    events: Vec<Event>,
    /// Sandboxes with an event in the open batch.
    touched: Vec<Arc<str>>,
    progress: Arc<Progress>,
    /// One permit per batch not yet committed: if commits stall (a locked database), the batcher
    /// waits, and the stall reaches the sources, instead of queueing positions without bound.
    uncommitted: Arc<tokio::sync::Semaphore>,
    /// Ship only these ids (see [`RunOptions::only_ids`](super::RunOptions::only_ids)).
    only_ids: Option<Arc<std::collections::HashSet<String>>>,
}

impl Batcher {
    /// A batcher for a run of `p`, whose sandboxes start where `loaded` says.
    pub(super) fn new(
        p: &PipelineConfig,
        opts: &RunOptions,
        loaded: &HashMap<String, SavedPosition>,
        sinks: Vec<SinkQueue>,
        uncommitted: Arc<tokio::sync::Semaphore>,
        links: &Links,
    ) -> Self {
        Batcher {
            sinks,
            transformer: p.transforms.start_counted(opts.progress.ocsf.clone()),
            dead_letters: links.dead_letters.clone(),
            fatal: links.fatal.clone(),
            ck: links.ck.clone(),
            pending: loaded
                .iter()
                .map(|(rid, c)| (Arc::from(rid.as_str()), PendingPosition::from_saved(c)))
                .collect(),
            number: 0,
            events: Vec::with_capacity(p.batch_max_events.min(65_536)),
            touched: Vec::new(),
            progress: opts.progress.clone(),
            uncommitted,
            only_ids: opts.only_ids.clone(),
        }
    }

    fn push(&mut self, e: Event) {
        let r = self.pending.entry(e.resource_id.clone()).or_default();
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
        let pending = &mut self.pending;
        let events = &self.events;
        let positions = self
            .touched
            .drain(..)
            .filter_map(|rid| {
                pending.get_mut(&rid).map(|r| {
                    r.in_batch = false;
                    r.resolve(events);
                    r.to_saved(&rid)
                })
            })
            .collect();
        let count = self.events.len() as u64;
        let mut by_hour: HashMap<(&Arc<str>, i64), u64, foldhash::fast::RandomState> = HashMap::default();
        for e in &self.events {
            let hour = crate::store::hour_of(e.cursor_us.or(e.time_us).unwrap_or(0));
            *by_hour.entry((&e.resource_id, hour)).or_default() += 1;
        }
        let hours: Vec<(String, i64, u64)> = by_hour
            .into_iter()
            .map(|((r, h), n)| (r.to_string(), h, n))
            .collect();
        // The next batch starts at full size: grown by doubling from empty, each batch copied
        // its events about twice (the largest realloc copies in the live profile;
        // benches/HISTORY.md, change 22). A batch
        // closed well short of that (a timeout) gives back the rest while it waits in queues.
        let capacity = self.events.capacity();
        let mut events = std::mem::replace(&mut self.events, Vec::with_capacity(capacity));
        if events.len() < capacity / 2 {
            events.shrink_to_fit();
        }
        let batch = Arc::new(Batch { number, events });
        if self
            .ck
            .send(CkMsg::Batch(NewBatch {
                number,
                positions,
                events: count,
                hours,
            }))
            .is_err()
        {
            return false;
        }
        let transformed = match run_transforms(&mut self.transformer, &batch).await {
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

    /// Take the sources' messages until their queue closes, closing a batch at `max_events`
    /// or `timeout` after its first event; the last batch closes with the queue.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<SourceMsg>,
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
                    let _ = self
                        .dead_letters
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
pub(super) const MAX_UNCOMMITTED_BATCHES: usize = 4096;

/// Run `transformer` over `batch` on a blocking thread (transforms are CPU work, and a batch of
/// thousands of events would hold an async worker for milliseconds). An empty transformer passes the
/// batch through untouched.
pub(super) async fn run_transforms(
    transformer: &mut Transformer,
    batch: &Arc<Batch>,
) -> Result<Applied, String> {
    if transformer.is_empty() {
        return Ok(transformer.apply_batch(batch));
    }
    let mut owned = std::mem::take(transformer);
    let b = batch.clone();
    let (owned, out) = tokio::task::spawn_blocking(move || {
        let out = owned.apply_batch(&b);
        (owned, out)
    })
    .await
    .map_err(|e| format!("a transform panicked: {e}"))?;
    *transformer = owned;
    Ok(out)
}

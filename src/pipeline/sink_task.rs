//! The sink task: writes batches to one sink, group-commits them, retries, and acknowledges
//! what is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use auditship_sink::{Batch, Sink, SinkContext, SinkError, StateEntry};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::Backoff;
use crate::config::PipelineConfig;
use crate::manifest::{ChainWriter, Sealer};
use crate::store::Store;
use crate::transform::Transformer;

use super::batcher::run_transforms;
use super::checkpointer::{CkMsg, SinkAck};
use super::dead_letter::{dead_letter_failures, DlMsg, SinkDeadLetters};
use super::run::Links;
use super::{PipelineError, Progress};

/// Build and prepare every sink of `p`, in order. Each rolls its output back to the state its
/// last commit recorded before anything new arrives.
pub(super) async fn open_sinks(
    p: &PipelineConfig,
    store: &Store,
    dead_letters: &mpsc::Sender<DlMsg>,
) -> Result<Vec<(String, Box<dyn Sink>)>, PipelineError> {
    let mut sinks: Vec<(String, Box<dyn Sink>)> = Vec::new();
    for (name, cfg) in &p.sinks {
        let recovered = store.sink_state(&p.name, name).await?;
        let ctx = SinkContext {
            pipeline: p.name.clone(),
            sink: name.clone(),
            recovered,
            registry: store.registry(&p.name, name),
            dead_letters: Arc::new(SinkDeadLetters {
                tx: dead_letters.clone(),
                sink: name.clone(),
            }),
            manifest: p.manifest_enabled,
        };
        let cfg_owned = cfg.clone();
        // Sinks stage what they must beside the checkpoint database that names it.
        let state_dir = p
            .checkpoint_path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        // Opening a sink reads and truncates files: blocking work.
        let built = tokio::task::spawn_blocking(move || match cfg_owned.config() {
            Ok(config) => config.build(ctx, &state_dir),
            Err(missing) => Err(SinkError::Config(missing.to_string())),
        })
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
    Ok(sinks)
}

/// A sink's queue, and whether it takes batches after the pipeline's transforms (a sink that
/// skips them is handed each batch as received).
pub(super) type SinkQueue = (mpsc::Sender<Arc<Batch>>, bool);

/// Start a task per sink. `chains` says, per sink, whether it keeps a manifest (then its task
/// reads the stretches it seals).
pub(super) fn spawn_all(
    p: &PipelineConfig,
    store: &Store,
    sinks: Vec<(String, Box<dyn Sink>)>,
    chains: &[Option<ChainWriter>],
    progress: &Progress,
    links: &Links,
) -> (Vec<SinkQueue>, JoinSet<()>) {
    let mut queues = Vec::new();
    let mut tasks = JoinSet::new();
    for (idx, (name, sink)) in sinks.into_iter().enumerate() {
        let sealer = chains
            .get(idx)
            .is_some_and(Option::is_some)
            .then(|| Sealer::new(store.clone(), &p.name, &name));
        let (tx, rx) = mpsc::channel::<Arc<Batch>>(SINK_QUEUE_BATCHES);
        let route = p.routes.get(&name).cloned().unwrap_or_default();
        let stats = progress.sink(&name);
        queues.push((tx, route.pipeline_transforms || p.transforms.is_empty()));
        tasks.spawn(sink_task(
            SinkWorker {
                idx,
                name,
                sink,
                transformer: route.transforms.start_counted(stats.ocsf.clone()),
                dead_letters: links.dead_letters.clone(),
                stats,
                sealer,
            },
            rx,
            links.ck.clone(),
            links.fatal.clone(),
            links.abandon.clone(),
        ));
    }
    (queues, tasks)
}

/// Most batches one flush covers: bounds memory held for a retry.
const MAX_UNFLUSHED_BATCHES: usize = 64;

/// Most batches one flush covers when the sink has transforms: with 33 (a full queue), the
/// live benchmark's OCSF sink peaked at 554–682 MiB; the transforms' CPU, not the fsync,
/// bounds such a sink, so sharing an fsync among more batches gains it nothing
/// (benches/HISTORY.md, change 19).
const TRANSFORMING_MAX_BATCHES: usize = 4;

/// Batches queued for a sink while it writes and flushes. Group commit gathers only what is
/// queued, so this is how far one fsync is shared: with 4, the live benchmark's file sink
/// flushed about 8,000 events per fsync round and was the bottleneck (330k events/s steady);
/// with 32, rounds grow with the load (20,000–45,000 events) and the same run went 25% faster,
/// for about 90 MB more at its peak (2,000-event batches of 560-byte events; benches/HISTORY.md,
/// change 16).
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
        mut transformer,
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
                let most = if transformer.is_empty() {
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
            let failed = match run_transforms(&mut transformer, b).await {
                Ok(applied) => {
                    stats.filtered.inc_by(applied.dropped);
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
                stats
                    .replays_skipped
                    .store(sink.replays_skipped(), Ordering::Relaxed);
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
                    stats.shipped.inc_by(durable as u64);
                    held.retain(|b| b.number > t);
                    acked = acked.max(t);
                }
                if (through.is_some() || !state.is_empty() || !sealed.is_empty())
                    && ck
                        .send(CkMsg::Ack(SinkAck {
                            sink: idx,
                            through: acked,
                            state,
                            sealed,
                        }))
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
    transformer: Transformer,
    dead_letters: mpsc::Sender<DlMsg>,
    stats: Arc<crate::metrics::SinkStats>,
    /// Reads the stretches the sink seals, when it keeps a manifest.
    sealer: Option<crate::manifest::Sealer>,
}

/// Sleep until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Write `fresh` and flush (or close, when `closing`). After a retryable failure the sink is
/// reset, and `held` (written before, not yet durable) is written again with `fresh`.
/// `Err(None)`: abandoned while retrying.
pub(super) async fn write_durably(
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
                // A failed reset may leave the failed attempt's bytes in place, and writing the
                // held batches over them would store lines twice: reset until a reset succeeds,
                // and only then write again.
                while let Err(reset) = sink.reset().await {
                    tracing::error!(sink = name, error = %reset, "sink reset failed; resetting again before any write");
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = abandon.cancelled() => return Err(None),
                    }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// A sink that fails its first flush and its first reset, and writes down every call.
    #[derive(Default)]
    struct Flaky {
        calls: Arc<Mutex<Vec<&'static str>>>,
        flushes: u32,
        resets: u32,
    }

    #[async_trait]
    impl Sink for Flaky {
        async fn write(&mut self, _batch: Arc<Batch>) -> Result<(), SinkError> {
            self.calls.lock().unwrap().push("write");
            Ok(())
        }

        async fn flush(&mut self) -> Result<Vec<StateEntry>, SinkError> {
            self.flushes += 1;
            if self.flushes == 1 {
                self.calls.lock().unwrap().push("flush failed");
                return Err(SinkError::Remote {
                    message: "down".into(),
                    retryable: true,
                });
            }
            self.calls.lock().unwrap().push("flush");
            Ok(Vec::new())
        }

        async fn reset(&mut self) -> Result<(), SinkError> {
            self.resets += 1;
            if self.resets == 1 {
                self.calls.lock().unwrap().push("reset failed");
                return Err(SinkError::Remote {
                    message: "could not roll back".into(),
                    retryable: true,
                });
            }
            self.calls.lock().unwrap().push("reset");
            Ok(())
        }
    }

    /// After a failed reset nothing is written until a reset succeeds: writing the held
    /// batches over what the failed reset left would store lines twice.
    #[tokio::test(start_paused = true)]
    async fn a_failed_reset_is_retried_before_anything_is_written_again() {
        let mut sink = Flaky::default();
        let calls = sink.calls.clone();
        let batch = Arc::new(Batch {
            number: 1,
            events: Vec::new(),
        });
        let stats = crate::metrics::SinkStats::default();
        let out = write_durably(
            "flaky",
            &mut sink,
            &[],
            &[batch],
            false,
            &CancellationToken::new(),
            &stats,
        )
        .await;
        assert!(out.is_ok());
        assert_eq!(
            *calls.lock().unwrap(),
            ["write", "flush failed", "reset failed", "reset", "write", "flush"]
        );
    }
}

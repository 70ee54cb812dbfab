//! `run`: the wiring of one pipeline run. It opens the store, starts every stage of the flow in
//! the order their recovery needs (dead letters, sinks, batcher, checkpointer, sources), waits
//! for a stop, a fatal error or the end of every source, then drains and reports. The stages
//! themselves live in the files next to this one.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::source::{self, SourceMsg};
use crate::store::{SavedPosition, Store};

use super::batcher::{Batcher, MAX_UNCOMMITTED_BATCHES};
use super::checkpointer::{self, Checkpointer, CkMsg};
use super::dead_letter::{self, DlMsg};
use super::discovery::{self, sandboxes_to_follow};
use super::sink_task;
use super::sources::{record_source, Sources};
use super::{client_for, Mode, PipelineError, Progress, RunOptions, RunReport};

/// The channel ends every stage may need, made once by [`run`].
#[derive(Clone)]
pub(super) struct Links {
    /// To the dead-letter writer.
    pub(super) dead_letters: mpsc::Sender<DlMsg>,
    /// To the checkpointer.
    pub(super) ck: mpsc::UnboundedSender<CkMsg>,
    /// A failure that waiting cannot fix: the run stops.
    pub(super) fatal: mpsc::UnboundedSender<PipelineError>,
    /// Cancelled when the drain gives up: sinks stop retrying.
    pub(super) abandon: CancellationToken,
}

/// Run a pipeline until it is stopped (live) or its window is shipped (backfill).
pub async fn run(p: &PipelineConfig, opts: RunOptions) -> Result<RunReport, PipelineError> {
    p.check_runnable().map_err(PipelineError::Config)?;
    let client = client_for(p)?;
    let store = Store::open(&p.checkpoint_path)?;
    let _lock = store.lock(&p.name)?;
    let stream_key = opts.mode.stream_key();
    let loaded = store.load(&p.name, &stream_key).await?;
    let progress = &opts.progress;

    // Dead letters first: sinks may send events they can never deliver there.
    let (dl_tx, dl_rx) = mpsc::channel::<DlMsg>(1_024);
    let dead_letters = tokio::spawn(dead_letter::writer_task(
        p.dead_letter_path.clone(),
        p.name.clone(),
        client.key().clone(),
        dl_rx,
        progress.clone(),
    ));
    crate::metrics::register(&p.name, progress.clone());
    // Sinks next: they roll their output back to the last commit before anything new arrives.
    let sinks = sink_task::open_sinks(p, &store, &dl_tx).await?;
    let sandboxes = sandboxes_to_follow(&client, p, opts.mode.sandboxes()).await?;

    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<PipelineError>();
    let (ck_tx, ck_rx) = mpsc::unbounded_channel::<CkMsg>();
    let (src_tx, src_rx) = mpsc::channel::<SourceMsg>(source::QUEUE_MESSAGES);
    let links = Links {
        dead_letters: dl_tx,
        ck: ck_tx,
        fatal: fatal_tx,
        abandon: CancellationToken::new(),
    };
    let sink_names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
    let exact: Vec<bool> = sinks.iter().map(|(_, sink)| sink.exact_state()).collect();
    let publishing = sinks
        .iter()
        .map(|(n, sink)| (n.clone(), sink.manifest_publisher()))
        .collect();
    let manifests = checkpointer::start_manifests(p, &store, publishing, &links.abandon).await?;
    let (sink_queues, mut sink_tasks) =
        sink_task::spawn_all(p, &store, sinks, &manifests.chains, progress, &links);
    let uncommitted = Arc::new(tokio::sync::Semaphore::new(MAX_UNCOMMITTED_BATCHES));
    let batcher = Batcher::new(p, &opts, &loaded, sink_queues, uncommitted.clone(), &links);
    let batcher = tokio::spawn(batcher.run(src_rx, p.batch_max_events, p.batch_timeout));
    let checkpointer = Checkpointer {
        store: store.clone(),
        pipeline: p.name.clone(),
        stream: stream_key.clone(),
        sink_names,
        interval: p.commit_interval,
        progress: progress.clone(),
        fatal: links.fatal.clone(),
        uncommitted,
        chains: manifests.chains,
        exact,
    };
    let checkpointer = tokio::spawn(checkpointer.run(ck_rx));

    let mut sources = Sources::start(&client, p, &opts.mode, &loaded, src_tx, sandboxes);
    let mut discovery = discovery::start(&client, p, &opts.mode, &links.fatal);
    let discovering = discovery.is_some();
    progress
        .sandboxes
        .store(sources.active() as u64, Ordering::Relaxed);
    progress.running.store(true, Ordering::Relaxed);
    tracing::info!(pipeline = %p.name, sandboxes = sources.active(), sinks = p.sinks.len(), stream = %stream_key, "pipeline started");

    let mut report = RunReport {
        pipeline: p.name.clone(),
        dead_letter_path: p.dead_letter_path.clone(),
        ..Default::default()
    };
    let listed = discovery.as_mut().map(|(_, rx)| rx);
    let mut fatal = supervise(p, &opts, &mut sources, &mut fatal_rx, listed, &mut report).await;
    if let Some((task, _)) = discovery {
        task.abort();
    }
    let all_ended = sources.all_ended();

    // Drain: stop sources; the batcher closes its last batch when their channel closes, sinks
    // flush it, the checkpointer commits what every sink acknowledged.
    sources.stop();
    let ended_by_itself = fatal.is_none() && !opts.shutdown.is_cancelled();
    let abandon = links.abandon.clone();
    drop(links);
    let drain = async {
        sources.drain(&mut report, &mut fatal).await;
        let _ = batcher.await;
        while sink_tasks.join_next().await.is_some() {}
        let _ = checkpointer.await;
        // The checkpointer is done: the publishers write what it committed last, then end.
        let mut publishers = manifests.publishers;
        while publishers.join_next().await.is_some() {}
        let _ = dead_letters.await;
    };
    let drained = drain_within(drain, ended_by_itself, &opts).await;
    progress.running.store(false, Ordering::Relaxed);
    if !drained {
        tracing::warn!(pipeline = %p.name, "drain timed out; events not yet committed will be fetched again on the next start");
    }
    abandon.cancel();
    while let Ok(e) = fatal_rx.try_recv() {
        fatal.get_or_insert(e);
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    if matches!(opts.mode, Mode::Live) && !discovering && !opts.shutdown.is_cancelled() && all_ended {
        return Err(nothing_left(p, &report));
    }
    let committed = store.load(&p.name, &stream_key).await?;
    count_shipped(&mut report, sources.followed(), &loaded, &committed, progress);
    report.complete = matches!(opts.mode, Mode::Backfill(_) | Mode::Given(_))
        && drained
        && report.stopped.is_empty()
        && all_ended
        && !opts.shutdown.is_cancelled();
    Ok(report)
}

/// Wait for a stop request, a fatal error, or every source to end (with discovery, sources are
/// followed and stopped as `discovered` lists them, and the run goes on until stopped). The
/// fatal error, if one stopped the run.
async fn supervise(
    p: &PipelineConfig,
    opts: &RunOptions,
    sources: &mut Sources<'_>,
    fatal_rx: &mut mpsc::UnboundedReceiver<PipelineError>,
    mut discovered: Option<&mut mpsc::Receiver<Vec<String>>>,
    report: &mut RunReport,
) -> Option<PipelineError> {
    let discovering = discovered.is_some();
    let mut fatal = None;
    loop {
        let listed = async {
            match discovered.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = opts.shutdown.cancelled() => {
                tracing::info!(pipeline = %p.name, "stopping: draining sources and sinks");
                return fatal;
            }
            Some(e) = fatal_rx.recv() => {
                tracing::error!(pipeline = %p.name, error = %e, "pipeline stopping on a fatal error");
                return Some(e);
            }
            ended = sources.next_ended() => {
                if let Some(r) = ended {
                    if discovering {
                        opts.progress.sandboxes.store(sources.active() as u64, Ordering::Relaxed);
                    }
                    record_source(report, r, &mut fatal);
                }
                if fatal.is_some() || (!discovering && sources.all_ended()) {
                    return fatal;
                }
            }
            Some(listed) = listed => {
                discovery::apply(p, sources, listed, report);
                opts.progress.sandboxes.store(sources.active() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// What the run shipped, per sandbox followed: committed now, less committed before it began;
/// and what it dead-lettered and filtered.
fn count_shipped(
    report: &mut RunReport,
    followed: &[String],
    before: &HashMap<String, SavedPosition>,
    now: &HashMap<String, SavedPosition>,
    progress: &Progress,
) {
    for rid in followed {
        let shipped = |at: &HashMap<String, SavedPosition>| at.get(rid).map_or(0, |c| c.events_shipped);
        report
            .shipped
            .insert(rid.clone(), shipped(now).saturating_sub(shipped(before)));
    }
    report.dead_lettered = progress.dead_lettered();
    report.filtered = progress.filtered.load(Ordering::Relaxed);
}

/// Run `drain` to its end, within the drain timeout. When every source ended by itself (a
/// backfill shipped its window), wait for the sinks as long as they retry (a broker that is down
/// must not turn into a "complete" backfill); a stop request then cuts the wait to the drain
/// timeout. Whether the drain finished.
async fn drain_within(
    drain: impl std::future::Future<Output = ()>,
    ended_by_itself: bool,
    opts: &RunOptions,
) -> bool {
    tokio::pin!(drain);
    if ended_by_itself {
        tokio::select! {
            _ = &mut drain => true,
            _ = opts.shutdown.cancelled() => {
                tokio::time::timeout(opts.drain_timeout, &mut drain).await.is_ok()
            }
        }
    } else {
        tokio::time::timeout(opts.drain_timeout, &mut drain).await.is_ok()
    }
}

/// A live pipeline whose every sandbox stopped (all deleted, say) has nothing left to do;
/// exiting non-zero tells the supervisor, and the reasons tell the operator.
fn nothing_left(p: &PipelineConfig, report: &RunReport) -> PipelineError {
    let reasons: Vec<String> = report
        .stopped
        .iter()
        .map(|(sb, why)| format!("{sb}: {why}"))
        .collect();
    PipelineError::Config(format!(
        "pipeline {}: no sandbox left to follow ({}); check the sandbox ids in {}",
        p.name,
        reasons.join("; "),
        p.file.display()
    ))
}

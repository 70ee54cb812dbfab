//! Which sandboxes a run follows: the ones named (a backfill's `--sandbox`, the pipeline's
//! `sandboxes`), or with `sandboxes = "all"` every sandbox the key can see that the pipeline's
//! `include`/`exclude` admit, read again every interval while a live run goes on.

use tokio::sync::mpsc;

use crate::client::Client;
use crate::config::{Discovery, PipelineConfig};

use super::sources::Sources;
use super::{Mode, PipelineError, RunReport};

/// The sandboxes to follow: `chosen` when it names any, else those discovery finds now, else
/// the pipeline's list. Every operation that walks a pipeline's sandboxes (a run, a dry run,
/// reconciliation) asks here.
pub async fn sandboxes_to_follow(
    client: &Client,
    p: &PipelineConfig,
    chosen: &[String],
) -> Result<Vec<String>, PipelineError> {
    match (&p.discovery, chosen.is_empty()) {
        (_, false) => Ok(chosen.to_vec()),
        (Some(d), true) => discover(client, d).await,
        (None, true) => Ok(p.sandboxes.clone()),
    }
}

/// The sandboxes discovery follows now.
async fn discover(client: &Client, d: &Discovery) -> Result<Vec<String>, PipelineError> {
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
async fn every_interval(
    client: Client,
    d: Discovery,
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

/// With discovery on a live run: the task that reads the sandbox list every interval, and where
/// the lists it reads arrive. A refused key is fatal (sent to `fatal`).
pub(super) fn start(
    client: &Client,
    p: &PipelineConfig,
    mode: &Mode,
    fatal: &mpsc::UnboundedSender<PipelineError>,
) -> Option<(tokio::task::JoinHandle<()>, mpsc::Receiver<Vec<String>>)> {
    let d = p.discovery.clone().filter(|_| matches!(mode, Mode::Live))?;
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(every_interval(client.clone(), d, tx, fatal.clone()));
    Some((task, rx))
}

/// Follow the sandboxes new in `listed` and stop following those it no longer holds.
pub(super) fn apply(
    p: &PipelineConfig,
    sources: &mut Sources<'_>,
    listed: Vec<String>,
    report: &mut RunReport,
) {
    for rid in sources.not_in(&listed) {
        if sources.unfollow(&rid) {
            tracing::info!(pipeline = %p.name, resource_id = %rid, "sandbox left the sandbox list; stopped following it (its checkpoint stays)");
            report.stopped.insert(rid, "left the sandbox list".into());
        }
    }
    for rid in &listed {
        if sources.follow(rid) {
            tracing::info!(pipeline = %p.name, resource_id = %rid, "discovered a new sandbox; following it");
        }
    }
}

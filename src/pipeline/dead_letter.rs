//! Dead letters: payloads that are not events, events a transform fails on, and events a sink
//! can never deliver, appended durably to one NDJSON file per pipeline.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use auditship_sink::{DeadLetters, Event, SinkError};
use tokio::sync::mpsc;

use crate::client::format_time;
use crate::secret::ApiKey;
use crate::source::DeadLetter;

use super::Progress;

/// A dead letter on its way to the file; `done` hears when it is durable (sinks wait for that).
pub(super) struct DlMsg {
    pub(super) letter: DeadLetter,
    pub(super) done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// The dead-letter path as a sink sees it.
pub(super) struct SinkDeadLetters {
    pub(super) tx: mpsc::Sender<DlMsg>,
    pub(super) sink: String,
}

#[async_trait::async_trait]
impl DeadLetters for SinkDeadLetters {
    async fn reject(&self, event: &Event, reason: &str) -> Result<(), SinkError> {
        let letter = letter_for(event, Some(&self.sink), false, reason.to_string());
        send_and_wait(&self.tx, [letter]).await
    }
}

/// Write events a transform failed on to the dead-letter file, with the reasons, and return
/// once they are durable: only then may their batch be acknowledged.
pub(super) async fn dead_letter_failures(
    tx: &mpsc::Sender<DlMsg>,
    sink: Option<&str>,
    failed: Vec<(Event, String)>,
) -> Result<(), SinkError> {
    if failed.is_empty() {
        return Ok(());
    }
    let letters = failed
        .into_iter()
        .map(|(event, reason)| letter_for(&event, sink, true, reason));
    send_and_wait(tx, letters).await
}

/// The dead letter of an event (which keeps its bytes and id).
fn letter_for(event: &Event, sink: Option<&str>, transform: bool, reason: String) -> DeadLetter {
    DeadLetter {
        resource_id: event.resource_id.clone(),
        event_id: Some(event.id.clone()),
        sink: sink.map(str::to_string),
        transform,
        reason,
        raw: Some(event.raw.clone()),
    }
}

/// Queue `letters` for the file and wait until every one is durable (or the write failed).
/// All are queued before the first wait, so they share the writer's fsync.
async fn send_and_wait(
    tx: &mpsc::Sender<DlMsg>,
    letters: impl IntoIterator<Item = DeadLetter>,
) -> Result<(), SinkError> {
    let gone = || {
        SinkError::io(
            "dead-letter file",
            std::io::Error::other("the dead-letter writer stopped"),
        )
    };
    let mut waits = Vec::new();
    for letter in letters {
        let (done, heard) = tokio::sync::oneshot::channel();
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

/// Append dead letters to their NDJSON file: everything queued at once is written with one
/// fsync, and a sink waiting on a letter hears only after that fsync.
pub(super) async fn writer_task(
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
                auditship_sink::create_dir_all_durable(dir, 0o750)?;
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

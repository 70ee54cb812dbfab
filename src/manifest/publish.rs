//! Writing committed entries next to the data, through the sink's publisher, after the commit.

use super::*;

/// Publish one sink's committed entries next to its data, in order, retrying failures; first
/// whatever a crash left unpublished. Ends when the checkpointer is done and everything is
/// published, or after a few failed attempts once it is done (the entries stay in the
/// database, marked unpublished, and the next start writes them), or when abandoned.
pub(crate) async fn publisher_task(
    store: Store,
    pipeline: String,
    sink: String,
    publisher: Arc<dyn ManifestPublisher>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<ManifestLine>>,
    abandon: tokio_util::sync::CancellationToken,
) {
    let mut queue: Vec<ManifestLine> = match store.manifest_rows(&pipeline, &sink, true).await {
        Ok(rows) => rows
            .into_iter()
            .map(|r| ManifestLine {
                seq: r.seq,
                unit: r.unit,
                line: r.line,
            })
            .collect(),
        Err(e) => {
            tracing::error!(sink = %sink, error = %e, "cannot read unpublished manifest entries; they are written at the next start");
            Vec::new()
        }
    };
    if !queue.is_empty() {
        tracing::info!(sink = %sink, entries = queue.len(), "writing manifest entries a previous run committed but did not write out");
    }
    let mut backoff = crate::client::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut failures = 0u32;
    loop {
        if queue.is_empty() {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(lines) => queue.extend(lines),
                    None => return,
                },
                _ = abandon.cancelled() => return,
            }
        }
        while let Ok(lines) = rx.try_recv() {
            queue.extend(lines);
        }
        match publisher.publish(&queue).await {
            Ok(()) => {
                let seqs: Vec<u64> = queue.iter().map(|l| l.seq).collect();
                if let Err(e) = store.mark_published(&pipeline, &sink, seqs).await {
                    // Harmless: publishing is idempotent, the next start writes them again.
                    tracing::warn!(sink = %sink, error = %e, "cannot record manifest entries as written");
                }
                queue.clear();
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::error!(sink = %sink, failures, error = %e, "cannot write manifest entries next to the data; retrying (they are kept in the checkpoint database)");
                }
                if rx.is_closed() && failures >= 3 {
                    tracing::warn!(sink = %sink, entries = queue.len(), "stopping with manifest entries not yet written next to the data; the next start writes them");
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = abandon.cancelled() => return,
                }
            }
        }
    }
}

//! Writing committed entries next to the data, and stored digests at the archive's root,
//! through the sink's publisher, after the commit.

use auditship_sink::DigestFile;

use super::*;

/// What a sink's publisher is handed: committed manifest lines, or a stored digest.
#[derive(Debug, Clone)]
pub(crate) enum Publish {
    /// Manifest lines, in chain order.
    Lines(Vec<ManifestLine>),
    /// A signed digest (after the lines it lists).
    Digest(DigestFile),
}

/// Publish one sink's committed entries and digests, in order, retrying failures; first
/// whatever a crash left unpublished. Ends when the checkpointer is done and everything is
/// published, or after a few failed attempts once it is done (what is left stays in the
/// database, marked unpublished, and the next start writes it), or when abandoned.
pub(crate) async fn publisher_task(
    store: Store,
    pipeline: String,
    sink: String,
    publisher: Arc<dyn ManifestPublisher>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Publish>,
    abandon: tokio_util::sync::CancellationToken,
) {
    let mut queue: Vec<Publish> = Vec::new();
    match store.manifest_rows(&pipeline, &sink, true).await {
        Ok(rows) if !rows.is_empty() => queue.push(Publish::Lines(
            rows.into_iter()
                .map(|r| ManifestLine {
                    seq: r.seq,
                    unit: r.unit,
                    line: r.line,
                })
                .collect(),
        )),
        Ok(_) => {}
        Err(e) => {
            tracing::error!(sink = %sink, error = %e, "cannot read unpublished manifest entries; they are written at the next start");
        }
    }
    match store.unpublished_digests(&pipeline, &sink).await {
        Ok(rows) => {
            for r in rows {
                // The store holds the digest as published; its name comes from its content.
                match serde_json::from_str::<SignedDigest>(&r.body) {
                    Ok(d) => queue.push(Publish::Digest(d.file())),
                    Err(e) => {
                        tracing::error!(sink = %sink, seq = r.seq, error = %e, "a stored digest cannot be read, so it is not written out; the database was changed outside auditship (auditship verify --public-key names the hole)");
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(sink = %sink, error = %e, "cannot read unpublished digests; they are written at the next start");
        }
    }
    if !queue.is_empty() {
        tracing::info!(sink = %sink, items = queue.len(), "writing manifest entries and digests a previous run committed but did not write out");
    }
    let mut backoff = crate::client::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut failures = 0u32;
    loop {
        if queue.is_empty() {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(item) => queue.push(item),
                    None => return,
                },
                _ = abandon.cancelled() => return,
            }
        }
        while let Ok(item) = rx.try_recv() {
            queue.push(item);
        }
        match publish_front(&store, &pipeline, &sink, publisher.as_ref(), &mut queue).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::error!(sink = %sink, failures, error = %e, "cannot write manifest entries or digests next to the data; retrying (they are kept in the checkpoint database)");
                }
                if (rx.is_closed() && failures >= 3) || !e.is_retryable() {
                    tracing::warn!(sink = %sink, items = queue.len(), "stopping with manifest entries or digests not yet written next to the data; the next start writes them");
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

/// Publish the queue's consecutive lines at its front in one call, or the digest there; what
/// was published leaves the queue and is marked in the store.
async fn publish_front(
    store: &Store,
    pipeline: &str,
    sink: &str,
    publisher: &dyn ManifestPublisher,
    queue: &mut Vec<Publish>,
) -> Result<(), auditship_sink::SinkError> {
    let lines = queue
        .iter()
        .take_while(|p| matches!(p, Publish::Lines(_)))
        .count();
    if lines > 0 {
        let batch: Vec<ManifestLine> = queue[..lines]
            .iter()
            .flat_map(|p| match p {
                Publish::Lines(l) => l.clone(),
                Publish::Digest(_) => Vec::new(),
            })
            .collect();
        publisher.publish(&batch).await?;
        let seqs: Vec<u64> = batch.iter().map(|l| l.seq).collect();
        if let Err(e) = store.mark_published(pipeline, sink, seqs).await {
            // Harmless: publishing is idempotent, the next start writes them again.
            tracing::warn!(sink = %sink, error = %e, "cannot record manifest entries as written");
        }
        queue.drain(..lines);
        return Ok(());
    }
    if let Some(Publish::Digest(d)) = queue.first() {
        publisher.publish_digest(d).await?;
        if let Err(e) = store.mark_digest_published(pipeline, sink, d.seq).await {
            tracing::warn!(sink = %sink, error = %e, "cannot record a digest as written");
        }
        tracing::debug!(sink = %sink, digest = %d.name, "digest written");
        queue.remove(0);
    }
    Ok(())
}

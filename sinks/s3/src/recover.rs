//! After a crash: objects staged but not known to be uploaded are put in place, and the
//! events they hold are recognised when the sources replay them.

use super::sink::*;
use super::*;

impl S3Sink {
    /// Whether `id` is of an event already in an uploaded object (marking it seen, in batch
    /// `batch`).
    pub(crate) fn recognise(&mut self, id: &str, batch: u64) -> bool {
        let Some((idx, seen)) = self.known.get_mut(id) else {
            return false;
        };
        if let Some(h) = self.held.get_mut(*idx) {
            if !*seen {
                *seen = true;
                h.unseen = h.unseen.saturating_sub(1);
            }
            h.last_batch = h.last_batch.max(batch);
        }
        true
    }

    /// Put a pending object (from an earlier run) in place and remember its ids.
    pub(crate) async fn recover(&mut self, entry: &StateEntry) -> Result<(), SinkError> {
        let Some(key) = entry.key.strip_prefix(PENDING) else {
            return Ok(());
        };
        let key = key.to_string();
        let staging = self.staging_path(&key);
        let client = self.client()?.clone();
        let head = client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .send()
            .await;
        let body = match head {
            Ok(_) => match std::fs::read(&staging) {
                Ok(b) => b,
                Err(_) => {
                    let got = client
                        .get_object()
                        .bucket(&self.config.bucket)
                        .key(&key)
                        .send()
                        .await
                        .map_err(|e| self.remote(format!("reading back pending object {key}"), e))?;
                    got.body
                        .collect()
                        .await
                        .map_err(|e| SinkError::Remote {
                            message: format!("{}: reading back pending object {key}: {e}", self.name()),
                            retryable: true,
                        })?
                        .into_bytes()
                        .to_vec()
                }
            },
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                match std::fs::read(&staging) {
                    Ok(b) => {
                        tracing::info!(sink = %self.ctx.sink, key = %key, "uploading an object staged before a crash");
                        let sha256: [u8; 32] = Sha256::digest(&b).into();
                        // Its events' times are in the body only: retention counts from now.
                        self.upload_until_done(&key, bytes::Bytes::from(b.clone()), &sha256, None)
                            .await?;
                        b
                    }
                    Err(_) => {
                        // Neither uploaded nor staged: nothing of it reached S3, and the checkpoint
                        // never passed its events, so they come again.
                        tracing::warn!(sink = %self.ctx.sink, key = %key, "a pending object is neither in the bucket nor staged; its events will be shipped again");
                        self.ctx.registry.forget(vec![entry.key.clone()]).await?;
                        return Ok(());
                    }
                }
            }
            Err(e) => return Err(self.remote(format!("checking pending object {key}"), e)),
        };
        let kept = (!self.layout.ids_in_body())
            .then(|| std::fs::read_to_string(ids_path(&staging)).ok())
            .flatten();
        // The ids kept beside a staged object are gone once the checkpoint was about to pass
        // it (a crash before that commit leaves the entry pending): the ids the body stores
        // then stand in, matched against what events that come again would be stored under.
        let by_stored = kept.is_none() && !self.layout.ids_in_body();
        let ids_from = if kept.is_some() {
            "kept beside it"
        } else if by_stored {
            "the object's stored ids"
        } else {
            "the object"
        };
        let mut ids: Vec<Arc<str>> = match kept {
            Some(text) => Ok(text.lines().map(Arc::from).collect()),
            None => self.layout.event_ids(&key, &body),
        }
        .map_err(|m| SinkError::Config(format!("{}: pending object {key}: {m}", self.name())))?;
        if by_stored {
            let distinct: std::collections::HashSet<&Arc<str>> = ids.iter().collect();
            if distinct.len() == ids.len() {
                ids = ids.iter().map(|u| Arc::from(format!("{STORED}{u}"))).collect();
            } else {
                // Stored ids that repeat (a transform masked them) cannot tell events apart:
                // matching them could skip an event that is not in the object. Its events are
                // written again instead.
                tracing::warn!(sink = %self.ctx.sink, key = %key, "the ids stored in a pending object repeat; its events will be written again when they come");
                ids.clear();
            }
        }
        self.sealed.push(Sealed {
            unit: key.clone(),
            end: body.len() as u64,
            compression: self.layout.unit(),
            content: Some(bytes::Bytes::from(body)),
            precomputed: None,
        });
        let idx = self.held.len();
        let mut unseen = 0;
        for id in ids {
            if self.known.insert(id, (idx, false)).is_none() {
                unseen += 1;
            }
        }
        self.stored_known |= by_stored && unseen > 0;
        tracing::info!(sink = %self.ctx.sink, key = %key, events = unseen, ids_from, "object from before a crash is in place; its events will not be written again");
        self.held.push(Held {
            key,
            unseen,
            last_batch: 0,
            staging,
        });
        Ok(())
    }
}

//! [`DigestCutter`]: the checkpointer's side of signed digests. It learns each manifest entry as
//! its commit holds, and says when a digest is due: at the first start (an opening digest, so
//! the chain's beginning is on record at once), at every period boundary (periods aligned to
//! multiples of the interval since the Unix epoch, one digest spanning the boundaries a stopped
//! or stalled pipeline missed), and at a clean stop. A digest is what the store already holds:
//! the cutter moves on only once it is stored ([`DigestCutter::cut`]), so a crash between a
//! commit and its digest leaves the entries for the next start's first digest.

use super::*;
use crate::client::{format_time, parse_time};
use crate::store::{DigestRow, StoreError};

/// How a pipeline signs digests of its manifests (see [`SignedDigest`]): `[manifest]
/// signing_key_file` and `digest_interval_ms`.
#[derive(Clone, Debug)]
pub struct DigestSettings {
    /// The Ed25519 private key.
    pub key: Arc<DigestSigningKey>,
    /// The length of a period, aligned to multiples of it since the Unix epoch.
    pub interval: Duration,
}

/// One sink's digests being cut.
pub(crate) struct DigestCutter {
    pipeline: String,
    sink: String,
    settings: DigestSettings,
    /// The last digest stored (`None`: the chain has none yet).
    prev: Option<SignedDigest>,
    /// Where the next period starts, in µs (the last digest's end).
    start_us: i64,
    /// Entries committed since the last digest, in chain order.
    pending: Vec<DigestEntry>,
}

/// Why the cutter could not pick up where the store stands.
#[derive(Debug, thiserror::Error)]
pub enum CutterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the store holds is not a digest or entry this version reads.
    #[error("the checkpoint database's {what} of sink {sink} cannot be read ({reason}); it was changed outside auditship")]
    Unreadable {
        /// The sink.
        sink: String,
        /// What could not be read.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl CutterError {
    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            CutterError::Store(e) => e.is_retryable(),
            CutterError::Unreadable { .. } => false,
        }
    }
}

impl DigestCutter {
    /// Pick up `sink`'s chain of digests where the store has it: its last digest, and the
    /// manifest entries committed after it.
    pub(crate) async fn restore(
        store: &Store,
        pipeline: &str,
        sink: &str,
        settings: DigestSettings,
    ) -> Result<Self, CutterError> {
        let unreadable = |what, reason: String| CutterError::Unreadable {
            sink: sink.to_string(),
            what,
            reason,
        };
        let prev = match store.last_digest(pipeline, sink).await? {
            Some(row) => Some(
                serde_json::from_str::<SignedDigest>(&row.body)
                    .map_err(|e| unreadable("last digest", e.to_string()))?,
            ),
            None => None,
        };
        let start_us = match &prev {
            Some(p) => parse_time(&p.period_end)
                .ok_or_else(|| unreadable("last digest", format!("period_end {:?}", p.period_end)))?,
            None => 0,
        };
        let after = prev.as_ref().map_or(0, |p| p.through);
        let mut pending = Vec::new();
        for row in store.manifest_rows_after(pipeline, sink, after).await? {
            let entry: Entry =
                serde_json::from_str(&row.line).map_err(|e| unreadable("manifest entry", e.to_string()))?;
            pending.push(DigestEntry::from(&entry));
        }
        Ok(DigestCutter {
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            settings,
            prev,
            start_us,
            pending,
        })
    }

    /// Entries whose commit held, in chain order.
    pub(crate) fn committed(&mut self, entries: impl IntoIterator<Item = DigestEntry>) {
        self.pending.extend(entries);
    }

    /// The digest due at `now_us`, if one is: the opening one when the chain has none, else one
    /// when a period boundary has passed since the last digest's end.
    pub(crate) fn due(&self, now_us: i64) -> Option<SignedDigest> {
        if self.prev.is_none() {
            return Some(self.digest(now_us, now_us, false));
        }
        let interval = i64::try_from(self.settings.interval.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let boundary = now_us.div_euclid(interval) * interval;
        (boundary > self.start_us).then(|| self.digest(self.start_us, boundary, false))
    }

    /// The digest of a clean stop at `now_us`: the periods since the last digest, up to now.
    pub(crate) fn stop(&self, now_us: i64) -> SignedDigest {
        let start = if self.prev.is_some() {
            self.start_us
        } else {
            now_us
        };
        self.digest(start, now_us.max(start), true)
    }

    fn digest(&self, start_us: i64, end_us: i64, stopped: bool) -> SignedDigest {
        let mut d = SignedDigest::open(
            &self.pipeline,
            &self.sink,
            self.prev.as_ref(),
            &format_time(start_us),
            &format_time(end_us),
            u64::try_from(self.settings.interval.as_millis()).unwrap_or(u64::MAX),
        );
        for e in &self.pending {
            d.push(e.clone());
        }
        d.stopped = stopped;
        d.seal(&self.settings.key)
    }

    /// The digest as the store keeps it.
    pub(crate) fn row(d: &SignedDigest) -> DigestRow {
        DigestRow {
            seq: d.seq,
            through: d.through,
            body: d.file().body,
        }
    }

    /// `d` (from [`DigestCutter::due`] or [`DigestCutter::stop`]) is stored: the next digest
    /// follows it.
    pub(crate) fn cut(&mut self, d: SignedDigest) {
        self.pending.retain(|e| e.seq > d.through);
        self.start_us = parse_time(&d.period_end).unwrap_or(self.start_us);
        self.prev = Some(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(interval_ms: u64) -> DigestSettings {
        DigestSettings {
            key: Arc::new(DigestSigningKey::generate().unwrap()),
            interval: Duration::from_millis(interval_ms),
        }
    }

    fn entry(seq: u64) -> DigestEntry {
        DigestEntry {
            seq,
            hash: format!("{seq:064x}"),
            unit: format!("/a/{seq}.ndjson"),
            offset: 0,
            length: 10,
            sha256: format!("{seq:064x}"),
            events: 1,
        }
    }

    const HOUR_US: i64 = 3_600_000_000;

    #[tokio::test]
    async fn digests_open_follow_the_periods_and_pick_up_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).unwrap();
        let s = settings(3_600_000);
        let public = DigestPublicKey::from_pem(&s.key.public_pem().unwrap()).unwrap();
        let t0 = 1_765_000_000 * 1_000_000 + 1234; // not on a boundary
        let mut c = DigestCutter::restore(&store, "p", "s", s.clone()).await.unwrap();
        // The opening digest is due at once, a zero-length period at the start.
        let open = c.due(t0).unwrap();
        assert_eq!(
            (open.seq, open.period_start.as_str()),
            (1, open.period_end.as_str())
        );
        store
            .insert_digest("p", "s", DigestCutter::row(&open))
            .await
            .unwrap();
        c.cut(open.clone());
        assert!(c.due(t0 + 1).is_none(), "nothing more in the same period");
        c.committed([entry(1), entry(2)]);
        let boundary = (t0 / HOUR_US + 1) * HOUR_US;
        assert!(c.due(boundary - 1).is_none());
        let first = c.due(boundary + 5).unwrap();
        assert_eq!(first.period_end, format_time(boundary));
        assert_eq!(first.entries.len(), 2);
        first.check(&public).unwrap();
        first.follows(Some(&open)).unwrap();
        store
            .insert_digest("p", "s", DigestCutter::row(&first))
            .await
            .unwrap();
        c.cut(first.clone());
        // An empty period still gets its digest; three hours missed become one digest.
        let empty = c.due(boundary + 3 * HOUR_US + 7).unwrap();
        assert!(empty.entries.is_empty());
        assert_eq!(empty.through, 2);
        assert_eq!(empty.period_end, format_time(boundary + 3 * HOUR_US));
        empty.follows(Some(&first)).unwrap();
        // Not stored: a restart picks up after `first`, with what was committed since.
        drop(c);
        let mut c = DigestCutter::restore(&store, "p", "s", s.clone()).await.unwrap();
        assert!(c.pending.is_empty(), "entries 1 and 2 are in a stored digest");
        assert_eq!(c.due(boundary + HOUR_US).unwrap().follows(Some(&first)), Ok(()));
        c.committed([entry(3)]);
        let stop = c.stop(boundary + HOUR_US + 10);
        assert!(stop.stopped);
        assert_eq!(stop.entries.len(), 1);
        stop.follows(Some(&first)).unwrap();
        stop.check(&public).unwrap();
    }

    #[tokio::test]
    async fn entries_committed_before_a_crash_go_in_the_next_start_s_first_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).unwrap();
        // An entry committed (as the checkpointer commits it), and no digest yet.
        let line = serde_json::to_string(&Entry {
            v: FORMAT_VERSION,
            pipeline: "p".into(),
            sink: "s".into(),
            seq: 1,
            unit: "/a/x.ndjson".into(),
            offset: 0,
            length: 5,
            compression: "none".into(),
            sha256: "ab".repeat(32),
            events: 2,
            unidentified: 0,
            sandboxes: vec![],
            sealed_at: format_time(0),
            prev_unit: None,
            prev: GENESIS.into(),
            hash: "cd".repeat(32),
            hmac: None,
        })
        .unwrap();
        let commit = crate::store::Commit {
            manifest: vec![(
                "s".into(),
                crate::store::ManifestRow {
                    seq: 1,
                    unit: "/a/x.ndjson".into(),
                    offset: 0,
                    end: 5,
                    hash: "cd".repeat(32),
                    line,
                },
            )],
            ..Default::default()
        };
        store.commit("p", "live", commit).await.unwrap();
        let c = DigestCutter::restore(&store, "p", "s", settings(1000))
            .await
            .unwrap();
        let open = c.due(5_000_000).unwrap();
        assert_eq!(open.entries.len(), 1);
        assert_eq!((open.entries[0].events, open.through), (2, 1));
    }
}

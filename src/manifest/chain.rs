//! A sink's chain: its end, and a sealed stretch taking its place after it.

use super::*;

/// The end of a sink's chain: what the next entry links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The last entry's seq (0: no entry yet).
    pub seq: u64,
    /// Its hash ([`GENESIS`] when there is none).
    pub hash: String,
    /// Its unit.
    pub unit: Option<String>,
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS.to_string(),
            unit: None,
        }
    }
}

impl From<Option<StoredHead>> for ChainHead {
    /// The chain's end as the store holds it (none: the chain has no entry yet).
    fn from(stored: Option<StoredHead>) -> Self {
        match stored {
            Some(s) => ChainHead {
                seq: s.seq,
                hash: s.hash,
                unit: Some(s.unit),
            },
            None => ChainHead::default(),
        }
    }
}

/// A sealed stretch, hashed and summarised, waiting for its place in the chain.
#[derive(Debug, Clone)]
pub struct Stretch {
    /// The unit.
    pub unit: String,
    /// Start in the unit, in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Encoding.
    pub compression: UnitCompression,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// What the bytes hold.
    pub summary: Summary,
}

impl Stretch {
    /// Hash and summarise the stretch `[offset, offset + length)` of `unit`, read from `raw`
    /// (which yields exactly those bytes, as stored). Streams: a unit of any size takes a
    /// bounded amount of memory.
    pub fn read(
        unit: &str,
        offset: u64,
        raw: impl Read,
        compression: UnitCompression,
    ) -> Result<Stretch, std::io::Error> {
        let mut summarizer = Summarizer::default();
        let (sha256, length) = read_unit(raw, compression, |chunk| summarizer.feed(chunk, |_| {}))?;
        Ok(Stretch {
            unit: unit.to_string(),
            offset,
            length,
            compression,
            sha256,
            summary: summarizer.finish(),
        })
    }

    /// Chain this stretch after `head`; `head` moves to the new entry.
    pub fn into_entry(
        self,
        head: &mut ChainHead,
        pipeline: &str,
        sink: &str,
        key: Option<&HmacKey>,
    ) -> Entry {
        let mut entry = Entry {
            v: FORMAT_VERSION,
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            seq: head.seq + 1,
            unit: self.unit,
            offset: self.offset,
            length: self.length,
            compression: self.compression.as_str().to_string(),
            sha256: self.sha256,
            events: self.summary.events,
            unidentified: self.summary.unidentified,
            sandboxes: self.summary.sandboxes,
            sealed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            prev_unit: head.unit.clone(),
            prev: head.hash.clone(),
            hash: String::new(),
            hmac: None,
        };
        entry.hash = entry.compute_hash();
        entry.hmac = key.map(|k| sign(k, &entry.hash));
        *head = ChainHead {
            seq: entry.seq,
            hash: entry.hash.clone(),
            unit: Some(entry.unit.clone()),
        };
        entry
    }
}

/// The checkpointer side of one sink's manifest: the chain's end, the key, the digests being
/// cut (when the pipeline signs them), and where committed entries and stored digests go to be
/// published.
pub(crate) struct ChainWriter {
    pub(crate) head: ChainHead,
    pub(crate) key: Option<HmacKey>,
    pub(crate) digests: Option<super::DigestCutter>,
    pub(crate) publish: tokio::sync::mpsc::UnboundedSender<super::publish::Publish>,
}

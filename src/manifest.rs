//! Tamper-evident manifests of archive units.
//!
//! Every closed stretch of an archive unit (a rotated or closed file, an uploaded object; see
//! [`auditship_sink::Sealed`]) gets an [`Entry`]: the SHA-256 of its bytes, its event count, per
//! sandbox the first and last event id and cursor time, and the hash of the sink's previous entry.
//! The entries of one sink form a hash chain: changing, removing or reordering any entry breaks
//! the link of the one after it. An entry may carry an HMAC-SHA256 of its hash under a key from
//! the environment (`[manifest] hmac_key`), so that without the key nobody can write a chain that
//! verifies, not even for the newest entry.
//!
//! Entries are built by the checkpointer when a sink reports a seal, committed in the same SQLite
//! transaction as the checkpoint that makes the bytes permanent (table `manifest`), and then
//! written next to the data by the sink's [`auditship_sink::ManifestPublisher`]. `auditship
//! verify` ([`crate::verify`]) checks an archive against them.
//!
//! The entry's hash is the SHA-256 of its JSON as serialised by this module with `hash` empty
//! and `hmac` absent, fields in declaration order; a verifier re-serialises the parsed entry to
//! recompute it, so whitespace in the file does not matter but every value does.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Arc;
use std::time::Duration;

use auditship_sink::{ManifestLine, ManifestPublisher, Sealed, UnitCompression};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::AuditEvent;
use crate::store::{ManifestRow, Store, StoredHead};
use crate::transform::HmacKey;

/// The manifest format version written in every entry.
pub const FORMAT_VERSION: u32 = 1;

/// The `prev` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One manifest entry: a sealed stretch of a unit, chained to its sink's previous entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Format version ([`FORMAT_VERSION`]).
    pub v: u32,
    /// The pipeline that wrote the unit.
    pub pipeline: String,
    /// The sink (its `[sinks.NAME]`).
    pub sink: String,
    /// Position in the sink's chain: 1, 2, …
    pub seq: u64,
    /// The unit: the file path as the sink wrote it, or the object key.
    pub unit: String,
    /// Where the stretch starts in the unit, in bytes.
    pub offset: u64,
    /// The stretch's length in bytes.
    pub length: u64,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// SHA-256 of the stretch's bytes as stored (compressed), lowercase hex.
    pub sha256: String,
    /// Events (lines) in the stretch.
    pub events: u64,
    /// Lines without a top-level string `id` (reshaped by a transform): counted, not listed.
    pub unidentified: u64,
    /// Per sandbox (`resource_id`; empty when the line has none), in order of first appearance.
    pub sandboxes: Vec<SandboxSpan>,
    /// When the entry was made (RFC 3339, UTC).
    pub sealed_at: String,
    /// The unit of the previous entry of the chain (`None` for the first), so a verifier can
    /// name what went missing.
    pub prev_unit: Option<String>,
    /// The previous entry's `hash` ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 of this entry's canonical JSON (see the module docs), lowercase hex.
    #[serde(default)]
    pub hash: String,
    /// HMAC-SHA256 of `hash` (as text) under the manifest key, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
}

/// One sandbox's events within a stretch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpan {
    /// The sandbox.
    pub resource_id: String,
    /// Its events in the stretch.
    pub events: u64,
    /// Its first event's id (in unit order).
    pub first_id: String,
    /// That event's cursor time as the server spelled it.
    pub first_cursor: Option<String>,
    /// Its last event's id.
    pub last_id: String,
    /// That event's cursor time.
    pub last_cursor: Option<String>,
}

impl Entry {
    /// The row the store keeps of this entry (committed with the checkpoint).
    pub fn row(&self) -> ManifestRow {
        ManifestRow {
            seq: self.seq,
            unit: self.unit.clone(),
            offset: self.offset,
            end: self.offset + self.length,
            hash: self.hash.clone(),
            line: self.to_line(),
        }
    }

    /// The bytes the entry's hash covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut bare = self.clone();
        bare.hash.clear();
        bare.hmac = None;
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec(&bare).unwrap_or_default()
    }

    /// SHA-256 of [`Entry::canonical`], lowercase hex.
    pub fn compute_hash(&self) -> String {
        hex(&Sha256::digest(self.canonical()))
    }

    /// The entry as one JSON line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// HMAC-SHA256 of an entry hash under `key`, lowercase hex.
pub fn sign(key: &HmacKey, hash: &str) -> String {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes()) {
        Ok(mut mac) => {
            mac.update(hash.as_bytes());
            hex(&mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length.
        Err(_) => String::new(),
    }
}

/// Lowercase hex of `bytes` (`data-encoding`'s, as the S3 sink spells its own).
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

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

/// Passes bytes through, hashing and counting them.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Read a unit's bytes from `raw` to its end: hash them as stored, decode them (every gzip
/// member / zstd frame in turn) and hand the NDJSON to `lines` in chunks that end at a line
/// break (the last may not). Returns the SHA-256 (hex) and the number of stored bytes.
pub fn read_unit(
    raw: impl Read,
    compression: UnitCompression,
    mut lines: impl FnMut(Bytes),
) -> Result<(String, u64), std::io::Error> {
    let mut hashing = Hashing {
        inner: raw,
        hasher: Sha256::new(),
        count: 0,
    };
    {
        let mut decoded = compression.decoder(&mut hashing)?;
        const CHUNK: usize = 1 << 20;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        loop {
            let filled = buf.len();
            buf.resize(filled + CHUNK, 0);
            let n = decoded.read(&mut buf[filled..])?;
            buf.truncate(filled + n);
            if n == 0 {
                if !buf.is_empty() {
                    lines(Bytes::from(std::mem::take(&mut buf)));
                }
                break;
            }
            if let Some(cut) = memchr::memrchr(b'\n', &buf[filled..]).map(|i| filled + i + 1) {
                let rest = buf.split_off(cut);
                lines(Bytes::from(std::mem::replace(&mut buf, rest)));
            }
        }
    }
    // Whatever the decoder left unread (bytes after the last frame) still counts.
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    Ok((hex(&hashing.hasher.finalize()), hashing.count))
}

/// Guess a unit's encoding from its first bytes (gzip and zstd magic numbers).
pub fn sniff(first: &[u8]) -> UnitCompression {
    if first.starts_with(&[0x1f, 0x8b]) {
        UnitCompression::Gzip
    } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        UnitCompression::Zstd
    } else {
        UnitCompression::None
    }
}

/// What a stretch holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines.
    pub events: u64,
    /// Lines without an id.
    pub unidentified: u64,
    /// Per sandbox, in order of first appearance.
    pub sandboxes: Vec<SandboxSpan>,
}

/// One line of a unit, as [`Summarizer::feed`] shows it to its visitor.
#[derive(Debug)]
pub struct Line<'a> {
    /// 1-based line number within the stretch.
    pub number: u64,
    /// The event's id, if the line has one.
    pub id: Option<&'a str>,
    /// Its sandbox (empty when the line has none).
    pub resource_id: &'a str,
    /// Its cursor time, µs since the Unix epoch.
    pub cursor_us: Option<i64>,
}

/// Counts and summarises NDJSON fed to it in chunks (see [`read_unit`]).
#[derive(Debug, Default)]
pub struct Summarizer {
    summary: Summary,
    index: std::collections::HashMap<String, usize>,
    last: Option<usize>,
    number: u64,
    /// The start of a line the previous chunk did not finish.
    partial: Vec<u8>,
    /// Per span, its last event's cursor time.
    last_cursor_us: Vec<Option<i64>>,
}

impl Summarizer {
    /// Take a chunk; `visit` sees every complete line.
    pub fn feed(&mut self, chunk: Bytes, mut visit: impl FnMut(&Line<'_>)) {
        let chunk = if self.partial.is_empty() {
            chunk
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(&chunk);
            Bytes::from(joined)
        };
        let mut start = 0usize;
        while let Some(end) = memchr::memchr(b'\n', &chunk[start..]).map(|i| start + i) {
            self.line(chunk.slice(start..end), &mut visit);
            start = end + 1;
        }
        self.partial.extend_from_slice(&chunk[start..]);
    }

    /// The summary (a last line without a line break counts too).
    pub fn finish(mut self) -> Summary {
        self.finish_with(|_| {})
    }

    /// [`Summarizer::finish`], showing the last line to `visit`.
    pub fn finish_with(&mut self, mut visit: impl FnMut(&Line<'_>)) -> Summary {
        if !self.partial.is_empty() {
            let last = Bytes::from(std::mem::take(&mut self.partial));
            self.line(last, &mut visit);
        }
        for (i, us) in std::mem::take(&mut self.last_cursor_us).into_iter().enumerate() {
            if let Some(span) = self.summary.sandboxes.get_mut(i) {
                span.last_cursor = us.map(crate::client::format_time);
            }
        }
        std::mem::take(&mut self.summary)
    }

    fn line(&mut self, line: Bytes, visit: &mut impl FnMut(&Line<'_>)) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.number += 1;
        let number = self.number;
        let summary = &mut self.summary;
        summary.events += 1;
        let event = AuditEvent::from_json(line).ok().filter(|e| !e.id().is_empty());
        let Some(event) = event else {
            summary.unidentified += 1;
            visit(&Line {
                number,
                id: None,
                resource_id: "",
                cursor_us: None,
            });
            return;
        };
        let rid = event.resource_id().unwrap_or("");
        let i = match self.last.filter(|&i| summary.sandboxes[i].resource_id == rid) {
            Some(i) => i,
            None => match self.index.get(rid) {
                Some(&i) => i,
                None => {
                    summary.sandboxes.push(SandboxSpan {
                        resource_id: rid.to_string(),
                        events: 0,
                        first_id: event.id().to_string(),
                        first_cursor: event.cursor_us().map(crate::client::format_time),
                        last_id: String::new(),
                        last_cursor: None,
                    });
                    self.index.insert(rid.to_string(), summary.sandboxes.len() - 1);
                    summary.sandboxes.len() - 1
                }
            },
        };
        self.last = Some(i);
        let span = &mut summary.sandboxes[i];
        span.events += 1;
        span.last_id.clear();
        span.last_id.push_str(event.id());
        // Formatted once, at the end: most lines are not the last.
        if let Some(slot) = self.last_cursor_us.get_mut(i) {
            *slot = event.cursor_us();
        } else {
            self.last_cursor_us.resize(i, None);
            self.last_cursor_us.push(event.cursor_us());
        }
        visit(&Line {
            number,
            id: Some(event.id()),
            resource_id: rid,
            cursor_us: event.cursor_us(),
        });
    }
}

/// The sink-task side of manifests: turns a sink's seals into hashed, summarised stretches.
pub(crate) struct Sealer {
    store: Store,
    pipeline: String,
    sink: String,
    /// How far each unit is sealed as far as this run knows, entries not yet committed included
    /// (the store only knows committed ones).
    ends: HashMap<String, u64>,
}

impl Sealer {
    pub(crate) fn new(store: Store, pipeline: &str, sink: &str) -> Self {
        Sealer {
            store,
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            ends: HashMap::new(),
        }
    }

    /// Read every new stretch `sealed` closes. A stretch that cannot be read is left out with
    /// an error in the log; the unit's next seal (at the latest, the next start) covers it.
    pub(crate) async fn stretches(&mut self, sealed: Vec<Sealed>) -> Vec<Stretch> {
        // Seals of one unit in one call (a restart's seal, then a rotation) start where the
        // unit's last entry ends: keep the furthest, as one stretch.
        let mut furthest: Vec<Sealed> = Vec::with_capacity(sealed.len());
        let mut at: HashMap<String, usize> = HashMap::new();
        for s in sealed {
            match at.get(&s.unit) {
                Some(&i) if furthest[i].end < s.end => furthest[i] = s,
                Some(_) => {}
                None => {
                    at.insert(s.unit.clone(), furthest.len());
                    furthest.push(s);
                }
            }
        }
        let mut work = Vec::new();
        let mut done = Vec::new();
        for s in furthest {
            let start = match self.ends.get(&s.unit) {
                Some(end) => *end,
                None => match self.store.sealed_end(&self.pipeline, &self.sink, &s.unit).await {
                    Ok(end) => end,
                    Err(e) => {
                        tracing::error!(sink = %self.sink, unit = %s.unit, error = %e, "cannot read the manifest's record of a unit; it is entered at its next seal");
                        continue;
                    }
                },
            };
            if s.end < start {
                tracing::error!(sink = %self.sink, unit = %s.unit, sealed_bytes = start, now_bytes = s.end, "archive unit is shorter than its manifest entries say: it was changed outside auditship (auditship verify names it)");
                self.ends.insert(s.unit, start);
                continue;
            }
            if s.end == start {
                self.ends.insert(s.unit, start);
                continue;
            }
            if let Some(p) = s.precomputed.as_ref().filter(|p| p.start == start) {
                // The sink hashed and counted the stretch as it wrote it: no read-back.
                self.ends.insert(s.unit.clone(), s.end);
                done.push(Stretch {
                    unit: s.unit.clone(),
                    offset: start,
                    length: s.end - start,
                    compression: s.compression,
                    sha256: hex(&p.sha256),
                    summary: Summary {
                        events: p.events,
                        unidentified: 0,
                        sandboxes: p.sandboxes.iter().map(span_of).collect(),
                    },
                });
                continue;
            }
            work.push((s, start));
        }
        if work.is_empty() {
            return done;
        }
        let read = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(s, start)| {
                    let r = read_stretch(&s, start);
                    (s.unit, s.end, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sink = %self.sink, error = %e, "reading sealed units failed; they are entered at their next seal");
                return done;
            }
        };
        let mut out = done;
        for (unit, end, r) in read {
            match r {
                Ok(stretch) => {
                    self.ends.insert(unit, end);
                    out.push(stretch);
                }
                Err(e) => {
                    tracing::error!(sink = %self.sink, unit = %unit, error = %e, "cannot read a sealed unit to enter it in the manifest; it is entered at its next seal");
                }
            }
        }
        out
    }
}

/// A sink's span facts as a manifest entry shows them.
fn span_of(f: &auditship_sink::SpanFacts) -> SandboxSpan {
    SandboxSpan {
        resource_id: f.resource_id.to_string(),
        events: f.events,
        first_id: f.first_id.to_string(),
        first_cursor: f.first_cursor_us.map(crate::client::format_time),
        last_id: f.last_id.to_string(),
        last_cursor: f.last_cursor_us.map(crate::client::format_time),
    }
}

/// Read the stretch `[start, s.end)` of a sealed unit.
fn read_stretch(s: &Sealed, start: u64) -> std::io::Result<Stretch> {
    let want = s.end - start;
    let stretch = match &s.content {
        Some(bytes) => {
            let part = usize::try_from(start)
                .ok()
                .zip(usize::try_from(s.end).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(|| std::io::Error::other("the sealed range is outside the unit's bytes"))?;
            Stretch::read(&s.unit, start, part, s.compression)?
        }
        None => {
            let mut file = std::fs::File::open(&s.unit)?;
            file.seek(std::io::SeekFrom::Start(start))?;
            Stretch::read(&s.unit, start, file.take(want), s.compression)?
        }
    };
    if stretch.length != want {
        return Err(std::io::Error::other(format!(
            "expected {want} bytes from offset {start}, found {}; the file was changed outside auditship",
            stretch.length
        )));
    }
    Ok(stretch)
}

/// The checkpointer side of one sink's manifest: the chain's end, the key, and where committed
/// entries go to be published.
pub(crate) struct ChainWriter {
    pub(crate) head: ChainHead,
    pub(crate) key: Option<HmacKey>,
    pub(crate) publish: tokio::sync::mpsc::UnboundedSender<Vec<ManifestLine>>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, rid: &str, at: &str) -> String {
        format!(r#"{{"id":"{id}","resource_id":"{rid}","inserted_at":"{at}","action":"allow"}}"#)
    }

    #[test]
    fn summary_counts_per_sandbox_in_order_across_chunks() {
        let text = [
            line("a", "sb-1", "2026-11-25T10:00:00Z"),
            line("b", "sb-2", "2026-11-25T10:00:01Z"),
            line("c", "sb-1", "2026-11-25T10:00:02Z"),
            r#"{"class_uid":4001}"#.to_string(),
        ]
        .join("\n");
        // Cut the text at every position: the summary must not depend on where chunks end.
        for cut in 0..text.len() {
            let mut seen = Vec::new();
            let mut s = Summarizer::default();
            s.feed(Bytes::copy_from_slice(&text.as_bytes()[..cut]), |l| {
                seen.push((l.number, l.id.map(str::to_string)))
            });
            s.feed(Bytes::copy_from_slice(&text.as_bytes()[cut..]), |l| {
                seen.push((l.number, l.id.map(str::to_string)))
            });
            let s = s.finish_with(|l| seen.push((l.number, l.id.map(str::to_string))));
            assert_eq!((s.events, s.unidentified), (4, 1), "cut at {cut}");
            assert_eq!(s.sandboxes.len(), 2);
            assert_eq!(s.sandboxes[0].resource_id, "sb-1");
            assert_eq!(
                (s.sandboxes[0].first_id.as_str(), s.sandboxes[0].last_id.as_str()),
                ("a", "c")
            );
            assert_eq!(
                s.sandboxes[0].last_cursor.as_deref(),
                Some(
                    crate::client::format_time(crate::client::parse_time("2026-11-25T10:00:02Z").unwrap())
                        .as_str()
                )
            );
            assert_eq!(s.sandboxes[1].events, 1);
            assert_eq!(seen.len(), 4);
            assert_eq!(seen[3], (4, None));
        }
    }

    #[test]
    fn entries_chain_and_hashes_cover_every_field() {
        let mut head = ChainHead::default();
        let key = HmacKey::new(b"0123456789abcdef");
        let bytes = format!("{}\n", line("a", "sb-1", "2026-11-25T10:00:00Z"));
        let s = Stretch::read("a/x.ndjson", 0, bytes.as_bytes(), UnitCompression::None).unwrap();
        assert_eq!(s.sha256, sha256_hex(bytes.as_bytes()));
        assert_eq!(s.length, bytes.len() as u64);
        let first = s.clone().into_entry(&mut head, "p", "archive", Some(&key));
        let second = s.into_entry(&mut head, "p", "archive", Some(&key));
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(first.prev, GENESIS);
        assert_eq!(second.prev, first.hash);
        assert_eq!(second.prev_unit.as_deref(), Some("a/x.ndjson"));
        assert_eq!(first.compute_hash(), first.hash);
        assert_eq!(first.hmac.as_deref(), Some(sign(&key, &first.hash).as_str()));
        // Round trip through the line keeps the hash.
        let back: Entry = serde_json::from_str(&first.to_line()).unwrap();
        assert_eq!(back.compute_hash(), first.hash);
        let mut changed = back.clone();
        changed.events += 1;
        assert_ne!(changed.compute_hash(), first.hash);
        let mut changed = back;
        changed.sandboxes[0].last_id.push('x');
        assert_ne!(changed.compute_hash(), first.hash);
    }

    #[test]
    fn compressed_units_are_hashed_as_stored_and_read_member_by_member() {
        let a = line("a", "sb", "2026-11-25T10:00:00Z");
        let b = line("b", "sb", "2026-11-25T10:00:01Z");
        for (c, fc) in [
            (UnitCompression::Gzip, auditship_sink_file::Compression::Gzip),
            (UnitCompression::Zstd, auditship_sink_file::Compression::Zstd),
        ] {
            let mut bytes = Vec::new();
            for part in [&a, &b] {
                let part = Bytes::from(part.clone());
                bytes.extend(auditship_sink_file::encode_lines(fc, None, &[part]).unwrap());
            }
            assert_eq!(sniff(&bytes), c);
            let mut text = Vec::new();
            let (hash, len) = read_unit(&bytes[..], c, |chunk| text.extend_from_slice(&chunk)).unwrap();
            assert_eq!(text, format!("{a}\n{b}\n").into_bytes());
            assert_eq!((hash, len), (sha256_hex(&bytes), bytes.len() as u64));
            let s = Stretch::read("u", 0, &bytes[..], c).unwrap();
            assert_eq!(
                (s.summary.events, s.summary.sandboxes[0].last_id.as_str()),
                (2, "b")
            );
        }
    }
}

//! The contract between auditship's pipeline and its sinks.
//!
//! A sink receives numbered [`Batch`]es of [`Event`]s, writes them (it may buffer), and on
//! [`Sink::flush`] makes everything written so far durable. Only then does the pipeline count the
//! batches as taken, and only when *every* sink has taken a batch may the checkpoint pass it.
//!
//! Sinks that can make a crash exact (no duplicate after `kill -9`) return [`StateEntry`]s from
//! `flush`: small key/value facts (a file's durable length, say) that the pipeline commits in the
//! same SQLite transaction as the checkpoint. On the next start the sink gets the committed entries
//! back in [`SinkContext::recovered`] and rolls its output back to exactly that point.
//!
//! Errors say whether retrying helps ([`SinkError::is_retryable`]); on a retryable error the
//! pipeline calls [`Sink::reset`], waits, and writes every batch that was not yet flushed again.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

mod archive;
mod component;
mod config;
mod durable;
pub mod template;

pub use archive::{line_too_long, Archive, DirArchive, EXPANSION_FLOOR_BYTES, MAX_EXPANSION, MAX_LINE_BYTES};
pub use component::{decode_component, encode_component, RESERVED_PREFIX};
pub use config::{ArchiveLocation, Field, Interpolate, SinkConfig};
pub use durable::create_dir_all_durable;

/// One audit event as it travels through the pipeline: the raw JSON plus the few fields the
/// pipeline reads. The raw bytes are the event exactly as the API sent it (envelopes removed,
/// line breaks between tokens replaced by spaces so it fits one NDJSON line).
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's JSON object, on one line.
    pub raw: Bytes,
    /// The event id: opaque, never ordered.
    pub id: Arc<str>,
    /// The sandbox this event was tailed for.
    pub resource_id: Arc<str>,
    /// Cursor time (`inserted_at`, else `timestamp`) in microseconds since the Unix epoch.
    pub cursor_us: Option<i64>,
    /// Where the cursor time's text stands in `raw` (byte offsets of the string's content), so a
    /// checkpoint can hand the server back its own spelling of the time.
    pub cursor_span: Option<(u32, u32)>,
    /// Event time (`timestamp`, else `inserted_at`) in microseconds since the Unix epoch.
    pub time_us: Option<i64>,
    /// Per-sandbox sequence number assigned by the source as it emits.
    pub seq: u64,
}

impl Event {
    /// The cursor time exactly as the server wrote it, e.g. `2026-11-25T10:00:00.123456Z`.
    pub fn cursor_text(&self) -> Option<&str> {
        let (start, end) = self.cursor_span?;
        std::str::from_utf8(self.raw.get(start as usize..end as usize)?).ok()
    }
}

/// A numbered group of events handed to every sink of a pipeline.
#[derive(Debug, Default)]
pub struct Batch {
    /// Batch number, increasing by one per batch within one run of a pipeline.
    pub number: u64,
    /// The events, in emission order per sandbox.
    pub events: Vec<Event>,
}

/// A fact a sink wants committed atomically with the checkpoint (e.g. a file's durable length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// A key unique within the sink, e.g. a relative file path.
    pub key: String,
    /// The value, e.g. a length in bytes. [`StateEntry::DELETED`] removes the key instead.
    pub value: i64,
}

impl StateEntry {
    /// The value that deletes its key when committed (returned from [`Sink::flush`], the
    /// deletion commits atomically with the checkpoint, unlike [`StateRegistry::forget`]).
    pub const DELETED: i64 = i64::MIN;

    /// An entry that deletes `key` when committed.
    pub fn deleted(key: impl Into<String>) -> Self {
        StateEntry {
            key: key.into(),
            value: Self::DELETED,
        }
    }

    /// Whether this entry deletes its key.
    pub fn is_deletion(&self) -> bool {
        self.value == Self::DELETED
    }
}

/// Durable registration of sink state outside the checkpoint cadence.
///
/// The file sink registers a file before it creates it, so that after a crash every file it ever
/// wrote is known and can be rolled back to its committed length.
#[async_trait]
pub trait StateRegistry: Send + Sync {
    /// Commit `entries` for this sink now, in one transaction (one fsync however many: a sink
    /// that opens a file for each of a thousand sandboxes registers them together), skipping
    /// each whose key already exists.
    async fn register(&self, entries: Vec<StateEntry>) -> Result<(), SinkError>;

    /// Delete this sink's entries with these keys (state the sink no longer needs).
    async fn forget(&self, keys: Vec<String>) -> Result<(), SinkError>;
}

/// Where a sink sends events it can never deliver (too large for a Kafka broker, say), so that
/// they are kept, with the reason, instead of blocking the pipeline or being lost.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Record `event` and `reason` in the pipeline's dead-letter file; returns once that record
    /// is durable (fsync'd), so the sink may then count the event as handled.
    async fn reject(&self, event: &Event, reason: &str) -> Result<(), SinkError>;
}

/// A closed stretch of an archive unit (a file, an object) that belongs in the tamper-evident
/// manifest: from where the unit's previous seal ended (or its start) to `end`. The pipeline
/// hashes and summarises the stretch, chains the entry to the sink's previous one and commits
/// it with the checkpoint that makes the bytes permanent; the sink's
/// [`ManifestPublisher`] then writes it next to the data.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The unit: a file path as the sink wrote it, or an object key.
    pub unit: String,
    /// The unit's length in bytes at the seal; every byte before it is durable.
    pub end: u64,
    /// How the unit's bytes are encoded.
    pub compression: UnitCompression,
    /// The whole unit's bytes when the sink holds them (an object it just uploaded, sealed from
    /// offset 0); `None`: read the stretch from the file.
    pub content: Option<Bytes>,
    /// What the sink already knows of the stretch it wrote (hash and events, gathered as it
    /// wrote them), so the pipeline need not read it back; used only when its `start` is where
    /// the unit's previous entry ends.
    pub precomputed: Option<Precomputed>,
}

/// A stretch's hash and events, gathered by the sink while writing it.
#[derive(Debug, Clone)]
pub struct Precomputed {
    /// Where the stretch starts in the unit.
    pub start: u64,
    /// SHA-256 of its bytes as stored.
    pub sha256: [u8; 32],
    /// Events in it.
    pub events: u64,
    /// Per sandbox, in order of first appearance.
    pub sandboxes: Vec<SpanFacts>,
}

/// One sandbox's events within a stretch.
#[derive(Debug, Clone)]
pub struct SpanFacts {
    /// The sandbox.
    pub resource_id: Arc<str>,
    /// Its events.
    pub events: u64,
    /// Its first event's id.
    pub first_id: Arc<str>,
    /// That event's cursor time, µs since the Unix epoch.
    pub first_cursor_us: Option<i64>,
    /// Its last event's id.
    pub last_id: Arc<str>,
    /// That event's cursor time.
    pub last_cursor_us: Option<i64>,
}

/// Per-sandbox spans of events, in order of first appearance, gathered one event at a time.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    /// The spans.
    pub spans: Vec<SpanFacts>,
    /// Events added.
    pub events: u64,
    index: std::collections::HashMap<Arc<str>, usize>,
    last: usize,
}

impl Spans {
    /// Count `event` in its sandbox's span.
    pub fn add(&mut self, event: &Event) {
        self.events += 1;
        let hit = self.spans.get(self.last).is_some_and(|s| {
            Arc::ptr_eq(&s.resource_id, &event.resource_id) || s.resource_id == event.resource_id
        });
        if !hit {
            match self.index.get(&event.resource_id) {
                Some(&i) => self.last = i,
                None => {
                    self.spans.push(SpanFacts {
                        resource_id: event.resource_id.clone(),
                        events: 0,
                        first_id: event.id.clone(),
                        first_cursor_us: event.cursor_us,
                        last_id: event.id.clone(),
                        last_cursor_us: event.cursor_us,
                    });
                    self.last = self.spans.len() - 1;
                    self.index.insert(event.resource_id.clone(), self.last);
                }
            }
        }
        if let Some(s) = self.spans.get_mut(self.last) {
            s.events += 1;
            s.last_id = event.id.clone();
            s.last_cursor_us = event.cursor_us;
        }
    }

    /// Count `run`, events of one sandbox in order: the same as [`Spans::add`] for each, with
    /// one lookup and two id copies for the run.
    pub fn add_run(&mut self, run: &[Event]) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return;
        };
        debug_assert!(run.iter().all(|e| e.resource_id == first.resource_id));
        self.add(first);
        if run.len() > 1 {
            self.events += run.len() as u64 - 1;
            if let Some(s) = self.spans.get_mut(self.last) {
                s.events += run.len() as u64 - 1;
                s.last_id = last.id.clone();
                s.last_cursor_us = last.cursor_us;
            }
        }
    }

    /// Append `later` (events after these).
    pub fn extend(&mut self, later: Spans) {
        for s in later.spans {
            match self.index.get(&s.resource_id) {
                Some(&i) => {
                    let mine = &mut self.spans[i];
                    mine.events += s.events;
                    mine.last_id = s.last_id;
                    mine.last_cursor_us = s.last_cursor_us;
                }
                None => {
                    self.index.insert(s.resource_id.clone(), self.spans.len());
                    self.spans.push(s);
                }
            }
        }
        self.events += later.events;
    }
}

/// How an archive unit is encoded: NDJSON as is, or a series of gzip members / zstd frames, or
/// a Parquet file (the Security Lake sink's), which readers of NDJSON do not decode: it is
/// checked by its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitCompression {
    /// Plain NDJSON.
    None,
    /// gzip members.
    Gzip,
    /// zstd frames.
    Zstd,
    /// One Parquet file (rows, not lines: [`UnitCompression::decoder`] refuses it).
    Parquet,
}

impl UnitCompression {
    /// The name manifests use: `none`, `gzip`, `zstd`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitCompression::None => "none",
            UnitCompression::Gzip => "gzip",
            UnitCompression::Zstd => "zstd",
            UnitCompression::Parquet => "parquet",
        }
    }

    /// Whether the unit is lines of JSON (plain or compressed), which readers can decode.
    pub fn is_ndjson(self) -> bool {
        !matches!(self, UnitCompression::Parquet)
    }

    /// Parse [`UnitCompression::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(UnitCompression::None),
            "gzip" => Some(UnitCompression::Gzip),
            "zstd" => Some(UnitCompression::Zstd),
            "parquet" => Some(UnitCompression::Parquet),
            _ => None,
        }
    }
}

/// One committed manifest entry, ready to be written next to its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestLine {
    /// The entry's position in its sink's hash chain (1, 2, …).
    pub seq: u64,
    /// The unit it describes (as in [`Sealed::unit`]).
    pub unit: String,
    /// The entry as one line of JSON, without the newline.
    pub line: String,
}

/// The manifest file name: one per directory (file sink) or key prefix (S3 sink) that holds
/// sealed units. It does not end in `.ndjson`, so globs over an archive's data skip it.
pub const MANIFEST_NAME: &str = "auditship.manifest";

/// A directory that mirrors an archive's directories for its manifests, where files beside the
/// data would be read as data (a Security Lake source's partitions hold Parquet only): a
/// manifest under `ROOT/_auditship/DIR/auditship.manifest/` lists the units in `ROOT/DIR/`.
/// The leading `_` makes Hive, Glue and Athena take it as hidden.
pub const MIRROR_DIR: &str = "_auditship";

/// The directory (file sink) or key prefix (S3 sink) at the archive's root that holds its
/// signed digests, one file or object per digest.
pub const DIGEST_DIR: &str = "auditship.digest";

/// One signed digest, ready to be written at the archive's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFile {
    /// The digest's place in its sink's chain of digests.
    pub seq: u64,
    /// Its path under [`DIGEST_DIR`]: `PIPELINE/SINK/SEQ-END.json` (names encoded as path
    /// components, seq zero-padded, the period's end as `YYYYMMDDTHHMMSSZ`), so that names sort
    /// in chain order and say which period they vouch for.
    pub name: String,
    /// The signed digest (JSON, newline-terminated).
    pub body: String,
}

/// Writes committed manifest entries next to the data they describe, and signed digests at the
/// archive's root.
#[async_trait]
pub trait ManifestPublisher: Send + Sync {
    /// Make `entries` (in chain order) durable beside their units. Must be idempotent: after a
    /// crash the same entries are published again and must not appear twice.
    async fn publish(&self, entries: &[ManifestLine]) -> Result<(), SinkError>;

    /// Make `digest` durable under [`DIGEST_DIR`] at the archive's root (the fixed part of the
    /// sink's path or key template). Create-only: publishing the same digest again is a no-op,
    /// and a different digest under the same name is an error that is not retried (a chain
    /// never forks; the file there was changed, or a second pipeline writes the same archive).
    async fn publish_digest(&self, digest: &DigestFile) -> Result<(), SinkError>;
}

/// What a sink gets when it is built.
#[derive(Clone)]
pub struct SinkContext {
    /// The pipeline's name (for `{pipeline}` templates and logs).
    pub pipeline: String,
    /// The sink's name (the key of its `[sinks.NAME]` table).
    pub sink: String,
    /// State entries committed with the last checkpoint.
    pub recovered: Vec<StateEntry>,
    /// Where to register state that must be durable before writing.
    pub registry: Arc<dyn StateRegistry>,
    /// Where to send events this sink can never deliver.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// Whether the pipeline keeps a tamper-evident manifest of this sink's units
    /// (`[manifest] enabled`). When it does not, the seals a sink reports
    /// ([`Sink::take_sealed`]) are dropped, and it may skip the hashing they would need.
    pub manifest: bool,
}

/// A sink: takes batches, makes them durable on flush.
#[async_trait]
pub trait Sink: Send {
    /// Called once after the sink is built, before the first batch: housekeeping that needs
    /// the state registry.
    async fn prepare(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Take a batch. The sink may buffer; nothing is durable until [`Sink::flush`] returns.
    async fn write(&mut self, batch: Arc<Batch>) -> Result<(), SinkError>;

    /// Make written batches durable and return the state entries that changed since the
    /// previous flush (to be committed with the checkpoint that covers
    /// [`Sink::durable_through`]).
    ///
    /// Most sinks make everything written so far durable. A sink that gathers events into
    /// larger units (S3 objects) may keep some batches pending: it says how far it got through
    /// [`Sink::durable_through`] and when it wants to be flushed again through
    /// [`Sink::flush_deadline`]; [`Sink::close`] makes everything durable.
    async fn flush(&mut self) -> Result<Vec<StateEntry>, SinkError>;

    /// After a flush: every batch numbered up to this is durable. `None` (the default): every
    /// batch written so far is.
    fn durable_through(&self) -> Option<u64> {
        None
    }

    /// When the sink wants [`Sink::flush`] called though no batch arrived (a batch age bound).
    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// Forget everything not yet durable and return to that state, so that every batch after
    /// [`Sink::durable_through`] can be written again after a retryable error.
    async fn reset(&mut self) -> Result<(), SinkError>;

    /// Flush and release resources. Returns the final state entries.
    async fn close(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        self.flush().await
    }

    /// Whether the state entries of a flush describe exactly the batches acknowledged, and no
    /// other (a file's length holds batches up to the acknowledged one and nothing after): then
    /// a checkpoint may only pass a batch this sink acknowledged exactly, or restoring that
    /// state would drop or keep events the checkpoint does not account for. Default: false
    /// (state that is right at any later checkpoint, such as pending-object deletions).
    fn exact_state(&self) -> bool {
        false
    }

    /// After a successful [`Sink::flush`] or [`Sink::close`]: the units (or stretches of them)
    /// closed since the last call, for the manifest. Sinks without archive units (Kafka) keep
    /// the default, none.
    fn take_sealed(&mut self) -> Vec<Sealed> {
        Vec::new()
    }

    /// Events this sink found already delivered and did not send again, since it was built: a
    /// replay after a crash of what it had delivered past the last checkpoint, or messages a
    /// rebuilt client found the destination holding. Served as
    /// `auditship_sink_replays_skipped_total`. Default: 0 (sinks that roll back instead).
    fn replays_skipped(&self) -> u64 {
        0
    }

    /// Where this sink's manifest entries are written; `None`: the sink keeps no manifest.
    fn manifest_publisher(&self) -> Option<Arc<dyn ManifestPublisher>> {
        None
    }
}

/// Errors from sinks. [`SinkError::is_retryable`] tells the pipeline whether to wait and retry
/// (the data stays queued) or stop (the configuration or environment needs a human).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An I/O error that may pass (disk full, a network blip).
    #[error("{context}: {source}")]
    Io {
        /// What the sink was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The sink's configuration cannot work; the message names the fix.
    #[error("{0}")]
    Config(String),
    /// A remote service refused or failed; `retryable` says whether waiting helps.
    #[error("{message}")]
    Remote {
        /// What happened, naming the service.
        message: String,
        /// Whether a retry can help.
        retryable: bool,
    },
}

impl SinkError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            SinkError::Config(_) => false,
            SinkError::Remote { retryable, .. } => *retryable,
        }
    }

    /// Wrap an I/O error with what the sink was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SinkError::Io {
            context: context.into(),
            source,
        }
    }
}

/// In-memory state registry and dead-letter box, and the test services' plumbing (free ports,
/// binaries from the service cache), for sink tests: behind the `testing` feature, so none of
/// it is in a production build.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use crate::{DeadLetters, Event, SinkContext, SinkError, StateEntry, StateRegistry};

    /// A [`StateRegistry`] that keeps its entries in memory.
    #[derive(Debug, Default)]
    pub struct MemRegistry(pub Mutex<Vec<StateEntry>>);

    #[async_trait]
    impl StateRegistry for MemRegistry {
        async fn register(&self, new: Vec<StateEntry>) -> Result<(), SinkError> {
            let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
            for entry in new {
                if !entries.iter().any(|e| e.key == entry.key) {
                    entries.push(entry);
                }
            }
            Ok(())
        }

        async fn forget(&self, keys: Vec<String>) -> Result<(), SinkError> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|e| !keys.contains(&e.key));
            Ok(())
        }
    }

    /// A [`DeadLetters`] box that keeps `(event id, reason)` in memory.
    #[derive(Debug, Default)]
    pub struct MemDeadLetters(pub Mutex<Vec<(String, String)>>);

    #[async_trait]
    impl DeadLetters for MemDeadLetters {
        async fn reject(&self, event: &Event, reason: &str) -> Result<(), SinkError> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((event.id.to_string(), reason.to_string()));
            Ok(())
        }
    }

    /// Where `./scripts/services install` keeps the test services: `$AUDITSHIP_CACHE`, else
    /// `$XDG_CACHE_HOME/auditship`, else `~/.cache/auditship`.
    pub fn service_cache_dir() -> std::path::PathBuf {
        use std::path::PathBuf;
        if let Some(d) = std::env::var_os("AUDITSHIP_CACHE") {
            return PathBuf::from(d);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("auditship")
    }

    /// Find a test service's binary: `$ENV` if set (it must exist), else `cached` if it exists.
    /// `None` when neither: the caller says how to install it.
    pub fn service_binary(env: &str, cached: &std::path::Path) -> Result<Option<std::path::PathBuf>, String> {
        if let Some(p) = std::env::var_os(env) {
            let p = std::path::PathBuf::from(p);
            if p.is_file() {
                return Ok(Some(p));
            }
            return Err(format!("{env}={} is not a file", p.display()));
        }
        Ok(cached.is_file().then(|| cached.to_path_buf()))
    }

    /// A loopback port nothing listens on (at the moment of asking).
    pub fn free_port() -> Result<u16, String> {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))
    }

    /// Wait until something accepts connections on loopback `port`, for at most `within`.
    pub fn wait_listening(port: u16, what: &str, within: std::time::Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(format!(
            "{what} did not listen on port {port} within {} s",
            within.as_secs()
        ))
    }

    /// A context for sink `sink` of pipeline `p`, with in-memory registry and dead letters.
    pub fn context(
        sink: &str,
        recovered: Vec<StateEntry>,
    ) -> (SinkContext, Arc<MemRegistry>, Arc<MemDeadLetters>) {
        let registry = Arc::new(MemRegistry::default());
        let dead = Arc::new(MemDeadLetters::default());
        (
            SinkContext {
                pipeline: "p".into(),
                sink: sink.into(),
                recovered,
                registry: registry.clone(),
                dead_letters: dead.clone(),
                manifest: true,
            },
            registry,
            dead,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_added_by_runs_equal_spans_added_one_by_one() {
        let sandboxes: Vec<Arc<str>> = ["sb-1", "sb-2", "sb-3"].map(Arc::from).to_vec();
        let events: Vec<Event> = [0, 0, 1, 0, 0, 0, 2, 2, 1, 1, 0]
            .iter()
            .enumerate()
            .map(|(i, &s)| Event {
                raw: Bytes::from_static(b"{}"),
                id: Arc::from(format!("e{i}")),
                resource_id: sandboxes[s].clone(),
                cursor_us: Some(i as i64),
                cursor_span: None,
                time_us: None,
                seq: i as u64,
            })
            .collect();
        let mut one = Spans::default();
        events.iter().for_each(|e| one.add(e));
        let mut runs = Spans::default();
        let mut rest = &events[..];
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .position(|e| e.resource_id != first.resource_id)
                .unwrap_or(rest.len());
            runs.add_run(&rest[..n]);
            rest = &rest[n..];
        }
        runs.add_run(&[]);
        assert_eq!(format!("{:?}", one.spans), format!("{:?}", runs.spans));
        assert_eq!((one.events, runs.events), (11, 11));
        assert_eq!(runs.spans[0].events, 6);
        assert_eq!(&*runs.spans[0].last_id, "e10");
    }

    #[test]
    fn permission_denied_is_not_retryable_but_disk_full_is() {
        let denied = SinkError::io("open", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!denied.is_retryable());
        let full = SinkError::io("write", std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(full.is_retryable());
        assert!(!SinkError::Config("x".into()).is_retryable());
    }
}

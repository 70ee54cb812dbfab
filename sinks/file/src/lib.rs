//! auditship's file sink: NDJSON archives, one event per line, exactly as received.
//!
//! # Crash exactness
//! Every file the sink appends to is *registered* (committed to the state store with its current
//! length) before the first byte is written. On each flush the sink writes, fsyncs and reports the
//! new durable length of every file it touched; the pipeline commits those lengths in the same
//! SQLite transaction as the checkpoint. A large flush (`sync_overlap_min_bytes`) leaves its
//! fsync running while the next flush writes: its lengths are reported, and its batches
//! acknowledged, only once that fsync is done (see [`FileSink::flush`](Sink::flush)). On start,
//! every registered file is truncated back to its committed length, which drops exactly the
//! bytes whose checkpoint never committed (a torn last line included). Compressed files are
//! flushed as independent gzip members / zstd frames, so every committed length is a valid end
//! of the stream.
//!
//! # Files
//! The `path` template picks a file per event. Rotation (by size or age) moves a template path to
//! its next *generation*: `2026-11-25.ndjson`, then `2026-11-25.1.ndjson`, `2026-11-25.2.ndjson`.
//! Files are created with mode 0640 and directories with 0750.
//!
//! # Seals
//! A file is *sealed* (reported through [`Sink::take_sealed`] for the pipeline's tamper-evident
//! manifest) when it rotates, when it is closed because too many are open or it was idle for
//! `seal_idle_ms`, when the sink closes, and at start for files a crash left unsealed. A file
//! written again after a seal gets another manifest entry for the stretch after it.
//! [`FileManifests`] writes the entries to an `auditship.manifest` file in each directory.

mod config;
mod template;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditship_sink::{
    Batch, ManifestLine, ManifestPublisher, Precomputed, Sealed, Sink, SinkContext, SinkError, Spans,
    StateEntry, UnitCompression, MANIFEST_NAME,
};
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use template::{PathTemplate, Values, Var};

/// Configuration of a `type = "file"` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Path template, relative to the working directory: `{resource_id}`, `{date}` (UTC date of
    /// the event) and `{pipeline}` are replaced; values are made into safe path components.
    pub path: String,
    /// Compression of the files: `none` (default), `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Compression level (gzip 0–9, zstd 1–22). Default: 6 for gzip, 3 for zstd.
    #[serde(default)]
    pub compression_level: Option<u32>,
    /// Start a new generation of a file once it holds this many bytes (on disk).
    #[serde(default)]
    pub rotate_max_bytes: Option<u64>,
    /// Start a new generation of a file once it has been open this long.
    #[serde(default)]
    pub rotate_max_age_ms: Option<u64>,
    /// How many files may stay open at once; the least recently written are closed beyond it.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Close and seal (enter in the manifest) a file that has not been written this long, so
    /// yesterday's files of a long run are verifiable without rotation settings. Writing it
    /// again later continues it, with a new manifest entry for the new stretch.
    #[serde(default = "default_seal_idle_ms")]
    pub seal_idle_ms: u64,
    /// A flush of at least this many bytes (before compression) is written while the previous
    /// flush's fsync still runs, and reported durable at the flush after it; a smaller one is
    /// written and synced in one go. Overlapping keeps both the CPU and the disk busy when the
    /// sink is what holds a pipeline back; under a light load it would only mean more, smaller
    /// fsyncs. `0`: every flush overlaps.
    #[serde(default = "default_sync_overlap_min_bytes")]
    pub sync_overlap_min_bytes: u64,
}

/// Ten minutes: a quiet sandbox's file is not closed and reopened all day long, and a day's
/// file is sealed soon after the day ends.
fn default_seal_idle_ms() -> u64 {
    600_000
}

/// 4 MiB: a few thousand events, far above a quiet fleet's flush and far below a busy one's.
fn default_sync_overlap_min_bytes() -> u64 {
    4 << 20
}

/// 256 open files: a few hundred sandboxes per day fit without reopening, far below `ulimit -n`.
fn default_max_open_files() -> usize {
    256
}

/// File compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain NDJSON.
    #[default]
    None,
    /// gzip, one member per flush.
    Gzip,
    /// zstd, one frame per flush.
    Zstd,
}

impl Compression {
    /// The manifest's name for it.
    pub fn unit(self) -> UnitCompression {
        match self {
            Compression::None => UnitCompression::None,
            Compression::Gzip => UnitCompression::Gzip,
            Compression::Zstd => UnitCompression::Zstd,
        }
    }
}

/// Most lines one `writev` takes (each line is two slices: the event and its newline; Linux
/// takes at most 1,024).
const LINES_PER_WRITE: usize = 512;

/// Append `lines` (events' bytes, each followed by a newline) to `file` with vectored writes,
/// straight from the events' buffers, and feed the same bytes to `hasher`. Returns the bytes
/// written.
fn write_lines(file: &mut File, lines: &[Bytes], mut hasher: Option<&mut Sha256>) -> std::io::Result<u64> {
    let mut written = 0u64;
    for group in lines.chunks(LINES_PER_WRITE) {
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(group.len() * 2);
        for line in group {
            slices.push(std::io::IoSlice::new(line));
            slices.push(std::io::IoSlice::new(b"\n"));
            written += line.len() as u64 + 1;
            if let Some(h) = hasher.as_mut() {
                h.update(line);
                h.update(b"\n");
            }
        }
        let mut rest: &mut [std::io::IoSlice<'_>] = &mut slices;
        while !rest.is_empty() {
            match file.write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(written)
}

/// How much text a compressor is handed at a time.
const ENCODER_CHUNK_BYTES: usize = 64 * 1024;

/// Encode `lines` (events' bytes, each followed by a newline) as one unit of a file: as is, or
/// one gzip member / zstd frame that a reader can decode on its own (so a file truncated
/// between units stays valid). The encoder is fed line by line, from the events' own buffers.
/// `level`: gzip 0–9 (default 6), zstd 1–22 (default 3).
pub fn encode_lines(
    compression: Compression,
    level: Option<u32>,
    lines: &[Bytes],
) -> Result<Vec<u8>, std::io::Error> {
    let size: usize = lines.iter().map(|l| l.len() + 1).sum();
    let feed = |w: &mut dyn std::io::Write| -> std::io::Result<()> {
        for line in lines {
            w.write_all(line)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    };
    // A compressor pays a call per write: fed two writes per line, 1,000 simulator events took
    // gzip 2.52 ms and zstd 0.255 ms; through a 64 KiB buffer, 1.81 and 0.237 (`hot_paths`).
    let buffered = |w: &mut dyn std::io::Write| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(ENCODER_CHUNK_BYTES, w);
        feed(&mut w)?;
        w.flush()
    };
    match compression {
        Compression::None => {
            let mut out = Vec::with_capacity(size);
            feed(&mut out)?;
            Ok(out)
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(size / 4),
                flate2::Compression::new(level.unwrap_or(6)),
            );
            buffered(&mut enc)?;
            enc.finish()
        }
        Compression::Zstd => {
            let mut enc =
                zstd::stream::write::Encoder::new(Vec::with_capacity(size / 4), level.unwrap_or(3) as i32)?;
            enc.set_pledged_src_size(Some(size as u64))?;
            buffered(&mut enc)?;
            enc.finish()
        }
    }
}

impl FileSinkConfig {
    /// Check the configuration without touching the disk.
    pub fn validate(&self) -> Result<PathTemplate, String> {
        let template = PathTemplate::parse(&self.path)?;
        if let Some(level) = self.compression_level {
            let ok = match self.compression {
                Compression::None => false,
                Compression::Gzip => level <= 9,
                Compression::Zstd => (1..=22).contains(&level),
            };
            if !ok {
                return Err(format!(
                    "compression_level {level} does not fit compression {:?}; gzip takes 0-9, zstd 1-22, none takes no level",
                    self.compression
                ));
            }
        }
        if self.seal_idle_ms == 0 {
            return Err("seal_idle_ms must be greater than 0".into());
        }
        if self.rotate_max_bytes == Some(0) || self.rotate_max_age_ms == Some(0) {
            return Err("rotate_max_bytes and rotate_max_age_ms must be greater than 0 (leave them out to never rotate)".into());
        }
        if self.max_open_files == 0 {
            return Err("max_open_files must be at least 1".into());
        }
        Ok(template)
    }
}

/// One template path and its current generation.
struct Slot {
    generation: u32,
    /// The current generation's relative path.
    path: String,
    /// Bytes committed (or found on disk, for a file that predates the sink's state).
    durable_len: u64,
    /// Lines written since the last flush: the events' own buffers (no copy; each line is
    /// followed by a newline when written).
    pending: Vec<Bytes>,
    file: Option<File>,
    opened_at: Instant,
    /// Monotonic counter of the last write, for closing the least recently used file.
    last_write: u64,
    /// When the slot was last written (per batch), for sealing idle files.
    last_write_at: Instant,
    /// The file was created by this process and its directory entry is not yet fsync'd.
    new_file: bool,
    /// Rotation was decided at the last flush; the next write opens the next generation.
    rotate: bool,
    /// The durable stretch written since the last seal, hashed and counted as written.
    stretch: Stretch,
    /// Events in `pending`, by sandbox.
    pending_spans: Spans,
    /// Written by a round whose fsync is still running: the file's length and the stretch's
    /// hash after those bytes (see [`Round`]). `None`: nothing is in flight.
    ahead: Option<(u64, Option<Sha256>)>,
}

/// One flush's writes, made durable by an fsync that runs while the next flush writes (see
/// [`FileSink::flush`]). Until it completes, none of its lengths move.
struct Round {
    /// Per slot written: its key, the file's length after the round, the stretch's hash after
    /// it, and the round's events by sandbox.
    lens: Vec<(String, u64, Option<Sha256>, Spans)>,
    /// The last batch the round holds.
    through: u64,
}

/// What a round's fsync covers: a handle on each file it wrote (with its path, for errors), and
/// the directories of the files it created.
struct ToSync {
    files: Vec<(File, String)>,
    dirs: Vec<PathBuf>,
}

/// A round and its fsync, running off the async workers.
struct InFlight {
    round: Round,
    /// The fsync's outcome; closed without one if the fsync thread panicked.
    done: tokio::sync::oneshot::Receiver<Result<(), SinkError>>,
}

impl InFlight {
    /// Start `round`'s fsync.
    fn start(round: Round, to_sync: ToSync) -> InFlight {
        let (tx, done) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(sync_round(to_sync));
        });
        InFlight { round, done }
    }
}

/// The outcome of a round's fsync, as received.
fn synced(
    outcome: Result<Result<(), SinkError>, tokio::sync::oneshot::error::RecvError>,
) -> Result<(), SinkError> {
    outcome.map_err(|_| SinkError::Remote {
        message: "the file sink's fsync thread failed".into(),
        retryable: false,
    })?
}

/// The stretch of a file written since its last seal: where it starts, the hash of its bytes
/// and its events. `None` hash: something outside the sink changed the file, so the pipeline
/// reads the stretch back instead.
struct Stretch {
    start: u64,
    hasher: Option<Sha256>,
    spans: Spans,
}

impl Stretch {
    /// A stretch from `start`, hashed as it is written when `hash` (the pipeline keeps a
    /// manifest of this sink: [`SinkContext::manifest`]).
    fn at(start: u64, hash: bool) -> Self {
        Stretch {
            start,
            hasher: hash.then(Sha256::new),
            spans: Spans::default(),
        }
    }
}

/// The file sink. See the crate documentation for its guarantees.
pub struct FileSink {
    inner: Option<Inner>,
    ctx: SinkContext,
    /// Registered files the sink no longer needs to track (see [`IDLE_AFTER`]).
    prunable: Vec<String>,
    /// The last round, written, its fsync running.
    in_flight: Option<InFlight>,
    /// Every batch up to this one is durable.
    durable: u64,
}

/// A registered file untouched this long, whose length is its committed length, is forgotten:
/// the state table then holds only files that may still be written, so it (and the start-up
/// check) does not grow with the archive's age. Forgetting is safe because a file that is not
/// registered is taken as it is: if it is written again it is registered anew at its current
/// length, which is exactly its committed content.
pub const IDLE_AFTER: Duration = Duration::from_secs(48 * 3600);

struct Inner {
    config: FileSinkConfig,
    template: PathTemplate,
    pipeline: String,
    slots: HashMap<String, Slot>,
    /// The durable length of every file this sink tracks, by path: committed lengths from the
    /// last run, registrations, and every flush since.
    known: HashMap<String, u64>,
    /// Cache of rendered template paths, by (sandbox, day number).
    rendered: HashMap<(Arc<str>, i64), Arc<str>>,
    clock: u64,
    /// Seals not yet taken by the pipeline.
    sealed: Vec<Sealed>,
    /// The number of the last batch written.
    last_batch: u64,
    /// Bytes of the events pending (before compression).
    pending_bytes: u64,
    /// When to look for idle files next, though nothing is written (see `seal_idle_ms`).
    idle_check_at: Instant,
    /// Whether to hash what is written for the seals: only when the pipeline keeps a manifest
    /// of this sink ([`SinkContext::manifest`]). SHA-256 is the largest single cost of writing.
    hash: bool,
}

impl FileSink {
    /// Build the sink and roll back every file it wrote to its committed length.
    pub fn open(config: FileSinkConfig, ctx: SinkContext) -> Result<Self, SinkError> {
        let template = config.validate().map_err(SinkError::Config)?;
        let idle_check_at = Instant::now() + idle_check_every(&config);
        let mut recovered = HashMap::new();
        let mut prunable = Vec::new();
        // Every file the last run left behind is sealed through its committed length; the
        // pipeline skips those whose manifest already reaches it.
        let mut sealed = Vec::new();
        for entry in &ctx.recovered {
            let len = u64::try_from(entry.value).unwrap_or(0);
            let state = roll_back(Path::new(&entry.key), len)?;
            if len > 0 && !matches!(state, Recovered::Missing) {
                sealed.push(Sealed {
                    unit: entry.key.clone(),
                    end: len,
                    compression: config.compression.unit(),
                    content: None,
                    precomputed: None,
                });
            }
            match state {
                Recovered::Missing | Recovered::Idle => prunable.push(entry.key.clone()),
                Recovered::Active => {
                    recovered.insert(entry.key.clone(), len);
                }
            }
        }
        Ok(FileSink {
            inner: Some(Inner {
                config,
                template,
                pipeline: ctx.pipeline.clone(),
                slots: HashMap::new(),
                known: recovered,
                rendered: HashMap::new(),
                clock: 0,
                sealed,
                last_batch: 0,
                pending_bytes: 0,
                idle_check_at,
                hash: ctx.manifest,
            }),
            ctx,
            prunable,
            in_flight: None,
            durable: 0,
        })
    }

    fn inner(&mut self) -> Result<&mut Inner, SinkError> {
        self.inner
            .as_mut()
            .ok_or_else(|| SinkError::Config("file sink used after a failed flush task".into()))
    }

    /// Run blocking file work off the async workers.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Inner) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| SinkError::Config("file sink used after a failed flush task".into()))?;
        let (inner, result) = tokio::task::spawn_blocking(move || {
            let r = f(&mut inner);
            (inner, r)
        })
        .await
        .map_err(|e| SinkError::Remote {
            message: format!("file sink flush task failed: {e}"),
            retryable: false,
        })?;
        self.inner = Some(inner);
        result
    }
}

impl FileSink {
    /// Wait for the round in flight, if any, and move its lengths: what it made durable.
    async fn land(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let Some(InFlight { round, done }) = self.in_flight.take() else {
            return Ok(Vec::new());
        };
        synced(done.await)?;
        self.durable = round.through;
        let inner = self.inner()?;
        let entries = inner.apply(round);
        inner.decide_rotation();
        inner.close_idle();
        Ok(entries)
    }
}

/// What start-up found of a registered file.
enum Recovered {
    /// Gone (moved or deleted by someone else).
    Missing,
    /// Untouched for [`IDLE_AFTER`] and exactly its committed length.
    Idle,
    /// Anything else: keep tracking it.
    Active,
}

/// Truncate `path` to `len` if it is longer; a shorter file means data was removed by someone
/// else, which we report loudly but cannot repair.
fn roll_back(path: &Path, len: u64) -> Result<Recovered, SinkError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if len > 0 {
                tracing::error!(path = %path.display(), committed_bytes = len, "archive file is missing although its checkpoint says it holds data; no longer tracking it");
            }
            return Ok(Recovered::Missing);
        }
        Err(e) => {
            return Err(SinkError::io(
                format!("reading {} for recovery", path.display()),
                e,
            ))
        }
    };
    let actual = meta.len();
    if actual > len {
        tracing::info!(path = %path.display(), dropped_bytes = actual - len, "rolling back bytes written after the last checkpoint");
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| file.set_len(len).and_then(|_| file.sync_all()))
            .map_err(|e| SinkError::io(format!("truncating {}", path.display()), e))?;
        return Ok(Recovered::Active);
    }
    if actual < len {
        tracing::error!(path = %path.display(), committed_bytes = len, actual_bytes = actual, "archive file is shorter than its checkpoint says: it was changed outside auditship");
        return Ok(Recovered::Active);
    }
    let idle = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age >= IDLE_AFTER);
    Ok(if idle { Recovered::Idle } else { Recovered::Active })
}

/// The relative path of generation `generation` of a template path: the number goes before the
/// first extension, `2026-11-25.ndjson.gz` → `2026-11-25.1.ndjson.gz`.
fn generation_path(rendered: &str, generation: u32) -> String {
    if generation == 0 {
        return rendered.to_string();
    }
    let name_start = rendered.rfind('/').map_or(0, |i| i + 1);
    let name = &rendered[name_start..];
    match name[1.min(name.len())..].find('.') {
        Some(dot) => {
            let at = name_start + 1 + dot;
            format!("{}.{generation}{}", &rendered[..at], &rendered[at..])
        }
        None => format!("{rendered}.{generation}"),
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

fn format_day(day: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(day.saturating_mul(MICROS_PER_DAY)) {
        Some(t) if day != i64::MIN => t.format("%Y-%m-%d").to_string(),
        _ => "undated".to_string(),
    }
}

impl Inner {
    fn render(&mut self, resource_id: &Arc<str>, time_us: Option<i64>) -> Arc<str> {
        let day = time_us.map_or(i64::MIN, |t| t.div_euclid(MICROS_PER_DAY));
        if let Some(p) = self.rendered.get(&(resource_id.clone(), day)) {
            return p.clone();
        }
        let date = format_day(day);
        let path: Arc<str> = self
            .template
            .render(&Values {
                resource_id,
                date: &date,
                pipeline: &self.pipeline,
            })
            .into();
        if self.rendered.len() > 65_536 {
            self.rendered.clear();
        }
        self.rendered.insert((resource_id.clone(), day), path.clone());
        path
    }

    /// Write every pending buffer and fsync, taking in `in_flight`, the round whose fsync is
    /// running (if any): everything written is durable when it returns. All or nothing: on
    /// error no durable length moves (not even the round in flight's), and [`Inner::reset`]
    /// truncates whatever was written since the last flush that returned.
    fn flush(&mut self, in_flight: Option<InFlight>) -> Result<Vec<StateEntry>, SinkError> {
        self.pending_bytes = 0;
        let mut round = Round {
            lens: Vec::new(),
            through: self.last_batch,
        };
        let mut dirs_to_sync: Vec<PathBuf> = Vec::new();
        // Files this flush wrote and then closed to stay within `max_open_files`.
        let mut closed: Vec<String> = Vec::new();
        let keys: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.pending.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        // In chunks of `max_open_files`: write and fsync a chunk, close what exceeds the limit,
        // go on. A flush over thousands of files stays within the open-files limit.
        for chunk in keys.chunks(self.config.max_open_files.max(1)) {
            for key in chunk {
                let Some(slot) = self.slots.get_mut(key) else {
                    continue;
                };
                round
                    .lens
                    .push(write_pending(key, slot, &self.config, &mut dirs_to_sync)?);
            }
            let to_sync: Vec<(&File, &str, bool)> = chunk
                .iter()
                .filter_map(|key| self.slots.get(key))
                .filter_map(|slot| slot.file.as_ref().map(|f| (f, slot.path.as_str(), false)))
                .collect();
            sync_all_parallel(&to_sync)?;
            self.close_idle();
            // Still over the limit: close this chunk's files, synced already. Their seals wait
            // until their lengths move below; sealed now, a seal would end before this
            // flush's bytes while the stretch's hash went on through them.
            let mut open = self.slots.values().filter(|s| s.file.is_some()).count();
            for key in chunk {
                if open <= self.config.max_open_files {
                    break;
                }
                if let Some(slot) = self.slots.get_mut(key) {
                    if slot.file.take().is_some() {
                        open -= 1;
                        closed.push(key.clone());
                    }
                }
            }
        }
        // New files' directory entries, with a full fsync of each directory.
        sync_dirs(&mut dirs_to_sync)?;
        // Everything is durable: now, and only now, move the lengths. The round in flight
        // first: its bytes come before this flush's in the same files.
        let mut entries = Vec::new();
        if let Some(InFlight { round, done }) = in_flight {
            synced(done.blocking_recv())?;
            entries = self.apply(round);
        }
        entries.extend(self.apply(round));
        let (compression, hash) = (self.config.compression.unit(), self.hash);
        for key in closed {
            if let Some(slot) = self.slots.get_mut(&key) {
                if slot.file.is_none() && slot.stretch.start < slot.durable_len {
                    self.sealed.push(seal(slot, compression, hash));
                }
            }
        }
        self.decide_rotation();
        self.close_idle();
        Ok(entries)
    }

    /// Write every pending buffer without an fsync: the round [`FileSink::flush`] makes durable
    /// while the next one is written. No length moves until [`Inner::apply`]. Returns the
    /// round and what its fsync must cover.
    fn write_round(&mut self) -> Result<(Round, ToSync), SinkError> {
        self.pending_bytes = 0;
        let mut round = Round {
            lens: Vec::new(),
            through: self.last_batch,
        };
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for (key, slot) in self.slots.iter_mut() {
            if slot.pending.is_empty() {
                continue;
            }
            round
                .lens
                .push(write_pending(key, slot, &self.config, &mut dirs)?);
            if let Some(file) = slot.file.as_ref() {
                let handle = file
                    .try_clone()
                    .map_err(|e| SinkError::io(format!("opening {} for its fsync", slot.path), e))?;
                files.push((handle, slot.path.clone()));
            }
        }
        Ok((round, ToSync { files, dirs }))
    }

    /// A round's fsync succeeded: move its lengths, and return them as state entries.
    fn apply(&mut self, round: Round) -> Vec<StateEntry> {
        let mut entries = Vec::with_capacity(round.lens.len());
        for (key, len, hashed, spans) in round.lens {
            // A slot with bytes in flight is neither rotated nor forgotten, so it is still there.
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            slot.durable_len = len;
            slot.stretch.hasher = hashed;
            slot.stretch.spans.extend(spans);
            slot.new_file = false;
            if slot.ahead.as_ref().is_some_and(|(ahead, _)| *ahead == len) {
                slot.ahead = None;
            }
            self.known.insert(slot.path.clone(), len);
            entries.push(StateEntry {
                key: slot.path.clone(),
                value: i64::try_from(len).unwrap_or(i64::MAX),
            });
        }
        entries
    }

    /// Whether a file is due to rotate while it has bytes in flight or pending: rotation waits
    /// for a flush that leaves nothing in flight.
    fn rotation_waits(&self) -> bool {
        self.slots
            .values()
            .any(|s| (s.ahead.is_some() || !s.pending.is_empty()) && self.rotation_due(s))
    }

    /// Whether `slot`'s file is big or old enough to rotate (counting bytes in flight).
    fn rotation_due(&self, slot: &Slot) -> bool {
        let len = slot.ahead.as_ref().map_or(slot.durable_len, |(len, _)| *len);
        let too_big = self.config.rotate_max_bytes.is_some_and(|m| len >= m);
        let too_old = self
            .config
            .rotate_max_age_ms
            .is_some_and(|m| slot.file.is_some() && slot.opened_at.elapsed() >= Duration::from_millis(m));
        !slot.rotate && len > 0 && (too_big || too_old)
    }

    /// Rotate the files due to, and seal those idle for `seal_idle_ms`. A file with bytes
    /// pending or in flight waits: its seal must end where its durable bytes do.
    fn decide_rotation(&mut self) {
        let idle = Duration::from_millis(self.config.seal_idle_ms);
        let (compression, hash) = (self.config.compression.unit(), self.hash);
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.ahead.is_none() && s.pending.is_empty() && self.rotation_due(s))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.rotate = true;
                slot.file = None;
                self.sealed.push(seal(slot, compression, hash));
            }
        }
        for slot in self.slots.values_mut() {
            if slot.file.is_some()
                && slot.ahead.is_none()
                && slot.pending.is_empty()
                && slot.last_write_at.elapsed() >= idle
            {
                slot.file = None;
                self.sealed.push(seal(slot, compression, hash));
            }
        }
    }

    /// Seal every file written this run (the sink is closing).
    fn seal_all(&mut self) {
        let (compression, hash) = (self.config.compression.unit(), self.hash);
        for slot in self.slots.values_mut() {
            slot.file = None;
            if slot.durable_len > 0 && slot.stretch.start < slot.durable_len {
                self.sealed.push(seal(slot, compression, hash));
            }
        }
    }

    fn close_idle(&mut self) {
        let open = self.slots.values().filter(|s| s.file.is_some()).count();
        if open <= self.config.max_open_files {
            return;
        }
        // Only a file whose bytes are all durable is closed and sealed here: one with bytes in
        // flight stays open until they land (at most one round more), and one with bytes
        // pending until a flush writes them (a flush over more files than may stay open
        // closes its own files as it goes).
        let mut by_age: Vec<(u64, String)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.file.is_some() && s.ahead.is_none() && s.pending.is_empty())
            .map(|(k, s)| (s.last_write, k.clone()))
            .collect();
        by_age.sort();
        let (compression, hash) = (self.config.compression.unit(), self.hash);
        for (_, key) in by_age.into_iter().take(open - self.config.max_open_files) {
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.file = None;
                if slot.durable_len > 0 {
                    self.sealed.push(seal(slot, compression, hash));
                }
                // A closed slot keeps no buffer: it costs a few dozen bytes, so many can stay
                // and a busy fleet does not re-create (and stat) its slots on every batch.
                if slot.pending.is_empty() {
                    slot.pending = Vec::new();
                }
            }
        }
        // Forget slots that are closed and idle so a long run does not grow without bound.
        if self.slots.len() > self.config.max_open_files * 64 {
            self.slots.retain(|_, s| {
                s.file.is_some()
                    || !s.pending.is_empty()
                    || s.ahead.is_some()
                    || s.rotate
                    || s.stretch.start < s.durable_len
            });
        }
    }

    fn reset(&mut self) -> Result<(), SinkError> {
        self.pending_bytes = 0;
        for slot in self.slots.values_mut() {
            slot.pending.clear();
            slot.pending_spans = Spans::default();
            slot.ahead = None;
            if slot.file.take().is_some() || Path::new(&slot.path).exists() {
                roll_back(Path::new(&slot.path), slot.durable_len)?;
            }
        }
        Ok(())
    }
}

/// How often a quiet sink looks for idle files: a quarter of `seal_idle_ms`, so a file is sealed
/// at most a quarter late.
fn idle_check_every(config: &FileSinkConfig) -> Duration {
    Duration::from_millis((config.seal_idle_ms / 4).max(10))
}

/// A seal of `slot`'s file through its durable length, with what the sink gathered of the
/// stretch; the next stretch starts there.
fn seal(slot: &mut Slot, compression: UnitCompression, hash: bool) -> Sealed {
    let stretch = std::mem::replace(&mut slot.stretch, Stretch::at(slot.durable_len, hash));
    let precomputed = stretch.hasher.map(|h| Precomputed {
        start: stretch.start,
        sha256: h.finalize().into(),
        events: stretch.spans.events,
        sandboxes: stretch.spans.spans,
    });
    Sealed {
        unit: slot.path.clone(),
        end: slot.durable_len,
        compression,
        content: None,
        precomputed,
    }
}

/// Write `slot`'s pending lines (see [`write_slot`]): they are in flight until their round is
/// applied ([`Inner::apply`]). Returns the slot's entry in the round.
fn write_pending(
    key: &str,
    slot: &mut Slot,
    config: &FileSinkConfig,
    dirs: &mut Vec<PathBuf>,
) -> Result<(String, u64, Option<Sha256>, Spans), SinkError> {
    let (len, hashed) = write_slot(slot, config, dirs)?;
    slot.pending.clear();
    slot.ahead = Some((len, hashed.clone()));
    Ok((
        key.to_string(),
        len,
        hashed,
        std::mem::take(&mut slot.pending_spans),
    ))
}

/// Append `slot`'s pending lines to its file (opening it if needed), after the bytes already in
/// flight. Returns the file's length after them and the stretch's hash through them; a created
/// file's directory goes to `dirs`.
fn write_slot(
    slot: &mut Slot,
    config: &FileSinkConfig,
    dirs: &mut Vec<PathBuf>,
) -> Result<(u64, Option<Sha256>), SinkError> {
    let (compression, level) = (config.compression, config.compression_level);
    // Plain NDJSON is written straight from the events' buffers, not copied first.
    let compressed = match compression {
        Compression::None => None,
        _ => Some(
            encode_lines(compression, level, &slot.pending)
                .map_err(|e| SinkError::io(format!("compressing for {}", slot.path), e))?,
        ),
    };
    if slot.file.is_none() {
        // A closed slot has nothing in flight, so `durable_len` is where its file ends.
        let (file, created, len) = open_for_append(Path::new(&slot.path), slot.durable_len)?;
        if len < slot.durable_len {
            // Moved away, compressed or truncated by someone else since we last
            // wrote: continue from what is there, so the committed length stays true.
            tracing::warn!(path = %slot.path, committed_bytes = slot.durable_len, actual_bytes = len, "archive file is shorter than committed (changed outside auditship); appending after its current end");
            slot.durable_len = len;
            // What was hashed is gone: the next seal reads the file back.
            slot.stretch.hasher = None;
        }
        slot.file = Some(file);
        slot.new_file = created;
        slot.opened_at = Instant::now();
    }
    let (start, mut hashed) = match &slot.ahead {
        Some((len, hasher)) => (*len, hasher.clone()),
        None => (slot.durable_len, slot.stretch.hasher.clone()),
    };
    let Some(file) = slot.file.as_mut() else {
        return Ok((start, hashed));
    };
    let written = match &compressed {
        Some(encoded) => {
            file.write_all(encoded)
                .map_err(|e| SinkError::io(format!("writing {}", slot.path), e))?;
            if let Some(h) = hashed.as_mut() {
                h.update(encoded);
            }
            encoded.len() as u64
        }
        None => write_lines(file, &slot.pending, hashed.as_mut())
            .map_err(|e| SinkError::io(format!("writing {}", slot.path), e))?,
    };
    if slot.new_file {
        if let Some(dir) = Path::new(&slot.path).parent() {
            dirs.push(dir.to_path_buf());
        }
    }
    Ok((start + written, hashed))
}

/// fsync a round's files, then the directories of the files it created (see
/// [`sync_all_parallel`]).
fn sync_round(ToSync { files, mut dirs }: ToSync) -> Result<(), SinkError> {
    let refs: Vec<(&File, &str, bool)> = files.iter().map(|(f, p)| (f, p.as_str(), false)).collect();
    sync_all_parallel(&refs)?;
    sync_dirs(&mut dirs)
}

/// fsync each directory once (its new entries), in full.
fn sync_dirs(dirs: &mut Vec<PathBuf>) -> Result<(), SinkError> {
    dirs.sort();
    dirs.dedup();
    let mut opened: Vec<File> = Vec::new();
    for dir in dirs.iter() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir.as_path()
        };
        opened.push(
            File::open(dir).map_err(|e| SinkError::io(format!("opening directory {}", dir.display()), e))?,
        );
    }
    let refs: Vec<(&File, &str, bool)> = opened.iter().map(|d| (d, "a directory", true)).collect();
    sync_all_parallel(&refs)
}

/// fsync every file, several at a time. With a file per sandbox a flush can touch thousands of
/// files; one after the other, each waits for its own journal commit, while concurrent fsyncs
/// share commits (ext4, xfs). Measured on this project's 2-core VM with 2,000 files per flush:
/// see the closing note of the change that added this.
fn sync_all_parallel(files: &[(&File, &str, bool)]) -> Result<(), SinkError> {
    const THREADS: usize = 16;
    let sync = |(f, what, full): &(&File, &str, bool)| {
        let r = if *full { f.sync_all() } else { f.sync_data() };
        r.map_err(|e| SinkError::io(format!("syncing {what}"), e))
    };
    if files.len() <= 2 {
        return files.iter().try_for_each(sync);
    }
    let chunk = files.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(sync)))
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(result) => result?,
                Err(_) => {
                    return Err(SinkError::Remote {
                        message: "an fsync thread panicked".into(),
                        retryable: true,
                    })
                }
            }
        }
        Ok(())
    })
}

/// Open `path` for appending at `expected_len`, creating it (and its directories) if needed.
/// Returns the file, whether it was created, and its length after any truncation.
fn open_for_append(path: &Path, expected_len: u64) -> Result<(File, bool, u64), SinkError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| SinkError::io(format!("creating directory {}", dir.display()), e))?;
        }
    }
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| SinkError::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| SinkError::io(format!("reading {}", path.display()), e))?
        .len();
    if len > expected_len {
        // Bytes past the durable length were never committed (an earlier failed attempt).
        file.set_len(expected_len)
            .map_err(|e| SinkError::io(format!("truncating {}", path.display()), e))?;
        return Ok((file, !existed, expected_len));
    }
    Ok((file, !existed, len))
}

#[async_trait]
impl Sink for FileSink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        if !self.prunable.is_empty() {
            let keys = std::mem::take(&mut self.prunable);
            tracing::debug!(sink = %self.ctx.sink, files = keys.len(), "forgetting idle archive files");
            self.ctx.registry.forget(keys).await?;
        }
        Ok(())
    }

    async fn write(&mut self, batch: Arc<Batch>) -> Result<(), SinkError> {
        // Registration must reach the store before a new file gets its first byte; collect the
        // new paths first, register them, then append.
        let mut to_register: Vec<StateEntry> = Vec::new();
        {
            let now = Instant::now();
            let inner = self.inner()?;
            inner.last_batch = batch.number;
            // In runs of events of one sandbox and day (a source hands over up to a hundred at
            // once): one path, one slot lookup and one span update per run, not per event.
            let day_of = |e: &auditship_sink::Event| {
                e.time_us
                    .or(e.cursor_us)
                    .map_or(i64::MIN, |t| t.div_euclid(MICROS_PER_DAY))
            };
            let mut rest: &[auditship_sink::Event] = &batch.events;
            while let Some(event) = rest.first() {
                let day = day_of(event);
                let len = rest
                    .iter()
                    .position(|e| !(Arc::ptr_eq(&e.resource_id, &event.resource_id) && day_of(e) == day))
                    .unwrap_or(rest.len());
                let (run, after) = rest.split_at(len);
                rest = after;
                let rendered = inner.render(&event.resource_id, event.time_us.or(event.cursor_us));
                inner.clock += run.len() as u64;
                let clock = inner.clock;
                let needs_slot = match inner.slots.get(&*rendered) {
                    Some(slot) => slot.rotate,
                    None => true,
                };
                if needs_slot {
                    let generation = match inner.slots.get(&*rendered) {
                        Some(slot) => slot.generation + 1,
                        None => starting_generation(&inner.known, &rendered),
                    };
                    let path = generation_path(&rendered, generation);
                    let durable_len = match inner.known.get(&path) {
                        Some(len) => *len,
                        None => {
                            // A file that exists but was never registered was not written by
                            // this pipeline: append after its content and never truncate it.
                            let existing = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                            if existing > 0 {
                                tracing::warn!(path = %path, bytes = existing, "appending to a file this pipeline did not create");
                            }
                            to_register.push(StateEntry {
                                key: path.clone(),
                                value: i64::try_from(existing).unwrap_or(i64::MAX),
                            });
                            inner.known.insert(path.clone(), existing);
                            existing
                        }
                    };
                    inner.slots.insert(
                        rendered.to_string(),
                        Slot {
                            generation,
                            path,
                            durable_len,
                            pending: Vec::new(),
                            file: None,
                            opened_at: now,
                            last_write: clock,
                            last_write_at: now,
                            new_file: false,
                            rotate: false,
                            stretch: Stretch::at(durable_len, inner.hash),
                            pending_spans: Spans::default(),
                            ahead: None,
                        },
                    );
                }
                if let Some(slot) = inner.slots.get_mut(&*rendered) {
                    inner.pending_bytes += run.iter().map(|e| e.raw.len() as u64 + 1).sum::<u64>();
                    slot.pending.extend(run.iter().map(|e| e.raw.clone()));
                    slot.pending_spans.add_run(run);
                    slot.last_write = clock;
                    slot.last_write_at = now;
                }
            }
        }
        // One transaction for all: a fleet's new day is a hundred new files, not a hundred fsyncs.
        self.ctx.registry.register(to_register).await?;
        Ok(())
    }

    /// Write what is pending and fsync it. A large flush (`sync_overlap_min_bytes`) is written
    /// while the previous large flush's fsync still runs, and its own fsync is left running: it
    /// returns (and reports through [`Sink::durable_through`]) what the previous one made
    /// durable. So the disk syncs one round while the CPU writes and hashes the next, instead of
    /// the two taking turns. A flush with nothing to write waits for the round in flight, and
    /// [`Sink::close`] leaves nothing in flight.
    ///
    /// A small flush, one over more files than may stay open, or one after which a file is due
    /// to rotate first waits for the round in flight, then writes and syncs in one go: a
    /// rotation must seal a file exactly where its durable bytes end.
    async fn flush(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let inner = self.inner()?;
        let dirty = inner.slots.values().filter(|s| !s.pending.is_empty()).count();
        if dirty == 0 {
            let entries = self.land().await?;
            // Woken by `flush_deadline` with nothing to write: seal the files idle by now, so
            // a fleet that went quiet still gets its files into the manifest.
            let inner = self.inner()?;
            if Instant::now() >= inner.idle_check_at {
                inner.idle_check_at = Instant::now() + idle_check_every(&inner.config);
                inner.decide_rotation();
            }
            return Ok(entries);
        }
        // A small round is written and synced in one go: overlapping pays when the sink is what
        // holds the pipeline back (large rounds); under a lighter load it would only mean more,
        // smaller fsyncs.
        if inner.pending_bytes < inner.config.sync_overlap_min_bytes
            || dirty > inner.config.max_open_files
            || inner.rotation_waits()
        {
            let in_flight = self.in_flight.take();
            let entries = self.blocking(move |inner| inner.flush(in_flight)).await?;
            self.durable = self.inner()?.last_batch;
            return Ok(entries);
        }
        let (round, to_sync) = self.blocking(|inner| inner.write_round()).await?;
        // Landing is the last thing that can fail: a flush that moved lengths returns them.
        let entries = self.land().await?;
        self.in_flight = Some(InFlight::start(round, to_sync));
        Ok(entries)
    }

    fn durable_through(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|_| self.durable)
    }

    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.is_some() {
            // Report the round in flight as soon as nothing else is to be written.
            return Some(tokio::time::Instant::now());
        }
        let inner = self.inner.as_ref()?;
        Some(tokio::time::Instant::from_std(inner.idle_check_at))
    }

    async fn reset(&mut self) -> Result<(), SinkError> {
        if let Some(flight) = self.in_flight.take() {
            // Its bytes are cut off below whatever its fsync did; only wait for it to end.
            let _ = flight.done.await;
        }
        self.blocking(|inner| inner.reset()).await
    }

    async fn close(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let in_flight = self.in_flight.take();
        let entries = self.blocking(move |inner| inner.flush(in_flight)).await?;
        let inner = self.inner()?;
        let last = inner.last_batch;
        inner.seal_all();
        self.durable = last;
        Ok(entries)
    }

    fn exact_state(&self) -> bool {
        true
    }

    fn take_sealed(&mut self) -> Vec<Sealed> {
        match self.inner.as_mut() {
            Some(inner) => std::mem::take(&mut inner.sealed),
            None => Vec::new(),
        }
    }

    fn manifest_publisher(&self) -> Option<Arc<dyn ManifestPublisher>> {
        Some(Arc::new(FileManifests))
    }
}

/// Writes manifest entries to an [`MANIFEST_NAME`] file in each unit's directory, one JSON line
/// per entry, appended and fsync'd. An entry whose line the file already holds is not written
/// again, so publishing after a crash is idempotent; a torn last line (a crash mid-append) is cut
/// off first.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileManifests;

impl FileManifests {
    /// Publish without an async runtime (what [`ManifestPublisher::publish`] runs off the
    /// async workers).
    pub fn publish_blocking(entries: &[ManifestLine]) -> Result<(), SinkError> {
        let mut by_dir: Vec<(PathBuf, Vec<&str>)> = Vec::new();
        let mut index: HashMap<PathBuf, usize> = HashMap::new();
        for e in entries {
            let dir = Path::new(&e.unit)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let i = *index.entry(dir.clone()).or_insert_with(|| {
                by_dir.push((dir, Vec::new()));
                by_dir.len() - 1
            });
            by_dir[i].1.push(&e.line);
        }
        let mut files: Vec<File> = Vec::new();
        let mut new_dirs: Vec<File> = Vec::new();
        for (dir, lines) in &by_dir {
            let path = dir.join(MANIFEST_NAME);
            let what = |e| SinkError::io(format!("writing manifest {}", path.display()), e);
            let existed = path.exists();
            let mut file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .mode(0o640)
                .open(&path)
                .map_err(what)?;
            let mut have = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut have).map_err(what)?;
            // A crash mid-append leaves a line without its newline: cut it, it is written again.
            let whole = have.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if whole < have.len() {
                tracing::warn!(path = %path.display(), bytes = have.len() - whole, "cutting a torn last line off the manifest");
                file.set_len(whole as u64).map_err(what)?;
                have.truncate(whole);
            }
            let present: std::collections::HashSet<&[u8]> =
                have.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
            let mut out = Vec::new();
            for line in lines {
                if !present.contains(line.as_bytes()) {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
            }
            if out.is_empty() {
                continue;
            }
            file.write_all(&out).map_err(what)?;
            files.push(file);
            if !existed {
                new_dirs.push(
                    File::open(dir)
                        .map_err(|e| SinkError::io(format!("opening directory {}", dir.display()), e))?,
                );
            }
        }
        let mut to_sync: Vec<(&File, &str, bool)> = files.iter().map(|f| (f, "a manifest", false)).collect();
        to_sync.extend(new_dirs.iter().map(|d| (d, "a directory", true)));
        sync_all_parallel(&to_sync)
    }
}

#[async_trait]
impl ManifestPublisher for FileManifests {
    async fn publish(&self, entries: &[ManifestLine]) -> Result<(), SinkError> {
        let entries = entries.to_vec();
        tokio::task::spawn_blocking(move || Self::publish_blocking(&entries))
            .await
            .map_err(|e| SinkError::Remote {
                message: format!("manifest writer failed: {e}"),
                retryable: true,
            })?
    }
}

/// Where a template path starts this run: the newest generation that is registered or on disk.
fn starting_generation(recovered: &HashMap<String, u64>, rendered: &str) -> u32 {
    let mut generation = 0;
    loop {
        let next = generation_path(rendered, generation + 1);
        if recovered.contains_key(&next) || Path::new(&next).exists() {
            generation += 1;
        } else {
            return generation;
        }
    }
}

#[cfg(test)]
mod tests;

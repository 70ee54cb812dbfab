//! [`FileSink`]: the files open, their slots and stretches, writing and flushing.

use super::*;

/// One template path and its current generation.
pub(crate) struct Slot {
    pub(crate) generation: u32,
    /// The current generation's relative path.
    pub(crate) path: String,
    /// Bytes committed (or found on disk, for a file that predates the sink's state).
    pub(crate) durable_len: u64,
    /// Lines written since the last flush: the events' own buffers (no copy; each line is
    /// followed by a newline when written).
    pub(crate) pending: Vec<Bytes>,
    pub(crate) file: Option<File>,
    pub(crate) opened_at: Instant,
    /// Monotonic counter of the last write, for closing the least recently used file.
    pub(crate) last_write: u64,
    /// When the slot was last written (per batch), for sealing idle files.
    pub(crate) last_write_at: Instant,
    /// The file was created by this process and its directory entry is not yet fsync'd.
    pub(crate) new_file: bool,
    /// Rotation was decided at the last flush; the next write opens the next generation.
    pub(crate) rotate: bool,
    /// The durable stretch written since the last seal, hashed and counted as written.
    pub(crate) stretch: Stretch,
    /// Events in `pending`, by sandbox.
    pub(crate) pending_spans: Spans,
    /// Written by a round whose fsync is still running: the file's length and the stretch's
    /// hash after those bytes (see [`Round`]). `None`: nothing is in flight.
    pub(crate) ahead: Option<(u64, Option<Sha256>)>,
}

/// The stretch of a file written since its last seal: where it starts, the hash of its bytes
/// and its events. `None` hash: something outside the sink changed the file, so the pipeline
/// reads the stretch back instead.
pub(crate) struct Stretch {
    pub(crate) start: u64,
    pub(crate) hasher: Option<Sha256>,
    pub(crate) spans: Spans,
}

impl Stretch {
    /// A stretch from `start`, hashed as it is written when `hash` (the pipeline keeps a
    /// manifest of this sink: [`SinkContext::manifest`]).
    pub(crate) fn at(start: u64, hash: bool) -> Self {
        Stretch {
            start,
            hasher: hash.then(Sha256::new),
            spans: Spans::default(),
        }
    }
}

/// The file sink. See the crate documentation for its guarantees.
pub struct FileSink {
    pub(crate) inner: Option<Inner>,
    pub(crate) ctx: SinkContext,
    /// Registered files the sink no longer needs to track (see [`IDLE_AFTER`]).
    pub(crate) prunable: Vec<String>,
    /// The last round, written, its fsync running.
    pub(crate) in_flight: Option<InFlight>,
    /// Every batch up to this one is durable.
    pub(crate) durable: u64,
    /// This sink's lock on its archive, held while it lives.
    pub(crate) _lock: crate::recovery::ArchiveLock,
    /// The archive's root: the fixed directory of the path template (digests go there).
    pub(crate) root: PathBuf,
}

/// A registered file untouched this long, whose length is its committed length, is forgotten:
/// the state table then holds only files that may still be written, so it (and the start-up
/// check) does not grow with the archive's age. Forgetting is safe because a file that is not
/// registered is taken as it is: if it is written again it is registered anew at its current
/// length, which is exactly its committed content.
pub const IDLE_AFTER: Duration = Duration::from_secs(48 * 3600);

pub(crate) struct Inner {
    pub(crate) config: FileSinkConfig,
    pub(crate) template: PathTemplate,
    pub(crate) pipeline: String,
    pub(crate) slots: HashMap<String, Slot>,
    /// The durable length of every file this sink tracks, by path: committed lengths from the
    /// last run, registrations, and every flush since.
    pub(crate) known: HashMap<String, u64>,
    /// Relative paths an earlier version registered, by their absolute form (see `open`).
    pub(crate) legacy: HashMap<String, String>,
    /// Cache of rendered template paths, by (sandbox, day number).
    pub(crate) rendered: HashMap<(Arc<str>, i64), Arc<str>>,
    pub(crate) clock: u64,
    /// Seals not yet taken by the pipeline.
    pub(crate) sealed: Vec<Sealed>,
    /// The number of the last batch written.
    pub(crate) last_batch: u64,
    /// Bytes of the events pending (before compression).
    pub(crate) pending_bytes: u64,
    /// When to look for idle files next, though nothing is written (see `seal_idle_ms`).
    pub(crate) idle_check_at: Instant,
    /// Whether to hash what is written for the seals: only when the pipeline keeps a manifest
    /// of this sink ([`SinkContext::manifest`]). SHA-256 is the largest single cost of writing.
    pub(crate) hash: bool,
}

impl FileSink {
    /// Build the sink and roll back every file it wrote to its committed length.
    pub fn open(mut config: FileSinkConfig, ctx: SinkContext) -> Result<Self, SinkError> {
        // Registered paths are absolute: a relative one means whatever the working directory
        // is at the next start, and rolling back there would cut someone else's file. (An
        // empty path is left for `validate` to name.)
        if !config.path.is_empty() {
            config.path = absolute(&config.path)?;
        }
        let template = config.validate().map_err(SinkError::Config)?;
        // Before anything is rolled back: another process writing this archive would have its
        // files cut at every start of this one.
        let lock = crate::recovery::lock_archive(template.base(), &ctx.pipeline, &ctx.sink)?;
        let root = template.base().to_path_buf();
        let idle_check_at = Instant::now() + idle_check_every(&config);
        let mut recovered = HashMap::new();
        let mut prunable = Vec::new();
        // Every file the last run left behind is sealed through its committed length; the
        // pipeline skips those whose manifest already reaches it.
        let mut sealed = Vec::new();
        // Paths an earlier version registered relative to the working directory, by their
        // absolute form: read relative to this start's directory, as that version did, and
        // kept under the key their manifest entries name until they go idle.
        let mut legacy = HashMap::new();
        for entry in &ctx.recovered {
            let len = u64::try_from(entry.value).unwrap_or(0);
            let state = roll_back(Path::new(&entry.key), len, Some(config.compression.unit()))?;
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
                    if Path::new(&entry.key).is_relative() {
                        legacy.insert(absolute(&entry.key)?, entry.key.clone());
                    }
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
                legacy,
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
            _lock: lock,
            root,
        })
    }

    pub(crate) fn inner(&mut self) -> Result<&mut Inner, SinkError> {
        self.inner
            .as_mut()
            .ok_or_else(|| SinkError::Config("file sink used after a failed flush task".into()))
    }

    /// Run blocking file work off the async workers.
    pub(crate) async fn blocking<T: Send + 'static>(
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
    pub(crate) async fn land(&mut self) -> Result<Vec<StateEntry>, SinkError> {
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

impl Inner {
    pub(crate) fn render(&mut self, resource_id: &Arc<str>, time_us: Option<i64>) -> Arc<str> {
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
    pub(crate) fn flush(&mut self, in_flight: Option<InFlight>) -> Result<Vec<StateEntry>, SinkError> {
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
    pub(crate) fn write_round(&mut self) -> Result<(Round, ToSync), SinkError> {
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
    pub(crate) fn apply(&mut self, round: Round) -> Vec<StateEntry> {
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
    pub(crate) fn rotation_waits(&self) -> bool {
        self.slots
            .values()
            .any(|s| (s.ahead.is_some() || !s.pending.is_empty()) && self.rotation_due(s))
    }

    /// Whether `slot`'s file is big or old enough to rotate (counting bytes in flight).
    pub(crate) fn rotation_due(&self, slot: &Slot) -> bool {
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
    pub(crate) fn decide_rotation(&mut self) {
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
    pub(crate) fn seal_all(&mut self) {
        let (compression, hash) = (self.config.compression.unit(), self.hash);
        for slot in self.slots.values_mut() {
            slot.file = None;
            if slot.durable_len > 0 && slot.stretch.start < slot.durable_len {
                self.sealed.push(seal(slot, compression, hash));
            }
        }
    }

    pub(crate) fn close_idle(&mut self) {
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

    /// Drop what is pending and roll every file back to its durable length. Every file is
    /// tried, whatever fails: the first error is returned, and the pipeline resets again
    /// (every file again) before it writes anything.
    pub(crate) fn reset(&mut self) -> Result<(), SinkError> {
        self.pending_bytes = 0;
        let mut first_error = None;
        for slot in self.slots.values_mut() {
            slot.pending.clear();
            slot.pending_spans = Spans::default();
            slot.ahead = None;
            if slot.file.take().is_some() || Path::new(&slot.path).exists() {
                if let Err(e) = roll_back(Path::new(&slot.path), slot.durable_len, None) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// How often a quiet sink looks for idle files: a quarter of `seal_idle_ms`, so a file is sealed
/// at most a quarter late.
pub(crate) fn idle_check_every(config: &FileSinkConfig) -> Duration {
    Duration::from_millis((config.seal_idle_ms / 4).max(10))
}

/// A seal of `slot`'s file through its durable length, with what the sink gathered of the
/// stretch; the next stretch starts there.
pub(crate) fn seal(slot: &mut Slot, compression: UnitCompression, hash: bool) -> Sealed {
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
pub(crate) fn write_pending(
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
pub(crate) fn write_slot(
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
        let (file, created, len) =
            open_for_append(Path::new(&slot.path), slot.durable_len, config.compression.unit())?;
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
        let mut unwritable: Vec<(auditship_sink::Event, String)> = Vec::new();
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
                // A name no file system takes would fail every retry and stall the pipeline:
                // its events are dead-lettered with the reason instead.
                if let Some(why) = template::unwritable_path(&rendered) {
                    unwritable.extend(run.iter().map(|e| (e.clone(), why.clone())));
                    continue;
                }
                inner.clock += run.len() as u64;
                let clock = inner.clock;
                let needs_slot = match inner.slots.get(&*rendered) {
                    Some(slot) => slot.rotate,
                    None => true,
                };
                if needs_slot {
                    let generation = match inner.slots.get(&*rendered) {
                        Some(slot) => slot.generation + 1,
                        None => starting_generation(&inner.known, &inner.legacy, &rendered),
                    };
                    let path = generation_path(&rendered, generation);
                    let path = inner.legacy.get(&path).cloned().unwrap_or(path);
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
        for (event, why) in unwritable {
            self.ctx.dead_letters.reject(&event, &why).await?;
        }
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
        Some(Arc::new(FileManifests::new(&self.root)))
    }
}

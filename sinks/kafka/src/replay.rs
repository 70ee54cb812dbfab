//! No event twice: where the sink's messages end in each partition, and what lies past that.
//!
//! A message delivered after the last committed checkpoint is sent again when the sources replay
//! its event (after a crash), and a message the broker took whose delivery report never came is
//! sent again by a rebuilt producer. Both are found the same way (the idea of Kafka Connect's
//! exactly-once sources, KIP-618, without their transactions):
//!
//! - [`Offsets`]: each checkpoint records, per partition the sink wrote, the offset after its
//!   last delivered message (from the delivery reports), as sink state committed in the same
//!   transaction. A topic seen for the first time is registered durably *before* anything is
//!   sent to it, at its partitions' ends, so a crash before its first checkpoint is covered too.
//! - [`scan`] reads each partition from the recorded offset to its end and collects the
//!   `event_id` header of every message there: exactly what was delivered and not checkpointed.
//! - [`Guard`]: the events found that way are not produced again. Until a found event comes
//!   back, the offsets recorded for its partition stay at or below its message (a *pin*), so a
//!   second crash reads it again.
//!
//! The read covers only what lies past the checkpoint: at most what the pipeline wrote in one
//! `commit_interval_ms` plus its queued batches (and whatever other producers wrote to the same
//! partitions meanwhile). Its time is logged.
//!
//! # When a repeat can still happen
//! - Messages past the recorded offset are gone when the read runs: the topic was deleted,
//!   truncated or compacted, or the broker lost its log (a warning names a partition that ends
//!   before its recorded offset; it is read from its start).
//! - A produce request of the killed process (or of the dropped producer) that the broker
//!   appends only after the read.
//! - A sandbox whose replay comes back in another order than it was first sent (events sharing
//!   a timestamp) releases its pins early ([`Guard::moved_on`]); a second crash at that moment
//!   may repeat the events not yet back.
//!
//! Transactions with `read_committed` consumers would close the second case; the test broker
//! (tansu 0.6.0) accepts the transactional API, but its `read_committed` consumers still read
//! aborted messages, so no transactional mode is offered yet.

use std::collections::{BTreeSet, HashMap, HashSet};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::*;

/// A partition: its topic (interned) and number.
pub(crate) type Partition = (Arc<str>, i32);

/// The prefix of the state keys: `next_offset:<partition>:<topic>` (a topic name cannot hold
/// `:`), or `next_offset:*:<topic>` for a topic that did not exist when it was registered
/// (every partition it has is read from its start).
pub(crate) const KEY_PREFIX: &str = "next_offset:";

/// `*`: every partition of the topic, from its start.
pub(crate) const ALL_PARTITIONS: i32 = -1;

/// The state key of a partition.
pub(crate) fn state_key(topic: &str, partition: i32) -> String {
    if partition == ALL_PARTITIONS {
        format!("{KEY_PREFIX}*:{topic}")
    } else {
        format!("{KEY_PREFIX}{partition}:{topic}")
    }
}

/// Read a state key back; `None` for keys that are not the sink's offsets.
pub(crate) fn parse_key(key: &str) -> Option<(&str, i32)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (partition, topic) = rest.split_once(':')?;
    let partition = if partition == "*" {
        ALL_PARTITIONS
    } else {
        partition.parse().ok().filter(|p: &i32| *p >= 0)?
    };
    (!topic.is_empty()).then_some((topic, partition))
}

/// Where the sink's messages end in each partition it knows.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    /// Per partition, the offset after the last message delivered (or found) there; for a
    /// topic registered before it existed, `(topic, ALL_PARTITIONS) → 0`.
    pub(crate) next: HashMap<Partition, i64>,
    /// What the last flush (or the registration) recorded per partition.
    pub(crate) recorded: HashMap<Partition, i64>,
    /// Topics whose partitions are registered (or were recovered).
    pub(crate) topics: HashSet<Arc<str>>,
}

impl Offsets {
    /// The offsets committed with the last checkpoint (and those registered since).
    pub(crate) fn recover(entries: &[StateEntry], intern: &mut impl FnMut(&str) -> Arc<str>) -> Offsets {
        let mut o = Offsets::default();
        for e in entries {
            let Some((topic, partition)) = parse_key(&e.key) else {
                continue;
            };
            if e.is_deletion() {
                continue;
            }
            let topic = intern(topic);
            o.topics.insert(topic.clone());
            o.next.insert((topic.clone(), partition), e.value);
            o.recorded.insert((topic, partition), e.value);
        }
        o
    }

    /// Raise a partition's next offset to after `offset`.
    pub(crate) fn delivered(&mut self, p: &Partition, offset: i64) {
        match self.next.get_mut(p) {
            Some(n) => *n = (*n).max(offset + 1),
            None => {
                self.next.insert(p.clone(), offset + 1);
            }
        }
    }

    /// The entries to commit with the next checkpoint: each partition whose value moved, where
    /// the value is the next offset held back to the lowest pin (a found message whose event
    /// has not come back yet).
    pub(crate) fn changed(&mut self, guard: &Guard) -> Vec<StateEntry> {
        let mut out = Vec::new();
        for (p, next) in &self.next {
            let value = guard
                .pins
                .get(p)
                .and_then(|s| s.first())
                .map_or(*next, |pin| (*next).min(*pin));
            if self.recorded.get(p) != Some(&value) {
                out.push(StateEntry {
                    key: state_key(&p.0, p.1),
                    value,
                });
                self.recorded.insert(p.clone(), value);
            }
        }
        out
    }

    /// Where to read each known partition from: every partition of every known topic, from its
    /// recorded offset (a partition the topic gained since is read from its start).
    pub(crate) fn starts(&self) -> Vec<(Partition, i64)> {
        self.recorded.iter().map(|(p, v)| (p.clone(), *v)).collect()
    }
}

/// Where a found message sits.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) partition: Partition,
    pub(crate) offset: i64,
    /// The `resource_id` header (the sandbox), to release its pins once it has moved on.
    pub(crate) resource: Option<Arc<str>>,
}

/// Events found past the checkpoint, not to be produced again.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// By event id.
    pub(crate) found: HashMap<Box<str>, Found>,
    /// Per partition, offsets of found messages whose events have not come back yet.
    pub(crate) pins: HashMap<Partition, BTreeSet<i64>>,
    /// Per sandbox, its pinned messages.
    pub(crate) by_resource: HashMap<Arc<str>, Vec<(Partition, i64)>>,
    /// Events not produced again because they were found, since the start.
    pub(crate) skipped: u64,
}

impl Guard {
    /// Add what a scan found, pinning each message.
    pub(crate) fn add(&mut self, found: Vec<(Box<str>, Found)>) {
        for (id, f) in found {
            self.pins.entry(f.partition.clone()).or_default().insert(f.offset);
            if let Some(r) = &f.resource {
                self.by_resource
                    .entry(r.clone())
                    .or_default()
                    .push((f.partition.clone(), f.offset));
            }
            self.found.insert(id, f);
        }
    }

    /// Whether the event is in the topic already; if so, where, and its pin is released.
    pub(crate) fn take(&mut self, id: &str) -> Option<Found> {
        if self.found.is_empty() {
            return None;
        }
        let f = self.found.remove(id)?;
        self.unpin(&f.partition, f.offset);
        self.skipped += 1;
        Some(f)
    }

    /// An event of `resource` that was not found is being sent: the sandbox's replay has passed
    /// what was found of it (a source replays a sandbox in order), so its remaining pins go.
    /// The events stay found, in case one comes back after all.
    pub(crate) fn moved_on(&mut self, resource: &str) {
        if self.by_resource.is_empty() {
            return;
        }
        if let Some(list) = self.by_resource.remove(resource) {
            for (p, offset) in list {
                self.unpin(&p, offset);
            }
        }
    }

    fn unpin(&mut self, p: &Partition, offset: i64) {
        if let Some(set) = self.pins.get_mut(p) {
            set.remove(&offset);
            if set.is_empty() {
                self.pins.remove(p);
            }
        }
    }

    /// Release every pin (a clean stop: the checkpoint holds everything written).
    pub(crate) fn unpin_all(&mut self) {
        self.pins.clear();
        self.by_resource.clear();
    }
}

/// What one scan read.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    /// Event ids found, with where.
    pub(crate) found: Vec<(Box<str>, Found)>,
    /// Messages read (with or without an `event_id` header).
    pub(crate) messages: u64,
    /// Partitions read.
    pub(crate) partitions: usize,
    /// Partitions whose recorded offset lies past their end: the topic was deleted and
    /// created again, or truncated (they are read from their start).
    pub(crate) shorter: Vec<String>,
}

/// The consumer's context: librdkafka's warnings and errors to `tracing`, but not its notes
/// that a producer option in `options` means nothing to a consumer, nor the end-of-partition
/// reports the read stops at.
pub(crate) struct ScanCtx {
    pub(crate) sink: String,
}

impl ClientContext for ScanCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::PartitionEOF)) {
            return;
        }
        tracing::warn!(sink = %self.sink, "Kafka client (reading past the checkpoint): {error}: {reason}");
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "CONFWARN" {
            return;
        }
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        ) {
            tracing::warn!(sink = %self.sink, facility = fac, "librdkafka (reading past the checkpoint): {message}");
        }
    }
}

impl ConsumerContext for ScanCtx {}

/// Read every partition in `from` (`(partition, offset)`; [`ALL_PARTITIONS`] for every partition
/// of a topic from its start) to its end, now, and collect the `event_id` headers found there.
/// Blocking: run it off the async runtime. `idle` bounds how long the read may go without
/// progress.
///
/// A partition's end is where the consumer reports end-of-partition, not its high watermark:
/// the test broker (tansu 0.6.0) reports the watermark as the last *batch's* first offset plus
/// one, short of the messages after it. The end-of-partition report names only the partition's
/// number, so one topic is read at a time.
pub(crate) fn scan(
    config: &KafkaSinkConfig,
    sink: &str,
    from: &[(Partition, i64)],
    idle: Duration,
) -> Result<Scanned, SinkError> {
    let mut out = Scanned::default();
    if from.is_empty() {
        return Ok(out);
    }
    let remote = |what: String| {
        SinkError::Remote {
        message: config.scrub(&format!(
            "sinks.{sink}: cannot read Kafka past the last checkpoint ({what}), so events delivered since cannot be told from new ones; nothing is sent until it can (check that the brokers are up)"
        )),
        retryable: true,
    }
    };
    let consumer: BaseConsumer<ScanCtx> = config
        .consumer_config(sink)
        .create_with_context(ScanCtx {
            sink: sink.to_string(),
        })
        .map_err(|e| remote(e.to_string()))?;
    // Per topic, the partitions and where to start; a topic registered before it existed: all
    // its partitions now, from their start.
    let mut topics: HashMap<Arc<str>, Vec<(i32, Offset)>> = HashMap::new();
    for ((topic, partition), offset) in from {
        let parts = topics.entry(topic.clone()).or_default();
        if *partition != ALL_PARTITIONS {
            parts.push((*partition, Offset::Offset(*offset)));
            continue;
        }
        let metadata = consumer
            .fetch_metadata(Some(topic), idle)
            .map_err(|e| remote(format!("metadata of {topic}: {e}")))?;
        for t in metadata.topics().iter().filter(|t| t.name() == &**topic) {
            for part in t.partitions() {
                parts.push((part.id(), Offset::Beginning));
            }
        }
    }
    // Sandbox names, one allocation each however many messages name them.
    let mut resources: HashMap<Box<str>, Arc<str>> = HashMap::new();
    for (topic, mut parts) in topics {
        parts.sort_by_key(|(p, _)| *p);
        parts.dedup_by_key(|(p, _)| *p);
        read_topic_past(&consumer, &topic, parts, idle, &mut resources, &mut out).map_err(remote)?;
    }
    Ok(out)
}

/// Read `parts` of `topic` from their offsets to their ends (see [`scan`]).
fn read_topic_past(
    consumer: &BaseConsumer<ScanCtx>,
    topic: &Arc<str>,
    parts: Vec<(i32, Offset)>,
    idle: Duration,
    resources: &mut HashMap<Box<str>, Arc<str>>,
    out: &mut Scanned,
) -> Result<(), String> {
    let assign = |parts: &[(i32, Offset)]| -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in parts {
            tpl.add_partition_offset(topic, *p, *offset)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())
    };
    assign(&parts)?;
    out.partitions += parts.len();
    let mut pending: HashMap<i32, Offset> = parts.into_iter().collect();
    let mut restarted: HashSet<i32> = HashSet::new();
    let mut last = Instant::now();
    while !pending.is_empty() {
        let polled = consumer.poll(Duration::from_millis(50));
        let out_of_range = matches!(
            polled,
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange
            )))
        );
        match polled {
            Some(Ok(m)) => {
                last = Instant::now();
                if m.topic() != &**topic {
                    continue;
                }
                out.messages += 1;
                let mut id = None;
                let mut resource = None;
                if let Some(h) = m.headers() {
                    for x in h.iter() {
                        match (x.key, x.value) {
                            ("event_id", Some(v)) => id = std::str::from_utf8(v).ok().map(Box::<str>::from),
                            ("resource_id", Some(v)) => {
                                resource = std::str::from_utf8(v).ok().map(|r| {
                                    if let Some(a) = resources.get(r) {
                                        return a.clone();
                                    }
                                    let a: Arc<str> = Arc::from(r);
                                    resources.insert(r.into(), a.clone());
                                    a
                                })
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(id) = id {
                    out.found.push((
                        id,
                        Found {
                            partition: (topic.clone(), m.partition()),
                            offset: m.offset(),
                            resource,
                        },
                    ));
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last = Instant::now();
                pending.remove(&p);
                continue;
            }
            Some(Err(e)) if !out_of_range => return Err(e.to_string()),
            _ => {}
        }
        // No progress: a partition whose recorded offset lies past its end (the topic was
        // deleted and created again, or truncated, or the broker lost its log) is either refused
        // as out of range or, by some brokers, answered with silence. Those partitions are read
        // again from their start, once.
        if !out_of_range && last.elapsed() < Duration::from_millis(1_000).min(idle) {
            continue;
        }
        let mut past_end = Vec::new();
        for (p, offset) in &pending {
            let Offset::Offset(start) = offset else { continue };
            if restarted.contains(p) {
                continue;
            }
            let (_, high) = consumer
                .fetch_watermarks(topic, *p, idle)
                .map_err(|e| format!("the end of {topic}/{p}: {e}"))?;
            if *start > high {
                past_end.push(*p);
            }
        }
        if past_end.is_empty() {
            if last.elapsed() > idle {
                let mut left: Vec<String> = pending.keys().map(|p| format!("{topic}/{p}")).collect();
                left.sort();
                return Err(format!(
                    "no progress for {} ms with {} still to read",
                    idle.as_millis(),
                    left.join(", ")
                ));
            }
            continue;
        }
        for p in past_end {
            out.shorter.push(format!("{topic}/{p}"));
            restarted.insert(p);
            pending.insert(p, Offset::Beginning);
        }
        let again: Vec<(i32, Offset)> = pending.iter().map(|(p, o)| (*p, *o)).collect();
        // Partitions still pending resume where they were: those read in part start over,
        // which only reads some messages twice.
        assign(&again)?;
        last = Instant::now();
    }
    Ok(())
}

impl KafkaSink {
    /// At start: the offsets the last checkpoint recorded, the fixed topic registered, and the
    /// partitions read past those offsets.
    pub(crate) async fn recover_offsets(&mut self) -> Result<(), SinkError> {
        let recovered = std::mem::take(&mut self.ctx.recovered);
        let mut topics = std::mem::take(&mut self.topics);
        let mut intern = |name: &str| -> Arc<str> {
            if let Some(a) = topics.get(name) {
                return a.clone();
            }
            let a: Arc<str> = Arc::from(name);
            topics.insert(name.to_string(), a.clone());
            a
        };
        self.offsets = Offsets::recover(&recovered, &mut intern);
        self.topics = topics;
        self.ctx.recovered = recovered;
        if let Some(t) = self.template.fixed().map(str::to_string) {
            let t = self.intern_topic(&t);
            self.register_topics(vec![t]).await?;
        }
        let scanned = self.scan_recorded("at start").await?;
        self.guard.add(scanned.found);
        Ok(())
    }

    /// Make each topic's partitions known, durably, before the first message goes to it: a
    /// partition the offsets do not hold yet is registered at its end now (nothing of ours is
    /// past it). A topic that does not exist yet is registered as a whole, from its start.
    pub(crate) async fn register_topics(&mut self, topics: Vec<Arc<str>>) -> Result<(), SinkError> {
        let topics: Vec<Arc<str>> = topics.into_iter().filter(|t| !self.seen.contains(t)).collect();
        if topics.is_empty() {
            return Ok(());
        }
        // Seen only once registered: a failed registration is tried again at the next write.
        let registering = topics.clone();
        let producer = self.producer()?.clone();
        let timeout = Duration::from_millis(self.config.healthcheck_timeout_ms);
        let known: HashSet<Partition> = self.offsets.recorded.keys().cloned().collect();
        let sink = self.ctx.sink.clone();
        let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(Partition, i64)>, String> {
            let client = producer.client();
            let mut ends = Vec::new();
            for topic in topics {
                if known.contains(&(topic.clone(), ALL_PARTITIONS)) {
                    continue;
                }
                let metadata = client
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| format!("metadata of {topic}: {e}"))?;
                let parts: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == &*topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if parts.is_empty() {
                    ends.push(((topic, ALL_PARTITIONS), 0));
                    continue;
                }
                for p in parts {
                    if known.contains(&(topic.clone(), p)) {
                        continue;
                    }
                    let (_, high) = client
                        .fetch_watermarks(&topic, p, timeout)
                        .map_err(|e| format!("the end of {topic}/{p}: {e}"))?;
                    ends.push(((topic.clone(), p), high));
                }
            }
            Ok(ends)
        })
        .await
        .map_err(|e| SinkError::Config(format!("sinks.{sink}: registering topics failed: {e}")))?
        .map_err(|e| SinkError::Remote {
            message: self.config.scrub(&format!(
                "sinks.{sink}: cannot learn where the topic's partitions end ({e}); nothing is sent to a topic before that is recorded (check that the brokers are up)"
            )),
            retryable: true,
        })?;
        if !ends.is_empty() {
            let entries = ends
                .iter()
                .map(|((t, p), v)| StateEntry {
                    key: state_key(t, *p),
                    value: *v,
                })
                .collect();
            self.ctx.registry.register(entries).await?;
            for (p, v) in ends {
                self.offsets.recorded.entry(p.clone()).or_insert(v);
                self.offsets.next.entry(p).or_insert(v);
            }
        }
        self.seen.extend(registering);
        Ok(())
    }

    /// Read every partition from the offset recorded last (at the last flush, or at start the
    /// last checkpoint) to its end.
    pub(crate) async fn scan_recorded(&self, when: &'static str) -> Result<Scanned, SinkError> {
        let starts = self.offsets.starts();
        if starts.is_empty() {
            return Ok(Scanned::default());
        }
        let config = self.config.clone();
        let sink = self.ctx.sink.clone();
        let idle = Duration::from_millis(self.config.healthcheck_timeout_ms);
        let started = Instant::now();
        let scanned = tokio::task::spawn_blocking(move || scan(&config, &sink, &starts, idle))
            .await
            .map_err(|e| {
                SinkError::Config(format!(
                    "sinks.{}: reading past the checkpoint failed: {e}",
                    self.ctx.sink
                ))
            })??;
        if !scanned.shorter.is_empty() {
            tracing::warn!(sink = %self.ctx.sink, partitions = %scanned.shorter.join(", "), "Kafka partitions end before the offset the last checkpoint recorded: the topic was deleted and created again or truncated, or the broker lost its log; they are read from their start (events the old topic held cannot be told apart and are sent again)");
        }
        tracing::info!(
            sink = %self.ctx.sink,
            when,
            partitions = scanned.partitions,
            messages = scanned.messages,
            events_found = scanned.found.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "read the Kafka partitions past the last checkpoint; events found there are not sent again"
        );
        Ok(scanned)
    }

    /// Before sending again messages a producer was handed (a rebuilt producer, a failed
    /// delivery): read what reached the broker since the last flush, and count the messages
    /// found there as delivered.
    pub(crate) async fn settle(&mut self) -> Result<(), SinkError> {
        if !self.unsettled {
            return Ok(());
        }
        let unsent: Vec<usize> = {
            let t = self.shared.lock();
            t.outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| matches!(o, Outcome::Unsent | Outcome::Failed(_)))
                .map(|(i, _)| i)
                .collect()
        };
        if unsent.is_empty() {
            self.unsettled = false;
            return Ok(());
        }
        let scanned = self.scan_recorded("before sending again").await?;
        let found: HashMap<Box<str>, Found> = scanned.found.into_iter().collect();
        let mut settled = 0usize;
        {
            let mut t = self.shared.lock();
            for slot in &unsent {
                let Some(f) = found.get(&*self.msgs[*slot].event.id) else {
                    continue;
                };
                t.outcomes[*slot] = Outcome::Delivered;
                t.at[*slot] = (f.partition.1, f.offset);
                settled += 1;
            }
        }
        if settled > 0 {
            tracing::info!(sink = %self.ctx.sink, found = settled, to_send = unsent.len() - settled, "events the broker took without reporting it were found in the topic; they are not sent again");
        }
        self.guard.skipped += settled as u64;
        self.unsettled = false;
        Ok(())
    }

    /// After every message since the last flush is delivered: the partitions' new ends, from
    /// the delivery reports, as the state entries to commit with the checkpoint.
    pub(crate) async fn offsets_after_flush(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        {
            let t = self.shared.lock();
            // Runs of one partition are common (one sandbox's events in a batch): the previous
            // slot's partition is kept to spare a lookup.
            let mut last: Option<(Partition, i64)> = None;
            for (slot, msg) in self.msgs.iter().enumerate() {
                if t.outcomes.get(slot) != Some(&Outcome::Delivered) {
                    continue;
                }
                let (Ok(topic), Some(&(partition, offset))) = (&msg.topic, t.at.get(slot)) else {
                    continue;
                };
                if offset < 0 {
                    continue;
                }
                match &mut last {
                    Some(((lt, lp), max)) if Arc::ptr_eq(lt, topic) && *lp == partition => {
                        *max = (*max).max(offset)
                    }
                    _ => {
                        if let Some((p, max)) = last.take() {
                            self.offsets.delivered(&p, max);
                        }
                        last = Some(((topic.clone(), partition), offset));
                    }
                }
            }
            if let Some((p, max)) = last {
                self.offsets.delivered(&p, max);
            }
        }
        let mut state = self.resolve_unborn().await?;
        state.extend(self.offsets.changed(&self.guard));
        Ok(state)
    }

    /// Topics registered before they existed ([`ALL_PARTITIONS`]) that the sink has written to
    /// now exist: each of their partitions gets its own offset (those the sink wrote nothing to,
    /// their end now) and the whole-topic entry goes, so a later read starts at the offsets
    /// rather than at the topic's start.
    async fn resolve_unborn(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let unborn: Vec<Arc<str>> = self
            .offsets
            .recorded
            .keys()
            .filter(|(t, p)| {
                *p == ALL_PARTITIONS
                    && self
                        .offsets
                        .next
                        .keys()
                        .any(|(u, q)| u == t && *q != ALL_PARTITIONS)
            })
            .map(|(t, _)| t.clone())
            .collect();
        if unborn.is_empty() {
            return Ok(Vec::new());
        }
        let producer = self.producer()?.clone();
        let timeout = Duration::from_millis(self.config.healthcheck_timeout_ms);
        let written: HashSet<Partition> = self.offsets.next.keys().cloned().collect();
        let topics = unborn.clone();
        let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(Partition, i64)>, String> {
            let client = producer.client();
            let mut ends = Vec::new();
            for topic in topics {
                let metadata = client
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| format!("metadata of {topic}: {e}"))?;
                for t in metadata.topics().iter().filter(|t| t.name() == &*topic) {
                    for p in t.partitions() {
                        if written.contains(&(topic.clone(), p.id())) {
                            continue;
                        }
                        let (_, high) = client
                            .fetch_watermarks(&topic, p.id(), timeout)
                            .map_err(|e| format!("the end of {topic}/{}: {e}", p.id()))?;
                        ends.push(((topic.clone(), p.id()), high));
                    }
                }
            }
            Ok(ends)
        })
        .await
        .map_err(|e| {
            SinkError::Config(format!(
                "sinks.{}: reading partition ends failed: {e}",
                self.ctx.sink
            ))
        })?
        .map_err(|e| SinkError::Remote {
            message: self.config.scrub(&format!(
                "sinks.{}: cannot learn where a new topic's partitions end ({e})",
                self.ctx.sink
            )),
            retryable: true,
        })?;
        for (p, v) in ends {
            self.offsets.next.insert(p, v);
        }
        let mut gone = Vec::new();
        for t in unborn {
            let p = (t.clone(), ALL_PARTITIONS);
            self.offsets.next.remove(&p);
            self.offsets.recorded.remove(&p);
            gone.push(StateEntry::deleted(state_key(&t, ALL_PARTITIONS)));
        }
        Ok(gone)
    }
}

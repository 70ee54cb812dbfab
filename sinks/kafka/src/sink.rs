//! [`KafkaSink`]: batches produced, acknowledged on delivery, and the producer rebuilt when it
//! stalls.

use super::*;

/// The Kafka sink. See the crate documentation for its guarantees.
pub struct KafkaSink {
    pub(crate) config: KafkaSinkConfig,
    pub(crate) template: TopicTemplate,
    pub(crate) ctx: SinkContext,
    pub(crate) shared: Arc<Shared>,
    pub(crate) producer: Option<Arc<ThreadedProducer<Ctx>>>,
    pub(crate) generation: u64,
    /// Messages since the last successful flush; the slot index is the delivery opaque.
    pub(crate) msgs: Vec<Msg>,
    /// First slot of each batch written since the last flush, by batch number, so a batch
    /// written again after [`Sink::reset`] re-sends only what was not delivered.
    pub(crate) batches: HashMap<u64, (usize, usize)>,
    /// Interned topic names.
    pub(crate) topics: HashMap<String, Arc<str>>,
    /// Interned `action` values.
    pub(crate) actions: HashMap<Box<str>, Arc<str>>,
    /// Where the sink's messages end in each partition (see [`crate::replay`]).
    pub(crate) offsets: Offsets,
    /// Events found in the topic past the last checkpoint, not to be sent again.
    pub(crate) guard: Guard,
    /// Topics whose partitions were registered in this process.
    pub(crate) seen: HashSet<Arc<str>>,
    /// Messages handed to a producer may have reached the broker without a report (the producer
    /// was rebuilt, or a delivery failed): read the topic before sending any of them again.
    pub(crate) unsettled: bool,
}

impl KafkaSink {
    /// Build the sink and its producer (no network traffic until [`Sink::prepare`]).
    pub fn open(config: KafkaSinkConfig, ctx: SinkContext) -> Result<Self, SinkError> {
        let warnings = config
            .validate()
            .map_err(|m| SinkError::Config(format!("sinks.{}: {m}", ctx.sink)))?;
        for w in warnings {
            tracing::warn!(sink = %ctx.sink, "{w}");
        }
        let template = TopicTemplate::parse(&config.topic).map_err(SinkError::Config)?;
        let shared = Arc::new(Shared {
            track: Mutex::new(Track {
                generation: 0,
                outcomes: Vec::new(),
                at: Vec::new(),
                unresolved: 0,
                last_report: Instant::now(),
            }),
            notify: tokio::sync::Notify::new(),
            last_error: Mutex::new(None),
            sink: ctx.sink.clone(),
            logged: Mutex::new(HashMap::new()),
        });
        let mut sink = KafkaSink {
            config,
            template,
            ctx,
            shared,
            producer: None,
            generation: 0,
            msgs: Vec::new(),
            batches: HashMap::new(),
            topics: HashMap::new(),
            actions: HashMap::new(),
            offsets: Offsets::default(),
            guard: Guard::default(),
            seen: HashSet::new(),
            unsettled: false,
        };
        sink.producer = Some(Arc::new(sink.new_producer()?));
        Ok(sink)
    }

    pub(crate) fn new_producer(&self) -> Result<ThreadedProducer<Ctx>, SinkError> {
        let client_id = client_id(&format!("auditship-{}-{}", self.ctx.pipeline, self.ctx.sink));
        self.config
            .client_config(&client_id)
            .create_with_context(Ctx {
                shared: self.shared.clone(),
                generation: self.generation,
            })
            .map_err(|e| {
                SinkError::Config(format!(
                    "sinks.{}: cannot create the Kafka producer: {}",
                    self.ctx.sink,
                    self.config.scrub(&e.to_string())
                ))
            })
    }

    pub(crate) fn producer(&self) -> Result<&Arc<ThreadedProducer<Ctx>>, SinkError> {
        self.producer
            .as_ref()
            .ok_or_else(|| SinkError::Config(format!("sinks.{}: the producer is closed", self.ctx.sink)))
    }

    pub(crate) fn topic_for(&mut self, e: &Event, action: Option<&str>) -> Result<Arc<str>, String> {
        if let Some(t) = self.template.fixed() {
            if let Some(a) = self.topics.get(t) {
                return Ok(a.clone());
            }
            let t = t.to_string();
            return Ok(self.intern_topic(&t));
        }
        let name = self.template.render(&e.resource_id, action, &self.ctx.pipeline)?;
        // Interning keeps one allocation per topic; the map is bounded by the fleet's topics.
        Ok(self.intern_topic(&name))
    }

    pub(crate) fn intern_topic(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.topics.get(name) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(name);
        self.topics.insert(name.to_string(), a.clone());
        a
    }

    pub(crate) fn intern_action(&mut self, action: &str) -> Arc<str> {
        if let Some(a) = self.actions.get(action) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(action);
        // Actions are a handful of words; a hostile stream of distinct ones is capped.
        if self.actions.len() < 1_024 {
            self.actions.insert(action.into(), a.clone());
        }
        a
    }

    /// Hand slot `slot` to the producer, waiting while librdkafka's queue is full.
    pub(crate) async fn send(&self, slot: usize) -> Result<(), SinkError> {
        let msg = &self.msgs[slot];
        let topic = match &msg.topic {
            Ok(t) => t.clone(),
            Err(_) => {
                self.set_outcome(slot, Outcome::Failed(RDKafkaErrorCode::InvalidTopic));
                return Ok(());
            }
        };
        let e = &msg.event;
        let key: Option<&[u8]> = match self.config.key.as_str() {
            "" => None,
            "resource_id" => Some(e.resource_id.as_bytes()),
            _ => msg.field_key.as_deref(),
        };
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "event_id",
                value: Some(e.id.as_bytes()),
            })
            .insert(Header {
                key: "resource_id",
                value: Some(e.resource_id.as_bytes()),
            });
        if let Some(a) = msg.action.as_deref() {
            headers = headers.insert(Header {
                key: "action",
                value: Some(a.as_bytes()),
            });
        }
        let producer = self.producer()?.clone();
        self.set_outcome(slot, Outcome::Pending);
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(&topic, slot)
            .payload(&e.raw[..])
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        let mut waited = Instant::now();
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if waited.elapsed() >= LOG_EVERY {
                        tracing::warn!(sink = %self.ctx.sink, "Kafka producer queue is full; waiting for deliveries (are the brokers up?)");
                        waited = Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                    self.set_outcome(slot, Outcome::Failed(code));
                    return Ok(());
                }
            }
        }
    }

    pub(crate) fn set_outcome(&self, slot: usize, outcome: Outcome) {
        let mut t = self.shared.lock();
        let Some(o) = t.outcomes.get_mut(slot) else { return };
        let was_pending = *o == Outcome::Pending;
        *o = outcome;
        match (was_pending, outcome == Outcome::Pending) {
            (false, true) => {
                if t.unresolved == 0 {
                    // The stall clock runs only while something is pending.
                    t.last_report = Instant::now();
                }
                t.unresolved += 1
            }
            (true, false) => t.unresolved = t.unresolved.saturating_sub(1),
            _ => {}
        }
    }

    /// Drop the producer (purging what it still holds) and build a new one; every message not
    /// yet delivered becomes unsent.
    pub(crate) async fn rebuild(&mut self) -> Result<(), SinkError> {
        if let Some(old) = self.producer.take() {
            // Dropping purges and waits for the purge reports; that blocks, so off the runtime.
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
        self.generation += 1;
        {
            let mut t = self.shared.lock();
            t.generation = self.generation;
            for o in t.outcomes.iter_mut() {
                if matches!(o, Outcome::Pending | Outcome::Failed(_)) {
                    *o = Outcome::Unsent;
                }
            }
            t.unresolved = 0;
            t.last_report = Instant::now();
        }
        // The old producer may have delivered messages whose reports it never passed on.
        self.unsettled = true;
        self.producer = Some(Arc::new(self.new_producer()?));
        Ok(())
    }

    /// Send again every unsent slot, in slot order (which is per-sandbox order), but those the
    /// topic turns out to hold already ([`KafkaSink::settle`]).
    pub(crate) async fn resend_unsent(&mut self) -> Result<(), SinkError> {
        self.settle().await?;
        let unsent: Vec<usize> = {
            let t = self.shared.lock();
            t.outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| **o == Outcome::Unsent)
                .map(|(i, _)| i)
                .collect()
        };
        for slot in unsent {
            self.send(slot).await?;
        }
        Ok(())
    }

    pub(crate) fn brokers_hint(&self) -> String {
        let last = self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match last {
            Some(e) => format!(
                "brokers {} (last error: {})",
                self.config.brokers,
                self.config.scrub(&e)
            ),
            None => format!("brokers {}", self.config.brokers),
        }
    }

    /// Whether a broker answers a metadata request now (a stall with brokers away is an outage,
    /// not a stuck producer).
    pub(crate) async fn brokers_answer(&self) -> Result<bool, SinkError> {
        let producer = self.producer()?.clone();
        let topic = self.template.fixed().map(str::to_string);
        let answered = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic.as_deref(), Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        Ok(answered)
    }

    /// Wait until no message is pending. Logs every 30 s while waiting, and rebuilds the producer
    /// when reports stop coming for `stall_timeout_ms`.
    pub(crate) async fn await_reports(&mut self) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut warned = Instant::now();
        let mut warned_any = false;
        let stall = Duration::from_millis(self.config.stall_timeout_ms);
        // While the brokers are away, whether they answer is checked every AWAY_CHECK; once they
        // answer again the producer gets RECOVER_GRACE to resume before it is rebuilt.
        let mut away = false;
        let mut back_at: Option<Instant> = None;
        let mut next_check = Instant::now() + stall;
        let mut seen_report = self.shared.lock().last_report;
        loop {
            let shared = self.shared.clone();
            let notified = shared.notify.notified();
            let (unresolved, last_report) = {
                let t = self.shared.lock();
                (t.unresolved, t.last_report)
            };
            if unresolved == 0 {
                if warned_any {
                    tracing::info!(sink = %self.ctx.sink, waited_s = started.elapsed().as_secs(), "Kafka deliveries resumed; checkpoints advance again");
                }
                return Ok(());
            }
            if last_report != seen_report {
                // Progress: whatever was wrong has passed.
                seen_report = last_report;
                away = false;
                back_at = None;
            }
            if !away {
                next_check = last_report + stall;
            }
            if let Some((code, reason)) = self.producer()?.client().fatal_error() {
                tracing::warn!(sink = %self.ctx.sink, error = %format!("{code:?}: {reason}"), "Kafka producer hit a fatal error; rebuilding the producer and sending the undelivered events again");
                self.rebuild().await?;
                self.resend_unsent().await?;
                continue;
            }
            if Instant::now() >= next_check {
                if !self.brokers_answer().await? {
                    away = true;
                    back_at = None;
                    next_check = Instant::now() + AWAY_CHECK.min(stall);
                } else if away && back_at.is_none() {
                    back_at = Some(Instant::now());
                    next_check = Instant::now() + RECOVER_GRACE.min(stall);
                } else {
                    warned_any = true;
                    tracing::warn!(sink = %self.ctx.sink, undelivered = unresolved, stalled_s = last_report.elapsed().as_secs(), "no Kafka delivery progress although the brokers answer (a broker that restarted without its state refuses the producer's id); rebuilding the producer and sending the undelivered events again");
                    self.rebuild().await?;
                    self.resend_unsent().await?;
                    away = false;
                    back_at = None;
                    seen_report = self.shared.lock().last_report;
                    continue;
                }
            }
            if warned.elapsed() >= LOG_EVERY {
                warned_any = true;
                tracing::warn!(sink = %self.ctx.sink, undelivered = unresolved, waiting_s = started.elapsed().as_secs(), "events await Kafka delivery; checkpoints wait and nothing is dropped ({})", self.brokers_hint());
                warned = Instant::now();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }
}

/// How often a sink whose brokers are away checks whether they answer again (at most; a shorter
/// `stall_timeout_ms` shortens it).
pub(crate) const AWAY_CHECK: Duration = Duration::from_secs(5);

/// How long a producer may take to resume after its brokers answer again before it is rebuilt
/// (at most; a shorter `stall_timeout_ms` shortens it).
pub(crate) const RECOVER_GRACE: Duration = Duration::from_secs(10);

#[async_trait]
impl Sink for KafkaSink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        let producer = self.producer()?.clone();
        let timeout = Duration::from_millis(self.config.healthcheck_timeout_ms);
        let topic = self.template.fixed().map(str::to_string);
        let sink = self.ctx.sink.clone();
        let brokers = self.config.brokers.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<(), SinkError> {
            let metadata = producer
                .client()
                .fetch_metadata(topic.as_deref(), timeout)
                .map_err(|e| SinkError::Remote {
                    message: format!(
                        "sinks.{sink}: cannot reach Kafka at {brokers} within {} ms ({e}); check `brokers`, that the brokers are up and reachable from this host, and the TLS/SASL settings in `options`",
                        timeout.as_millis()
                    ),
                    retryable: true,
                })?;
            if let Some(t) = metadata.topics().iter().find(|t| Some(t.name()) == topic.as_deref()) {
                if let Some(err) = t.error() {
                    let code = RDKafkaErrorCode::from(err);
                    let fix = match code {
                        RDKafkaErrorCode::UnknownTopicOrPartition => "create it, or let the brokers create topics (auto.create.topics.enable)".to_string(),
                        other => permanent(other).map_or_else(|| format!("{other}"), str::to_string),
                    };
                    return Err(SinkError::Config(format!(
                        "sinks.{sink}: topic {:?} on {brokers}: {code}; {fix}",
                        t.name()
                    )));
                }
            }
            tracing::info!(sink = %sink, brokers = %brokers, brokers_seen = metadata.brokers().len(), "Kafka brokers reachable");
            Ok(())
        })
        .await
        .map_err(|e| SinkError::Config(format!("sinks.{}: start-up check failed: {e}", self.ctx.sink)))?;
        checked.map_err(|e| match e {
            SinkError::Remote { message, retryable } => SinkError::Remote {
                message: self.config.scrub(&message),
                retryable,
            },
            other => other,
        })?;
        self.recover_offsets().await
    }

    async fn write(&mut self, batch: Arc<Batch>) -> Result<(), SinkError> {
        if let Some(&(first, len)) = self.batches.get(&batch.number) {
            // Written again after a reset: send only what did not reach the broker.
            self.settle().await?;
            let again: Vec<usize> = {
                let t = self.shared.lock();
                (first..first + len)
                    .filter(|s| matches!(t.outcomes.get(*s), Some(Outcome::Unsent | Outcome::Failed(_))))
                    .collect()
            };
            // A topic whose registration failed the first time.
            let mut unseen: Vec<Arc<str>> = Vec::new();
            for slot in &again {
                if let Ok(t) = &self.msgs[*slot].topic {
                    if !self.seen.contains(t) && !unseen.contains(t) {
                        unseen.push(t.clone());
                    }
                }
            }
            self.register_topics(unseen).await?;
            for slot in again {
                self.send(slot).await?;
            }
            return Ok(());
        }
        let first = self.msgs.len();
        self.batches.insert(batch.number, (first, batch.events.len()));
        let key_field = match self.config.key.as_str() {
            "" | "resource_id" => None,
            other => Some(other.to_string()),
        };
        // Replays of events the topic holds already: (slot, where).
        let mut found: Vec<(usize, Found)> = Vec::new();
        let templated = self.template.fixed().is_none();
        let mut new_topics: Vec<Arc<str>> = Vec::new();
        for e in &batch.events {
            if let Some(f) = self.guard.take(&e.id) {
                found.push((self.msgs.len(), f));
            } else {
                self.guard.moved_on(&e.resource_id);
            }
            // One pass over the event for everything the message needs; a re-send reuses it.
            let picked = pick(&e.raw, key_field.as_deref()).unwrap_or_default();
            let action = picked.action.as_deref().map(|a| self.intern_action(a));
            let topic = self.topic_for(e, action.as_deref());
            if templated {
                if let Ok(t) = &topic {
                    if !self.seen.contains(t) && !new_topics.contains(t) {
                        new_topics.push(t.clone());
                    }
                }
            }
            self.msgs.push(Msg {
                event: e.clone(),
                topic,
                action,
                field_key: picked.key.map(|k| k.as_bytes().into()),
            });
        }
        {
            let mut t = self.shared.lock();
            t.outcomes.resize(self.msgs.len(), Outcome::Unsent);
            t.at.resize(self.msgs.len(), (-1, -1));
            for (slot, f) in &found {
                t.outcomes[*slot] = Outcome::Delivered;
                t.at[*slot] = (f.partition.1, f.offset);
            }
        }
        if !found.is_empty() && self.guard.found.is_empty() {
            tracing::info!(sink = %self.ctx.sink, skipped = self.guard.skipped, "every event found in the topic past the last checkpoint has come back and was not sent again");
        }
        // Registered before anything is sent to them (durable: a crash before the first
        // checkpoint must find what was sent).
        self.register_topics(new_topics).await?;
        let skip: Vec<usize> = found.iter().map(|(s, _)| *s).collect();
        let mut next_skip = 0;
        for slot in first..self.msgs.len() {
            if skip.get(next_skip) == Some(&slot) {
                next_skip += 1;
                continue;
            }
            self.send(slot).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            self.await_reports().await?;
            let failed: Vec<(usize, RDKafkaErrorCode)> = {
                let t = self.shared.lock();
                t.outcomes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, o)| match o {
                        Outcome::Failed(c) => Some((i, *c)),
                        _ => None,
                    })
                    .collect()
            };
            if failed.is_empty() {
                break;
            }
            let mut retry = 0usize;
            for (slot, code) in failed {
                if let Some(why) = undeliverable(code) {
                    let msg = &self.msgs[slot];
                    let reason = match &msg.topic {
                        Err(topic_error) => format!("sinks.{}: {topic_error}", self.ctx.sink),
                        Ok(topic) => format!(
                            "sinks.{}: Kafka refused the event for topic {topic} ({code}): {why}; size {} bytes",
                            self.ctx.sink,
                            msg.event.raw.len()
                        ),
                    };
                    self.ctx.dead_letters.reject(&msg.event, &reason).await?;
                    self.set_outcome(slot, Outcome::DeadLettered);
                } else if let Some(fix) = permanent(code) {
                    return Err(SinkError::Remote {
                        message: format!("sinks.{}: Kafka refused delivery ({code}): {fix}", self.ctx.sink),
                        retryable: false,
                    });
                } else {
                    if retry == 0 && self.shared.should_log("retry") {
                        let topic = self.msgs[slot].topic.as_deref().unwrap_or("?").to_string();
                        let hint = match code {
                            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                                "the topic does not exist: create it, or let the brokers create topics (auto.create.topics.enable)"
                            }
                            _ => "retrying",
                        };
                        tracing::warn!(sink = %self.ctx.sink, topic = %topic, error = %code, "Kafka delivery failed ({hint}); sending the undelivered events again, checkpoints wait");
                    }
                    self.set_outcome(slot, Outcome::Unsent);
                    retry += 1;
                }
            }
            if retry > 0 {
                // A failed delivery may still have reached the broker: read before resending.
                self.unsettled = true;
                // A producer in a fatal state (its idempotence lost, say, to a broker that came
                // back without its state: UnknownProducerId) fails every send from then on, so
                // resending through it would stall the sink for good: rebuild it first.
                if let Some((code, reason)) = self.producer()?.client().fatal_error() {
                    tracing::warn!(sink = %self.ctx.sink, error = %format!("{code:?}: {reason}"), "Kafka producer hit a fatal error; rebuilding the producer and sending the undelivered events again");
                    self.rebuild().await?;
                } else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                self.resend_unsent().await?;
            }
        }
        let state = self.offsets_after_flush().await?;
        self.msgs.clear();
        self.batches.clear();
        {
            let mut t = self.shared.lock();
            t.outcomes.clear();
            t.at.clear();
            t.unresolved = 0;
        }
        Ok(state)
    }

    fn replays_skipped(&self) -> u64 {
        self.guard.skipped
    }

    async fn reset(&mut self) -> Result<(), SinkError> {
        // Delivered messages stay delivered: a batch written again sends only the rest. Pending
        // ones are purged with the producer so that nothing is sent twice from this process.
        let pending = self.shared.lock().unresolved;
        if pending > 0 {
            self.rebuild().await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        // The checkpoint of a clean stop holds everything written: found events that never came
        // back (a sandbox's events filtered now, another pipeline's messages) need no pin.
        self.guard.unpin_all();
        let state = self.flush().await?;
        if let Some(p) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(p)).await;
        }
        Ok(state)
    }
}

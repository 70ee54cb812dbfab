//! The producer's side: delivery reports tracked per batch, librdkafka's logs and errors read.

use super::*;

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not handed to the producer (yet, or again after a rebuild).
    Unsent,
    /// Handed to the producer; no report yet.
    Pending,
    /// The broker acknowledged it.
    Delivered,
    /// Failed with this code.
    Failed(RDKafkaErrorCode),
    /// Sent to the dead-letter file.
    DeadLettered,
}

/// Delivery reports of the current producer, indexed by message slot.
#[derive(Debug)]
pub(crate) struct Track {
    pub(crate) generation: u64,
    pub(crate) outcomes: Vec<Outcome>,
    /// Per slot, where the broker put the message (partition, offset), once delivered.
    pub(crate) at: Vec<(i32, i64)>,
    pub(crate) unresolved: usize,
    pub(crate) last_report: Instant,
}

pub(crate) struct Shared {
    pub(crate) track: Mutex<Track>,
    pub(crate) notify: tokio::sync::Notify,
    /// The last error librdkafka reported about the cluster (for the periodic warning).
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) sink: String,
    /// Last time each librdkafka log facility was forwarded, to keep its repeats out of the log.
    pub(crate) logged: Mutex<HashMap<String, Instant>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn should_log(&self, what: &str) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match logged.get(what) {
            Some(t) if now.duration_since(*t) < LOG_EVERY => false,
            _ => {
                logged.insert(what.to_string(), now);
                true
            }
        }
    }
}

/// How often a repeating condition is logged.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(30);

/// The producer's context: routes delivery reports into [`Track`] and librdkafka's logs into
/// `tracing`, at most one line per facility every 30 s.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) generation: u64,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if !self.shared.should_log(fac) {
            return;
        }
        let sink = &self.shared.sink;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(sink = %sink, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(sink = %sink, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(sink = %sink, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        if self.shared.should_log("error") {
            tracing::warn!(sink = %self.shared.sink, "Kafka client: {text}");
        }
        *self.shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let (outcome, at) = match result {
            Ok(m) => (Outcome::Delivered, Some((m.partition(), m.offset()))),
            Err((e, _)) => (
                Outcome::Failed(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
                None,
            ),
        };
        let mut t = self.shared.lock();
        if t.generation != self.generation {
            return;
        }
        if let Some(o) = t.outcomes.get_mut(slot) {
            if *o == Outcome::Pending {
                *o = outcome;
                t.unresolved = t.unresolved.saturating_sub(1);
                if let (Some(at), Some(place)) = (at, t.at.get_mut(slot)) {
                    *place = at;
                }
            }
        }
        t.last_report = Instant::now();
        if t.unresolved == 0 {
            self.shared.notify.notify_one();
        }
    }
}

/// One message written since the last flush.
pub(crate) struct Msg {
    pub(crate) event: Event,
    pub(crate) topic: Result<Arc<str>, String>,
    /// The event's `action` (interned: a handful of values).
    pub(crate) action: Option<Arc<str>>,
    /// The key, when it comes from an event field other than `resource_id`.
    pub(crate) field_key: Option<Box<[u8]>>,
}

/// Whether a failed message is one the broker will never take, so it belongs in the
/// dead-letter file rather than being sent again.
pub(crate) fn undeliverable(code: RDKafkaErrorCode) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => Some(
            "larger than the producer's or the broker's message size limit (raise options.\"message.max.bytes\" and the topic's max.message.bytes to ship it)",
        ),
        C::InvalidRecord | C::InvalidMessage => Some("the broker refused the record as invalid"),
        C::InvalidTopic => Some("its topic is not a valid Kafka topic name"),
        _ => None,
    }
}

/// Errors no retry can fix: the pipeline stops and the message names the fix.
pub(crate) fn permanent(code: RDKafkaErrorCode) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    match code {
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => Some(
            "the brokers refuse this client access to the topic; grant the principal in options.\"sasl.username\" WRITE (and IDEMPOTENT_WRITE) on it",
        ),
        C::SaslAuthenticationFailed | C::Authentication => {
            Some("the brokers refused the credentials; check options.\"sasl.*\" and options.\"security.protocol\"")
        }
        C::UnsupportedVersion | C::UnsupportedCompressionType => Some(
            "the brokers do not support what the producer sends; pick another `compression`, or set options.\"enable.idempotence\" = false for a broker older than 0.11",
        ),
        _ => None,
    }
}

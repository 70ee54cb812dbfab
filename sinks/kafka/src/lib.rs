//! auditship's Kafka sink: every event as one Kafka message, exactly as received.
//!
//! # Delivery
//! The producer is idempotent with `acks=all` (librdkafka's defaults for both are overridden),
//! so the broker de-duplicates its own retries and keeps each partition in send order. Messages
//! are keyed by the sandbox id by default, so one sandbox's events share a partition and keep
//! their order in the topic. [`Sink::flush`] returns only when every message written since the
//! last flush has a successful delivery report; only then may the pipeline's checkpoint pass
//! those events.
//!
//! # When brokers are away
//! librdkafka is told to retry without a deadline (`message.timeout.ms = 0`), so a broker that is
//! down or unreachable holds the flush, the checkpoint and (through the pipeline's bounded
//! queues) the sources, with one warning every 30 s saying what is waited for. When the brokers
//! return, delivery resumes by itself. When deliveries make no progress for `stall_timeout_ms`
//! although a broker answers (a broker that restarted without its state refuses the producer's
//! id forever), the producer is rebuilt and every undelivered message is sent again, in order.
//!
//! # Events the broker can never take
//! An event larger than the producer's or the broker's message size limit, or one whose templated
//! topic is not a valid topic name, goes to the pipeline's dead-letter file with the reason, and
//! counts as handled.
//!
//! # No duplicates after a crash or a producer rebuild
//! Each checkpoint commits, per partition the sink wrote, the offset after its last delivered
//! message. On start, the sink reads every partition from that offset to its end and collects
//! the `event_id` headers there: what was delivered but not checkpointed. Events the sources
//! replay whose ids are among them are not produced again (counted in
//! `auditship_sink_replays_skipped_total`). A rebuilt producer, or one whose delivery failed,
//! reads the same way before sending anything again, so messages the broker took without the
//! old producer hearing of it are not repeated. See `replay.rs` for the details and for when a
//! duplicate can still happen. Each message carries the event id in its `event_id` header, so
//! consumers can still de-duplicate whatever got through.
//!
//! # Layout
//! - `config.rs`: [`KafkaSinkConfig`], its checks and the contract's `SinkConfig`.
//! - `sink.rs`: [`KafkaSink`]; `producer.rs`: delivery reports and librdkafka's logs.
//! - `replay.rs`: the offsets recorded with each checkpoint, and the read past them that keeps
//!   replayed events out of the topic.
//! - `fields.rs`: the topic template and the message key; `testing`: a throwaway broker for
//!   tests (not used by the sink itself).

mod config;
mod fields;
mod producer;
mod replay;
mod sink;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditship_sink::{Batch, Event, Sink, SinkContext, SinkError, StateEntry};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use serde::Deserialize;

pub use config::{is_secret_option, Compression, KafkaSinkConfig, OptionValue};
pub use fields::{pick, Picked, TopicTemplate, MAX_TOPIC_LEN};
pub use sink::KafkaSink;

use config::client_id;
use producer::*;
use replay::{Found, Guard, Offsets};

#[cfg(test)]
mod tests;

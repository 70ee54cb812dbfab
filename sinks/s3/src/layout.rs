//! [`ObjectLayout`]: what an S3 sink's objects are (which object an event goes in, how the
//! events of one object become its body, where its manifest entries and digests go), apart
//! from how they reach the bucket. The S3 sink's own is [`NdjsonLayout`]; the Security Lake
//! sink (its own crate) brings a Parquet one and reuses everything else: staging, create-only
//! uploads with SHA-256 checksums, Object Lock, crash recovery and manifests.

use std::fmt;

use auditship_sink::Event;

use super::*;

/// What an S3 sink's objects are. Implementations are cheap to share (`Arc`).
pub trait ObjectLayout: Send + Sync + fmt::Debug {
    /// Where `event` goes (the key prefix of its object) and the bytes to keep for it until its
    /// object is sealed; `Err`: why it cannot be stored (the event is dead-lettered with it).
    fn admit(&self, event: &Event) -> Result<(String, bytes::Bytes), String>;

    /// An object's body from the kept bytes of its events (`size`: their length plus one per
    /// event).
    fn encode(&self, kept: &[bytes::Bytes], size: u64) -> std::io::Result<bytes::Bytes>;

    /// The end of every data key (`.ndjson.gz`, `.parquet`).
    fn extension(&self) -> &'static str;

    /// The Content-Type of data objects.
    fn content_type(&self) -> &'static str;

    /// How manifests name the body's encoding.
    fn unit(&self) -> UnitCompression;

    /// Whether an object's body surely holds its events' ids ([`ObjectLayout::event_ids`]).
    /// When not (a body of reshaped events, whose ids a transform may have redacted), the sink
    /// also keeps them in a file beside the staged object, for the recovery after a crash, and
    /// reads the body only when that file is gone.
    fn ids_in_body(&self) -> bool;

    /// The event ids an object's body holds, to recognise them when they come again after a
    /// crash.
    fn event_ids(&self, key: &str, body: &[u8]) -> Result<Vec<Arc<str>>, String>;

    /// The id an event is stored under in a body, from the bytes [`ObjectLayout::admit`] kept
    /// for it (what [`ObjectLayout::event_ids`] reads back), when that is not surely its own
    /// id ([`ObjectLayout::ids_in_body`] is false): after a crash, events that come again are
    /// also matched by it. `None`: not known.
    fn stored_id(&self, _kept: &[u8]) -> Option<String> {
        None
    }

    /// The key of manifest entry `seq` of the chain `pipeline`/`sink`, which lists `unit`.
    fn manifest_key(&self, unit: &str, pipeline: &str, sink: &str, seq: u64) -> String {
        manifest_key(unit, pipeline, sink, seq)
    }

    /// The key of the digest named `name`.
    fn digest_key(&self, name: &str) -> String;
}

/// The S3 sink's objects: NDJSON, each event exactly as received, compressed as configured,
/// under the rendered `key_prefix`; manifest entries beside their objects.
#[derive(Debug, Clone)]
pub struct NdjsonLayout {
    prefix: Template,
    pipeline: String,
    compression: Compression,
}

impl NdjsonLayout {
    /// The layout `config` describes, for pipeline `pipeline`.
    pub fn new(config: &S3SinkConfig, pipeline: &str) -> Result<Self, String> {
        Ok(NdjsonLayout {
            prefix: parse_prefix(&config.key_prefix)?,
            pipeline: pipeline.to_string(),
            compression: config.compression,
        })
    }
}

impl ObjectLayout for NdjsonLayout {
    fn admit(&self, e: &Event) -> Result<(String, bytes::Bytes), String> {
        let time_us = e.time_us.or(e.cursor_us);
        let mut out = String::new();
        self.prefix.render(&mut out, |p, out| match p {
            Placeholder::ResourceId => encode_component(out, &e.resource_id),
            Placeholder::Pipeline => encode_component(out, &self.pipeline),
            Placeholder::Date => {
                let date = time_us
                    .and_then(chrono::DateTime::from_timestamp_micros)
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| "unknown-date".into());
                encode_component(out, &date);
            }
            // `parse_prefix` refuses `{action}`: objects hold many actions.
            Placeholder::Action => {}
        });
        Ok((out, e.raw.clone()))
    }

    fn encode(&self, kept: &[bytes::Bytes], size: u64) -> std::io::Result<bytes::Bytes> {
        compress(self.compression, kept, size)
    }

    fn extension(&self) -> &'static str {
        self.compression.extension()
    }

    fn content_type(&self) -> &'static str {
        self.compression.content_type()
    }

    fn unit(&self) -> UnitCompression {
        self.compression.unit()
    }

    fn ids_in_body(&self) -> bool {
        true
    }

    fn event_ids(&self, key: &str, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
        crate::sink::event_ids(key, body)
    }

    fn digest_key(&self, name: &str) -> String {
        digest_key(&self.prefix, name)
    }
}

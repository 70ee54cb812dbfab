//! What a `type = "kafka"` sink table holds ([`KafkaSinkConfig`], librdkafka options passed
//! through, secrets among them recognised), and the Kafka sink's side of the contract's
//! [`SinkConfig`]: how the pipeline resolves, checks and builds it. It keeps no archive to read
//! back.

use std::path::Path;

use auditship_sink::{Field, Interpolate, SinkConfig};

use super::*;

impl SinkConfig for KafkaSinkConfig {
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String> {
        let brokers_ok = vars.text("brokers", &mut self.brokers, Field::Setting);
        let topic_ok = vars.text("topic", &mut self.topic, Field::Setting);
        let mut unresolved = Vec::new();
        for (name, value) in self.options.iter_mut() {
            let OptionValue::Text(v) = value else { continue };
            let secret = is_secret_option(name);
            let field = format!("options.\"{name}\"");
            if secret && !v.contains("${") && vars.offline() {
                vars.warn(
                    &field,
                    "is written literally in the pipeline file; use \"${VAR}\"",
                );
            }
            let kind = if secret { Field::Secret } else { Field::Setting };
            if !vars.text(&field, v, kind) {
                unresolved.push(name.clone());
            }
        }
        if !(brokers_ok && topic_ok) {
            return Ok(());
        }
        // Check what can be checked: options whose variables are unset are left out (their
        // names are still checked when the pipeline runs).
        let mut checked = self.clone();
        for name in &unresolved {
            checked.options.remove(name);
        }
        for warning in checked.validate()? {
            vars.warn("", &warning);
        }
        Ok(())
    }

    fn build(&self, ctx: SinkContext, _state_dir: &Path) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(KafkaSink::open(self.clone(), ctx)?))
    }
}

/// Configuration of a `type = "kafka"` sink.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, comma-separated `host:port` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Topic template: literal topic characters plus `{resource_id}`, `{action}` and
    /// `{pipeline}`; characters a topic cannot hold become `_`.
    pub topic: String,
    /// Top-level event field whose value is the message key. Default `resource_id` (the sandbox
    /// id), which keeps each sandbox's events in one partition, in order. `""` sends no key.
    #[serde(default = "default_key")]
    pub key: String,
    /// Compression of message batches: `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// librdkafka settings passed through as they are (SASL, TLS, timeouts, `linger.ms`…).
    /// Values may be strings, integers, floats or booleans.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// Rebuild the producer when deliveries make no progress this long although messages wait.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// How long the start-up check waits for the brokers' metadata.
    #[serde(default = "default_healthcheck_timeout_ms")]
    pub healthcheck_timeout_ms: u64,
}

pub(crate) fn default_key() -> String {
    "resource_id".into()
}

/// 30 s: far above a healthy round trip, short enough that a restarted broker is noticed soon.
pub(crate) fn default_stall_timeout_ms() -> u64 {
    30_000
}

pub(crate) fn default_healthcheck_timeout_ms() -> u64 {
    10_000
}

/// A librdkafka setting's value as written in TOML.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    /// A string, passed as it is.
    Text(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean (`true`/`false`).
    Bool(bool),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Text(s) => f.write_str(s),
            OptionValue::Integer(i) => write!(f, "{i}"),
            OptionValue::Float(x) => write!(f, "{x}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Whether a librdkafka setting holds a secret, whose value must never be printed.
pub fn is_secret_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password")
        || n.contains("secret")
        || n.ends_with(".pem")
        || n.contains("jaas")
        || n == "ssl.key.location"
        || n.contains("token")
}

impl fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, String> = self
            .options
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_option(k) {
                    "***".to_string()
                } else {
                    v.to_string()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("compression", &self.compression)
            .field("options", &options)
            .field("stall_timeout_ms", &self.stall_timeout_ms)
            .field("healthcheck_timeout_ms", &self.healthcheck_timeout_ms)
            .finish()
    }
}

/// Compression codec of message batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A `client.id` from `text`: characters brokers may refuse in one become `_`.
pub(crate) fn client_id(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Settings the sink owns; setting them in `options` is refused, with what to use instead.
pub(crate) const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
];

impl KafkaSinkConfig {
    /// Check the configuration offline (no broker is contacted): the topic template, the key,
    /// and every librdkafka option's name and value. Returns warnings on success.
    pub fn validate(&self) -> Result<Vec<String>, String> {
        if self.brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err("brokers is empty; list at least one, e.g. brokers = \"127.0.0.1:9092\"".into());
        }
        TopicTemplate::parse(&self.topic)?;
        for (name, instead) in OWNED {
            if self.options.contains_key(*name) {
                return Err(format!(
                    "options.\"{name}\" is set by the sink; use `{instead}` instead"
                ));
            }
        }
        if self.stall_timeout_ms < 1_000 {
            return Err("stall_timeout_ms must be at least 1000".into());
        }
        self.client_config("validate")
            .create_native_config()
            .map_err(|e| format!("options: {}", self.scrub(&e.to_string())))?;
        let mut warnings = Vec::new();
        let get = |k: &str| self.options.get(k).map(|v| v.to_string().to_ascii_lowercase());
        if get("enable.idempotence").is_some_and(|v| v == "false") {
            warnings.push(
                "options.\"enable.idempotence\" = false: broker retries may duplicate or reorder events"
                    .into(),
            );
        }
        if get("acks")
            .or_else(|| get("request.required.acks"))
            .is_some_and(|v| v != "all" && v != "-1")
        {
            warnings.push(
                "options.acks is not \"all\": a broker failure can lose events the sink counted as delivered"
                    .into(),
            );
        }
        Ok(warnings)
    }

    /// The librdkafka configuration: the sink's safe defaults, then `options`, then the settings
    /// the sink owns.
    pub(crate) fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Retry without a deadline: a checkpoint waits rather than an event being dropped.
            .set("message.timeout.ms", "0")
            // Bounds librdkafka's own queue; the pipeline's bounded queues push back behind it.
            .set("queue.buffering.max.kbytes", "16384")
            .set("linger.ms", "5")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.options {
            c.set(k, v.to_string());
        }
        c.set("bootstrap.servers", &self.brokers)
            .set("compression.type", self.compression.as_str());
        c
    }

    /// The configuration of the consumer that reads the sink's partitions past the last
    /// checkpoint: `options` (TLS and SASL apply to it as to the producer; producer settings
    /// among them are ignored), assigned partitions only (no group is joined, no offset is
    /// committed), and every message, committed in a transaction or not (the sink writes none).
    /// Settings in `options` that the read depends on are overridden.
    pub(crate) fn consumer_config(&self, sink: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.options {
            c.set(k, v.to_string());
        }
        let id = client_id(&format!("auditship-replay-scan-{sink}"));
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &id)
            .set("group.id", &id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // The end of a partition is where the read stops (see `replay::scan`).
            .set("enable.partition.eof", "true")
            // A recorded offset past a partition's end is an error to see, not a silent jump.
            .set("auto.offset.reset", "error")
            // At a partition's end the broker answers at once rather than waiting for data.
            .set("fetch.wait.max.ms", "10")
            .set("allow.auto.create.topics", "false")
            .set("isolation.level", "read_uncommitted")
            .set_log_level(RDKafkaLogLevel::Warning);
        c
    }

    /// Remove secret option values from a message (librdkafka may quote a bad value).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.options {
            let v = v.to_string();
            if is_secret_option(k) && v.len() >= 3 {
                out = out.replace(&v, "***");
            }
        }
        out
    }
}

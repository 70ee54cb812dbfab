//! The pipeline file as users write it: the serde model, with every default and what it is.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use crate::client::Transport;
use crate::sinks::AnySink;
use crate::transform::TransformConfig;

/// A pipeline file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// The pipeline's name: keys its checkpoints and fills `{pipeline}`. Default: the file name
    /// without `.toml`.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Where events come from.
    pub source: SourceConfig,
    /// Where positions are kept.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// How events are grouped on their way to the sinks.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where frames that are not events go.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Transforms every event passes, in order, before the sinks (see [`crate::transform`]):
    /// tables whose `type` picks the transform, read by the loader into [`TransformConfig`]s.
    #[serde(default)]
    pub transforms: Vec<Spanned<toml::Table>>,
    /// Tamper-evident manifests of the archive sinks' units (see [`crate::manifest`]).
    #[serde(default)]
    pub manifest: ManifestConfig,
    /// Named sinks: tables whose `type` picks the kind, read by the loader into
    /// [`SinkEntry`]s. None is an error the resolution names.
    #[serde(default)]
    pub sinks: BTreeMap<String, Spanned<toml::Table>>,
}

/// `[manifest]`: the hash-chained manifest every file and S3 sink keeps of its closed units.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    /// Keep manifests (default: true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Sign every entry with HMAC-SHA256 under this key, written as `${VAR}` (the key itself
    /// never goes in the file). `auditship verify` then needs the same key to pass.
    #[serde(default)]
    pub hmac_key: Option<Spanned<String>>,
    /// Sign a digest of each archive sink's manifest every period with this Ed25519 private
    /// key: a PKCS#8 PEM file, mode 0600, as `auditship keygen` writes. Anyone with the public
    /// half can then check the archive offline (`auditship verify --public-key`). `${VAR}` is
    /// replaced.
    #[serde(default)]
    pub signing_key_file: Option<Spanned<String>>,
    /// The same key's PEM text, written as `${VAR}` (the key itself never goes in the file).
    /// At most one of `signing_key_file` and `signing_key`.
    #[serde(default)]
    pub signing_key: Option<Spanned<String>>,
    /// The length of a digest's period, in milliseconds (default: one hour; 1000 to 86400000).
    /// Periods are aligned to multiples of it since the Unix epoch; one with nothing sealed
    /// still gets its digest.
    #[serde(default = "default_digest_interval_ms")]
    pub digest_interval_ms: u64,
}

impl Default for ManifestConfig {
    fn default() -> Self {
        ManifestConfig {
            enabled: true,
            hmac_key: None,
            signing_key_file: None,
            signing_key: None,
            digest_interval_ms: default_digest_interval_ms(),
        }
    }
}

fn default_digest_interval_ms() -> u64 {
    3_600_000
}

fn default_true() -> bool {
    true
}

/// A `[sinks.NAME]` table, read: the sink's own settings plus routing and per-sink transforms.
#[derive(Debug)]
pub struct SinkEntry {
    /// The sink's kind and settings (every key but the three below).
    pub sink: AnySink,
    /// Routing: this sink only gets events matching this condition (after the pipeline's
    /// transforms). Events routed away count as delivered for this sink.
    pub when: Option<toml::Value>,
    /// Transforms for this sink only, after the pipeline's: a type (`"ocsf"`, `"dedupe"`) or a
    /// table like a `[[transforms]]` entry.
    pub transforms: Vec<TransformConfig>,
    /// `false`: this sink gets events as received, skipping the pipeline's `[[transforms]]`
    /// (an archive beside a filtered, redacted SIEM feed). Default `true`.
    pub pipeline_transforms: bool,
}

/// `[source]`: the Miosa API and the sandboxes to follow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// API base URL. Default `https://api.miosa.ai/api/v1`.
    #[serde(default = "default_base_url")]
    pub base_url: Spanned<String>,
    /// The API key, normally `"${MIOSA_API_KEY}"`. A literal key works but is warned about.
    #[serde(default)]
    pub api_key: Option<Spanned<String>>,
    /// A file holding the key (a Kubernetes secret mount, say). Exclusive with `api_key`.
    #[serde(default)]
    pub api_key_file: Option<Spanned<String>>,
    /// A PEM file of CA certificates trusted besides the public web roots: a private CA, or a
    /// TLS-inspecting proxy's. `${VAR}` is expanded.
    #[serde(default)]
    pub tls_ca_file: Option<Spanned<String>>,
    /// Accept any TLS certificate. For a test server only: anyone between auditship and the API
    /// could read the key. Certificate checks are on unless this says otherwise.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// Allow an `http://` `base_url` to a host that is not loopback. The key then crosses the
    /// network in cleartext, so this is refused unless set, and warned about at every start.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Sent as `X-MIOSA-Tenant`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Sandbox ids to follow, or `"all"`: every sandbox the key can see, found by listing them
    /// every `discover_interval_ms` (new ones are followed, deleted ones left).
    pub sandboxes: Spanned<SandboxList>,
    /// With `sandboxes = "all"`: follow only ids matching one of these globs (`*`, `?`).
    #[serde(default)]
    pub include: Vec<String>,
    /// With `sandboxes = "all"`: never follow ids matching one of these globs.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// With `sandboxes = "all"`: how often the sandbox list is read.
    #[serde(default = "default_discover_interval_ms")]
    pub discover_interval_ms: u64,
    /// `auto` (socket, polling while it cannot be had), `websocket` or `poll`.
    #[serde(default)]
    pub transport: Transport,
    /// Polling cadence on the fallback path.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Where a sandbox without a checkpoint begins: `earliest`, `now` or an RFC 3339 time.
    #[serde(default = "default_start")]
    pub start: Spanned<String>,
    /// The key's request budget per minute, shared by every sandbox.
    #[serde(default = "default_rpm")]
    pub requests_per_minute: u32,
    /// Timeout of one HTTP request.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The largest REST response body read (default 16 MiB): a larger one stops the pipeline
    /// with an error naming this setting, rather than taking the process's memory.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Timeout of a connection or socket handshake (the contract says 5 s).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Page size of catch-up and polling requests (the API's maximum is 100).
    #[serde(default = "default_page_limit")]
    pub page_limit: u32,
    /// How long event ids are remembered to remove overlaps, in event time.
    #[serde(default = "default_dedupe_window_ms")]
    pub dedupe_window_ms: u64,
    /// Longest wait between socket attempts while on the polling fallback.
    #[serde(default = "default_socket_retry_max_ms")]
    pub socket_retry_max_ms: u64,
    /// Sandboxes on the polling fallback share one org-wide list request per interval:
    /// `auto` (when the pipeline follows at least 10 sandboxes), `always` or `never`.
    #[serde(default)]
    pub org_poll: OrgPoll,
}

/// When tails on the polling fallback share one org-wide poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrgPoll {
    /// When the pipeline follows at least [`OrgPoll::AUTO_MIN_SANDBOXES`] sandboxes (below that,
    /// per-sandbox polls are few, and an org-wide page would carry other sandboxes' events).
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never: each sandbox polls alone.
    Never,
}

impl OrgPoll {
    /// `auto` shares the poll from this many sandboxes on.
    pub const AUTO_MIN_SANDBOXES: usize = 10;

    /// Whether a pipeline following `sandboxes` shares one poll.
    pub fn applies(self, sandboxes: usize) -> bool {
        match self {
            OrgPoll::Auto => sandboxes >= Self::AUTO_MIN_SANDBOXES,
            OrgPoll::Always => true,
            OrgPoll::Never => false,
        }
    }
}

/// A minute: new sandboxes are followed within a minute, at one request a minute.
fn default_discover_interval_ms() -> u64 {
    60_000
}

/// `sandboxes`: a list of ids, or `"all"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxList {
    /// These ids.
    Ids(Vec<String>),
    /// Every sandbox the key can see, discovered.
    All,
}

impl<'de> Deserialize<'de> for SandboxList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SandboxList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of sandbox ids, or \"all\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SandboxList, E> {
                if s == "all" {
                    Ok(SandboxList::All)
                } else {
                    Err(E::custom(format!(
                        "sandboxes = {s:?}: write a list of ids, e.g. [\"{s}\"], or \"all\" to follow every sandbox"
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SandboxList, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<String>()? {
                    ids.push(id);
                }
                Ok(SandboxList::Ids(ids))
            }
        }
        d.deserialize_any(V)
    }
}

/// The SDKs' documented default.
fn default_base_url() -> Spanned<String> {
    Spanned::new(0..0, crate::client::DEFAULT_BASE_URL.to_string())
}
/// The SDKs' polling default.
fn default_poll_interval_ms() -> u64 {
    2_000
}
/// Full history: an archive should not start with a hole.
fn default_start() -> Spanned<String> {
    Spanned::new(0..0, "earliest".to_string())
}
/// Ten times the documented example budget (60 rpm); set it to your key's.
fn default_rpm() -> u32 {
    600
}
fn default_max_response_bytes() -> u64 {
    crate::client::DEFAULT_MAX_RESPONSE_BYTES as u64
}

fn default_request_timeout_ms() -> u64 {
    30_000
}
/// The contract's handshake timeout.
fn default_connect_timeout_ms() -> u64 {
    5_000
}
/// The API's maximum page.
fn default_page_limit() -> u32 {
    100
}
/// Five minutes of ids covers every catch-up/socket overlap we have seen.
fn default_dedupe_window_ms() -> u64 {
    300_000
}
/// The contract's suggested cap.
fn default_socket_retry_max_ms() -> u64 {
    300_000
}

/// `[checkpoint]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The SQLite file.
    #[serde(default = "default_checkpoint_path")]
    pub path: Spanned<String>,
    /// How often positions are committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            path: default_checkpoint_path(),
            commit_interval_ms: default_commit_interval_ms(),
        }
    }
}

fn default_checkpoint_path() -> Spanned<String> {
    Spanned::new(0..0, "state/checkpoints.db".to_string())
}
/// Four commits a second: a restart re-fetches at most a quarter second of events.
fn default_commit_interval_ms() -> u64 {
    250
}

/// `[batch]`: how events are grouped before the sinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// A batch closes at this many events…
    #[serde(default = "default_batch_max_events")]
    pub max_events: usize,
    /// …or this long after its first event.
    #[serde(default = "default_batch_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_batch_max_events(),
            timeout_ms: default_batch_timeout_ms(),
        }
    }
}

fn default_batch_max_events() -> usize {
    2_000
}
/// Short enough that a quiet sandbox's events are durable within a fraction of a second.
fn default_batch_timeout_ms() -> u64 {
    100
}

/// `[dead_letter]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// NDJSON file of payloads that are not events. Default: `dead-letter.ndjson` beside the
    /// checkpoint database.
    #[serde(default)]
    pub path: Option<String>,
}

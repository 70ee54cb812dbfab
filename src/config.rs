//! Pipeline files (TOML): the model users write, `${VAR}` interpolation, and errors that name
//! the file, line and column.
//!
//! ```toml
//! [source]
//! base_url = "https://api.miosa.ai/api/v1"
//! api_key = "${MIOSA_API_KEY}"
//! sandboxes = ["sb-1", "sb-2"]
//!
//! [checkpoint]
//! path = "state/checkpoints.db"
//!
//! [sinks.archive]
//! type = "file"
//! path = "archive/{resource_id}/{date}.ndjson"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use auditship_sink::{Field, Interpolate};
use serde::Deserialize;
use toml::Spanned;

use crate::client::{parse_time, StartAt, Transport};
use crate::secret::ApiKey;
use crate::sinks::AnySink;
use crate::transform::{ChainSpec, Compile, TransformConfig, TransformRef};

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
    /// Transforms every event passes, in order, before the sinks (see [`crate::transform`]).
    #[serde(default)]
    pub transforms: Vec<Spanned<TransformConfig>>,
    /// Tamper-evident manifests of the archive sinks' units (see [`crate::manifest`]).
    #[serde(default)]
    pub manifest: ManifestConfig,
    /// Named sinks; `type` picks the kind.
    pub sinks: BTreeMap<String, Spanned<SinkEntry>>,
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
}

impl Default for ManifestConfig {
    fn default() -> Self {
        ManifestConfig {
            enabled: true,
            hmac_key: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// A `[sinks.NAME]` table: the sink's own settings plus routing and per-sink transforms.
#[derive(Debug, Deserialize)]
pub struct SinkEntry {
    /// The sink's kind and settings.
    #[serde(flatten)]
    pub sink: AnySink,
    /// Routing: this sink only gets events matching this condition (after the pipeline's
    /// transforms). Events routed away count as delivered for this sink.
    #[serde(default)]
    pub when: Option<toml::Value>,
    /// Transforms for this sink only, after the pipeline's: a type (`"ocsf"`, `"dedupe"`) or a
    /// table like a `[[transforms]]` entry.
    #[serde(default)]
    pub transforms: Vec<TransformRef>,
    /// `false`: this sink gets events as received, skipping the pipeline's `[[transforms]]`
    /// (an archive beside a filtered, redacted SIEM feed). Default `true`.
    #[serde(default = "yes")]
    pub pipeline_transforms: bool,
}

fn yes() -> bool {
    true
}

/// How one sink's events are chosen and shaped.
#[derive(Clone, Debug, Default)]
pub struct SinkRoute {
    /// The sink's `when`, then its `transforms`.
    pub chain: ChainSpec,
    /// Whether the pipeline's transforms run before this sink.
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

/// `sandboxes = "all"`: which discovered sandboxes a pipeline follows, and how often it looks.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// Globs an id must match one of (none: every id).
    pub include: Vec<String>,
    /// Globs no id may match.
    pub exclude: Vec<String>,
    /// How often the list is read.
    pub interval: Duration,
    /// Only this shard's sandboxes (set by `run --shard`).
    pub shard: Option<crate::shard::Shard>,
}

impl Discovery {
    /// Whether a discovered sandbox is followed.
    pub fn follows(&self, id: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| glob_match(g, id)))
            && !self.exclude.iter().any(|g| glob_match(g, id))
            && self.shard.is_none_or(|s| s.owns(id))
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
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

/// Resolves one sink's `${VAR}`s for [`auditship_sink::SinkConfig::resolve`], and reports what
/// it cannot resolve under the sink's name and its table's position.
struct SinkVars<'a> {
    file: &'a Path,
    sink: &'a str,
    location: Option<(usize, usize)>,
    offline: bool,
    errors: &'a mut Vec<ConfigError>,
    warnings: &'a mut Vec<String>,
}

impl Interpolate for SinkVars<'_> {
    fn text(&mut self, field: &str, value: &mut String, kind: Field) -> bool {
        match interpolate(value) {
            Ok(v) => {
                if kind == Field::Secret {
                    crate::secret::remember_secret(&v);
                }
                *value = v;
                true
            }
            Err(m) if self.offline && kind != Field::Path => {
                self.warnings.push(format!(
                    "{}: sinks.{}.{field}: {m} (needed to run)",
                    self.file.display(),
                    self.sink
                ));
                false
            }
            Err(m) => {
                self.errors.push(ConfigError {
                    file: self.file.to_path_buf(),
                    location: self.location,
                    message: format!("sinks.{}.{field}: {m}", self.sink),
                });
                false
            }
        }
    }

    fn warn(&mut self, field: &str, message: &str) {
        let at = if field.is_empty() {
            format!("sinks.{}", self.sink)
        } else {
            format!("sinks.{}.{field}", self.sink)
        };
        self.warnings
            .push(format!("{}: {at}: {message}", self.file.display()));
    }

    fn offline(&self) -> bool {
        self.offline
    }
}

/// One problem in a pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one or more files.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Whether a missing `${VAR}` is an error (`Run`) or a warning (`Validate`, which is offline and
/// may run where secrets are not set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    /// Loading to run: everything must resolve.
    Run,
    /// Loading to validate.
    Validate,
    /// Loading to try the transforms offline (`auditship transform`): like `Validate`, except
    /// that the transforms' own secrets (an HMAC key) must resolve.
    Try,
    /// Loading to verify an archive (`auditship verify --pipeline`): like `Validate`, except
    /// that the manifest's HMAC key must resolve.
    Verify,
}

impl LoadMode {
    /// Whether settings that only a run needs (the API key, sink secrets) may be missing.
    fn offline(self) -> bool {
        matches!(self, LoadMode::Validate | LoadMode::Try | LoadMode::Verify)
    }
}

/// A pipeline, loaded and resolved.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// The API base URL.
    pub base_url: String,
    /// The key (absent only when validating without the secret).
    pub api_key: Option<ApiKey>,
    /// `X-MIOSA-Tenant`.
    pub tenant: Option<String>,
    /// How the API's certificate is checked.
    pub tls: crate::client::TlsOptions,
    /// Sandboxes to follow (empty with discovery: see `discovery`).
    pub sandboxes: Vec<String>,
    /// `sandboxes = "all"`: discovered sandboxes, filtered.
    pub discovery: Option<Discovery>,
    /// Transport.
    pub transport: Transport,
    /// Where new sandboxes begin.
    pub start: StartAt,
    /// Polling cadence.
    pub poll_interval: Duration,
    /// Request budget.
    pub requests_per_minute: u32,
    /// One HTTP request's timeout.
    pub request_timeout: Duration,
    /// Handshake timeout.
    pub connect_timeout: Duration,
    /// Page size.
    pub page_limit: u32,
    /// De-duplication window.
    pub dedupe_window: Duration,
    /// Socket retry cap.
    pub socket_retry_max: Duration,
    /// When the polling fallback is shared org-wide.
    pub org_poll: OrgPoll,
    /// The SQLite file.
    pub checkpoint_path: PathBuf,
    /// Commit cadence.
    pub commit_interval: Duration,
    /// Batch size bound.
    pub batch_max_events: usize,
    /// Batch time bound.
    pub batch_timeout: Duration,
    /// Dead-letter file.
    pub dead_letter_path: PathBuf,
    /// Whether file and S3 sinks keep manifests.
    pub manifest_enabled: bool,
    /// The key manifest entries are signed with, if any.
    pub manifest_key: Option<crate::transform::HmacKey>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, AnySink>,
    /// The pipeline's `[[transforms]]`, compiled.
    pub transforms: ChainSpec,
    /// Per sink: routing and transforms.
    pub routes: BTreeMap<String, SinkRoute>,
    /// Things that work but deserve a look.
    pub warnings: Vec<String>,
}

impl Pipeline {
    /// Whether this pipeline can run as loaded. One loaded only to validate may lack a
    /// transform's secret; it is never run masked. `Err` says what to export.
    pub fn check_runnable(&self) -> Result<(), String> {
        let chains = std::iter::once(&self.transforms).chain(self.routes.values().map(|r| &r.chain));
        for chain in chains {
            if let Some(step) = chain.not_runnable() {
                return Err(format!(
                    "{}: {step} has no HMAC key; export {} (or set hmac_key = \"${{VAR}}\") and load the pipeline again",
                    self.file.display(),
                    crate::transform::HMAC_KEY_ENV
                ));
            }
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

/// Deserialize the file, reporting as many key errors as it has. serde stops at the first
/// error, so (1) after an unknown key or a bad value the offending line is blanked (line numbers
/// stay put) and the file is read again, and (2) each section is also read on its own, so an
/// error that ends the search in one section does not hide those of another.
fn deserialize(path: &Path, text: &str) -> Result<PipelineFile, Vec<ConfigError>> {
    #[derive(Deserialize)]
    struct OnlySource {
        #[allow(dead_code)]
        source: SourceConfig,
    }
    #[derive(Deserialize)]
    struct OnlySinks {
        #[allow(dead_code)]
        sinks: BTreeMap<String, SinkEntry>,
    }
    #[derive(Deserialize)]
    struct OnlyRest {
        #[serde(default)]
        #[allow(dead_code)]
        checkpoint: CheckpointConfig,
        #[serde(default)]
        #[allow(dead_code)]
        batch: BatchConfig,
        #[serde(default)]
        #[allow(dead_code)]
        dead_letter: DeadLetterConfig,
        #[serde(default)]
        #[allow(dead_code)]
        transforms: Vec<TransformConfig>,
        #[serde(default)]
        #[allow(dead_code)]
        manifest: ManifestConfig,
    }
    let mut errors = Vec::new();
    let file = collect::<PipelineFile>(path, text, &mut errors);
    if let (Some(file), true) = (file, errors.is_empty()) {
        return Ok(file);
    }
    collect::<OnlySource>(path, text, &mut errors);
    collect::<OnlySinks>(path, text, &mut errors);
    collect::<OnlyRest>(path, text, &mut errors);
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert((e.location, e.message.clone())));
    Err(by_line(errors))
}

/// Read `text` as a `T`, blanking each line with a key error and reading again, and push every
/// error found to `errors`. A syntax error, or an error that blanking caused, ends the search.
fn collect<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    const LINE_ERRORS: [&str; 4] = [
        "unknown field",
        "invalid type",
        "unknown variant",
        "invalid value",
    ];
    let mut work = text.to_string();
    let mut found = 0;
    loop {
        let e = match toml::from_str::<T>(&work) {
            Ok(value) => return (found == 0).then_some(value),
            Err(e) => e,
        };
        let mut message = e.message().trim().to_string();
        let per_line = LINE_ERRORS.iter().any(|k| message.starts_with(k));
        if found > 0 && !per_line {
            return None;
        }
        let start = e.span().map(|span| precise_start(&work, span.start, &message));
        if message.starts_with("missing field `sinks`") {
            message.push_str("; add at least one sink, e.g. [sinks.archive] type = \"file\"");
        }
        errors.push(ConfigError {
            file: path.to_path_buf(),
            location: start.map(|s| line_col(&work, s)),
            message,
        });
        found += 1;
        let start = start.filter(|_| per_line && found < 50)?;
        let line_start = work[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = work[start..].find('\n').map_or(work.len(), |i| start + i);
        if work[line_start..line_end].trim_start().starts_with('[') {
            // A table header: blanking it would move its keys elsewhere.
            return None;
        }
        work.replace_range(line_start..line_end, "");
    }
}

fn by_line(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort_by_key(|e| e.location);
    errors
}

/// serde reports an unknown field inside a sink table at the table's span; point at the key's own
/// line instead when it can be found there.
fn precise_start(text: &str, start: usize, message: &str) -> usize {
    let token = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    // An unknown key is found by its name before `=`, an unknown variant by its quoted value.
    let (key, value) = match (token("unknown field `"), token("unknown variant `")) {
        (Some(k), _) => (Some(k), None),
        (None, Some(v)) => (None, Some(format!("\"{v}\""))),
        (None, None) => return start,
    };
    // The span may cover only the table header: look from it to the next header.
    let region = &text[start.min(text.len())..];
    let mut offset = start;
    for (i, line) in region.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if i > 0 && trimmed.starts_with('[') {
            break;
        }
        let indent = line.len() - trimmed.len();
        if let Some(key) = &key {
            if let Some(rest) = trimmed.strip_prefix(key.as_str()) {
                if rest.trim_start().starts_with('=') {
                    return offset + indent;
                }
            }
        }
        if let Some(value) = &value {
            if i > 0 && trimmed.contains(value.as_str()) {
                return offset + indent;
            }
        }
        offset += line.len();
    }
    start
}

/// Variables the process defines itself (`AUDITSHIP_SHARD` and `AUDITSHIP_SHARDS` under
/// `--shard`); `${VAR}` sees them before the environment.
static DEFINED: std::sync::Mutex<BTreeMap<String, String>> = std::sync::Mutex::new(BTreeMap::new());

/// Define `${name}` for pipeline files loaded from now on (it wins over the environment).
pub fn define_var(name: &str, value: &str) {
    let mut vars = DEFINED.lock().unwrap_or_else(|e| e.into_inner());
    vars.insert(name.to_string(), value.to_string());
}

fn lookup_var(name: &str) -> Option<String> {
    let defined = DEFINED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    defined.or_else(|| std::env::var(name).ok())
}

/// Replace `${VAR}` and `${VAR:-default}` with the environment's values.
pub fn interpolate(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            return Err("unclosed `${` (write ${VAR})".into());
        };
        let expr = &rest[start + 2..start + end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{expr}}}` is not a variable name"));
        }
        match (lookup_var(name), default) {
            (Some(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("environment variable {name} is not set")),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Load a pipeline file. Every problem found is returned, each with its file and line.
pub fn load(path: &Path, mode: LoadMode) -> Result<Pipeline, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            location: None,
            message: format!("cannot read the pipeline file: {e}"),
        }])
    })?;
    parse(path, &text, mode)
}

/// Parse a pipeline from text (`path` names it in errors and gives the default name).
pub fn parse(path: &Path, text: &str, mode: LoadMode) -> Result<Pipeline, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let at = |span: std::ops::Range<usize>| -> Option<(usize, usize)> {
        if span.is_empty() && span.start == 0 {
            None
        } else {
            Some(line_col(text, span.start))
        }
    };
    let err = |errors: &mut Vec<ConfigError>, span: std::ops::Range<usize>, message: String| {
        errors.push(ConfigError {
            file: path.to_path_buf(),
            location: at(span),
            message,
        });
    };
    let file = match deserialize(path, text) {
        Ok(f) => f,
        Err(errors) => return Err(ConfigErrors(errors)),
    };

    let name = match &file.name {
        Some(n) => n.get_ref().clone(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into()),
    };
    if name.is_empty() {
        err(
            &mut errors,
            file.name.as_ref().map_or(0..0, |n| n.span()),
            "name must not be empty".into(),
        );
    }

    let src = &file.source;
    let base_url = match interpolate(src.base_url.get_ref()) {
        Ok(u) => {
            match url::Url::parse(&u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                Ok(parsed) => err(
                    &mut errors,
                    src.base_url.span(),
                    format!("base_url must be http:// or https://, not {}://", parsed.scheme()),
                ),
                Err(e) => err(
                    &mut errors,
                    src.base_url.span(),
                    format!("base_url {u:?} is not a URL: {e}"),
                ),
            }
            u
        }
        Err(m) => {
            err(&mut errors, src.base_url.span(), format!("base_url: {m}"));
            String::new()
        }
    };

    let mut api_key = None;
    match (&src.api_key, &src.api_key_file) {
        (Some(k), Some(f)) => {
            err(&mut errors, f.span(), "set api_key or api_key_file, not both".into());
            let _ = k;
        }
        (Some(k), None) => {
            if !k.get_ref().contains("${") {
                warnings.push(format!(
                    "{}:{}: the API key is written literally in the pipeline file; use api_key = \"${{MIOSA_API_KEY}}\" or api_key_file",
                    path.display(),
                    at(k.span()).map_or(0, |l| l.0)
                ));
            }
            match interpolate(k.get_ref()) {
                Ok(v) if !v.trim().is_empty() => api_key = Some(ApiKey::new(v)),
                Ok(_) => err(&mut errors, k.span(), "api_key is empty".into()),
                Err(m) if mode.offline() => warnings.push(format!("{}: api_key: {m} (needed to run)", path.display())),
                Err(m) => err(&mut errors, k.span(), format!("api_key: {m}; export it before running")),
            }
        }
        (None, Some(f)) => match interpolate(f.get_ref()) {
            Ok(p) => match std::fs::read_to_string(&p) {
                Ok(v) if !v.trim().is_empty() => api_key = Some(ApiKey::new(v)),
                Ok(_) => err(&mut errors, f.span(), format!("api_key_file {p:?} is empty")),
                Err(e) if mode.offline() => warnings.push(format!("{}: api_key_file {p:?}: {e} (needed to run)", path.display())),
                Err(e) => err(&mut errors, f.span(), format!("cannot read api_key_file {p:?}: {e}")),
            },
            Err(m) => err(&mut errors, f.span(), format!("api_key_file: {m}")),
        },
        (None, None) => match std::env::var("MIOSA_API_KEY") {
            Ok(v) if !v.trim().is_empty() => api_key = Some(ApiKey::new(v)),
            _ if mode.offline() => warnings.push(format!(
                "{}: no api_key in [source]; MIOSA_API_KEY will be read when running",
                path.display()
            )),
            _ => err(&mut errors, 0..0, "no API key: set api_key = \"${MIOSA_API_KEY}\" (or api_key_file) in [source], or export MIOSA_API_KEY".into()),
        },
    }

    let (sandboxes, discovery) = match src.sandboxes.get_ref() {
        SandboxList::Ids(ids) => {
            if !src.include.is_empty() || !src.exclude.is_empty() {
                err(
                    &mut errors,
                    src.sandboxes.span(),
                    "include and exclude filter discovered sandboxes; they need sandboxes = \"all\"".into(),
                );
            }
            (ids.clone(), None)
        }
        SandboxList::All => {
            if src.discover_interval_ms < 1_000 {
                err(
                    &mut errors,
                    0..0,
                    format!(
                        "discover_interval_ms = {} is too small; use at least 1000",
                        src.discover_interval_ms
                    ),
                );
            }
            (
                Vec::new(),
                Some(Discovery {
                    include: src.include.clone(),
                    exclude: src.exclude.clone(),
                    interval: Duration::from_millis(src.discover_interval_ms),
                    shard: None,
                }),
            )
        }
    };
    if sandboxes.is_empty() && discovery.is_none() {
        err(
            &mut errors,
            src.sandboxes.span(),
            "sandboxes is empty; list the sandbox ids to follow, or write sandboxes = \"all\"".into(),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for s in &sandboxes {
        if s.is_empty() {
            err(&mut errors, src.sandboxes.span(), "a sandbox id is empty".into());
        } else if !seen.insert(s) {
            err(
                &mut errors,
                src.sandboxes.span(),
                format!("sandbox {s:?} is listed twice"),
            );
        }
    }

    let start = match src.start.get_ref().as_str() {
        "earliest" => StartAt::Earliest,
        "now" => StartAt::Now,
        other => match parse_time(other) {
            Some(t) => StartAt::Time(t),
            None => {
                err(&mut errors, src.start.span(), format!("start {other:?} is not `earliest`, `now` or an RFC 3339 time like 2026-11-01T00:00:00Z"));
                StartAt::Earliest
            }
        },
    };

    for (value, name, min) in [
        (src.poll_interval_ms, "poll_interval_ms", 50),
        (src.request_timeout_ms, "request_timeout_ms", 100),
        (src.connect_timeout_ms, "connect_timeout_ms", 100),
        (file.checkpoint.commit_interval_ms, "commit_interval_ms", 1),
        (file.batch.timeout_ms, "timeout_ms", 1),
    ] {
        if value < min {
            err(
                &mut errors,
                0..0,
                format!("{name} = {value} is too small; use at least {min}"),
            );
        }
    }
    if src.requests_per_minute == 0 {
        err(&mut errors, 0..0, "requests_per_minute must be at least 1".into());
    }
    if !(1..=1000).contains(&src.page_limit) {
        err(
            &mut errors,
            0..0,
            format!("page_limit = {} must be between 1 and 1000", src.page_limit),
        );
    }
    if file.batch.max_events == 0 {
        err(&mut errors, 0..0, "batch.max_events must be at least 1".into());
    }

    let checkpoint_path = match interpolate(file.checkpoint.path.get_ref()) {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        Ok(_) => {
            err(
                &mut errors,
                file.checkpoint.path.span(),
                "checkpoint.path is empty".into(),
            );
            PathBuf::new()
        }
        Err(m) => {
            err(
                &mut errors,
                file.checkpoint.path.span(),
                format!("checkpoint.path: {m}"),
            );
            PathBuf::new()
        }
    };
    let dead_letter_path = match &file.dead_letter.path {
        Some(p) => match interpolate(p) {
            Ok(p) => PathBuf::from(p),
            Err(m) => {
                err(&mut errors, 0..0, format!("dead_letter.path: {m}"));
                PathBuf::new()
            }
        },
        None => checkpoint_path.with_file_name("dead-letter.ndjson"),
    };

    let manifest_key = match &file.manifest.hmac_key {
        None => None,
        Some(text) if !text.get_ref().contains("${") => {
            err(
                &mut errors,
                text.span(),
                "manifest.hmac_key must name an environment variable, e.g. hmac_key = \"${AUDITSHIP_MANIFEST_KEY}\"; the key itself never goes in the pipeline file".into(),
            );
            None
        }
        Some(text) => match interpolate(text.get_ref()) {
            Ok(v) => {
                crate::secret::remember_secret(&v);
                if v.len() < 16 {
                    warnings.push(format!(
                        "{}: manifest.hmac_key is shorter than 16 bytes; use at least 32 random bytes",
                        path.display()
                    ));
                }
                Some(crate::transform::HmacKey::new(v.as_bytes()))
            }
            Err(m) if mode.offline() && mode != LoadMode::Verify => {
                warnings.push(format!(
                    "{}: manifest.hmac_key: {m} (needed to run)",
                    path.display()
                ));
                None
            }
            Err(m) => {
                err(
                    &mut errors,
                    text.span(),
                    format!("manifest.hmac_key: {m}; export it (at least 32 random bytes), or remove hmac_key to keep unsigned manifests"),
                );
                None
            }
        },
    };
    if file.sinks.is_empty() {
        err(
            &mut errors,
            0..0,
            "no sinks; add one, e.g. [sinks.archive] type = \"file\"".into(),
        );
    }
    let mut transform_errors = Vec::new();
    let mut pipeline_chain = ChainSpec::default();
    let warnings_before = warnings.len();
    {
        let mut c = Compile {
            validate_only: mode == LoadMode::Validate,
            warnings: &mut warnings,
            errors: &mut transform_errors,
        };
        let configs: Vec<TransformConfig> = file.transforms.iter().map(|t| t.get_ref().clone()).collect();
        pipeline_chain.extend("transforms", &configs, &mut c);
    }
    for m in transform_errors.drain(..) {
        // Point at the transform the message names (`transforms[2] (...)`).
        let span = m
            .strip_prefix("transforms[")
            .and_then(|r| r.split(']').next())
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| file.transforms.get(n.wrapping_sub(1)))
            .map_or(0..0, |t| t.span());
        let span = if m.contains(": when:") && !span.is_empty() {
            let at = precise_start(text, span.start, "unknown field `when`");
            at..at + 1
        } else {
            span
        };
        err(&mut errors, span, m);
    }
    let mut routes = BTreeMap::new();
    let mut sinks = BTreeMap::new();
    let mut file_paths: BTreeMap<String, String> = BTreeMap::new();
    for (sink_name, sink) in file.sinks {
        let span = sink.span();
        let entry = sink.into_inner();
        let mut route = SinkRoute {
            chain: ChainSpec::default(),
            pipeline_transforms: entry.pipeline_transforms,
        };
        {
            let mut c = Compile {
                validate_only: mode == LoadMode::Validate,
                warnings: &mut warnings,
                errors: &mut transform_errors,
            };
            let configs: Vec<TransformConfig> = entry.transforms.iter().map(|t| t.0.clone()).collect();
            route
                .chain
                .extend(&format!("sinks.{sink_name}.transforms"), &configs, &mut c);
            if let Some(when) = &entry.when {
                route
                    .chain
                    .route(&format!("sinks.{sink_name}.when"), when, &mut c);
            }
        }
        for m in transform_errors.drain(..) {
            // Point at the `when` or `transforms` line the message is about.
            let key = if m.starts_with(&format!("sinks.{sink_name}.when")) {
                "when"
            } else {
                "transforms"
            };
            let at = precise_start(text, span.start, &format!("unknown field `{key}`"));
            err(&mut errors, at..at + 1, m);
        }
        if !entry.pipeline_transforms && file.transforms.is_empty() {
            warnings.push(format!(
                "{}: sinks.{sink_name}: pipeline_transforms = false has no effect: the pipeline has no [[transforms]]",
                path.display()
            ));
        }
        routes.insert(sink_name.clone(), route);
        let mut sink = entry.sink;
        match sink.config_mut() {
            Ok(config) => {
                let mut vars = SinkVars {
                    file: path,
                    sink: &sink_name,
                    location: at(span.clone()),
                    offline: mode.offline(),
                    errors: &mut errors,
                    warnings: &mut warnings,
                };
                if let Err(m) = config.resolve(&mut vars) {
                    err(&mut errors, span.clone(), format!("sinks.{sink_name}: {m}"));
                }
                // Two sinks appending to the same files would roll back each other's bytes
                // after a crash.
                if let Some(files) = config.appends_to() {
                    if let Some(other) = file_paths.insert(files.to_string(), sink_name.clone()) {
                        err(
                            &mut errors,
                            span.clone(),
                            format!("sinks.{sink_name} writes the same files as sinks.{other}; give each sink its own path"),
                        );
                    }
                }
            }
            Err(missing) => err(&mut errors, span.clone(), format!("sinks.{sink_name}: {missing}")),
        }
        sinks.insert(sink_name, sink);
    }

    // Transform warnings name the transform; say which file it is in.
    for w in &mut warnings[warnings_before..] {
        if !w.starts_with(&path.display().to_string()) {
            *w = format!("{}: {w}", path.display());
        }
    }
    let mut tls = crate::client::TlsOptions {
        ca_file: None,
        insecure_skip_verify: src.tls_insecure_skip_verify,
    };
    if let Some(f) = &src.tls_ca_file {
        match interpolate(f.get_ref()) {
            Ok(p) if std::path::Path::new(&p).is_file() => tls.ca_file = Some(PathBuf::from(p)),
            Ok(p) if mode.offline() => {
                warnings.push(format!("{}: tls_ca_file {p:?} does not exist here (needed to run)", path.display()));
                tls.ca_file = Some(PathBuf::from(p));
            }
            Ok(p) => err(
                &mut errors,
                f.span(),
                format!("tls_ca_file {p:?} is not a file; give the PEM file of the CA that signs the API's certificate"),
            ),
            Err(m) => err(&mut errors, f.span(), format!("tls_ca_file: {m}")),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Pipeline {
        name,
        file: path.to_path_buf(),
        base_url,
        api_key,
        tenant: src.tenant.clone(),
        tls,
        sandboxes,
        discovery,
        transport: src.transport,
        start,
        poll_interval: Duration::from_millis(src.poll_interval_ms),
        requests_per_minute: src.requests_per_minute,
        request_timeout: Duration::from_millis(src.request_timeout_ms),
        connect_timeout: Duration::from_millis(src.connect_timeout_ms),
        page_limit: src.page_limit,
        dedupe_window: Duration::from_millis(src.dedupe_window_ms),
        socket_retry_max: Duration::from_millis(src.socket_retry_max_ms),
        org_poll: src.org_poll,
        checkpoint_path,
        commit_interval: Duration::from_millis(file.checkpoint.commit_interval_ms),
        batch_max_events: file.batch.max_events,
        batch_timeout: Duration::from_millis(file.batch.timeout_ms),
        dead_letter_path,
        manifest_enabled: file.manifest.enabled,
        manifest_key,
        sinks,
        transforms: pipeline_chain,
        routes,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
base_url = "http://127.0.0.1:1/api/v1"
api_key = "${AUDITSHIP_TEST_KEY_GOOD}"
sandboxes = ["sb-1", "sb/2"]
transport = "poll"
start = "2026-11-01T00:00:00Z"

[checkpoint]
path = "state/cp.db"

[sinks.archive]
type = "file"
path = "archive/{resource_id}/{date}.ndjson"
compression = "zstd"
"#;

    #[test]
    fn a_good_pipeline_resolves() {
        std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
        let p = parse(Path::new("pipes/good.toml"), GOOD, LoadMode::Run).unwrap();
        assert_eq!(p.name, "good");
        assert_eq!(p.api_key.unwrap().expose(), "msk_test_123");
        assert_eq!(p.transport, Transport::Poll);
        assert_eq!(
            p.start,
            StartAt::Time(parse_time("2026-11-01T00:00:00Z").unwrap())
        );
        assert_eq!(p.dead_letter_path, PathBuf::from("state/dead-letter.ndjson"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn unknown_keys_name_file_line_and_column() {
        let text = GOOD.replace("transport = \"poll\"", "transprot = \"poll\"");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with("p.toml:6:1: unknown field `transprot`"),
            "{shown}"
        );
    }

    #[test]
    fn errors_in_one_section_do_not_hide_another_sections() {
        let text = GOOD
            .replace(
                "transport = \"poll\"",
                "transprot = \"poll\"\npoll_interval_ms = \"fast\"",
            )
            .replace("path = \"archive/", "pth = \"archive/");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("p.toml:6:1: unknown field `transprot`")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("p.toml:7:") && l.contains("invalid type")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("p.toml:15:1: unknown field `pth`")),
            "{lines:#?}"
        );
    }

    #[test]
    fn every_bad_key_of_a_file_is_listed() {
        let text = GOOD
            .replace("transport = \"poll\"", "transprot = \"poll\"")
            .replace(
                "compression = \"zstd\"",
                "compression = \"brotli\"\nrotate_max_byte = 5",
            );
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines[0].starts_with("p.toml:6:1: unknown field `transprot`"),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with("p.toml:15:1: unknown variant `brotli`"),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with("p.toml:16:1: unknown field `rotate_max_byte`"),
            "{lines:#?}"
        );
    }

    #[test]
    fn bad_values_are_errors_with_lines() {
        let text = GOOD
            .replace("\"2026-11-01T00:00:00Z\"", "\"yesterday\"")
            .replace("{date}", "{day}");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.0[0].to_string().starts_with("p.toml:7:9: start \"yesterday\""),
            "{e}"
        );
        assert!(e.0[1].to_string().contains("unknown placeholder `{day}`"), "{e}");
        let text = GOOD.replace("\"poll\"", "\"carrier-pigeon\"");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(e.to_string().starts_with("p.toml:6:13:"), "{e}");
    }

    #[test]
    fn missing_variables_fail_runs_but_only_warn_validation() {
        let text = GOOD.replace("AUDITSHIP_TEST_KEY_GOOD", "AUDITSHIP_TEST_KEY_UNSET");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap_err();
        assert!(
            e.to_string().contains("AUDITSHIP_TEST_KEY_UNSET is not set"),
            "{e}"
        );
        let p = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap();
        assert!(p.warnings[0].contains("needed to run"));
    }

    #[test]
    fn a_literal_key_works_but_is_warned_about_without_printing_it() {
        let text = GOOD.replace("${AUDITSHIP_TEST_KEY_GOOD}", "msk_live_literal");
        let p = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap();
        assert_eq!(p.api_key.unwrap().expose(), "msk_live_literal");
        assert!(p.warnings[0].contains("literally"));
        assert!(!p.warnings[0].contains("msk_live_literal"));
    }

    #[test]
    #[cfg(feature = "kafka")]
    fn kafka_sinks_resolve_variables_and_name_their_mistakes() {
        std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
        std::env::set_var("AUDITSHIP_TEST_KAFKA_PW", "kafka-pw-7731");
        let text = format!(
            "{GOOD}\n[sinks.siem]\ntype = \"kafka\"\nbrokers = \"${{AUDITSHIP_TEST_KAFKA_HOST:-127.0.0.1:9092}}\"\ntopic = \"audit.{{action}}\"\noptions = {{ \"sasl.password\" = \"${{AUDITSHIP_TEST_KAFKA_PW}}\", \"linger.ms\" = 10 }}\n"
        );
        let p = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap();
        let AnySink::Kafka(k) = &p.sinks["siem"] else {
            panic!("a kafka sink")
        };
        assert_eq!(k.brokers, "127.0.0.1:9092");
        assert!(!format!("{p:?}").contains("kafka-pw-7731"));
        assert_eq!(
            crate::secret::redact_all("auth kafka-pw-7731 failed"),
            "auth *** failed"
        );

        let bad = [
            ("compression = \"brotli\"", "unknown variant `brotli`"),
            (
                "options = { \"bootstrap.servers\" = \"x:1\" }",
                "use `brokers` instead",
            ),
            ("options = { \"no.such.thing\" = 1 }", "no.such.thing"),
            ("partitoin = 3", "unknown field `partitoin`"),
        ];
        for (extra, want) in bad {
            let text = format!(
                "{GOOD}\n[sinks.siem]\ntype = \"kafka\"\nbrokers = \"h:1\"\ntopic = \"t\"\n{extra}\n"
            );
            let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
            assert!(e.to_string().contains(want), "{extra}: {e}");
            assert!(e.to_string().contains("p.toml:"), "located: {e}");
        }
    }

    #[test]
    #[cfg(feature = "s3")]
    fn s3_sinks_resolve_variables_and_refuse_credentials_in_the_file() {
        std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
        std::env::set_var("AUDITSHIP_TEST_BUCKET", "audit-7");
        let text = format!(
            "{GOOD}\n[sinks.cold]\ntype = \"s3\"\nbucket = \"${{AUDITSHIP_TEST_BUCKET}}\"\nobject_lock_mode = \"COMPLIANCE\"\nobject_lock_retain_days = 30\n"
        );
        let p = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap();
        let AnySink::S3(c) = &p.sinks["cold"] else {
            panic!("an s3 sink")
        };
        assert_eq!(c.bucket, "audit-7");
        assert_eq!(c.key_prefix, "{pipeline}/{date}/{resource_id}/");

        let bad = [
            (
                "aws_access_key_id = \"AKIA\"",
                "unknown field `aws_access_key_id`",
            ),
            ("object_lock_mode = \"GOVERNANCE\"", "go together"),
            ("compression = \"brotli\"", "unknown variant `brotli`"),
            ("key_prefix = \"{sandbox}/\"", "unknown placeholder"),
        ];
        for (extra, want) in bad {
            let text = format!("{GOOD}\n[sinks.cold]\ntype = \"s3\"\nbucket = \"b\"\n{extra}\n");
            let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn transforms_and_routes_compile_and_their_mistakes_are_located() {
        let text = format!(
            "{GOOD}\n[[transforms]]\ntype = \"filter\"\nwhen = {{ action = {{ ne = \"allow\" }} }}\n\n[sinks.siem]\ntype = \"file\"\npath = \"siem/{{date}}.ndjson\"\nwhen = {{ action = \"reject\" }}\ntransforms = [\"ocsf\", {{ type = \"remove\", fields = [\"unmapped\"] }}]\npipeline_transforms = false\n"
        );
        let p = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap();
        assert!(!p.transforms.is_empty());
        assert!(!p.routes["siem"].pipeline_transforms);
        assert!(p.routes["archive"].pipeline_transforms);
        assert!(p.routes["archive"].chain.is_empty());
        let mut chain = p.routes["siem"].chain.start();
        assert_eq!(chain.label(0), "sinks.siem.when");
        assert_eq!(chain.label(2), "sinks.siem.transforms[2] (remove)");
        assert!(matches!(
            chain.apply(&auditship_sink::Event {
                raw: bytes::Bytes::from_static(br#"{"id":"e","action":"allow"}"#),
                id: "e".into(),
                resource_id: "sb".into(),
                cursor_us: None,
                cursor_span: None,
                time_us: None,
                seq: 1,
            }),
            crate::transform::Outcome::Drop { step: 0 }
        ));

        let bad = [
            ("transforms = [\"ocsff\"]", "unknown transform `ocsff`", Some(20)),
            (
                "when = { action = { is = \"x\" } }",
                "sinks.siem.when: `action`: unknown test `is`",
                Some(20),
            ),
            (
                "transforms = [{ type = \"redact\" }]",
                "sinks.siem.transforms[1] (redact): nothing to redact",
                Some(20),
            ),
            ("pipeline_transforms = \"no\"", "invalid type", None),
        ];
        for (line, want, at_line) in bad {
            let text = format!("{GOOD}\n[sinks.siem]\ntype = \"file\"\npath = \"siem.ndjson\"\n{line}\n");
            let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
            assert!(e.to_string().contains(want), "{line}: {e}");
            if let Some(l) = at_line {
                assert!(e.to_string().starts_with(&format!("p.toml:{l}:")), "{line}: {e}");
            }
        }
        let text = format!("{GOOD}\n[[transforms]]\ntype = \"filter\"\nwhen = \"reject\"\n");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("p.toml:19:1: transforms[1] (filter): when: a condition is a table"),
            "{e}"
        );
    }

    #[test]
    fn sandboxes_all_discovers_with_globs_and_mistakes_are_named() {
        let text = GOOD.replace(
            r#"sandboxes = ["sb-1", "sb/2"]"#,
            "sandboxes = \"all\"\ninclude = [\"sb-prod-*\"]\nexclude = [\"*-canary\"]",
        );
        let p = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap();
        let d = p.discovery.expect("discovery");
        assert!(p.sandboxes.is_empty());
        assert!(d.follows("sb-prod-7"));
        assert!(!d.follows("sb-prod-7-canary"));
        assert!(!d.follows("sb-dev-1"));
        for (line, want) in [
            ("sandboxes = \"every\"", "or \"all\" to follow every sandbox"),
            ("sandboxes = []", "write sandboxes = \"all\""),
        ] {
            let text = GOOD.replace(r#"sandboxes = ["sb-1", "sb/2"]"#, line);
            let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
            assert!(e.to_string().contains(want), "{line}: {e}");
        }
        let text = GOOD.replace(
            r#"sandboxes = ["sb-1", "sb/2"]"#,
            "sandboxes = [\"a\"]\ninclude = [\"a*\"]",
        );
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(e.to_string().contains("need sandboxes = \"all\""), "{e}");
    }

    #[test]
    fn globs() {
        for (g, t, want) in [
            ("*", "", true),
            ("sb-*", "sb-1", true),
            ("sb-?", "sb-12", false),
            ("*-canary", "a-b-canary", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(g, t), want, "{g} ~ {t}");
        }
    }

    #[test]
    fn two_sinks_cannot_share_files() {
        let text = format!(
            "{GOOD}\n[sinks.copy]\ntype = \"file\"\npath = \"archive/{{resource_id}}/{{date}}.ndjson\"\n"
        );
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(
            e.to_string()
                .contains("sinks.copy writes the same files as sinks.archive"),
            "{e}"
        );
    }

    #[test]
    fn interpolation() {
        std::env::set_var("AUDITSHIP_TEST_X", "x");
        assert_eq!(interpolate("a${AUDITSHIP_TEST_X}b").unwrap(), "axb");
        assert_eq!(interpolate("${AUDITSHIP_TEST_NOPE:-dflt}").unwrap(), "dflt");
        assert!(interpolate("${AUDITSHIP_TEST_NOPE}").is_err());
        assert!(interpolate("${bad name}").is_err());
    }
}

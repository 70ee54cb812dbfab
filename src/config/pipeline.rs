//! A pipeline, loaded and resolved: what the runner and the operations take.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{StartAt, Transport};
use crate::secret::ApiKey;
use crate::sinks::AnySink;
use crate::transform::Transforms;

use super::OrgPoll;

/// How one sink's events are chosen and shaped.
#[derive(Clone, Debug, Default)]
pub struct SinkRoute {
    /// The sink's `when`, then its `transforms`.
    pub transforms: Transforms,
    /// Whether the pipeline's transforms run before this sink.
    pub pipeline_transforms: bool,
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

/// A pipeline, loaded and resolved.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
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
    /// Whether an `http://` base URL to another machine is allowed (`allow_insecure_http`).
    pub allow_insecure_http: bool,
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
    /// The largest REST response body read.
    pub max_response_bytes: usize,
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
    /// Signed digests of the manifests, when `[manifest]` names a signing key.
    pub digests: Option<crate::manifest::DigestSettings>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, AnySink>,
    /// The pipeline's `[[transforms]]`, compiled.
    pub transforms: Transforms,
    /// Per sink: routing and transforms.
    pub routes: BTreeMap<String, SinkRoute>,
    /// Things that work but deserve a look.
    pub warnings: Vec<String>,
}

impl PipelineConfig {
    /// Whether this pipeline can run as loaded. One loaded only to validate may lack a
    /// transform's secret; it is never run masked. `Err` says what to export.
    pub fn check_runnable(&self) -> Result<(), String> {
        let lists = std::iter::once(&self.transforms).chain(self.routes.values().map(|r| &r.transforms));
        for list in lists {
            if let Some(step) = list.not_runnable() {
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

//! The transform stage: filter, redact and reshape events, per pipeline and per sink.
//!
//! ```toml
//! [[transforms]]                  # pipeline-wide, in order, before every sink
//! type = "redact"
//! fields = ["metadata.authorization"]
//! mode = "hmac-sha256"
//!
//! [sinks.siem]
//! type = "file"
//! path = "siem/{date}.ndjson"
//! when = { action = "reject" }    # routing: this sink only gets matching events
//! transforms = ["ocsf"]           # then these, for this sink only
//! ```
//!
//! - A [`Transformer`] runs on one event at a time and ends in [`Outcome::Keep`] (possibly reshaped),
//!   [`Outcome::Drop`] (a filter, a route or `dedupe` said no: it counts as delivered, so the
//!   checkpoint passes it) or [`Outcome::Fail`] (a transform could not do its work: the event
//!   goes to the dead-letter file with the reason, durably, before its batch is acknowledged).
//! - An event that only passes filters keeps its original bytes; one that a transform changed
//!   is written anew as compact JSON (field order kept).
//! - Transforms are deterministic (HMAC under a fixed key, OCSF without "now"), so a batch
//!   written again after a sink error is byte-identical.

pub mod condition;
pub mod ocsf;
pub mod path;
pub mod raw;
pub mod redact;
pub mod route;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use auditship_sink::{Batch, Event};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

pub use condition::Condition;
use path::FieldPath;
pub use redact::{HmacKey, Redact, RedactMode, SECRET_PATTERNS};

/// The environment variable `redact` reads its HMAC key from when `hmac_key` is not set.
pub const HMAC_KEY_ENV: &str = "AUDITSHIP_HMAC_KEY";

/// One transform as written in a pipeline file; `type` picks it.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TransformConfig {
    /// Keep only the events that match `when`.
    Filter(FilterConfig),
    /// Remove, mask or HMAC fields, and secret-looking text anywhere.
    Redact(RedactConfig),
    /// Set fields to fixed values.
    Set(SetConfig),
    /// Move fields.
    Rename(RenameConfig),
    /// Delete fields.
    Remove(RemoveConfig),
    /// Drop events whose id was seen among the last `window_events`.
    Dedupe(DedupeConfig),
    /// Reshape into OCSF (HTTP Activity / Network Activity).
    Ocsf(OcsfConfig),
}

/// An error reading a transform's or sink's options, with the path of the key it is about.
pub type OptionsError = serde_path_to_error::Error<toml::de::Error>;

/// Read a kind's options (every key of its table but `type`), keeping the path of an error.
fn options<T: serde::de::DeserializeOwned>(options: toml::Value) -> Result<T, OptionsError> {
    serde_path_to_error::deserialize(options)
}

impl TransformConfig {
    /// The kinds, as `type` names them.
    pub const KINDS: [&'static str; 7] = ["filter", "redact", "set", "rename", "remove", "dedupe", "ocsf"];

    /// A transform of kind `kind` from its options (its table without `type`). Read this way,
    /// not through an internally tagged enum, because serde buffers a tagged table and loses
    /// the keys' paths: an error here names the key it is about. `None`: no such kind.
    pub fn from_options(kind: &str, opts: toml::Value) -> Option<Result<Self, OptionsError>> {
        Some(match kind {
            "filter" => options(opts).map(TransformConfig::Filter),
            "redact" => options(opts).map(TransformConfig::Redact),
            "set" => options(opts).map(TransformConfig::Set),
            "rename" => options(opts).map(TransformConfig::Rename),
            "remove" => options(opts).map(TransformConfig::Remove),
            "dedupe" => options(opts).map(TransformConfig::Dedupe),
            "ocsf" => options(opts).map(TransformConfig::Ocsf),
            _ => return None,
        })
    }

    /// A transform named without options, as a sink's `transforms` may list it (`"ocsf"`).
    pub fn by_name(name: &str) -> Result<Self, String> {
        match name {
            "ocsf" => Ok(TransformConfig::Ocsf(OcsfConfig::default())),
            "dedupe" => Ok(TransformConfig::Dedupe(DedupeConfig {
                field: default_dedupe_field(),
                window_events: default_window_events(),
            })),
            "filter" | "redact" | "set" | "rename" | "remove" => Err(format!(
                "transform `{name}` needs options; write it as a table, e.g. {{ type = \"{name}\", ... }}"
            )),
            other => Err(format!(
                "unknown transform `{other}` (by name: ocsf, dedupe; as a table: filter, redact, set, rename, remove, dedupe, ocsf)"
            )),
        }
    }

    /// The `type` as written.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformConfig::Filter(_) => "filter",
            TransformConfig::Redact(_) => "redact",
            TransformConfig::Set(_) => "set",
            TransformConfig::Rename(_) => "rename",
            TransformConfig::Remove(_) => "remove",
            TransformConfig::Dedupe(_) => "dedupe",
            TransformConfig::Ocsf(_) => "ocsf",
        }
    }
}

/// `type = "filter"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Events matching this condition are kept; the rest are dropped (and count as delivered).
    pub when: toml::Value,
}

/// `type = "redact"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Field paths whose whole value is redacted.
    #[serde(default)]
    pub fields: Vec<String>,
    /// `remove`, `mask` (default) or `hmac-sha256`.
    #[serde(default)]
    pub mode: RedactMode,
    /// Regular expressions; matches inside every string of the event are redacted (only the
    /// group named `secret` when the pattern has one).
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Also redact text that looks like a credential (API keys, bearer tokens, JWTs, cloud and
    /// SaaS keys, `password=`/`token=` values, private keys).
    #[serde(default)]
    pub secrets: bool,
    /// The replacement for `mask`. Default `***`.
    #[serde(default = "default_mask")]
    pub mask: String,
    /// The HMAC key for `hmac-sha256`, normally `"${VAR}"`. Default: the environment variable
    /// `AUDITSHIP_HMAC_KEY`.
    #[serde(default)]
    pub hmac_key: Option<String>,
    /// Redact only events matching this condition.
    #[serde(default)]
    pub when: Option<toml::Value>,
}

fn default_mask() -> String {
    "***".into()
}

/// `type = "set"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Field path → value (any TOML value), e.g. `{ "labels.env" = "prod" }`.
    pub fields: toml::Table,
    /// Only for events matching this condition.
    #[serde(default)]
    pub when: Option<toml::Value>,
}

/// `type = "rename"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameConfig {
    /// Old path → new path, e.g. `{ host = "destination.host" }`.
    pub fields: toml::Table,
    /// Only for events matching this condition.
    #[serde(default)]
    pub when: Option<toml::Value>,
}

/// `type = "remove"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveConfig {
    /// Field paths to delete.
    pub fields: Vec<String>,
    /// Only for events matching this condition.
    #[serde(default)]
    pub when: Option<toml::Value>,
}

/// `type = "dedupe"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// The field that identifies an event. Default `id`.
    #[serde(default = "default_dedupe_field")]
    pub field: String,
    /// How many recent values are remembered (memory is about 100 bytes each).
    #[serde(default = "default_window_events")]
    pub window_events: usize,
}

fn default_dedupe_field() -> String {
    "id".into()
}
fn default_window_events() -> usize {
    100_000
}

/// `type = "ocsf"`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcsfConfig {
    /// Reshape only events matching this condition.
    #[serde(default)]
    pub when: Option<toml::Value>,
}

/// What a transformer did with one event.
#[derive(Debug)]
pub enum Outcome {
    /// Pass it on (reshaped or as it was).
    Keep(Event),
    /// A filter, route or dedupe dropped it; it counts as delivered. `step` is the index of the
    /// step that did ([`Transformer::label`]).
    Drop {
        /// Which step.
        step: usize,
    },
    /// A transform failed on it; the reason names the transform.
    Fail(String),
}

#[derive(Clone, Debug)]
enum Kind {
    Filter(Condition),
    Redact(Redact),
    Set(Vec<(FieldPath, Value)>),
    Rename(Vec<(FieldPath, FieldPath)>),
    Remove(Vec<FieldPath>),
    Dedupe { field: FieldPath, window: usize },
    Ocsf,
}

#[derive(Clone, Debug)]
struct Step {
    /// `transform 2 (redact)`, `sinks.siem.transforms 1 (ocsf)`, `route of sinks.siem`.
    label: String,
    when: Option<Condition>,
    kind: Kind,
}

/// A compiled list of transforms: cheap to clone; [`Transforms::start`] gives a [`Transformer`]
/// with its own state (dedupe windows).
#[derive(Clone, Debug, Default)]
pub struct Transforms {
    steps: Vec<Step>,
}

/// Where to report problems while compiling: errors stop a load; warnings are shown.
pub struct Compile<'a> {
    /// Loading only to validate: a missing HMAC key is a warning, not an error.
    pub validate_only: bool,
    /// Warnings found.
    pub warnings: &'a mut Vec<String>,
    /// Errors found.
    pub errors: &'a mut Vec<String>,
}

impl Transforms {
    /// Whether the list does nothing (events pass as they are, without being read).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The first step that cannot run as configured (an HMAC redaction whose key was missing
    /// when the pipeline was loaded to validate), by its label.
    pub fn not_runnable(&self) -> Option<&str> {
        self.steps
            .iter()
            .find(|s| matches!(&s.kind, Kind::Redact(r) if r.lacks_key()))
            .map(|s| s.label.as_str())
    }

    /// Add a routing condition (a sink's `when`) as the first step.
    pub fn route(&mut self, label: &str, when: &toml::Value, c: &mut Compile<'_>) {
        match Condition::compile(when) {
            Ok(cond) => self.steps.insert(
                0,
                Step {
                    label: label.to_string(),
                    when: None,
                    kind: Kind::Filter(cond),
                },
            ),
            Err(e) => c.errors.push(format!("{label}: {e}")),
        }
    }

    /// Compile `configs` and append them; `prefix` names them in messages
    /// (`transforms` → `transforms[2] (redact)`).
    pub fn extend(&mut self, prefix: &str, configs: &[TransformConfig], c: &mut Compile<'_>) {
        let mut after_ocsf = false;
        for (i, cfg) in configs.iter().enumerate() {
            let label = format!("{prefix}[{}] ({})", i + 1, cfg.kind());
            let compiled = compile_one(&label, cfg, c);
            if let (TransformConfig::Redact(r), true) = (cfg, after_ocsf) {
                if !r.fields.is_empty() {
                    c.warnings.push(format!(
                        "{label} comes after ocsf, so its fields are OCSF paths (the request path is http_request.url.path, Miosa's metadata is unmapped.metadata); to be sure nothing stays in clear, redact before ocsf"
                    ));
                }
            }
            if matches!(cfg, TransformConfig::Ocsf(_)) {
                after_ocsf = true;
            }
            if let Some(step) = compiled {
                self.steps.push(step);
            }
        }
    }

    /// Whether the list has an `ocsf` step.
    pub fn has_ocsf(&self) -> bool {
        self.steps.iter().any(|s| matches!(s.kind, Kind::Ocsf))
    }

    /// A runnable list of transforms: a [`Transformer`].
    pub fn start(&self) -> Transformer {
        self.start_counted(Arc::default())
    }

    /// [`Transforms::start`], counting what its `ocsf` steps do into `ocsf` (once per batch,
    /// from [`Transformer::apply_batch`]).
    pub fn start_counted(&self, ocsf: Arc<ocsf::OcsfCounters>) -> Transformer {
        if self.has_ocsf() {
            ocsf.active.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Transformer {
            ocsf,
            tally: ocsf::Tally::default(),
            state: self
                .steps
                .iter()
                .map(|s| match s.kind {
                    Kind::Dedupe { window, .. } => Some(Window::new(window)),
                    _ => None,
                })
                .collect(),
            spec: self.clone(),
        }
    }
}

fn compile_one(label: &str, cfg: &TransformConfig, c: &mut Compile<'_>) -> Option<Step> {
    let errors_before = c.errors.len();
    let path = |c: &mut Compile<'_>, p: &str| -> Option<FieldPath> {
        FieldPath::parse(p)
            .map_err(|e| c.errors.push(format!("{label}: {e}")))
            .ok()
    };
    let when = |c: &mut Compile<'_>, w: &Option<toml::Value>| -> Option<Condition> {
        match w.as_ref().map(Condition::compile) {
            Some(Ok(cond)) => Some(cond),
            Some(Err(e)) => {
                c.errors.push(format!("{label}: when: {e}"));
                None
            }
            None => None,
        }
    };
    let (when_cond, kind) = match cfg {
        TransformConfig::Filter(f) => match Condition::compile(&f.when) {
            Ok(cond) => (None, Kind::Filter(cond)),
            Err(e) => {
                c.errors.push(format!("{label}: when: {e}"));
                return None;
            }
        },
        TransformConfig::Redact(r) => {
            let w = when(c, &r.when);
            let fields: Vec<FieldPath> = r.fields.iter().filter_map(|f| path(c, f)).collect();
            let mut patterns = r.patterns.clone();
            if r.secrets {
                patterns.extend(SECRET_PATTERNS.iter().map(|p| p.to_string()));
            }
            if r.fields.is_empty() && patterns.is_empty() {
                c.errors.push(format!(
                    "{label}: nothing to redact; list `fields`, `patterns`, or set secrets = true"
                ));
                return None;
            }
            let key = if r.mode == RedactMode::HmacSha256 {
                hmac_key(label, r.hmac_key.as_deref(), c)
            } else {
                if r.hmac_key.is_some() {
                    c.warnings.push(format!(
                        "{label}: hmac_key is only used with mode = \"hmac-sha256\""
                    ));
                }
                None
            };
            match Redact::new(fields, r.mode, r.mask.clone(), key, patterns) {
                Ok(red) => (w, Kind::Redact(red)),
                Err(e) => {
                    c.errors.push(format!("{label}: {e}"));
                    return None;
                }
            }
        }
        TransformConfig::Set(s) => {
            let w = when(c, &s.when);
            let pairs = s
                .fields
                .iter()
                .filter_map(|(k, v)| path(c, k).map(|p| (p, condition::to_json(v))))
                .collect();
            (w, Kind::Set(pairs))
        }
        TransformConfig::Rename(r) => {
            let w = when(c, &r.when);
            let mut pairs = Vec::new();
            for (from, to) in &r.fields {
                let Some(to) = to.as_str() else {
                    c.errors
                        .push(format!("{label}: fields.{from}: the new name must be a string"));
                    continue;
                };
                if let (Some(a), Some(b)) = (path(c, from), path(c, to)) {
                    pairs.push((a, b));
                }
            }
            (w, Kind::Rename(pairs))
        }
        TransformConfig::Remove(r) => {
            let w = when(c, &r.when);
            if r.fields.is_empty() {
                c.errors
                    .push(format!("{label}: fields is empty; list the paths to delete"));
            }
            let fields = r.fields.iter().filter_map(|f| path(c, f)).collect();
            (w, Kind::Remove(fields))
        }
        TransformConfig::Dedupe(d) => {
            if d.window_events == 0 {
                c.errors
                    .push(format!("{label}: window_events must be at least 1"));
            }
            let field = path(c, &d.field)?;
            (
                None,
                Kind::Dedupe {
                    field,
                    window: d.window_events,
                },
            )
        }
        TransformConfig::Ocsf(o) => (when(c, &o.when), Kind::Ocsf),
    };
    if c.errors.len() > errors_before {
        return None;
    }
    Some(Step {
        label: label.to_string(),
        when: when_cond,
        kind,
    })
}

fn hmac_key(label: &str, configured: Option<&str>, c: &mut Compile<'_>) -> Option<HmacKey> {
    let (value, from) = match configured {
        Some(text) => {
            if !text.contains("${") {
                c.warnings.push(format!(
                    "{label}: hmac_key is written literally in the pipeline file; use hmac_key = \"${{VAR}}\" or export {HMAC_KEY_ENV}"
                ));
            }
            (crate::vars::interpolate(text), "hmac_key".to_string())
        }
        None => (
            std::env::var(HMAC_KEY_ENV)
                .map_err(|_| format!("environment variable {HMAC_KEY_ENV} is not set")),
            HMAC_KEY_ENV.to_string(),
        ),
    };
    match value {
        Ok(v) if !v.is_empty() => {
            if v.len() < 16 {
                c.warnings.push(format!(
                    "{label}: the HMAC key ({from}) is shorter than 16 bytes; a short key lets values be guessed"
                ));
            }
            crate::secret::remember_secret(&v);
            Some(HmacKey::new(v.as_bytes()))
        }
        other => {
            let why = match other {
                Ok(_) => format!("{from} is empty"),
                Err(e) => e,
            };
            let msg = format!(
                "{label}: mode = \"hmac-sha256\" needs a key: {why}; export {HMAC_KEY_ENV} (or set hmac_key = \"${{VAR}}\") with at least 16 random bytes"
            );
            if c.validate_only {
                c.warnings.push(format!("{msg} (needed to run)"));
            } else {
                c.errors.push(msg);
            }
            None
        }
    }
}

/// The ids (or other field values) seen most recently, bounded.
#[derive(Debug)]
struct Window {
    seen: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    cap: usize,
}

impl Window {
    fn new(cap: usize) -> Self {
        Window {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Whether `key` is new (and remember it).
    fn admit(&mut self, key: &str) -> bool {
        if self.seen.contains(key) {
            return false;
        }
        let k: Arc<str> = Arc::from(key);
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(k.clone());
        self.order.push_back(k);
        true
    }
}

/// What a transformer did with a batch.
#[derive(Debug)]
pub struct Applied {
    /// The events to hand on, under the batch's number.
    pub batch: Arc<Batch>,
    /// Events a transform failed on, with the reasons.
    pub failed: Vec<(Event, String)>,
    /// Events a filter, route or dedupe dropped.
    pub dropped: u64,
}

/// An event as a transformer works on it: JSON text, parsed into a tree only when a step needs one,
/// and written back only when a tree was changed.
struct Doc {
    bytes: Bytes,
    value: Option<Value>,
    /// The tree was changed after `bytes` were made.
    stale_bytes: bool,
    /// The event differs from what arrived.
    changed: bool,
}

impl Doc {
    /// The tree (parsed on first use); `None` when the text is not a JSON object.
    fn value(&mut self) -> Option<&mut Value> {
        if self.value.is_none() {
            match serde_json::from_slice::<Value>(&self.bytes) {
                Ok(v @ Value::Object(_)) => self.value = Some(v),
                _ => return None,
            }
        }
        self.value.as_mut()
    }

    /// Whether `cond` holds; `None` when the text is not a JSON object. Without a tree yet, only
    /// the fields the condition names are parsed.
    fn holds(&mut self, cond: &Condition) -> Option<bool> {
        match &self.value {
            Some(v) => Some(cond.eval(v)),
            None => raw::Fields::parse(&self.bytes).map(|f| cond.eval(&f)),
        }
    }

    /// The tree was changed.
    fn touch(&mut self) {
        self.stale_bytes = true;
        self.changed = true;
    }

    /// The current text (written from the tree if the tree changed).
    fn bytes(&mut self) -> Option<Bytes> {
        if self.stale_bytes {
            let v = self.value.as_ref()?;
            self.bytes = Bytes::from(serde_json::to_vec(v).ok()?);
            self.stale_bytes = false;
        }
        Some(self.bytes.clone())
    }

    /// New text from a step that works on text; the old tree is gone.
    fn replace_bytes(&mut self, b: Bytes) {
        self.bytes = b;
        self.value = None;
        self.stale_bytes = false;
        self.changed = true;
    }
}

/// A running list of transforms (owns its dedupe windows). The default does nothing.
#[derive(Debug, Default)]
pub struct Transformer {
    spec: Transforms,
    state: Vec<Option<Window>>,
    /// What the `ocsf` steps did since the last batch ended.
    tally: ocsf::Tally,
    ocsf: Arc<ocsf::OcsfCounters>,
}

impl Transformer {
    /// Whether the list does nothing.
    pub fn is_empty(&self) -> bool {
        self.spec.is_empty()
    }

    /// The name of step `i` as messages show it, e.g. `sinks.siem.when` or `transforms[1] (filter)`.
    pub fn label(&self, i: usize) -> &str {
        self.spec.steps.get(i).map_or("?", |s| s.label.as_str())
    }

    /// Run the transforms on one event.
    pub fn apply(&mut self, event: &Event) -> Outcome {
        if self.spec.steps.is_empty() {
            return Outcome::Keep(event.clone());
        }
        let mut doc = Doc {
            bytes: event.raw.clone(),
            value: None,
            stale_bytes: false,
            changed: false,
        };
        for (i, step) in self.spec.steps.iter().enumerate() {
            let fail = |why: &str| Outcome::Fail(format!("{}: {why}", step.label));
            // Dedupe on the id needs no parse while nothing has changed the event.
            if let (Kind::Dedupe { field, .. }, false, None) = (&step.kind, doc.changed, &step.when) {
                if field.as_str() == "id" {
                    if let Some(w) = self.state[i].as_mut() {
                        if !w.admit(&event.id) {
                            return Outcome::Drop { step: i };
                        }
                    }
                    continue;
                }
            }
            if let Some(cond) = &step.when {
                match doc.holds(cond) {
                    Some(true) => {}
                    Some(false) => continue,
                    None => return fail("the event is not a JSON object"),
                }
            }
            if let Kind::Filter(cond) = &step.kind {
                match doc.holds(cond) {
                    Some(true) => continue,
                    Some(false) => return Outcome::Drop { step: i },
                    None => return fail("the event is not a JSON object"),
                }
            }
            if let Kind::Ocsf = step.kind {
                // The mapping reads and writes JSON text: it needs no tree, and unmapped
                // fields keep their exact spelling.
                // A tree that a previous step changed is read as it is, not written and re-read.
                let mapped = match (&doc.value, doc.stale_bytes) {
                    (Some(v), true) => ocsf::map_value(v, &event.resource_id),
                    _ => ocsf::map(&doc.bytes, &event.resource_id),
                };
                match mapped {
                    Ok(out) => {
                        self.tally.mapped += 1;
                        self.tally.unmapped_fields += out.unmapped_fields as u64;
                        doc.replace_bytes(Bytes::from(out.json));
                    }
                    Err(e) => {
                        self.tally.failed += 1;
                        return fail(&e);
                    }
                }
                continue;
            }
            let Some(v) = doc.value() else {
                return fail("the event is not a JSON object");
            };
            let mut dirty = false;
            match &step.kind {
                Kind::Filter(_) | Kind::Ocsf => {}
                Kind::Redact(r) => dirty = r.apply(v),
                Kind::Set(pairs) => {
                    for (p, x) in pairs {
                        if let Err(e) = p.insert(v, x.clone()) {
                            return fail(&e);
                        }
                    }
                    dirty = true;
                }
                Kind::Rename(pairs) => {
                    for (from, to) in pairs {
                        if let Some(x) = from.remove(v) {
                            if let Err(e) = to.insert(v, x) {
                                return fail(&e);
                            }
                            dirty = true;
                        }
                    }
                }
                Kind::Remove(paths) => {
                    for p in paths {
                        dirty |= p.remove(v).is_some();
                    }
                }
                Kind::Dedupe { field, .. } => {
                    let key = match field.get(v) {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Null) | None => continue,
                        Some(other) => other.to_string(),
                    };
                    if let Some(w) = self.state[i].as_mut() {
                        if !w.admit(&key) {
                            return Outcome::Drop { step: i };
                        }
                    }
                }
            }
            if dirty {
                doc.touch();
            }
        }
        if !doc.changed {
            return Outcome::Keep(event.clone());
        }
        match doc.bytes() {
            Some(raw) => Outcome::Keep(Event {
                raw,
                // The server's spelling of the cursor lives in the original bytes; the
                // checkpoint took it before the transforms ran.
                cursor_span: None,
                ..event.clone()
            }),
            None => Outcome::Fail("the transformed event could not be written as JSON".into()),
        }
    }

    /// Run the transforms on a batch: the batch to hand on (same number), the events that failed
    /// with their reasons, and how many were dropped (the caller counts them per pipeline or
    /// sink).
    pub fn apply_batch(&mut self, batch: &Arc<Batch>) -> Applied {
        if self.is_empty() {
            return Applied {
                batch: batch.clone(),
                failed: Vec::new(),
                dropped: 0,
            };
        }
        let mut kept = Vec::with_capacity(batch.events.len());
        let mut failed = Vec::new();
        let mut dropped = 0u64;
        for e in &batch.events {
            match self.apply(e) {
                Outcome::Keep(out) => kept.push(out),
                Outcome::Drop { .. } => dropped += 1,
                Outcome::Fail(reason) => failed.push((e.clone(), reason)),
            }
        }
        self.tally.flush(&self.ocsf);
        Applied {
            batch: Arc::new(Batch {
                number: batch.number,
                events: kept,
            }),
            failed,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests;

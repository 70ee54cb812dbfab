//! From the file as written to a [`PipelineConfig`]: variables resolved, values checked, transforms
//! compiled, sinks resolved through the registry. One method per section of the file; every
//! problem found is kept, each where it is written, and all are returned together.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::client::{parse_time, StartAt, TlsOptions};
use crate::secret::ApiKey;
use crate::sinks::AnySink;
use crate::transform::{Compile, HmacKey, TransformConfig, Transforms};

use super::interpolate::{interpolate, SinkVars};
use super::load::{line_col, read, LoadMode};
use super::model::{PipelineFile, SandboxList, SinkEntry, SourceConfig};
use super::spans::{KeySpans, Step};
use super::{ConfigError, ConfigErrors, Discovery, PipelineConfig, SinkRoute};

mod manifest;

/// The shortest API key accepted: anything shorter is a placeholder or a cut-off variable.
const MIN_KEY_CHARS: usize = 8;

/// Read `text` (the file at `path`) and resolve it into a [`PipelineConfig`].
pub(super) fn resolve(path: &Path, text: &str, mode: LoadMode) -> Result<PipelineConfig, ConfigErrors> {
    let read = read(path, text).map_err(ConfigErrors)?;
    // The text parsed once already: its keys' spans are there.
    let spans = KeySpans::parse(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            location: None,
            message: e.message().to_string(),
        }])
    })?;
    let mut r = Resolver {
        path,
        text,
        mode,
        spans,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let file = &read.file;
    let src = &file.source;
    let name = r.name(file);
    let base_url = r.base_url(src);
    let api_key = r.api_key(src);
    let (sandboxes, discovery) = r.sandboxes(src);
    let start = r.start(src);
    r.limits(file);
    let (checkpoint_path, dead_letter_path) = r.paths(file);
    let manifest_key = r.manifest_key(file);
    let digests = r.digests(file);
    let warnings_before = r.warnings.len();
    let transforms = r.transforms(&read.transforms);
    let (sinks, routes) = r.sinks(read.sinks, !read.transforms.is_empty());
    // Transform warnings name the transform; say which file it is in.
    for w in &mut r.warnings[warnings_before..] {
        if !w.starts_with(&path.display().to_string()) {
            *w = format!("{}: {w}", path.display());
        }
    }
    let tls = r.tls(src);
    if !r.errors.is_empty() {
        return Err(ConfigErrors(r.errors));
    }
    Ok(PipelineConfig {
        name,
        file: path.to_path_buf(),
        base_url,
        api_key,
        allow_insecure_http: src.allow_insecure_http,
        tenant: src.tenant.clone(),
        tls,
        sandboxes,
        discovery,
        transport: src.transport,
        start,
        poll_interval: Duration::from_millis(src.poll_interval_ms),
        requests_per_minute: src.requests_per_minute,
        request_timeout: Duration::from_millis(src.request_timeout_ms),
        max_response_bytes: usize::try_from(src.max_response_bytes).unwrap_or(usize::MAX),
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
        digests,
        sinks,
        transforms,
        routes,
        warnings: r.warnings,
    })
}

/// The file being resolved, and what was found wrong in it so far.
struct Resolver<'a> {
    path: &'a Path,
    text: &'a str,
    mode: LoadMode,
    spans: KeySpans<'a>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Resolver<'_> {
    /// Line and column of a span (none for `0..0`, a default's).
    fn at(&self, span: Range<usize>) -> Option<(usize, usize)> {
        if span.is_empty() && span.start == 0 {
            None
        } else {
            Some(line_col(self.text, span.start))
        }
    }

    /// A problem at `span`.
    fn err(&mut self, span: Range<usize>, message: String) {
        self.errors.push(ConfigError {
            file: self.path.to_path_buf(),
            location: self.at(span),
            message,
        });
    }

    /// A problem at the key `path` names (or the nearest table it is in).
    fn err_at(&mut self, path: &[Step], message: String) {
        let span = self.spans.locate(path).map_or(0..0, |l| l.span);
        self.err(span, message);
    }

    /// `name`, else the file's name without `.toml`.
    fn name(&mut self, file: &PipelineFile) -> String {
        let name = match &file.name {
            Some(n) => n.get_ref().clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into()),
        };
        if name.is_empty() {
            self.err(
                file.name.as_ref().map_or(0..0, |n| n.span()),
                "name must not be empty".into(),
            );
        }
        name
    }

    /// `base_url`, resolved and checked.
    fn base_url(&mut self, src: &SourceConfig) -> String {
        let base_url = match interpolate(src.base_url.get_ref()) {
            Ok(u) => {
                match url::Url::parse(&u) {
                    Ok(parsed)
                        if parsed.scheme() == "http"
                            && !crate::client::is_loopback(&parsed)
                            && !src.allow_insecure_http =>
                    {
                        self.err(
                            src.base_url.span(),
                            format!("base_url {u:?} is http:// to another machine: the API key would cross the network in cleartext; use https://, or set allow_insecure_http = true in [source] if nobody can listen on that network"),
                        )
                    }
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                    Ok(parsed) => self.err(
                        src.base_url.span(),
                        format!("base_url must be http:// or https://, not {}://", parsed.scheme()),
                    ),
                    Err(e) => self.err(src.base_url.span(), format!("base_url {u:?} is not a URL: {e}")),
                }
                u
            }
            Err(m) => {
                self.err(src.base_url.span(), format!("base_url: {m}"));
                String::new()
            }
        };
        base_url
    }

    /// The API key: `api_key`, `api_key_file`, else `MIOSA_API_KEY`.
    fn api_key(&mut self, src: &SourceConfig) -> Option<ApiKey> {
        let mut api_key = None;
        match (&src.api_key, &src.api_key_file) {
            (Some(k), Some(f)) => {
                self.err(f.span(), "set api_key or api_key_file, not both".into());
                let _ = k;
            }
            (Some(k), None) => {
                if !k.get_ref().contains("${") {
                    self.warnings.push(format!(
                        "{}:{}: the API key is written literally in the pipeline file; use api_key = \"${{MIOSA_API_KEY}}\" or api_key_file",
                        self.path.display(),
                        self.at(k.span()).map_or(0, |l| l.0)
                    ));
                }
                match interpolate(k.get_ref()) {
                    Ok(v) if !v.trim().is_empty() => api_key = Some(ApiKey::new(v)),
                    Ok(_) => self.err(k.span(), "api_key is empty".into()),
                    Err(m) if self.mode.offline() => self.warnings.push(format!("{}: api_key: {m} (needed to run)", self.path.display())),
                    Err(m) => self.err(k.span(), format!("api_key: {m}; export it before running")),
                }
            }
            (None, Some(f)) => match interpolate(f.get_ref()) {
                Ok(p) => match std::fs::read_to_string(&p) {
                    Ok(v) if !v.trim().is_empty() => api_key = Some(ApiKey::new(v)),
                    Ok(_) => self.err(f.span(), format!("api_key_file {p:?} is empty")),
                    Err(e) if self.mode.offline() => self.warnings.push(format!("{}: api_key_file {p:?}: {e} (needed to run)", self.path.display())),
                    Err(e) => self.err(f.span(), format!("cannot read api_key_file {p:?}: {e}")),
                },
                Err(m) => self.err(f.span(), format!("api_key_file: {m}")),
            },
            (None, None) => match std::env::var("MIOSA_API_KEY") {
                Ok(v) if !v.trim().is_empty() => api_key = Some(ApiKey::new(v)),
                _ if self.mode.offline() => self.warnings.push(format!(
                    "{}: no api_key in [source]; MIOSA_API_KEY will be read when running",
                    self.path.display()
                )),
                _ => self.err(0..0, "no API key: set api_key = \"${MIOSA_API_KEY}\" (or api_key_file) in [source], or export MIOSA_API_KEY".into()),
            },
        }
        // A key this short is a placeholder or a truncated variable, and too short to be
        // redacted from logs safely (it would match ordinary text).
        if let Some(n) = api_key.as_ref().map(|k| k.expose().chars().count()) {
            if n < MIN_KEY_CHARS {
                let span = src
                    .api_key
                    .as_ref()
                    .or(src.api_key_file.as_ref())
                    .map_or(0..0, |s| s.span());
                self.err(span, format!("the API key is {n} characters long, too short to be a Miosa key (at least {MIN_KEY_CHARS}); check what api_key, api_key_file or MIOSA_API_KEY holds"));
                api_key = None;
            }
        }
        api_key
    }

    /// `sandboxes`: the ids, or discovery with `"all"`.
    fn sandboxes(&mut self, src: &SourceConfig) -> (Vec<String>, Option<Discovery>) {
        let (sandboxes, discovery) = match src.sandboxes.get_ref() {
            SandboxList::Ids(ids) => {
                if !src.include.is_empty() || !src.exclude.is_empty() {
                    self.err(
                        src.sandboxes.span(),
                        "include and exclude filter discovered sandboxes; they need sandboxes = \"all\""
                            .into(),
                    );
                }
                (ids.clone(), None)
            }
            SandboxList::All => {
                if src.discover_interval_ms < 1_000 {
                    self.err(
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
            self.err(
                src.sandboxes.span(),
                "sandboxes is empty; list the sandbox ids to follow, or write sandboxes = \"all\"".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for s in &sandboxes {
            if s.is_empty() {
                self.err(src.sandboxes.span(), "a sandbox id is empty".into());
            } else if !seen.insert(s) {
                self.err(src.sandboxes.span(), format!("sandbox {s:?} is listed twice"));
            }
        }
        (sandboxes, discovery)
    }

    /// `start`.
    fn start(&mut self, src: &SourceConfig) -> StartAt {
        let start = match src.start.get_ref().as_str() {
            "earliest" => StartAt::Earliest,
            "now" => StartAt::Now,
            other => match parse_time(other) {
                Some(t) => StartAt::Time(t),
                None => {
                    self.err(src.start.span(), format!("start {other:?} is not `earliest`, `now` or an RFC 3339 time like 2026-11-01T00:00:00Z"));
                    StartAt::Earliest
                }
            },
        };
        start
    }

    /// Every number with a floor.
    fn limits(&mut self, file: &PipelineFile) {
        for (value, name, min) in [
            (file.source.poll_interval_ms, "poll_interval_ms", 50),
            (file.source.request_timeout_ms, "request_timeout_ms", 100),
            (file.source.max_response_bytes, "max_response_bytes", 65_536),
            (file.source.connect_timeout_ms, "connect_timeout_ms", 100),
            (file.checkpoint.commit_interval_ms, "commit_interval_ms", 1),
            (file.batch.timeout_ms, "timeout_ms", 1),
        ] {
            if value < min {
                self.err(0..0, format!("{name} = {value} is too small; use at least {min}"));
            }
        }
        if file.source.requests_per_minute == 0 {
            self.err(0..0, "requests_per_minute must be at least 1".into());
        }
        if !(1..=1000).contains(&file.source.page_limit) {
            self.err(
                0..0,
                format!(
                    "page_limit = {} must be between 1 and 1000",
                    file.source.page_limit
                ),
            );
        }
        if file.batch.max_events == 0 {
            self.err(0..0, "batch.max_events must be at least 1".into());
        }
    }

    /// The checkpoint database and the dead-letter file.
    fn paths(&mut self, file: &PipelineFile) -> (PathBuf, PathBuf) {
        let checkpoint_path = match interpolate(file.checkpoint.path.get_ref()) {
            Ok(p) if !p.is_empty() => PathBuf::from(p),
            Ok(_) => {
                self.err(file.checkpoint.path.span(), "checkpoint.path is empty".into());
                PathBuf::new()
            }
            Err(m) => {
                self.err(file.checkpoint.path.span(), format!("checkpoint.path: {m}"));
                PathBuf::new()
            }
        };
        let dead_letter_path = match &file.dead_letter.path {
            Some(p) => match interpolate(p) {
                Ok(p) => PathBuf::from(p),
                Err(m) => {
                    self.err(0..0, format!("dead_letter.path: {m}"));
                    PathBuf::new()
                }
            },
            None => checkpoint_path.with_file_name("dead-letter.ndjson"),
        };
        (checkpoint_path, dead_letter_path)
    }

    /// `tls_ca_file` and `tls_insecure_skip_verify`.
    fn tls(&mut self, src: &SourceConfig) -> TlsOptions {
        let mut tls = crate::client::TlsOptions {
            ca_file: None,
            insecure_skip_verify: src.tls_insecure_skip_verify,
        };
        if let Some(f) = &src.tls_ca_file {
            match interpolate(f.get_ref()) {
                Ok(p) if std::path::Path::new(&p).is_file() => tls.ca_file = Some(PathBuf::from(p)),
                Ok(p) if self.mode.offline() => {
                    self.warnings.push(format!("{}: tls_ca_file {p:?} does not exist here (needed to run)", self.path.display()));
                    tls.ca_file = Some(PathBuf::from(p));
                }
                Ok(p) => self.err(
                    f.span(),
                    format!("tls_ca_file {p:?} is not a file; give the PEM file of the CA that signs the API's certificate"),
                ),
                Err(m) => self.err(f.span(), format!("tls_ca_file: {m}")),
            }
        }
        tls
    }

    /// The pipeline's `[[transforms]]`, compiled. A transform's error points at the transform
    /// (its `when`, when the message is about that).
    fn transforms(&mut self, transforms: &[Spanned<TransformConfig>]) -> Transforms {
        let mut errors = Vec::new();
        let mut list = Transforms::default();
        {
            let mut c = Compile {
                validate_only: self.mode == LoadMode::Validate,
                warnings: &mut self.warnings,
                errors: &mut errors,
            };
            let configs: Vec<TransformConfig> = transforms.iter().map(|t| t.get_ref().clone()).collect();
            list.extend("transforms", &configs, &mut c);
        }
        for m in errors {
            // The transform the message names (`transforms[2] (...)`, counted from 1).
            let index = m
                .strip_prefix("transforms[")
                .and_then(|r| r.split(']').next())
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1));
            match index {
                Some(i) if m.contains(": when:") => {
                    self.err_at(&[Step::key("transforms"), Step::Index(i), Step::key("when")], m)
                }
                Some(i) => self.err_at(&[Step::key("transforms"), Step::Index(i)], m),
                None => self.err(0..0, m),
            }
        }
        list
    }

    /// Every sink: its route and transforms compiled, its settings resolved through the registry.
    /// `pipeline_transforms`: whether the pipeline has `[[transforms]]`.
    fn sinks(
        &mut self,
        entries: BTreeMap<String, Spanned<SinkEntry>>,
        pipeline_transforms: bool,
    ) -> (BTreeMap<String, AnySink>, BTreeMap<String, SinkRoute>) {
        if entries.is_empty() {
            self.err(
                0..0,
                "no sinks; add one, e.g. [sinks.archive] type = \"file\"".into(),
            );
        }
        let mut routes = BTreeMap::new();
        let mut sinks = BTreeMap::new();
        let mut file_paths: BTreeMap<String, String> = BTreeMap::new();
        for (sink_name, entry) in entries {
            let span = entry.span();
            let entry = entry.into_inner();
            routes.insert(
                sink_name.clone(),
                self.route(&sink_name, &entry, pipeline_transforms),
            );
            let mut sink = entry.sink;
            let location = self.at(span.clone());
            match sink.config_mut() {
                Ok(config) => {
                    let mut vars = SinkVars {
                        file: self.path,
                        sink: &sink_name,
                        location,
                        offline: self.mode.offline(),
                        errors: &mut self.errors,
                        warnings: &mut self.warnings,
                    };
                    if let Err(m) = config.resolve(&mut vars) {
                        self.err(span.clone(), format!("sinks.{sink_name}: {m}"));
                    }
                    // Two sinks appending to the same files would roll back each other's bytes
                    // after a crash.
                    if let Some(files) = config.appends_to() {
                        if let Some(other) = file_paths.insert(files.to_string(), sink_name.clone()) {
                            self.err(
                                span.clone(),
                                format!("sinks.{sink_name} writes the same files as sinks.{other}; give each sink its own path"),
                            );
                        }
                    }
                }
                Err(missing) => self.err(span.clone(), format!("sinks.{sink_name}: {missing}")),
            }
            sinks.insert(sink_name, sink);
        }
        (sinks, routes)
    }

    /// A sink's `when` and `transforms`, compiled; an error points at the key it is about.
    fn route(&mut self, sink_name: &str, entry: &SinkEntry, pipeline_transforms: bool) -> SinkRoute {
        let mut route = SinkRoute {
            transforms: Transforms::default(),
            pipeline_transforms: entry.pipeline_transforms,
        };
        let mut errors = Vec::new();
        {
            let mut c = Compile {
                validate_only: self.mode == LoadMode::Validate,
                warnings: &mut self.warnings,
                errors: &mut errors,
            };
            route.transforms.extend(
                &format!("sinks.{sink_name}.transforms"),
                &entry.transforms,
                &mut c,
            );
            if let Some(when) = &entry.when {
                route
                    .transforms
                    .route(&format!("sinks.{sink_name}.when"), when, &mut c);
            }
        }
        for m in errors {
            let key = if m.starts_with(&format!("sinks.{sink_name}.when")) {
                "when"
            } else {
                "transforms"
            };
            self.err_at(&[Step::key("sinks"), Step::key(sink_name), Step::key(key)], m);
        }
        if !entry.pipeline_transforms && !pipeline_transforms {
            self.warnings.push(format!(
                "{}: sinks.{sink_name}: pipeline_transforms = false has no effect: the pipeline has no [[transforms]]",
                self.path.display()
            ));
        }
        route
    }
}

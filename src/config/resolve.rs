//! From the file as written to a [`Pipeline`]: variables resolved, values checked, transforms
//! compiled, sinks resolved through the registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{parse_time, StartAt};
use crate::secret::ApiKey;
use crate::transform::{ChainSpec, Compile, TransformConfig};

use super::interpolate::{interpolate, SinkVars};
use super::load::{deserialize, line_col, precise_start, LoadMode};
use super::model::SandboxList;
use super::{ConfigError, ConfigErrors, Discovery, Pipeline, SinkRoute};

/// Read `text` (the file at `path`) and resolve it into a [`Pipeline`].
pub(super) fn resolve(path: &Path, text: &str, mode: LoadMode) -> Result<Pipeline, ConfigErrors> {
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

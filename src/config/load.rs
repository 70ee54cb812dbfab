//! Reading a pipeline file: every key error in one pass, each at its own line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::model::{
    BatchConfig, CheckpointConfig, DeadLetterConfig, ManifestConfig, SinkEntry, SourceConfig,
};
use super::{ConfigError, ConfigErrors, Pipeline, PipelineFile};
use crate::transform::TransformConfig;

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
    pub(super) fn offline(self) -> bool {
        matches!(self, LoadMode::Validate | LoadMode::Try | LoadMode::Verify)
    }
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
    super::resolve::resolve(path, text, mode)
}

/// 1-based line and column of byte `offset` of `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

/// Deserialize the file, reporting as many key errors as it has. serde stops at the first
/// error, so (1) after an unknown key or a bad value the offending line is blanked (line numbers
/// stay put) and the file is read again, and (2) each section is also read on its own, so an
/// error that ends the search in one section does not hide those of another.
pub(super) fn deserialize(path: &Path, text: &str) -> Result<PipelineFile, Vec<ConfigError>> {
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
pub(super) fn precise_start(text: &str, start: usize, message: &str) -> usize {
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

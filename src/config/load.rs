//! Reading a pipeline file: every key error in one pass, each at its own line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::model::{
    BatchConfig, CheckpointConfig, DeadLetterConfig, ManifestConfig, SinkEntry, SourceConfig,
};
use super::spans::{self, KeySpans, Step};
use super::{ConfigError, ConfigErrors, PipelineConfig, PipelineFile};
use crate::sinks::AnySink;
use crate::transform::{OptionsError, TransformConfig};

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
pub fn load(path: &Path, mode: LoadMode) -> Result<PipelineConfig, ConfigErrors> {
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
pub fn parse(path: &Path, text: &str, mode: LoadMode) -> Result<PipelineConfig, ConfigErrors> {
    super::resolve::resolve(path, text, mode)
}

/// 1-based line and column of byte `offset` of `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

/// A pipeline file read, before its values are resolved: the file, and its `type`-tagged
/// tables read into what they name.
pub(super) struct Read {
    /// The file as written.
    pub(super) file: PipelineFile,
    /// `[[transforms]]`, each with its table's span.
    pub(super) transforms: Vec<Spanned<TransformConfig>>,
    /// `[sinks.NAME]`, each with its table's span.
    pub(super) sinks: BTreeMap<String, Spanned<SinkEntry>>,
}

/// Read the file, reporting as many key errors as it has, each where it is written. serde stops
/// at the first error, so (1) after an error at a key the key's line is blanked (line numbers
/// stay put) and the file is read again; (2) each section is also read on its own, so an error
/// that ends the search in one section does not hide those of another; (3) sinks and
/// transforms, whose `type` picks what they are, are read table by table (see
/// [`read_tagged`]), a bad key dropped and the rest read again.
pub(super) fn read(path: &Path, text: &str) -> Result<Read, Vec<ConfigError>> {
    #[derive(Deserialize)]
    struct OnlySource {
        #[allow(dead_code)]
        source: SourceConfig,
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
        manifest: ManifestConfig,
    }
    let mut errors = Vec::new();
    let spans = match KeySpans::parse(text) {
        Ok(spans) => spans,
        Err(e) => {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                location: e.span().map(|s| line_col(text, s.start)),
                message: e.message().trim().to_string(),
            });
            return Err(errors);
        }
    };
    let file = collect::<PipelineFile>(path, text, &mut errors);
    if file.is_none() {
        collect::<OnlySource>(path, text, &mut errors);
        collect::<OnlyRest>(path, text, &mut errors);
    }
    let mut tagged = Tagged {
        path,
        text,
        spans: &spans,
        errors: &mut errors,
    };
    let (transforms, sinks) = tagged.tables();
    match file {
        Some(file) if errors.is_empty() => Ok(Read {
            file,
            transforms,
            sinks,
        }),
        _ => {
            let mut seen = std::collections::HashSet::new();
            errors.retain(|e| seen.insert((e.location, e.message.clone())));
            errors.sort_by_key(|e| e.location);
            Err(errors)
        }
    }
}

/// Read `text` as a `T`, blanking each line with a key error and reading again, and push every
/// error found to `errors`. An error that no key's line holds (a missing key, a whole table),
/// or one that blanking caused, ends the search.
fn collect<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut work = text.to_string();
    let mut found = 0;
    loop {
        // Blanking a line can break the syntax (a value over several lines): that ends it.
        let e = match serde_path_to_error::deserialize::<_, T>(toml::Deserializer::parse(&work).ok()?) {
            Ok(value) => return (found == 0).then_some(value),
            Err(e) => e,
        };
        let spans = KeySpans::parse(&work).ok()?;
        let located = spans.locate(&spans::path(&[], e.path()));
        // The line of the key the error is at, when the whole path is written and is a key
        // (not a table's header, whose blanking would move its keys elsewhere).
        let key_line = located
            .as_ref()
            .filter(|l| l.whole)
            .map(|l| line_of(&work, l.span.start))
            .filter(|line| !work[line.clone()].trim_start().starts_with('['));
        if found > 0 && key_line.is_none() {
            return None;
        }
        // The parser's own span is exact for a value or a key; for an error about a whole table
        // it covers the header, and the path's key says more.
        let parser = e
            .inner()
            .span()
            .filter(|s| !work[line_of(&work, s.start)].trim_start().starts_with('['));
        let start = parser.map(|s| s.start).or(located.map(|l| l.span.start));
        errors.push(ConfigError {
            file: path.to_path_buf(),
            location: start.map(|s| line_col(&work, s)),
            message: e.inner().message().trim().to_string(),
        });
        found += 1;
        let line = key_line.filter(|_| found < 50)?;
        work.replace_range(line, "");
    }
}

/// The byte range of the line holding `offset`, without its line break.
fn line_of(text: &str, offset: usize) -> std::ops::Range<usize> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    start..end
}

/// Reads the `type`-tagged tables of a file, reporting into `errors`.
struct Tagged<'a, 't> {
    path: &'a Path,
    text: &'a str,
    spans: &'a KeySpans<'t>,
    errors: &'a mut Vec<ConfigError>,
}

impl Tagged<'_, '_> {
    /// An error about the key at `at`.
    fn error(&mut self, at: &[Step], message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.path.to_path_buf(),
            location: self.spans.locate(at).map(|l| line_col(self.text, l.span.start)),
            message: message.into(),
        });
    }

    /// Every transform and sink the file holds, read; those with errors are left out (the
    /// errors say why). A file whose sections do not even have the right shape gives none (its
    /// own errors say so).
    #[allow(clippy::type_complexity)]
    fn tables(
        &mut self,
    ) -> (
        Vec<Spanned<TransformConfig>>,
        BTreeMap<String, Spanned<SinkEntry>>,
    ) {
        #[derive(Deserialize)]
        struct Tables {
            #[serde(default)]
            transforms: Vec<Spanned<toml::Table>>,
            #[serde(default)]
            sinks: BTreeMap<String, Spanned<toml::Table>>,
        }
        let Ok(tables) = toml::from_str::<Tables>(self.text) else {
            return (Vec::new(), BTreeMap::new());
        };
        let mut transforms = Vec::new();
        for (i, table) in tables.transforms.into_iter().enumerate() {
            let span = table.span();
            let at = [Step::key("transforms"), Step::Index(i)];
            if let Some(t) = self.read_tagged(
                "transform",
                table.into_inner(),
                &at,
                &TransformConfig::KINDS,
                TransformConfig::from_options,
            ) {
                transforms.push(Spanned::new(span, t));
            }
        }
        let mut sinks = BTreeMap::new();
        for (name, table) in tables.sinks {
            let span = table.span();
            if let Some(entry) = self.sink(&name, table.into_inner()) {
                sinks.insert(name, Spanned::new(span, entry));
            }
        }
        (transforms, sinks)
    }

    /// A `[sinks.NAME]` table: its routing keys, then the sink its `type` names.
    fn sink(&mut self, name: &str, mut table: toml::Table) -> Option<SinkEntry> {
        let at = [Step::key("sinks"), Step::key(name)];
        let key = |k: &str| [Step::key("sinks"), Step::key(name), Step::key(k)];
        let when = table.remove("when");
        let pipeline_transforms = match table.remove("pipeline_transforms") {
            None => Some(true),
            Some(toml::Value::Boolean(b)) => Some(b),
            Some(other) => {
                self.error(
                    &key("pipeline_transforms"),
                    format!("invalid type: {}, expected true or false", other.type_str()),
                );
                None
            }
        };
        let transforms = match table.remove("transforms") {
            None => Some(Vec::new()),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (i, item) in items.into_iter().enumerate() {
                    let at = [
                        Step::key("sinks"),
                        Step::key(name),
                        Step::key("transforms"),
                        Step::Index(i),
                    ];
                    let read = match item {
                        toml::Value::String(s) => {
                            TransformConfig::by_name(&s).map_err(|m| self.error(&at, m)).ok()
                        }
                        toml::Value::Table(t) => self.read_tagged(
                            "transform",
                            t,
                            &at,
                            &TransformConfig::KINDS,
                            TransformConfig::from_options,
                        ),
                        other => {
                            self.error(&at, format!("invalid type: {}, expected a transform type like \"ocsf\" or a table like {{ type = \"redact\", fields = [...] }}", other.type_str()));
                            None
                        }
                    };
                    match read {
                        Some(t) => out.push(t),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Some(other) => {
                self.error(
                    &key("transforms"),
                    format!(
                        "invalid type: {}, expected a list of transforms, e.g. [\"ocsf\"]",
                        other.type_str()
                    ),
                );
                None
            }
        };
        let sink = self.read_tagged("sink", table, &at, &AnySink::KINDS, AnySink::from_options);
        Some(SinkEntry {
            sink: sink?,
            when,
            transforms: transforms?,
            pipeline_transforms: pipeline_transforms?,
        })
    }

    /// A table whose `type` picks what it becomes (`what`: "sink" or "transform"). `from` reads
    /// the rest of the table as that kind; at an error, the key it names is dropped and the rest
    /// read again, so every bad key is reported at once, each at its line.
    fn read_tagged<T>(
        &mut self,
        what: &str,
        mut table: toml::Table,
        at: &[Step],
        kinds: &[&str],
        from: impl Fn(&str, toml::Value) -> Option<Result<T, OptionsError>>,
    ) -> Option<T> {
        let mut type_at = at.to_vec();
        type_at.push(Step::key("type"));
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                self.error(
                    &type_at,
                    format!(
                        "type must be a string, one of: {} (not {})",
                        kinds.join(", "),
                        other.type_str()
                    ),
                );
                return None;
            }
            None => {
                self.error(
                    at,
                    format!("this {what} has no `type`; add one of: {}", kinds.join(", ")),
                );
                return None;
            }
        };
        let mut failed = false;
        for _ in 0..50 {
            match from(&kind, toml::Value::Table(table.clone())) {
                None => {
                    self.error(
                        &type_at,
                        format!("unknown {what} type `{kind}`; use one of: {}", kinds.join(", ")),
                    );
                    return None;
                }
                Some(Ok(value)) => return (!failed).then_some(value),
                Some(Err(e)) => {
                    let path = spans::path(at, e.path());
                    // The key the error is about, at this table's level.
                    let key = match path.get(at.len()) {
                        Some(Step::Key(key)) => Some(key.clone()),
                        _ => None,
                    };
                    // An error about the table itself (a missing key) after a key was dropped
                    // may be the drop's doing: the search ends there, unreported.
                    if failed && key.is_none() {
                        return None;
                    }
                    self.error(&path, e.inner().message().trim());
                    failed = true;
                    // Drop the key and read the rest again, for the next bad key.
                    table.remove(&key?)?;
                }
            }
        }
        None
    }
}

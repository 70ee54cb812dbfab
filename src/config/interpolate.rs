//! `${VAR}` and `${VAR:-default}` in pipeline files: the environment, and variables the process
//! defines itself.

use std::collections::BTreeMap;
use std::path::Path;

use auditship_sink::{Field, Interpolate};

use super::ConfigError;

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

/// Resolves one sink's `${VAR}`s for [`auditship_sink::SinkConfig::resolve`], and reports what
/// it cannot resolve under the sink's name and its table's position.
pub(super) struct SinkVars<'a> {
    pub(super) file: &'a Path,
    pub(super) sink: &'a str,
    pub(super) location: Option<(usize, usize)>,
    pub(super) offline: bool,
    pub(super) errors: &'a mut Vec<ConfigError>,
    pub(super) warnings: &'a mut Vec<String>,
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

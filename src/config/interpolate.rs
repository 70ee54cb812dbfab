//! A sink's `${VAR}`s, resolved through [`crate::vars`] for the sink's own
//! [`auditship_sink::SinkConfig::resolve`], with what cannot be resolved reported where the sink
//! is written.

use std::path::Path;

use auditship_sink::{Field, Interpolate};

use super::ConfigError;
pub(super) use crate::vars::interpolate;

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

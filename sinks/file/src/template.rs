//! Path templates: `archive/{resource_id}/{date}.ndjson`.
//!
//! A rendered path can never leave the template's base directory: the base is the literal
//! directory prefix before the first placeholder, and every substituted value is made into one
//! safe path component (separators, `%` and control characters percent-encoded, a leading dot
//! encoded so `.` and `..` cannot appear). The encoding is injective, so two different sandbox
//! ids never share a file.

use std::path::{Component, Path, PathBuf};

/// A placeholder in a path template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `{resource_id}`: the sandbox id.
    ResourceId,
    /// `{date}`: the event's UTC date, `YYYY-MM-DD`.
    Date,
    /// `{pipeline}`: the pipeline's name.
    Pipeline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// A parsed path template.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    parts: Vec<Part>,
    base: PathBuf,
}

/// The values a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// The sandbox id.
    pub resource_id: &'a str,
    /// The UTC date, already formatted.
    pub date: &'a str,
    /// The pipeline's name.
    pub pipeline: &'a str,
}

impl PathTemplate {
    /// Parse a template; the error names the problem and the placeholders that exist.
    pub fn parse(template: &str) -> Result<Self, String> {
        if template.is_empty() {
            return Err(
                "path is empty; give a file path such as \"archive/{resource_id}/{date}.ndjson\"".into(),
            );
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("unclosed `{{` in path template {template:?}"));
            };
            let name = &rest[open + 1..open + close];
            let var = match name {
                "resource_id" => Var::ResourceId,
                "date" => Var::Date,
                "pipeline" => Var::Pipeline,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` in path template; use {{resource_id}}, {{date}} or {{pipeline}}"
                    ))
                }
            };
            parts.push(Part::Var(var));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray `}}` in path template {template:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if template.ends_with('/') {
            return Err(format!(
                "path template {template:?} names a directory; end it with a file name"
            ));
        }
        // The base directory: the literal prefix up to the last separator before the first
        // placeholder. `..` is allowed there (the user chose it) but nowhere after it.
        let first_var = template.find('{').unwrap_or(template.len());
        let base_str = match template[..first_var].rfind('/') {
            // A file straight under the root: the base is the root, not the current directory.
            Some(0) => "/",
            Some(i) => &template[..i],
            None => "",
        };
        let base = if base_str.is_empty() {
            PathBuf::from(".")
        } else {
            PathBuf::from(base_str)
        };
        let tail = &template[base_str.len()..];
        if Path::new(tail)
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(format!(
                "path template {template:?} has `..` after its base directory; paths must stay inside {}",
                base.display()
            ));
        }
        Ok(PathTemplate { parts, base })
    }

    /// The directory no rendered path can leave.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Whether the template uses a placeholder.
    pub fn uses(&self, var: Var) -> bool {
        self.parts.contains(&Part::Var(var))
    }

    /// Render the template. Every value becomes one safe path component.
    pub fn render(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Var(Var::ResourceId) => push_component(&mut out, values.resource_id),
                Part::Var(Var::Date) => push_component(&mut out, values.date),
                Part::Var(Var::Pipeline) => push_component(&mut out, values.pipeline),
            }
        }
        out
    }
}

fn push_component(out: &mut String, value: &str) {
    auditship_sink::encode_component(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, id: &str) -> String {
        PathTemplate::parse(t).unwrap().render(&Values {
            resource_id: id,
            date: "2026-11-25",
            pipeline: "p",
        })
    }

    #[test]
    fn renders_placeholders() {
        assert_eq!(
            render("archive/{resource_id}/{date}.ndjson", "sb-1"),
            "archive/sb-1/2026-11-25.ndjson"
        );
        assert_eq!(render("{pipeline}-{resource_id}.log", "x"), "p-x.log");
    }

    #[test]
    fn hostile_ids_cannot_escape_the_base_directory() {
        for id in [
            "../x",
            "sb/gamma",
            "..",
            ".",
            "/etc/passwd",
            "a\\b",
            "a/../../b",
            "",
        ] {
            let path = render("archive/{resource_id}/{date}.ndjson", id);
            let p = Path::new(&path);
            assert!(p.starts_with("archive"), "{id:?} rendered {path}");
            assert!(
                p.components().all(|c| matches!(c, Component::Normal(_))),
                "{id:?} rendered {path}"
            );
            assert_eq!(p.components().count(), 3, "{id:?} rendered {path}");
        }
    }

    #[test]
    fn encoding_is_injective() {
        assert_ne!(render("{resource_id}", "a/b"), render("{resource_id}", "a%2Fb"));
        assert_ne!(render("{resource_id}", ".x"), render("{resource_id}", "%2Ex"));
    }

    #[test]
    fn bad_templates_are_rejected_with_the_fix() {
        assert!(PathTemplate::parse("a/{nope}.log")
            .unwrap_err()
            .contains("{resource_id}"));
        assert!(PathTemplate::parse("a/{date").is_err());
        assert!(PathTemplate::parse("a/{date}/../x").is_err());
        assert!(PathTemplate::parse("a/{date}/").is_err());
        assert_eq!(
            PathTemplate::parse("../up/{date}.log").unwrap().base(),
            Path::new("../up")
        );
        assert_eq!(PathTemplate::parse("{date}.log").unwrap().base(), Path::new("."));
    }
}

//! Path templates: `archive/{resource_id}/{date}.ndjson`.
//!
//! A rendered path can never leave the template's base directory: the base is the literal
//! directory prefix before the first placeholder, and every substituted value is made into one
//! safe path component (separators, `%` and control characters percent-encoded, a leading dot
//! encoded so `.` and `..` cannot appear). The encoding is injective, so two different sandbox
//! ids never share a file.

use std::path::{Component, Path, PathBuf};

use auditship_sink::template::{Placeholder, Template};
use auditship_sink::SinkError;

/// The placeholders a path template takes.
pub const PLACEHOLDERS: [Placeholder; 3] =
    [Placeholder::ResourceId, Placeholder::Date, Placeholder::Pipeline];

/// A parsed path template: the contract's [`Template`] plus the base directory it cannot leave.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    template: Template,
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
        let parsed =
            Template::parse(template, &PLACEHOLDERS).map_err(|e| format!("{e} (in path {template:?})"))?;
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
        Ok(PathTemplate {
            template: parsed,
            base,
        })
    }

    /// The directory no rendered path can leave.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Whether the template uses a placeholder.
    pub fn uses(&self, p: Placeholder) -> bool {
        self.template.uses(p)
    }

    /// Render the template. Every value becomes one safe path component.
    pub fn render(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        self.template.render(&mut out, |p, out| {
            let value = match p {
                Placeholder::ResourceId => values.resource_id,
                Placeholder::Date => values.date,
                Placeholder::Pipeline => values.pipeline,
                // `parse` refuses `{action}`: a file's path does not depend on what an event did.
                Placeholder::Action => "",
            };
            auditship_sink::encode_component(out, value);
        });
        out
    }
}

/// The longest file name (one path component) Linux file systems take, in bytes (`NAME_MAX`).
const NAME_MAX_BYTES: usize = 255;
/// The longest path the kernel takes (`PATH_MAX`, with its terminating NUL).
const PATH_MAX_BYTES: usize = 4095;

/// Why `path` cannot be a file on any common file system, if it cannot: a component over 255
/// bytes or a path over 4,095 (a sandbox id of hundreds of bytes, percent-encoded).
pub(crate) fn unwritable_path(path: &str) -> Option<String> {
    if path.len() > PATH_MAX_BYTES {
        return Some(format!(
            "its archive path is {} bytes long, more than the {PATH_MAX_BYTES} a path may have (is the sandbox id that long?)",
            path.len()
        ));
    }
    let long = path.split('/').find(|c| c.len() > NAME_MAX_BYTES)?;
    let mut shown = long.len().min(40);
    while !long.is_char_boundary(shown) {
        shown -= 1;
    }
    Some(format!(
        "its archive file name {:?}… is {} bytes long, more than the {NAME_MAX_BYTES} a file system takes (is the sandbox id that long?)",
        &long[..shown],
        long.len()
    ))
}

/// `path` made absolute against the working directory (lexically: links are not followed, so
/// the archive stays where the template says).
pub(crate) fn absolute(path: &str) -> Result<String, SinkError> {
    let abs = std::path::absolute(path).map_err(|e| {
        SinkError::io(
            format!("resolving the path {path} against the working directory"),
            e,
        )
    })?;
    abs.into_os_string().into_string().map_err(|abs| {
        SinkError::Config(format!(
            "the path {path} resolves to {}, which is not UTF-8; give an absolute path",
            abs.to_string_lossy()
        ))
    })
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

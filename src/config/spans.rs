//! Where a key is written in a pipeline file, from the TOML parser's spans.
//!
//! An error's position comes from the path serde failed on (`sinks.archive.compresion`, kept by
//! `serde_path_to_error`) looked up in the parsed document, or from the parser's own span. It
//! never comes from the wording of an error message, which a new version of the `toml` crate may
//! change.

use std::ops::Range;

use serde_path_to_error::{Path as SerdePath, Segment};
use toml::de::{DeTable, DeValue};

/// One step of a path into the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// A key of a table.
    Key(String),
    /// An element of an array (`[[transforms]]`).
    Index(usize),
}

impl Step {
    /// A key step.
    pub(super) fn key(name: &str) -> Step {
        Step::Key(name.to_string())
    }
}

/// `base` followed by the path serde reported (its private markers, such as `Spanned`'s, left
/// out).
pub(super) fn path(base: &[Step], reported: &SerdePath) -> Vec<Step> {
    let mut out = base.to_vec();
    out.extend(reported.iter().filter_map(|segment| match segment {
        Segment::Map { key } if key.starts_with("$__") => None,
        Segment::Map { key } => Some(Step::Key(key.clone())),
        Segment::Seq { index } => Some(Step::Index(*index)),
        Segment::Enum { .. } | Segment::Unknown => None,
    }));
    out
}

/// What [`KeySpans::locate`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Located {
    /// The span of the deepest step of the path written in the file: a key's name, or an
    /// array element.
    pub(super) span: Range<usize>,
    /// Whether every step of the path is written (else `span` is the nearest enclosing one).
    pub(super) whole: bool,
}

/// The keys of a parsed pipeline file, with their spans.
pub(super) struct KeySpans<'t> {
    root: DeTable<'t>,
}

impl<'t> KeySpans<'t> {
    /// Parse `text`; `Err`: its TOML syntax is broken (the error has the parser's span).
    pub(super) fn parse(text: &'t str) -> Result<Self, toml::de::Error> {
        Ok(KeySpans {
            root: DeTable::parse(text)?.into_inner(),
        })
    }

    /// Where `path` is written, as far as it is.
    pub(super) fn locate(&self, path: &[Step]) -> Option<Located> {
        let mut span: Option<Range<usize>> = None;
        let mut table = Some(&self.root);
        let mut array: Option<&[toml::Spanned<DeValue<'t>>]> = None;
        for (depth, step) in path.iter().enumerate() {
            let value = match step {
                Step::Key(name) => table.and_then(|t| {
                    t.iter()
                        .find(|(key, _)| key.get_ref().as_ref() == name.as_str())
                        .map(|(key, value)| (key.span(), value))
                }),
                Step::Index(i) => array.and_then(|a| a.get(*i)).map(|v| (v.span(), v)),
            };
            let Some((at, value)) = value else {
                return span.map(|span| Located { span, whole: false });
            };
            span = Some(at);
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
            if depth + 1 == path.len() {
                return span.map(|span| Located { span, whole: true });
            }
        }
        span.map(|span| Located {
            span,
            whole: path.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name = \"p\"\n\n[source]\nsandboxes = [\"a\"]\n\n[[transforms]]\ntype = \"filter\"\n\n[[transforms]]\ntype = \"set\"\nfeild = 1\n\n[sinks.archive]\ntype = \"file\"\ncompresion = \"zstd\"\n";

    fn at(path: &[Step]) -> Option<(String, bool)> {
        KeySpans::parse(TEXT)
            .unwrap()
            .locate(path)
            .map(|l| (TEXT[l.span.clone()].to_string(), l.whole))
    }

    #[test]
    fn keys_are_found_by_path_where_they_are_written() {
        assert_eq!(at(&[Step::key("name")]), Some(("name".into(), true)));
        let key = [Step::key("sinks"), Step::key("archive"), Step::key("compresion")];
        assert_eq!(at(&key), Some(("compresion".into(), true)));
        let key = [Step::key("transforms"), Step::Index(1), Step::key("feild")];
        assert_eq!(at(&key), Some(("feild".into(), true)));
        // A key that is not written: the nearest step that is.
        let missing = [Step::key("sinks"), Step::key("archive"), Step::key("path")];
        assert_eq!(at(&missing), Some(("archive".into(), false)));
        assert_eq!(at(&[Step::key("batch")]), None);
    }

    #[test]
    fn the_line_and_column_follow_the_key_not_the_message() {
        let spans = KeySpans::parse(TEXT).unwrap();
        let l = spans
            .locate(&[Step::key("transforms"), Step::Index(1), Step::key("feild")])
            .unwrap();
        assert_eq!(super::super::load::line_col(TEXT, l.span.start), (11, 1));
    }
}

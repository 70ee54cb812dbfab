//! `{placeholder}` templates: the one syntax of every setting that names where an event goes,
//! the file sink's `path`, the S3 sink's `key_prefix` and the Kafka sink's `topic`.
//!
//! A template is parsed once, when the sink is built, into literal text and placeholders; each
//! sink renders it per event with its own way of making a value safe (a path component, an
//! object key component, a topic name's characters), since what is safe differs by where the
//! name is used. Parsing is shared so that `{` and `}` mean the same everywhere and every
//! sink's error names the placeholders it takes.
//!
//! ```
//! use auditship_sink::template::{Placeholder, Template};
//!
//! let t = Template::parse("audit/{resource_id}/{date}", &[Placeholder::ResourceId, Placeholder::Date])?;
//! let mut out = String::new();
//! t.render(&mut out, |p, out| match p {
//!     Placeholder::ResourceId => out.push_str("sb-1"),
//!     _ => out.push_str("2026-11-25"),
//! });
//! assert_eq!(out, "audit/sb-1/2026-11-25");
//! assert!(Template::parse("audit/{day}", &[Placeholder::Date]).unwrap_err().to_string().contains("use {date}"));
//! # Ok::<(), auditship_sink::template::TemplateError>(())
//! ```

use std::fmt;

/// A value a template can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{resource_id}`: the sandbox id.
    ResourceId,
    /// `{date}`: the event's UTC date, `YYYY-MM-DD`.
    Date,
    /// `{pipeline}`: the pipeline's name.
    Pipeline,
    /// `{action}`: the event's `action` field.
    Action,
}

impl Placeholder {
    /// Every placeholder, in the order error messages list them.
    pub const ALL: [Placeholder; 4] = [
        Placeholder::ResourceId,
        Placeholder::Date,
        Placeholder::Action,
        Placeholder::Pipeline,
    ];

    /// The name between the braces.
    pub const fn name(self) -> &'static str {
        match self {
            Placeholder::ResourceId => "resource_id",
            Placeholder::Date => "date",
            Placeholder::Pipeline => "pipeline",
            Placeholder::Action => "action",
        }
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.name())
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as written.
    Text(String),
    /// A value filled in per event.
    Value(Placeholder),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Why a template does not parse. The template's setting is the caller's to name; retrying
/// never helps, editing the setting does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` with no `}` after it.
    #[error("`{{` without a closing `}}`")]
    Unclosed,
    /// A `}` with no `{` before it.
    #[error("stray `}}` (a placeholder is written `{{name}}`)")]
    StrayClose,
    /// A name this setting does not take.
    #[error("unknown placeholder `{{{name}}}`; use {allowed}")]
    Unknown {
        /// The name as written.
        name: String,
        /// The placeholders the setting takes, as a list for the message.
        allowed: String,
    },
}

/// `{a}`, `{a} or {b}`, `{a}, {b} or {c}`.
fn either(allowed: &[Placeholder]) -> String {
    match allowed {
        [] => "no placeholder".to_string(),
        [one] => one.to_string(),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(ToString::to_string).collect();
            format!("{} or {last}", init.join(", "))
        }
    }
}

impl Template {
    /// Parse `text`, taking only the placeholders in `allowed`.
    pub fn parse(text: &str, allowed: &[Placeholder]) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let literal = |pieces: &mut Vec<Piece>, s: &str| -> Result<(), TemplateError> {
            if s.contains('}') {
                return Err(TemplateError::StrayClose);
            }
            if !s.is_empty() {
                pieces.push(Piece::Text(s.to_string()));
            }
            Ok(())
        };
        while let Some(open) = rest.find('{') {
            literal(&mut pieces, &rest[..open])?;
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &after[..close];
            let Some(p) = allowed.iter().copied().find(|p| p.name() == name) else {
                return Err(TemplateError::Unknown {
                    name: name.to_string(),
                    allowed: either(allowed),
                });
            };
            pieces.push(Piece::Value(p));
            rest = &after[close + 1..];
        }
        literal(&mut pieces, rest)?;
        Ok(Template { pieces })
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Whether the template holds `p`.
    pub fn uses(&self, p: Placeholder) -> bool {
        self.pieces.contains(&Piece::Value(p))
    }

    /// The whole text, when the template holds no placeholder (and is not empty).
    pub fn fixed(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The text before the first placeholder (all of it when there is none): what every
    /// rendering starts with.
    pub fn fixed_start(&self) -> &str {
        match self.pieces.first() {
            Some(Piece::Text(t)) => t,
            _ => "",
        }
    }

    /// Whether the template is the empty string.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Append the rendered template to `out`: text as written, each placeholder through
    /// `value`, which appends its value made safe for where the name is used.
    pub fn render(&self, out: &mut String, mut value: impl FnMut(Placeholder, &mut String)) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Value(p) => value(*p, out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Placeholder] = &Placeholder::ALL;

    #[test]
    fn pieces_are_text_and_values_in_order() {
        let t = Template::parse("a{resource_id}b{date}{pipeline}", ALL).unwrap();
        assert_eq!(
            t.pieces(),
            [
                Piece::Text("a".into()),
                Piece::Value(Placeholder::ResourceId),
                Piece::Text("b".into()),
                Piece::Value(Placeholder::Date),
                Piece::Value(Placeholder::Pipeline),
            ]
        );
        assert!(t.uses(Placeholder::Date) && !t.uses(Placeholder::Action));
        assert_eq!(t.fixed(), None);
        assert_eq!(Template::parse("fixed", ALL).unwrap().fixed(), Some("fixed"));
        assert_eq!(t.fixed_start(), "a");
        assert_eq!(Template::parse("{date}/x", ALL).unwrap().fixed_start(), "");
        assert_eq!(Template::parse("a/b{date}/c", ALL).unwrap().fixed_start(), "a/b");
        assert!(Template::parse("", ALL).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_problem_and_the_placeholders_taken() {
        let only = [Placeholder::ResourceId, Placeholder::Date, Placeholder::Pipeline];
        assert_eq!(
            Template::parse("x/{action}", &only).unwrap_err().to_string(),
            "unknown placeholder `{action}`; use {resource_id}, {date} or {pipeline}"
        );
        assert_eq!(Template::parse("x/{date", ALL), Err(TemplateError::Unclosed));
        assert_eq!(Template::parse("x}/{date}", ALL), Err(TemplateError::StrayClose));
        assert_eq!(Template::parse("{date}}", ALL), Err(TemplateError::StrayClose));
        assert!(Template::parse("{}", ALL)
            .unwrap_err()
            .to_string()
            .contains("`{}`"));
    }
}

//! What the sink reads from an event: the `action` and the key field, and the topic template.

use std::borrow::Cow;
use std::fmt;

use auditship_sink::template::{Piece, Placeholder, Template};

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Top-level fields of one event the sink needs, borrowed from the raw JSON where possible.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Picked<'a> {
    /// The `action` field's value, when it is a string.
    pub action: Option<Cow<'a, str>>,
    /// The key field's value: a string's content, or the JSON text of a number, boolean, object
    /// or array. `None` when the field is missing or `null`.
    pub key: Option<Cow<'a, str>>,
}

/// Read `action` and (when `key_field` is given) the key field from one event's JSON object,
/// skipping every other field without building it.
pub fn pick<'a>(raw: &'a [u8], key_field: Option<&str>) -> Result<Picked<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let picked = Seed { key_field }.deserialize(&mut de)?;
    Ok(picked)
}

struct Seed<'k> {
    key_field: Option<&'k str>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Picked<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Picked<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Picked::default();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let is_action = name == "action";
            let is_key = self.key_field == Some(&*name);
            if !is_action && !is_key {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: &'de RawValue = map.next_value()?;
            let text = value.get();
            let parsed: Option<Cow<'de, str>> = if text.starts_with('"') {
                // A string's content, unescaped (borrowed when it has no escapes).
                serde_json::from_str::<Cow<'de, str>>(text).ok()
            } else if text == "null" {
                None
            } else {
                Some(Cow::Borrowed(text))
            };
            if is_action && text.starts_with('"') {
                out.action = parsed.clone();
            }
            if is_key {
                out.key = parsed;
            }
        }
        Ok(out)
    }
}

/// The placeholders a topic template takes.
pub const PLACEHOLDERS: [Placeholder; 3] = [
    Placeholder::ResourceId,
    Placeholder::Action,
    Placeholder::Pipeline,
];

/// A parsed `topic` template: the contract's [`Template`] with `{resource_id}`, `{action}` and
/// `{pipeline}`, whose text is made of legal topic characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    template: Template,
}

/// Kafka's limit on a topic name's length.
pub const MAX_TOPIC_LEN: usize = 249;

fn legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl TopicTemplate {
    /// Parse a template; the literal parts must already be legal topic characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        let template =
            Template::parse(text, &PLACEHOLDERS).map_err(|e| format!("{e} (in topic {text:?})"))?;
        if template.is_empty() {
            return Err("topic is empty; name a topic, e.g. topic = \"miosa.audit\"".into());
        }
        for p in template.pieces() {
            if let Piece::Text(l) = p {
                if let Some(bad) = l.chars().find(|c| !legal(*c)) {
                    return Err(format!(
                        "topic {text:?}: {bad:?} cannot be part of a Kafka topic name; use letters, digits, '.', '_' and '-'"
                    ));
                }
            }
        }
        if let Some(l) = template.fixed() {
            if l.len() > MAX_TOPIC_LEN || l == "." || l == ".." {
                return Err(format!("topic {text:?} is not a valid Kafka topic name (at most {MAX_TOPIC_LEN} characters, not '.' or '..')"));
            }
        }
        Ok(TopicTemplate { template })
    }

    /// The topic when the template has no variable.
    pub fn fixed(&self) -> Option<&str> {
        self.template.fixed()
    }

    /// Whether the template reads the event's `action`.
    pub fn uses_action(&self) -> bool {
        self.template.uses(Placeholder::Action)
    }

    /// The topic for one event. Characters a topic name cannot hold become `_`; a missing
    /// `action` is `unknown`. Fails when the result is not a valid topic name.
    pub fn render(&self, resource_id: &str, action: Option<&str>, pipeline: &str) -> Result<String, String> {
        let mut out = String::with_capacity(64);
        self.template.render(&mut out, |p, out| {
            let value = match p {
                Placeholder::ResourceId => resource_id,
                Placeholder::Action => action.unwrap_or("unknown"),
                Placeholder::Pipeline => pipeline,
                // `parse` refuses `{date}`: a topic is not split by day.
                Placeholder::Date => "",
            };
            out.extend(value.chars().map(|c| if legal(c) { c } else { '_' }));
        });
        if out.is_empty() || out.len() > MAX_TOPIC_LEN || out == "." || out == ".." {
            return Err(format!(
                "topic {out:?} is not a valid Kafka topic name (1 to {MAX_TOPIC_LEN} characters, not '.' or '..')"
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_action_and_key_and_skips_the_rest() {
        let raw = br#"{"id":"e1","nested":{"action":"no"},"action":"allow","host":"a\"b.com","n":7}"#;
        let p = pick(raw, Some("host")).unwrap();
        assert_eq!(p.action.as_deref(), Some("allow"));
        assert_eq!(p.key.as_deref(), Some("a\"b.com"));
        let p = pick(raw, Some("n")).unwrap();
        assert_eq!(p.key.as_deref(), Some("7"));
        let p = pick(raw, Some("missing")).unwrap();
        assert_eq!(p.key, None);
        let p = pick(br#"{"action":null,"k":null}"#, Some("k")).unwrap();
        assert_eq!(p, Picked::default());
        assert!(pick(b"[1,2]", None).is_err());
    }

    #[test]
    fn the_key_field_may_be_action() {
        let p = pick(br#"{"action":"reject"}"#, Some("action")).unwrap();
        assert_eq!(p.action.as_deref(), Some("reject"));
        assert_eq!(p.key.as_deref(), Some("reject"));
    }

    #[test]
    fn templates_render_safe_names() {
        let t = TopicTemplate::parse("audit.{pipeline}.{resource_id}.{action}").unwrap();
        assert!(t.uses_action());
        assert_eq!(t.fixed(), None);
        assert_eq!(
            t.render("sb/gamma one", Some("allow"), "p").unwrap(),
            "audit.p.sb_gamma_one.allow"
        );
        assert_eq!(t.render("sb", None, "p").unwrap(), "audit.p.sb.unknown");
        let long = "x".repeat(300);
        assert!(t.render(&long, None, "p").is_err());
        assert_eq!(
            TopicTemplate::parse("miosa.audit").unwrap().fixed(),
            Some("miosa.audit")
        );
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(TopicTemplate::parse("a.{nope}")
            .unwrap_err()
            .contains("unknown placeholder `{nope}`; use {resource_id}, {action} or {pipeline}"));
        assert!(TopicTemplate::parse("a/b").unwrap_err().contains("'/'"));
        assert!(TopicTemplate::parse("a.{resource_id")
            .unwrap_err()
            .contains("closing"));
        assert!(TopicTemplate::parse("").unwrap_err().contains("empty"));
        assert!(TopicTemplate::parse("..").is_err());
    }
}

//! Dotted field paths (`metadata.authorization`, `request_transforms.0.name`) over JSON values.
//!
//! A segment that is a number indexes an array when the value there is an array, and names a
//! key otherwise, so `labels.0` works on both `{"labels": ["a"]}` and `{"labels": {"0": "a"}}`.
//! A leading `.` is allowed (`.action`), which also lets a field literally called `any`, `all` or
//! `not` be named in a condition.

use std::fmt;

use serde_json::{Map, Value};

/// A parsed field path.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, PartialEq, Eq)]
struct Segment {
    key: String,
    index: Option<usize>,
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FieldPath {
    /// Parse `a.b.c`. Empty segments (`a..b`, a trailing dot) are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text.strip_prefix('.').unwrap_or(text);
        if body.is_empty() {
            return Err(format!("field path {text:?} is empty"));
        }
        let mut segments = Vec::new();
        for part in body.split('.') {
            if part.is_empty() {
                return Err(format!("field path {text:?} has an empty segment (write a.b.c)"));
            }
            segments.push(Segment {
                key: part.to_string(),
                index: part.parse().ok(),
            });
        }
        Ok(FieldPath {
            text: body.to_string(),
            segments,
        })
    }

    /// The path as written (without a leading dot).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first segment's key.
    pub fn first(&self) -> &str {
        self.segments.first().map_or("", |s| s.key.as_str())
    }

    /// The value at this path inside `v`, which is what the first segment names.
    pub fn get_after_first<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        let mut at = v;
        for s in self.segments.iter().skip(1) {
            at = step(at, s)?;
        }
        Some(at)
    }

    /// The value at this path.
    pub fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        let mut at = root;
        for s in &self.segments {
            at = step(at, s)?;
        }
        Some(at)
    }

    /// The value at this path, mutably.
    pub fn get_mut<'v>(&self, root: &'v mut Value) -> Option<&'v mut Value> {
        let mut at = root;
        for s in &self.segments {
            at = match at {
                Value::Object(m) => m.get_mut(&s.key)?,
                Value::Array(a) => a.get_mut(s.index?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// Remove the value at this path and return it. Removing from an array shifts the rest.
    pub fn remove(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        let mut at = root;
        for s in parents {
            at = match at {
                Value::Object(m) => m.get_mut(&s.key)?,
                Value::Array(a) => a.get_mut(s.index?)?,
                _ => return None,
            };
        }
        match at {
            // shift_remove keeps the order of the remaining keys.
            Value::Object(m) => m.shift_remove(&last.key),
            Value::Array(a) => {
                let i = last.index?;
                (i < a.len()).then(|| a.remove(i))
            }
            _ => None,
        }
    }

    /// Put `value` at this path, creating objects on the way. Fails (with why) when a value on
    /// the way is neither an object nor an array that the segment indexes.
    pub fn insert(&self, root: &mut Value, value: Value) -> Result<(), String> {
        let Some((last, parents)) = self.segments.split_last() else {
            return Err("empty path".into());
        };
        let mut at = root;
        for (depth, s) in parents.iter().enumerate() {
            at = match at {
                Value::Object(m) => m
                    .entry(s.key.clone())
                    .or_insert_with(|| Value::Object(Map::new())),
                Value::Array(a) => match s.index.and_then(|i| a.get_mut(i)) {
                    Some(v) => v,
                    None => return Err(self.blocked(depth, "an array without that index")),
                },
                other => return Err(self.blocked(depth, kind(other))),
            };
        }
        match at {
            Value::Object(m) => {
                m.insert(last.key.clone(), value);
                Ok(())
            }
            Value::Array(a) => match last.index.and_then(|i| a.get_mut(i)) {
                Some(slot) => {
                    *slot = value;
                    Ok(())
                }
                None => Err(self.blocked(parents.len(), "an array without that index")),
            },
            other => Err(self.blocked(parents.len(), kind(other))),
        }
    }

    fn blocked(&self, depth: usize, what: &str) -> String {
        let prefix: Vec<&str> = self.segments[..depth].iter().map(|s| s.key.as_str()).collect();
        let at = if prefix.is_empty() {
            "the event".to_string()
        } else {
            format!("`{}`", prefix.join("."))
        };
        format!("cannot set `{}`: {at} is {what}", self.text)
    }
}

fn step<'v>(at: &'v Value, s: &Segment) -> Option<&'v Value> {
    match at {
        Value::Object(m) => m.get(&s.key),
        Value::Array(a) => a.get(s.index?),
        _ => None,
    }
}

/// A JSON value's kind, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let v = json!({"a": {"b": [10, {"c": "x"}]}, "n": {"0": "key"}});
        assert_eq!(FieldPath::parse("a.b.0").unwrap().get(&v), Some(&json!(10)));
        assert_eq!(FieldPath::parse(".a.b.1.c").unwrap().get(&v), Some(&json!("x")));
        assert_eq!(FieldPath::parse("n.0").unwrap().get(&v), Some(&json!("key")));
        assert_eq!(FieldPath::parse("a.zz").unwrap().get(&v), None);
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("").is_err());
        assert!(FieldPath::parse("a.").is_err());
    }

    #[test]
    fn insert_creates_objects_and_names_what_blocks_it() {
        let mut v = json!({"host": "h", "list": [1]});
        FieldPath::parse("labels.env")
            .unwrap()
            .insert(&mut v, json!("prod"))
            .unwrap();
        FieldPath::parse("list.0")
            .unwrap()
            .insert(&mut v, json!(2))
            .unwrap();
        assert_eq!(v, json!({"host": "h", "list": [2], "labels": {"env": "prod"}}));
        let e = FieldPath::parse("host.name")
            .unwrap()
            .insert(&mut v, json!(1))
            .unwrap_err();
        assert_eq!(e, "cannot set `host.name`: `host` is a string");
        let e = FieldPath::parse("list.5")
            .unwrap()
            .insert(&mut v, json!(1))
            .unwrap_err();
        assert!(e.contains("an array without that index"), "{e}");
    }

    #[test]
    fn remove_keeps_the_order_of_the_rest() {
        let mut v = json!({"a": 1, "b": {"x": 1, "y": 2}, "c": 3});
        assert_eq!(FieldPath::parse("b.x").unwrap().remove(&mut v), Some(json!(1)));
        assert_eq!(FieldPath::parse("a").unwrap().remove(&mut v), Some(json!(1)));
        assert_eq!(FieldPath::parse("nope.x").unwrap().remove(&mut v), None);
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"b":{"y":2},"c":3}"#);
    }
}

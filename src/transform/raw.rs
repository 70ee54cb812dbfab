//! Reading an event's JSON text without building a tree: its top-level fields as raw slices.
//! Conditions and the OCSF mapping need a few fields of each event; parsing only those is
//! several times cheaper than a full `serde_json::Value`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::path::FieldPath;

/// An object's top-level fields as written: keys (borrowed unless escaped) and raw values.
pub struct Fields<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

/// A string that borrows from the input when it has no escapes.
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(24));
                while let Some(Text(k)) = map.next_key::<Text<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    // A repeated key: the last one wins, as in every JSON reader we feed.
                    out.retain(|(old, _): &(Cow<'de, str>, &RawValue)| *old != k);
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Fields<'a> {
    /// The index of `key`.
    pub fn find(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }

    /// A string field (and its index), when it is a string.
    pub fn text(&self, key: &str) -> Option<(usize, Cow<'a, str>)> {
        let i = self.find(key)?;
        self.text_at(i).map(|t| (i, t))
    }

    /// Field `i` as a string, when it is one.
    pub fn text_at(&self, i: usize) -> Option<Cow<'a, str>> {
        let raw = self.0.get(i)?.1.get();
        if !raw.starts_with('"') {
            return None;
        }
        let Text(t) = serde_json::from_str::<Text<'a>>(raw).ok()?;
        Some(t)
    }

    /// An integer field (and its index), when it is an integer.
    pub fn int(&self, key: &str) -> Option<(usize, i64)> {
        let i = self.find(key)?;
        self.0[i].1.get().parse::<i64>().ok().map(|n| (i, n))
    }
}

impl Fields<'_> {
    /// Parse `bytes` as an object's fields; `None` when it is not a JSON object.
    pub fn parse(bytes: &[u8]) -> Option<Fields<'_>> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Something conditions can read fields from.
pub trait Lookup {
    /// The value at `path`, if any.
    fn lookup(&self, path: &FieldPath) -> Option<Cow<'_, Value>>;
}

impl Lookup for Value {
    fn lookup(&self, path: &FieldPath) -> Option<Cow<'_, Value>> {
        path.get(self).map(Cow::Borrowed)
    }
}

impl Lookup for Fields<'_> {
    /// Only the first segment's raw value is parsed.
    fn lookup(&self, path: &FieldPath) -> Option<Cow<'_, Value>> {
        let i = self.find(path.first())?;
        let v: Value = serde_json::from_str(self.0[i].1.get()).ok()?;
        if path.as_str() == path.first() {
            return Some(Cow::Owned(v));
        }
        path.get_after_first(&v).cloned().map(Cow::Owned)
    }
}

//! One value (a sandbox id, a pipeline or sink name) as one path or object-key component:
//! safe (it cannot climb out of its directory or name a hidden file), and injective (two
//! different values never share a file or an object), which [`decode_component`] proves by
//! giving every value back.
//!
//! Percent-encoded: separators (`/`, `\`), `%`, `:` and control characters (NUL included); a
//! leading dot, so `.` and `..` cannot appear; and the first letter of a value starting with
//! [`RESERVED_PREFIX`], so no value can name a manifest (`auditship.manifest`) or anything
//! else auditship keeps beside the data. The empty value is `%empty`, which no other value
//! encodes to (the encoder writes `%` only before two upper-case hex digits).
//!
//! ```
//! use auditship_sink::{decode_component, encode_component};
//!
//! for id in ["sb-1", "../etc", "", "\0", "auditship.manifest", "a/b%2F"] {
//!     let mut out = String::new();
//!     encode_component(&mut out, id);
//!     assert!(!out.contains('/') && out != "." && out != ".." && !out.starts_with("auditship."));
//!     assert_eq!(decode_component(&out).as_deref(), Some(id));
//! }
//! ```

use std::fmt::Write as _;

/// Names auditship keeps beside the data start with this; no encoded value does.
pub const RESERVED_PREFIX: &str = "auditship.";

/// What the empty value encodes to.
const EMPTY: &str = "%empty";

/// Append `value` to `out` as one safe, injective path (or object key) component (see the
/// module's documentation for the rules).
pub fn encode_component(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push_str(EMPTY);
        return;
    }
    let reserved = value
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX));
    for (i, c) in value.chars().enumerate() {
        let unsafe_char =
            matches!(c, '/' | '\\' | '%' | ':') || c.is_control() || (i == 0 && (c == '.' || reserved));
        if unsafe_char {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// The value `encoded` was made from by [`encode_component`], or `None` when no value encodes
/// to it. The `percent-encoding` crate decodes; only the encoder's own spelling of a value is
/// taken (`%2f` or a stray `%` decode, but no value encodes to them).
pub fn decode_component(encoded: &str) -> Option<String> {
    if encoded == EMPTY {
        return Some(String::new());
    }
    let value = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?
        .into_owned();
    let mut again = String::new();
    encode_component(&mut again, &value);
    (again == encoded).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        let mut out = String::new();
        encode_component(&mut out, v);
        out
    }

    #[test]
    fn edge_values_encode_apart_and_back() {
        let values = [
            "",
            "\0",
            "%00",
            "%empty",
            ".",
            "..",
            "...",
            ".x",
            "%2Ex",
            "a/b",
            "a%2Fb",
            "a\\b",
            "a:b",
            "auditship.manifest",
            "Auditship.Manifest",
            "%61uditship.manifest",
            "auditship",
            "é/ü",
        ];
        let encoded: Vec<String> = values.iter().map(|v| enc(v)).collect();
        for (v, e) in values.iter().zip(&encoded) {
            assert_eq!(decode_component(e).as_deref(), Some(*v), "{v:?} -> {e:?}");
            assert!(
                !e.contains(['/', '\\', '\0']) && e != "." && e != "..",
                "{v:?} -> {e:?}"
            );
            assert!(
                !e.to_ascii_lowercase().starts_with(RESERVED_PREFIX),
                "{v:?} -> {e:?}"
            );
        }
        let distinct: std::collections::HashSet<&String> = encoded.iter().collect();
        assert_eq!(distinct.len(), values.len(), "{encoded:?}");
    }

    #[test]
    fn only_canonical_spellings_decode() {
        for odd in ["%2f", "%", "%4", "%zz", "a%2", "%41"] {
            assert_eq!(decode_component(odd), None, "{odd:?}");
        }
    }
}

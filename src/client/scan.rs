//! A validating scan of one JSON object that finds where the members the pipeline needs stand.
//!
//! Every event passes through here, so it is the hot path of a busy pipeline. A derived serde
//! struct of borrowed `RawValue`s reads the same members, but walks every other value through
//! serde's visitor machinery; this checks the same grammar (RFC 8259: strings with their
//! escapes and no raw control characters, numbers, literals, nesting up to 128 levels, nothing
//! after the object) in one pass with no allocation, and several times faster (see
//! `benches/hot_paths.rs`). UTF-8 is checked by the caller, and only when a non-ASCII byte was
//! seen: text frames arrive checked already.

/// Where the members of interest of a top-level object stand: each is the raw JSON text of
/// the value (a string keeps its quotes).
#[derive(Debug, Default)]
pub(crate) struct Members<'a> {
    pub id: Option<&'a [u8]>,
    pub inserted_at: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub resource_id: Option<&'a [u8]>,
    pub event: Option<&'a [u8]>,
    pub data: Option<&'a [u8]>,
    /// Some byte is outside ASCII: the caller checks UTF-8 unless it knows already.
    pub non_ascii: bool,
}

/// The deepest nesting accepted (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// Scan `text`, which must be exactly one JSON object (surrounding whitespace allowed).
pub(crate) fn scan_object(text: &[u8]) -> Result<Members<'_>, String> {
    let mut m = Members::default();
    let non_ascii = walk_members(text, false, |name, value| {
        let slot = match name {
            b"id" => Some((&mut m.id, "id")),
            b"inserted_at" => Some((&mut m.inserted_at, "inserted_at")),
            b"timestamp" => Some((&mut m.timestamp, "timestamp")),
            b"resource_id" => Some((&mut m.resource_id, "resource_id")),
            b"event" => Some((&mut m.event, "event")),
            b"data" => Some((&mut m.data, "data")),
            _ => None,
        };
        fill(slot, value)
    })?;
    m.non_ascii = non_ascii;
    Ok(m)
}

/// The members of a list response object that matter.
#[derive(Debug, Default)]
pub(crate) struct ListMembers<'a> {
    pub data: Option<&'a [u8]>,
    pub events: Option<&'a [u8]>,
    pub audit: Option<&'a [u8]>,
    pub items: Option<&'a [u8]>,
    pub next_cursor: Option<&'a [u8]>,
    pub has_more: Option<&'a [u8]>,
}

/// Scan a list response object. Arrays and objects inside it are only checked for structure
/// here (strings, brackets): each element is checked in full when it is decoded as an event.
pub(crate) fn scan_list_object(text: &[u8]) -> Result<ListMembers<'_>, String> {
    let mut m = ListMembers::default();
    walk_members(text, true, |name, value| {
        let slot = match name {
            b"data" => Some((&mut m.data, "data")),
            b"events" => Some((&mut m.events, "events")),
            b"audit" => Some((&mut m.audit, "audit")),
            b"items" => Some((&mut m.items, "items")),
            b"next_cursor" => Some((&mut m.next_cursor, "next_cursor")),
            b"has_more" => Some((&mut m.has_more, "has_more")),
            _ => None,
        };
        fill(slot, value)
    })?;
    Ok(m)
}

/// Split a JSON array (surrounding whitespace allowed) into its elements' text, checking
/// structure only (see [`scan_list_object`]).
pub(crate) fn split_array(text: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut s = Scanner::new(text);
    s.ws();
    if s.peek() != Some(b'[') {
        return Err(s.err("expected `[`"));
    }
    let mut out = Vec::new();
    s.elements(1, true, |element| out.push(element))?;
    s.end()?;
    Ok(out)
}

/// Store `value` in `slot` (a member of interest), refusing a second one; `null` reads as
/// absent, as an `Option` field does.
fn fill<'a>(slot: Option<(&mut Option<&'a [u8]>, &str)>, value: &'a [u8]) -> Result<(), String> {
    if let Some((slot, what)) = slot {
        if slot.is_some() {
            return Err(format!("duplicate member `{what}`"));
        }
        if value != b"null" {
            *slot = Some(value);
        }
    }
    Ok(())
}

/// Walk the members of the object `text` is, calling `member(name, raw value)` for each
/// (names unescaped). `skim`: check nested arrays and objects for structure only. Returns
/// whether a non-ASCII byte was seen.
fn walk_members<'a>(
    text: &'a [u8],
    skim: bool,
    mut member: impl FnMut(&[u8], &'a [u8]) -> Result<(), String>,
) -> Result<bool, String> {
    let mut s = Scanner::new(text);
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.err("expected `{`"));
    }
    s.members(1, skim, |quoted, escaped, value| {
        if escaped {
            let name = serde_json::from_slice::<String>(quoted).map_err(|e| format!("member name: {e}"))?;
            member(name.as_bytes(), value)
        } else {
            member(&quoted[1..quoted.len() - 1], value)
        }
    })?;
    s.end()?;
    Ok(s.non_ascii)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` (little-endian) that is `"`, `\`, below 0x20 or above
/// 0x7f. The classic zero-byte test (`(v - 0x01..) & !v & 0x80..`) can also flag a byte above
/// a true match, through the borrow, but never one below it: the lowest flag is exact.
fn special(x: u64) -> u64 {
    let quote = x ^ (ONES * u64::from(b'"'));
    let backslash = x ^ (ONES * u64::from(b'\\'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    let control = x.wrapping_sub(ONES * 0x20) & !x;
    (quote | backslash | control | x) & HIGH
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    non_ascii: bool,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            i: 0,
            non_ascii: false,
        }
    }

    /// Only whitespace may follow.
    fn end(&mut self) -> Result<(), String> {
        self.ws();
        if self.i != self.b.len() {
            return Err(self.err("trailing characters after the value"));
        }
        Ok(())
    }

    /// Skip one value: scalars and strings are checked in full; arrays and objects for
    /// structure only (strings, matching brackets, up to 128 levels).
    fn skim_value(&mut self) -> Result<(), String> {
        match self.peek() {
            Some(b'[' | b'{') => {}
            _ => return self.value(1),
        }
        // Bit k of `open_objects` is set when level k was opened by `{`.
        let mut open_objects: u128 = 0;
        let mut depth = 0usize;
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated array or object"));
            };
            match c {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'[' | b'{' => {
                    if depth >= MAX_DEPTH {
                        return Err(self.err("nested too deeply"));
                    }
                    if c == b'{' {
                        open_objects |= 1 << depth;
                    } else {
                        open_objects &= !(1 << depth);
                    }
                    depth += 1;
                }
                b']' | b'}' => {
                    if depth == 0 {
                        return Err(self.err("unbalanced bracket"));
                    }
                    depth -= 1;
                    let was_object = open_objects & (1 << depth) != 0;
                    if was_object != (c == b'}') {
                        return Err(self.err("mismatched bracket"));
                    }
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                0x80.. => self.non_ascii = true,
                _ => {}
            }
            self.i += 1;
        }
    }

    fn err(&self, what: &str) -> String {
        if self.i >= self.b.len() {
            format!("{what}: the text ends early (byte {})", self.i)
        } else {
            format!("{what} at byte {}", self.i)
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// At a `"`: skip the string. Returns where its content starts and ends (quotes excluded)
    /// and whether it holds escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), String> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.skip_plain();
            let rest = &self.b[self.i..];
            match rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
            {
                Some(k) => self.i += k,
                None => {
                    self.i = self.b.len();
                    return Err(self.err("unterminated string"));
                }
            }
            match self.b[self.i] {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Ok((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.err("invalid \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                c if c >= 0x80 => {
                    self.non_ascii = true;
                    self.i += 1;
                }
                _ => return Err(self.err("control character in a string")),
            }
        }
    }

    /// Skip string bytes that need no attention (printable ASCII other than `"` and `\`),
    /// eight at a time: the first byte that does is found exactly (see [`special`]).
    fn skip_plain(&mut self) {
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let Ok(word) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            let mask = special(u64::from_le_bytes(word));
            if mask != 0 {
                self.i += (mask.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - from
    }

    fn number(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number: no digit after `.`"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number: no digit in the exponent"));
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), String> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), String> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.members(depth, false, |_, _, _| Ok(()))
    }

    fn array(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.elements(depth, false, |_| {})
    }

    /// At a `{`: walk the object's members, calling `member(quoted name, escaped, value)`
    /// with the name's text (quotes included), whether it holds escapes, and the value's raw
    /// text. `skim`: values are checked as [`Scanner::skim_value`] does.
    fn members(
        &mut self,
        depth: usize,
        skim: bool,
        mut member: impl FnMut(&'a [u8], bool, &'a [u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let b = self.b;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a member name"));
            }
            let (start, end, escaped) = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected `:`"));
            }
            self.i += 1;
            self.ws();
            let value_start = self.i;
            if skim {
                self.skim_value()?;
            } else {
                self.value(depth)?;
            }
            member(&b[start - 1..end + 1], escaped, &b[value_start..self.i])?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    /// At a `[`: walk the array's elements, calling `element(raw text)` for each. `skim`: as
    /// in [`Scanner::members`].
    fn elements(
        &mut self,
        depth: usize,
        skim: bool,
        mut element: impl FnMut(&'a [u8]),
    ) -> Result<(), String> {
        let b = self.b;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let start = self.i;
            if skim {
                self.skim_value()?;
            } else {
                self.value(depth)?;
            }
            element(&b[start..self.i]);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `]`")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever serde_json accepts as an object, the scanner accepts, and the other way round.
    #[test]
    fn agrees_with_serde_json_on_valid_and_invalid_text() {
        let cases: &[&str] = &[
            r#"{}"#,
            r#" { "id" : "a" } "#,
            r#"{"id":"a","n":-0.5e+10,"z":0,"t":true,"f":false,"x":null,"arr":[1,[2,{}],"s"],"o":{"k":{"k":[]}}}"#,
            r#"{"id":"caf\u00e9 \"q\" \\ \/ \b\f\n\r\t"}"#,
            "{\"id\":\"caf\u{e9}\"}",
            r#"{"id":"a",}"#,
            r#"{"id":"a""#,
            r#"{"id":"a"} x"#,
            r#"{"id":01}"#,
            r#"{"id":1.}"#,
            r#"{"id":1e}"#,
            r#"{"id":-}"#,
            r#"{"id":tru}"#,
            r#"{"id":"a\x"}"#,
            r#"{"id":"a\u12"}"#,
            "{\"id\":\"a\u{1}\"}",
            r#"{"id" "a"}"#,
            r#"{id:"a"}"#,
            r#"[1]"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":"#,
            "",
            "{",
        ];
        for text in cases {
            let serde_ok = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_ok();
            let ours = scan_object(text.as_bytes());
            assert_eq!(ours.is_ok(), serde_ok, "{text:?}: {ours:?}");
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(127), "]".repeat(127));
        assert!(scan_object(deep.as_bytes()).is_ok());
        let deeper = format!("{{\"a\":{}1{}}}", "[".repeat(128), "]".repeat(128));
        assert!(scan_object(deeper.as_bytes()).is_err());
    }

    /// The word-at-a-time skip stops exactly at the first byte the byte-at-a-time rule
    /// stops at, wherever it stands and whatever follows it.
    #[test]
    fn the_word_skip_stops_at_the_first_special_byte() {
        let is_special = |c: u8| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c);
        for first in [b'"', b'\\', 0x00, 0x1f, 0x80, 0xff] {
            for after in [b'"', 0x00, 0x01, 0xff] {
                for at in 0..20 {
                    let mut text = vec![b'a'; 24];
                    text[at] = first;
                    text[(at + 1).min(23)] = after;
                    let mut s = Scanner {
                        b: &text,
                        i: 0,
                        non_ascii: false,
                    };
                    s.skip_plain();
                    assert_eq!(s.i, at, "{first:#x} at {at}, then {after:#x}");
                }
            }
        }
        for c in 0u8..=255 {
            let word = u64::from_le_bytes([b'a', b'a', c, b'a', b'a', b'a', b'a', b'a']);
            let mask = special(word);
            assert_eq!(mask == 0, !is_special(c), "byte {c:#x}");
            if is_special(c) {
                assert_eq!(mask.trailing_zeros() / 8, 2, "byte {c:#x}");
            }
        }
    }

    /// Brackets and escaped quotes inside strings never move an element's boundary when a
    /// page is split.
    #[test]
    fn split_array_ignores_brackets_and_escaped_quotes_inside_strings() {
        let page = br#" [ {"id":"a\"]}","x":"[{\\"} , {"id":"b"} ,[1,"]"]] "#;
        let parts = split_array(page).unwrap();
        assert_eq!(
            parts,
            vec![
                &br#"{"id":"a\"]}","x":"[{\\"}"#[..],
                &br#"{"id":"b"}"#[..],
                &br#"[1,"]"]"#[..]
            ]
        );
        for broken in [
            &br#"[{"id":"a\"}]"#[..],
            br#"[{"id":"a"}"#,
            br#"[{"id":"a\"#,
            br#"[{"id":"a"]]"#,
        ] {
            assert!(
                split_array(broken).is_err(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn finds_the_members_and_flags_duplicates() {
        let text = br#"{"x":{"id":"inner"},"id":"evt_1","inserted_at":"2026-11-25T10:00:00Z","timestamp":1.5,"resource_id":null,"data":{"id":2}}"#;
        let m = scan_object(text).unwrap();
        assert_eq!(m.id, Some(&br#""evt_1""#[..]));
        assert_eq!(m.inserted_at, Some(&br#""2026-11-25T10:00:00Z""#[..]));
        assert_eq!(m.timestamp, Some(&b"1.5"[..]));
        assert_eq!(m.resource_id, None);
        assert_eq!(m.data, Some(&br#"{"id":2}"#[..]));
        assert!(!m.non_ascii);
        let escaped_name = br#"{"\u0069d":"evt_2"}"#;
        assert_eq!(scan_object(escaped_name).unwrap().id, Some(&br#""evt_2""#[..]));
        let dup = br#"{"id":"a","id":"b"}"#;
        assert!(scan_object(dup).unwrap_err().contains("duplicate member `id`"));
        assert!(scan_object("{\"id\":\"é\"}".as_bytes()).unwrap().non_ascii);
    }
}

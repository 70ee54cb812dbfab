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
    let mut s = Scanner {
        b: text,
        i: 0,
        non_ascii: false,
    };
    let mut m = Members::default();
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.err("expected `{`"));
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            if s.peek() != Some(b'"') {
                return Err(s.err("expected a member name"));
            }
            let (start, end, escaped) = s.string()?;
            s.ws();
            if s.peek() != Some(b':') {
                return Err(s.err("expected `:`"));
            }
            s.i += 1;
            s.ws();
            let value_start = s.i;
            s.value(1)?;
            let value = &text[value_start..s.i];
            let name = &text[start..end];
            let unescaped;
            let name: &[u8] = if escaped {
                unescaped = serde_json::from_slice::<String>(&text[start - 1..end + 1])
                    .map_err(|e| format!("member name: {e}"))?;
                unescaped.as_bytes()
            } else {
                name
            };
            let slot = match name {
                b"id" => Some((&mut m.id, "id")),
                b"inserted_at" => Some((&mut m.inserted_at, "inserted_at")),
                b"timestamp" => Some((&mut m.timestamp, "timestamp")),
                b"resource_id" => Some((&mut m.resource_id, "resource_id")),
                b"event" => Some((&mut m.event, "event")),
                b"data" => Some((&mut m.data, "data")),
                _ => None,
            };
            if let Some((slot, what)) = slot {
                if slot.is_some() {
                    return Err(format!("duplicate member `{what}`"));
                }
                // `null` reads as absent, as an `Option` field does.
                if value != b"null" {
                    *slot = Some(value);
                }
            }
            s.ws();
            match s.peek() {
                Some(b',') => s.i += 1,
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return Err(s.err("expected `,` or `}`")),
            }
        }
    }
    s.ws();
    if s.i != text.len() {
        return Err(s.err("trailing characters after the object"));
    }
    m.non_ascii = s.non_ascii;
    Ok(m)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    non_ascii: bool,
}

impl Scanner<'_> {
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
            self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected `:`"));
            }
            self.i += 1;
            self.ws();
            self.value(depth)?;
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

    fn array(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth)?;
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

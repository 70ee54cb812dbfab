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

impl<'a> Members<'a> {
    /// Keep `value` when `name` is a member of interest.
    fn fill(&mut self, name: &[u8], value: &'a [u8]) -> Result<(), String> {
        let slot = match name {
            b"id" => Some((&mut self.id, "id")),
            b"inserted_at" => Some((&mut self.inserted_at, "inserted_at")),
            b"timestamp" => Some((&mut self.timestamp, "timestamp")),
            b"resource_id" => Some((&mut self.resource_id, "resource_id")),
            b"event" => Some((&mut self.event, "event")),
            b"data" => Some((&mut self.data, "data")),
            _ => None,
        };
        fill(slot, value)
    }
}

/// Scan `text`, which must be exactly one JSON object (surrounding whitespace allowed).
pub(crate) fn scan_object(text: &[u8]) -> Result<Members<'_>, String> {
    let mut s = Scanner::new(text);
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.err("expected `{`"));
    }
    let mut m = Members::default();
    s.members(
        |s, _, _| s.value(1),
        |quoted, escaped, value| with_name(quoted, escaped, |name| m.fill(name, value)),
    )?;
    s.end()?;
    m.non_ascii = s.non_ascii;
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

impl<'a> ListMembers<'a> {
    /// Keep `value` when `name` is a member of interest.
    fn fill(&mut self, name: &[u8], value: &'a [u8]) -> Result<(), String> {
        let slot = match name {
            b"data" => Some((&mut self.data, "data")),
            b"events" => Some((&mut self.events, "events")),
            b"audit" => Some((&mut self.audit, "audit")),
            b"items" => Some((&mut self.items, "items")),
            b"next_cursor" => Some((&mut self.next_cursor, "next_cursor")),
            b"has_more" => Some((&mut self.has_more, "has_more")),
            _ => None,
        };
        fill(slot, value)
    }
}

/// The members that may hold a page's events, first choice first.
const EVENT_ARRAYS: [&[u8]; 4] = [b"data", b"events", b"audit", b"items"];

/// One element of a list page's event array.
#[derive(Debug)]
pub(crate) enum Element<'a> {
    /// An object that passed the full check: its members of interest and its text.
    Object(Members<'a>, &'a [u8]),
    /// An element whose structure is whole (strings and brackets) but which is not a valid
    /// JSON object: its text and what is wrong with it.
    Invalid(&'a [u8], String),
}

/// A list response, scanned in one pass.
#[derive(Debug, Default)]
pub(crate) struct PageScan<'a> {
    /// The response's members of interest when it is an object (all `None` for a bare array).
    pub list: ListMembers<'a>,
    /// The events: the bare array's elements, else those of the first of `data`, `events`,
    /// `audit`, `items` that holds an array; `None` when none does.
    pub elements: Option<Vec<Element<'a>>>,
}

/// Scan a list response: a bare array of events or an object holding one. The page is read
/// once: each element of an event array is checked in full as it is reached (a list response
/// is most of what a backfill reads, and it used to be walked three times). Other arrays and
/// objects are checked for structure only. An element that fails the full check is skimmed for
/// structure to find where it ends and kept as [`Element::Invalid`]; broken structure fails
/// the page.
pub(crate) fn scan_page(text: &[u8]) -> Result<PageScan<'_>, String> {
    let mut s = Scanner::new(text);
    s.ws();
    let mut page = PageScan::default();
    match s.peek() {
        Some(b'[') => {
            let mut out = Vec::new();
            s.event_elements(&mut out)?;
            page.elements = Some(out);
        }
        Some(b'{') => {
            let mut arrays: [Option<Vec<Element>>; 4] = Default::default();
            let list = &mut page.list;
            s.members(
                |s, quoted, escaped| {
                    let k = with_name(quoted, escaped, |name| {
                        Ok(EVENT_ARRAYS.iter().position(|n| *n == name))
                    })?;
                    match k {
                        Some(k) if s.peek() == Some(b'[') => {
                            let mut out = Vec::new();
                            s.event_elements(&mut out)?;
                            arrays[k] = Some(out);
                            Ok(())
                        }
                        _ => s.skim_value(),
                    }
                },
                |quoted, escaped, value| with_name(quoted, escaped, |name| list.fill(name, value)),
            )?;
            page.elements = arrays.into_iter().flatten().next();
        }
        _ => return Err(s.err("not a JSON array or object")),
    }
    s.end()?;
    Ok(page)
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

/// Call `f` with a member's name, unescaped: `quoted` is its text with the quotes, `escaped`
/// whether it holds escapes (rare: only then is it decoded).
fn with_name<T>(
    quoted: &[u8],
    escaped: bool,
    f: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, String> {
    if escaped {
        let name = serde_json::from_slice::<String>(quoted).map_err(|e| format!("member name: {e}"))?;
        f(name.as_bytes())
    } else {
        f(&quoted[1..quoted.len() - 1])
    }
}

/// Bit k set when byte `at + k` of `b` is `"`, `\`, below 0x20 or above 0x7f, for the 64
/// bytes from `at` (bytes past the end of `b` read as plain). Exact for every byte: a caller
/// may look past the first flag.
fn special_bits(b: &[u8], at: usize) -> u64 {
    let rest = b.get(at..).unwrap_or_default();
    match rest.first_chunk::<64>() {
        Some(block) => block_bits(block),
        // Only the last block of a text is short: padding every block cost a 64-byte fill each.
        None => {
            let mut padded = [b'a'; 64];
            padded[..rest.len()].copy_from_slice(rest);
            block_bits(&padded)
        }
    }
}

/// [`special_bits`] of one whole block.
#[inline(always)]
fn block_bits(block: &[u8; 64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        let mut bits = 0u64;
        // SAFETY: SSE2 is part of every x86-64 target, so these intrinsics are available; each
        // load reads 16 bytes inside `block` (64 bytes), and an unaligned load may.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let space = _mm_set1_epi8(0x20);
            for (n, chunk) in block.chunks_exact(16).enumerate() {
                let x = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                // A signed compare: bytes at or above 0x80 read as negative, so one compare
                // finds both control characters and non-ASCII bytes.
                let special = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                    _mm_cmplt_epi8(x, space),
                );
                bits |= u64::from(_mm_movemask_epi8(special) as u16) << (16 * n);
            }
        }
        bits
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut bits = 0u64;
        for (k, &c) in block.iter().enumerate() {
            if c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c) {
                bits |= 1 << k;
            }
        }
        bits
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    non_ascii: bool,
    /// The 64-byte block of `b` (counted from its start) whose [`special_bits`] are in
    /// `bits`, plus one; 0 before the first. A block holds several strings of a typical
    /// event, so most strings end without touching the bytes again.
    block: usize,
    bits: u64,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            i: 0,
            non_ascii: false,
            block: 0,
            bits: 0,
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
    #[inline(always)]
    fn string(&mut self) -> Result<(usize, usize, bool), String> {
        self.i += 1;
        let start = self.i;
        // Most strings end in the block already scanned, with no escape: a shift, a count and
        // one compare, inline at every call.
        if self.block == start / 64 + 1 {
            let ahead = self.bits >> (start % 64);
            if ahead != 0 {
                let end = start + ahead.trailing_zeros() as usize;
                if self.b.get(end) == Some(&b'"') {
                    self.i = end + 1;
                    return Ok((start, end, false));
                }
            }
        }
        self.string_rest(start)
    }

    /// [`Scanner::string`] from `start`, the first byte of its content, the general way.
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Result<(usize, usize, bool), String> {
        let mut escaped = false;
        loop {
            self.skip_plain();
            let Some(&c) = self.b.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            match c {
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

    /// Skip string bytes that need no attention (printable ASCII other than `"` and `\`):
    /// stop at the first byte that does, or at the end of the text. The bytes needing attention
    /// are found a 64-byte block at a time ([`special_bits`]) and the block's bits kept, so
    /// the next string in the same block ends with a shift and a count of trailing zeros:
    /// scanning each string on its own made every string wait on loading and comparing its
    /// bytes, the largest single cost of the scan.
    fn skip_plain(&mut self) {
        while self.i < self.b.len() {
            let k = self.i / 64;
            if self.block != k + 1 {
                self.bits = special_bits(self.b, k * 64);
                self.block = k + 1;
            }
            let ahead = self.bits >> (self.i % 64);
            if ahead != 0 {
                self.i += ahead.trailing_zeros() as usize;
                return;
            }
            self.i = ((k + 1) * 64).min(self.b.len());
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

    /// One value of any kind. Strings, most of an event's values, are read inline at every
    /// call; the rest out of line (objects and arrays recurse through here).
    #[inline(always)]
    fn value(&mut self, depth: usize) -> Result<(), String> {
        if self.peek() == Some(b'"') {
            return self.string().map(drop);
        }
        self.value_rest(depth)
    }

    #[inline(never)]
    fn value_rest(&mut self, depth: usize) -> Result<(), String> {
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
        self.members(|s, _, _| s.value(depth), |_, _, _| Ok(()))
    }

    fn array(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.elements(|s| s.value(depth))
    }

    /// At a `{`: walk the object's members, reading each value with `value(scanner, quoted
    /// name, escaped)` and then calling `member(quoted name, escaped, value)` with the name's
    /// text (quotes included), whether it holds escapes, and the value's raw text.
    fn members(
        &mut self,
        mut value: impl FnMut(&mut Self, &'a [u8], bool) -> Result<(), String>,
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
            let quoted = &b[start - 1..end + 1];
            value(self, quoted, escaped)?;
            member(quoted, escaped, &b[value_start..self.i])?;
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

    /// At a `[`: walk the array's elements, reading each with `value`.
    fn elements(&mut self, mut value: impl FnMut(&mut Self) -> Result<(), String>) -> Result<(), String> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            value(self)?;
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

    /// At the `[` of a page's event array: check each element in full as an event object, and
    /// find the end of one that fails by its structure alone.
    fn event_elements(&mut self, out: &mut Vec<Element<'a>>) -> Result<(), String> {
        let b = self.b;
        self.elements(|s| {
            let start = s.i;
            let outer_non_ascii = std::mem::take(&mut s.non_ascii);
            let checked = if s.peek() == Some(b'{') {
                let mut m = Members::default();
                s.members(
                    |s, _, _| s.value(1),
                    |quoted, escaped, value| with_name(quoted, escaped, |name| m.fill(name, value)),
                )
                .map(|()| Some(m))
            } else {
                s.value(1).map(|()| None)
            };
            let element = match checked {
                Ok(Some(mut m)) => {
                    m.non_ascii = s.non_ascii;
                    Element::Object(m, &b[start..s.i])
                }
                Ok(None) => Element::Invalid(&b[start..s.i], "not a JSON object".into()),
                Err(first) => {
                    s.i = start;
                    s.skim_value()?;
                    let text = &b[start..s.i];
                    // Say where, counted from the element's own start.
                    let why = match scan_object(text) {
                        Err(e) if text.starts_with(b"{") => e,
                        _ => first,
                    };
                    Element::Invalid(text, why)
                }
            };
            s.non_ascii |= outer_non_ascii;
            out.push(element);
            Ok(())
        })
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
        // Valid JSON that a serde_json `Value` refuses (beyond f64's range): the event passes
        // through as written, so it is accepted.
        assert!(scan_object(br#"{"big":5e609,"small":-1e-999}"#).is_ok());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(127), "]".repeat(127));
        assert!(scan_object(deep.as_bytes()).is_ok());
        let deeper = format!("{{\"a\":{}1{}}}", "[".repeat(128), "]".repeat(128));
        assert!(scan_object(deeper.as_bytes()).is_err());
    }

    /// The block skip stops exactly at the first byte the byte-at-a-time rule stops at,
    /// wherever it stands (in a block, at a block's edge, in a short last block) and whatever
    /// follows it; and it stops at the end of a text with no such byte.
    #[test]
    fn the_block_skip_stops_at_the_first_special_byte() {
        let is_special = |c: u8| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c);
        for len in [1, 47, 64, 65, 130, 200] {
            for first in [b'"', b'\\', 0x00, 0x1f, 0x80, 0xff] {
                for after in [b'"', 0x00, 0x01, 0xff] {
                    for at in 0..len {
                        let mut text = vec![b'a'; len];
                        text[at] = first;
                        if at + 1 < len {
                            text[at + 1] = after;
                        }
                        for from in [0, at / 2, at] {
                            let mut s = Scanner::new(&text);
                            // A block's bits left from an earlier position must not mislead.
                            s.skip_plain();
                            s.i = from;
                            s.skip_plain();
                            assert_eq!(
                                s.i, at,
                                "{first:#x} at {at} of {len} from {from}, then {after:#x}"
                            );
                        }
                    }
                }
            }
            let plain = vec![b'a'; len];
            let mut s = Scanner::new(&plain);
            s.skip_plain();
            assert_eq!(s.i, len);
        }
        // Every byte value, at every position of a block: flagged exactly when special.
        for c in 0u8..=255 {
            for at in [0, 15, 16, 63, 64, 100] {
                let mut text = vec![b'a'; 128];
                text[at] = c;
                let bits = special_bits(&text, at / 64 * 64);
                let want = if is_special(c) { 1u64 << (at % 64) } else { 0 };
                assert_eq!(bits, want, "byte {c:#x} at {at}");
            }
        }
    }

    /// An event of several 64-byte blocks, with bytes flipped (often to bytes that matter
    /// to JSON) and maybe cut short: the scan accepts it exactly when serde_json reads it as
    /// an object of raw values (the scan leaves UTF-8 to its caller, so that is checked here
    /// as the caller does), and then finds the same `id`.
    #[test]
    fn agrees_with_serde_json_on_mutated_events() {
        use proptest::prelude::*;
        const EVENT: &str = r#"{"id":"evt_042644f23727e8d9","tenant_id":"tn_demo","resource_id":"sb-1","host":"api.openai.com","path":"/v1/items?q=[REDACTED]","status_code":200,"bytes_in":59609,"request_transforms":[{"type":"secret_placeholder","name":"OPENAI_KEY"}],"metadata":{"seq":1,"cost_usd":1.50,"ratio":1e-3,"note":"caf\u00e9 \"quoted\" \\ x"},"inserted_at":"2026-11-27T01:37:25.170587Z","timestamp":"2026-11-27T01:37:25.169087Z"}"#;
        const MATTERS: &[u8] = b"\"\\{}[],: \t0-.eu\x00\x1f\x7f\x80\xc3\xa9";
        let byte = prop_oneof![any::<u8>(), prop::sample::select(MATTERS)];
        let flips = prop::collection::vec((any::<prop::sample::Index>(), byte), 1..4);
        let cut = prop::option::weighted(0.2, any::<prop::sample::Index>());
        let config = ProptestConfig {
            cases: 2048,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest::test_runner::TestRunner::new(config)
            .run(&(flips, cut), |(flips, cut)| {
                let mut b = EVENT.as_bytes().to_vec();
                for (at, byte) in flips {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                if let Some(cut) = cut {
                    b.truncate(cut.index(b.len()));
                }
                // Raw values: serde_json checks their grammar but not a number's range (a `Value`
                // refuses `5e609`, which is valid JSON and passes through untouched here).
                type Raw = std::collections::HashMap<String, Box<serde_json::value::RawValue>>;
                let serde = serde_json::from_slice::<Raw>(&b);
                let ours = scan_object(&b)
                    .ok()
                    .filter(|m| !m.non_ascii || std::str::from_utf8(&b).is_ok());
                prop_assert_eq!(ours.is_some(), serde.is_ok(), "{:?}", String::from_utf8_lossy(&b));
                if let (Some(m), Ok(map)) = (ours, serde) {
                    let id = map
                        .get("id")
                        .map(|v| v.get().as_bytes())
                        .filter(|v| *v != b"null");
                    prop_assert_eq!(m.id, id);
                }
                Ok(())
            })
            .unwrap();
    }

    /// Brackets and escaped quotes inside strings never move an element's boundary; an element
    /// that is not a valid object is kept with its text, and broken structure fails the page.
    #[test]
    fn page_elements_keep_their_bounds_and_bad_ones_are_kept_apart() {
        let texts = |scan: PageScan<'_>| -> Vec<(Vec<u8>, bool)> {
            scan.elements
                .unwrap()
                .into_iter()
                .map(|e| match e {
                    Element::Object(_, t) => (t.to_vec(), true),
                    Element::Invalid(t, _) => (t.to_vec(), false),
                })
                .collect()
        };
        let page = br#" [ {"id":"a\"]}","x":"[{\\"} , {"id":"b","n":01} ,[1,"]"], {"id":"c"}] "#;
        assert_eq!(
            texts(scan_page(page).unwrap()),
            vec![
                (br#"{"id":"a\"]}","x":"[{\\"}"#.to_vec(), true),
                (br#"{"id":"b","n":01}"#.to_vec(), false),
                (br#"[1,"]"]"#.to_vec(), false),
                (br#"{"id":"c"}"#.to_vec(), true),
            ]
        );
        // The reason counts from the element's own start.
        let Some(Element::Invalid(_, why)) = scan_page(br#"[{"id":"a"},{"id":"b","n":01}]"#)
            .unwrap()
            .elements
            .unwrap()
            .into_iter()
            .nth(1)
        else {
            panic!("the second element should be invalid");
        };
        assert!(why.contains("at byte 15"), "{why}");
        // Under an envelope: the first of data/events/audit/items holding an array wins.
        let wrapped = br#"{"items":[{"id":"i"}],"next_cursor":"c","data":[{"id":"d"}],"x":[{"bad":01}]}"#;
        let scan = scan_page(wrapped).unwrap();
        assert_eq!(scan.list.next_cursor, Some(&br#""c""#[..]));
        assert_eq!(texts(scan), vec![(br#"{"id":"d"}"#.to_vec(), true)]);
        assert!(scan_page(br#"{"data":null}"#).unwrap().elements.is_none());
        for broken in [
            &br#"[{"id":"a\"}]"#[..],
            br#"[{"id":"a"}"#,
            br#"[{"id":"a\"#,
            br#"[{"id":"a"]]"#,
            br#"[{"id":"a"}] x"#,
            br#"{"data":[{"id":"a"}],"data":[]}"#,
        ] {
            assert!(scan_page(broken).is_err(), "{}", String::from_utf8_lossy(broken));
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

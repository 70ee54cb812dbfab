//! Audit events and the tolerant decoding of everything the API sends.
//!
//! An event is kept as its raw JSON bytes; decoding reads only `id`, `inserted_at`, `timestamp`
//! and the envelope keys through a borrowed struct, so unknown fields and number formatting
//! survive untouched and nothing is re-serialized.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::scan::{scan_object, scan_page, Element, Members};
use super::Error;

/// One egress-audit event: the raw JSON exactly as received, plus the fields the client reads.
///
/// ```
/// use auditship_client::{parse_time, AuditEvent};
///
/// let event = AuditEvent::from_json(
///     r#"{"id":"evt_9","resource_id":"sb-1","inserted_at":"2026-11-25T10:00:01Z","timestamp":"2026-11-25T10:00:00Z"}"#,
/// )?;
/// assert_eq!(event.id(), "evt_9");
/// assert_eq!(event.resource_id(), Some("sb-1"));
/// assert_eq!(event.cursor_text(), Some("2026-11-25T10:00:01Z")); // inserted_at first
/// assert_eq!(event.cursor_us(), parse_time("2026-11-25T10:00:01Z"));
/// assert_eq!(event.time_us(), parse_time("2026-11-25T10:00:00Z")); // timestamp first
/// assert_eq!(event.cursor_time().unwrap().to_rfc3339(), "2026-11-25T10:00:01+00:00");
/// assert_eq!(event.json().as_bytes(), &event.raw()[..]);
/// let bytes = event.clone().into_raw();
/// assert!(bytes.starts_with(b"{\"id\""));
/// # Ok::<(), auditship_client::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AuditEvent {
    raw: Bytes,
    id: Arc<str>,
    cursor_us: Option<i64>,
    /// Byte range of the cursor time's text inside `raw`.
    cursor_span: Option<(u32, u32)>,
    /// Byte range of `resource_id`'s text inside `raw`.
    resource_span: Option<(u32, u32)>,
    time_us: Option<i64>,
    /// Whether the cursor time is `inserted_at` (not the `timestamp` fallback).
    cursor_inserted: bool,
}

/// A cursor time as the server spelled it, kept inline (timestamps are short), so remembering
/// the newest one per sandbox neither allocates per event nor pins the buffer it came from (a
/// whole list page, for an event sliced out of one).
#[derive(Clone, Debug)]
pub enum CursorText {
    /// Up to 46 bytes, inline.
    Inline {
        /// Bytes used.
        len: u8,
        /// The text's bytes.
        buf: [u8; 46],
    },
    /// Longer text.
    Heap(String),
}

impl CursorText {
    /// Keep `text`.
    pub fn new(text: &str) -> Self {
        Self::from_utf8(text.as_bytes()).unwrap_or_else(|| CursorText::Heap(text.to_string()))
    }

    /// Keep `bytes` inline when they fit (checked as text only when read: see `as_str`), and
    /// as checked text otherwise. `None`: too long and not UTF-8.
    pub(crate) fn from_utf8(bytes: &[u8]) -> Option<Self> {
        if bytes.len() <= 46 {
            let mut buf = [0u8; 46];
            buf[..bytes.len()].copy_from_slice(bytes);
            Some(CursorText::Inline {
                len: bytes.len() as u8,
                buf,
            })
        } else {
            std::str::from_utf8(bytes)
                .ok()
                .map(|t| CursorText::Heap(t.to_string()))
        }
    }

    /// The cursor text at `start..end` of `raw` (an event's bytes; see
    /// [`AuditEvent::cursor_span`]). Runs for every event, so when `raw` has 46 bytes from
    /// `start` it copies exactly 46 (a few vector moves, no `memcpy` call); the bytes past the
    /// text are never read.
    pub fn from_span(raw: &[u8], start: usize, end: usize) -> Option<Self> {
        let len = end.checked_sub(start)?;
        match raw.get(start..start + 46) {
            Some(window) if len <= 46 => {
                let mut buf = [0u8; 46];
                buf.copy_from_slice(window);
                Some(CursorText::Inline { len: len as u8, buf })
            }
            _ => Self::from_utf8(raw.get(start..end)?),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole, so always valid UTF-8.
            CursorText::Inline { len, buf } => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            CursorText::Heap(s) => s,
        }
    }
}

impl PartialEq for CursorText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for CursorText {}

/// The documented fields of an event, for typed access ([`AuditEvent::fields`]). Every field is
/// optional except `id`; fields the contract does not list are in [`AuditEvent::raw`] only.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditFields {
    /// Event id (opaque).
    pub id: String,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Sandbox (or computer) id.
    pub resource_id: Option<String>,
    /// `sandbox` or `computer`.
    pub resource_type: Option<String>,
    /// `allow`, `reject`, `stub`, `error`, `client_cancel` (and `denied` in some fixtures).
    pub action: Option<String>,
    /// `allow` / `deny` in some SDK fixtures.
    pub effect: Option<String>,
    /// Destination host.
    pub host: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// Request path, query redacted server-side.
    pub path: Option<String>,
    /// Response status, 0 if none.
    pub status_code: Option<i64>,
    /// Duration in milliseconds.
    pub duration_ms: Option<i64>,
    /// Bytes received.
    pub bytes_in: Option<i64>,
    /// Bytes sent.
    pub bytes_out: Option<i64>,
    /// Policy that decided.
    pub policy_id: Option<String>,
    /// Rule that decided.
    pub rule_id: Option<String>,
    /// What rejected the call.
    pub rejected_by: Option<String>,
    /// Acting user or agent.
    pub actor_id: Option<String>,
    /// Caller-supplied user id.
    pub external_user_id: Option<String>,
    /// Caller-supplied workspace id.
    pub external_workspace_id: Option<String>,
    /// Transforms applied at the boundary.
    pub request_transforms: Option<Vec<serde_json::Value>>,
    /// MCP details.
    pub mcp: Option<serde_json::Value>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
    /// Server insert time (RFC 3339).
    pub inserted_at: Option<String>,
    /// Event time (RFC 3339).
    pub timestamp: Option<String>,
}

impl AuditEvent {
    /// Decode one event from JSON: a bare event object, or an envelope `{"event": {...}}` /
    /// `{"data": {...}}`. Line breaks between tokens become spaces (JSON strings cannot hold a
    /// raw line break, so the value is unchanged and the event fits one NDJSON line).
    ///
    /// ```
    /// use auditship_client::AuditEvent;
    ///
    /// let event = AuditEvent::from_json(r#"{"event":{"id":"evt_1","action":"reject","cost":1.50,"x":{}}}"#)?;
    /// assert_eq!(event.id(), "evt_1");
    /// assert_eq!(event.json(), r#"{"id":"evt_1","action":"reject","cost":1.50,"x":{}}"#);
    /// assert_eq!(event.fields()?.action.as_deref(), Some("reject"));
    /// assert!(AuditEvent::from_json("not json{").is_err());
    /// # Ok::<(), auditship_client::Error>(())
    /// ```
    pub fn from_json(bytes: impl Into<Bytes>) -> Result<Self, Error> {
        decode_event(bytes.into(), "event")
    }

    /// The event id. Opaque: not sortable, not monotonic.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id as a shared string (cheap to clone).
    pub fn id_arc(&self) -> &Arc<str> {
        &self.id
    }

    /// The event's JSON, exactly as received (envelope removed).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The event's JSON as text.
    pub fn json(&self) -> &str {
        // Decoding checked the bytes are JSON, which is UTF-8.
        std::str::from_utf8(&self.raw).unwrap_or_default()
    }

    /// Take the raw JSON.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Cursor time (`inserted_at`, else `timestamp`), microseconds since the Unix epoch.
    pub fn cursor_us(&self) -> Option<i64> {
        self.cursor_us
    }

    /// The cursor time exactly as the server wrote it. Paging asks with this text as `since`,
    /// as the SDKs do, so the server compares against its own spelling of the time.
    pub fn cursor_text(&self) -> Option<&str> {
        let (start, end) = self.cursor_span?;
        std::str::from_utf8(self.raw.get(start as usize..end as usize)?).ok()
    }

    /// The event's `resource_id` (the sandbox), when it is a plain string.
    pub fn resource_id(&self) -> Option<&str> {
        let (start, end) = self.resource_span?;
        std::str::from_utf8(self.raw.get(start as usize..end as usize)?).ok()
    }

    /// [`AuditEvent::cursor_text`], kept inline.
    pub fn cursor_text_handle(&self) -> Option<CursorText> {
        // Called for every event a tail yields: copy the bytes now, check them as text only
        // when they are read (they are a slice of checked JSON between two quotes).
        let (start, end) = self.cursor_span?;
        CursorText::from_span(&self.raw, start as usize, end as usize)
    }

    /// Whether the cursor time is the server's `inserted_at` (`false`: the `timestamp`
    /// fallback, or no time at all).
    pub fn cursor_is_inserted_at(&self) -> bool {
        self.cursor_inserted
    }

    /// Byte offsets of [`AuditEvent::cursor_text`] inside [`AuditEvent::raw`].
    pub fn cursor_span(&self) -> Option<(u32, u32)> {
        self.cursor_span
    }

    /// Event time (`timestamp`, else `inserted_at`), microseconds since the Unix epoch.
    pub fn time_us(&self) -> Option<i64> {
        self.time_us
    }

    /// Cursor time as a date-time.
    pub fn cursor_time(&self) -> Option<DateTime<Utc>> {
        self.cursor_us.and_then(DateTime::from_timestamp_micros)
    }

    /// The documented fields, typed. Fields the contract does not list stay in
    /// [`AuditEvent::raw`].
    ///
    /// ```
    /// use auditship_client::AuditEvent;
    ///
    /// let event = AuditEvent::from_json(r#"{"id":"e","host":"pypi.org","status_code":200,"new_field":true}"#)?;
    /// let fields = event.fields()?;
    /// assert_eq!((fields.host.as_deref(), fields.status_code), (Some("pypi.org"), Some(200)));
    /// assert_eq!(event.to_value()?["new_field"], true);
    /// # Ok::<(), auditship_client::Error>(())
    /// ```
    pub fn fields(&self) -> Result<AuditFields, Error> {
        serde_json::from_slice(&self.raw).map_err(|e| Error::Decode {
            what: "event fields".into(),
            message: e.to_string(),
            raw: Some(self.raw.clone()),
        })
    }

    /// The whole event as a JSON value (unknown fields included).
    pub fn to_value(&self) -> Result<serde_json::Value, Error> {
        serde_json::from_slice(&self.raw).map_err(|e| Error::Decode {
            what: "event".into(),
            message: e.to_string(),
            raw: Some(self.raw.clone()),
        })
    }
}

/// Parse an RFC 3339 time to microseconds since the Unix epoch.
///
/// ```
/// use auditship_client::{format_time, parse_time};
///
/// let us = parse_time("2026-11-25T10:00:00.25+01:00").unwrap();
/// assert_eq!(format_time(us), "2026-11-25T09:00:00.250000Z");
/// ```
///
/// Also accepted, because servers vary: a space instead
/// of `T`, no offset (taken as UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(us) = parse_rfc3339_fast(s.as_bytes()) {
        return Some(us);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    let t_form = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&t_form) {
        return Some(t.timestamp_micros());
    }
    NaiveDateTime::parse_from_str(&t_form, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// The common spelling, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, read without chrono's
/// general parser (two of these per event). Anything else (a space for `T`, no offset, a leap
/// second, an out-of-range field) is `None`, and [`parse_time`] falls back to chrono, which
/// then decides.
fn parse_rfc3339_fast(b: &[u8]) -> Option<i64> {
    fn num(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_secs = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// Epoch numbers: seconds below 10^11, milliseconds below 10^14, microseconds above.
fn epoch_micros(n: f64) -> Option<i64> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let us = if n < 1e11 {
        n * 1e6
    } else if n < 1e14 {
        n * 1e3
    } else {
        n
    };
    Some(us as i64)
}

/// Format microseconds as RFC 3339 with microseconds, `Z` offset.
pub fn format_time(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn raw_time(raw: Option<&str>) -> Option<i64> {
    let text = raw?;
    if text.starts_with('"') {
        let s = unquote(text)?;
        parse_time(&s)
    } else {
        epoch_micros(text.parse::<f64>().ok()?)
    }
}

fn raw_id(text: &str) -> Result<Arc<str>, String> {
    match text.as_bytes().first() {
        Some(b'"') => {
            let s = unquote(text).ok_or_else(|| format!("`id` is not a valid string: {text}"))?;
            if s.is_empty() {
                return Err("`id` is empty".into());
            }
            Ok(s.into())
        }
        Some(b'-' | b'0'..=b'9') => Ok(text.into()),
        _ => Err(format!("`id` must be a string, found {text}")),
    }
}

/// The content of a JSON string literal: borrowed when it has no escapes (nearly always; a
/// `Cow<str>` from serde_json is owned even then), unescaped otherwise.
fn unquote(literal: &str) -> Option<Cow<'_, str>> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(literal).ok().map(Cow::Owned)
}

/// A scanned JSON value as text. The scan checked it is JSON and the caller checked UTF-8
/// wherever a byte is not ASCII, so this never fails in practice; a failure reads as empty.
fn as_text(raw: &[u8]) -> &str {
    std::str::from_utf8(raw).unwrap_or("")
}

/// [`as_text`] for a member of an object the scan found all ASCII (`ascii`), without checking
/// UTF-8 again: every event passes here, several members each.
fn member_text(raw: &[u8], ascii: bool) -> &str {
    if ascii {
        debug_assert!(raw.is_ascii());
        // SAFETY: the scan flags any byte of the object at or above 0x80 (`non_ascii`), so
        // every byte of `raw`, a slice of that object, is ASCII, and ASCII is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(raw) }
    } else {
        as_text(raw)
    }
}

/// Decode an event out of `buf` (a frame, a `get` body, or a list element sliced from a page).
pub(crate) fn decode_event(buf: Bytes, what: &str) -> Result<AuditEvent, Error> {
    let trimmed = buf.trim_ascii();
    if trimmed.first() != Some(&b'{') {
        return Err(decode_error(what, "not a JSON object".into(), &buf));
    }
    match scan_object(trimmed) {
        Ok(head) => event_from_members(&buf, trimmed, head, what),
        Err(m) => Err(decode_error(what, m, &buf)),
    }
}

fn decode_error(what: &str, message: String, raw: &Bytes) -> Error {
    Error::Decode {
        what: what.to_string(),
        message,
        raw: Some(raw.clone()),
    }
}

/// The event whose checked object `trimmed` (inside `buf`) has the members `head`.
fn event_from_members(
    buf: &Bytes,
    trimmed: &[u8],
    head: Members<'_>,
    what: &str,
) -> Result<AuditEvent, Error> {
    let fail = |message: String, buf: &Bytes| decode_error(what, message, buf);
    if head.non_ascii && std::str::from_utf8(trimmed).is_err() {
        return Err(fail("not valid UTF-8".into(), buf));
    }
    let (object, head) = match head.id {
        Some(_) => (trimmed, head),
        None => {
            let inner = head
                .event
                .or(head.data)
                .filter(|r| r.starts_with(b"{"))
                .ok_or_else(|| fail("object has no `id` and no `event`/`data` envelope".into(), buf))?;
            // Checked as part of the outer object already; this finds the inner members.
            let inner_head = scan_object(inner).map_err(|m| fail(m, buf))?;
            if inner_head.id.is_none() {
                return Err(fail("enveloped object has no `id`".into(), buf));
            }
            (inner, inner_head)
        }
    };
    let ascii = !head.non_ascii;
    let text = |raw| member_text(raw, ascii);
    let id = match head.id {
        Some(raw) => raw_id(text(raw)).map_err(|m| fail(m, buf))?,
        None => return Err(fail("object has no `id`".into(), buf)),
    };
    let inserted = raw_time(head.inserted_at.map(text));
    let stamped = raw_time(head.timestamp.map(text));
    let cursor_raw = if inserted.is_some() {
        head.inserted_at
    } else {
        head.timestamp
    };
    let cursor_span = cursor_raw.and_then(|r| string_span(object, text(r)));
    let resource_span = head.resource_id.and_then(|r| string_span(object, text(r)));
    let raw = if memchr::memchr2(b'\n', b'\r', object).is_some() {
        Bytes::from(
            object
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                .collect::<Vec<u8>>(),
        )
    } else {
        buf.slice_ref(object)
    };
    Ok(AuditEvent {
        raw,
        id,
        cursor_us: inserted.or(stamped),
        cursor_span,
        resource_span,
        time_us: stamped.or(inserted),
        cursor_inserted: inserted.is_some(),
    })
}

/// Where the text of a JSON string value stands in `object` (between the quotes), when it is a
/// plain string with no escapes to undo.
fn string_span(object: &[u8], text: &str) -> Option<(u32, u32)> {
    if !(text.len() >= 2 && text.starts_with('"') && !text.contains('\\')) {
        return None;
    }
    let start = (text.as_ptr() as usize).checked_sub(object.as_ptr() as usize)? + 1;
    let end = start + text.len() - 2;
    Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
}

/// One response of the list endpoint, whatever its shape.
#[derive(Debug, Default)]
pub struct Page {
    /// The events, in the order the server sent them.
    pub events: Vec<AuditEvent>,
    /// Elements that are not events (no `id`, not an object), with why.
    pub invalid: Vec<Error>,
    /// `next_cursor`, when the server gave one.
    pub next_cursor: Option<String>,
    /// `has_more`, when the server gave it.
    pub has_more: Option<bool>,
}

impl Page {
    /// Decode a list response body, whatever its shape (what [`super::SandboxAudit::list`]
    /// does with the bytes it receives).
    ///
    /// ```
    /// use auditship_client::Page;
    ///
    /// let page = Page::from_json(r#"{"data":[{"id":"evt_1"}],"next_cursor":"c2"}"#).unwrap();
    /// assert_eq!(page.events[0].id(), "evt_1");
    /// assert_eq!(page.next_cursor.as_deref(), Some("c2"));
    /// ```
    pub fn from_json(bytes: impl Into<Bytes>) -> Result<Page, Error> {
        decode_page(bytes.into())
    }
}

/// The `what` of an [`Error::Decode`] for an element of a list page that is not an event (see
/// [`Error::is_list_element`]).
pub const LIST_ELEMENT: &str = "list element";

/// Decode a list response: a bare array, or an object holding the array under the first of
/// `data`, `events`, `audit`, `items`, with optional `next_cursor`/`has_more`.
pub(crate) fn decode_page(buf: Bytes) -> Result<Page, Error> {
    let fail = |message: String| Error::Decode {
        what: "list response".into(),
        message,
        raw: Some(buf.clone()),
    };
    let scan = scan_page(&buf).map_err(fail)?;
    let mut page = Page::default();
    let obj = &scan.list;
    page.next_cursor = obj
        .next_cursor
        .and_then(|r| unquote(as_text(r)))
        .map(|c| c.into_owned())
        .filter(|c| !c.is_empty());
    page.has_more = match obj.has_more {
        Some(b"true") => Some(true),
        Some(b"false") => Some(false),
        _ => None,
    };
    let Some(elements) = scan.elements else {
        // Absent and `null` members read as `None` already.
        let empty = [obj.data, obj.events, obj.audit, obj.items]
            .into_iter()
            .all(|r| r.is_none());
        if empty && page.next_cursor.is_none() {
            return Err(fail(
                "object holds no event array under `data`, `events`, `audit` or `items`".into(),
            ));
        }
        return Ok(page);
    };
    page.events.reserve(elements.len());
    for element in elements {
        match element {
            Element::Object(head, text) => {
                let slice = buf.slice_ref(text);
                match event_from_members(&slice, text, head, LIST_ELEMENT) {
                    Ok(event) => page.events.push(event),
                    Err(e) => page.invalid.push(e),
                }
            }
            Element::Invalid(text, why) => {
                page.invalid
                    .push(decode_error(LIST_ELEMENT, why, &buf.slice_ref(text)))
            }
        }
    }
    Ok(page)
}

/// Decode a `get` response: the event, bare or wrapped in `data`/`event`.
pub(crate) fn decode_single(buf: Bytes) -> Result<AuditEvent, Error> {
    decode_event(buf, "event response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_text_from_a_span_is_the_span_whatever_follows_it() {
        let t = "2026-11-25T10:00:00.000001Z";
        let short = format!(r#"{{"inserted_at":"{t}"}}"#);
        let long = format!(r#"{{"inserted_at":"{t}","padding":"{}"}}"#, "x".repeat(64));
        let start = short.find(t).unwrap();
        let a = CursorText::from_span(short.as_bytes(), start, start + t.len()).unwrap();
        let b = CursorText::from_span(long.as_bytes(), start, start + t.len()).unwrap();
        assert_eq!((a.as_str(), b.as_str()), (t, t));
        // The fast copy took bytes past the text; they do not count.
        assert_eq!(a, b);
        assert_eq!(b, CursorText::new(t));
        let long_text = "9".repeat(60);
        let c = CursorText::from_span(long_text.as_bytes(), 2, 50).unwrap();
        assert_eq!(c.as_str(), &long_text[2..50]);
        assert!(CursorText::from_span(short.as_bytes(), 5, 4).is_none());
        assert!(CursorText::from_span(short.as_bytes(), 5, 500).is_none());
    }

    const EV: &str = r#"{"id":"evt_1","resource_id":"sb-1","amount":1.50,"x":{"y":[1e3]},"inserted_at":"2026-11-25T10:00:00.000001Z","timestamp":"2026-11-25T09:59:59Z"}"#;

    #[test]
    fn bare_and_enveloped_events_keep_their_bytes() {
        for frame in [
            EV.to_string(),
            format!(r#"{{"event":{EV}}}"#),
            format!(r#" {{"data":{EV}}}"#),
        ] {
            let ev = AuditEvent::from_json(frame).unwrap();
            assert_eq!(ev.json(), EV);
            assert_eq!(ev.id(), "evt_1");
            assert_eq!(ev.cursor_us(), parse_time("2026-11-25T10:00:00.000001Z"));
            assert_eq!(ev.cursor_text(), Some("2026-11-25T10:00:00.000001Z"));
            assert_eq!(ev.resource_id(), Some("sb-1"));
            assert_eq!(ev.time_us(), parse_time("2026-11-25T09:59:59Z"));
        }
    }

    #[test]
    fn pretty_printed_events_fit_one_line_with_the_same_value() {
        let pretty = "{\n  \"id\": \"e\",\r\n  \"s\": \"a\\nb\"\n}";
        let ev = AuditEvent::from_json(pretty).unwrap();
        assert!(!ev.json().contains('\n'));
        let only_stamp =
            AuditEvent::from_json("{\n\"id\": \"e\",\n \"timestamp\": \"2026-11-25 10:00:00Z\"}").unwrap();
        assert_eq!(only_stamp.cursor_text(), Some("2026-11-25 10:00:00Z"));
        let a: serde_json::Value = serde_json::from_str(pretty).unwrap();
        assert_eq!(ev.to_value().unwrap(), a);
    }

    #[test]
    fn non_events_are_decode_errors_with_the_payload() {
        for bad in [
            "not json{",
            "[1,2]",
            "{\"no_id\":1}",
            "{\"id\":null}",
            "{\"event\":{\"x\":1}}",
            "\"str\"",
        ] {
            match AuditEvent::from_json(bad.to_string()) {
                Err(Error::Decode { raw: Some(raw), .. }) => assert_eq!(raw, bad.as_bytes()),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn numeric_ids_are_kept_as_text() {
        assert_eq!(AuditEvent::from_json(r#"{"id":12}"#).unwrap().id(), "12");
    }

    #[test]
    fn every_list_shape_decodes() {
        let arr = format!("[{EV},{EV}]");
        for body in [
            arr.clone(),
            format!(r#"{{"data":{arr}}}"#),
            format!(r#"{{"events":{arr},"has_more":false}}"#),
            format!(r#"{{"audit":{arr},"next_cursor":null}}"#),
            format!(r#"{{"items":{arr},"next_cursor":"c2","page":{{"page":1,"page_size":20,"total":2}}}}"#),
            format!(r#"{{"data":null,"events":{arr}}}"#),
        ] {
            let page = decode_page(Bytes::from(body.clone())).unwrap();
            assert_eq!(page.events.len(), 2, "{body}");
            assert_eq!(page.events[0].json(), EV);
        }
        let page = decode_page(Bytes::from_static(br#"{"items":[],"next_cursor":"c2"}"#)).unwrap();
        assert_eq!(page.next_cursor.as_deref(), Some("c2"));
        assert!(decode_page(Bytes::from_static(b"{\"foo\":1}")).is_err());
        assert!(decode_page(Bytes::from_static(b"<html>")).is_err());
        let mixed = decode_page(Bytes::from(format!(r#"[{EV},{{"x":1}},3]"#))).unwrap();
        assert_eq!((mixed.events.len(), mixed.invalid.len()), (1, 2));
        // An element that is not JSON is an invalid element, with its bytes; the page's own
        // structure must be whole.
        let bad = decode_page(Bytes::from(format!(
            r#"{{"data":[{EV},{{"id":tru}},{EV}],"has_more":true}}"#
        )))
        .unwrap();
        assert_eq!(
            (bad.events.len(), bad.invalid.len(), bad.has_more),
            (2, 1, Some(true))
        );
        match &bad.invalid[0] {
            Error::Decode { raw: Some(raw), .. } => assert_eq!(&raw[..], br#"{"id":tru}"#),
            other => panic!("{other:?}"),
        }
        for broken in [
            format!(r#"{{"data":[{EV},{EV}"#),
            format!(r#"{{"data":[{EV}}}"#),
            format!(r#"{{"data":[{EV}],}}"#),
            format!(r#"[{EV}] trailing"#),
            format!(r#"{{"data":[{EV}],"next_cursor":"c"#),
        ] {
            assert!(decode_page(Bytes::from(broken.clone())).is_err(), "{broken}");
        }
    }

    /// The fast reader agrees with chrono wherever it answers, and leaves the rest to it.
    #[test]
    fn the_fast_time_reader_agrees_with_chrono() {
        let mut x: u64 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 1900 to 2200.
            let us = (x % 9_467_280_000_000_000) as i64 - 2_208_988_800_000_000;
            let t = DateTime::from_timestamp_micros(us).unwrap();
            for text in [
                t.to_rfc3339_opts(SecondsFormat::Micros, true),
                t.to_rfc3339_opts(SecondsFormat::Millis, false),
                t.to_rfc3339_opts(SecondsFormat::Secs, true),
                t.to_rfc3339_opts(SecondsFormat::Nanos, true),
                t.with_timezone(&chrono::FixedOffset::east_opt(-(5 * 3600 + 1800)).unwrap())
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            ] {
                let chrono_us = DateTime::parse_from_rfc3339(&text).unwrap().timestamp_micros();
                assert_eq!(parse_rfc3339_fast(text.as_bytes()), Some(chrono_us), "{text}");
            }
        }
        for odd in [
            "2026-02-29T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00:60Z",
            "2026-11-25T10:00:00.Z",
            "2026-11-25T10:00:00+2400",
            "2026-11-25T10:00:00+24:00",
            "2026-11-25 10:00:00Z",
            "2026-11-25T10:00:00",
            "2026-13-25T10:00:00Z",
            "+2026-11-25T10:00:00Z",
        ] {
            let fast = parse_rfc3339_fast(odd.as_bytes());
            let chrono_us = DateTime::parse_from_rfc3339(odd)
                .ok()
                .map(|t| t.timestamp_micros());
            assert!(
                fast.is_none() || fast == chrono_us,
                "{odd}: {fast:?} vs {chrono_us:?}"
            );
        }
        assert_eq!(
            parse_rfc3339_fast(b"2024-02-29T23:59:59.999999Z"),
            parse_time("2024-02-29T23:59:59.999999+00:00")
        );
    }

    #[test]
    fn times_round_trip() {
        let us = parse_time("2026-11-25T10:00:00.123456Z").unwrap();
        assert_eq!(format_time(us), "2026-11-25T10:00:00.123456Z");
        assert_eq!(
            parse_time("2026-11-25T11:00:00+01:00"),
            parse_time("2026-11-25T10:00:00Z")
        );
        assert_eq!(
            parse_time("2026-11-25T10:00:00"),
            parse_time("2026-11-25T10:00:00Z")
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}

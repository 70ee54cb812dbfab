//! The `ocsf` transform: an egress-audit event as an OCSF 1.7.0 event of the Network Activity
//! category: **HTTP Activity** (class 4002) when the event has an HTTP `method`, **Network
//! Activity** (class 4001) otherwise (a raw connection).
//!
//! Why 1.7.0: it is the newest version the independent validator of our tests (PyPI
//! `pydantic-ocsf`, which bundles the OCSF schemas) knows, HTTP Activity has a `Patch` activity
//! and `PATCH` method there (1.3.0 had neither: a PATCH request, which sandboxes make, had no
//! valid activity), and its base event carries the `security_control` and `host` profiles
//! this mapping uses. Every output is checked by that validator in `tests/it/ocsf.rs`.
//!
//! `metadata.uid` is the Miosa event id, so a SIEM can drop repeats; a pipeline that redacts
//! `id` with `mode = "hmac-sha256"` before this transform gets the keyed digest there instead
//! (equal ids, equal digests). Nothing is dropped: every source field the table below does not
//! place is copied, with its exact text, under `unmapped`.
//!
//! | Miosa field | OCSF attribute |
//! |---|---|
//! | `timestamp` (else `inserted_at`) | `time` (ms), `metadata.original_time` |
//! | `inserted_at` | `metadata.logged_time` (ms) |
//! | `id` | `metadata.uid` |
//! | `tenant_id` | `metadata.tenant_uid` |
//! | `action` (else `effect`) | `severity_id`, `status_id`, `status_code`, `action_id`, `disposition_id`; for class 4001 also `activity_id` |
//! | `method` | `activity_id` (class 4002), `http_request.http_method` |
//! | `host` | `dst_endpoint.hostname` (or `.ip`) and `.port`, `http_request.url.hostname`/`.port` |
//! | `path` | `http_request.url.path` and `.query_string` |
//! | `status_code` (when not 0) | `http_response.code`, `http_status` |
//! | `bytes_in`, `bytes_out` | `traffic.bytes_in`, `traffic.bytes_out`, `traffic.bytes` |
//! | `duration_ms` | `duration` |
//! | `resource_id` | `src_endpoint.uid` (the sandbox made the call) |
//! | `actor_id` | `actor.user.uid` |
//! | `rule_id` | `firewall_rule.uid` |
//! | `rejected_by` | `status_detail` |
//! | everything else (and a mapped field of an unexpected type) | `unmapped`, verbatim |
//!
//! The mapping is deterministic (no "now"), so the same event always gives the same output.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::Value;

use super::raw::Fields;
use crate::client::parse_time;

/// The OCSF schema version the output follows (stated in `metadata.version`).
pub const OCSF_VERSION: &str = "1.7.0";

/// One event mapped: its OCSF text, and how many of its fields went to `unmapped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The OCSF event, JSON text.
    pub json: Vec<u8>,
    /// Source fields the mapping did not place, copied under `unmapped`.
    pub unmapped_fields: usize,
}

/// What the `ocsf` transform did in one place (the pipeline's `[[transforms]]`, or one sink's),
/// for `/metrics`. Shared between the run's transformers and the metrics endpoint.
#[derive(Debug, Default)]
pub struct OcsfCounters {
    /// Whether a transformer with an `ocsf` step counts here (only those places are reported).
    pub active: AtomicBool,
    /// Events mapped.
    pub mapped: AtomicU64,
    /// Source fields left in `unmapped`, summed over the events mapped.
    pub unmapped_fields: AtomicU64,
    /// Events the mapping could not produce (they go to the dead-letter file with the reason).
    pub failed: AtomicU64,
}

/// A transformer's own tally, added to its [`OcsfCounters`] once per batch (the shared
/// counters are not touched per event).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    pub(super) mapped: u64,
    pub(super) unmapped_fields: u64,
    pub(super) failed: u64,
}

impl Tally {
    /// Add what was counted to `to`, and start again from zero.
    pub(super) fn flush(&mut self, to: &OcsfCounters) {
        if self.mapped + self.failed > 0 {
            to.mapped.fetch_add(self.mapped, Ordering::Relaxed);
            to.unmapped_fields
                .fetch_add(self.unmapped_fields, Ordering::Relaxed);
            to.failed.fetch_add(self.failed, Ordering::Relaxed);
            *self = Tally::default();
        }
    }
}

/// What an `action` means, across the OCSF enums it feeds.
struct Meaning {
    severity: (u8, &'static str),
    status: (u8, &'static str),
    security_action: (u8, &'static str),
    disposition: (u8, &'static str),
    /// Network Activity's activity for an event without an HTTP method.
    network_activity: (u8, &'static str),
    detail: &'static str,
}

fn meaning(action: Option<&str>) -> Meaning {
    match action {
        Some("allow") => Meaning {
            severity: (1, "Informational"),
            status: (1, "Success"),
            security_action: (1, "Allowed"),
            disposition: (1, "Allowed"),
            network_activity: (6, "Traffic"),
            detail: "allowed by the egress policy",
        },
        Some("stub") => Meaning {
            severity: (1, "Informational"),
            status: (1, "Success"),
            security_action: (99, "Other"),
            disposition: (7, "Custom Action"),
            network_activity: (6, "Traffic"),
            detail: "answered by a stub at the egress proxy; not forwarded",
        },
        Some("reject" | "denied" | "deny") => Meaning {
            severity: (3, "Medium"),
            status: (2, "Failure"),
            security_action: (2, "Denied"),
            disposition: (2, "Blocked"),
            network_activity: (5, "Refuse"),
            detail: "rejected by the egress policy",
        },
        Some("error") => Meaning {
            severity: (2, "Low"),
            status: (2, "Failure"),
            security_action: (1, "Allowed"),
            disposition: (1, "Allowed"),
            network_activity: (4, "Fail"),
            detail: "allowed, but the request failed",
        },
        Some("client_cancel") => Meaning {
            severity: (1, "Informational"),
            status: (2, "Failure"),
            security_action: (1, "Allowed"),
            disposition: (1, "Allowed"),
            network_activity: (2, "Close"),
            detail: "cancelled by the client",
        },
        None => Meaning {
            severity: (0, "Unknown"),
            status: (0, "Unknown"),
            security_action: (0, "Unknown"),
            disposition: (0, "Unknown"),
            network_activity: (0, "Unknown"),
            detail: "no action recorded",
        },
        Some(_) => Meaning {
            severity: (99, "Other"),
            status: (99, "Other"),
            security_action: (99, "Other"),
            disposition: (99, "Other"),
            network_activity: (99, "Other"),
            detail: "an action this mapping does not know",
        },
    }
}

fn http_activity(method: &str) -> (u8, &'static str) {
    match method.to_ascii_uppercase().as_str() {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        "PATCH" => (9, "Patch"),
        _ => (99, "Other"),
    }
}

/// Writes one JSON object: keys are trusted literals, values are escaped or raw JSON.
struct Obj<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Obj<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }
    fn int(&mut self, k: &str, v: i64) {
        self.key(k);
        self.out.extend_from_slice(v.to_string().as_bytes());
    }
    fn text(&mut self, k: &str, v: &str) {
        self.key(k);
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, v);
    }
    fn raw(&mut self, k: &str, json: &str) {
        self.key(k);
        self.out.extend_from_slice(json.as_bytes());
    }
    /// A key that comes from the input (so it is escaped); the caller writes the value.
    fn escaped_key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        let _ = serde_json::to_writer(&mut *self.out, k);
        self.out.push(b':');
    }
    /// A nested object under `k`; close it with [`Obj::close`].
    fn object(&mut self, k: &str) -> Obj<'_> {
        self.key(k);
        Obj::open(self.out)
    }
    fn close(self) {
        self.out.push(b'}');
    }
}

/// Map one event (its JSON text) to OCSF (JSON text). `sandbox` is the sandbox the event was
/// tailed for: it stands in for a missing `resource_id`.
///
/// Fails only when the text is not a JSON object or the event has no usable time (`time` is
/// required by OCSF, and inventing one would mislead an investigation). Fields left unmapped
/// keep their exact text under `unmapped`.
pub fn map(raw: &[u8], sandbox: &str) -> Result<Mapped, String> {
    let src: Fields<'_> =
        serde_json::from_slice(raw).map_err(|e| format!("ocsf: the event is not a JSON object: {e}"))?;
    map_from(&src, sandbox, raw.len())
}

/// [`map`] for an event already parsed (a transform before this one changed it): no second
/// parse. Unmapped fields are written from the tree.
pub fn map_value(event: &Value, sandbox: &str) -> Result<Mapped, String> {
    let Value::Object(m) = event else {
        return Err("ocsf: the event is not a JSON object".into());
    };
    let fields: Vec<(&str, &Value)> = m.iter().map(|(k, v)| (k.as_str(), v)).collect();
    map_from(&fields, sandbox, 1024)
}

/// What the mapping reads: an event's top-level fields, in order.
trait Source {
    fn len(&self) -> usize;
    fn find(&self, key: &str) -> Option<usize>;
    fn key(&self, i: usize) -> &str;
    /// Field `i` as a string, when it is one.
    fn text(&self, i: usize) -> Option<Cow<'_, str>>;
    /// Field `i` as an integer, when it is one.
    fn int(&self, i: usize) -> Option<i64>;
    /// Field `i`'s value as JSON.
    fn write(&self, i: usize, out: &mut Vec<u8>);
}

impl Source for Fields<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn find(&self, key: &str) -> Option<usize> {
        Fields::find(self, key)
    }
    fn key(&self, i: usize) -> &str {
        &self.0[i].0
    }
    fn text(&self, i: usize) -> Option<Cow<'_, str>> {
        self.text_at(i)
    }
    fn int(&self, i: usize) -> Option<i64> {
        self.0[i].1.get().parse().ok()
    }
    fn write(&self, i: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0[i].1.get().as_bytes());
    }
}

impl Source for Vec<(&str, &Value)> {
    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    fn find(&self, key: &str) -> Option<usize> {
        self.iter().position(|(k, _)| *k == key)
    }
    fn key(&self, i: usize) -> &str {
        self[i].0
    }
    fn text(&self, i: usize) -> Option<Cow<'_, str>> {
        self[i].1.as_str().map(Cow::Borrowed)
    }
    fn int(&self, i: usize) -> Option<i64> {
        self[i].1.as_i64()
    }
    fn write(&self, i: usize, out: &mut Vec<u8>) {
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(out, self[i].1);
    }
}

fn map_from<S: Source>(src: &S, sandbox: &str, size_hint: usize) -> Result<Mapped, String> {
    let mut taken = vec![false; src.len()];
    let mut take_text = |k: &str| {
        let i = src.find(k)?;
        let t = src.text(i)?;
        taken[i] = true;
        Some(t)
    };
    let timestamp = take_text("timestamp");
    let inserted_at = take_text("inserted_at");
    let id = take_text("id");
    let tenant = take_text("tenant_id");
    let resource_id = take_text("resource_id");
    let action = take_text("action");
    let host = take_text("host");
    let method = take_text("method");
    let rule_id = take_text("rule_id");
    let actor_id = take_text("actor_id");
    let rejected_by = take_text("rejected_by");
    // Without an HTTP request there is nowhere to put the path and the status: they stay.
    let path = if method.is_some() { take_text("path") } else { None };
    let mut take_int = |k: &str| {
        let i = src.find(k)?;
        let n = src.int(i)?;
        taken[i] = true;
        Some(n)
    };
    let status_code = if method.is_some() {
        take_int("status_code")
    } else {
        None
    };
    let duration = take_int("duration_ms");
    let bytes_in = take_int("bytes_in");
    let bytes_out = take_int("bytes_out");
    let effect = src.find("effect").and_then(|i| src.text(i));

    let ts_us = timestamp.as_deref().and_then(parse_time);
    let ins_us = inserted_at.as_deref().and_then(parse_time);
    let Some(time_us) = ts_us.or(ins_us) else {
        return Err(match (timestamp, inserted_at) {
            (None, None) => {
                "ocsf: the event has no `timestamp` or `inserted_at`, and OCSF requires a time".into()
            }
            (t, i) => format!(
                "ocsf: cannot read a time from timestamp {:?} / inserted_at {:?} (RFC 3339 expected)",
                t.unwrap_or_default(),
                i.unwrap_or_default()
            ),
        });
    };
    let ms = |us: i64| us.div_euclid(1_000);
    let resource_id = resource_id.or_else(|| (!sandbox.is_empty()).then_some(Cow::Borrowed(sandbox)));

    // `effect` (allow/deny) stands in for a missing action; it stays in `unmapped` either way.
    let verdict = action.as_deref().or(match effect.as_deref() {
        Some("allow") => Some("allow"),
        Some("deny") => Some("deny"),
        _ => None,
    });
    let m = meaning(verdict);
    let (class_uid, class_name, (activity_id, activity_name)) = match &method {
        Some(method) => (4002u32, "HTTP Activity", http_activity(method)),
        None => (4001u32, "Network Activity", m.network_activity),
    };

    let mut out = Vec::with_capacity(size_hint * 2 + 512);
    let mut o = Obj::open(&mut out);
    o.int("activity_id", i64::from(activity_id));
    o.text("activity_name", activity_name);
    o.int("category_uid", 4);
    o.text("category_name", "Network Activity");
    o.int("class_uid", i64::from(class_uid));
    o.text("class_name", class_name);
    o.int("type_uid", i64::from(class_uid * 100 + u32::from(activity_id)));
    o.text("type_name", &format!("{class_name}: {activity_name}"));
    o.int("severity_id", i64::from(m.severity.0));
    o.text("severity", m.severity.1);
    o.int("time", ms(time_us));
    o.int("status_id", i64::from(m.status.0));
    o.text("status", m.status.1);
    if let Some(a) = &action {
        o.text("status_code", a);
    }
    match &rejected_by {
        Some(by) => o.text("status_detail", &format!("{} ({by})", m.detail)),
        None => o.text("status_detail", m.detail),
    }
    o.int("action_id", i64::from(m.security_action.0));
    o.text("action", m.security_action.1);
    o.int("disposition_id", i64::from(m.disposition.0));
    o.text("disposition", m.disposition.1);
    let what = if method.is_some() {
        "HTTP request"
    } else {
        "connection"
    };
    o.text("message", &format!("Egress {what} {}", m.detail));
    if let Some(d) = duration {
        o.int("duration", d);
    }

    let mut md = o.object("metadata");
    md.text("version", OCSF_VERSION);
    md.raw(
        "product",
        r#"{"vendor_name":"Miosa","name":"Miosa Egress Proxy","feature":{"name":"egress-audit"}}"#,
    );
    // `actor` comes from the host profile; the verdict fields from security_control.
    if actor_id.is_some() {
        md.raw("profiles", r#"["host","security_control"]"#);
    } else {
        md.raw("profiles", r#"["security_control"]"#);
    }
    md.text("log_name", "egress-audit");
    if let Some(id) = &id {
        md.text("uid", id);
    }
    if let Some(t) = timestamp.as_ref().or(inserted_at.as_ref()) {
        md.text("original_time", t);
    }
    if let Some(i) = ins_us {
        md.int("logged_time", ms(i));
    }
    if let Some(t) = &tenant {
        md.text("tenant_uid", t);
    }
    md.close();

    // The sandbox initiated the call: it is the source endpoint.
    if let Some(r) = &resource_id {
        let mut e = o.object("src_endpoint");
        e.text("uid", r);
        e.close();
    }
    let (hostname, ip, port) = match host.as_deref() {
        Some(h) => split_host(h),
        None => (None, None, None),
    };
    if hostname.is_some() || ip.is_some() || port.is_some() {
        let mut e = o.object("dst_endpoint");
        if let Some(h) = &hostname {
            e.text("hostname", h);
        }
        if let Some(ip) = &ip {
            e.text("ip", ip);
        }
        if let Some(p) = port {
            e.int("port", i64::from(p));
        }
        e.close();
    }
    o.raw("connection_info", r#"{"direction_id":2,"direction":"Outbound"}"#);

    if let Some(method) = &method {
        let mut req = o.object("http_request");
        req.text("http_method", &method.to_ascii_uppercase());
        let host_part = hostname.as_ref().or(ip.as_ref());
        // OCSF's url needs a path (or a url_string, which needs a scheme we do not know);
        // without one the host stays in dst_endpoint alone.
        if path.is_some() {
            let mut url = req.object("url");
            if let Some(h) = host_part {
                url.text("hostname", h);
            }
            if let Some(p) = port {
                url.int("port", i64::from(p));
            }
            if let Some(p) = &path {
                let (only_path, query) = match p.split_once('?') {
                    Some((a, q)) => (a, Some(q)),
                    None => (p.as_ref(), None),
                };
                url.text("path", only_path);
                if let Some(q) = query {
                    url.text("query_string", q);
                }
            }
            url.close();
        }
        req.close();
        if let Some(code) = status_code.filter(|c| *c > 0) {
            let mut resp = o.object("http_response");
            resp.int("code", code);
            resp.close();
            o.int("http_status", code);
        }
    }

    if bytes_in.is_some() || bytes_out.is_some() {
        let mut t = o.object("traffic");
        if let Some(b) = bytes_in {
            t.int("bytes_in", b);
        }
        if let Some(b) = bytes_out {
            t.int("bytes_out", b);
        }
        t.int(
            "bytes",
            bytes_in.unwrap_or(0).saturating_add(bytes_out.unwrap_or(0)),
        );
        t.close();
    }
    if let Some(a) = &actor_id {
        let mut actor = o.object("actor");
        let mut user = actor.object("user");
        user.text("uid", a);
        user.close();
        actor.close();
    }
    if let Some(r) = &rule_id {
        let mut rule = o.object("firewall_rule");
        rule.text("uid", r);
        rule.close();
    }
    let unmapped_fields = taken.iter().filter(|t| !**t).count();
    if unmapped_fields > 0 {
        let mut u = o.object("unmapped");
        for (i, t) in taken.iter().enumerate() {
            if !t {
                u.escaped_key(src.key(i));
                src.write(i, u.out);
            }
        }
        u.close();
    }
    o.close();
    Ok(Mapped {
        json: out,
        unmapped_fields,
    })
}

/// `host`, `host:port`, `1.2.3.4:443` or `[::1]:443` → (hostname, ip, port).
fn split_host(h: &str) -> (Option<String>, Option<String>, Option<u16>) {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (h, None),
        }
    } else {
        match h.rsplit_once(':') {
            // One colon: host:port. Several: a bare IPv6 address.
            Some((n, p)) if !n.contains(':') => match p.parse::<u16>() {
                Ok(port) => (n, Some(port)),
                Err(_) => (h, None),
            },
            _ => (h, None),
        }
    };
    if name.parse::<std::net::IpAddr>().is_ok() {
        (None, Some(name.to_string()), port)
    } else {
        (Some(name.to_string()), None, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_into_name_ip_and_port() {
        assert_eq!(
            split_host("api.openai.com"),
            (Some("api.openai.com".into()), None, None)
        );
        assert_eq!(
            split_host("pypi.org:8443"),
            (Some("pypi.org".into()), None, Some(8443))
        );
        assert_eq!(
            split_host("10.0.0.1:80"),
            (None, Some("10.0.0.1".into()), Some(80))
        );
        assert_eq!(split_host("[::1]:443"), (None, Some("::1".into()), Some(443)));
        assert_eq!(split_host("fe80::1"), (None, Some("fe80::1".into()), None));
    }

    use serde_json::{json, Value};

    fn mapped(e: Value) -> Result<Value, String> {
        map(e.to_string().as_bytes(), "sb-1").map(|out| serde_json::from_slice(&out.json).unwrap())
    }

    #[test]
    fn an_event_without_a_time_is_refused_with_the_reason() {
        let e = mapped(json!({"id": "e1", "action": "allow"})).unwrap_err();
        assert!(e.contains("no `timestamp` or `inserted_at`"), "{e}");
        let e = mapped(json!({"id": "e1", "timestamp": "yesterday"})).unwrap_err();
        assert!(e.contains("cannot read a time"), "{e}");
        assert!(map(b"[1]", "sb").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn unmapped_fields_keep_their_exact_text_and_escaped_keys() {
        let raw = br#"{"id":"e\"1","timestamp":"2026-11-25T10:00:00Z","cost":1.50,"we\"ird":{"a":[1e3]},"id2":"caf\u00e9","id":"e2"}"#;
        let mapped = map(raw, "sb").unwrap();
        assert_eq!(mapped.unmapped_fields, 3, "cost, we\"ird, id2");
        let text = String::from_utf8(mapped.json).unwrap();
        let out: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            out["metadata"]["uid"],
            json!("e2"),
            "a repeated key: the last wins"
        );
        assert_eq!(
            out["src_endpoint"]["uid"],
            json!("sb"),
            "the tailed sandbox stands in"
        );
        assert!(
            text.contains(r#""unmapped":{"cost":1.50,"we\"ird":{"a":[1e3]},"id2":"caf\u00e9"}"#),
            "{text}"
        );
    }

    #[test]
    fn mapped_fields_of_unexpected_types_stay_unmapped() {
        let e = json!({"id": "e1", "timestamp": "2026-11-25T10:00:00.000001Z", "method": "GET", "status_code": "200", "host": 7});
        let out = mapped(e).unwrap();
        assert_eq!(out["unmapped"]["status_code"], json!("200"));
        assert_eq!(out["unmapped"]["host"], json!(7));
        assert!(out.get("http_response").is_none());
        assert_eq!(out["time"], json!(1_795_600_800_000i64));
    }
}

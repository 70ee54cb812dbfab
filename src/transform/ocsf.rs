//! The `ocsf` transform: an egress-audit event as an OCSF 1.3.0 event of the Network Activity
//! category: **HTTP Activity** (class 4002) when the event has an HTTP `method`, **Network
//! Activity** (class 4001) otherwise (a raw connection).
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

use serde_json::{json, Map, Value};

use crate::client::parse_time;

/// The OCSF schema version the output follows (stated in `metadata.version`).
pub const OCSF_VERSION: &str = "1.3.0";

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

/// Map one event. Fails only when the event has no usable time (`time` is required by OCSF and
/// inventing one would mislead an investigation).
/// `sandbox` is the sandbox the event was tailed for: it stands in for a missing `resource_id`.
pub fn map(event: Map<String, Value>, sandbox: &str) -> Result<Value, String> {
    let mut src = event;
    // Take a mapped field only when it has the expected type; otherwise it stays for `unmapped`.
    fn take_str(m: &mut Map<String, Value>, k: &str) -> Option<String> {
        match m.get(k) {
            Some(Value::String(_)) => match m.shift_remove(k) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
    fn take_int(m: &mut Map<String, Value>, k: &str) -> Option<i64> {
        let n = m.get(k).and_then(Value::as_i64)?;
        m.shift_remove(k);
        Some(n)
    }

    let timestamp = take_str(&mut src, "timestamp");
    let inserted_at = take_str(&mut src, "inserted_at");
    let ts_us = timestamp.as_deref().and_then(parse_time);
    let ins_us = inserted_at.as_deref().and_then(parse_time);
    let Some(time_us) = ts_us.or(ins_us) else {
        // Put the strings back so the dead letter shows what there was.
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

    let id = take_str(&mut src, "id");
    let tenant = take_str(&mut src, "tenant_id");
    let resource_id =
        take_str(&mut src, "resource_id").or_else(|| (!sandbox.is_empty()).then(|| sandbox.to_string()));
    let action = take_str(&mut src, "action");
    let effect = src.get("effect").and_then(Value::as_str).map(str::to_string);
    let host = take_str(&mut src, "host");
    let method = take_str(&mut src, "method");
    let path = take_str(&mut src, "path");
    let status_code = take_int(&mut src, "status_code");
    let duration = take_int(&mut src, "duration_ms");
    let bytes_in = take_int(&mut src, "bytes_in");
    let bytes_out = take_int(&mut src, "bytes_out");
    let rule_id = take_str(&mut src, "rule_id");
    let actor_id = take_str(&mut src, "actor_id");
    let rejected_by = take_str(&mut src, "rejected_by");

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

    let mut out = Map::new();
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity_name));
    out.insert("category_uid".into(), json!(4));
    out.insert("category_name".into(), json!("Network Activity"));
    out.insert("class_uid".into(), json!(class_uid));
    out.insert("class_name".into(), json!(class_name));
    out.insert("type_uid".into(), json!(class_uid * 100 + u32::from(activity_id)));
    out.insert(
        "type_name".into(),
        json!(format!("{class_name}: {activity_name}")),
    );
    out.insert("severity_id".into(), json!(m.severity.0));
    out.insert("severity".into(), json!(m.severity.1));
    out.insert("time".into(), json!(ms(time_us)));
    out.insert("status_id".into(), json!(m.status.0));
    out.insert("status".into(), json!(m.status.1));
    if let Some(a) = &action {
        out.insert("status_code".into(), json!(a));
    }
    let detail = match &rejected_by {
        Some(by) => format!("{} ({by})", m.detail),
        None => m.detail.to_string(),
    };
    out.insert("status_detail".into(), json!(detail));
    out.insert("action_id".into(), json!(m.security_action.0));
    out.insert("action".into(), json!(m.security_action.1));
    out.insert("disposition_id".into(), json!(m.disposition.0));
    out.insert("disposition".into(), json!(m.disposition.1));
    out.insert(
        "message".into(),
        json!(format!(
            "Egress {} {}",
            if method.is_some() {
                "HTTP request"
            } else {
                "connection"
            },
            m.detail
        )),
    );
    if let Some(d) = duration {
        out.insert("duration".into(), json!(d));
    }

    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert(
        "product".into(),
        json!({"vendor_name": "Miosa", "name": "Miosa Egress Proxy", "feature": {"name": "egress-audit"}}),
    );
    metadata.insert("profiles".into(), json!(["security_control"]));
    metadata.insert("log_name".into(), json!("egress-audit"));
    if let Some(id) = id {
        metadata.insert("uid".into(), json!(id));
    }
    if let Some(t) = &timestamp {
        metadata.insert("original_time".into(), json!(t));
    } else if let Some(i) = &inserted_at {
        metadata.insert("original_time".into(), json!(i));
    }
    if let Some(i) = ins_us {
        metadata.insert("logged_time".into(), json!(ms(i)));
    }
    if let Some(t) = tenant {
        metadata.insert("tenant_uid".into(), json!(t));
    }
    out.insert("metadata".into(), Value::Object(metadata));

    // The sandbox initiated the call: it is the source endpoint.
    let mut src_endpoint = Map::new();
    if let Some(r) = &resource_id {
        src_endpoint.insert("uid".into(), json!(r));
    }
    let (hostname, ip, port) = match host.as_deref() {
        Some(h) => split_host(h),
        None => (None, None, None),
    };
    let mut dst = Map::new();
    if let Some(h) = &hostname {
        dst.insert("hostname".into(), json!(h));
    }
    if let Some(ip) = &ip {
        dst.insert("ip".into(), json!(ip));
    }
    if let Some(p) = port {
        dst.insert("port".into(), json!(p));
    }
    if !src_endpoint.is_empty() {
        out.insert("src_endpoint".into(), Value::Object(src_endpoint));
    }
    if !dst.is_empty() {
        out.insert("dst_endpoint".into(), Value::Object(dst));
    }
    out.insert(
        "connection_info".into(),
        json!({"direction_id": 2, "direction": "Outbound"}),
    );

    if let Some(method) = &method {
        let mut url = Map::new();
        if let Some(h) = hostname.as_ref().or(ip.as_ref()) {
            url.insert("hostname".into(), json!(h));
        }
        if let Some(p) = port {
            url.insert("port".into(), json!(p));
        }
        if let Some(p) = &path {
            let (only_path, query) = match p.split_once('?') {
                Some((a, q)) => (a, Some(q)),
                None => (p.as_str(), None),
            };
            url.insert("path".into(), json!(only_path));
            if let Some(q) = query {
                url.insert("query_string".into(), json!(q));
            }
        }
        let mut request = Map::new();
        request.insert("http_method".into(), json!(method.to_ascii_uppercase()));
        if !url.is_empty() {
            request.insert("url".into(), Value::Object(url));
        }
        out.insert("http_request".into(), Value::Object(request));
        if let Some(code) = status_code.filter(|c| *c > 0) {
            out.insert("http_response".into(), json!({"code": code}));
            out.insert("http_status".into(), json!(code));
        }
    } else if let Some(p) = path {
        // No HTTP request to hold it: keep it readable.
        src.insert("path".into(), json!(p));
    }
    if method.is_none() {
        if let Some(code) = status_code {
            src.insert("status_code".into(), json!(code));
        }
    }

    if bytes_in.is_some() || bytes_out.is_some() {
        let mut traffic = Map::new();
        if let Some(b) = bytes_in {
            traffic.insert("bytes_in".into(), json!(b));
        }
        if let Some(b) = bytes_out {
            traffic.insert("bytes_out".into(), json!(b));
        }
        traffic.insert(
            "bytes".into(),
            json!(bytes_in.unwrap_or(0) + bytes_out.unwrap_or(0)),
        );
        out.insert("traffic".into(), Value::Object(traffic));
    }
    if let Some(a) = actor_id {
        out.insert("actor".into(), json!({"user": {"uid": a}}));
    }
    if let Some(r) = rule_id {
        out.insert("firewall_rule".into(), json!({"uid": r}));
    }
    if !src.is_empty() {
        out.insert("unmapped".into(), Value::Object(src));
    }
    Ok(Value::Object(out))
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

    #[test]
    fn an_event_without_a_time_is_refused_with_the_reason() {
        let e = json!({"id": "e1", "action": "allow"});
        let Value::Object(m) = e else { unreachable!() };
        assert!(map(m, "sb-1")
            .unwrap_err()
            .contains("no `timestamp` or `inserted_at`"));
        let e = json!({"id": "e1", "timestamp": "yesterday"});
        let Value::Object(m) = e else { unreachable!() };
        assert!(map(m, "sb-1").unwrap_err().contains("cannot read a time"));
    }

    #[test]
    fn mapped_fields_of_unexpected_types_stay_unmapped() {
        let e = json!({"id": "e1", "timestamp": "2026-11-25T10:00:00.000001Z", "method": "GET", "status_code": "200", "host": 7});
        let Value::Object(m) = e else { unreachable!() };
        let out = map(m, "sb-1").unwrap();
        assert_eq!(out["unmapped"]["status_code"], json!("200"));
        assert_eq!(out["unmapped"]["host"], json!(7));
        assert!(out.get("http_response").is_none());
        assert_eq!(out["time"], json!(1_795_600_800_000i64));
    }
}

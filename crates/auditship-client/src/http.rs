//! What every HTTP response of the API is read for: its request id, and the error its status
//! and body say.

use std::time::Duration;

use crate::Error;

/// The `X-Request-ID` of a response, worth logging with every error.
pub(crate) fn request_id(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The typed error for an HTTP status of the REST API or the socket upgrade.
pub(crate) fn status_error(
    status: u16,
    message: String,
    retry_after: Option<Duration>,
    request_id: Option<String>,
    what: &str,
) -> Error {
    match status {
        401 | 403 => Error::Unauthorized {
            status,
            message,
            request_id,
        },
        404 => Error::NotFound {
            what: what.to_string(),
            request_id,
        },
        429 => Error::RateLimited {
            retry_after,
            request_id,
        },
        500..=599 => Error::Server {
            status,
            message,
            retry_after,
            request_id,
        },
        _ => Error::Rejected {
            status,
            message,
            request_id,
        },
    }
}

/// Percent-encode one path segment (ids are opaque and may hold `/`).
pub(crate) fn encode_segment(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// Read a message and a `retry_after` out of any error body shape the API uses.
pub(crate) fn error_body(body: &[u8]) -> (String, Option<Duration>) {
    let text = || {
        let s = String::from_utf8_lossy(body);
        let s = s.trim();
        if s.is_empty() {
            "no message".to_string()
        } else {
            s.chars().take(200).collect()
        }
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (text(), None);
    };
    let secs = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)))
    };
    let mut retry = secs(v.get("retry_after"));
    let message = match v.get("error") {
        Some(serde_json::Value::Object(e)) => {
            retry = retry.or_else(|| secs(e.get("retry_after")));
            let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("no message");
            match e.get("code").and_then(|c| c.as_str()) {
                Some(code) => format!("{code}: {msg}"),
                None => msg.to_string(),
            }
        }
        Some(serde_json::Value::String(msg)) => match v.get("code").and_then(|c| c.as_str()) {
            Some(code) => format!("{code}: {msg}"),
            None => msg.clone(),
        },
        _ => match (v.get("message"), v.get("errors")) {
            (Some(serde_json::Value::String(m)), _) => m.clone(),
            (_, Some(serde_json::Value::Array(errs))) => errs
                .iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join("; "),
            _ => text(),
        },
    };
    (message, retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backoff, Filters};

    #[test]
    fn error_bodies_of_every_shape() {
        let (m, r) = error_body(
            br#"{"error":{"code":"rate","message":"slow down","request_id":"r1","retry_after":2}}"#,
        );
        assert_eq!((m.as_str(), r), ("rate: slow down", Some(Duration::from_secs(2))));
        assert_eq!(error_body(br#"{"error":"nope","code":"c"}"#).0, "c: nope");
        assert_eq!(
            error_body(br#"{"message":"m","retry_after":"1.5"}"#),
            ("m".into(), Some(Duration::from_millis(1500)))
        );
        assert_eq!(error_body(br#"{"errors":["a","b"]}"#).0, "a; b");
        assert_eq!(error_body(b"Bad Gateway").0, "Bad Gateway");
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
    }

    #[test]
    fn filters_become_query_parameters() {
        let f = Filters {
            action: Some("reject".into()),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            f.query(),
            vec![("action", "reject".to_string()), ("limit", "5".to_string())]
        );
        assert_eq!(encode_segment("sb/gamma x"), "sb%2Fgamma%20x");
    }
}

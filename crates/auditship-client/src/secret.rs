//! The API key, and the redaction that keeps it out of every log line, error and file.

use std::fmt;
use std::sync::{Arc, RwLock};

/// Every key this process has seen, so that any text bound for a log can be scrubbed of all of
/// them ([`redact_all`]) without knowing which pipeline it came from.
static KNOWN_KEYS: RwLock<Vec<Arc<str>>> = RwLock::new(Vec::new());

/// A Miosa API key. `Debug` and `Display` print `***`; only [`ApiKey::expose`] gives the text,
/// and it is called in exactly two places: the `Authorization` header and the socket URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wrap a key. Surrounding whitespace (a trailing newline in a key file) is removed.
    pub fn new(key: impl AsRef<str>) -> Self {
        let key: Arc<str> = key.as_ref().trim().into();
        if key.len() >= 4 {
            let mut known = KNOWN_KEYS.write().unwrap_or_else(|e| e.into_inner());
            if !known.iter().any(|k| **k == *key) {
                known.push(key.clone());
            }
        }
        ApiKey(key)
    }

    /// The key's text. Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the key is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Remove this key, and any `token=` query value, from `text`.
    pub fn redact(&self, text: &str) -> String {
        let text = if self.0.len() >= 4 {
            text.replace(&*self.0, "***")
        } else {
            text.to_string()
        };
        redact_tokens(&text)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Remember a secret that is not an API key (a Kafka SASL password, say) so that
/// [`redact_all`] removes it from every log line too. Values shorter than 4 characters are not
/// remembered: replacing them would mangle ordinary text.
pub fn remember_secret(secret: &str) {
    let secret = secret.trim();
    if secret.len() < 4 {
        return;
    }
    let mut known = KNOWN_KEYS.write().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|k| **k == *secret) {
        known.push(Arc::from(secret));
    }
}

/// Remove every key this process knows, and every `token=`/`Bearer` value, from `text`. The log
/// writer runs every line through this: a dependency that logs a request URL at trace level
/// cannot leak the key.
pub fn redact_all(text: &str) -> String {
    let known = KNOWN_KEYS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = redact_tokens(text);
    for key in known.iter() {
        if out.contains(&**key) {
            out = out.replace(&**key, "***");
        }
    }
    out
}

/// Replace the value of every `token=` query parameter and every `Bearer` credential in `text`,
/// whatever their case (`TOKEN=`, `bearer `): a proxy or a library may spell them either way.
pub fn redact_tokens(text: &str) -> String {
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` hold in `text`.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at_in_text = 0;
    loop {
        let rest = &lower[at_in_text..];
        let token = rest.find("token=").map(|i| (i, "token=".len()));
        let bearer = rest.find("bearer ").map(|i| (i, "bearer ".len()));
        let next = match (token, bearer) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((at, len)) = next else {
            out.push_str(&text[at_in_text..]);
            return out;
        };
        let value_at = at_in_text + at + len;
        out.push_str(&text[at_in_text..value_at]);
        let value = &text[value_at..];
        let end = value
            .find(|c: char| matches!(c, '&' | '"' | '\'' | ')' | ',' | ';') || c.is_whitespace())
            .unwrap_or(value.len());
        if end > 0 {
            out.push_str("***");
        }
        at_in_text = value_at + end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_never_formats() {
        let key = ApiKey::new("msk_live_supersecret\n");
        assert_eq!(key.expose(), "msk_live_supersecret");
        assert_eq!(format!("{key} {key:?}"), "*** ApiKey(***)");
    }

    #[test]
    fn redact_all_knows_every_key_made() {
        let _key = ApiKey::new("msk_p_registered_elsewhere");
        assert_eq!(redact_all("x msk_p_registered_elsewhere y"), "x *** y");
    }

    #[test]
    fn redacts_key_and_token_parameters() {
        let key = ApiKey::new("msk_u_abc123");
        let s = key.redact("ws://h/x?a=1&token=msk_u_abc123&b=2 and Bearer zzz, key msk_u_abc123");
        assert_eq!(s, "ws://h/x?a=1&token=***&b=2 and Bearer ***, key ***");
        assert_eq!(redact_tokens("?token=abc"), "?token=***");
        assert_eq!(redact_tokens("no secrets"), "no secrets");
    }

    #[test]
    fn token_and_bearer_are_found_in_any_case() {
        assert_eq!(
            redact_tokens("GET /x?TOKEN=abc&Token=def authorization: bearer ghi BEARER jkl é token=mno"),
            "GET /x?TOKEN=***&Token=*** authorization: bearer *** BEARER *** é token=***"
        );
    }
}

//! The `redact` transform: named fields and secret-looking text, removed, masked, or replaced by a
//! keyed HMAC so that equal values still correlate without being readable.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::path::FieldPath;

/// How a value (or a matched piece of text) is replaced.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RedactMode {
    /// Fields are deleted; matched text is cut out.
    Remove,
    /// Replaced by the `mask` text (default `***`).
    #[default]
    Mask,
    /// Replaced by `hmac-sha256:<64 hex digits>` of the value under a secret key: equal values
    /// give equal digests, so events still correlate, and without the key nothing is readable.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

/// The HMAC key: never printed.
#[derive(Clone)]
pub struct HmacKey(Arc<[u8]>);

impl HmacKey {
    /// Wrap key bytes.
    pub fn new(bytes: &[u8]) -> Self {
        HmacKey(Arc::from(bytes))
    }

    /// The key's bytes (for computing a MAC; never print them).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(***)")
    }
}

/// Built-in patterns for `secrets = true`. A pattern with a group named `secret` replaces only
/// that group (the `token=` before a token stays readable); otherwise the whole match.
pub const SECRET_PATTERNS: &[&str] = &[
    // Miosa API keys.
    r"\bmsk_[A-Za-z0-9_]{6,}",
    // Authorization header values.
    r"(?i)\b(?:bearer|basic|token)\s+(?P<secret>[A-Za-z0-9\-._~+/]{8,}=*)",
    // JSON Web Tokens.
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    // AWS access key ids.
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    // GitHub, Slack, Stripe/OpenAI-style and Google keys.
    r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"\b(?:sk|rk|pk)[-_](?:live[-_]|test[-_]|proj-)?[A-Za-z0-9_-]{16,}",
    r"\bAIza[0-9A-Za-z_-]{35}",
    // Credentials in query strings and key=value text.
    r"(?i)(?:^|[?&;\s])(?:access_token|token|api[_-]?key|apikey|key|secret|password|passwd|pwd|sig|signature|auth)=(?P<secret>[^&\s#]+)",
    r#"(?i)\b(?:password|passwd|secret|api[_-]?key|token)\s*[:=]\s*"?(?P<secret>[^\s&"',;]{4,})"#,
    // PEM private keys.
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    // user:password@ in URLs.
    r"://[^/\s:@]+:(?P<secret>[^/\s@]+)@",
];

/// A compiled `redact`.
#[derive(Clone, Debug)]
pub struct Redact {
    fields: Vec<FieldPath>,
    mode: RedactMode,
    mask: String,
    key: Option<HmacKey>,
    patterns: Vec<Regex>,
    /// One pass over a string decides whether any pattern can match it at all (all patterns as
    /// one alternation: a single lazy-DFA scan, far cheaper than a set's per-pattern report).
    screen: Option<Regex>,
}

impl Redact {
    /// Build from checked parts. `key` must be present for [`RedactMode::HmacSha256`] (the
    /// caller reports a missing one with the fix).
    pub fn new(
        fields: Vec<FieldPath>,
        mode: RedactMode,
        mask: String,
        key: Option<HmacKey>,
        patterns: Vec<String>,
    ) -> Result<Self, String> {
        let compiled = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| format!("pattern {p:?} does not compile: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let screen = if compiled.is_empty() {
            None
        } else {
            let alternation = patterns
                .iter()
                .map(|p| {
                    let p = p.replace("(?P<secret>", "(?:");
                    // The built-in patterns put every \b next to an ASCII word character, where
                    // an ASCII boundary holds whenever a Unicode one does: the screen stays a
                    // superset and runs on the fast DFA. User patterns are screened as written.
                    if SECRET_PATTERNS
                        .iter()
                        .any(|b| b.replace("(?P<secret>", "(?:") == p)
                    {
                        format!("(?:{})", p.replace(r"\b", r"(?-u:\b)"))
                    } else {
                        format!("(?:{p})")
                    }
                })
                .collect::<Vec<_>>()
                .join("|");
            Some(Regex::new(&alternation).map_err(|e| format!("patterns do not compile together: {e}"))?)
        };
        Ok(Redact {
            fields,
            mode,
            mask,
            key,
            patterns: compiled,
            screen,
        })
    }

    /// Whether this is an HMAC redaction without its key (loaded only to validate): running it
    /// would mask instead, so a pipeline refuses to start with it.
    pub fn lacks_key(&self) -> bool {
        self.mode == RedactMode::HmacSha256 && self.key.is_none()
    }

    /// Redact `event` in place. Returns whether anything changed.
    pub fn apply(&self, event: &mut Value) -> bool {
        let mut changed = false;
        for f in &self.fields {
            match self.mode {
                RedactMode::Remove => changed |= f.remove(event).is_some(),
                _ => {
                    if let Some(v) = f.get_mut(event) {
                        if !v.is_null() {
                            *v = Value::String(self.replacement(v));
                            changed = true;
                        }
                    }
                }
            }
        }
        if self.screen.is_some() {
            changed |= self.scrub(event);
        }
        changed
    }

    fn replacement(&self, v: &Value) -> String {
        match v {
            Value::String(s) => self.replace_text(s),
            other => self.replace_text(&other.to_string()),
        }
    }

    fn replace_text(&self, text: &str) -> String {
        match (self.mode, &self.key) {
            (RedactMode::HmacSha256, Some(key)) => {
                // A key of any length is valid for HMAC.
                let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0) {
                    Ok(m) => m,
                    Err(_) => return self.mask.clone(),
                };
                mac.update(text.as_bytes());
                let digest = mac.finalize().into_bytes();
                let mut out = String::with_capacity(12 + 64);
                out.push_str("hmac-sha256:");
                for b in digest.iter() {
                    out.push(char::from(HEX[(b >> 4) as usize]));
                    out.push(char::from(HEX[(b & 15) as usize]));
                }
                out
            }
            (RedactMode::Remove, _) => String::new(),
            // Mask, and HMAC without a key (only when validating; a run refuses to start).
            _ => self.mask.clone(),
        }
    }

    /// Replace pattern matches inside every string of `v` (keys are left alone).
    fn scrub(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => match self.scrub_text(s) {
                Some(clean) => {
                    *s = clean;
                    true
                }
                None => false,
            },
            Value::Array(items) => items.iter_mut().fold(false, |c, i| self.scrub(i) | c),
            Value::Object(m) => m.values_mut().fold(false, |c, i| self.scrub(i) | c),
            _ => false,
        }
    }

    fn scrub_text(&self, text: &str) -> Option<String> {
        if !self.screen.as_ref()?.is_match(text) {
            return None;
        }
        let mut out = text.to_string();
        for re in &self.patterns {
            let mut next = String::with_capacity(out.len());
            let mut last = 0;
            for caps in re.captures_iter(&out) {
                let Some(whole) = caps.get(0) else { continue };
                let target = caps.name("secret").unwrap_or(whole);
                next.push_str(&out[last..target.start()]);
                next.push_str(&self.replace_text(target.as_str()));
                last = target.end();
            }
            next.push_str(&out[last..]);
            out = next;
        }
        Some(out)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redact(fields: &[&str], mode: RedactMode, patterns: &[&str]) -> Redact {
        Redact::new(
            fields.iter().map(|f| FieldPath::parse(f).unwrap()).collect(),
            mode,
            "***".into(),
            Some(HmacKey::new(b"k1")),
            patterns.iter().map(|p| p.to_string()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn remove_mask_and_hmac_fields() {
        let e = json!({"path": "/a?q=1", "metadata": {"authorization": "Bearer abc", "n": 5}, "host": "h"});
        let mut v = e.clone();
        assert!(redact(&["metadata.authorization", "path"], RedactMode::Remove, &[]).apply(&mut v));
        assert_eq!(v, json!({"metadata": {"n": 5}, "host": "h"}));

        let mut v = e.clone();
        redact(
            &["metadata.authorization", "metadata.n", "nope"],
            RedactMode::Mask,
            &[],
        )
        .apply(&mut v);
        assert_eq!(v["metadata"], json!({"authorization": "***", "n": "***"}));

        let mut a = e.clone();
        let mut b = json!({"path": "/a?q=1", "other": 1});
        let r = redact(&["path"], RedactMode::HmacSha256, &[]);
        r.apply(&mut a);
        r.apply(&mut b);
        let digest = a["path"].as_str().unwrap();
        assert!(
            digest.starts_with("hmac-sha256:") && digest.len() == 12 + 64,
            "{digest}"
        );
        assert_eq!(a["path"], b["path"], "equal values correlate");
        let mut c = json!({"path": "/b"});
        r.apply(&mut c);
        assert_ne!(a["path"], c["path"]);
        // A known vector: HMAC-SHA256(key "k1", "/a?q=1"), checked with openssl.
        assert_eq!(digest, "hmac-sha256:".to_string() + &hmac_hex(b"k1", b"/a?q=1"));
    }

    fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-hmac"])
            .arg(std::str::from_utf8(key).unwrap())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(msg)?;
                c.wait_with_output()
            })
            .expect("openssl");
        let text = String::from_utf8(out.stdout).unwrap();
        text.trim().rsplit(' ').next().unwrap().to_string()
    }

    #[test]
    fn builtin_patterns_catch_secret_looking_text_everywhere() {
        let r = redact(&[], RedactMode::Mask, SECRET_PATTERNS);
        let mut v = json!({
            "path": "/v1/x?token=abc123secret&page=2",
            "metadata": {
                "authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
                "note": "used key msk_live_4f9a8b7c6d5e and AKIAIOSFODNN7EXAMPLE",
                "list": ["ghp_abcdefghijklmnopqrstuvwxyz0123456789", "plain text"],
                "url": "https://bob:hunter22@example.com/x"
            },
            "status_code": 200
        });
        assert!(r.apply(&mut v));
        let text = v.to_string();
        for secret in [
            "abc123secret",
            "eyJhbGci",
            "msk_live_4f9a",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_abc",
            "hunter22",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(
            v["path"], "/v1/x?token=***&page=2",
            "only the secret group is replaced"
        );
        assert_eq!(v["metadata"]["list"][1], "plain text");
        assert_eq!(v["metadata"]["url"], "https://bob:***@example.com/x");
        let mut clean = json!({"host": "pypi.org", "path": "/simple/requests/"});
        assert!(!r.apply(&mut clean), "nothing secret-looking: untouched");
    }

    #[test]
    fn user_patterns_with_hmac_replace_the_match() {
        let r = redact(&[], RedactMode::HmacSha256, &[r"card=(?P<secret>\d{16})"]);
        let mut v = json!({"path": "/pay?card=4111111111111111"});
        r.apply(&mut v);
        let p = v["path"].as_str().unwrap();
        assert!(p.starts_with("/pay?card=hmac-sha256:"), "{p}");
        assert!(!p.contains("4111"));
    }
}

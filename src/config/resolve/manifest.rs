//! `[manifest]`: the HMAC key of the entries, and the Ed25519 key and period of the signed
//! digests. Keys are only ever read from the environment or a file, never from the pipeline
//! file itself, and what they resolve to is scrubbed from every log line.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::manifest::{DigestSettings, DigestSigningKey, KeyError};

/// The shortest and longest digest period accepted, in ms: a second (for tests and tight
/// evidence windows) to a day (a digest period is what an attacker may cut unnoticed before the
/// horizon reaches it).
const DIGEST_INTERVAL_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;

impl Resolver<'_> {
    /// `[manifest] hmac_key`: only as `${VAR}`.
    pub(super) fn manifest_key(&mut self, file: &PipelineFile) -> Option<HmacKey> {
        let manifest_key = match &file.manifest.hmac_key {
            None => None,
            Some(text) if !text.get_ref().contains("${") => {
                self.err(
                    text.span(),
                    "manifest.hmac_key must name an environment variable, e.g. hmac_key = \"${AUDITSHIP_MANIFEST_KEY}\"; the key itself never goes in the pipeline file".into(),
                );
                None
            }
            Some(text) => match interpolate(text.get_ref()) {
                Ok(v) => {
                    crate::secret::remember_secret(&v);
                    if v.len() < 16 {
                        self.warnings.push(format!(
                            "{}: manifest.hmac_key is shorter than 16 bytes; use at least 32 random bytes",
                            self.path.display()
                        ));
                    }
                    Some(crate::transform::HmacKey::new(v.as_bytes()))
                }
                Err(m) if self.mode.offline() && self.mode != LoadMode::Verify => {
                    self.warnings.push(format!(
                        "{}: manifest.hmac_key: {m} (needed to run)",
                        self.path.display()
                    ));
                    None
                }
                Err(m) => {
                    self.err(
                        text.span(),
                        format!("manifest.hmac_key: {m}; export it (at least 32 random bytes), or remove hmac_key to keep unsigned manifests"),
                    );
                    None
                }
            },
        };
        manifest_key
    }

    /// `[manifest] signing_key_file` / `signing_key` and `digest_interval_ms`.
    pub(super) fn digests(&mut self, file: &PipelineFile) -> Option<DigestSettings> {
        let m = &file.manifest;
        if !DIGEST_INTERVAL_MS.contains(&m.digest_interval_ms) {
            self.err_at(
                &[Step::key("manifest"), Step::key("digest_interval_ms")],
                format!(
                    "manifest.digest_interval_ms = {}: must be between {} (a second) and {} (a day); the default is an hour",
                    m.digest_interval_ms,
                    DIGEST_INTERVAL_MS.start(),
                    DIGEST_INTERVAL_MS.end()
                ),
            );
        }
        let key = match (&m.signing_key_file, &m.signing_key) {
            (None, None) => return None,
            (Some(_), Some(text)) => {
                self.err(
                    text.span(),
                    "manifest: both signing_key_file and signing_key are set; keep one".into(),
                );
                return None;
            }
            (Some(path), None) => self.signing_key_file(path),
            (None, Some(text)) => self.signing_key_env(text),
        }?;
        if !m.enabled {
            self.err_at(
                &[Step::key("manifest"), Step::key("enabled")],
                "manifest: a signing key is set but manifests are off (enabled = false); digests sign the manifests: turn them on, or remove the signing key".into(),
            );
            return None;
        }
        Some(DigestSettings {
            key: Arc::new(key),
            interval: Duration::from_millis(m.digest_interval_ms),
        })
    }

    fn signing_key_file(&mut self, path: &toml::Spanned<String>) -> Option<DigestSigningKey> {
        let p = match interpolate(path.get_ref()) {
            Ok(p) => p,
            Err(m) => return self.missing_key(path.span(), format!("manifest.signing_key_file: {m}")),
        };
        match DigestSigningKey::from_file(std::path::Path::new(&p)) {
            Ok(k) => Some(k),
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => self.missing_key(
                path.span(),
                format!("manifest.signing_key_file {p:?} does not exist; write a key pair with `auditship keygen --out PREFIX`"),
            ),
            Err(e) => {
                self.err(path.span(), format!("manifest.signing_key_file: {e}"));
                None
            }
        }
    }

    fn signing_key_env(&mut self, text: &toml::Spanned<String>) -> Option<DigestSigningKey> {
        if !text.get_ref().contains("${") {
            self.err(
                text.span(),
                "manifest.signing_key must name an environment variable holding the PEM text, e.g. signing_key = \"${AUDITSHIP_SIGNING_KEY}\" (or use signing_key_file); the key itself never goes in the pipeline file".into(),
            );
            return None;
        }
        match interpolate(text.get_ref()) {
            Ok(pem) => {
                // The whole text and each line of it: a log line could hold either.
                crate::secret::remember_secret(&pem);
                for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                    crate::secret::remember_secret(line);
                }
                match DigestSigningKey::from_pem(&pem, "manifest.signing_key") {
                    Ok(k) => Some(k),
                    Err(e) => {
                        self.err(text.span(), format!("{e}; it must hold a PKCS#8 Ed25519 private key in PEM, as `auditship keygen` writes"));
                        None
                    }
                }
            }
            Err(m) => self.missing_key(text.span(), format!("manifest.signing_key: {m}")),
        }
    }

    /// A signing key that is not there: a warning when only validating or verifying (the key
    /// lives where the pipeline runs), an error when running.
    fn missing_key(&mut self, span: Range<usize>, message: String) -> Option<DigestSigningKey> {
        if self.mode.offline() {
            self.warnings
                .push(format!("{}: {message} (needed to run)", self.path.display()));
        } else {
            self.err(span, message);
        }
        None
    }
}

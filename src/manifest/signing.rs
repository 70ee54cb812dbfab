//! Ed25519 keys for signing digests: the private half stays with the pipeline, the public half
//! goes to whoever checks the archive, who then needs none of our secrets.
//!
//! Keys are PEM files in the standard encodings (PKCS#8 for the private key, SubjectPublicKeyInfo
//! for the public one), so `openssl pkey` reads them and `openssl pkeyutl -verify -rawin`
//! checks a signature without auditship (a test does exactly that). A public key's fingerprint
//! is `SHA256:` and the hex SHA-256 of its 32 raw bytes: short enough to read out on a call,
//! and what a digest names so that a digest signed by another key is told apart at once.
//!
//! ```
//! use auditship::manifest::{DigestSigningKey, DigestPublicKey};
//! let key = DigestSigningKey::generate()?;
//! let public = DigestPublicKey::from_pem(&key.public_pem()?)?;
//! let signature = key.sign(b"a digest");
//! assert!(public.verify(b"a digest", &signature));
//! assert!(!public.verify(b"another digest", &signature));
//! assert_eq!(public.fingerprint(), key.fingerprint());
//! # Ok::<(), auditship::manifest::KeyError>(())
//! ```

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Why a key could not be made, read or written. None of these passes by retrying: each says
/// what to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random source failed.
    #[error("cannot draw random bytes for a new key: {0}")]
    Random(String),
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A key file others may read: refused, as ssh refuses one.
    #[error("{path} may be read by other users (mode {mode:o}): a signing key must be private; run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a key of the kind expected.
    #[error("{what} is not an Ed25519 {kind} in PEM ({reason}); `auditship keygen` writes one")]
    Format {
        /// Where the text came from.
        what: String,
        /// `private key` or `public key`.
        kind: &'static str,
        /// What the decoder said (never the key's bytes).
        reason: String,
    },
}

/// The private key that signs digests. Its `Debug` shows only the fingerprint.
pub struct DigestSigningKey(SigningKey);

impl std::fmt::Debug for DigestSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DigestSigningKey({})", self.fingerprint())
    }
}

impl DigestSigningKey {
    /// A new key from the system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut secret[..]).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(DigestSigningKey(SigningKey::from_bytes(&secret)))
    }

    /// Read a private key from a PEM file that only its owner may read.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        Self::from_pem(&text, &path.display().to_string())
    }

    /// Read a private key from PEM text; `what` names where it came from, for errors.
    pub fn from_pem(text: &str, what: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(text)
            .map(DigestSigningKey)
            .map_err(|e| KeyError::Format {
                what: what.to_string(),
                kind: "private key",
                reason: e.to_string(),
            })
    }

    /// The private key as PKCS#8 PEM (to be written 0600 and nowhere else), in RFC 8410's
    /// first form: the one `openssl genpkey -algorithm ed25519` writes. (ed25519-dalek writes
    /// the second, with the public key inside, which OpenSSL 3.0 cannot read; the test against
    /// openssl below caught it.) The form is fixed: a 16-byte header, then the 32-byte seed.
    pub fn private_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
        const V1_HEADER: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
        ];
        let mut der = zeroize::Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&V1_HEADER);
        der.extend_from_slice(self.0.as_bytes());
        {
            use ed25519_dalek::pkcs8::spki::der::pem;
            pem::encode_string("PRIVATE KEY", pem::LineEnding::LF, &der)
        }
        .map(zeroize::Zeroizing::new)
        .map_err(|e| KeyError::Format {
            what: "a new key".into(),
            kind: "private key",
            reason: e.to_string(),
        })
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn public_pem(&self) -> Result<String, KeyError> {
        DigestPublicKey(self.0.verifying_key()).pem()
    }

    /// The public key's fingerprint (see the module's notes).
    pub fn fingerprint(&self) -> String {
        DigestPublicKey(self.0.verifying_key()).fingerprint()
    }

    /// Sign `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Seal a document: the SHA-256 of its canonical bytes and the signature of that hash,
    /// both lowercase hex (how digests and completeness reports are signed).
    pub fn seal_document(&self, canonical: &[u8]) -> (String, String) {
        let hash: [u8; 32] = Sha256::digest(canonical).into();
        (super::hex(&hash), super::hex(&self.sign(&hash)))
    }
}

/// Why a sealed document does not stand (see [`DigestPublicKey::check_document`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealProblem {
    /// Its canonical bytes do not hash to its hash: it was edited.
    Edited,
    /// The signature is not the key's over the hash.
    BadSignature,
}

/// Lowercase hex back to bytes.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The public key that checks digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestPublicKey(VerifyingKey);

impl DigestPublicKey {
    /// Read a public key from a PEM file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&text).map_err(|e| match e {
            KeyError::Format { kind, reason, .. } => KeyError::Format {
                what: path.display().to_string(),
                kind,
                reason,
            },
            other => other,
        })
    }

    /// Read a public key from PEM text.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        VerifyingKey::from_public_key_pem(text)
            .map(DigestPublicKey)
            .map_err(|e| KeyError::Format {
                what: "the text".into(),
                kind: "public key",
                reason: e.to_string(),
            })
    }

    /// The key as SubjectPublicKeyInfo PEM.
    pub fn pem(&self) -> Result<String, KeyError> {
        self.0
            .to_public_key_pem(Default::default())
            .map_err(|e| KeyError::Format {
                what: "a public key".into(),
                kind: "public key",
                reason: e.to_string(),
            })
    }

    /// `SHA256:` and the hex SHA-256 of the key's 32 raw bytes.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", super::hex(&Sha256::digest(self.0.as_bytes())))
    }

    /// Check a document sealed by [`DigestSigningKey::seal_document`]: its canonical bytes
    /// hash to `hash`, and `signature` is this key's over that hash.
    pub fn check_document(&self, canonical: &[u8], hash: &str, signature: &str) -> Result<(), SealProblem> {
        let computed: [u8; 32] = Sha256::digest(canonical).into();
        if super::hex(&computed) != hash {
            return Err(SealProblem::Edited);
        }
        let signature: Option<[u8; 64]> = unhex(signature).and_then(|s| s.try_into().ok());
        match signature {
            Some(s) if self.verify(&computed, &s) => Ok(()),
            _ => Err(SealProblem::BadSignature),
        }
    }

    /// Whether `signature` is this key's over `message` (strict: no malleable encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok() && self.0.verify(message, &signature).is_ok()
    }
}

/// Write a new key pair as `PREFIX.key` (the private key, 0600) and `PREFIX.pub` (the public
/// key, 0644); neither may exist yet. Returns both paths and the fingerprint.
pub fn write_key_pair(prefix: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let key = DigestSigningKey::generate()?;
    let mut private = prefix.as_os_str().to_owned();
    private.push(".key");
    let mut public = prefix.as_os_str().to_owned();
    public.push(".pub");
    let (private, public) = (PathBuf::from(private), PathBuf::from(public));
    for p in [&private, &public] {
        if p.symlink_metadata().is_ok() {
            return Err(KeyError::Io {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; a key pair is never overwritten (move it away, or choose another --out)",
                ),
            });
        }
    }
    write_new(&private, key.private_pem()?.as_bytes(), 0o600)?;
    write_new(&public, key.public_pem()?.as_bytes(), 0o644)?;
    Ok((private, public, key.fingerprint()))
}

/// Create `path` (never through an existing file or link) with `mode`, write and fsync it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // The umask may have taken bits away; never added any: set exactly what was asked.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_pair_reads_back_signs_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, fingerprint) = write_key_pair(&dir.path().join("audit")).unwrap();
        assert_eq!(
            std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&public).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let key = DigestSigningKey::from_file(&private).unwrap();
        let public = DigestPublicKey::from_file(&public).unwrap();
        assert_eq!(key.fingerprint(), fingerprint);
        assert_eq!(public.fingerprint(), fingerprint);
        let sig = key.sign(b"digest");
        assert!(public.verify(b"digest", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!public.verify(b"digest", &bad));
        let other = DigestSigningKey::generate().unwrap();
        assert!(!public.verify(b"digest", &other.sign(b"digest")));
        assert_ne!(other.fingerprint(), fingerprint);
        // Never overwritten.
        let e = write_key_pair(&dir.path().join("audit")).unwrap_err();
        assert!(e.to_string().contains("never overwritten"), "{e}");
        // The private key's text is nowhere in what Debug shows.
        let pem = std::fs::read_to_string(&private).unwrap();
        let shown = format!("{key:?}");
        assert!(
            shown.contains(&fingerprint) && !shown.contains(pem.lines().nth(1).unwrap()),
            "{shown}"
        );
    }

    #[test]
    fn a_private_key_others_may_read_is_refused_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, _) = write_key_pair(&dir.path().join("k")).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = DigestSigningKey::from_file(&private).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("640"), "{e}");
        // A public key where the private one belongs, and the other way round.
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = DigestSigningKey::from_file(&public).unwrap_err().to_string();
        assert!(
            e.contains("not an Ed25519 private key") && e.contains("k.pub"),
            "{e}"
        );
        let e = DigestPublicKey::from_file(&private).unwrap_err().to_string();
        assert!(
            e.contains("not an Ed25519 public key") && e.contains("k.key"),
            "{e}"
        );
    }

    /// openssl, which we did not write, reads our keys and checks our signatures.
    #[test]
    fn openssl_verifies_our_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, _) = write_key_pair(&dir.path().join("k")).unwrap();
        let key = DigestSigningKey::from_file(&private).unwrap();
        let message = dir.path().join("msg");
        std::fs::write(&message, b"period 2026-12-06T10:00Z digest").unwrap();
        let signature = dir.path().join("sig");
        std::fs::write(&signature, key.sign(b"period 2026-12-06T10:00Z digest")).unwrap();
        let verify = |sig: &Path| {
            std::process::Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
                .arg(&public)
                .arg("-rawin")
                .arg("-in")
                .arg(&message)
                .arg("-sigfile")
                .arg(sig)
                .output()
                .expect("openssl runs (Debian package openssl)")
        };
        let ok = verify(&signature);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
        let mut bad = std::fs::read(&signature).unwrap();
        bad[0] ^= 1;
        std::fs::write(&signature, bad).unwrap();
        assert!(!verify(&signature).status.success());
        // And it reads the private key as an Ed25519 key.
        let text = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-text", "-in"])
            .arg(&private)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("ED25519"),
            "{}",
            String::from_utf8_lossy(&text.stderr)
        );
        // ... and derives from it the public key we wrote.
        let derived = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&derived.stdout),
            std::fs::read_to_string(&public).unwrap()
        );
        // And a key openssl made reads here, with the same public key.
        let theirs = dir.path().join("openssl.key");
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&theirs)
            .output()
            .unwrap();
        assert!(made.status.success());
        let their_public = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&theirs)
            .output()
            .unwrap();
        let text = std::fs::read_to_string(&theirs).unwrap();
        let key = DigestSigningKey::from_pem(&text, "openssl's key").unwrap();
        assert_eq!(
            key.public_pem().unwrap(),
            String::from_utf8_lossy(&their_public.stdout)
        );
    }
}

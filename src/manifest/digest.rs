//! Signed digests: what an auditor checks with nothing but the archive and a public key.
//!
//! The manifest's hash chain shows that entries were not changed or taken out of its middle,
//! but not that its newest entries were not cut off, and its HMAC needs our secret. A digest,
//! after AWS CloudTrail's log file integrity validation, closes both gaps: every period (an
//! hour by default) a sink gets one, listing the manifest entries committed in that period
//! (each entry's hash, and its unit's stretch and SHA-256), the period's bounds, and the
//! previous digest's hash and signature, signed with an Ed25519 key whose public half anyone
//! may hold. A period in which nothing was sealed still gets its digest, so digests form a
//! chain with no holes: removing the newest units together with their manifest lines leaves a
//! digest that names them, and removing that digest too leaves a hole in the periods before the
//! horizon (now minus two periods), which a verifier names.
//!
//! This file holds the format and its checks; `cutter.rs` cuts them in a running pipeline, and
//! `auditship verify --public-key` checks archives with them.
//!
//! The digest's `hash` is the SHA-256 of its JSON as serialised here with `hash` and
//! `signature` empty, fields in declaration order (as an entry's); the signature is over the
//! hash's 32 bytes.
//!
//! ```
//! use auditship::manifest::{SignedDigest, DigestSigningKey, DigestPublicKey};
//! let key = DigestSigningKey::generate()?;
//! let public = DigestPublicKey::from_pem(&key.public_pem()?)?;
//! let first = SignedDigest::open("pipe", "archive", None, "2026-12-06T10:00:00Z", "2026-12-06T11:00:00Z", 3_600_000)
//!     .seal(&key);
//! let second = SignedDigest::open("pipe", "archive", Some(&first), "2026-12-06T11:00:00Z", "2026-12-06T12:00:00Z", 3_600_000)
//!     .seal(&key);
//! assert!(first.check(&public).is_ok());
//! assert!(second.follows(Some(&first)).is_ok());
//! # Ok::<(), auditship::manifest::KeyError>(())
//! ```

use super::signing::SealProblem;
use super::*;

/// The digest format version written in every digest.
pub const DIGEST_FORMAT_VERSION: u32 = 1;

/// One period's digest of one sink's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDigest {
    /// Format version ([`DIGEST_FORMAT_VERSION`]).
    pub v: u32,
    /// The pipeline.
    pub pipeline: String,
    /// The sink (its `[sinks.NAME]`).
    pub sink: String,
    /// Position in the sink's chain of digests: 1, 2, …
    pub seq: u64,
    /// The period's start (RFC 3339, UTC): the previous digest's end.
    pub period_start: String,
    /// The period's end (exclusive).
    pub period_end: String,
    /// The length of a full period, in milliseconds: digests come at every multiple of it
    /// (since the Unix epoch), so a verifier knows when the next one was due.
    pub interval_ms: u64,
    /// The manifest entries committed in the period, in chain order.
    pub entries: Vec<DigestEntry>,
    /// The seq of the sink's last manifest entry at the period's end: the last of `entries`,
    /// or the previous digest's when the period sealed nothing (0 before any entry).
    pub through: u64,
    /// The pipeline stopped at `period_end` (a clean stop): the chain goes on, if at all, at
    /// its next start. A chain ending in such a digest ends there by the signer's word; one
    /// ending in any other digest before the horizon has lost its newest digests.
    #[serde(default)]
    pub stopped: bool,
    /// The previous digest's `hash` ([`GENESIS`] for the first).
    pub prev: String,
    /// The previous digest's `signature` (empty for the first): a digest replaced by one signed
    /// with another key no longer matches what its successor recorded.
    pub prev_signature: String,
    /// The fingerprint of the public key that checks `signature`
    /// ([`DigestPublicKey::fingerprint`]).
    pub key: String,
    /// SHA-256 of the canonical JSON, lowercase hex.
    #[serde(default)]
    pub hash: String,
    /// Ed25519 signature of the hash's bytes, lowercase hex.
    #[serde(default)]
    pub signature: String,
}

/// What a digest records of one manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestEntry {
    /// The entry's `seq`.
    pub seq: u64,
    /// The entry's `hash`: the manifest line it vouches for.
    pub hash: String,
    /// The unit, and the stretch of it the entry covers.
    pub unit: String,
    /// Where the stretch starts, in bytes.
    pub offset: u64,
    /// Its length, in bytes.
    pub length: u64,
    /// SHA-256 of the stretch as stored, lowercase hex.
    pub sha256: String,
    /// Events in the stretch.
    pub events: u64,
}

impl From<&Entry> for DigestEntry {
    fn from(e: &Entry) -> Self {
        DigestEntry {
            seq: e.seq,
            hash: e.hash.clone(),
            unit: e.unit.clone(),
            offset: e.offset,
            length: e.length,
            sha256: e.sha256.clone(),
            events: e.events,
        }
    }
}

/// Why a digest does not stand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestProblem {
    /// Signed with a key other than the one given.
    #[error("digest {seq} of {sink} is signed by key {found}, not by the key given ({expected})")]
    OtherKey {
        /// The sink.
        sink: String,
        /// The digest's place in its chain.
        seq: u64,
        /// The fingerprint the digest names.
        found: String,
        /// The given key's.
        expected: String,
    },
    /// Its content does not hash to its `hash`: it was edited.
    #[error(
        "digest {seq} of {sink} was changed after it was signed (its content does not hash to its hash)"
    )]
    Edited {
        /// The sink.
        sink: String,
        /// The digest's place in its chain.
        seq: u64,
    },
    /// The signature does not verify under the key it names.
    #[error("digest {seq} of {sink}: the signature does not verify")]
    BadSignature {
        /// The sink.
        sink: String,
        /// The digest's place in its chain.
        seq: u64,
    },
    /// It does not follow the digest before it: a digest missing, replayed or replaced.
    #[error("digest {seq} of {sink} does not follow the digest before it: {why}")]
    Broken {
        /// The sink.
        sink: String,
        /// The digest's place in its chain.
        seq: u64,
        /// What does not match.
        why: String,
    },
}

impl SignedDigest {
    /// An unsigned digest of the period `[start, end)` following `prev` (with no entries yet:
    /// push them to `entries`), to be [`SignedDigest::seal`]ed.
    pub fn open(
        pipeline: &str,
        sink: &str,
        prev: Option<&SignedDigest>,
        start: &str,
        end: &str,
        interval_ms: u64,
    ) -> SignedDigest {
        SignedDigest {
            v: DIGEST_FORMAT_VERSION,
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            seq: prev.map_or(1, |p| p.seq + 1),
            period_start: start.to_string(),
            period_end: end.to_string(),
            interval_ms,
            entries: Vec::new(),
            through: prev.map_or(0, |p| p.through),
            stopped: false,
            prev: prev.map_or_else(|| GENESIS.to_string(), |p| p.hash.clone()),
            prev_signature: prev.map(|p| p.signature.clone()).unwrap_or_default(),
            key: String::new(),
            hash: String::new(),
            signature: String::new(),
        }
    }

    /// The bytes the digest's hash covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut bare = self.clone();
        bare.hash = String::new();
        bare.signature = String::new();
        // A struct of strings, numbers and vectors of them: serialising it cannot fail.
        serde_json::to_vec(&bare).unwrap_or_default()
    }

    /// Add the next entry of the period.
    pub fn push(&mut self, entry: DigestEntry) {
        self.through = entry.seq;
        self.entries.push(entry);
    }

    /// Name the key, hash and sign.
    pub fn seal(mut self, key: &DigestSigningKey) -> SignedDigest {
        self.key = key.fingerprint();
        (self.hash, self.signature) = key.seal_document(&self.canonical());
        self
    }

    /// The digest as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Its path under the archive's `auditship.digest/`: `PIPELINE/SINK/SEQ-END.json`, the
    /// names encoded as path components, the seq zero-padded (names sort in chain order), the
    /// period's end to the second. A digest found under another name was moved or replayed.
    pub fn file_name(&self) -> String {
        let mut name = String::new();
        auditship_sink::encode_component(&mut name, &self.pipeline);
        name.push('/');
        auditship_sink::encode_component(&mut name, &self.sink);
        let end = chrono::DateTime::parse_from_rfc3339(&self.period_end)
            .map(|t| t.with_timezone(&chrono::Utc).format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_else(|_| "unknown".into());
        name.push_str(&format!("/{:012}-{end}.json", self.seq));
        name
    }

    /// The digest as the sink publishes it.
    pub fn file(&self) -> auditship_sink::DigestFile {
        auditship_sink::DigestFile {
            seq: self.seq,
            name: self.file_name(),
            body: format!("{}\n", self.to_json()),
        }
    }

    /// Whether the digest is intact and signed by `key`.
    pub fn check(&self, key: &DigestPublicKey) -> Result<(), DigestProblem> {
        let (sink, seq) = (self.sink.clone(), self.seq);
        if self.key != key.fingerprint() {
            return Err(DigestProblem::OtherKey {
                sink,
                seq,
                found: self.key.clone(),
                expected: key.fingerprint(),
            });
        }
        match key.check_document(&self.canonical(), &self.hash, &self.signature) {
            Ok(()) => Ok(()),
            Err(SealProblem::Edited) => Err(DigestProblem::Edited { sink, seq }),
            Err(SealProblem::BadSignature) => Err(DigestProblem::BadSignature { sink, seq }),
        }
    }

    /// Whether the digest follows `prev` (`None`: it must be the first): the next seq, the
    /// previous hash and signature recorded, the periods meeting, and the entries going on
    /// where the previous digest's stopped.
    pub fn follows(&self, prev: Option<&SignedDigest>) -> Result<(), DigestProblem> {
        let broken = |why: String| DigestProblem::Broken {
            sink: self.sink.clone(),
            seq: self.seq,
            why,
        };
        // The entries are consecutive and end at `through`.
        let mut expect = self.entries.first().map(|e| e.seq);
        for e in &self.entries {
            if Some(e.seq) != expect {
                return Err(broken(format!(
                    "its entries skip from {:?} to {}",
                    expect.map(|n| n - 1),
                    e.seq
                )));
            }
            expect = Some(e.seq + 1);
        }
        if let Some(last) = self.entries.last() {
            if last.seq != self.through {
                return Err(broken(format!(
                    "its last entry is {}, and it says {}",
                    last.seq, self.through
                )));
            }
        }
        let Some(p) = prev else {
            return if self.seq == 1 && self.prev == GENESIS && self.prev_signature.is_empty() {
                Ok(())
            } else {
                Err(broken(format!(
                    "it is number {} but no digest comes before it",
                    self.seq
                )))
            };
        };
        if self.seq != p.seq + 1 {
            return Err(broken(format!(
                "it is number {}, after number {}",
                self.seq, p.seq
            )));
        }
        if self.prev != p.hash || self.prev_signature != p.signature {
            return Err(broken(format!(
                "it records a previous digest other than number {} (replaced, or signed again)",
                p.seq
            )));
        }
        if self.period_start != p.period_end {
            return Err(broken(format!(
                "its period starts {}, and the one before ended {}",
                self.period_start, p.period_end
            )));
        }
        match self.entries.first() {
            Some(first) if first.seq != p.through + 1 => Err(broken(format!(
                "its first entry is {}, and the digests before it end at entry {}",
                first.seq, p.through
            ))),
            None if self.through != p.through => Err(broken(format!(
                "it lists no entry but says the entries go to {}, and the digests before it end at {}",
                self.through, p.through
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::signing::unhex;
    use super::*;

    fn entry(seq: u64) -> DigestEntry {
        DigestEntry {
            seq,
            hash: format!("{seq:064x}"),
            unit: format!("/a/sb-{seq}.ndjson"),
            offset: 0,
            length: 100 * seq,
            sha256: format!("{:064x}", seq * 7),
            events: seq,
        }
    }

    fn chain(key: &DigestSigningKey) -> Vec<SignedDigest> {
        let hours = ["10", "11", "12", "13"];
        let mut out: Vec<SignedDigest> = Vec::new();
        let mut next = 1;
        for (i, w) in hours.windows(2).enumerate() {
            let mut d = SignedDigest::open(
                "pipe",
                "archive",
                out.last(),
                &format!("2026-12-06T{}:00:00Z", w[0]),
                &format!("2026-12-06T{}:00:00Z", w[1]),
                3_600_000,
            );
            // The middle hour sealed nothing: it still gets its digest.
            if i != 1 {
                d.push(entry(next));
                d.push(entry(next + 1));
                next += 2;
            }
            out.push(d.seal(key));
        }
        out
    }

    fn check_all(chain: &[SignedDigest], key: &DigestPublicKey) -> Result<(), DigestProblem> {
        let mut prev = None;
        for d in chain {
            d.check(key)?;
            d.follows(prev)?;
            prev = Some(d);
        }
        Ok(())
    }

    #[test]
    fn a_chain_checks_and_each_tampering_is_named() {
        let key = DigestSigningKey::generate().unwrap();
        let public = DigestPublicKey::from_pem(&key.public_pem().unwrap()).unwrap();
        let good = chain(&key);
        check_all(&good, &public).unwrap();
        assert!(good[1].entries.is_empty());
        // A digest read back from its JSON is the same digest.
        let back: SignedDigest = serde_json::from_str(&good[0].to_json()).unwrap();
        assert_eq!(back, good[0]);

        // Edited: an entry's SHA-256 changed.
        let mut edited = good.clone();
        edited[0].entries[0].sha256 = format!("{:064x}", 1);
        assert!(matches!(
            check_all(&edited, &public),
            Err(DigestProblem::Edited { seq: 1, .. })
        ));

        // Removed: the middle digest gone.
        let removed = vec![good[0].clone(), good[2].clone()];
        let e = check_all(&removed, &public).unwrap_err();
        assert!(matches!(e, DigestProblem::Broken { seq: 3, .. }), "{e}");

        // Replayed: the first hour's digest where the second's belongs.
        let replayed = vec![good[0].clone(), good[0].clone(), good[2].clone()];
        assert!(matches!(
            check_all(&replayed, &public),
            Err(DigestProblem::Broken { seq: 1, .. })
        ));

        // Another key's digest, even one that otherwise fits.
        let other = DigestSigningKey::generate().unwrap();
        let mut forged = good.clone();
        let mut d = forged[1].clone();
        d.push(entry(3));
        forged[1] = d.seal(&other);
        assert!(matches!(
            check_all(&forged, &public),
            Err(DigestProblem::OtherKey { seq: 2, .. })
        ));
        // Re-signed with ours after a change: its successor no longer follows it.
        let mut resigned = good.clone();
        let mut d = resigned[1].clone();
        d.push(entry(3));
        resigned[1] = d.seal(&key);
        let e = check_all(&resigned, &public).unwrap_err();
        assert!(matches!(e, DigestProblem::Broken { seq: 3, .. }), "{e}");

        // Entries cut from a period: the next digest no longer starts where it ends.
        // (Chained again and signed with the right key, as only a holder of the key could.)
        let mut cut: Vec<SignedDigest> = Vec::new();
        for (i, d) in good.iter().enumerate() {
            let mut d = d.clone();
            if i == 0 {
                d.entries.pop();
            }
            if i < 2 {
                d.through = d.entries.last().map_or(1, |e| e.seq);
            }
            if let Some(p) = cut.last() {
                d.prev = p.hash.clone();
                d.prev_signature = p.signature.clone();
            }
            cut.push(d.seal(&key));
        }
        let e = check_all(&cut, &public).unwrap_err();
        assert!(
            matches!(&e, DigestProblem::Broken { seq: 3, why, .. } if why.contains("first entry is 3")),
            "{e}"
        );

        // A signature that is not the key's.
        let mut bad = good.clone();
        bad[2].signature = hex(&other.sign(&unhex(&bad[2].hash).unwrap()));
        assert!(matches!(
            check_all(&bad, &public),
            Err(DigestProblem::BadSignature { seq: 3, .. })
        ));
        bad[2].signature = "zz".into();
        assert!(matches!(
            check_all(&bad, &public),
            Err(DigestProblem::BadSignature { seq: 3, .. })
        ));
    }
}

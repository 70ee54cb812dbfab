//! Evidence bundles: a window of an archive handed to an auditor, with exactly what proves it.
//!
//! An auditor rarely wants a bucket; they want "sandbox X, last March", and the means to check
//! it without trusting whoever cut it out. [`export`] writes one file (`auditship export`), and
//! [`check`] checks it offline (`auditship verify-export`): every digest's signature under the
//! public key, the digests one unbroken run per chain, every manifest entry they list present
//! and intact, every stretch of data byte for byte as its entry hashed it, and no stretch that
//! touches the selection left out among the entries the digests list. Nothing in the bundle is
//! taken on the exporter's word but the selection itself, which the check reports against what
//! the bundle proves.
//!
//! # Format (version 1)
//!
//! A tar archive compressed with zstd (with content checksums, so a changed byte anywhere fails
//! the decompression), holding, in this order:
//!
//! | path | what |
//! |---|---|
//! | `README.txt` | how to check the bundle (fixed text of the format version) |
//! | `bundle.json` | [`BundleInfo`]: the selection, the source, the key's fingerprint, per chain the digests and counts |
//! | `public-key.pem` | the Ed25519 public key the digests are signed with (compare its fingerprint with the one you were given) |
//! | `digests/PIPELINE/SINK/SEQ-END.json` | the signed digests, as published: per chain an unbroken run of seqs |
//! | `manifest/PIPELINE/SINK.ndjson` | every manifest entry those digests list, one JSON line each, in seq order |
//! | `stretches/PIPELINE/SINK/SEQ.EXT` | the bytes of each selected entry's stretch as stored (`EXT`: `ndjson`, `ndjson.gz`, `ndjson.zst`); `sha256sum` of the file is the entry's `sha256` |
//!
//! `PIPELINE` and `SINK` are encoded as path components (see
//! [`auditship_sink::encode_component`]), `SEQ` is zero-padded to 12 digits. Digests and entries
//! keep the format `auditship verify` reads (see [`crate::manifest`]).
//!
//! # Layout
//! - `mod.rs`: the format, [`BundleInfo`], [`Selection`].
//! - `write.rs`: [`export`]; `check.rs`: [`check`] and its [`BundleReport`]; `report.rs`: the
//!   report as text.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::manifest::{Entry, SandboxSpan};

mod check;
mod report;
mod write;

pub use check::{check, BundleReport, SandboxEvents};
pub use write::{export, ExportError, ExportSummary};

/// The bundle format version written in `bundle.json`.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;

/// `bundle.json`'s `format`.
pub const BUNDLE_FORMAT: &str = "auditship-evidence-bundle";

/// The README inside every version-1 bundle (checked byte for byte: nothing in a bundle goes
/// unchecked).
pub const README: &str = "\
auditship evidence bundle (format 1)
====================================

This file holds events of a Miosa egress-audit archive and what proves them: the signed
digests that list them, the manifest entries the digests vouch for, and the bytes of each
archive stretch exactly as stored. Nothing in it needs to be taken on trust but the public key.

To check it (nothing else is needed, no network, no secret):

    auditship verify-export THIS-FILE --public-key KEY.pem

where KEY.pem is the public key you were given by the archive's owner (the copy inside,
public-key.pem, is checked only if you give none; compare its fingerprint with theirs).

By hand: every file under digests/ is a JSON digest whose `hash` is the SHA-256 of its JSON
with `hash` and `signature` empty, and whose `signature` is an Ed25519 signature of those 32
bytes; every line under manifest/ is an entry whose `hash` is computed the same way (with
`hash` empty and `hmac` absent); `sha256sum stretches/...` gives each stretch's entry `sha256`.

bundle.json says what was selected and from where. See the auditship README, section
\"Proving the archive to an auditor\", for what each finding means.
";

/// What to export: events of these sandboxes (all when empty) with cursor times in
/// `[since_us, until_us)` (unbounded where `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Sandbox ids; empty: all.
    pub sandboxes: Vec<String>,
    /// The window's start, µs since the Unix epoch.
    pub since_us: Option<i64>,
    /// The window's end (exclusive).
    pub until_us: Option<i64>,
}

impl Selection {
    /// Whether an event of `resource_id` at `cursor_us` is selected.
    pub fn takes(&self, resource_id: &str, cursor_us: Option<i64>) -> bool {
        (self.sandboxes.is_empty() || self.sandboxes.iter().any(|s| s == resource_id))
            && cursor_us
                .is_none_or(|t| self.since_us.is_none_or(|s| t >= s) && self.until_us.is_none_or(|u| t < u))
    }

    /// Whether a stretch with these spans may hold selected events.
    pub fn touches(&self, spans: &[SandboxSpan]) -> bool {
        spans.iter().any(|s| {
            let first = s.first_cursor.as_deref().and_then(crate::client::parse_time);
            let last = s.last_cursor.as_deref().and_then(crate::client::parse_time);
            (self.sandboxes.is_empty() || self.sandboxes.contains(&s.resource_id))
                && self.until_us.is_none_or(|u| first.is_none_or(|f| f < u))
                && self.since_us.is_none_or(|since| last.is_none_or(|l| l >= since))
        })
    }
}

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// [`BUNDLE_FORMAT_VERSION`].
    pub v: u32,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// The archive it was cut from, as `auditship verify` shows it.
    pub source: String,
    /// What was selected.
    pub selection: Selection,
    /// The fingerprint of the key the digests are signed with.
    pub key: String,
    /// Per chain, what the bundle holds.
    pub chains: Vec<BundleChain>,
}

/// What a bundle holds of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleChain {
    /// The pipeline.
    pub pipeline: String,
    /// The sink.
    pub sink: String,
    /// The first and last digest's seq (an unbroken run).
    pub digests: (u64, u64),
    /// The manifest entries those digests list.
    pub entries: u64,
    /// The entries whose stretches are included (the selection's).
    pub stretches: Vec<u64>,
}

/// Names inside a bundle.
pub(crate) mod paths {
    use super::*;

    pub(crate) const README: &str = "README.txt";
    pub(crate) const INFO: &str = "bundle.json";
    pub(crate) const KEY: &str = "public-key.pem";

    fn chain_dir(top: &str, pipeline: &str, sink: &str) -> String {
        let mut p = format!("{top}/");
        auditship_sink::encode_component(&mut p, pipeline);
        p.push('/');
        auditship_sink::encode_component(&mut p, sink);
        p
    }

    /// Where a digest goes: its own name under `digests/`.
    pub(crate) fn digest(d: &crate::manifest::SignedDigest) -> String {
        format!("digests/{}", d.file_name())
    }

    /// Where a chain's entries go.
    pub(crate) fn manifest(pipeline: &str, sink: &str) -> String {
        chain_dir("manifest", pipeline, sink) + ".ndjson"
    }

    /// Where an entry's stretch goes.
    pub(crate) fn stretch(e: &Entry) -> String {
        let ext = match auditship_sink::UnitCompression::parse(&e.compression) {
            Some(auditship_sink::UnitCompression::Gzip) => "ndjson.gz",
            Some(auditship_sink::UnitCompression::Zstd) => "ndjson.zst",
            Some(auditship_sink::UnitCompression::Parquet) => "parquet",
            _ => "ndjson",
        };
        format!(
            "{}/{:012}.{ext}",
            chain_dir("stretches", &e.pipeline, &e.sink),
            e.seq
        )
    }
}

/// Read everything from `r` into a string, at most `limit` bytes (a bundle's small files).
pub(crate) fn read_small(r: impl Read, limit: u64) -> std::io::Result<String> {
    let mut text = String::new();
    r.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {limit} bytes"),
        ));
    }
    Ok(text)
}

/// Per chain: manifest entries by seq.
pub(crate) type Entries = BTreeMap<(String, String), BTreeMap<u64, Entry>>;

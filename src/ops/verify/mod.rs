//! `auditship verify`: check an archive against its manifests.
//!
//! An auditor asks two questions of an archive: has anything been altered or removed, and is
//! anything missing? [`verify`] reads every manifest under a root (see [`crate::manifest`]), then
//! every unit, and reports:
//! - **entries** that do not parse, whose hash does not match their content, whose HMAC does
//!   not match (with the key), that appear twice or out of order;
//! - **chains** with missing entries or broken links (a unit removed together with its manifest
//!   line, an entry forged or reordered);
//! - **units** that are missing, altered (SHA-256 differs), truncated, have bytes after their
//!   last sealed stretch, or sit in another directory than their entry says;
//! - **unlisted** files (in no manifest: added after the fact, or not sealed yet);
//! - **duplicated event ids** across everything read, and, with a threshold, per-sandbox **time
//!   gaps** between consecutive events;
//! - with the checkpoint database (`--pipeline`), entries the database holds that the archive
//!   lacks (the newest units removed with their lines) and entries it does not hold (forged);
//! - with the public key (`--public-key`), the signed digests: signatures, the chain of
//!   digests up to a horizon, and the entries they list (see `digests.rs`). This catches the
//!   newest units removed with their lines without the database.
//!
//! The archive is read through [`Archive`], so a directory and an S3 prefix are checked alike.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use auditship_sink::{UnitCompression, MANIFEST_NAME};
use serde::Serialize;

use crate::manifest::{self, Entry, Summarizer, GENESIS};
use crate::transform::HmacKey;

pub use auditship_sink::{Archive, DirArchive};

/// An archive under an S3 prefix (the S3 sink's crate reads it).
#[cfg(feature = "s3")]
pub use auditship_sink_s3::S3Archive;

mod check;
mod digests;
mod events;
mod report;

pub(crate) use check::manifest_dir;
pub use check::verify;
pub(crate) use digests::is_digest_file;
pub use digests::{is_digest, DigestChainReport, Horizon};
use events::EventIndex;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A manifest line that is not an entry.
    BadEntry,
    /// An entry whose content does not match its own hash.
    EntryAltered,
    /// An entry whose HMAC does not match (wrong key, or forged).
    BadSignature,
    /// An entry without an HMAC where a key was given.
    Unsigned,
    /// The same entry (chain and seq) more than once.
    DuplicateEntry,
    /// Entries of one chain not in increasing order within a manifest.
    OutOfOrder,
    /// Entries of a chain that are not there.
    MissingEntries,
    /// An entry that does not link to the one before it.
    BrokenLink,
    /// An entry's unit in a different directory than its path says.
    Misplaced,
    /// A unit an entry lists that is not there.
    Removed,
    /// A unit's bytes differ from what its entry hashed.
    Altered,
    /// A unit shorter than its entries cover.
    Truncated,
    /// Bytes of a unit after its last sealed stretch.
    Unsealed,
    /// Stretches of a unit that overlap or leave a hole.
    Overlap,
    /// A file no manifest lists.
    Unlisted,
    /// An event id found more than once.
    DuplicateEvent,
    /// A per-sandbox time gap above the threshold.
    Gap,
    /// An entry the checkpoint database holds that the archive lacks, or differs from it.
    NotInArchive,
    /// An entry the archive holds that the checkpoint database does not.
    NotInDatabase,
    /// An hour whose event count differs from the API's (`--against-api`).
    ApiMismatch,
    /// No manifest at all under the root.
    NoManifest,
    /// With a public key: a chain without signed digests, or none under the root.
    NoDigest,
    /// A digest that does not parse or does not hash to its hash: edited.
    DigestAltered,
    /// A digest whose signature does not verify under the key it names.
    BadDigestSignature,
    /// A digest signed by a key other than the one given.
    WrongKey,
    /// A digest under another digest's name: moved, or replayed from another period.
    DigestMoved,
    /// Digests missing: a hole in a chain, or a chain ending before the horizon.
    MissingDigests,
    /// A digest that does not follow the one before it.
    DigestChainBroken,
    /// A manifest entry other than the one a digest signed.
    NotAsDigested,
}

impl Kind {
    /// The finding's name in a text report.
    pub fn label(self) -> &'static str {
        match self {
            Kind::BadEntry => "BAD ENTRY",
            Kind::EntryAltered => "ENTRY ALTERED",
            Kind::BadSignature => "BAD SIGNATURE",
            Kind::Unsigned => "UNSIGNED",
            Kind::DuplicateEntry => "DUPLICATE ENTRY",
            Kind::OutOfOrder => "OUT OF ORDER",
            Kind::MissingEntries => "MISSING ENTRIES",
            Kind::BrokenLink => "BROKEN LINK",
            Kind::Misplaced => "MISPLACED",
            Kind::Removed => "REMOVED",
            Kind::Altered => "ALTERED",
            Kind::Truncated => "TRUNCATED",
            Kind::Unsealed => "UNSEALED",
            Kind::Overlap => "OVERLAP",
            Kind::Unlisted => "UNLISTED",
            Kind::DuplicateEvent => "DUPLICATE EVENT",
            Kind::Gap => "GAP",
            Kind::NotInArchive => "NOT IN ARCHIVE",
            Kind::NotInDatabase => "NOT IN DATABASE",
            Kind::ApiMismatch => "API MISMATCH",
            Kind::NoManifest => "NO MANIFEST",
            Kind::NoDigest => "NO DIGEST",
            Kind::DigestAltered => "DIGEST ALTERED",
            Kind::BadDigestSignature => "BAD DIGEST SIGNATURE",
            Kind::WrongKey => "WRONG KEY",
            Kind::DigestMoved => "DIGEST MOVED",
            Kind::MissingDigests => "MISSING DIGESTS",
            Kind::DigestChainBroken => "DIGEST CHAIN BROKEN",
            Kind::NotAsDigested => "NOT AS DIGESTED",
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: Kind,
    /// The object concerned (relative to the root), if one is.
    pub object: Option<String>,
    /// What was found, for a person.
    pub detail: String,
}

/// One hash chain (a pipeline's sink) as found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// The pipeline.
    pub pipeline: String,
    /// The sink.
    pub sink: String,
    /// Entries found.
    pub entries: usize,
    /// Lowest and highest seq found.
    pub first_seq: u64,
    /// Highest seq found.
    pub last_seq: u64,
    /// Whether its entries carry HMACs.
    pub signed: bool,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The root checked.
    pub root: String,
    /// True when there is nothing in `findings`.
    pub clean: bool,
    /// Manifests read.
    pub manifests: usize,
    /// Entries read.
    pub entries: usize,
    /// Units (listed data objects) read.
    pub units: usize,
    /// Events read (listed and unlisted objects).
    pub events: u64,
    /// Bytes of data read.
    pub bytes: u64,
    /// The chains.
    pub chains: Vec<ChainReport>,
    /// The chains' signed digests, when checked with a public key.
    pub digest_chains: Vec<DigestChainReport>,
    /// Problems: any makes the archive not clean.
    pub findings: Vec<Finding>,
    /// Findings of the same kind past the report's limit, by kind.
    pub findings_not_shown: BTreeMap<String, u64>,
    /// Things a person should know that are not problems (signatures not checked, unsealed
    /// bytes accepted).
    pub notes: Vec<String>,
    /// With `--against-api`: the (sandbox, hour) pairs compared with the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_hours_compared: Option<usize>,
    /// Identified events per (sandbox, hour of cursor time), for comparing with the API.
    #[serde(skip)]
    pub hour_counts: BTreeMap<(String, i64), u64>,
    /// Per sandbox: its first and last cursor time in the archive.
    #[serde(skip)]
    pub spans_us: BTreeMap<String, (i64, i64)>,
}

/// The checkpoint database's record of one chain: `(seq, hash, unit)` in order.
pub type AnchorChain = crate::store::ChainRows;

/// What the checkpoint database says the archive holds.
#[derive(Debug, Clone, Default)]
pub struct Anchor {
    /// Its chains, by (pipeline, sink).
    pub chains: BTreeMap<(String, String), AnchorChain>,
    /// What was verified, as the pipeline sees it: entries whose unit does not lie under it are
    /// not looked for.
    pub under: Under,
}

/// Where the units verified lie.
#[derive(Debug, Clone)]
pub enum Under {
    /// A directory (relative to the working directory, or absolute).
    Dir(PathBuf),
    /// An S3 key prefix.
    Prefix(String),
}

impl Default for Under {
    fn default() -> Self {
        Under::Prefix(String::new())
    }
}

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Report per-sandbox gaps between consecutive events (by cursor time) above this, in µs.
    pub max_gap_us: Option<i64>,
    /// Accept bytes after a unit's last sealed stretch and unlisted files as notes (a running
    /// pipeline's open files), not problems.
    pub allow_unsealed: bool,
    /// Check HMACs with this key.
    pub key: Option<HmacKey>,
    /// The checkpoint database's chains (`--pipeline`).
    pub anchor: Option<Anchor>,
    /// Most findings of one kind listed (the rest are counted). 0: 100.
    pub max_findings_per_kind: usize,
    /// Check a unit that is one whole stretch by the SHA-256 its store keeps (S3's
    /// `GetObjectAttributes`) instead of reading it, where the store keeps one.
    pub stored_checksums: bool,
    /// Check the signed digests with this public key.
    pub public_key: Option<crate::manifest::DigestPublicKey>,
    /// How far the digests must reach (default: now minus two periods).
    pub horizon: Option<Horizon>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, at: &str) -> String {
        format!(r#"{{"id":"{id}","resource_id":"sb-1","inserted_at":"{at}","action":"allow"}}"#) + "\n"
    }

    /// Yields its bytes, then fails, as a compressed stream whose checksum does not match.
    struct Corrupt(std::io::Cursor<Vec<u8>>);

    impl Read for Corrupt {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "checksum mismatch",
                )),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn a_stretch_that_fails_to_decode_adds_no_repeats_or_times() {
        let t = "2026-11-26T10:00:00Z";
        let garbage = [line("evt_a", t), line("evt_b", t), line("evt_a", t)].concat();
        let mut index = EventIndex::default();
        let (read, summary) = index.read(
            Corrupt(std::io::Cursor::new(garbage.clone().into_bytes())),
            UnitCompression::None,
            "u.ndjson.gz",
            0,
        );
        assert!(read.is_err());
        assert_eq!(summary.events, 3, "the summary still says what was read");
        assert!(index.duplicates().is_empty());
        assert!(index.hours().0.is_empty());
        // Its ids are forgotten: a sound stretch holding them repeats nothing.
        let sound = [line("evt_a", t), line("evt_b", t)].concat();
        let (read, _) = index.read(sound.as_bytes(), UnitCompression::None, "v.ndjson", 0);
        assert!(read.is_ok());
        assert!(index.duplicates().is_empty());
        assert_eq!(index.hours().0.values().sum::<u64>(), 2);
        // The same bytes, decoded whole, name the repeat and keep the times.
        let (read, _) = index.read(garbage.as_bytes(), UnitCompression::None, "w.ndjson", 0);
        assert!(read.is_ok());
        let dups = index.duplicates();
        assert_eq!(dups.len(), 1, "{dups:?}");
        assert_eq!(dups[0].1, "w.ndjson");
        assert!(dups[0].0.starts_with("3 events already in v.ndjson"), "{dups:?}");
        assert_eq!(index.hours().0.values().sum::<u64>(), 5);
    }
}

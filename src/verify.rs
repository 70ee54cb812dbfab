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
//!   lacks (the newest units removed with their lines) and entries it does not hold (forged).
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
}

impl Kind {
    fn label(self) -> &'static str {
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
}

/// An entry as found, with where.
struct Found {
    entry: Entry,
    manifest: String,
    line: usize,
    /// The directory of its manifest, relative to the root ("" for the root).
    dir: String,
}

struct Findings {
    list: Vec<Finding>,
    per_kind: HashMap<Kind, usize>,
    not_shown: BTreeMap<String, u64>,
    limit: usize,
}

impl Findings {
    fn add(&mut self, kind: Kind, object: Option<&str>, detail: String) {
        let n = self.per_kind.entry(kind).or_default();
        *n += 1;
        if *n > self.limit {
            *self.not_shown.entry(kind.label().to_lowercase()).or_default() += 1;
            return;
        }
        self.list.push(Finding {
            kind,
            object: object.map(str::to_string),
            detail,
        });
    }
}

/// Check `archive`. Errors only when it cannot be read at all; everything else is a finding.
pub fn verify(archive: &dyn Archive, opts: &Options) -> std::io::Result<Report> {
    let objects = archive.list()?;
    let mut f = Findings {
        list: Vec::new(),
        per_kind: HashMap::new(),
        not_shown: BTreeMap::new(),
        limit: if opts.max_findings_per_kind == 0 {
            100
        } else {
            opts.max_findings_per_kind
        },
    };
    let mut notes = Vec::new();
    let (manifests, data): (Vec<_>, Vec<_>) =
        objects.iter().partition(|(rel, _)| manifest_dir(rel).is_some());

    // 1. Every entry of every manifest.
    let mut found: Vec<Found> = Vec::new();
    let mut signed_unchecked = false;
    for (rel, _) in &manifests {
        let dir = manifest_dir(rel).unwrap_or_default();
        let mut text = String::new();
        if let Err(e) = archive.open(rel).and_then(|mut r| r.read_to_string(&mut text)) {
            f.add(
                Kind::BadEntry,
                Some(rel),
                format!("cannot read the manifest: {e}"),
            );
            continue;
        }
        let mut last_seq: HashMap<(String, String), u64> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let entry: Entry = match serde_json::from_str(line) {
                Ok(e) => e,
                Err(e) => {
                    f.add(
                        Kind::BadEntry,
                        Some(rel),
                        format!("line {n} is not a manifest entry: {e}"),
                    );
                    continue;
                }
            };
            if entry.compute_hash() != entry.hash {
                f.add(
                    Kind::EntryAltered,
                    Some(rel),
                    format!("line {n} (entry {} of {}/{}, unit {}): the entry does not match its own hash; it was edited", entry.seq, entry.pipeline, entry.sink, entry.unit),
                );
            }
            match (&opts.key, &entry.hmac) {
                (Some(key), Some(mac)) if *mac != manifest::sign(key, &entry.hash) => f.add(
                    Kind::BadSignature,
                    Some(rel),
                    format!("line {n} (entry {}, unit {}): the HMAC does not match under the given key; the entry was forged, or the key is not the pipeline's", entry.seq, entry.unit),
                ),
                (Some(_), None) => f.add(
                    Kind::Unsigned,
                    Some(rel),
                    format!("line {n} (entry {}, unit {}): no HMAC, though a key was given", entry.seq, entry.unit),
                ),
                (None, Some(_)) => signed_unchecked = true,
                _ => {}
            }
            let chain = (entry.pipeline.clone(), entry.sink.clone());
            if let Some(prev) = last_seq.get(&chain) {
                if entry.seq <= *prev {
                    f.add(
                        Kind::OutOfOrder,
                        Some(rel),
                        format!(
                            "line {n}: entry {} of {}/{} comes after entry {prev}; entries were moved",
                            entry.seq, chain.0, chain.1
                        ),
                    );
                }
            }
            last_seq.insert(chain, entry.seq);
            found.push(Found {
                entry,
                manifest: rel.to_string(),
                line: n,
                dir: dir.clone(),
            });
        }
    }
    if manifests.is_empty() {
        f.add(
            Kind::NoManifest,
            None,
            format!("no {MANIFEST_NAME} under {}: nothing here can be verified (give the directory a file sink writes into, or the s3://bucket/prefix an S3 sink writes into, with [manifest] enabled)", archive.root()),
        );
    }
    if opts.anchor.is_none() {
        notes.push("checked without the checkpoint database: removing the newest units together with their manifest lines is only caught with --pipeline".into());
    }
    if signed_unchecked {
        notes.push("entries carry HMACs that were not checked: give the key (--hmac-key-env, or --pipeline with [manifest] hmac_key) to check them".into());
    }

    // 2. The chains.
    let mut chains: BTreeMap<(String, String), BTreeMap<u64, usize>> = BTreeMap::new();
    for (i, x) in found.iter().enumerate() {
        let chain = chains
            .entry((x.entry.pipeline.clone(), x.entry.sink.clone()))
            .or_default();
        if let Some(&other) = chain.get(&x.entry.seq) {
            let same = found[other].entry == x.entry;
            f.add(
                Kind::DuplicateEntry,
                Some(&x.manifest),
                format!(
                    "line {}: entry {} of {}/{} appears again ({}, first at {} line {})",
                    x.line,
                    x.entry.seq,
                    x.entry.pipeline,
                    x.entry.sink,
                    if same {
                        "identical"
                    } else {
                        "with different content"
                    },
                    found[other].manifest,
                    found[other].line
                ),
            );
            continue;
        }
        chain.insert(x.entry.seq, i);
    }
    let mut chain_reports = Vec::new();
    for ((pipeline, sink), entries) in &chains {
        let name = format!("{pipeline}/{sink}");
        let mut expected = 1u64;
        let mut prev: Option<&Found> = None;
        for (&seq, &i) in entries {
            let x = &found[i];
            if seq > expected {
                let what = if seq - expected == 1 {
                    format!("entry {expected}")
                } else {
                    format!("entries {expected}–{}", seq - 1)
                };
                let last_unit = x.entry.prev_unit.as_deref().unwrap_or("?");
                f.add(
                    Kind::MissingEntries,
                    None,
                    format!("chain {name}: {what} missing (the last of them listed unit {last_unit}); units were removed with their manifest lines, or lie outside the path checked"),
                );
            }
            match prev.filter(|p| p.entry.seq + 1 == seq) {
                Some(p) if x.entry.prev != p.entry.hash || x.entry.prev_unit.as_deref() != Some(p.entry.unit.as_str()) => {
                    f.add(
                        Kind::BrokenLink,
                        Some(&x.manifest),
                        format!("chain {name}: entry {seq} (unit {}) does not link to entry {} (unit {}); an entry was replaced or forged", x.entry.unit, p.entry.seq, p.entry.unit),
                    );
                }
                Some(_) => {}
                None if seq == 1 && x.entry.prev != GENESIS => f.add(
                    Kind::BrokenLink,
                    Some(&x.manifest),
                    format!("chain {name}: entry 1 (unit {}) links to an entry before it; the chain's start was replaced", x.entry.unit),
                ),
                None => {}
            }
            expected = seq + 1;
            prev = Some(x);
        }
        chain_reports.push(ChainReport {
            pipeline: pipeline.clone(),
            sink: sink.clone(),
            entries: entries.len(),
            first_seq: entries.keys().next().copied().unwrap_or(0),
            last_seq: entries.keys().next_back().copied().unwrap_or(0),
            signed: entries.values().any(|&i| found[i].entry.hmac.is_some()),
        });
    }

    // 3. The checkpoint database, when given.
    if let Some(Anchor {
        chains: anchor,
        under,
    }) = &opts.anchor
    {
        for ((pipeline, sink), entries) in &chains {
            if !anchor.contains_key(&(pipeline.clone(), sink.clone())) {
                let first = entries.values().next().map(|&i| found[i].manifest.clone());
                f.add(
                    Kind::NotInDatabase,
                    first.as_deref(),
                    format!("chain {pipeline}/{sink} ({} entries) is not in the checkpoint database; it was added, or belongs to another pipeline (verify that one's directory on its own)", entries.len()),
                );
            }
        }
        for ((pipeline, sink), rows) in anchor {
            let here = chains.get(&(pipeline.clone(), sink.clone()));
            for (seq, hash, unit) in rows {
                if !expected_under(unit, under) {
                    continue;
                }
                match here.and_then(|c| c.get(seq)).map(|&i| &found[i]) {
                    None => f.add(
                        Kind::NotInArchive,
                        None,
                        format!("chain {pipeline}/{sink}: entry {seq} (unit {unit}) is in the checkpoint database but in no manifest here; it was removed"),
                    ),
                    Some(x) if x.entry.hash != *hash => f.add(
                        Kind::NotInArchive,
                        Some(&x.manifest),
                        format!("chain {pipeline}/{sink}: entry {seq} (unit {unit}) differs from the checkpoint database's; it was replaced"),
                    ),
                    Some(_) => {}
                }
            }
            let known: std::collections::HashSet<u64> = rows.iter().map(|r| r.0).collect();
            if let Some(c) = here {
                for (seq, &i) in c {
                    if !known.contains(seq) {
                        f.add(
                            Kind::NotInDatabase,
                            Some(&found[i].manifest),
                            format!("chain {pipeline}/{sink}: entry {seq} (unit {}) is not in the checkpoint database; it was added", found[i].entry.unit),
                        );
                    }
                }
            }
        }
    }

    // 4. Units: every listed one, stretch by stretch; then the unlisted files.
    let sizes: HashMap<&str, u64> = data.iter().map(|(r, s)| (r.as_str(), *s)).collect();
    let mut by_object: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for entries in chains.values() {
        for &i in entries.values() {
            let x = &found[i];
            let name = x.entry.unit.rsplit('/').next().unwrap_or(&x.entry.unit);
            let rel = if x.dir.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", x.dir)
            };
            if !path_ends_with(&x.entry.unit, &rel) {
                f.add(
                    Kind::Misplaced,
                    Some(&rel),
                    format!(
                        "entry {} lists unit {}, but its manifest is in {}; a unit and its line were moved",
                        x.entry.seq,
                        x.entry.unit,
                        if x.dir.is_empty() { "the root" } else { &x.dir }
                    ),
                );
            }
            by_object.entry(rel).or_default().push(i);
        }
    }
    let mut seen = EventIndex::default();
    // Bytes after a unit's last sealed stretch: (object, where they start, encoding).
    let mut tails: Vec<(String, u64, UnitCompression)> = Vec::new();
    let mut units = 0usize;
    let mut events = 0u64;
    let mut bytes = 0u64;
    for (rel, idx) in &mut by_object {
        idx.sort_by_key(|&i| found[i].entry.offset);
        let Some(&size) = sizes.get(rel.as_str()) else {
            let n: u64 = idx.iter().map(|&i| found[i].entry.events).sum();
            let seqs: Vec<String> = idx.iter().map(|&i| found[i].entry.seq.to_string()).collect();
            f.add(
                Kind::Removed,
                Some(rel),
                format!(
                    "listed by entry {} ({n} events), not found; it was deleted or renamed",
                    seqs.join(", ")
                ),
            );
            continue;
        };
        units += 1;
        bytes += size;
        let mut reader = match archive.open(rel) {
            Ok(r) => r,
            Err(e) => {
                f.add(Kind::Removed, Some(rel), format!("cannot be read: {e}"));
                continue;
            }
        };
        let mut pos = 0u64;
        for &i in idx.iter() {
            let e = &found[i].entry;
            if e.offset > pos {
                let kind = if pos == 0 { Kind::Unsealed } else { Kind::Overlap };
                f.add(
                    kind,
                    Some(rel),
                    format!("bytes {pos}–{} are in no manifest entry", e.offset),
                );
                if std::io::copy(&mut (&mut reader).take(e.offset - pos), &mut std::io::sink()).is_err() {
                    break;
                }
                pos = e.offset;
            } else if e.offset < pos {
                f.add(
                    Kind::Overlap,
                    Some(rel),
                    format!(
                        "entry {} starts at byte {}, inside the stretch before it (ends at {pos})",
                        e.seq, e.offset
                    ),
                );
                continue;
            }
            if size < e.offset + e.length {
                f.add(
                    Kind::Truncated,
                    Some(rel),
                    format!(
                        "is {size} bytes; entry {} covers bytes {}–{}: the end was cut off",
                        e.seq,
                        e.offset,
                        e.offset + e.length
                    ),
                );
                pos = size;
                break;
            }
            let compression = UnitCompression::parse(&e.compression).unwrap_or(UnitCompression::None);
            let mut part = (&mut reader).take(e.length);
            let (read, summary) = seen.read(&mut part, compression, rel, e.offset);
            // A stretch that failed to decode still ends where its entry says.
            let _ = std::io::copy(&mut part, &mut std::io::sink());
            events += summary.events;
            pos += e.length;
            match read {
                Ok((_, len)) if len < e.length => {
                    f.add(Kind::Truncated, Some(rel), format!("is {} bytes; entry {} covers bytes {}–{}: the end was cut off", e.offset + len, e.seq, e.offset, e.offset + e.length));
                    pos = e.offset + len;
                    break;
                }
                Ok((hash, _)) if hash != e.sha256 => f.add(
                    Kind::Altered,
                    Some(rel),
                    format!("bytes {}–{} (entry {}, {} events) do not match their SHA-256: the content was changed", e.offset, e.offset + e.length, e.seq, e.events),
                ),
                Ok(_) if summary.events != e.events => f.add(
                    Kind::EntryAltered,
                    Some(rel),
                    format!("entry {} says {} events, the unit holds {}", e.seq, e.events, summary.events),
                ),
                Ok(_) => {}
                // The bytes hash or not; a stretch that cannot be decoded was changed.
                Err(err) => f.add(
                    Kind::Altered,
                    Some(rel),
                    format!("bytes {}–{} (entry {}) cannot be decoded as {}: {err}; the content was changed", e.offset, e.offset + e.length, e.seq, e.compression),
                ),
            }
        }
        if size > pos {
            let detail = format!("{} bytes after the last sealed stretch (from byte {pos}): appended after sealing, or not sealed yet", size - pos);
            if opts.allow_unsealed {
                notes.push(format!("{rel}: {detail} (accepted: --allow-unsealed)"));
            } else {
                f.add(Kind::Unsealed, Some(rel), format!("{detail}; a running pipeline's open files look like this (--allow-unsealed accepts them), and so do those a crash left until the pipeline's next start seals them"));
            }
            // Read after every sealed stretch, so that a repeat is blamed on the added bytes.
            let compression = idx
                .last()
                .and_then(|&i| UnitCompression::parse(&found[i].entry.compression))
                .unwrap_or(UnitCompression::None);
            tails.push((rel.clone(), pos, compression));
        }
    }
    for (rel, pos, compression) in tails {
        let Ok(mut reader) = archive.open(&rel) else {
            continue;
        };
        if std::io::copy(&mut (&mut reader).take(pos), &mut std::io::sink()).is_err() {
            continue;
        }
        events += seen.read(reader, compression, &rel, pos).1.events;
    }
    // Directories that hold a manifest: any other file in them is suspect. Elsewhere only a
    // file that holds events is (so a state directory beside the archive is not).
    let manifest_dirs: std::collections::HashSet<String> = manifests
        .iter()
        .filter_map(|(rel, _)| manifest_dir(rel))
        .collect();
    for (rel, size) in &data {
        if by_object.contains_key(rel.as_str()) {
            continue;
        }
        // Read it: a copied unit shows as duplicated events, and whether it holds events at all
        // decides what it is.
        let mut holds_events = false;
        let mut readable = false;
        if let Ok(mut reader) = archive.open(rel) {
            let mut head = Vec::new();
            if (&mut reader).take(4).read_to_end(&mut head).is_ok() {
                let compression = manifest::sniff(&head);
                let chained = std::io::Cursor::new(head).chain(reader);
                let (read, summary) = seen.read(chained, compression, rel, 0);
                readable = read.is_ok();
                holds_events = summary.events > summary.unidentified;
                if holds_events {
                    events += summary.events;
                }
            }
        }
        let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
        if !holds_events && !manifest_dirs.contains(dir) && readable {
            notes.push(format!("{rel}: not archive data (no events), not checked"));
            continue;
        }
        bytes += size;
        let detail = "in no manifest: added after the fact, or written by a pipeline that has not sealed it yet (running, or stopped by a crash: its next start seals it)".to_string();
        if opts.allow_unsealed {
            notes.push(format!("{rel}: {detail} (accepted: --allow-unsealed)"));
        } else {
            f.add(Kind::Unlisted, Some(rel), detail);
        }
    }

    // 5. Events: duplicated ids, and gaps.
    for dup in seen.duplicates() {
        f.add(Kind::DuplicateEvent, Some(&dup.1), dup.0);
    }
    if let Some(max_gap) = opts.max_gap_us {
        for (rid, gap_from, gap_to) in seen.gaps(max_gap) {
            let show = |us: i64| crate::client::format_time(us);
            f.add(
                Kind::Gap,
                None,
                format!(
                    "sandbox {rid:?}: no event between {} and {} ({} s)",
                    show(gap_from),
                    show(gap_to),
                    (gap_to - gap_from) / 1_000_000
                ),
            );
        }
    }

    let (hour_counts, spans_us) = seen.hours();
    let clean = f.list.is_empty() && f.not_shown.is_empty();
    Ok(Report {
        api_hours_compared: None,
        hour_counts,
        spans_us,
        root: archive.root(),
        clean,
        manifests: manifests.len(),
        entries: found.len(),
        units,
        events,
        bytes,
        chains: chain_reports,
        findings: f.list,
        findings_not_shown: f.not_shown,
        notes,
    })
}

/// For a manifest (a file `auditship.manifest`, or an object under `auditship.manifest/`), the
/// directory whose units it lists; `None` for anything else.
fn manifest_dir(rel: &str) -> Option<String> {
    let parts: Vec<&str> = rel.split('/').collect();
    let at = parts.iter().position(|c| *c == MANIFEST_NAME)?;
    Some(parts[..at].join("/"))
}

/// Whether `unit` (a path as a sink wrote it) ends with the relative path `rel`, component by
/// component.
fn path_ends_with(unit: &str, rel: &str) -> bool {
    unit == rel || unit.ends_with(&format!("/{rel}"))
}

/// Whether a unit written at `unit` lies under what was verified.
fn expected_under(unit: &str, under: &Under) -> bool {
    match under {
        Under::Dir(root) => under_dir(unit, root),
        Under::Prefix(prefix) => unit.starts_with(prefix.as_str()),
    }
}

/// Whether a file written at `unit` (relative to the pipeline's working directory, or absolute)
/// lies under `root`.
fn under_dir(unit: &str, root: &Path) -> bool {
    let absolute = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    };
    absolute(Path::new(unit)).starts_with(absolute(root))
}

/// Every event read: where each id was first seen, and per sandbox the cursor times.
#[derive(Default)]
struct EventIndex {
    /// Hash of (sandbox, id) → (object, byte offset of its stretch, line in the stretch).
    first: HashMap<u128, (u32, u64, u64)>,
    objects: Vec<String>,
    object_index: HashMap<String, u32>,
    /// Per (object holding the repeat, object holding the first): how many, and the first
    /// repeat's description.
    dups: BTreeMap<(u32, u32), (u64, String)>,
    times: HashMap<String, Vec<i64>>,
    /// The stretch being read: its repeats and times, kept apart until it decoded whole, so
    /// that a corrupt compressed stretch (whose decoder emits garbage before its checksum
    /// fails) adds no findings beyond `altered`.
    pending_dups: BTreeMap<(u32, u32), (u64, String)>,
    pending_times: HashMap<String, Vec<i64>>,
}

impl EventIndex {
    /// Read a stretch of `object` that starts at byte `offset` (see [`manifest::read_unit`]),
    /// adding every event to the index; returns the read's result and what the stretch holds.
    fn read(
        &mut self,
        raw: impl Read,
        compression: UnitCompression,
        object: &str,
        offset: u64,
    ) -> (std::io::Result<(String, u64)>, manifest::Summary) {
        let mut summarizer = Summarizer::default();
        let read = manifest::read_unit(raw, compression, |chunk| {
            summarizer.feed(chunk, |l| self.add(l, object, offset))
        });
        let summary = summarizer.finish_with(|l| self.add(l, object, offset));
        let pending_times = std::mem::take(&mut self.pending_times);
        let pending_dups = std::mem::take(&mut self.pending_dups);
        if read.is_ok() {
            for (rid, times) in pending_times {
                self.times.entry(rid).or_default().extend(times);
            }
            for (pair, (n, first)) in pending_dups {
                let seen = self.dups.entry(pair).or_insert((0, String::new()));
                seen.0 += n;
                if seen.1.is_empty() {
                    seen.1 = first;
                }
            }
        } else if let Some(&o) = self.object_index.get(object) {
            // Rare (the stretch is reported altered): forget the ids it added.
            self.first
                .retain(|_, &mut (fo, foff, _)| fo != o || foff != offset);
        }
        (read, summary)
    }

    fn add(&mut self, line: &manifest::Line<'_>, object: &str, offset: u64) {
        let Some(id) = line.id else { return };
        let o = match self.object_index.get(object) {
            Some(&o) => o,
            None => {
                self.objects.push(object.to_string());
                let o = (self.objects.len() - 1) as u32;
                self.object_index.insert(object.to_string(), o);
                o
            }
        };
        let key = key_of(line.resource_id, id);
        match self.first.get(&key) {
            Some(&(fo, foff, fline)) => {
                let place = |obj: u32, off: u64, l: u64| {
                    let name = self.objects.get(obj as usize).map_or("?", String::as_str);
                    if off == 0 {
                        format!("{name} line {l}")
                    } else {
                        format!("{name} (stretch at byte {off}) line {l}")
                    }
                };
                let seen = self.pending_dups.entry((o, fo)).or_insert((0, String::new()));
                seen.0 += 1;
                if seen.1.is_empty() {
                    seen.1 = format!(
                        "event {id:?} of sandbox {:?} at {} was already at {}",
                        line.resource_id,
                        place(o, offset, line.number),
                        place(fo, foff, fline)
                    );
                }
            }
            None => {
                self.first.insert(key, (o, offset, line.number));
            }
        }
        if let Some(t) = line.cursor_us {
            match self.pending_times.get_mut(line.resource_id) {
                Some(v) => v.push(t),
                None => {
                    self.pending_times.insert(line.resource_id.to_string(), vec![t]);
                }
            }
        }
    }

    /// One line per (object, object it repeats): `(detail, object)`.
    fn duplicates(&mut self) -> Vec<(String, String)> {
        let name = |o: u32| self.objects.get(o as usize).cloned().unwrap_or_default();
        std::mem::take(&mut self.dups)
            .into_iter()
            .map(|((o, fo), (n, first))| {
                let detail = if n == 1 {
                    first
                } else {
                    format!("{n} events already in {} (the first: {first})", name(fo))
                };
                (detail, name(o))
            })
            .collect()
    }

    /// Events per (sandbox, hour), and per sandbox the first and last cursor time.
    #[allow(clippy::type_complexity)]
    fn hours(&self) -> (BTreeMap<(String, i64), u64>, BTreeMap<String, (i64, i64)>) {
        let mut counts = BTreeMap::new();
        let mut spans = BTreeMap::new();
        for (rid, times) in &self.times {
            for t in times {
                *counts
                    .entry((rid.clone(), crate::store::hour_of(*t)))
                    .or_default() += 1;
            }
            if let (Some(lo), Some(hi)) = (times.iter().min(), times.iter().max()) {
                spans.insert(rid.clone(), (*lo, *hi));
            }
        }
        (counts, spans)
    }

    /// `(sandbox, from, to)` for every gap above `max_us` between consecutive cursor times.
    fn gaps(&mut self, max_us: i64) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        let mut sandboxes: Vec<_> = self.times.iter_mut().collect();
        sandboxes.sort_by(|a, b| a.0.cmp(b.0));
        for (rid, times) in sandboxes {
            times.sort_unstable();
            for w in times.windows(2) {
                if w[1] - w[0] > max_us {
                    out.push((rid.clone(), w[0], w[1]));
                }
            }
        }
        out
    }
}

/// A 128-bit digest of (sandbox, id): collisions are out of reach, and it is a quarter the size
/// of the strings.
fn key_of(rid: &str, id: &str) -> u128 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((rid.len() as u64).to_le_bytes());
    h.update(rid.as_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_le_bytes(b)
}

impl Report {
    /// Compare the archive's events per sandbox and hour with what the list endpoint returns
    /// for the same span, after the pipeline's transforms and `sink`'s route, and name the hours
    /// that differ. A sandbox's span runs from its first archived cursor time to its last, or
    /// to `shipped_until` (the checkpoint's newest cursor time) when that is later, so events
    /// removed from the end show too.
    pub async fn compare_with_api(
        &mut self,
        p: &crate::config::Pipeline,
        sink: Option<&str>,
        shipped_until: &BTreeMap<String, i64>,
    ) -> Result<(), crate::pipeline::PipelineError> {
        for (rid, (_, to)) in self.spans_us.iter_mut() {
            if let Some(t) = shipped_until.get(rid) {
                *to = (*to).max(*t);
            }
        }
        let client = crate::pipeline::client_for(p)?;
        let route = sink.and_then(|s| p.routes.get(s)).cloned().unwrap_or_default();
        let mut pipeline_chain = p.transforms.start();
        let mut sink_chain = route.chain.start();
        let mut api: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for (rid, (from, to)) in &self.spans_us {
            let listed = crate::source::list_window(&client, rid, *from, *to, p.page_limit)
                .await
                .map_err(|source| crate::pipeline::PipelineError::Source {
                    resource_id: rid.clone(),
                    source,
                })?;
            for event in listed {
                let Some(cursor) = event.cursor_us.filter(|c| (*from..=*to).contains(c)) else {
                    continue;
                };
                let first = route.pipeline_transforms.then(|| pipeline_chain.apply(&event));
                let outcome = crate::transform::route::for_sink(&event, first.as_ref(), &mut sink_chain);
                if !matches!(outcome, (_, crate::transform::Outcome::Keep(_))) {
                    continue;
                }
                *api.entry((rid.clone(), crate::store::hour_of(cursor)))
                    .or_default() += 1;
            }
        }
        let mut keys: std::collections::BTreeSet<&(String, i64)> = api.keys().collect();
        keys.extend(self.hour_counts.keys());
        let mut diffs = Vec::new();
        for key in &keys {
            let (a, h) = (
                api.get(*key).copied().unwrap_or(0),
                self.hour_counts.get(*key).copied().unwrap_or(0),
            );
            if a != h {
                diffs.push(Finding {
                    kind: Kind::ApiMismatch,
                    object: None,
                    detail: format!(
                        "sandbox {:?}, hour {}: the API holds {a} events, the archive {h}",
                        key.0,
                        crate::client::format_time(key.1)
                    ),
                });
            }
        }
        self.api_hours_compared = Some(keys.len());
        if !diffs.is_empty() {
            self.clean = false;
            self.findings.extend(diffs);
        }
        Ok(())
    }

    /// The report for a person.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let problems = self.findings.len() as u64 + self.findings_not_shown.values().sum::<u64>();
        let _ = writeln!(
            s,
            "auditship verify {}: {}",
            self.root,
            if self.clean {
                "CLEAN".to_string()
            } else {
                format!(
                    "NOT CLEAN ({problems} problem{})",
                    if problems == 1 { "" } else { "s" }
                )
            }
        );
        let _ = writeln!(
            s,
            "  read {} manifest{}, {} entries, {} units, {} events, {} bytes",
            self.manifests,
            if self.manifests == 1 { "" } else { "s" },
            self.entries,
            self.units,
            self.events,
            self.bytes
        );
        for c in &self.chains {
            let _ = writeln!(
                s,
                "  chain {}/{}: {} entries (seq {}–{}){}",
                c.pipeline,
                c.sink,
                c.entries,
                c.first_seq,
                c.last_seq,
                if c.signed { ", signed" } else { ", unsigned" }
            );
        }
        if let Some(n) = self.api_hours_compared {
            let _ = writeln!(s, "  compared {n} sandbox-hours with the API");
        }
        for x in &self.findings {
            let _ = match &x.object {
                Some(o) => writeln!(s, "  {:<16} {o}: {}", x.kind.label(), x.detail),
                None => writeln!(s, "  {:<16} {}", x.kind.label(), x.detail),
            };
        }
        for (kind, n) in &self.findings_not_shown {
            let _ = writeln!(s, "  … and {n} more of kind {kind}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
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

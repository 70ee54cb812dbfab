//! [`check`]: an evidence bundle checked offline (`auditship verify-export`).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::*;
use crate::manifest::{DigestPublicKey, SignedDigest, Summarizer};
use crate::ops::verify::{Finding, Kind};

/// The events of one sandbox a bundle proves, within its selection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SandboxEvents {
    /// Events.
    pub events: u64,
    /// The first event's id and cursor time.
    pub first_id: String,
    /// Its cursor time (RFC 3339), if it has one.
    pub first_time: Option<String>,
    /// The last event's id.
    pub last_id: String,
    /// Its cursor time.
    pub last_time: Option<String>,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BundleReport {
    /// True when there is nothing in `findings`.
    pub clean: bool,
    /// `bundle.json`, if it could be read.
    pub info: Option<BundleInfo>,
    /// The fingerprint of the key the digests were checked with.
    pub key: String,
    /// Whether that key came from the bundle itself (no `--public-key`).
    pub key_from_bundle: bool,
    /// Digests checked.
    pub digests: usize,
    /// Manifest entries checked.
    pub entries: usize,
    /// Stretches checked.
    pub stretches: usize,
    /// Events in the stretches (the selection's and any others they hold).
    pub events_in_stretches: u64,
    /// Per sandbox, the selection's events the bundle proves.
    pub selected: BTreeMap<String, SandboxEvents>,
    /// Problems: any makes the bundle not clean.
    pub findings: Vec<Finding>,
    /// Things to know that are not problems.
    pub notes: Vec<String>,
}

/// The largest small file (README, bundle.json, key, one digest, one chain's entries) read.
const SMALL_LIMIT: u64 = 1 << 30;

/// Check the bundle read from `bundle` (the `.tar.zst` bytes), with `key` or, when `None`, the
/// key inside it. Errors never: a bundle that cannot be read is a finding.
pub fn check(bundle: impl Read, key: Option<&DigestPublicKey>) -> BundleReport {
    let mut r = BundleReport::default();
    let mut findings = Vec::new();
    let mut add = |kind: Kind, object: Option<&str>, detail: String| {
        findings.push(Finding {
            kind,
            object: object.map(str::to_string),
            detail,
        })
    };
    if let Err(e) = read(bundle, key, &mut r, &mut add) {
        add(
            Kind::Altered,
            None,
            format!("the bundle cannot be read to its end: {e}; it was damaged or changed"),
        );
    }
    r.findings = findings;
    r.clean = r.findings.is_empty();
    r
}

/// The state of a check as the bundle's files go by.
#[derive(Default)]
struct Seen {
    readme: bool,
    key: Option<DigestPublicKey>,
    digests: BTreeMap<(String, String), BTreeMap<u64, SignedDigest>>,
    entries: Entries,
    /// Stretches checked, by chain and seq.
    stretches: BTreeSet<(String, String, u64)>,
    /// Each entry's stretch path to the entry's chain and seq, built at the first stretch
    /// (entries come before stretches), so finding a stretch's entry is one lookup.
    stretch_paths: Option<std::collections::HashMap<String, (String, String, u64)>>,
}

fn read(
    bundle: impl Read,
    given: Option<&DigestPublicKey>,
    r: &mut BundleReport,
    add: &mut impl FnMut(Kind, Option<&str>, String),
) -> std::io::Result<()> {
    let zstd = zstd::Decoder::new(bundle)?;
    let mut tar = tar::Archive::new(zstd);
    let mut seen = Seen {
        key: given.cloned(),
        ..Seen::default()
    };
    r.key_from_bundle = given.is_none();
    for file in tar.entries()? {
        let file = file?;
        let path = file.path()?.to_string_lossy().into_owned();
        if file.header().entry_type() != tar::EntryType::Regular {
            add(
                Kind::Unlisted,
                Some(&path),
                "not a regular file; a bundle holds only files".into(),
            );
            continue;
        }
        match path.as_str() {
            paths::README => {
                seen.readme = true;
                if read_small(file, SMALL_LIMIT)? != README {
                    add(Kind::Altered, Some(&path), "is not the README of this bundle format; it was changed".into());
                }
            }
            paths::INFO => match serde_json::from_str::<BundleInfo>(&read_small(file, SMALL_LIMIT)?) {
                Ok(info) if info.format == BUNDLE_FORMAT && info.v == BUNDLE_FORMAT_VERSION => r.info = Some(info),
                Ok(info) => add(
                    Kind::BadEntry,
                    Some(&path),
                    format!("format {} version {}: this auditship reads {BUNDLE_FORMAT} version {BUNDLE_FORMAT_VERSION}", info.format, info.v),
                ),
                Err(e) => add(Kind::BadEntry, Some(&path), format!("cannot be read: {e}")),
            },
            paths::KEY => {
                let pem = read_small(file, SMALL_LIMIT)?;
                match DigestPublicKey::from_pem(&pem) {
                    Ok(inside) => match &seen.key {
                        Some(k) if k.fingerprint() != inside.fingerprint() => add(
                            Kind::WrongKey,
                            Some(&path),
                            format!(
                                "the bundle's key is {}, not the key given ({}); the digests are checked with the key given",
                                inside.fingerprint(),
                                k.fingerprint()
                            ),
                        ),
                        Some(_) => {}
                        None => seen.key = Some(inside),
                    },
                    Err(e) => add(Kind::BadEntry, Some(&path), e.to_string()),
                }
            }
            p if p.starts_with("digests/") => digest(p, &read_small(file, SMALL_LIMIT)?, &mut seen, r, add),
            p if p.starts_with("manifest/") => entries(p, &read_small(file, SMALL_LIMIT)?, &mut seen, r, add),
            p if p.starts_with("stretches/") => stretch(p, file, &mut seen, r, add)?,
            _ => add(Kind::Unlisted, Some(&path), "not part of a bundle; it was added".into()),
        }
    }
    // Read to the very end: the zstd checksum is checked only there, and nothing may follow
    // the tar archive's end but its zero padding.
    let mut rest = tar.into_inner();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rest.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            add(
                Kind::Unlisted,
                None,
                "data after the end of the bundle's archive; it was added".into(),
            );
            std::io::copy(&mut rest, &mut std::io::sink())?;
            break;
        }
    }
    finish(&seen, r, add);
    Ok(())
}

fn digest(
    path: &str,
    text: &str,
    seen: &mut Seen,
    r: &mut BundleReport,
    add: &mut impl FnMut(Kind, Option<&str>, String),
) {
    let Some(key) = &seen.key else {
        add(
            Kind::NoDigest,
            Some(path),
            "comes before any public key (none given, none in the bundle)".into(),
        );
        return;
    };
    let d: SignedDigest = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(e) => return add(Kind::DigestAltered, Some(path), format!("is not a digest ({e})")),
    };
    if let Err(problem) = d.check(key) {
        return add(Kind::from(&problem), Some(path), problem.to_string());
    }
    if path != paths::digest(&d) {
        return add(
            Kind::DigestMoved,
            Some(path),
            format!(
                "holds digest {} of {}/{}, whose place is {}",
                d.seq,
                d.pipeline,
                d.sink,
                paths::digest(&d)
            ),
        );
    }
    r.digests += 1;
    seen.digests
        .entry((d.pipeline.clone(), d.sink.clone()))
        .or_default()
        .insert(d.seq, d);
}

fn entries(
    path: &str,
    text: &str,
    seen: &mut Seen,
    r: &mut BundleReport,
    add: &mut impl FnMut(Kind, Option<&str>, String),
) {
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let entry: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                add(
                    Kind::BadEntry,
                    Some(path),
                    format!("line {} is not a manifest entry: {e}", i + 1),
                );
                continue;
            }
        };
        if entry.compute_hash() != entry.hash {
            add(
                Kind::EntryAltered,
                Some(path),
                format!(
                    "line {} (entry {}): the entry does not match its own hash; it was edited",
                    i + 1,
                    entry.seq
                ),
            );
            continue;
        }
        if path != paths::manifest(&entry.pipeline, &entry.sink) {
            add(
                Kind::Misplaced,
                Some(path),
                format!(
                    "line {} is entry {} of {}/{}, another chain's",
                    i + 1,
                    entry.seq,
                    entry.pipeline,
                    entry.sink
                ),
            );
            continue;
        }
        r.entries += 1;
        seen.entries
            .entry((entry.pipeline.clone(), entry.sink.clone()))
            .or_default()
            .insert(entry.seq, entry);
    }
}

fn stretch(
    path: &str,
    file: impl Read,
    seen: &mut Seen,
    r: &mut BundleReport,
    add: &mut impl FnMut(Kind, Option<&str>, String),
) -> std::io::Result<()> {
    // Entries come before stretches: the one this stretch belongs to is known by its path.
    let entries = &seen.entries;
    let index = seen.stretch_paths.get_or_insert_with(|| {
        entries
            .values()
            .flat_map(|c| c.values())
            .map(|e| (paths::stretch(e), (e.pipeline.clone(), e.sink.clone(), e.seq)))
            .collect()
    });
    let entry = index
        .get(path)
        .and_then(|(p, s, seq)| entries.get(&(p.clone(), s.clone()))?.get(seq))
        .cloned();
    let Some(e) = entry else {
        add(
            Kind::Unlisted,
            Some(path),
            "a stretch no manifest entry in the bundle describes".into(),
        );
        return Ok(());
    };
    let compression = auditship_sink::UnitCompression::parse(&e.compression)
        .unwrap_or(auditship_sink::UnitCompression::None);
    let selection = r.info.as_ref().map(|i| i.selection.clone()).unwrap_or_default();
    let mut summarizer = Summarizer::default();
    let mut selected: Vec<(String, String, Option<i64>)> = Vec::new();
    let mut visit = |l: &crate::manifest::Line<'_>| {
        if let Some(id) = l.id {
            if selection.takes(l.resource_id, l.cursor_us) {
                selected.push((l.resource_id.to_string(), id.to_string(), l.cursor_us));
            }
        }
    };
    let read = crate::manifest::read_unit(file, compression, |chunk: Bytes| {
        summarizer.feed(chunk, &mut visit)
    });
    let summary = summarizer.finish_with(&mut visit);
    match read {
        Ok((sha256, length)) if sha256 == e.sha256 && length == e.length => {
            if summary.events != e.events {
                add(
                    Kind::EntryAltered,
                    Some(path),
                    format!(
                        "entry {} says {} events, the stretch holds {}",
                        e.seq, e.events, summary.events
                    ),
                );
            }
        }
        Ok(_) => {
            add(
                Kind::Altered,
                Some(path),
                format!(
                    "does not match the SHA-256 and length of entry {}: the content was changed",
                    e.seq
                ),
            );
            return Ok(());
        }
        Err(err) => {
            add(
                Kind::Altered,
                Some(path),
                format!(
                    "cannot be decoded as {}: {err}; the content was changed",
                    e.compression
                ),
            );
            return Ok(());
        }
    }
    r.stretches += 1;
    r.events_in_stretches += summary.events;
    seen.stretches.insert((e.pipeline.clone(), e.sink.clone(), e.seq));
    for (rid, id, at) in selected {
        let s = r.selected.entry(rid).or_default();
        let time = at.map(crate::client::format_time);
        if s.events == 0 {
            s.first_id = id.clone();
            s.first_time = time.clone();
        }
        s.events += 1;
        s.last_id = id;
        s.last_time = time;
    }
    Ok(())
}

/// What can only be said once everything was read: the runs of digests, the entries they list,
/// the stretches of the selection.
fn finish(seen: &Seen, r: &mut BundleReport, add: &mut impl FnMut(Kind, Option<&str>, String)) {
    if !seen.readme {
        add(Kind::Removed, Some(paths::README), "missing".into());
    }
    let Some(info) = r.info.clone() else {
        add(
            Kind::Removed,
            Some(paths::INFO),
            "missing or unreadable: the bundle says nothing of what it holds".into(),
        );
        return;
    };
    r.key = seen.key.as_ref().map(|k| k.fingerprint()).unwrap_or_default();
    if r.key_from_bundle {
        r.notes.push(format!(
            "checked with the key inside the bundle ({}): compare it with the fingerprint the archive's owner gave you, or pass --public-key",
            r.key
        ));
    }
    let no_entries = BTreeMap::new();
    for chain in &info.chains {
        let name = format!("{}/{}", chain.pipeline, chain.sink);
        let key = (chain.pipeline.clone(), chain.sink.clone());
        let digests = seen.digests.get(&key);
        let entries = seen.entries.get(&key).unwrap_or(&no_entries);
        let (first, last) = chain.digests;
        let mut prev: Option<&SignedDigest> = None;
        let mut listed = BTreeSet::new();
        for seq in first..=last {
            let Some(d) = digests.and_then(|c| c.get(&seq)) else {
                add(Kind::MissingDigests, None, format!("chain {name}: digest {seq} of the run {first}–{last} is not in the bundle (or does not verify)"));
                prev = None;
                continue;
            };
            if let Some(p) = prev {
                if let Err(e) = d.follows(Some(p)) {
                    add(Kind::DigestChainBroken, Some(&paths::digest(d)), e.to_string());
                }
            }
            for de in &d.entries {
                listed.insert(de.seq);
                match entries.get(&de.seq) {
                    None => add(
                        Kind::MissingEntries,
                        Some(&paths::manifest(&chain.pipeline, &chain.sink)),
                        format!(
                            "chain {name}: digest {} lists entry {} (unit {}), which the bundle lacks",
                            d.seq, de.seq, de.unit
                        ),
                    ),
                    Some(e) if e.hash != de.hash => add(
                        Kind::NotAsDigested,
                        Some(&paths::manifest(&chain.pipeline, &chain.sink)),
                        format!(
                            "chain {name}: entry {} is not the entry digest {} signed",
                            de.seq, d.seq
                        ),
                    ),
                    Some(_) => {}
                }
            }
            prev = Some(d);
        }
        if let Some(extra) = digests.and_then(|c| c.keys().find(|s| **s < first || **s > last)) {
            add(
                Kind::Unlisted,
                None,
                format!("chain {name}: digest {extra} is outside the run {first}–{last} bundle.json names"),
            );
        }
        for (seq, e) in entries {
            if !listed.contains(seq) {
                add(
                    Kind::NotAsDigested,
                    Some(&paths::manifest(&chain.pipeline, &chain.sink)),
                    format!("chain {name}: entry {seq} is listed by no digest in the bundle; it was added"),
                );
                continue;
            }
            let has = seen
                .stretches
                .contains(&(chain.pipeline.clone(), chain.sink.clone(), *seq));
            let wanted = chain.stretches.contains(seq);
            if info.selection.touches(&e.sandboxes) && !has {
                add(Kind::Removed, Some(&paths::stretch(e)), format!("chain {name}: entry {seq} (unit {}) holds events of the selection, and its stretch is not in the bundle (or does not match)", e.unit));
            } else if wanted && !has {
                add(Kind::Removed, Some(&paths::stretch(e)), format!("chain {name}: bundle.json names the stretch of entry {seq}, which is not in the bundle (or does not match)"));
            }
        }
    }
    let named: BTreeSet<(String, String)> = info
        .chains
        .iter()
        .map(|c| (c.pipeline.clone(), c.sink.clone()))
        .collect();
    for chain in seen.digests.keys().chain(seen.entries.keys()) {
        if !named.contains(chain) {
            add(
                Kind::Unlisted,
                None,
                format!(
                    "chain {}/{} is in the bundle but not in bundle.json",
                    chain.0, chain.1
                ),
            );
        }
    }
    if info.key != r.key && !r.key.is_empty() {
        add(
            Kind::WrongKey,
            Some(paths::INFO),
            format!(
                "bundle.json names key {}, the digests were checked with {}",
                info.key, r.key
            ),
        );
    }
}

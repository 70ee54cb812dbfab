//! The check itself: every manifest, every unit, every chain, every event id.

use super::*;

/// An entry as found, with where.
pub(super) struct Found {
    entry: Entry,
    manifest: String,
    line: usize,
    /// The directory of its manifest, relative to the root ("" for the root).
    dir: String,
}

pub(super) struct Findings {
    list: Vec<Finding>,
    per_kind: HashMap<Kind, usize>,
    not_shown: BTreeMap<String, u64>,
    limit: usize,
}

impl Findings {
    pub(super) fn add(&mut self, kind: Kind, object: Option<&str>, detail: String) {
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
    // auditship's own names beside the data (an archive's lock) are neither data nor manifests.
    let own = |rel: &str| {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        name.starts_with(auditship_sink::RESERVED_PREFIX) && name != MANIFEST_NAME
    };
    let (digest_objects, objects): (Vec<_>, Vec<_>) = objects
        .iter()
        .partition(|(rel, _)| super::digests::is_digest(rel));
    let (manifests, data): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .filter(|(rel, _)| manifest_dir(rel).is_some() || !own(rel))
        .partition(|(rel, _)| manifest_dir(rel).is_some());

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
    if opts.anchor.is_none() && opts.public_key.is_none() {
        notes.push("checked without the checkpoint database or a public key: removing the newest units together with their manifest lines is only caught with --pipeline, or --public-key when the pipeline signs digests".into());
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

    // 3. The signed digests, with the public key; the checkpoint database, when given.
    let listed: super::digests::Listed = chains
        .iter()
        .map(|(chain, entries)| {
            let by_seq = entries
                .iter()
                .map(|(seq, &i)| (*seq, (found[i].entry.hash.clone(), found[i].entry.unit.clone())))
                .collect();
            (chain.clone(), by_seq)
        })
        .collect();
    let digest_chains =
        super::digests::check_digests(archive, &digest_objects, &listed, opts, &mut f, &mut notes);
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
    // Units checked by the store's checksum, without reading them.
    let mut by_attributes = 0usize;
    // Units of rows (Parquet), checked by their hash without reading their events.
    let mut by_hash_only = 0usize;
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
        if opts.stored_checksums {
            if let Some(verdict) = by_stored_checksum(archive, rel, size, idx, &found) {
                let e = &found[idx[0]].entry;
                events += e.events;
                by_attributes += 1;
                if !verdict {
                    f.add(
                        Kind::Altered,
                        Some(rel),
                        format!("its stored SHA-256 is not the one entry {} hashed ({} events): the content was replaced", e.seq, e.events),
                    );
                }
                continue;
            }
        }
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
            let (read, counted) = if compression.is_ndjson() {
                let (read, summary) = seen.read(&mut part, compression, rel, e.offset);
                (read, summary.events)
            } else {
                // Rows, not lines (a Security Lake source's Parquet): checked by its SHA-256,
                // its events counted from the entry.
                by_hash_only += 1;
                (hash_all(&mut part), e.events)
            };
            // A stretch that failed to decode still ends where its entry says.
            let _ = std::io::copy(&mut part, &mut std::io::sink());
            events += counted;
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
                Ok(_) if counted != e.events => f.add(
                    Kind::EntryAltered,
                    Some(rel),
                    format!("entry {} says {} events, the unit holds {}", e.seq, e.events, counted),
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

    if by_attributes > 0 {
        notes.push(format!(
            "{by_attributes} units were checked by the SHA-256 the store keeps (--s3-checksums), without reading them: their events were counted from their entries and not checked for repeats or gaps"
        ));
    }

    if by_hash_only > 0 {
        notes.push(format!(
            "{by_hash_only} Parquet units were checked by their SHA-256: their rows are not read, so their events were counted from their entries and not checked for repeats or gaps"
        ));
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
        digest_chains,
        findings: f.list,
        findings_not_shown: f.not_shown,
        notes,
    })
}

/// Check a unit by the SHA-256 its store keeps, when it is one stretch covering the whole
/// object and the store keeps a whole-object SHA-256: `Some(matches)`, else `None` (read it).
fn by_stored_checksum(
    archive: &dyn Archive,
    rel: &str,
    size: u64,
    idx: &[usize],
    found: &[Found],
) -> Option<bool> {
    let [only] = idx else { return None };
    let e = &found[*only].entry;
    if e.offset != 0 || e.length != size {
        return None;
    }
    let stored = archive.stored_sha256(rel).ok()??;
    Some(manifest::hex(&stored) == e.sha256)
}

/// The SHA-256 (lowercase hex) and length of everything `r` gives.
fn hash_all(r: &mut impl Read) -> std::io::Result<(String, u64)> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((manifest::hex(&hasher.finalize()), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// For a manifest (a file `auditship.manifest`, or an object under `auditship.manifest/`), the
/// directory whose units it lists; `None` for anything else.
///
/// A manifest under [`MIRROR_DIR`](auditship_sink::MIRROR_DIR) lists the units of the same
/// directory without it (`ext/s/_auditship/day=1/auditship.manifest/…` → `ext/s/day=1`).
pub(crate) fn manifest_dir(rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = rel.split('/').collect();
    let at = parts.iter().position(|c| *c == MANIFEST_NAME)?;
    parts.truncate(at);
    if let Some(m) = parts.iter().position(|c| *c == auditship_sink::MIRROR_DIR) {
        parts.remove(m);
    }
    Some(parts.join("/"))
}

/// Whether `unit` (a path as a sink wrote it) ends with the relative path `rel`, component by
/// component.
pub(super) fn path_ends_with(unit: &str, rel: &str) -> bool {
    unit == rel || unit.ends_with(&format!("/{rel}"))
}

/// Whether a unit written at `unit` lies under what was verified.
pub(super) fn expected_under(unit: &str, under: &Under) -> bool {
    match under {
        Under::Dir(root) => under_dir(unit, root),
        Under::Prefix(prefix) => unit.starts_with(prefix.as_str()),
    }
}

/// Whether a file written at `unit` (relative to the pipeline's working directory, or absolute)
/// lies under `root`.
pub(super) fn under_dir(unit: &str, root: &Path) -> bool {
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

//! [`export`]: cut a bundle out of an archive.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};

use super::*;
use crate::manifest::{DigestPublicKey, SignedDigest};
use crate::ops::verify::Archive;

/// Why no bundle was written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the archive or writing the bundle failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The archive does not prove what was asked for: it must verify first.
    #[error("{0}; run `auditship verify` on the archive with the same public key to see every problem")]
    Unproven(String),
    /// Nothing matches the selection.
    #[error("no sealed, digested stretch of the archive holds events of the selection{0}")]
    Empty(String),
    /// The archive holds units a bundle cannot carry yet.
    #[error("{0}")]
    Unsupported(String),
}

impl ExportError {
    /// Whether trying again may help (a read or write that failed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ExportError::Io { .. })
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportSummary {
    /// Chains in the bundle.
    pub chains: usize,
    /// Digests.
    pub digests: usize,
    /// Manifest entries.
    pub entries: usize,
    /// Stretches of data.
    pub stretches: usize,
    /// Bytes of data (as stored).
    pub bytes: u64,
    /// Entries of the selection sealed after their chain's newest digest: not signed yet, so
    /// left out (export again after the next digest).
    pub left_out_unsigned: usize,
}

/// An entry as found in the archive: where its unit lies (relative to the root).
struct Found {
    entry: Entry,
    line: String,
    unit_rel: String,
}

/// One chain's part of a bundle: what `bundle.json` says of it, its run of digests (with their
/// text as published), the selection's entries.
struct Planned<'a> {
    chain: BundleChain,
    run: Vec<&'a (SignedDigest, String)>,
    selected: Vec<&'a Found>,
}

/// Write the bundle of `selection` from `archive` to `out`, its digests checked under `key`.
/// Only what the digests prove goes in; a digest that does not verify, a hole in the run of
/// digests, an entry missing or a stretch that does not match its hash stops the export.
pub fn export(
    archive: &dyn Archive,
    key: &DigestPublicKey,
    selection: &Selection,
    out: impl Write,
) -> Result<ExportSummary, ExportError> {
    let io = |what: String| move |source| ExportError::Io { what, source };
    let objects = archive
        .list()
        .map_err(io(format!("listing {}", archive.root())))?;
    // Every entry and digest, by chain.
    let mut entries: BTreeMap<(String, String), BTreeMap<u64, Found>> = BTreeMap::new();
    let mut digests: BTreeMap<(String, String), BTreeMap<u64, (SignedDigest, String)>> = BTreeMap::new();
    for (rel, _) in &objects {
        if crate::ops::verify::is_digest(rel) {
            if !crate::ops::verify::is_digest_file(rel) {
                continue;
            }
            let text =
                read_small(archive.open(rel).map_err(io(rel.clone()))?, 64 << 20).map_err(io(rel.clone()))?;
            let d: SignedDigest = serde_json::from_str(&text)
                .map_err(|e| ExportError::Unproven(format!("{rel} is not a digest ({e})")))?;
            d.check(key)
                .map_err(|e| ExportError::Unproven(format!("{rel}: {e}")))?;
            if !rel.ends_with(&d.file_name()) {
                return Err(ExportError::Unproven(format!(
                    "{rel} holds digest {} of another name",
                    d.seq
                )));
            }
            digests
                .entry((d.pipeline.clone(), d.sink.clone()))
                .or_default()
                .insert(d.seq, (d, text));
        } else if let Some(dir) = crate::ops::verify::manifest_dir(rel) {
            let text =
                read_small(archive.open(rel).map_err(io(rel.clone()))?, 1 << 30).map_err(io(rel.clone()))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let entry: Entry = serde_json::from_str(line).map_err(|e| {
                    ExportError::Unproven(format!("{rel} holds a line that is not an entry ({e})"))
                })?;
                if auditship_sink::UnitCompression::parse(&entry.compression).is_some_and(|c| !c.is_ndjson())
                {
                    return Err(ExportError::Unsupported(format!(
                        "{rel} lists {} units ({}): an export bundle carries NDJSON archives only, so far; check this archive with `auditship verify {} --public-key KEY`",
                        entry.compression,
                        entry.unit,
                        archive.root()
                    )));
                }
                let name = entry.unit.rsplit('/').next().unwrap_or(&entry.unit);
                let unit_rel = if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                };
                entries
                    .entry((entry.pipeline.clone(), entry.sink.clone()))
                    .or_default()
                    .insert(
                        entry.seq,
                        Found {
                            line: line.to_string(),
                            entry,
                            unit_rel,
                        },
                    );
            }
        }
    }

    let mut summary = ExportSummary::default();
    // Per chain: the run of digests that lists the selection's entries.
    let mut plan: Vec<Planned<'_>> = Vec::new();
    for (chain, found) in &entries {
        let Some(chain_digests) = digests.get(chain) else {
            continue;
        };
        let listed_in: HashMap<u64, u64> = chain_digests
            .values()
            .flat_map(|(d, _)| d.entries.iter().map(|e| (e.seq, d.seq)))
            .collect();
        let selected: Vec<&Found> = found
            .values()
            .filter(|f| selection.touches(&f.entry.sandboxes))
            .collect();
        let (signed, unsigned): (Vec<&Found>, Vec<&Found>) = selected
            .into_iter()
            .partition(|f| listed_in.contains_key(&f.entry.seq));
        summary.left_out_unsigned += unsigned.len();
        let (Some(first), Some(last)) = (
            signed.iter().map(|f| listed_in[&f.entry.seq]).min(),
            signed.iter().map(|f| listed_in[&f.entry.seq]).max(),
        ) else {
            continue;
        };
        let mut run = Vec::new();
        for seq in first..=last {
            let d = chain_digests.get(&seq).ok_or_else(|| {
                ExportError::Unproven(format!("digest {seq} of {}/{} is missing", chain.0, chain.1))
            })?;
            if let Some(prev) = run.last().map(|(p, _): &&(SignedDigest, String)| p) {
                d.0.follows(Some(prev))
                    .map_err(|e| ExportError::Unproven(e.to_string()))?;
            }
            run.push(d);
        }
        let mut listed = 0u64;
        for (d, _) in &run {
            for e in &d.entries {
                let f = found.get(&e.seq).ok_or_else(|| {
                    ExportError::Unproven(format!(
                        "digest {} of {}/{} lists entry {} (unit {}), which no manifest holds",
                        d.seq, chain.0, chain.1, e.seq, e.unit
                    ))
                })?;
                if f.entry.hash != e.hash || f.entry.compute_hash() != e.hash {
                    return Err(ExportError::Unproven(format!(
                        "entry {} of {}/{} is not the entry digest {} signed",
                        e.seq, chain.0, chain.1, d.seq
                    )));
                }
                listed += 1;
            }
        }
        plan.push(Planned {
            chain: BundleChain {
                pipeline: chain.0.clone(),
                sink: chain.1.clone(),
                digests: (first, last),
                entries: listed,
                stretches: signed.iter().map(|f| f.entry.seq).collect(),
            },
            run,
            selected: signed,
        });
    }
    if plan.is_empty() {
        let why = if summary.left_out_unsigned > 0 {
            format!(
                " yet: {} matching entries are sealed after the newest digest; export again after the next one",
                summary.left_out_unsigned
            )
        } else if digests.is_empty() {
            format!(
                " (there is no signed digest under {}/: does the pipeline sign them?)",
                auditship_sink::DIGEST_DIR
            )
        } else {
            String::new()
        };
        return Err(ExportError::Empty(why));
    }

    let info = BundleInfo {
        format: BUNDLE_FORMAT.into(),
        v: BUNDLE_FORMAT_VERSION,
        created_at: crate::client::format_time(chrono::Utc::now().timestamp_micros()),
        source: archive.root(),
        selection: selection.clone(),
        key: key.fingerprint(),
        chains: plan.iter().map(|p| p.chain.clone()).collect(),
    };
    let pem = key
        .pem()
        .map_err(|e| ExportError::Unproven(format!("the public key: {e}")))?;
    let mut zstd = zstd::Encoder::new(out, 3).map_err(io("starting the bundle".into()))?;
    zstd.include_checksum(true)
        .map_err(io("starting the bundle".into()))?;
    let mut tar = tar::Builder::new(zstd);
    let mtime = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let add = |tar: &mut tar::Builder<_>, path: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .map_err(io(format!("writing {path} into the bundle")))
    };
    let small = |tar: &mut tar::Builder<_>, path: &str, text: &str| {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, text.as_bytes())
            .map_err(io(format!("writing {path} into the bundle")))
    };
    small(&mut tar, paths::README, README)?;
    let info_json = serde_json::to_string_pretty(&info).unwrap_or_default() + "\n";
    small(&mut tar, paths::INFO, &info_json)?;
    small(&mut tar, paths::KEY, &pem)?;
    for Planned { chain, run, .. } in &plan {
        for (d, text) in run {
            small(&mut tar, &paths::digest(d), text)?;
            summary.digests += 1;
        }
        let found = &entries[&(chain.pipeline.clone(), chain.sink.clone())];
        let mut lines = String::new();
        for (d, _) in run {
            for e in &d.entries {
                lines.push_str(&found[&e.seq].line);
                lines.push('\n');
                summary.entries += 1;
            }
        }
        small(&mut tar, &paths::manifest(&chain.pipeline, &chain.sink), &lines)?;
    }
    for Planned { selected, .. } in &plan {
        for f in selected {
            let e = &f.entry;
            let what = format!("reading {} (entry {})", f.unit_rel, e.seq);
            let mut raw = archive.open(&f.unit_rel).map_err(io(what.clone()))?;
            std::io::copy(&mut (&mut raw).take(e.offset), &mut std::io::sink()).map_err(io(what.clone()))?;
            let mut hashing = crate::manifest::Hashing {
                inner: raw.take(e.length),
                hasher: Sha256::new(),
                count: 0,
            };
            add(&mut tar, &paths::stretch(e), e.length, &mut hashing)?;
            let sha256 = crate::manifest::hex(&hashing.hasher.finalize());
            if hashing.count != e.length || sha256 != e.sha256 {
                return Err(ExportError::Unproven(format!(
                    "{}: bytes {}–{} (entry {}) do not match their SHA-256",
                    f.unit_rel,
                    e.offset,
                    e.offset + e.length,
                    e.seq
                )));
            }
            summary.stretches += 1;
            summary.bytes += e.length;
        }
    }
    summary.chains = plan.len();
    let zstd = tar.into_inner().map_err(io("finishing the bundle".into()))?;
    let mut out = zstd.finish().map_err(io("finishing the bundle".into()))?;
    out.flush().map_err(io("finishing the bundle".into()))?;
    Ok(summary)
}

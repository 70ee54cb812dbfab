//! The signed digests (`auditship.digest/` at the archive's root), checked with nothing but
//! the public key: every digest's signature, the chain of digests without a hole up to the
//! horizon, and every manifest entry a digest lists against the manifests found.
//!
//! What each finding means for an archive:
//! - a digest whose content does not hash to its hash, or does not parse: edited;
//! - a signature that does not verify, or a digest signed by another key: forged, or the key
//!   given is not the pipeline's;
//! - a digest under a name other than its own (seq and period): moved, or replayed from
//!   another period;
//! - a hole in the seqs, or a chain whose newest digest ends before the horizon (now minus two
//!   periods, or `--until`) without the pipeline's signed word that it stopped there: digests
//!   removed, with whatever they listed;
//! - an entry a digest lists that no manifest holds, or holds with other content: units and
//!   their manifest lines removed or replaced.

use super::check::Findings;
use super::*;
use crate::manifest::SignedDigest;

/// What the digests of one chain showed.
#[derive(Debug, Clone, Serialize)]
pub struct DigestChainReport {
    /// The pipeline.
    pub pipeline: String,
    /// The sink.
    pub sink: String,
    /// Digests found that verify.
    pub digests: usize,
    /// The newest seq.
    pub last_seq: u64,
    /// Where the newest digest's period ends (RFC 3339).
    pub through: String,
    /// Whether the newest digest records a clean stop.
    pub stopped: bool,
    /// The last manifest entry the digests list.
    pub entries_through: u64,
}

/// How far the digests must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horizon {
    /// `--until`: every chain's digests reach this time (µs since the Unix epoch).
    Until(i64),
    /// Now (µs) minus two periods; a chain that ends earlier with a signed stop is accepted
    /// with a note.
    Now(i64),
}

impl Default for Horizon {
    fn default() -> Self {
        Horizon::Now(chrono::Utc::now().timestamp_micros())
    }
}

/// Whether `rel`, under a digest directory, is named as a digest is (`….json`, not hidden: a
/// publisher's temporary file is neither).
pub(crate) fn is_digest_file(rel: &str) -> bool {
    rel.ends_with(".json") && !rel.rsplit('/').next().is_some_and(|n| n.starts_with('.'))
}

impl From<&crate::manifest::DigestProblem> for Kind {
    /// The finding a digest's own problem is.
    fn from(problem: &crate::manifest::DigestProblem) -> Kind {
        use crate::manifest::DigestProblem;
        match problem {
            DigestProblem::OtherKey { .. } => Kind::WrongKey,
            DigestProblem::Edited { .. } => Kind::DigestAltered,
            DigestProblem::BadSignature { .. } => Kind::BadDigestSignature,
            DigestProblem::Broken { .. } => Kind::DigestChainBroken,
        }
    }
}

/// Whether `rel` (an archive's object) is under a digest directory (`auditship.digest/`).
pub fn is_digest(rel: &str) -> bool {
    rel.split('/').any(|c| c == auditship_sink::DIGEST_DIR)
}

/// The manifest entries found, per chain (pipeline, sink): by seq, the entry's hash and unit.
pub(super) type Listed = BTreeMap<(String, String), BTreeMap<u64, (String, String)>>;

/// A chain's digests by seq: `None` where a digest is there but does not verify (reported
/// already, and no hole).
type Chain = BTreeMap<u64, Option<(String, SignedDigest)>>;

/// Check the digests among `objects` (relative paths under a digest directory), and the
/// manifest entries they list against `entries` (per chain, seq to the entry's hash and unit).
pub(super) fn check_digests(
    archive: &dyn Archive,
    objects: &[&(String, u64)],
    entries: &Listed,
    opts: &Options,
    f: &mut Findings,
    notes: &mut Vec<String>,
) -> Vec<DigestChainReport> {
    let Some(key) = &opts.public_key else {
        if !objects.is_empty() {
            notes.push(format!(
                "{} signed digests found, not checked: give the pipeline's public key (--public-key FILE) to check them",
                objects.len()
            ));
        }
        return Vec::new();
    };
    let mut chains: BTreeMap<(String, String), Chain> = BTreeMap::new();
    for (rel, _) in objects {
        if !is_digest_file(rel) {
            notes.push(format!(
                "{rel}: not a digest (a digest's name ends in .json), not checked"
            ));
            continue;
        }
        let mut text = String::new();
        if let Err(e) = archive.open(rel).and_then(|mut r| r.read_to_string(&mut text)) {
            f.add(Kind::DigestAltered, Some(rel), format!("cannot be read: {e}"));
            continue;
        }
        let d: SignedDigest = match serde_json::from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                f.add(
                    Kind::DigestAltered,
                    Some(rel),
                    format!("is not a digest ({e}); it was edited or replaced"),
                );
                continue;
            }
        };
        let chain = (d.pipeline.clone(), d.sink.clone());
        let verdict = d.check(key);
        if let Err(problem) = &verdict {
            f.add(Kind::from(problem), Some(rel), problem.to_string());
        } else if !rel.ends_with(&d.file_name()) {
            // Signed and intact, but not where its seq and period put it.
            f.add(
                Kind::DigestMoved,
                Some(rel),
                format!(
                    "holds digest {} of {}/{} (period {} to {}), whose name is {}: it was moved, or replayed from another period",
                    d.seq, d.pipeline, d.sink, d.period_start, d.period_end, d.file_name()
                ),
            );
            continue;
        }
        let slot = chains.entry(chain).or_default();
        if slot.contains_key(&d.seq) {
            f.add(
                Kind::DigestMoved,
                Some(rel),
                format!("a second digest {} of {}/{}", d.seq, d.pipeline, d.sink),
            );
            continue;
        }
        slot.insert(d.seq, verdict.is_ok().then(|| (rel.to_string(), d)));
    }
    for (pipeline, sink) in entries.keys() {
        if !chains.contains_key(&(pipeline.clone(), sink.clone())) {
            f.add(
                Kind::NoDigest,
                None,
                format!("chain {pipeline}/{sink} has manifest entries but no signed digest under {}/: the digests were removed, or the pipeline does not sign ([manifest] signing_key_file)", auditship_sink::DIGEST_DIR),
            );
        }
    }
    if chains.is_empty() && entries.is_empty() {
        f.add(
            Kind::NoDigest,
            None,
            format!("no signed digest under {}/ here (give the archive's root: the fixed part of the sink's path or key prefix)", auditship_sink::DIGEST_DIR),
        );
    }
    let mut reports = Vec::new();
    for ((pipeline, sink), chain) in &chains {
        let name = format!("{pipeline}/{sink}");
        let listed = entries.get(&(pipeline.clone(), sink.clone()));
        reports.push(check_chain(
            &name,
            chain,
            listed,
            opts.horizon.unwrap_or_default(),
            f,
            notes,
        ));
    }
    reports
}

/// One chain of digests: holes, links, the entries listed, the horizon.
fn check_chain(
    name: &str,
    chain: &Chain,
    listed: Option<&BTreeMap<u64, (String, String)>>,
    horizon: Horizon,
    f: &mut Findings,
    notes: &mut Vec<String>,
) -> DigestChainReport {
    let mut expected = 1u64;
    let mut prev: Option<&SignedDigest> = None;
    let mut newest: Option<&SignedDigest> = None;
    let mut good = 0;
    for (&seq, slot) in chain {
        if seq > expected {
            let what = if seq - expected == 1 {
                format!("digest {expected} is")
            } else {
                format!("digests {expected}–{} are", seq - 1)
            };
            f.add(
                Kind::MissingDigests,
                None,
                format!("chain {name}: {what} missing; they were removed, with whatever they listed"),
            );
            prev = None;
        }
        expected = seq + 1;
        let Some((rel, d)) = slot else {
            prev = None;
            continue;
        };
        good += 1;
        let linked = match prev {
            Some(p) => d.follows(Some(p)),
            None if seq == 1 => d.follows(None),
            // After a hole or a digest that does not verify: its own entries still must be
            // consecutive, which `follows` checks with no predecessor only for the first.
            None => Ok(()),
        };
        if let Err(e) = linked {
            f.add(Kind::DigestChainBroken, Some(rel), e.to_string());
        }
        for e in &d.entries {
            match listed.and_then(|l| l.get(&e.seq)) {
                None => f.add(
                    Kind::MissingEntries,
                    Some(rel),
                    format!("chain {name}: digest {} lists entry {} (unit {}, {} events), which no manifest here holds; the unit was removed with its manifest line", d.seq, e.seq, e.unit, e.events),
                ),
                Some((hash, unit)) if *hash != e.hash => f.add(
                    Kind::NotAsDigested,
                    Some(rel),
                    format!("chain {name}: entry {} (unit {unit}) is not the entry digest {} signed; it was replaced", e.seq, d.seq),
                ),
                Some(_) => {}
            }
        }
        prev = Some(d);
        newest = Some(d);
    }
    let Some(last) = newest else {
        return DigestChainReport {
            pipeline: String::new(),
            sink: String::new(),
            digests: 0,
            last_seq: 0,
            through: String::new(),
            stopped: false,
            entries_through: 0,
        };
    };
    // Entries after the newest digest: sealed since, not yet signed.
    if let Some(l) = listed {
        let after = l.range(last.through + 1..).count();
        if after > 0 {
            notes.push(format!(
                "chain {name}: {after} manifest entries after the newest digest (period end {}) are not covered by a signature yet; the next digest lists them",
                last.period_end
            ));
        }
    }
    let end = crate::client::parse_time(&last.period_end).unwrap_or(i64::MIN);
    let interval_us = i64::try_from(last.interval_ms)
        .unwrap_or(i64::MAX / 4)
        .saturating_mul(1000);
    match horizon {
        Horizon::Until(until) if end < until => f.add(
            Kind::MissingDigests,
            None,
            format!(
                "chain {name}: the digests end at {}{}, before --until {}: nothing here proves the archive after that",
                last.period_end,
                if last.stopped { " (where the pipeline stopped)" } else { "" },
                crate::client::format_time(until)
            ),
        ),
        Horizon::Now(now) if end < now.saturating_sub(interval_us.saturating_mul(2)) => {
            if last.stopped {
                notes.push(format!(
                    "chain {name}: the digests end at {}, where the pipeline stopped (its signed word); if it ran after that, pass --until to require digests that far",
                    last.period_end
                ));
            } else {
                f.add(
                    Kind::MissingDigests,
                    None,
                    format!(
                        "chain {name}: the newest digest ends at {}, and one is cut every {} s: those after it are missing (removed with the units they listed, or the pipeline crashed then and has not run since); pass --until if the pipeline stopped then",
                        last.period_end,
                        last.interval_ms / 1000
                    ),
                );
            }
        }
        _ => {}
    }
    DigestChainReport {
        pipeline: last.pipeline.clone(),
        sink: last.sink.clone(),
        digests: good,
        last_seq: last.seq,
        through: last.period_end.clone(),
        stopped: last.stopped,
        entries_through: last.through,
    }
}

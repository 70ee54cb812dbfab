//! Completeness reports: what `auditship reconcile --report FILE` writes, signed with the
//! pipeline's digest key, so that "nothing the API held is missing" is evidence an auditor can
//! check offline (`auditship verify-report`), not a line in a log.
//!
//! Per sandbox and hour of the window: the events the API holds, the events the ledger says
//! were shipped, per file sink read back the events it should hold and holds, the gap found and
//! what was shipped again to fill it. The report's `hash` is the SHA-256 of its JSON as
//! serialised here with `hash` and `signature` empty (fields in declaration order), and its
//! `signature` the Ed25519 signature of those 32 bytes, as a digest's.
//!
//! ```
//! use auditship::manifest::{DigestPublicKey, DigestSigningKey};
//! use auditship::ops::completeness::CompletenessReport;
//! use auditship::ops::reconcile::Report;
//! let key = DigestSigningKey::generate()?;
//! let report = CompletenessReport::of("pipe", 0, 3_600_000_000, true, &Report::default()).seal(&key);
//! assert!(report.check(&DigestPublicKey::from_pem(&key.public_pem()?)?).is_ok());
//! # Ok::<(), auditship::manifest::KeyError>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::format_time;
use crate::manifest::{DigestPublicKey, DigestSigningKey, SealProblem};
use crate::ops::reconcile::Report;

/// `format` of a completeness report.
pub const REPORT_FORMAT: &str = "auditship-completeness-report";

/// The report format version.
pub const REPORT_FORMAT_VERSION: u32 = 1;

/// A signed completeness report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletenessReport {
    /// [`REPORT_FORMAT`].
    pub format: String,
    /// [`REPORT_FORMAT_VERSION`].
    pub v: u32,
    /// The pipeline.
    pub pipeline: String,
    /// When the comparison ran (RFC 3339).
    pub created_at: String,
    /// The window compared: from.
    pub since: String,
    /// The window compared: until.
    pub until: String,
    /// Whether nothing was shipped (`--dry-run`).
    pub dry_run: bool,
    /// Per sandbox and hour, in order.
    pub hours: Vec<ReportHour>,
    /// Events the API holds in the window.
    pub api_events: u64,
    /// Events found missing, over all hours.
    pub gaps: u64,
    /// Events shipped again.
    pub reshipped: u64,
    /// Whether every gap found was filled (false for a dry run with gaps, or an interrupted one).
    pub complete: bool,
    /// File sinks that could not be compared by event id, and why (the ledger stands in).
    pub not_comparable: BTreeMap<String, String>,
    /// The fingerprint of the key that signed the report.
    pub key: String,
    /// SHA-256 of the canonical JSON, lowercase hex.
    #[serde(default)]
    pub hash: String,
    /// Ed25519 signature of the hash's bytes, lowercase hex.
    #[serde(default)]
    pub signature: String,
}

/// One sandbox-hour of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportHour {
    /// The sandbox.
    pub resource_id: String,
    /// The hour's start (RFC 3339).
    pub hour: String,
    /// Events the API holds.
    pub api: u64,
    /// Events the ledger says were shipped.
    pub ledger: u64,
    /// Per file sink read back: `[should hold, holds]`.
    pub archive: BTreeMap<String, (u64, u64)>,
    /// Events found missing: the most any sink lacks, or what the ledger lacks.
    pub gap: u64,
    /// Events shipped again for this hour.
    pub reshipped: u64,
}

impl CompletenessReport {
    /// The report of a reconciliation of `pipeline` over `[since_us, until_us)`.
    pub fn of(pipeline: &str, since_us: i64, until_us: i64, dry_run: bool, r: &Report) -> Self {
        let mut hours = Vec::with_capacity(r.hours.len());
        let mut gaps = 0;
        for h in &r.hours {
            let lacking = h
                .archive
                .values()
                .map(|(want, have)| want.saturating_sub(*have))
                .max();
            let gap = lacking.unwrap_or(0).max(h.api.saturating_sub(h.ledger));
            gaps += gap;
            let reshipped = if dry_run || !r.complete { 0 } else { gap };
            hours.push(ReportHour {
                resource_id: h.resource_id.clone(),
                hour: format_time(h.hour_us),
                api: h.api,
                ledger: h.ledger,
                archive: h.archive.clone(),
                gap,
                reshipped,
            });
        }
        CompletenessReport {
            format: REPORT_FORMAT.into(),
            v: REPORT_FORMAT_VERSION,
            pipeline: pipeline.into(),
            created_at: format_time(chrono::Utc::now().timestamp_micros()),
            since: format_time(since_us),
            until: format_time(until_us),
            dry_run,
            hours,
            api_events: r.api_events,
            gaps,
            reshipped: r.reshipped,
            complete: r.complete && (gaps == 0 || !dry_run),
            not_comparable: r.not_comparable.clone(),
            key: String::new(),
            hash: String::new(),
            signature: String::new(),
        }
    }

    fn canonical(&self) -> Vec<u8> {
        let mut bare = self.clone();
        bare.hash = String::new();
        bare.signature = String::new();
        // Strings, numbers, maps and vectors of them: serialising cannot fail.
        serde_json::to_vec(&bare).unwrap_or_default()
    }

    /// Name the key, hash and sign.
    pub fn seal(mut self, key: &DigestSigningKey) -> Self {
        self.key = key.fingerprint();
        (self.hash, self.signature) = key.seal_document(&self.canonical());
        self
    }

    /// Whether the report is intact and signed by `key`; `Err` says why not.
    pub fn check(&self, key: &DigestPublicKey) -> Result<(), String> {
        if self.format != REPORT_FORMAT || self.v != REPORT_FORMAT_VERSION {
            return Err(format!(
                "format {} version {}: this auditship reads {REPORT_FORMAT} version {REPORT_FORMAT_VERSION}",
                self.format, self.v
            ));
        }
        if self.key != key.fingerprint() {
            return Err(format!(
                "signed by key {}, not by the key given ({})",
                self.key,
                key.fingerprint()
            ));
        }
        match key.check_document(&self.canonical(), &self.hash, &self.signature) {
            Ok(()) => Ok(()),
            Err(SealProblem::Edited) => {
                Err("changed after it was signed (its content does not hash to its hash)".into())
            }
            Err(SealProblem::BadSignature) => Err("the signature does not verify".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::reconcile::HourCount;

    #[test]
    fn a_report_counts_gaps_per_hour_and_any_change_breaks_its_signature() {
        let r = Report {
            hours_checked: 2,
            hours: vec![
                HourCount {
                    resource_id: "sb-1".into(),
                    hour_us: 0,
                    api: 10,
                    ledger: 10,
                    archive: [("archive".to_string(), (10, 7))].into(),
                },
                HourCount {
                    resource_id: "sb-2".into(),
                    hour_us: 3_600_000_000,
                    api: 5,
                    ledger: 3,
                    archive: BTreeMap::new(),
                },
            ],
            api_events: 15,
            reshipped: 5,
            complete: true,
            ..Report::default()
        };
        let key = DigestSigningKey::generate().unwrap();
        let public = DigestPublicKey::from_pem(&key.public_pem().unwrap()).unwrap();
        let report = CompletenessReport::of("p", 0, 7_200_000_000, false, &r).seal(&key);
        assert_eq!((report.hours[0].gap, report.hours[1].gap, report.gaps), (3, 2, 5));
        assert_eq!(report.hours[0].reshipped, 3);
        report.check(&public).unwrap();
        let back: CompletenessReport =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        back.check(&public).unwrap();
        let mut edited = report.clone();
        edited.hours[0].gap = 0;
        assert!(edited.check(&public).unwrap_err().contains("changed"));
        let other = DigestSigningKey::generate().unwrap();
        let forged = edited.seal(&other);
        assert!(forged
            .check(&public)
            .unwrap_err()
            .contains("not by the key given"));
        let dry = CompletenessReport::of("p", 0, 1, true, &r);
        assert!(!dry.complete && dry.hours.iter().all(|h| h.reshipped == 0));
    }
}

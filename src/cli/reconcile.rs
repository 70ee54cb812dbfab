//! `auditship reconcile`: compare the archive with the API hour by hour and ship what is missing.

use std::io::Write as _;
use std::path::Path;

use auditship::client::format_time;
use auditship::config::{self, LoadMode};

use super::exit::{Code, CommandResult, OrRetry};
use super::time::resolve_time;

/// What `reconcile` writes besides its summary.
pub struct Outputs<'a> {
    /// `--report`: the signed completeness report.
    pub report: Option<&'a Path>,
    /// `--gap-findings-to`: the sink that gets a finding per gap.
    pub gap_findings_to: Option<&'a str>,
}

/// `auditship reconcile`.
pub async fn reconcile(
    path: &Path,
    since: &str,
    until: Option<&str>,
    sandboxes: &[String],
    dry_run: bool,
    outputs: Outputs<'_>,
) -> CommandResult {
    let report_to = outputs.report;
    let p = config::load(path, LoadMode::Run)?;
    // Before any work: a report needs the key that signs it.
    let signing = match (report_to, &p.digests) {
        (Some(_), None) => {
            return Err(super::exit::fail(
                Code::Fix,
                format!("--report: {} has no signing key; the report is signed with [manifest] signing_key_file (write a pair with `auditship keygen`)", path.display()),
            ))
        }
        (Some(to), Some(_)) if to.exists() => {
            return Err(super::exit::fail(Code::Fix, format!("--report: {} exists; a report is never overwritten", to.display())));
        }
        (_, d) => d.as_ref().map(|d| d.key.clone()),
    };
    let since_us = resolve_time(since)?;
    let until_us = match until {
        Some(u) => resolve_time(u)?,
        None => chrono::Utc::now().timestamp_micros(),
    };
    let report = auditship::ops::reconcile::reconcile(&p, since_us, until_us, sandboxes, dry_run)
        .await
        .or_retry(format!("reconcile of {}", p.name))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "reconcile of {}, {} to {}: {} sandbox-hours checked, {} events in the API, {} hour(s) differ",
        p.name,
        format_time(since_us),
        format_time(until_us),
        report.hours_checked,
        report.api_events,
        report.diffs.len()
    )?;
    if !report.diffs.is_empty() {
        writeln!(
            out,
            "{:<24} {:<22} {:>8} {:>8}  MISSING IN FILES",
            "SANDBOX", "HOUR", "API", "LEDGER"
        )?;
        for d in &report.diffs {
            let missing: Vec<String> = d.missing.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            writeln!(
                out,
                "{:<24} {:<22} {:>8} {:>8}  {}",
                d.resource_id,
                chrono::DateTime::from_timestamp_micros(d.hour_us)
                    .map(|t| t.format("%Y-%m-%dT%H:00Z").to_string())
                    .unwrap_or_default(),
                d.api,
                d.ledger,
                if missing.is_empty() {
                    "-".into()
                } else {
                    missing.join(", ")
                }
            )?;
        }
    }
    for (sink, why) in &report.not_comparable {
        writeln!(out, "sink {sink} not compared by id: {why}")?;
    }
    let mut completeness =
        auditship::ops::completeness::CompletenessReport::of(&p.name, since_us, until_us, dry_run, &report);
    if let Some(key) = &signing {
        completeness = completeness.seal(key);
    }
    if let Some(sink) = outputs.gap_findings_to {
        let findings = auditship::ops::gap_findings::findings(&completeness);
        let n = auditship::ops::gap_findings::send(&p, sink, findings)
            .await
            .or_retry(format!("gap findings into sink {sink}"))?;
        writeln!(out, "{n} gap finding(s) shipped into sink {sink}")?;
    }
    if let (Some(to), Some(_)) = (report_to, &signing) {
        let signed = &completeness;
        let text = serde_json::to_string_pretty(&signed)? + "\n";
        write_new(to, text.as_bytes()).map_err(|e| {
            super::exit::fail(Code::Again, format!("--report: writing {}: {e}", to.display()))
        })?;
        writeln!(
            out,
            "completeness report written to {} ({} gap event(s), signed by {})",
            to.display(),
            signed.gaps,
            signed.key
        )?;
    }
    if dry_run {
        writeln!(out, "dry run: nothing shipped")?;
        return Ok(Code::Ok);
    }
    if !report.complete {
        writeln!(out, "re-shipping was interrupted; run the same reconcile again")?;
        return Ok(Code::Again);
    }
    writeln!(out, "{} event(s) shipped again", report.reshipped)?;
    Ok(Code::Ok)
}

/// Write `bytes` to a new file `to` (never over one), durably: to a temporary name, fsync'd,
/// renamed.
fn write_new(to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    if to.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists"));
    }
    std::fs::rename(&tmp, to)
}

/// `auditship verify-report`.
pub fn verify_report(report: &Path, public_key: &Path) -> CommandResult {
    use auditship::ops::completeness::CompletenessReport;
    let fail = |code, m: String| -> CommandResult { Err(super::exit::fail(code, m)) };
    let key = match auditship::manifest::DigestPublicKey::from_file(public_key) {
        Ok(k) => k,
        Err(e) => return fail(Code::Again, format!("--public-key: {e}")),
    };
    let text = match std::fs::read_to_string(report) {
        Ok(t) => t,
        Err(e) => return fail(Code::Again, format!("reading {}: {e}", report.display())),
    };
    let r: CompletenessReport = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                Code::Fix,
                format!("{} is not a completeness report: {e}", report.display()),
            )
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(why) = r.check(&key) {
        writeln!(
            out,
            "auditship verify-report {}: NOT VALID: {why}",
            report.display()
        )?;
        return Ok(Code::Fix);
    }
    writeln!(
        out,
        "auditship verify-report {}: VALID (signed by {})\n  pipeline {}, {} to {}{}: {} sandbox-hours, {} events in the API, {} found missing, {} shipped again{}",
        report.display(),
        r.key,
        r.pipeline,
        r.since,
        r.until,
        if r.dry_run { " (dry run)" } else { "" },
        r.hours.len(),
        r.api_events,
        r.gaps,
        r.reshipped,
        if r.complete { ", complete" } else { ", NOT complete" }
    )?;
    for h in r.hours.iter().filter(|h| h.gap > 0) {
        writeln!(
            out,
            "  GAP {} {}: the API holds {}, {} missing, {} shipped again",
            h.resource_id, h.hour, h.api, h.gap, h.reshipped
        )?;
    }
    Ok(Code::Ok)
}

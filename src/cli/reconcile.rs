//! `auditship reconcile`: compare the archive with the API hour by hour and ship what is missing.

use std::io::Write as _;
use std::path::Path;

use auditship::client::format_time;
use auditship::config::{self, LoadMode};

use super::exit::{Code, CommandResult, OrRetry};
use super::time::resolve_time;

/// `auditship reconcile`.
pub async fn reconcile(
    path: &Path,
    since: &str,
    until: Option<&str>,
    sandboxes: &[String],
    dry_run: bool,
) -> CommandResult {
    let p = config::load(path, LoadMode::Run)?;
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

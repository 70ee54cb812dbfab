//! Gap findings: one OCSF Detection Finding per sandbox-hour a reconciliation found events
//! missing in, shipped into a sink of the pipeline (`auditship reconcile --gap-findings-to
//! SINK`), so the SIEM that watches the audit trail also sees its holes.
//!
//! The findings go through the pipeline like events (a run in [`Mode::Given`]): the sink
//! commits them with its state and manifests, under a checkpoint stream of their own and the
//! source id [`FINDINGS_SOURCE`], which no sandbox has, so the ledger of the sandboxes is not
//! touched. Only that sink gets them, without the pipeline's transforms or the sink's route:
//! they are OCSF already.

use std::collections::BTreeMap;
use std::sync::Arc;

use auditship_sink::Event;
use serde_json::json;

use crate::client::parse_time;
use crate::config::{PipelineConfig, SinkRoute};
use crate::ops::completeness::CompletenessReport;
use crate::pipeline::{self, Given, Mode, PipelineError, RunOptions};

/// The source id gap findings are shipped under.
pub const FINDINGS_SOURCE: &str = "auditship.gap-findings";

use crate::transform::ocsf::OCSF_VERSION;

/// One Detection Finding (OCSF class 2004) per hour of `report` with a gap.
pub fn findings(report: &CompletenessReport) -> Vec<Event> {
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut out = Vec::new();
    for h in report.hours.iter().filter(|h| h.gap > 0) {
        let hour_us = parse_time(&h.hour).unwrap_or(0);
        let uid = format!("auditship-gap:{}:{}:{}", report.pipeline, h.resource_id, h.hour);
        let desc = format!(
            "The Miosa API holds {} egress-audit events of sandbox {} in the hour from {}; {} of them were missing from what pipeline {} shipped{}.",
            h.api,
            h.resource_id,
            h.hour,
            h.gap,
            report.pipeline,
            if h.reshipped > 0 {
                format!(", and {} were shipped again", h.reshipped)
            } else {
                String::new()
            }
        );
        let finding = json!({
            "activity_id": 1,
            "activity_name": "Create",
            "category_uid": 2,
            "category_name": "Findings",
            "class_uid": 2004,
            "class_name": "Detection Finding",
            "type_uid": 200401,
            "type_name": "Detection Finding: Create",
            "severity_id": if h.reshipped >= h.gap { 2 } else { 4 },
            "severity": if h.reshipped >= h.gap { "Low" } else { "High" },
            "status_id": if h.reshipped >= h.gap { 4 } else { 1 },
            "status": if h.reshipped >= h.gap { "Resolved" } else { "New" },
            "time": now_us / 1000,
            "message": desc,
            "finding_info": {
                "uid": uid,
                "title": "Gap in the Miosa egress audit trail",
                "desc": desc,
                "types": ["Audit Trail Gap"],
                "first_seen_time": hour_us / 1000,
                "last_seen_time": (hour_us + 3_600_000_000) / 1000 - 1,
            },
            "resources": [{ "uid": h.resource_id, "type": "Miosa sandbox" }],
            "metadata": {
                "version": OCSF_VERSION,
                "uid": uid,
                "product": { "name": "auditship", "vendor_name": "auditship", "version": env!("CARGO_PKG_VERSION") },
            },
            "unmapped": {
                "pipeline": report.pipeline,
                "hour": h.hour,
                "api_events": h.api,
                "ledger_events": h.ledger,
                "archive_events": h.archive,
                "missing_events": h.gap,
                "reshipped_events": h.reshipped,
                "report_hash": report.hash,
            },
        });
        let seq = out.len() as u64 + 1;
        out.push(Event {
            raw: bytes::Bytes::from(finding.to_string()),
            id: Arc::from(uid.as_str()),
            resource_id: Arc::from(FINDINGS_SOURCE),
            // Distinct and increasing: the positions of the findings' stream.
            cursor_us: Some(now_us + seq as i64),
            cursor_span: None,
            time_us: Some(hour_us),
            seq,
        });
    }
    out
}

/// Ship `findings` into `sink` of `p`, and nothing else anywhere; the number shipped.
pub async fn send(p: &PipelineConfig, sink: &str, findings: Vec<Event>) -> Result<u64, PipelineError> {
    if !p.sinks.contains_key(sink) {
        return Err(PipelineError::Config(format!(
            "--gap-findings-to {sink}: {} has no sink of that name",
            p.file.display()
        )));
    }
    let n = findings.len() as u64;
    if n == 0 {
        return Ok(0);
    }
    let mut run_p = p.clone();
    run_p.sinks.retain(|name, _| name == sink);
    run_p.routes = BTreeMap::from([(sink.to_string(), SinkRoute::default())]);
    run_p.transforms = Default::default();
    let given = Given {
        stream: format!(
            "gap-findings:{}",
            crate::client::format_time(chrono::Utc::now().timestamp_micros())
        ),
        events: Arc::new(BTreeMap::from([(FINDINGS_SOURCE.to_string(), findings)])),
        sources: vec![FINDINGS_SOURCE.to_string()],
    };
    let run = pipeline::run(&run_p, RunOptions::new(Mode::Given(given))).await?;
    if !run.complete {
        return Err(PipelineError::Config(format!(
            "--gap-findings-to {sink}: the findings were not all shipped ({:?}); run the reconcile again",
            run.stopped
        )));
    }
    Ok(n)
}

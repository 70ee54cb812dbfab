//! `auditship transform`: a dry run of a pipeline's transforms over events on stdin or a file.

use std::io::{BufRead as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use auditship::config::{self, LoadMode};
use auditship::transform::route::{self, Stage};
use auditship::transform::Outcome;

use super::exit::{fail, Code, CommandResult};

/// `auditship transform --parquet-schema CLASS`: the Parquet schema a security_lake sink
/// writes for that OCSF class.
pub fn parquet_schema(class_uid: u32) -> CommandResult {
    let text = auditship::sinks::parquet_schema(class_uid).map_err(|e| fail(Code::Fix, e))?;
    print!("{text}");
    Ok(Code::Ok)
}

/// `auditship transform`: print what each sink would receive; [`Code::Again`] when an event
/// failed a transform.
pub fn transform(path: &Path, input: Option<&Path>, only: Option<&str>) -> CommandResult {
    let p = config::load(path, LoadMode::Try)?;
    if let Some(name) = only {
        if !p.sinks.contains_key(name) {
            let names: Vec<&str> = p.sinks.keys().map(String::as_str).collect();
            return Err(fail(
                Code::Fix,
                format!(
                    "pipeline {} has no sink {name:?} (it has: {})",
                    p.name,
                    names.join(", ")
                ),
            ));
        }
    }
    let reader: Box<dyn std::io::BufRead> = match input {
        Some(f) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("reading the events")?;
        if line.trim().is_empty() {
            continue;
        }
        let e = auditship::client::AuditEvent::from_json(line.into_bytes())
            .map_err(|e| anyhow::anyhow!("line {}: not an event: {e}", n + 1))?;
        let resource_id: std::sync::Arc<str> = std::sync::Arc::from(e.resource_id().unwrap_or("-"));
        let seq = events.len() as u64 + 1;
        events.push(auditship::source::pipeline_event(e, resource_id, seq));
    }

    let mut pipeline_transformer = p.transforms.start();
    let after_pipeline: Vec<Outcome> = events.iter().map(|e| pipeline_transformer.apply(e)).collect();
    let mut failed_any = false;
    let mut out = std::io::stdout().lock();
    for (name, route) in &p.routes {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut transformer = route.transforms.start();
        let mut lines = Vec::new();
        for (e, first) in events.iter().zip(&after_pipeline) {
            let taken = route.pipeline_transforms.then_some(first);
            match route::for_sink(e, taken, &mut transformer) {
                (_, Outcome::Keep(t)) => lines.push(t.raw),
                (stage, Outcome::Drop { step }) => {
                    let by = match stage {
                        Stage::Pipeline => pipeline_transformer.label(step),
                        Stage::Sink => transformer.label(step),
                    };
                    eprintln!("sinks.{name}: {} dropped by {by}", e.id)
                }
                (_, Outcome::Fail(why)) => {
                    failed_any = true;
                    eprintln!("sinks.{name}: {} failed: {why}", e.id);
                }
            }
        }
        if only.is_none() {
            writeln!(
                out,
                "== sinks.{name}: {} of {} events ==",
                lines.len(),
                events.len()
            )?;
        }
        for l in lines {
            out.write_all(&l)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(if failed_any { Code::Again } else { Code::Ok })
}

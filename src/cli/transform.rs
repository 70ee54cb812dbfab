//! `auditship transform`: a dry run of a pipeline's transforms over events on stdin or a file.

use std::io::{BufRead as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use auditship::config::{self, LoadMode};
use auditship::transform::Outcome;

use super::exit::{fail, Code, CommandResult};

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
        events.push(auditship_sink::Event {
            id: e.id_arc().clone(),
            resource_id,
            cursor_us: e.cursor_us(),
            cursor_span: e.cursor_span(),
            time_us: e.time_us(),
            seq: events.len() as u64 + 1,
            raw: e.into_raw(),
        });
    }

    let mut pipeline_chain = p.transforms.start();
    let after_pipeline: Vec<Outcome> = events.iter().map(|e| pipeline_chain.apply(e)).collect();
    let mut failed_any = false;
    let mut out = std::io::stdout().lock();
    for (name, route) in &p.routes {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut chain = route.chain.start();
        let mut lines = Vec::new();
        for (e, first) in events.iter().zip(&after_pipeline) {
            let outcome = if !route.pipeline_transforms {
                chain.apply(e)
            } else {
                match first {
                    Outcome::Keep(t) => chain.apply(t),
                    Outcome::Drop { step } => {
                        eprintln!(
                            "sinks.{name}: {} dropped by {}",
                            e.id,
                            pipeline_chain.label(*step)
                        );
                        continue;
                    }
                    Outcome::Fail(why) => {
                        failed_any = true;
                        eprintln!("sinks.{name}: {} failed: {why}", e.id);
                        continue;
                    }
                }
            };
            match outcome {
                Outcome::Keep(t) => lines.push(t.raw),
                Outcome::Drop { step } => {
                    eprintln!("sinks.{name}: {} dropped by {}", e.id, chain.label(step))
                }
                Outcome::Fail(why) => {
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

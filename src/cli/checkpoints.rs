//! `auditship checkpoints`: where each sandbox stands; export and import of positions.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use auditship::client::format_time;
use auditship::config::{self, LoadMode};
use auditship::store::{ExportedPosition, Store};

use super::exit::{fail, Code, CommandResult};
use super::time::human_duration;

/// `auditship checkpoints`: a table of every stream's positions.
pub async fn show(path: &Path) -> CommandResult {
    let p = config::load(path, LoadMode::Validate)?;
    if !p.checkpoint_path.exists() {
        println!(
            "no checkpoints yet: {} does not exist",
            p.checkpoint_path.display()
        );
        return Ok(Code::Ok);
    }
    let store = Store::open(&p.checkpoint_path)?;
    let rows = store.streams(&p.name).await?;
    if rows.is_empty() {
        println!(
            "no checkpoints for pipeline {:?} in {}",
            p.name,
            p.checkpoint_path.display()
        );
        return Ok(Code::Ok);
    }
    let now = chrono::Utc::now().timestamp_micros();
    println!(
        "{:<34} {:<24} {:<24} {:<28} {:>10} {:>10}",
        "STREAM", "SANDBOX", "LAST EVENT", "CURSOR TIME", "LAG", "SHIPPED"
    );
    for (stream, c) in rows {
        let lag = c
            .cursor_us
            .map(|t| human_duration(Duration::from_micros((now - t).max(0) as u64)))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<34} {:<24} {:<24} {:<28} {:>10} {:>10}",
            stream,
            c.resource_id,
            c.last_event_id.unwrap_or_else(|| "-".into()),
            c.cursor_us.map(format_time).unwrap_or_else(|| "-".into()),
            lag,
            c.events_shipped
        );
    }
    Ok(Code::Ok)
}

/// `auditship checkpoints --export FILE` (`-`: stdout): every position, one JSON object a line.
pub async fn export(path: &Path, to: &Path) -> CommandResult {
    let p = config::load(path, LoadMode::Validate)?;
    let rows = if p.checkpoint_path.exists() {
        Store::open(&p.checkpoint_path)?.streams(&p.name).await?
    } else {
        Vec::new()
    };
    let mut text = String::new();
    for (stream, position) in &rows {
        let row = ExportedPosition {
            pipeline: p.name.clone(),
            stream: stream.clone(),
            position: position.clone(),
        };
        text.push_str(&serde_json::to_string(&row)?);
        text.push('\n');
    }
    if to == Path::new("-") {
        std::io::stdout().lock().write_all(text.as_bytes())?;
    } else {
        std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
        eprintln!(
            "exported {} positions of pipeline {} to {}",
            rows.len(),
            p.name,
            to.display()
        );
    }
    Ok(Code::Ok)
}

/// `auditship checkpoints --import FILE`: positions written where they are newer.
pub async fn import(path: &Path, from: &Path) -> CommandResult {
    let p = config::load(path, LoadMode::Validate)?;
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: ExportedPosition = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not an exported checkpoint", from.display(), n + 1))?;
        if row.pipeline != p.name {
            return Err(fail(
                Code::Fix,
                format!(
                    "{}:{}: the export is of pipeline {:?}, not {:?}; import it with that pipeline's file",
                    from.display(),
                    n + 1,
                    row.pipeline,
                    p.name
                ),
            ));
        }
        rows.push((row.stream, row.position));
    }
    let store = Store::open(&p.checkpoint_path)?;
    // A running pipeline would overwrite what is imported with its own positions.
    let _lock = store.lock(&p.name)?;
    let (written, kept) = store.import(&p.name, rows).await?;
    eprintln!(
        "imported into {}: {written} positions written, {kept} kept (this database's were as new or newer)",
        p.checkpoint_path.display()
    );
    Ok(Code::Ok)
}

//! `auditship checkpoints`: where each sandbox stands; export and import of positions.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use auditship::client::format_time;
use auditship::config::{self, LoadMode};
use auditship::ops::positions;
use auditship::store::Store;

use super::exit::{Code, CommandResult};
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
    let rows = positions::export(&p).await?;
    let text = positions::to_json_lines(&rows)?;
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
    let rows = positions::from_json_lines(&text, &p.name).with_context(|| from.display().to_string())?;
    let (written, kept) = positions::import(&p, rows).await?;
    eprintln!(
        "imported into {}: {written} positions written, {kept} kept (this database's were as new or newer)",
        p.checkpoint_path.display()
    );
    Ok(Code::Ok)
}

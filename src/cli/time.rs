//! Times and spans as users write them on the command line.

use std::time::Duration;

use anyhow::{bail, Context as _};
use auditship::client::parse_time;

/// RFC 3339, or a duration before now: `30s`, `15m`, `24h`, `7d`.
pub fn resolve_time(s: &str) -> anyhow::Result<i64> {
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    let secs = span_secs(s).with_context(|| {
        format!("{s:?} is not a time: use RFC 3339 (2026-11-01T00:00:00Z) or a relative span (30m, 24h, 7d)")
    })?;
    Ok(chrono::Utc::now().timestamp_micros() - secs * 1_000_000)
}

/// A span like `30s`, `15m`, `24h`, `7d`, `2w`, in seconds.
pub fn span_secs(s: &str) -> anyhow::Result<i64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .ok()
        .filter(|_| !num.is_empty())
        .with_context(|| format!("{s:?} is not a span; write a number and a unit (30m, 24h, 7d)"))?;
    Ok(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        "d" => n * 86_400,
        "w" => n * 604_800,
        _ => bail!("{s:?} has an unknown unit; use s, m, h, d or w (e.g. 24h)"),
    })
}

/// A duration as a person reads it: `42s`, `3m5s`, `2h10m`, `4d2h`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m{}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h{}m", s / 3_600, (s % 3_600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

//! `auditship backfill`: ship a window and stop, resumable, with exit codes cron reads.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use auditship::client::format_time;
use auditship::config::{self, LoadMode, PipelineConfig};
use auditship::ops::backfill;
use auditship::pipeline::{self, Mode, RunOptions, Window};

use super::exit::{self, Code, CommandResult, OrExit, OrRetry};
use super::time::resolve_time;
use super::{define_shard_vars, shutdown_signal};

/// `auditship backfill`'s arguments.
#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    /// Pipeline file.
    pub pipeline: PathBuf,
    /// Window start: RFC 3339 (2026-11-01T00:00:00Z) or relative (24h, 7d, 30m). Needed
    /// unless resuming a --job.
    #[arg(long, required_unless_present = "job")]
    pub since: Option<String>,
    /// Window end (inclusive): RFC 3339 or relative. Default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only these sandboxes (repeatable). Default: the pipeline's.
    #[arg(long = "sandbox")]
    pub sandboxes: Vec<String>,
    /// Name the run: its window and progress are kept under this name in the checkpoint
    /// database, so running it again resumes it, or does nothing if it finished.
    #[arg(long)]
    pub job: Option<String>,
    /// Count what would be shipped (per sandbox, and per sink after transforms and routes)
    /// without shipping or recording anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Backfill only this shard's sandboxes (I/N, as for `run`).
    #[arg(long, env = "AUDITSHIP_SHARD_SPEC")]
    pub shard: Option<auditship::shard::Shard>,
    /// Serve metrics while the backfill runs (as for `run`).
    #[arg(long, env = "AUDITSHIP_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `auditship backfill`: 0 shipped, 1 fix something, 2 interrupted or partial (resume).
pub async fn backfill(args: BackfillArgs) -> CommandResult {
    let BackfillArgs {
        pipeline: path,
        since,
        until,
        sandboxes,
        job,
        dry_run,
        shard,
        metrics_addr,
    } = args;
    define_shard_vars(shard);
    let mut p = config::load(&path, LoadMode::Run)?;
    if let Some(d) = &mut p.discovery {
        d.shard = shard;
    } else if let Some(s) = shard {
        p.sandboxes.retain(|id| s.owns(id));
        if p.sandboxes.is_empty() {
            eprintln!(
                "shard {s} owns none of pipeline {}'s sandboxes; nothing to backfill",
                p.name
            );
            return Ok(Code::Ok);
        }
    }
    let request = backfill::Request {
        since_us: since
            .as_deref()
            .map(resolve_time)
            .transpose()
            .context("--since")?,
        until_us: until
            .as_deref()
            .map(resolve_time)
            .transpose()
            .context("--until")?,
        sandboxes,
        job: job.clone(),
    };
    let flags_given =
        request.since_us.is_some() || request.until_us.is_some() || !request.sandboxes.is_empty();
    let now_us = chrono::Utc::now().timestamp_micros();
    let planned = backfill::plan(&p, request, now_us)
        .await
        .or_retry(format!("backfill of {}", p.name))?;
    let (window, job_run) = match planned {
        backfill::Plan::Finished(j) => {
            eprintln!(
                "job {} of pipeline {} finished at {} (window {} to {}); nothing to do. A new window needs a new --job name.",
                j.name,
                p.name,
                j.finished_at_us.map(format_time).unwrap_or_default(),
                format_time(j.since_us),
                format_time(j.until_us)
            );
            return Ok(Code::Ok);
        }
        backfill::Plan::Ship { window, job } => (window, job),
    };
    if let Some(j) = job_run.as_ref().filter(|j| j.resumed) {
        eprintln!(
            "resuming job {}: window {} to {}, {} sandbox(es){}",
            j.record.name,
            format_time(j.record.since_us),
            format_time(j.record.until_us),
            j.record.sandboxes.len(),
            if flags_given {
                " (the job keeps the window and sandboxes it started with; --since, --until and --sandbox are ignored)"
            } else {
                ""
            }
        );
    }
    if dry_run {
        return dry_run_report(&p, &window).await;
    }
    if let Some(j) = &job_run {
        backfill::start(&p, j)
            .await
            .context(format!("recording job {}", j.record.name))
            .or_exit(Code::Again)?;
    }
    let mut opts = RunOptions::new(Mode::Backfill(window.clone()));
    opts.shutdown = shutdown_signal();
    if let Some(addr) = metrics_addr {
        auditship::metrics::serve(addr, opts.shutdown.clone()).await?;
    }
    let progress = opts.progress.clone();
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                bar.set_message(format!(
                    "{} events read, {} shipped and checkpointed, {} dead-lettered",
                    progress.emitted.load(Ordering::Relaxed),
                    progress.committed.load(Ordering::Relaxed),
                    progress.dead_lettered()
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let result = pipeline::run(&p, opts).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let resume = backfill::resume_command(&path, &window);
    match result {
        Ok(report) if report.complete => {
            if let Some(name) = &job {
                let finished = backfill::finish(&p, name, chrono::Utc::now().timestamp_micros()).await;
                if let Err(e) = finished {
                    // Everything is shipped and checkpointed; a rerun would find nothing new.
                    eprintln!("warning: job {name} is done but could not be marked finished: {e}");
                }
            }
            let total: u64 = report.shipped.values().sum();
            eprintln!(
                "backfill of {} ({}) done: {total} events shipped, {} dead-lettered{}",
                p.name,
                window.stream_key(),
                report.dead_lettered,
                match report.filtered {
                    0 => String::new(),
                    n => format!(" ({n} of them filtered out by the pipeline's transforms)"),
                }
            );
            Ok(Code::Ok)
        }
        Ok(report) => {
            let total: u64 = report.shipped.values().sum();
            eprintln!(
                "backfill of {} interrupted after {total} events; progress is saved.",
                p.name
            );
            for (sb, why) in &report.stopped {
                eprintln!("  {sb}: {why}");
            }
            if window.until_us.is_none() {
                eprintln!("note: with no --until the window ends at the time of each run.");
            }
            eprintln!("resume with: {resume}");
            Ok(Code::Again)
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let failure = exit::retry_failure(e, format!("backfill of {}", p.name));
            Err(if retryable {
                failure.with_hint(format!("resume with: {resume}"))
            } else {
                failure
            })
        }
    }
}

/// Print what a backfill would ship.
async fn dry_run_report(p: &PipelineConfig, window: &Window) -> CommandResult {
    let counted = pipeline::count_window(p, window)
        .await
        .or_retry(format!("dry run of {}", p.name))?;
    let total: u64 = counted.per_sandbox.values().sum();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "dry run of {} ({}), window {} to {}: nothing shipped or recorded",
        p.name,
        window.stream_key(),
        format_time(window.since_us),
        window.until_us.map_or_else(|| "now".to_string(), format_time)
    )?;
    writeln!(out, "{:<24} {:>10}", "SANDBOX", "EVENTS")?;
    for (sb, n) in &counted.per_sandbox {
        writeln!(out, "{sb:<24} {n:>10}")?;
    }
    writeln!(out, "{:<24} {total:>10}", "total")?;
    writeln!(out, "{:<24} {:>10} {:>10}", "SINK", "WOULD GET", "FAILING")?;
    for name in p.sinks.keys() {
        writeln!(
            out,
            "{name:<24} {:>10} {:>10}",
            counted.per_sink.get(name).copied().unwrap_or(0),
            counted.failing.get(name).copied().unwrap_or(0)
        )?;
    }
    if counted.not_events > 0 {
        writeln!(
            out,
            "{} payloads in the window are not events (they would be dead-lettered)",
            counted.not_events
        )?;
    }
    Ok(Code::Ok)
}

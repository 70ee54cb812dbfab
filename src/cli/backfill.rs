//! `auditship backfill`: ship a window and stop, resumable, with exit codes cron reads.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use auditship::client::format_time;
use auditship::config::{self, LoadMode, Pipeline};
use auditship::pipeline::{self, Mode, RunOptions, Window};
use auditship::store::{Job, Store, StoreError};

use super::exit::{fail, Code, CommandResult, OrExit, OrRetry};
use super::time::resolve_time;
use super::{define_shard_vars, shutdown_signal};

/// `auditship backfill`'s arguments.
pub struct BackfillArgs {
    /// The pipeline file.
    pub path: PathBuf,
    /// The window's start: RFC 3339 or a span before now.
    pub since: Option<String>,
    /// The window's end (default: now, at each run).
    pub until: Option<String>,
    /// Only these sandboxes.
    pub sandboxes: Vec<String>,
    /// The job's name, for a window fixed at its first run.
    pub job: Option<String>,
    /// Count, ship nothing.
    pub dry_run: bool,
    /// Only this shard's sandboxes.
    pub shard: Option<auditship::shard::Shard>,
    /// Serve metrics here while it runs.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `auditship backfill`: 0 shipped, 1 fix something, 2 interrupted or partial (resume).
pub async fn backfill(args: BackfillArgs) -> CommandResult {
    let BackfillArgs {
        path,
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
    if let Some(name) = &job {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
        {
            return Err(fail(
                Code::Fix,
                format!("--job {name:?}: use letters, digits and . _ : - (e.g. nightly-2026-11-25)"),
            ));
        }
    }
    // A job that ran before keeps its window; a new one needs --since.
    let known_job = match &job {
        Some(name) => open_job(&p, name).await.or_retry(format!("reading job {name}"))?,
        None => None,
    };
    if let Some(j) = &known_job {
        let name = &j.name;
        if let Some(done) = j.finished_at_us {
            eprintln!(
                "job {name} of pipeline {} finished at {} (window {} to {}); nothing to do. A new window needs a new --job name.",
                p.name,
                format_time(done),
                format_time(j.since_us),
                format_time(j.until_us)
            );
            return Ok(Code::Ok);
        }
        eprintln!(
            "resuming job {name}: window {} to {}, {} sandbox(es){}",
            format_time(j.since_us),
            format_time(j.until_us),
            j.sandboxes.len(),
            if since.is_some() || until.is_some() || !sandboxes.is_empty() {
                " (the job keeps the window and sandboxes it started with; --since, --until and --sandbox are ignored)"
            } else {
                ""
            }
        );
    }
    let Some(since) = since.or_else(|| known_job.as_ref().map(|j| format_time(j.since_us))) else {
        return Err(fail(
            Code::Fix,
            format!(
                "job {:?} has not run before: give --since",
                job.unwrap_or_default()
            ),
        ));
    };
    let since_us = resolve_time(&since).context("--since")?;
    let until_us = until
        .as_deref()
        .map(resolve_time)
        .transpose()
        .context("--until")?;
    if until_us.is_some_and(|u| u < since_us) {
        return Err(fail(Code::Fix, "--until is before --since"));
    }
    let mut window = Window {
        since_us,
        until_us,
        sandboxes,
        job: job.clone(),
    };
    if let Some(j) = &known_job {
        window.since_us = j.since_us;
        window.until_us = Some(j.until_us);
        window.sandboxes = j.sandboxes.clone();
    } else if job.is_some() {
        // A job's window is fixed when it first runs, so that a rerun means the same events.
        window.until_us = Some(until_us.unwrap_or_else(|| chrono::Utc::now().timestamp_micros()));
    }
    if dry_run {
        return dry_run_report(&p, &window).await;
    }
    if let (Some(name), None) = (&job, &known_job) {
        let record = Job {
            name: name.clone(),
            since_us: window.since_us,
            until_us: window.until_us.unwrap_or(window.since_us),
            sandboxes: if window.sandboxes.is_empty() {
                p.sandboxes.clone()
            } else {
                window.sandboxes.clone()
            },
            started_at_us: chrono::Utc::now().timestamp_micros(),
            finished_at_us: None,
        };
        window.sandboxes = record.sandboxes.clone();
        let started = async { Store::open(&p.checkpoint_path)?.start_job(&p.name, &record).await };
        started
            .await
            .context(format!("recording job {name}"))
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
    let resume = match &job {
        Some(name) => format!("auditship backfill {} --job {name}", path.display()),
        None => format!(
            "auditship backfill {} --since {}{}{}",
            path.display(),
            format_time(since_us),
            until_us
                .map(|u| format!(" --until {}", format_time(u)))
                .unwrap_or_default(),
            window
                .sandboxes
                .iter()
                .map(|s| format!(" --sandbox {s}"))
                .collect::<String>()
        ),
    };
    match result {
        Ok(report) if report.complete => {
            if let Some(name) = &job {
                let finished = async {
                    Store::open(&p.checkpoint_path)?
                        .finish_job(&p.name, name, chrono::Utc::now().timestamp_micros())
                        .await
                };
                if let Err(e) = finished.await {
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
            if until_us.is_none() && job.is_none() {
                eprintln!("note: with no --until the window ends at the time of each run.");
            }
            eprintln!("resume with: {resume}");
            Ok(Code::Again)
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let failure = Err::<(), _>(e)
                .or_retry(format!("backfill of {}", p.name))
                .err()
                .unwrap_or_else(|| fail(Code::Again, "backfill failed"));
            Err(if retryable {
                failure.with_hint(format!("resume with: {resume}"))
            } else {
                failure
            })
        }
    }
}

/// A named job's record, if it ran before.
async fn open_job(p: &Pipeline, name: &str) -> Result<Option<Job>, StoreError> {
    if !p.checkpoint_path.exists() {
        return Ok(None);
    }
    Store::open(&p.checkpoint_path)?.job(&p.name, name).await
}

/// Print what a backfill would ship.
async fn dry_run_report(p: &Pipeline, window: &Window) -> CommandResult {
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

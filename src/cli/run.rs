//! `auditship run`: pipelines followed until stopped, reloaded on SIGHUP.

use std::path::PathBuf;

use anyhow::bail;
use auditship::config::{self, LoadMode, PipelineConfig};
use auditship::pipeline::{self, Mode, RunOptions};
use tokio_util::sync::CancellationToken;

use super::exit::{self, fail, Code, CommandResult, Failure};
use super::{define_shard_vars, shutdown_signal};

/// Load and check the pipelines `run` follows (after sharding). `Ok(vec![])`: this shard owns
/// no sandbox of any of them.
pub fn load_for_run(
    paths: &[PathBuf],
    shard: Option<auditship::shard::Shard>,
) -> anyhow::Result<Vec<PipelineConfig>> {
    let mut pipelines = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match config::load(path, LoadMode::Run) {
            Ok(p) => pipelines.push(p),
            Err(e) => errors.extend(e.0),
        }
    }
    if !errors.is_empty() {
        return Err(config::ConfigErrors(errors).into());
    }
    if let Some(s) = shard {
        for p in &mut pipelines {
            if let Some(d) = &mut p.discovery {
                // Discovered sandboxes are sharded as they are found.
                d.shard = Some(s);
                continue;
            }
            let before = p.sandboxes.len();
            p.sandboxes.retain(|id| s.owns(id));
            tracing::info!(pipeline = %p.name, shard = %s, sandboxes = p.sandboxes.len(), of = before, "sharded");
            if p.sandboxes.is_empty() {
                tracing::warn!(pipeline = %p.name, shard = %s, "this shard owns none of the pipeline's sandboxes; it does not run here");
            }
        }
        pipelines.retain(|p| !p.sandboxes.is_empty() || p.discovery.is_some());
    }
    // Pipelines run together must not append to the same files (nor share a name, which keys
    // their checkpoints and locks).
    let mut owners: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for p in &pipelines {
        if let Some(other) = owners.insert(format!("name:{}", p.name), p.file.display().to_string()) {
            bail!(
                "{} and {other} both name their pipeline {:?}; give each its own name",
                p.file.display(),
                p.name
            );
        }
        // Topics may be shared: only files would be corrupted by two writers.
        let files = p.sinks.values().filter_map(|s| s.config().ok()?.appends_to());
        for files in files {
            if let Some(other) = owners.insert(format!("path:{files}"), p.file.display().to_string()) {
                bail!(
                    "{} and {other} both write files at {files:?}; give each pipeline its own archive path",
                    p.file.display(),
                );
            }
        }
    }
    Ok(pipelines)
}

/// How a generation of pipelines ended.
enum Generation {
    /// Stopped by SIGTERM/SIGINT (`Ok`), or a pipeline failed (the first failure).
    Exit(CommandResult),
    /// SIGHUP with pipeline files that load: run these next.
    Reload(Vec<PipelineConfig>),
}

/// `--metrics-port-per-shard`: the metrics port of shard `s`, `addr`'s port plus its index.
fn shard_metrics_addr(
    mut addr: std::net::SocketAddr,
    s: auditship::shard::Shard,
) -> Result<std::net::SocketAddr, Failure> {
    let port = u32::from(addr.port()) + s.index;
    match u16::try_from(port) {
        Ok(p) if addr.port() != 0 => {
            addr.set_port(p);
            Ok(addr)
        }
        _ => Err(fail(
            Code::Fix,
            format!(
                "--metrics-port-per-shard: port {} plus shard {} is not a port (1 to 65535); give --metrics-addr a base port such as 9460",
                addr.port(),
                s.index
            ),
        )),
    }
}

/// `auditship run`: every pipeline until SIGTERM/SIGINT or a failure; SIGHUP reloads.
pub async fn run(
    paths: Vec<PathBuf>,
    shard: Option<auditship::shard::Shard>,
    metrics_addr: Option<std::net::SocketAddr>,
    metrics_port_per_shard: bool,
) -> CommandResult {
    define_shard_vars(shard);
    let metrics_addr = match (metrics_addr, shard) {
        (Some(addr), Some(s)) if metrics_port_per_shard => Some(shard_metrics_addr(addr, s)?),
        (addr, _) => addr,
    };
    let mut pipelines = load_for_run(&paths, shard)?;
    let stop = shutdown_signal();
    if let Some(addr) = metrics_addr {
        auditship::metrics::serve(addr, stop.clone()).await?;
    }
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading needs a restart");
            None
        }
    };
    loop {
        match run_generation(pipelines, &paths, shard, &stop, hangups.as_mut()).await {
            Generation::Exit(result) => return result,
            Generation::Reload(next) => {
                tracing::info!(
                    pipelines = next.len(),
                    "reloaded the pipeline files; running them"
                );
                pipelines = next;
            }
        }
    }
}

/// Run `pipelines` until a stop, a failure, or a SIGHUP whose pipeline files load. On SIGHUP
/// the new files are loaded first: if they do not, the error is logged and the running
/// pipelines go on untouched. If they do, the running ones drain (sinks flush, checkpoints
/// commit, as on SIGTERM) and the new ones start from those checkpoints: nothing is lost.
async fn run_generation(
    pipelines: Vec<PipelineConfig>,
    paths: &[PathBuf],
    shard: Option<auditship::shard::Shard>,
    stop: &CancellationToken,
    mut hangups: Option<&mut tokio::signal::unix::Signal>,
) -> Generation {
    let generation = stop.child_token();
    if pipelines.is_empty() {
        // A shard with nothing to do stays up (a supervisor would restart it in a loop).
        tracing::warn!("this shard owns no sandbox of any pipeline; idling until stopped or reloaded");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for p in pipelines {
        for w in &p.warnings {
            tracing::warn!("{w}");
        }
        let mut opts = RunOptions::new(Mode::Live);
        opts.shutdown = generation.child_token();
        tasks.spawn(async move {
            let r = pipeline::run(&p, opts).await;
            (p.name.clone(), r)
        });
    }
    // The first failure is the run's (printed once, by `main`); later ones are logged.
    let mut failure: Option<Failure> = None;
    let mut next: Option<Vec<PipelineConfig>> = None;
    loop {
        let hup = async {
            match hangups.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Some(Ok((name, Ok(report)))) => {
                        let total: u64 = report.shipped.values().sum();
                        tracing::info!(pipeline = %name, events_shipped = total, filtered = report.filtered, dead_lettered = report.dead_lettered, "pipeline stopped");
                    }
                    Some(Ok((name, Err(e)))) => {
                        keep_first(&mut failure, exit::retry_failure(e, format!("pipeline {name}")));
                        // One pipeline failing stops the others: a supervisor restarts the process.
                        stop.cancel();
                    }
                    Some(Err(e)) => {
                        keep_first(&mut failure, exit::fail(Code::Again, format!("a pipeline task failed: {e}")));
                        stop.cancel();
                    }
                    None => {}
                }
                if tasks.is_empty() {
                    return match next.take() {
                        Some(p) if !stop.is_cancelled() => Generation::Reload(p),
                        _ => Generation::Exit(failure.map_or(Ok(Code::Ok), Err)),
                    };
                }
            }
            _ = hup, if next.is_none() => {
                tracing::info!("SIGHUP received: reloading the pipeline files");
                match load_for_run(paths, shard) {
                    Ok(p) => {
                        next = Some(p);
                        generation.cancel();
                        if tasks.is_empty() {
                            return Generation::Reload(next.take().unwrap_or_default());
                        }
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload refused: the pipeline files do not load; the running pipelines go on unchanged"),
                }
            }
            _ = stop.cancelled(), if tasks.is_empty() => return Generation::Exit(failure.map_or(Ok(Code::Ok), Err)),
        }
    }
}

/// Keep the first failure in `slot`; log the later ones (their pipelines stopped too).
fn keep_first(slot: &mut Option<Failure>, f: Failure) {
    match slot {
        None => *slot = Some(f),
        Some(_) => tracing::error!(error = %format!("{:#}", f.error), "another pipeline failed"),
    }
}

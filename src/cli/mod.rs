//! The `auditship` command line: a file per command, flags in `args.rs`, and one place
//! (`exit.rs`) that prints an error chain once and picks the exit code.

mod api;
mod archive;
mod args;
mod backfill;
mod checkpoints;
mod demo;
mod exit;
mod export;
mod keygen;
mod logging;
mod reconcile;
mod run;
mod sim;
mod time;
mod transform;
mod validate;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use auditship::config::{self, LoadMode, PipelineConfig};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use args::{Cli, Command};
use exit::{Code, CommandResult};

/// Archives, checkpoints and dead letters hold audit data: whatever umask auditship inherits, no
/// file or directory it creates is readable by other users (files 0640 at most, directories
/// 0750). A stricter inherited umask stays.
fn restrict_umask() {
    // SAFETY: umask(2) cannot fail; it only sets this process's file-creation mask.
    unsafe {
        let inherited = libc::umask(0o027);
        libc::umask(inherited | 0o027);
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
    restrict_umask();
    // One socket per sandbox (plus archive files): the usual soft limit of 1024 descriptors
    // would push a large fleet onto the polling fallback. Raise it to the hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files_limit = n, "raised the open-files limit"),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit; large fleets may fall back to polling")
        }
    }
    let outcome = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(dispatch(cli.command)),
        Err(e) => Err(exit::fail(
            Code::Fix,
            format!("cannot start the async runtime: {e}"),
        )),
    };
    exit::report(outcome)
}

/// Run one command.
async fn dispatch(command: Command) -> CommandResult {
    match command {
        Command::Verify(args) => verify::verify(args).await,
        Command::Run {
            pipelines,
            shard,
            metrics_addr,
            metrics_port_per_shard,
        } => run::run(pipelines, shard, metrics_addr, metrics_port_per_shard).await,
        Command::Backfill(args) => backfill::backfill(args).await,
        Command::List(args) => api::list(args).await,
        Command::Get { pipeline, event_id } => api::get(&pipeline, &event_id).await,
        Command::Tail {
            pipeline,
            sandbox,
            start,
        } => api::tail(&pipeline, sandbox, &start).await,
        Command::Validate { pipelines } => validate::validate(&pipelines),
        Command::Reconcile {
            pipeline,
            since,
            until,
            sandboxes,
            dry_run,
            report,
            gap_findings_to,
        } => {
            let out = reconcile::Outputs {
                report: report.as_deref(),
                gap_findings_to: gap_findings_to.as_deref(),
            };
            reconcile::reconcile(&pipeline, &since, until.as_deref(), &sandboxes, dry_run, out).await
        }
        Command::VerifyReport { report, public_key } => reconcile::verify_report(&report, &public_key),
        Command::Transform {
            pipeline,
            input,
            sink,
            parquet_schema,
        } => match (parquet_schema, pipeline) {
            (Some(class), _) => transform::parquet_schema(class),
            (None, Some(pipeline)) => transform::transform(&pipeline, input.as_deref(), sink.as_deref()),
            (None, None) => Err(exit::fail(
                exit::Code::Fix,
                "transform needs a pipeline file (or --parquet-schema CLASS_UID)".to_string(),
            )),
        },
        Command::Checkpoints {
            pipeline,
            export,
            import,
        } => match (export, import) {
            (Some(to), _) => checkpoints::export(&pipeline, &to).await,
            (None, Some(from)) => checkpoints::import(&pipeline, &from).await,
            (None, None) => checkpoints::show(&pipeline).await,
        },
        Command::Export(args) => export::export(args).await,
        Command::VerifyExport(args) => export::verify_export(args).await,
        Command::Keygen { out } => keygen::keygen(&out),
        Command::Demo { dir } => demo::demo(&dir).await,
        Command::Sim(args) => sim::sim(args).await,
    }
}

/// Load a pipeline file to run it, logging its warnings.
fn load_one(path: &Path) -> anyhow::Result<PipelineConfig> {
    let p = config::load(path, LoadMode::Run)?;
    for w in &p.warnings {
        tracing::warn!("{w}");
    }
    Ok(p)
}

/// A token cancelled on SIGTERM or SIGINT.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
        t.cancel();
    });
    token
}

/// Under `--shard I/N`, pipeline files see `${AUDITSHIP_SHARD}` and `${AUDITSHIP_SHARDS}`.
fn define_shard_vars(shard: Option<auditship::shard::Shard>) {
    if let Some(s) = shard {
        config::define_var("AUDITSHIP_SHARD", &s.index.to_string());
        config::define_var("AUDITSHIP_SHARDS", &s.count.to_string());
    }
}

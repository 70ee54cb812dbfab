use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use auditship::client::{format_time, parse_time, Filters, StartAt, TailOptions};
use auditship::config::{self, LoadMode, Pipeline};
use auditship::pipeline::{self, Mode, RunOptions, Window};
use auditship::sim::{ListShape, SimConfig, Simulator};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// Ship Miosa sandbox egress-audit events to files, exactly once, with checkpoints.
///
/// Start with `auditship demo` (no credentials needed), then copy a pipeline from
/// `pipelines/` and `auditship validate` it.
#[derive(Parser, Debug)]
#[command(name = "auditship", version, max_term_width = 100)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// How `auditship verify` prints its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    /// A summary a person can read.
    Text,
    /// One JSON object.
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Follow every sandbox of the pipelines and ship their events until stopped.
    ///
    /// SIGTERM or Ctrl-C drains: sources stop, sinks flush, checkpoints commit, exit 0.
    Run {
        /// Pipeline files (TOML).
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Follow only this shard's sandboxes: I/N (0-based) splits every pipeline's sandboxes
        /// over N processes by rendezvous hash. Pipeline files see ${AUDITSHIP_SHARD} (I) and
        /// ${AUDITSHIP_SHARDS} (N), to give each shard its own checkpoint and archive paths.
        #[arg(long, env = "AUDITSHIP_SHARD_SPEC")]
        shard: Option<auditship::shard::Shard>,
        /// Serve Prometheus metrics on /metrics, readiness on /health and liveness on /live at
        /// this address (e.g. 127.0.0.1:9464; port 0 picks one and logs it).
        #[arg(long, env = "AUDITSHIP_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Ship a window of past events through the list endpoint, then exit.
    ///
    /// Resumable: after a kill, run it again with the same absolute window (an interrupted run
    /// prints it as `resume with: …`) and it continues where it stopped; a finished window ships
    /// nothing twice. A relative --since is a new window each run, unless the run is a named
    /// --job: a job fixes its window when it first runs, resumes it when run again, and does
    /// nothing once finished (cron: `--job nightly-$(date +%F) --since 24h`). Never moves the
    /// live checkpoint. Exit codes: 0 done, 1 bad configuration or credentials, 2 interrupted or
    /// partial.
    Backfill {
        /// Pipeline file.
        pipeline: PathBuf,
        /// Window start: RFC 3339 (2026-11-01T00:00:00Z) or relative (24h, 7d, 30m). Needed
        /// unless resuming a --job.
        #[arg(long, required_unless_present = "job")]
        since: Option<String>,
        /// Window end (inclusive): RFC 3339 or relative. Default: now.
        #[arg(long)]
        until: Option<String>,
        /// Only these sandboxes (repeatable). Default: the pipeline's.
        #[arg(long = "sandbox")]
        sandboxes: Vec<String>,
        /// Name the run: its window and progress are kept under this name in the checkpoint
        /// database, so running it again resumes it, or does nothing if it finished.
        #[arg(long)]
        job: Option<String>,
        /// Count what would be shipped (per sandbox, and per sink after transforms and routes)
        /// without shipping or recording anything.
        #[arg(long)]
        dry_run: bool,
        /// Backfill only this shard's sandboxes (I/N, as for `run`).
        #[arg(long, env = "AUDITSHIP_SHARD_SPEC")]
        shard: Option<auditship::shard::Shard>,
        /// Serve metrics while the backfill runs (as for `run`).
        #[arg(long, env = "AUDITSHIP_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Compare what was shipped with what the API holds for a window, hour by hour, and ship
    /// exactly what is missing. For nightly jobs.
    ///
    /// Counts per sandbox and hour: the API's, the ledger's (events the checkpoint passed), and
    /// each file sink's (read back from its files and compared by id, so events lost from an
    /// archive are found). Missing events go through the pipeline again; other sinks get them
    /// too. Exit codes: 0 consistent (or made so), 1 bad configuration or credentials, 2 the
    /// re-shipping was interrupted.
    Reconcile {
        /// Pipeline file.
        pipeline: PathBuf,
        /// Window start: RFC 3339 or relative (24h, 7d).
        #[arg(long)]
        since: String,
        /// Window end: RFC 3339 or relative. Default: now.
        #[arg(long)]
        until: Option<String>,
        /// Only these sandboxes (repeatable). Default: the pipeline's.
        #[arg(long = "sandbox")]
        sandboxes: Vec<String>,
        /// Report only; ship nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List a sandbox's events (NDJSON on stdout), like the SDK's `list`.
    List {
        /// Pipeline file (for the API settings).
        pipeline: PathBuf,
        /// The sandbox.
        #[arg(long)]
        sandbox: String,
        /// Only this action (allow, reject, stub, error, client_cancel).
        #[arg(long)]
        action: Option<String>,
        /// Only this destination host.
        #[arg(long)]
        host: Option<String>,
        /// From this time (RFC 3339 or relative like 24h).
        #[arg(long)]
        since: Option<String>,
        /// Until this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
        /// Follow pages until the end instead of printing one page.
        #[arg(long)]
        all: bool,
    },
    /// Fetch one event by id (JSON on stdout), like the SDK's `get`.
    Get {
        /// Pipeline file (for the API settings).
        pipeline: PathBuf,
        /// The event id.
        event_id: String,
    },
    /// Follow one sandbox live (NDJSON on stdout), like the SDK's `tail`. Ctrl-C stops.
    Tail {
        /// Pipeline file (for the API settings).
        pipeline: PathBuf,
        /// The sandbox.
        #[arg(long)]
        sandbox: String,
        /// Where to begin: now (default), earliest, or an RFC 3339 time.
        #[arg(long, default_value = "now")]
        start: String,
    },
    /// Check pipeline files offline; print every error with file:line:column. Exit 1 if any.
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Try a pipeline's transforms and routes on sample events, offline: reads NDJSON events
    /// (stdin, or --input) and prints what each sink would get. Nothing is sent or recorded.
    ///
    /// Without --sink, each sink's events follow a `== sinks.NAME ==` line; with --sink, that
    /// sink's events alone, as NDJSON. Dropped and failed events are listed on stderr. Exit codes:
    /// 0 done, 1 bad configuration or input, 2 a transform failed on some event (a run would
    /// dead-letter it).
    Transform {
        /// Pipeline file.
        pipeline: PathBuf,
        /// NDJSON file of events (bare or wrapped in {"event": ...}). Default: stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Print only this sink's events, as plain NDJSON.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Show each sandbox's checkpoint: last event, cursor time, lag. Also moves checkpoints
    /// between databases (resharding: export every shard, import every export into every new
    /// shard, then start them).
    Checkpoints {
        /// Pipeline file.
        pipeline: PathBuf,
        /// Write every position of the pipeline as NDJSON to this file (`-`: stdout).
        #[arg(long, conflicts_with = "import")]
        export: Option<PathBuf>,
        /// Take positions from an export: each is written where this database has none or an
        /// older one for that stream and sandbox. Refused while the pipeline runs.
        #[arg(long)]
        import: Option<PathBuf>,
    },
    /// Check an archive against its tamper-evident manifests: recompute every unit's SHA-256,
    /// walk each sink's hash chain, and report altered, removed, truncated, added or misplaced
    /// units, broken or missing entries, duplicated event ids and (with --max-gap) time gaps.
    ///
    /// Exit codes: 0 clean, 1 problems found, 2 the check could not run (unreadable path, bad
    /// pipeline file, missing key).
    Verify(VerifyArgs),
    /// Run the bundled simulator and a pipeline against it: no credentials, no services.
    Demo {
        /// Where the demo writes its archive and state (replaced on each run).
        #[arg(long, default_value = "auditship-demo")]
        dir: PathBuf,
    },
    /// Run the bundled Miosa simulator (for trying pipelines and for tests).
    Sim(SimArgs),
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Number of sandboxes (sb-1 … sb-N). Default: the five of pipelines/demo.toml.
    #[arg(long)]
    sandboxes: Option<usize>,
    /// Explicit sandbox ids (repeatable; replaces --sandboxes).
    #[arg(long = "sandbox")]
    ids: Vec<String>,
    /// Past events per sandbox.
    #[arg(long, default_value_t = 1000)]
    backlog: usize,
    /// Live events per second per sandbox.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Stop live events after this many per sandbox.
    #[arg(long)]
    live_events: Option<u64>,
    /// Sandboxes whose socket answers 404 (repeatable).
    #[arg(long)]
    no_socket: Vec<String>,
    /// Close sockets after this many frames.
    #[arg(long)]
    drop_every: Option<u64>,
    /// Share of requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    ratio_429: f64,
    /// Share of requests answered 5xx.
    #[arg(long, default_value_t = 0.0)]
    ratio_5xx: f64,
    /// Share of socket frames preceded by garbage.
    #[arg(long, default_value_t = 0.0)]
    garbage: f64,
    /// Precede every Nth frame sent with one over the 1 MiB cap.
    #[arg(long)]
    oversize_every: Option<u64>,
    /// Refuse every Nth socket handshake with a 503.
    #[arg(long)]
    refuse_every_handshakes: Option<u64>,
    /// Answer every list and get request this many milliseconds late.
    #[arg(long, default_value_t = 0)]
    slow_response_ms: u64,
    /// Every Nth list response sends half its body, then hangs.
    #[arg(long)]
    hang_every_lists: Option<u64>,
    /// Events per shared timestamp.
    #[arg(long, default_value_t = 1)]
    ties: usize,
    /// List response shape.
    #[arg(long, value_enum, default_value_t = ListShape::Mixed)]
    list_shape: ListShape,
    /// Every Nth event carries a bearer key in metadata.authorization and a token= in its path
    /// (to try redaction).
    #[arg(long)]
    secret_every: Option<u64>,
    /// API key clients must send (default: msk_sim_demo_key).
    #[arg(long, env = "MIOSA_SIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Fast mode (benchmarks): render the --live-events of every sandbox up front and push them
    /// to its socket as fast as it reads (one socket per sandbox; --rate is ignored).
    #[arg(long, requires = "live_events")]
    fast: bool,
    /// Send every frame as a plain text event (default: every frame style in turn).
    #[arg(long)]
    plain_frames: bool,
}

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
    init_logging(cli.log_format, &cli.log_level);
    restrict_umask();
    // One socket per sandbox (plus archive files): the usual soft limit of 1024 descriptors
    // would push a large fleet onto the polling fallback. Raise it to the hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files_limit = n, "raised the open-files limit"),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit; large fleets may fall back to polling")
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes log lines to stderr with every known key and `token=` value removed. The fmt layer
/// writes each event with one `write` call, so a secret is never split across two calls.
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = auditship::secret::redact_all(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The HTTP and socket libraries are noisy below info and print request lines; our own
    // events say what matters. (The writer redacts secrets even if someone turns them on.)
    let filter = [
        "tungstenite=info",
        "tokio_tungstenite=info",
        "hyper=info",
        "hyper_util=info",
        "reqwest=info",
        "h2=info",
        "rustls=info",
    ]
    .iter()
    .filter_map(|d| d.parse().ok())
    .fold(filter, |f, d| f.add_directive(d));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingStderr)
        .with_target(false);
    match format {
        LogFormat::Human => builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Verify(args) => verify(args).await,
        Command::Run {
            pipelines,
            shard,
            metrics_addr,
        } => run(pipelines, shard, metrics_addr).await,
        Command::Backfill {
            pipeline,
            since,
            until,
            sandboxes,
            job,
            dry_run,
            shard,
            metrics_addr,
        } => {
            backfill(BackfillArgs {
                path: pipeline,
                since,
                until,
                sandboxes,
                job,
                dry_run,
                shard,
                metrics_addr,
            })
            .await
        }
        Command::List {
            pipeline,
            sandbox,
            action,
            host,
            since,
            until,
            limit,
            all,
        } => {
            let p = load_one(&pipeline)?;
            let client = pipeline::client_for(&p)?;
            let filters = Filters {
                action,
                host,
                since: since.map(|s| resolve_time(&s)).transpose()?.map(format_time),
                until: until.map(|s| resolve_time(&s)).transpose()?.map(format_time),
                limit,
                ..Default::default()
            };
            let audit = client.sandbox(sandbox).audit();
            let mut out = std::io::stdout().lock();
            if all {
                let mut stream = std::pin::pin!(audit.list_all(filters));
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(e) => writeln!(out, "{}", e.json())?,
                        // An element that is not an event; any other error ends the listing.
                        Err(e) if e.is_list_element() => {
                            tracing::warn!(error = %e, "skipping an element that is not an event")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            } else {
                for e in audit.list(&filters).await? {
                    writeln!(out, "{}", e.json())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { pipeline, event_id } => {
            let p = load_one(&pipeline)?;
            let client = pipeline::client_for(&p)?;
            let event = client.audit().get(&event_id).await?;
            println!("{}", event.json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail {
            pipeline,
            sandbox,
            start,
        } => {
            let p = load_one(&pipeline)?;
            let client = pipeline::client_for(&p)?;
            let start = match start.as_str() {
                "now" => StartAt::Now,
                "earliest" => StartAt::Earliest,
                t => StartAt::Time(resolve_time(t)?),
            };
            let mut tail = client.sandbox(sandbox).audit().tail(TailOptions {
                poll_interval: p.poll_interval,
                transport: p.transport,
                start,
                ..TailOptions::default()
            });
            let stop = shutdown_signal();
            loop {
                let item = tokio::select! {
                    i = tail.next() => i,
                    _ = stop.cancelled() => break,
                };
                match item {
                    Some(Ok(e)) => {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{}", e.json())?;
                        out.flush()?;
                    }
                    Some(Err(e @ auditship::client::Error::Decode { .. })) => {
                        tracing::warn!(error = %e, "frame is not an event; skipped")
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { pipelines } => Ok(validate(&pipelines)),
        Command::Reconcile {
            pipeline,
            since,
            until,
            sandboxes,
            dry_run,
        } => reconcile(&pipeline, &since, until.as_deref(), &sandboxes, dry_run).await,
        Command::Transform {
            pipeline,
            input,
            sink,
        } => transform(&pipeline, input.as_deref(), sink.as_deref()),
        Command::Checkpoints {
            pipeline,
            export,
            import,
        } => match (export, import) {
            (Some(to), _) => export_checkpoints(&pipeline, &to).await,
            (None, Some(from)) => import_checkpoints(&pipeline, &from).await,
            (None, None) => checkpoints(&pipeline).await,
        },
        Command::Demo { dir } => demo(&dir).await,
        Command::Sim(args) => sim(args).await,
    }
}

fn load_one(path: &Path) -> anyhow::Result<Pipeline> {
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

/// RFC 3339, or a duration before now: `30s`, `15m`, `24h`, `7d`.
fn resolve_time(s: &str) -> anyhow::Result<i64> {
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    let secs = span_secs(s).with_context(|| {
        format!("{s:?} is not a time: use RFC 3339 (2026-11-01T00:00:00Z) or a relative span (30m, 24h, 7d)")
    })?;
    Ok(chrono::Utc::now().timestamp_micros() - secs * 1_000_000)
}

/// A span like `30s`, `15m`, `24h`, `7d`, `2w`, in seconds.
fn span_secs(s: &str) -> anyhow::Result<i64> {
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

/// `auditship verify`'s arguments.
// Without S3 support the S3 flags are parsed but have nothing to configure.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The archive: the directory a file sink writes into (its template's fixed part), or
    /// s3://BUCKET/PREFIX for an S3 sink's objects.
    path: PathBuf,
    /// Pipeline file: its checkpoint database anchors the chains (so removing the newest
    /// units together with their manifest lines is caught too) and its [manifest] hmac_key
    /// checks the signatures.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Output: `text` for a person, `json` for machines.
    #[arg(long, value_enum, default_value = "text")]
    format: ReportFormat,
    /// Also report per-sandbox gaps between consecutive events longer than this (30m, 6h,
    /// 1d), by cursor time.
    #[arg(long)]
    max_gap: Option<String>,
    /// Accept bytes after a unit's last seal and files in no manifest as notes: a running
    /// pipeline's open files look like that.
    #[arg(long)]
    allow_unsealed: bool,
    /// Check HMACs with the key in this environment variable (default: the pipeline's
    /// [manifest] hmac_key, with --pipeline).
    #[arg(long)]
    hmac_key_env: Option<String>,
    /// For s3:// archives: an S3-compatible endpoint (default: the pipeline's S3 sink for
    /// that bucket, else AWS). Credentials come from the AWS chain.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// For s3:// archives: the region.
    #[arg(long)]
    s3_region: Option<String>,
    /// For s3:// archives: path-style addressing (most S3-compatible stores need it).
    #[arg(long)]
    s3_path_style: bool,
    /// Also compare the events per sandbox and hour with the API's list endpoint (after the
    /// pipeline's transforms and the sink's route), over each sandbox's archived span, and
    /// name the hours that differ. Needs --pipeline (and its API key).
    #[arg(long, requires = "pipeline")]
    against_api: bool,
}

/// `auditship verify`.
async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    use auditship::verify::{self, Archive, DirArchive, Options, Under};
    let fail = |m: String| -> anyhow::Result<ExitCode> {
        eprintln!("auditship verify: {m}");
        Ok(ExitCode::from(2))
    };
    let mut opts = Options {
        allow_unsealed: args.allow_unsealed,
        ..Default::default()
    };
    if let Some(gap) = &args.max_gap {
        match span_secs(gap) {
            Ok(s) if s > 0 => opts.max_gap_us = Some(s * 1_000_000),
            Ok(_) => return fail(format!("--max-gap {gap}: must be more than 0")),
            Err(e) => return fail(format!("--max-gap: {e}")),
        }
    }
    if let Some(var) = &args.hmac_key_env {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {
                auditship::secret::remember_secret(&v);
                opts.key = Some(auditship::transform::HmacKey::new(v.as_bytes()));
            }
            _ => {
                return fail(format!(
                    "--hmac-key-env {var}: that environment variable is not set; export the manifest key"
                ))
            }
        }
    }
    let text = args.path.to_string_lossy().into_owned();
    let s3 = text.strip_prefix("s3://").map(|rest| {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (bucket.to_string(), prefix.to_string())
    });
    let mut pipeline = None;
    let mut shipped_until = std::collections::BTreeMap::new();
    if let Some(path) = &args.pipeline {
        // Comparing with the API needs the API key; checking the archive alone does not.
        let mode = if args.against_api {
            LoadMode::Run
        } else {
            LoadMode::Verify
        };
        let p = match config::load(path, mode) {
            Ok(p) => p,
            Err(e) => return fail(e.to_string()),
        };
        if opts.key.is_none() {
            opts.key = p.manifest_key.clone();
        }
        if !p.checkpoint_path.exists() {
            return fail(format!(
                "the pipeline's checkpoint database {} does not exist; run verify where the pipeline runs, or leave out --pipeline",
                p.checkpoint_path.display()
            ));
        }
        // Read-only: verifying must not change the database it checks against.
        let db = match auditship::checkpoint::Snapshot::open(&p.checkpoint_path) {
            Ok(db) => db,
            Err(e) => return fail(e.to_string()),
        };
        let anchor = db
            .manifest_chains(&p.name)?
            .into_iter()
            .filter(|(sink, _)| p.sinks.contains_key(sink))
            .map(|(sink, rows)| ((p.name.clone(), sink), rows))
            .collect();
        shipped_until = db.shipped_until(&p.name)?;
        let under = match &s3 {
            Some((_, prefix)) => Under::Prefix(prefix.clone()),
            None => Under::Dir(args.path.clone()),
        };
        opts.anchor = Some(auditship::verify::Anchor {
            chains: anchor,
            under,
        });
        pipeline = Some(p);
    }
    let archive: Box<dyn Archive + Send> = match s3 {
        None => Box::new(DirArchive::new(&args.path)),
        Some((bucket, prefix)) => match s3_archive(&args, pipeline.as_ref(), &bucket, &prefix).await {
            Ok(a) => a,
            Err(m) => return fail(m),
        },
    };
    let mut report =
        match tokio::task::spawn_blocking(move || verify::verify(archive.as_ref(), &opts)).await? {
            Ok(r) => r,
            Err(e) => return fail(format!("cannot read {text}: {e}")),
        };
    if let (true, Some(p)) = (args.against_api, &pipeline) {
        if report.hour_counts.is_empty() && report.events > 0 {
            report.notes.push("not compared with the API: the archived events carry no top-level id and cursor time (a transform reshaped them)".into());
        } else {
            let sink = report
                .chains
                .iter()
                .find(|c| c.pipeline == p.name)
                .map(|c| c.sink.clone());
            // How far the checkpoint says each sandbox was shipped, over all streams.
            if let Err(e) = report.compare_with_api(p, sink.as_deref(), &shipped_until).await {
                return fail(format!("comparing with the API: {e}"));
            }
        }
    }
    match args.format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Text => print!("{}", report.to_text()),
    }
    Ok(if report.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The S3 archive `s3://bucket/prefix`: endpoint, region and addressing from the flags, else
/// from the pipeline's S3 sink writing to that bucket, else the AWS defaults.
#[cfg(feature = "s3")]
async fn s3_archive(
    args: &VerifyArgs,
    pipeline: Option<&Pipeline>,
    bucket: &str,
    prefix: &str,
) -> Result<Box<dyn auditship::verify::Archive + Send>, String> {
    if bucket.is_empty() {
        return Err("give the archive as s3://BUCKET/PREFIX".into());
    }
    let sink = pipeline.and_then(|p| {
        p.sinks.values().find_map(|s| match s {
            config::SinkConfig::S3(c) if c.bucket == bucket => Some(c.clone()),
            _ => None,
        })
    });
    let endpoint = args
        .s3_endpoint
        .clone()
        .or_else(|| sink.as_ref().and_then(|c| c.endpoint.clone()));
    let region = args
        .s3_region
        .clone()
        .or_else(|| sink.as_ref().and_then(|c| c.region.clone()));
    let path_style = args.s3_path_style || sink.as_ref().is_some_and(|c| c.force_path_style);
    let client = auditship_sink_s3::connect(region.as_deref(), endpoint.as_deref(), path_style).await;
    Ok(Box::new(auditship::verify::S3Archive::new(
        client,
        bucket,
        prefix,
        tokio::runtime::Handle::current(),
    )))
}

/// Without S3 support there is no S3 archive to read.
#[cfg(not(feature = "s3"))]
async fn s3_archive(
    _args: &VerifyArgs,
    _pipeline: Option<&Pipeline>,
    _bucket: &str,
    _prefix: &str,
) -> Result<Box<dyn auditship::verify::Archive + Send>, String> {
    Err("this auditship was built without S3 support; rebuild it with the `s3` feature".into())
}

/// Under `--shard I/N`, pipeline files see `${AUDITSHIP_SHARD}` and `${AUDITSHIP_SHARDS}`.
fn define_shard_vars(shard: Option<auditship::shard::Shard>) {
    if let Some(s) = shard {
        config::define_var("AUDITSHIP_SHARD", &s.index.to_string());
        config::define_var("AUDITSHIP_SHARDS", &s.count.to_string());
    }
}

/// Load and check the pipelines `run` follows (after sharding). `Ok(vec![])`: this shard owns
/// no sandbox of any of them.
fn load_for_run(paths: &[PathBuf], shard: Option<auditship::shard::Shard>) -> anyhow::Result<Vec<Pipeline>> {
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
        for sink in p.sinks.values() {
            // Topics may be shared: only files would be corrupted by two writers.
            let config::SinkConfig::File(f) = sink else {
                continue;
            };
            if let Some(other) = owners.insert(format!("path:{}", f.path), p.file.display().to_string()) {
                bail!(
                    "{} and {other} both write files at {:?}; give each pipeline its own archive path",
                    p.file.display(),
                    f.path
                );
            }
        }
    }
    Ok(pipelines)
}

/// How a generation of pipelines ended.
enum Generation {
    /// Stopped by SIGTERM/SIGINT, or a pipeline failed: exit with this code.
    Exit(ExitCode),
    /// SIGHUP with pipeline files that load: run these next.
    Reload(Vec<Pipeline>),
}

async fn run(
    paths: Vec<PathBuf>,
    shard: Option<auditship::shard::Shard>,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    define_shard_vars(shard);
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
            Generation::Exit(code) => return Ok(code),
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
    pipelines: Vec<Pipeline>,
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
    let mut code = ExitCode::SUCCESS;
    let mut next: Option<Vec<Pipeline>> = None;
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
                        eprintln!("error: pipeline {name}: {e}");
                        code = ExitCode::from(if e.is_retryable() { 2 } else { 1 });
                        // One pipeline failing stops the others: a supervisor restarts the process.
                        stop.cancel();
                    }
                    Some(Err(e)) => {
                        eprintln!("error: a pipeline task failed: {e}");
                        code = ExitCode::from(2);
                        stop.cancel();
                    }
                    None => {}
                }
                if tasks.is_empty() {
                    return match next.take() {
                        Some(p) if !stop.is_cancelled() => Generation::Reload(p),
                        _ => Generation::Exit(code),
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
            _ = stop.cancelled(), if tasks.is_empty() => return Generation::Exit(code),
        }
    }
}

/// `auditship backfill`'s arguments.
struct BackfillArgs {
    path: PathBuf,
    since: Option<String>,
    until: Option<String>,
    sandboxes: Vec<String>,
    job: Option<String>,
    dry_run: bool,
    shard: Option<auditship::shard::Shard>,
    metrics_addr: Option<std::net::SocketAddr>,
}

async fn backfill(args: BackfillArgs) -> anyhow::Result<ExitCode> {
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
    let mut p = match config::load(&path, LoadMode::Run) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(d) = &mut p.discovery {
        d.shard = shard;
    } else if let Some(s) = shard {
        p.sandboxes.retain(|id| s.owns(id));
        if p.sandboxes.is_empty() {
            eprintln!(
                "shard {s} owns none of pipeline {}'s sandboxes; nothing to backfill",
                p.name
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    if let Some(name) = &job {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
        {
            eprintln!("error: --job {name:?}: use letters, digits and . _ : - (e.g. nightly-2026-11-25)");
            return Ok(ExitCode::from(1));
        }
    }
    // A job that ran before keeps its window; a new one needs --since.
    let known_job = match &job {
        Some(name) => match open_job(&p, name).await {
            Ok(j) => j,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(if e.is_retryable() { 2 } else { 1 }));
            }
        },
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
            return Ok(ExitCode::SUCCESS);
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
        eprintln!(
            "error: job {:?} has not run before: give --since",
            job.unwrap_or_default()
        );
        return Ok(ExitCode::from(1));
    };
    let since_us = match resolve_time(&since) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --since: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    let until_us = match until.as_deref().map(resolve_time).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --until: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    if until_us.is_some_and(|u| u < since_us) {
        eprintln!("error: --until is before --since");
        return Ok(ExitCode::from(1));
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
        let record = auditship::checkpoint::Job {
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
        let started = async {
            auditship::checkpoint::Store::open(&p.checkpoint_path)?
                .start_job(&p.name, &record)
                .await
        };
        if let Err(e) = started.await {
            eprintln!("error: recording job {name}: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let mut opts = RunOptions::new(Mode::Backfill(window.clone()));
    opts.shutdown = shutdown_signal();
    if let Some(addr) = metrics_addr {
        if let Err(e) = auditship::metrics::serve(addr, opts.shutdown.clone()).await {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
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
                    auditship::checkpoint::Store::open(&p.checkpoint_path)?
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
            Ok(ExitCode::SUCCESS)
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
            Ok(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: backfill of {}: {e}", p.name);
            if e.is_retryable() {
                eprintln!("resume with: {resume}");
                Ok(ExitCode::from(2))
            } else {
                Ok(ExitCode::from(1))
            }
        }
    }
}

fn transform(path: &Path, input: Option<&Path>, only: Option<&str>) -> anyhow::Result<ExitCode> {
    use auditship::transform::Outcome;
    use std::io::BufRead as _;

    let p = config::load(path, LoadMode::Try)?;
    if let Some(name) = only {
        if !p.sinks.contains_key(name) {
            let names: Vec<&str> = p.sinks.keys().map(String::as_str).collect();
            anyhow::bail!(
                "pipeline {} has no sink {name:?} (it has: {})",
                p.name,
                names.join(", ")
            );
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
    Ok(if failed_any {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn reconcile(
    path: &Path,
    since: &str,
    until: Option<&str>,
    sandboxes: &[String],
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let p = match config::load(path, LoadMode::Run) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let (since_us, until_us) = match (resolve_time(since), until.map(resolve_time).transpose()) {
        (Ok(s), Ok(u)) => (s, u.unwrap_or_else(|| chrono::Utc::now().timestamp_micros())),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    let report = match auditship::reconcile::reconcile(&p, since_us, until_us, sandboxes, dry_run).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: reconcile of {}: {e}", p.name);
            return Ok(ExitCode::from(if e.is_retryable() { 2 } else { 1 }));
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "reconcile of {}, {} to {}: {} sandbox-hours checked, {} events in the API, {} hour(s) differ",
        p.name,
        format_time(since_us),
        format_time(until_us),
        report.hours_checked,
        report.api_events,
        report.diffs.len()
    )?;
    if !report.diffs.is_empty() {
        writeln!(
            out,
            "{:<24} {:<22} {:>8} {:>8}  MISSING IN FILES",
            "SANDBOX", "HOUR", "API", "LEDGER"
        )?;
        for d in &report.diffs {
            let missing: Vec<String> = d.missing.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            writeln!(
                out,
                "{:<24} {:<22} {:>8} {:>8}  {}",
                d.resource_id,
                chrono::DateTime::from_timestamp_micros(d.hour_us)
                    .map(|t| t.format("%Y-%m-%dT%H:00Z").to_string())
                    .unwrap_or_default(),
                d.api,
                d.ledger,
                if missing.is_empty() {
                    "-".into()
                } else {
                    missing.join(", ")
                }
            )?;
        }
    }
    for (sink, why) in &report.not_comparable {
        writeln!(out, "sink {sink} not compared by id: {why}")?;
    }
    if dry_run {
        writeln!(out, "dry run: nothing shipped")?;
        return Ok(ExitCode::SUCCESS);
    }
    if !report.complete {
        writeln!(out, "re-shipping was interrupted; run the same reconcile again")?;
        return Ok(ExitCode::from(2));
    }
    writeln!(out, "{} event(s) shipped again", report.reshipped)?;
    Ok(ExitCode::SUCCESS)
}

/// A named job's record, if it ran before.
async fn open_job(
    p: &Pipeline,
    name: &str,
) -> Result<Option<auditship::checkpoint::Job>, auditship::checkpoint::StoreError> {
    if !p.checkpoint_path.exists() {
        return Ok(None);
    }
    auditship::checkpoint::Store::open(&p.checkpoint_path)?
        .job(&p.name, name)
        .await
}

/// Print what a backfill would ship.
async fn dry_run_report(p: &Pipeline, window: &Window) -> anyhow::Result<ExitCode> {
    let counted = match pipeline::count_window(p, window).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: dry run of {}: {e}", p.name);
            return Ok(ExitCode::from(if e.is_retryable() { 2 } else { 1 }));
        }
    };
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
    Ok(ExitCode::SUCCESS)
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        match config::load(path, LoadMode::Validate) {
            Ok(p) => {
                for w in &p.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "ok: {} (pipeline {:?}: {}, sinks: {})",
                    path.display(),
                    p.name,
                    match &p.discovery {
                        Some(_) => "every sandbox (discovered)".to_string(),
                        None => format!("{} sandbox(es)", p.sandboxes.len()),
                    },
                    p.sinks.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            Err(errors) => {
                failed = true;
                for e in errors.0 {
                    println!("error: {e}");
                }
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn checkpoints(path: &Path) -> anyhow::Result<ExitCode> {
    let p = config::load(path, LoadMode::Validate)?;
    if !p.checkpoint_path.exists() {
        println!(
            "no checkpoints yet: {} does not exist",
            p.checkpoint_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = auditship::checkpoint::Store::open(&p.checkpoint_path)?;
    let rows = store.streams(&p.name).await?;
    if rows.is_empty() {
        println!(
            "no checkpoints for pipeline {:?} in {}",
            p.name,
            p.checkpoint_path.display()
        );
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::SUCCESS)
}

/// One exported position.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExportedCheckpoint {
    pipeline: String,
    stream: String,
    #[serde(flatten)]
    checkpoint: auditship::checkpoint::Checkpoint,
}

async fn export_checkpoints(path: &Path, to: &Path) -> anyhow::Result<ExitCode> {
    let p = config::load(path, LoadMode::Validate)?;
    let rows = if p.checkpoint_path.exists() {
        auditship::checkpoint::Store::open(&p.checkpoint_path)?
            .streams(&p.name)
            .await?
    } else {
        Vec::new()
    };
    let mut text = String::new();
    for (stream, checkpoint) in &rows {
        let row = ExportedCheckpoint {
            pipeline: p.name.clone(),
            stream: stream.clone(),
            checkpoint: checkpoint.clone(),
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
    Ok(ExitCode::SUCCESS)
}

async fn import_checkpoints(path: &Path, from: &Path) -> anyhow::Result<ExitCode> {
    let p = config::load(path, LoadMode::Validate)?;
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: ExportedCheckpoint = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not an exported checkpoint", from.display(), n + 1))?;
        if row.pipeline != p.name {
            bail!(
                "{}:{}: the export is of pipeline {:?}, not {:?}; import it with that pipeline's file",
                from.display(),
                n + 1,
                row.pipeline,
                p.name
            );
        }
        rows.push((row.stream, row.checkpoint));
    }
    let store = auditship::checkpoint::Store::open(&p.checkpoint_path)?;
    // A running pipeline would overwrite what is imported with its own positions.
    let _lock = store.lock(&p.name)?;
    let (written, kept) = store.import(&p.name, rows).await?;
    eprintln!(
        "imported into {}: {written} positions written, {kept} kept (this database's were as new or newer)",
        p.checkpoint_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m{}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h{}m", s / 3_600, (s % 3_600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

async fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    let sandboxes = match (args.ids.is_empty(), args.sandboxes) {
        (false, _) => args.ids,
        (true, Some(n)) => (1..=n).map(|i| format!("sb-{i}")).collect(),
        (true, None) => DEMO_SANDBOXES.iter().map(|s| s.to_string()).collect(),
    };
    let mut config = SimConfig {
        port: args.port,
        sandboxes,
        backlog_per_sandbox: args.backlog,
        live_rate_per_sec: args.rate,
        live_events_per_sandbox: args.live_events,
        no_socket: args.no_socket,
        drop_every_frames: args.drop_every,
        ratio_429: args.ratio_429,
        ratio_5xx: args.ratio_5xx,
        garbage_ratio: args.garbage,
        oversize_every_frames: args.oversize_every,
        refuse_every_handshakes: args.refuse_every_handshakes,
        slow_response_ms: args.slow_response_ms,
        hang_every_lists: args.hang_every_lists,
        ties: args.ties.max(1),
        list_shape: args.list_shape,
        secret_every_events: args.secret_every,
        burst: args.fast,
        mixed_frames: !args.plain_frames,
        ..SimConfig::default()
    };
    if let Some(k) = args.api_key {
        config.api_key = k;
    }
    let sim = Simulator::start(config.clone())
        .await
        .with_context(|| format!("starting the simulator on 127.0.0.1:{}", args.port))?;
    println!("Miosa simulator serving {} sandbox(es)", config.sandboxes.len());
    println!("  base_url = \"{}\"", sim.base_url());
    println!("  sandboxes = {:?}", config.sandboxes);
    println!("  key: the simulator accepts the key in MIOSA_SIM_API_KEY (default msk_sim_demo_key)");
    println!("Ctrl-C stops it.");
    shutdown_signal().cancelled().await;
    sim.stop();
    Ok(ExitCode::SUCCESS)
}

/// The sandboxes of `pipelines/demo.toml`, which `auditship sim` serves by default.
const DEMO_SANDBOXES: [&str; 5] = ["sb-alpha", "sb-beta", "sb/gamma", "sb-delta", "sb-epsilon"];

/// The embedded default: simulator + demo pipeline + file sink, end to end.
async fn demo(dir: &Path) -> anyhow::Result<ExitCode> {
    const MARKER: &str = ".auditship-demo";
    if dir.exists() {
        if !dir.join(MARKER).exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} exists and was not made by `auditship demo`; pass --dir with a new directory",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by auditship demo; deleted and rebuilt on each run\n",
    )?;

    let sandboxes: Vec<String> = DEMO_SANDBOXES.iter().map(|s| s.to_string()).collect();
    let sim = Simulator::start(SimConfig {
        sandboxes: sandboxes.clone(),
        backlog_per_sandbox: 400,
        live_rate_per_sec: 150.0,
        live_events_per_sandbox: Some(300),
        no_socket: vec!["sb-delta".into()],
        drop_every_frames: Some(250),
        garbage_ratio: 0.005,
        ties: 3,
        ratio_429: 0.03,
        ratio_5xx: 0.03,
        retry_after_secs: 0.05,
        ..SimConfig::default()
    })
    .await
    .context("starting the bundled simulator")?;

    let text = include_str!("../pipelines/demo.toml");
    let mut p = config::parse(Path::new("pipelines/demo.toml"), text, LoadMode::Validate)?;
    p.base_url = sim.base_url();
    p.api_key = Some(auditship::secret::ApiKey::new(sim.api_key()));
    p.poll_interval = Duration::from_millis(250);
    p.checkpoint_path = dir.join("state/checkpoints.db");
    p.dead_letter_path = dir.join("state/dead-letter.ndjson");
    for sink in p.sinks.values_mut() {
        let config::SinkConfig::File(f) = sink else {
            continue;
        };
        f.path = format!(
            "{}/{}",
            dir.display(),
            f.path.trim_start_matches("auditship-demo/")
        );
    }

    println!(
        "auditship demo: a simulated Miosa API with {} sandboxes on {}",
        sandboxes.len(),
        sim.base_url()
    );
    println!("  (one sandbox has no socket, sockets drop every 250 frames, some requests fail with 429/5xx, a few frames are garbage)");
    let started = Instant::now();
    let opts = RunOptions::new(Mode::Live);
    let stop = opts.shutdown.clone();
    let progress = opts.progress.clone();
    let runner = tokio::spawn(async move {
        let r = pipeline::run(&p, opts).await;
        (p, r)
    });
    // Ship until every event the simulator made is checkpointed, or a minute passes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done =
            sim.live_done() && progress.committed.load(Ordering::Relaxed) as usize >= sim.total_events();
        if done || Instant::now() >= deadline || runner.is_finished() {
            break;
        }
    }
    stop.cancel();
    let (p, result) = runner.await.context("the demo pipeline task failed")?;
    let report = result?;
    let elapsed = started.elapsed();
    sim.stop();

    let archive_root = dir.join("archive");
    let mut files = Vec::new();
    collect_files(&archive_root, &mut files)?;
    files.sort();
    // Check the archive against what the simulator made: every event once, byte for byte.
    let mut archived: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for f in &files {
        for line in std::fs::read_to_string(f)?.lines() {
            *archived.entry(line.to_string()).or_default() += 1;
        }
    }
    let lines: usize = archived.values().map(|n| *n as usize).sum();
    let made: Vec<String> = sandboxes
        .iter()
        .flat_map(|s| sim.events(s))
        .map(|e| e.json.to_string())
        .collect();
    let expected = made.len();
    let missing = made.iter().filter(|j| !archived.contains_key(*j)).count();
    let duplicated = archived.values().filter(|n| **n > 1).count();
    println!();
    println!("{:<12} {:>8}  TRANSPORT AT THE END", "SANDBOX", "EVENTS");
    for sb in &sandboxes {
        let t = report
            .transports
            .get(sb)
            .map(|t| format!("{t:?}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:>8}  {}",
            sb,
            report.shipped.get(sb).copied().unwrap_or(0),
            t
        );
    }
    println!();
    println!(
        "shipped {lines} of {expected} events in {:.1}s into {} files under {}:",
        elapsed.as_secs_f64(),
        files.len(),
        archive_root.display()
    );
    for f in files.iter().take(8) {
        println!("  {}", f.display());
    }
    if files.len() > 8 {
        println!("  … and {} more", files.len() - 8);
    }
    println!(
        "dead-lettered {} garbage frames into {}",
        report.dead_lettered,
        report.dead_letter_path.display()
    );
    println!(
        "checkpoints in {} (see: auditship checkpoints pipelines/demo.toml)",
        p.checkpoint_path.display()
    );
    if lines != expected || missing > 0 || duplicated > 0 {
        eprintln!("error: the archive holds {lines} lines for {expected} events: {missing} missing, {duplicated} duplicated");
        return Ok(ExitCode::from(2));
    }
    println!("every event archived exactly once, byte for byte as the API sent it.");
    let archive = auditship::verify::DirArchive::new(&archive_root);
    let verified = auditship::verify::verify(&archive, &Default::default())?;
    if !verified.clean {
        eprint!("{}", verified.to_text());
        return Ok(ExitCode::from(2));
    }
    println!(
        "every file sealed in a hash-chained manifest ({} entries); check it any time: auditship verify {}",
        verified.entries,
        archive_root.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path
            .file_name()
            .is_none_or(|n| n != auditship_sink::MANIFEST_NAME)
        {
            out.push(path);
        }
    }
    Ok(())
}

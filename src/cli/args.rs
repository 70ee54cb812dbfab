//! The command line's flags and subcommands (clap). A command's own flags, when they are
//! many, live in a struct beside the command (`VerifyArgs`, `SimArgs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::api::ListArgs;
use super::backfill::BackfillArgs;
use super::export::{ExportArgs, VerifyExportArgs};
use super::sim::SimArgs;
use super::verify::VerifyArgs;

/// Ship Miosa sandbox egress-audit events to files, exactly once, with checkpoints.
///
/// Start with `auditship demo` (no credentials needed), then copy a pipeline from
/// `pipelines/` and `auditship validate` it.
#[derive(Parser, Debug)]
#[command(name = "auditship", version, max_term_width = 100)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written on stderr.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// With --shard I/N, add I to --metrics-addr's port (9460 serves shard 0, 9470 shard
        /// 10), so that one service template gives every shard a port of its own.
        #[arg(long, requires_all = ["shard", "metrics_addr"])]
        metrics_port_per_shard: bool,
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
    Backfill(BackfillArgs),
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
        /// Also write a completeness report here (JSON): per sandbox and hour, the API's
        /// count, the ledger's, each file sink's, the gap and what was shipped again, signed
        /// with the pipeline's [manifest] signing key (auditors check it with verify-report).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Also ship one OCSF Detection Finding (class 2004) per sandbox-hour with a gap into
        /// this sink of the pipeline (a SIEM's), so the SIEM sees the hole in the audit trail.
        #[arg(long, value_name = "SINK")]
        gap_findings_to: Option<String>,
    },
    /// Check a completeness report (`reconcile --report`) offline: its signature under the
    /// public key; print its gaps. Exit codes: 0 it stands (its findings are printed), 1 it
    /// was changed or signed by another key, 2 it cannot be read.
    VerifyReport {
        /// The report.
        report: PathBuf,
        /// The public key of the pipeline's signing key.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
    /// List a sandbox's events (NDJSON on stdout), like the SDK's `list`.
    List(ListArgs),
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
        #[arg(required_unless_present = "parquet_schema")]
        pipeline: Option<PathBuf>,
        /// NDJSON file of events (bare or wrapped in {"event": ...}). Default: stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Print only this sink's events, as plain NDJSON.
        #[arg(long)]
        sink: Option<String>,
        /// Print the Parquet schema a security_lake sink writes for this OCSF class (4002, 4001,
        /// 2004) and exit; no pipeline is read.
        #[arg(long, value_name = "CLASS_UID", conflicts_with_all = ["input", "sink"])]
        parquet_schema: Option<u32>,
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
    /// Cut an evidence bundle out of a signed archive: the selection's stretches of data, with
    /// exactly the manifest entries, signed digests and public key that prove them, and a
    /// README, in one .tar.zst. Everything is checked on the way; an archive that does not
    /// verify is not exported.
    ///
    /// Exit codes: 0 written, 1 nothing to export or the archive does not prove it (run
    /// verify), 2 reading or writing failed.
    Export(ExportArgs),
    /// Check an evidence bundle offline: every digest's signature, the runs of digests, every
    /// entry they list, every stretch byte for byte; print which events it proves.
    ///
    /// Exit codes: 0 clean, 1 problems found, 2 the bundle could not be opened.
    VerifyExport(VerifyExportArgs),
    /// Write a key pair for signing digests: PREFIX.key (private, mode 0600) and PREFIX.pub
    /// (public, for auditors), Ed25519 in PEM (openssl reads both). Never overwrites a key.
    Keygen {
        /// Where to write: PREFIX.key and PREFIX.pub.
        #[arg(long, default_value = "auditship-signing")]
        out: PathBuf,
    },
    /// Run the bundled simulator and a pipeline against it: no credentials, no services.
    Demo {
        /// Where the demo writes its archive and state (replaced on each run).
        #[arg(long, default_value = "auditship-demo")]
        dir: PathBuf,
    },
    /// Run the bundled Miosa simulator (for trying pipelines and for tests).
    Sim(SimArgs),
}

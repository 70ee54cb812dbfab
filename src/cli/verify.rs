//! `auditship verify`: check an archive's hashes and chains.

use std::path::PathBuf;

use auditship::config::{self, LoadMode};
use clap::ValueEnum;

use super::exit::{self, Code, CommandResult, OrExit};
use super::time::span_secs;

/// How `auditship verify` prints its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A summary a person can read.
    Text,
    /// One JSON object.
    Json,
}

/// `auditship verify`'s arguments.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
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
    /// Check the signed digests with this public key (PEM, as `auditship keygen` writes it):
    /// every signature, the chain of digests with no hole, every entry they list. Needs
    /// nothing else: no checkpoint database, no secret.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// With --public-key: the digests must reach this time (RFC 3339, or 2h/1d ago). Default:
    /// now minus two digest periods, where a chain the pipeline signed as stopped earlier is
    /// accepted with a note.
    #[arg(long, requires = "public_key")]
    until: Option<String>,
    /// For s3:// archives: check each object by the SHA-256 S3 keeps for it
    /// (GetObjectAttributes) instead of downloading it, where S3 keeps one for the whole
    /// object (single-part uploads); others are read. Its events are then not read: no
    /// repeat or gap checks for those objects. For very large archives.
    #[arg(long)]
    s3_checksums: bool,
    /// Where an s3:// archive is served.
    #[command(flatten)]
    s3: super::archive::S3Flags,
    /// Also compare the events per sandbox and hour with the API's list endpoint (after the
    /// pipeline's transforms and the sink's route), over each sandbox's archived span, and
    /// name the hours that differ. Needs --pipeline (and its API key).
    #[arg(long, requires = "pipeline")]
    against_api: bool,
}

/// `auditship verify`.
pub async fn verify(args: VerifyArgs) -> CommandResult {
    use auditship::ops::verify::{self, Options, Under};
    // Anything that keeps the check from running exits 2 (1 means findings).
    let fail = |m: String| -> CommandResult { Err(exit::fail(Code::Again, m)) };
    let mut opts = Options {
        allow_unsealed: args.allow_unsealed,
        stored_checksums: args.s3_checksums,
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
    if let Some(path) = &args.public_key {
        match auditship::manifest::DigestPublicKey::from_file(path) {
            Ok(k) => opts.public_key = Some(k),
            Err(e) => return fail(format!("--public-key: {e}")),
        }
    }
    if let Some(until) = &args.until {
        match super::time::resolve_time(until) {
            Ok(us) => opts.horizon = Some(verify::Horizon::Until(us)),
            Err(e) => return fail(format!("--until {until}: {e}")),
        }
    }
    let text = args.path.to_string_lossy().into_owned();
    let s3 = super::archive::s3_location(&args.path);
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
        let db = match auditship::store::Snapshot::open(&p.checkpoint_path) {
            Ok(db) => db,
            Err(e) => return fail(e.to_string()),
        };
        let anchor = db
            .manifest_chains(&p.name)
            .or_exit(Code::Again)?
            .into_iter()
            .filter(|(sink, _)| p.sinks.contains_key(sink))
            .map(|(sink, rows)| ((p.name.clone(), sink), rows))
            .collect();
        shipped_until = db.shipped_until(&p.name).or_exit(Code::Again)?;
        let under = match &s3 {
            Some((_, prefix)) => Under::Prefix(prefix.clone()),
            None => Under::Dir(args.path.clone()),
        };
        opts.anchor = Some(auditship::ops::verify::Anchor {
            chains: anchor,
            under,
        });
        pipeline = Some(p);
    }
    let archive = match args.s3.archive(&args.path, pipeline.as_ref()).await {
        Ok(a) => a,
        Err(m) => return fail(m),
    };
    let mut report = match tokio::task::spawn_blocking(move || verify::verify(archive.as_ref(), &opts))
        .await
        .or_exit(Code::Again)?
    {
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
    Ok(if report.clean { Code::Ok } else { Code::Fix })
}

//! `auditship export` and `auditship verify-export`: evidence bundles (see
//! [`auditship::ops::bundle`]).

use std::io::Write as _;
use std::path::PathBuf;

use auditship::manifest::DigestPublicKey;
use auditship::ops::bundle::{self, Selection};

use super::exit::{self, Code, CommandResult, OrExit};
use super::verify::ReportFormat;

/// `auditship export`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The archive: the directory a file sink writes into (its template's fixed part), or
    /// s3://BUCKET/PREFIX for an S3 sink's objects.
    archive: PathBuf,
    /// The public key the archive's digests are signed with (it goes into the bundle, and the
    /// digests are checked with it before anything is written).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Only events of these sandboxes (repeat the flag); default: all.
    #[arg(long = "sandbox", value_name = "ID")]
    sandboxes: Vec<String>,
    /// Only events from this time on (RFC 3339, or 24h/7d ago), by cursor time.
    #[arg(long)]
    since: Option<String>,
    /// Only events before this time.
    #[arg(long)]
    until: Option<String>,
    /// The bundle to write (`.tar.zst`); never overwritten.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,
    /// Where an s3:// archive is served.
    #[command(flatten)]
    s3: super::archive::S3Flags,
}

/// `auditship export`.
pub async fn export(args: ExportArgs) -> CommandResult {
    let fail = |code, m: String| -> CommandResult { Err(exit::fail(code, m)) };
    let key = match DigestPublicKey::from_file(&args.public_key) {
        Ok(k) => k,
        Err(e) => return fail(Code::Fix, format!("--public-key: {e}")),
    };
    let time = |flag: &str, t: &Option<String>| -> Result<Option<i64>, exit::Failure> {
        t.as_deref()
            .map(|t| {
                super::time::resolve_time(t).map_err(|e| exit::fail(Code::Fix, format!("--{flag} {t}: {e}")))
            })
            .transpose()
    };
    let selection = Selection {
        sandboxes: args.sandboxes.clone(),
        since_us: time("since", &args.since)?,
        until_us: time("until", &args.until)?,
    };
    if args.output.exists() {
        return fail(
            Code::Fix,
            format!(
                "{} exists; a bundle is never overwritten: name another file",
                args.output.display()
            ),
        );
    }
    let archive = match args.s3.archive(&args.archive, None).await {
        Ok(a) => a,
        Err(m) => return fail(Code::Fix, m),
    };
    // Written under a temporary name and renamed when whole: a half-written bundle never
    // carries the name an auditor is handed.
    let mut partial = args.output.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(|e| exit::fail(Code::Fix, format!("creating {}: {e}", partial.display())))?;
    let written = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || -> Result<_, bundle::ExportError> {
            let mut out = std::io::BufWriter::new(file);
            let summary = bundle::export(archive.as_ref(), &key, &selection, &mut out)?;
            let file = out.into_inner().map_err(|e| bundle::ExportError::Io {
                what: format!("writing {}", partial.display()),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(|source| bundle::ExportError::Io {
                what: format!("syncing {}", partial.display()),
                source,
            })?;
            Ok(summary)
        })
        .await
        .or_exit(Code::Again)?
    };
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return fail(Code::retry_if(e.is_retryable()), e.to_string());
        }
    };
    std::fs::rename(&partial, &args.output).map_err(|e| {
        exit::fail(
            Code::Again,
            format!("renaming {} to {}: {e}", partial.display(), args.output.display()),
        )
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {}: {} digests, {} manifest entries, {} stretches ({} bytes of data) from {} chain(s)",
        args.output.display(),
        summary.digests,
        summary.entries,
        summary.stretches,
        summary.bytes,
        summary.chains
    )?;
    if summary.left_out_unsigned > 0 {
        writeln!(
            out,
            "note: {} stretches of the selection were sealed after their chain's newest digest and are left out (export again after the next digest)",
            summary.left_out_unsigned
        )?;
    }
    writeln!(
        out,
        "check it with: auditship verify-export {} --public-key KEY.pem",
        args.output.display()
    )?;
    Ok(Code::Ok)
}

/// `auditship verify-export`'s arguments.
#[derive(clap::Args, Debug)]
pub struct VerifyExportArgs {
    /// The bundle (`.tar.zst`) `auditship export` wrote.
    bundle: PathBuf,
    /// The public key you were given by the archive's owner (default: the one inside the
    /// bundle, whose fingerprint you then compare with theirs).
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// Output: `text` for a person, `json` for machines.
    #[arg(long, value_enum, default_value = "text")]
    format: ReportFormat,
}

/// `auditship verify-export`: exit 0 clean, 1 problems found, 2 the bundle could not be read.
pub async fn verify_export(args: VerifyExportArgs) -> CommandResult {
    let key = match &args.public_key {
        Some(path) => Some(
            DigestPublicKey::from_file(path)
                .map_err(|e| exit::fail(Code::Again, format!("--public-key: {e}")))?,
        ),
        None => None,
    };
    let file = std::fs::File::open(&args.bundle)
        .map_err(|e| exit::fail(Code::Again, format!("opening {}: {e}", args.bundle.display())))?;
    let report =
        tokio::task::spawn_blocking(move || bundle::check(std::io::BufReader::new(file), key.as_ref()))
            .await
            .or_exit(Code::Again)?;
    match args.format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Text => print!("{}", report.to_text(&args.bundle.display().to_string())),
    }
    Ok(if report.clean { Code::Ok } else { Code::Fix })
}

//! `auditship list`, `get` and `tail`: the client's calls, with a pipeline file's connection
//! settings, printing events as NDJSON.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use auditship::client::{format_time, Error, Filters, StartAt, TailOptions};
use auditship::pipeline;
use futures_util::StreamExt;

use super::exit::{Code, CommandResult};
use super::time::resolve_time;
use super::{load_one, shutdown_signal};

/// `auditship list`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Pipeline file (for the API settings).
    pub pipeline: PathBuf,
    /// The sandbox.
    #[arg(long)]
    pub sandbox: String,
    /// Only this action (allow, reject, stub, error, client_cancel).
    #[arg(long)]
    pub action: Option<String>,
    /// Only this destination host.
    #[arg(long)]
    pub host: Option<String>,
    /// From this time (RFC 3339 or relative like 24h).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Page size.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Follow pages until the end instead of printing one page.
    #[arg(long)]
    pub all: bool,
}

/// `auditship list`.
pub async fn list(args: ListArgs) -> CommandResult {
    let p = load_one(&args.pipeline)?;
    let client = pipeline::client_for(&p)?;
    let filters = Filters {
        action: args.action,
        host: args.host,
        since: args.since.map(|s| resolve_time(&s)).transpose()?.map(format_time),
        until: args.until.map(|s| resolve_time(&s)).transpose()?.map(format_time),
        limit: args.limit,
        ..Default::default()
    };
    let audit = client.sandbox(args.sandbox).audit();
    let mut out = std::io::stdout().lock();
    if args.all {
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
    Ok(Code::Ok)
}

/// `auditship get`.
pub async fn get(pipeline: &Path, event_id: &str) -> CommandResult {
    let p = load_one(pipeline)?;
    let client = pipeline::client_for(&p)?;
    let event = client.audit().get(event_id).await?;
    println!("{}", event.json());
    Ok(Code::Ok)
}

/// `auditship tail`: follow one sandbox until SIGTERM or Ctrl-C.
pub async fn tail(pipeline: &Path, sandbox: String, start: &str) -> CommandResult {
    let p = load_one(pipeline)?;
    let client = pipeline::client_for(&p)?;
    let start = match start {
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
            Some(Err(e @ Error::Decode { .. })) => {
                tracing::warn!(error = %e, "frame is not an event; skipped")
            }
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    Ok(Code::Ok)
}

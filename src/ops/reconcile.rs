//! Reconciliation (`auditship reconcile`): compare what was shipped with what the API holds for
//! a window, hour by hour, and ship again only what is missing.
//!
//! Three counts per (sandbox, hour of `inserted_at`):
//! - the API's: every event the list endpoint returns for the window;
//! - the ledger's: events the checkpoint passed, counted in the same transaction
//!   (`shipped_hours`);
//! - each file sink's: the events found in its files, compared by id with what that sink should
//!   hold (the API's events after the pipeline's transforms and the sink's route), so a gap
//!   punched into an archive is found, and filled with exactly the missing events.
//!
//! Missing events are shipped through the pipeline itself (a backfill of the affected hours that
//! keeps only the missing ids), so transforms, routes and the checkpoint rules all apply. Other
//! sinks get those events too (at least once). Without a readable archive, an hour where the API
//! holds more than the ledger is shipped whole.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use auditship_sink::Event;

use crate::config::PipelineConfig;
use crate::pipeline::{self, Mode, PipelineError, RunOptions, Window};
use crate::store::{hour_of, Store};
use crate::transform::{route, Outcome};
use auditship_sink::{Archive as _, ArchiveLocation, UnitCompression};

/// One hour that does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourDiff {
    /// The sandbox.
    pub resource_id: String,
    /// The hour's start, µs since the Unix epoch.
    pub hour_us: i64,
    /// Events the API holds.
    pub api: u64,
    /// Events the ledger says were shipped.
    pub ledger: u64,
    /// Per file sink: events it should hold that its files lack.
    pub missing: BTreeMap<String, u64>,
}

/// One sandbox-hour as compared, whether it adds up or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourCount {
    /// The sandbox.
    pub resource_id: String,
    /// The hour's start, µs since the Unix epoch.
    pub hour_us: i64,
    /// Events the API holds.
    pub api: u64,
    /// Events the ledger says were shipped.
    pub ledger: u64,
    /// Per file sink read back: events of the hour it should hold (after its transforms and
    /// route), and how many of them its files hold.
    pub archive: BTreeMap<String, (u64, u64)>,
}

/// What a reconciliation found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// (sandbox, hour) pairs compared.
    pub hours_checked: usize,
    /// Every sandbox-hour compared, in order.
    pub hours: Vec<HourCount>,
    /// Events the API holds in the window.
    pub api_events: u64,
    /// Hours that differ.
    pub diffs: Vec<HourDiff>,
    /// File sinks whose files could not be compared (their events are reshaped, so they carry
    /// no top-level `id`), with why.
    pub not_comparable: BTreeMap<String, String>,
    /// Events shipped again (0 in a dry run).
    pub reshipped: u64,
    /// Whether the re-shipping finished (true when there was nothing to ship).
    pub complete: bool,
}

/// A sandbox and the start of an hour (µs).
type SandboxHour = (String, i64);

/// One API event, as reconciliation needs it.
struct ApiEvent {
    event: Event,
    hour_us: i64,
}

/// Whether a sink's archive is files this process can read back by id.
fn has_dir_archive(sink: &crate::sinks::AnySink) -> bool {
    matches!(
        sink.config().ok().and_then(|c| c.archive()),
        Some(ArchiveLocation::Dir(_))
    )
}

/// Compare the window `[since_us, until_us]` for `sandboxes` (empty: the pipeline's), and
/// unless `dry_run`, ship what is missing.
pub async fn reconcile(
    p: &PipelineConfig,
    since_us: i64,
    until_us: i64,
    sandboxes: &[String],
    dry_run: bool,
) -> Result<Report, PipelineError> {
    let client = pipeline::client_for(p)?;
    let sandboxes = pipeline::sandboxes_to_follow(&client, p, sandboxes).await?;
    let mut report = Report::default();

    // The API's events, by sandbox.
    let mut api: BTreeMap<String, Vec<ApiEvent>> = BTreeMap::new();
    for rid in &sandboxes {
        let listed = crate::source::list_window(&client, rid, since_us, until_us, p.page_limit)
            .await
            .map_err(|source| PipelineError::Source {
                resource_id: rid.clone(),
                source,
            })?;
        let events: Vec<ApiEvent> = listed
            .into_iter()
            .map(|event| ApiEvent {
                hour_us: hour_of(event.cursor_us.or(event.time_us).unwrap_or(0)),
                event,
            })
            .collect();
        report.api_events += events.len() as u64;
        api.insert(rid.clone(), events);
    }

    let ledger = if p.checkpoint_path.exists() {
        Store::open(&p.checkpoint_path)?
            .shipped_hours(&p.name, since_us, until_us)
            .await?
    } else {
        BTreeMap::new()
    };

    // What each file sink holds, by id, and what it should hold.
    let wanted: HashSet<&str> = sandboxes.iter().map(String::as_str).collect();
    let mut archive_missing: BTreeMap<SandboxHour, BTreeMap<String, Vec<Arc<str>>>> = BTreeMap::new();
    // Per sandbox-hour and file sink: the events it should hold.
    let mut archive_expected: BTreeMap<SandboxHour, BTreeMap<String, u64>> = BTreeMap::new();
    for (name, cfg) in &p.sinks {
        // Archives read back by id: files. (S3 objects are compared through the ledger.)
        let Some(ArchiveLocation::Dir(base)) = cfg.config().ok().and_then(|c| c.archive()) else {
            continue;
        };
        // Reading archives back is file I/O of a day's worth of data: off the async workers.
        let owned: HashSet<String> = wanted.iter().map(|s| s.to_string()).collect();
        let dir = base.clone();
        let read = tokio::task::spawn_blocking(move || read_archive_ids(&dir, &owned, since_us))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let held = match read {
            Ok(h) => h,
            Err(e) => {
                report
                    .not_comparable
                    .insert(name.clone(), format!("reading {}: {e}", base.display()));
                continue;
            }
        };
        let route = p.routes.get(name).cloned().unwrap_or_default();
        let mut pipeline_transformer = p.transforms.start();
        let mut sink_transformer = route.transforms.start();
        let mut expected_any = false;
        let mut shaped = false;
        for (rid, events) in &api {
            for a in events {
                let first = route
                    .pipeline_transforms
                    .then(|| pipeline_transformer.apply(&a.event));
                let (_, Outcome::Keep(out)) =
                    route::for_sink(&a.event, first.as_ref(), &mut sink_transformer)
                else {
                    continue;
                };
                expected_any = true;
                if !has_top_level_id(&out.raw, &a.event.id) {
                    shaped = true;
                    continue;
                }
                *archive_expected
                    .entry((rid.clone(), a.hour_us))
                    .or_default()
                    .entry(name.clone())
                    .or_default() += 1;
                if !held.contains(&*a.event.id) {
                    archive_missing
                        .entry((rid.clone(), a.hour_us))
                        .or_default()
                        .entry(name.clone())
                        .or_default()
                        .push(a.event.id.clone());
                }
            }
        }
        if shaped && expected_any {
            report.not_comparable.insert(
                name.clone(),
                "its transforms reshape events (no top-level `id` to compare); the ledger is used".into(),
            );
            archive_missing.values_mut().for_each(|m| {
                m.remove(name);
            });
            archive_expected.values_mut().for_each(|m| {
                m.remove(name);
            });
        }
    }
    let comparable_archive = p
        .sinks
        .iter()
        .any(|(n, c)| has_dir_archive(c) && !report.not_comparable.contains_key(n));

    // Hour by hour.
    let mut api_hours: BTreeMap<(String, i64), Vec<Arc<str>>> = BTreeMap::new();
    for (rid, events) in &api {
        for a in events {
            api_hours
                .entry((rid.clone(), a.hour_us))
                .or_default()
                .push(a.event.id.clone());
        }
    }
    let mut keys: BTreeSet<(String, i64)> = api_hours.keys().cloned().collect();
    keys.extend(
        ledger
            .keys()
            .filter(|(r, h)| wanted.contains(r.as_str()) && *h <= until_us)
            .cloned(),
    );
    report.hours_checked = keys.len();
    // What to ship again, per target: a file sink (exactly the ids it lacks), or every sink
    // (`None`: whole hours the ledger lacks, when no archive can be read back).
    let mut plans: BTreeMap<Option<String>, Plan> = BTreeMap::new();
    for key in keys {
        let ids = api_hours.get(&key).cloned().unwrap_or_default();
        let api_n = ids.len() as u64;
        let ledger_n = ledger.get(&key).copied().unwrap_or(0);
        let missing = archive_missing.remove(&key).unwrap_or_default();
        let expected = archive_expected.remove(&key).unwrap_or_default();
        report.hours.push(HourCount {
            resource_id: key.0.clone(),
            hour_us: key.1,
            api: api_n,
            ledger: ledger_n,
            archive: expected
                .iter()
                .map(|(sink, n)| {
                    let lacking = missing.get(sink).map_or(0, |m| m.len() as u64);
                    (sink.clone(), (*n, n.saturating_sub(lacking)))
                })
                .collect(),
        });
        if api_n == ledger_n && missing.values().all(Vec::is_empty) {
            continue;
        }
        for (sink, lacking) in &missing {
            if !lacking.is_empty() {
                plans.entry(Some(sink.clone())).or_default().add(&key, lacking);
            }
        }
        if !comparable_archive && api_n > ledger_n {
            plans.entry(None).or_default().add(&key, &ids);
        }
        report.diffs.push(HourDiff {
            resource_id: key.0,
            hour_us: key.1,
            api: api_n,
            ledger: ledger_n,
            missing: missing.into_iter().map(|(k, v)| (k, v.len() as u64)).collect(),
        });
    }

    report.complete = true;
    if dry_run || plans.is_empty() {
        return Ok(report);
    }
    // Ship the missing events through the pipeline: a backfill of the affected hours that keeps
    // only those ids, under a stream of its own, into the sink that lacks them (or every sink).
    for (target, plan) in plans {
        let mut run_p = p.clone();
        if let Some(sink) = &target {
            run_p.sinks.retain(|name, _| name == sink);
            run_p.routes.retain(|name, _| name == sink);
        }
        let window = Window {
            since_us: plan.first_hour.max(since_us),
            until_us: Some((plan.last_hour + 3_600_000_000 - 1).min(until_us)),
            sandboxes: plan.sandboxes.into_iter().collect(),
            job: Some(format!("reconcile-{}", chrono::Utc::now().timestamp_micros())),
        };
        let mut opts = RunOptions::new(Mode::Backfill(window));
        opts.only_ids = Some(Arc::new(plan.ids.iter().map(|s| s.to_string()).collect()));
        let run = pipeline::run(&run_p, opts).await?;
        if !run.complete {
            report.complete = false;
            break;
        }
        report.reshipped += plan.ids.len() as u64;
    }
    if report.complete {
        // The sinks now hold what the API holds for the hours shipped again: make the ledger say
        // so (the re-shipping counted its events on top of what was there).
        let fixed: Vec<(String, i64, u64)> = report
            .diffs
            .iter()
            .filter(|d| !d.missing.is_empty() || d.api > d.ledger)
            .map(|d| (d.resource_id.clone(), d.hour_us, d.api))
            .collect();
        Store::open(&p.checkpoint_path)?
            .set_shipped_hours(&p.name, fixed)
            .await?;
    }
    Ok(report)
}

/// Events to ship again into one target.
#[derive(Default)]
struct Plan {
    ids: HashSet<Arc<str>>,
    sandboxes: BTreeSet<String>,
    first_hour: i64,
    last_hour: i64,
}

impl Plan {
    fn add(&mut self, key: &(String, i64), ids: &[Arc<str>]) {
        if self.ids.is_empty() {
            self.first_hour = key.1;
            self.last_hour = key.1;
        }
        self.first_hour = self.first_hour.min(key.1);
        self.last_hour = self.last_hour.max(key.1);
        self.sandboxes.insert(key.0.clone());
        self.ids.extend(ids.iter().cloned());
    }
}

/// Whether `raw` (one output line) has a top-level `id` equal to `id`.
fn has_top_level_id(raw: &[u8], id: &str) -> bool {
    crate::transform::raw::Fields::parse(raw)
        .and_then(|f| f.text("id").map(|(_, t)| t.as_ref() == id))
        .unwrap_or(false)
}

/// Every event id in the files under `base` (plain, `.gz` or `.zst` NDJSON) of the sandboxes in
/// `wanted`. Files last written a day or more before the window began cannot hold its events
/// (an event is written after it is inserted) and are skipped, so a nightly run reads about a
/// day of archive, not all of it.
fn read_archive_ids(
    base: &Path,
    wanted: &HashSet<String>,
    since_us: i64,
) -> std::io::Result<HashSet<String>> {
    use std::io::BufRead as _;
    let mut ids = HashSet::new();
    if !base.exists() {
        return Ok(ids);
    }
    let archive = auditship_sink::DirArchive::new(base);
    let oldest = std::time::UNIX_EPOCH
        + std::time::Duration::from_micros(since_us.saturating_sub(86_400_000_000).max(0) as u64);
    for (rel, _) in archive.list()? {
        let Some(compression) = UnitCompression::from_extension(&rel) else {
            continue;
        };
        let file = std::fs::File::open(base.join(&rel))?;
        if file.metadata()?.modified().is_ok_and(|m| m < oldest) {
            continue;
        }
        let mut reader = std::io::BufReader::new(compression.decoder(file)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            // At most one byte past the limit is read, so an endless line costs no memory.
            let limit = auditship_sink::MAX_LINE_BYTES as u64 + 1;
            if std::io::Read::take(&mut reader, limit).read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if line.len() > auditship_sink::MAX_LINE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{rel}: {}", auditship_sink::line_too_long()),
                ));
            }
            let Some(fields) = crate::transform::raw::Fields::parse(&line) else {
                continue;
            };
            let rid = fields.text("resource_id").map(|(_, t)| t);
            if rid.as_deref().is_some_and(|r| !wanted.contains(r)) {
                continue;
            }
            if let Some((_, id)) = fields.text("id") {
                ids.insert(id.into_owned());
            }
        }
    }
    Ok(ids)
}

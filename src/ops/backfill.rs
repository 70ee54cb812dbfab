//! A backfill's lifecycle, as a library: what a run asks for, resolved against a named job's
//! record ([`plan`]), the job recorded ([`start`]), the window shipped (by
//! [`pipeline::run`](crate::pipeline::run) in [`Mode::Backfill`](crate::pipeline::Mode)), and
//! the job marked done ([`finish`]). `auditship backfill` drives it; a scheduler of its own can
//! too.
//!
//! A named job (`--job`) fixes its window the first time it runs: its `until` becomes that
//! moment when none is given, and its sandboxes the ones asked for (or the pipeline's). Every
//! later run of the job ships that same window from where it stopped, and a finished job ships
//! nothing, so a cron line that repeats never ships an event twice.

use std::path::Path;

use crate::client::format_time;
use crate::config::PipelineConfig;
use crate::pipeline::Window;
use crate::store::{Job, Store, StoreError};

/// What a backfill run asks for (times already resolved to µs since the Unix epoch).
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The window's start (inclusive). A job that ran before keeps its own.
    pub since_us: Option<i64>,
    /// The window's end (inclusive); `None`: now, at each run (a new job fixes it at once).
    pub until_us: Option<i64>,
    /// Only these sandboxes; empty: the pipeline's.
    pub sandboxes: Vec<String>,
    /// The job's name, if the run is a named job.
    pub job: Option<String>,
}

/// What a run will do.
#[derive(Clone, Debug)]
pub enum Plan {
    /// The job finished before: nothing to ship.
    Finished(Job),
    /// Ship `window`.
    Ship {
        /// The window, with the job's own bounds and sandboxes for a named job.
        window: Window,
        /// The job, when the run is one.
        job: Option<JobRun>,
    },
}

/// A named job as this run takes it.
#[derive(Clone, Debug)]
pub struct JobRun {
    /// Its record: as it was for a job that ran before; to be written by [`start`] for a new one.
    pub record: Job,
    /// Whether the job ran before (this run resumes it).
    pub resumed: bool,
}

/// Why a backfill cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// A job name outside the allowed characters.
    #[error("--job {0:?}: use letters, digits and . _ : - (e.g. nightly-2026-11-25)")]
    JobName(String),
    /// A new run with no start.
    #[error("job {0:?} has not run before: give --since")]
    NoSince(String),
    /// The window ends before it starts.
    #[error("--until is before --since")]
    UntilBeforeSince,
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BackfillError {
    /// Whether running again later can help (only the store's errors can pass).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackfillError::Store(e) if e.is_retryable())
    }
}

/// Resolve `req` for pipeline `p` at `now_us`: a job that ran before keeps its window and
/// sandboxes (what `req` says of them is ignored); a new job's window is fixed now.
pub async fn plan(p: &PipelineConfig, req: Request, now_us: i64) -> Result<Plan, BackfillError> {
    let known = match &req.job {
        Some(name) => {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
            if !valid {
                return Err(BackfillError::JobName(name.clone()));
            }
            open_job(p, name).await?
        }
        None => None,
    };
    if let Some(job) = known {
        if job.finished_at_us.is_some() {
            return Ok(Plan::Finished(job));
        }
        let window = Window {
            since_us: job.since_us,
            until_us: Some(job.until_us),
            sandboxes: job.sandboxes.clone(),
            job: Some(job.name.clone()),
        };
        return Ok(Plan::Ship {
            window,
            job: Some(JobRun {
                record: job,
                resumed: true,
            }),
        });
    }
    let Some(since_us) = req.since_us else {
        return Err(BackfillError::NoSince(req.job.unwrap_or_default()));
    };
    if req.until_us.is_some_and(|u| u < since_us) {
        return Err(BackfillError::UntilBeforeSince);
    }
    let mut window = Window {
        since_us,
        until_us: req.until_us,
        sandboxes: req.sandboxes,
        job: req.job.clone(),
    };
    let job = req.job.map(|name| {
        // A job's window is fixed when it first runs, so that a rerun means the same events.
        let until_us = window.until_us.unwrap_or(now_us);
        window.until_us = Some(until_us);
        if window.sandboxes.is_empty() {
            window.sandboxes = p.sandboxes.clone();
        }
        JobRun {
            record: Job {
                name,
                since_us,
                until_us,
                sandboxes: window.sandboxes.clone(),
                started_at_us: now_us,
                finished_at_us: None,
            },
            resumed: false,
        }
    });
    Ok(Plan::Ship { window, job })
}

/// Record a new job (a resumed one is recorded already), before anything ships.
pub async fn start(p: &PipelineConfig, job: &JobRun) -> Result<(), StoreError> {
    if job.resumed {
        return Ok(());
    }
    Store::open(&p.checkpoint_path)?
        .start_job(&p.name, &job.record)
        .await
}

/// Mark job `name` finished at `at_us`: every later run of it ships nothing.
pub async fn finish(p: &PipelineConfig, name: &str, at_us: i64) -> Result<(), StoreError> {
    Store::open(&p.checkpoint_path)?
        .finish_job(&p.name, name, at_us)
        .await
}

/// The command that resumes `window` of the pipeline file at `path`: its job, else its absolute
/// bounds and sandboxes.
pub fn resume_command(path: &Path, window: &Window) -> String {
    match &window.job {
        Some(name) => format!("auditship backfill {} --job {name}", path.display()),
        None => format!(
            "auditship backfill {} --since {}{}{}",
            path.display(),
            format_time(window.since_us),
            window
                .until_us
                .map(|u| format!(" --until {}", format_time(u)))
                .unwrap_or_default(),
            window
                .sandboxes
                .iter()
                .map(|s| format!(" --sandbox {s}"))
                .collect::<String>()
        ),
    }
}

/// A named job's record, if it ran before (no database yet: it did not).
async fn open_job(p: &PipelineConfig, name: &str) -> Result<Option<Job>, StoreError> {
    if !p.checkpoint_path.exists() {
        return Ok(None);
    }
    Store::open(&p.checkpoint_path)?.job(&p.name, name).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, LoadMode};

    fn pipeline(dir: &Path) -> PipelineConfig {
        let text = format!(
            "[source]\nbase_url = \"http://127.0.0.1:1/api/v1\"\napi_key = \"msk_test_key\"\nsandboxes = [\"sb-1\", \"sb-2\"]\n\n[checkpoint]\npath = \"{}/cp.db\"\n\n[sinks.archive]\ntype = \"file\"\npath = \"{}/archive/{{resource_id}}.ndjson\"\n",
            dir.display(),
            dir.display()
        );
        parse(&dir.join("p.toml"), &text, LoadMode::Validate).unwrap()
    }

    #[tokio::test]
    async fn a_job_fixes_its_window_on_its_first_run_and_keeps_it_after() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        let first = Request {
            since_us: Some(1_000),
            until_us: None,
            sandboxes: Vec::new(),
            job: Some("nightly".into()),
        };
        let Plan::Ship {
            window,
            job: Some(job),
        } = plan(&p, first, 5_000).await.unwrap()
        else {
            panic!("a new job ships")
        };
        assert!(!job.resumed);
        // The window ends now, over the pipeline's sandboxes, and the record says so.
        assert_eq!((window.since_us, window.until_us), (1_000, Some(5_000)));
        assert_eq!(window.sandboxes, ["sb-1", "sb-2"]);
        assert_eq!(
            (job.record.until_us, &job.record.sandboxes),
            (5_000, &window.sandboxes)
        );
        start(&p, &job).await.unwrap();

        // A later run keeps that window, whatever it asks for.
        let later = Request {
            since_us: Some(2_000),
            until_us: Some(9_000),
            sandboxes: vec!["sb-1".into()],
            job: Some("nightly".into()),
        };
        let Plan::Ship {
            window,
            job: Some(job),
        } = plan(&p, later.clone(), 9_000).await.unwrap()
        else {
            panic!("an unfinished job ships")
        };
        assert!(job.resumed);
        assert_eq!((window.since_us, window.until_us), (1_000, Some(5_000)));
        assert_eq!(window.sandboxes, ["sb-1", "sb-2"]);

        // Finished, it ships nothing.
        finish(&p, "nightly", 6_000).await.unwrap();
        assert!(matches!(plan(&p, later, 9_000).await.unwrap(), Plan::Finished(_)));
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_anything_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        let ask = |job: &str, since: Option<i64>, until: Option<i64>| Request {
            since_us: since,
            until_us: until,
            sandboxes: Vec::new(),
            job: (!job.is_empty()).then(|| job.to_string()),
        };
        assert!(matches!(
            plan(&p, ask("a b", Some(1), None), 9).await,
            Err(BackfillError::JobName(_))
        ));
        assert!(matches!(
            plan(&p, ask("new", None, None), 9).await,
            Err(BackfillError::NoSince(_))
        ));
        assert!(matches!(
            plan(&p, ask("", Some(5), Some(4)), 9).await,
            Err(BackfillError::UntilBeforeSince)
        ));
        // Nothing was recorded, not even a database.
        assert!(!p.checkpoint_path.exists());
        // Without a job, the window is what was asked, and resumes the same way.
        let Plan::Ship { window, job: None } = plan(&p, ask("", Some(5), None), 9).await.unwrap() else {
            panic!("a window ships")
        };
        assert_eq!((window.since_us, window.until_us), (5, None));
        assert_eq!(
            resume_command(Path::new("p.toml"), &window),
            format!("auditship backfill p.toml --since {}", format_time(5))
        );
    }
}

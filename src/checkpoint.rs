//! The checkpoint store: one SQLite file (WAL, `synchronous=FULL`) owned by one dedicated thread.
//!
//! Async code talks to the thread over a channel and awaits a reply, so SQLite never blocks an
//! async worker. The schema lives in `migrations/` as numbered SQL files, applied in order on
//! open and recorded in `schema_migrations`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use auditship_sink::{SinkError, StateEntry, StateRegistry};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

/// The numbered migrations, in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_checkpoints.sql")),
    (2, include_str!("../migrations/0002_backfill_jobs.sql")),
    (3, include_str!("../migrations/0003_shipped_hours.sql")),
    (4, include_str!("../migrations/0004_manifest.sql")),
];

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open the checkpoint database {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why, with the fix where we know it.
        message: String,
    },
    /// A statement failed.
    #[error("checkpoint database {path}: {source}{}", sqlite_hint(source))]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The store's thread is gone (it panicked or was shut down).
    #[error("the checkpoint store has stopped")]
    Closed,
    /// Another process runs this pipeline.
    #[error(
        "pipeline {pipeline:?} is already running against {path} (lock {lock}); stop the other process first (shards of one pipeline each need their own checkpoint path, e.g. path = \"state/shard-${{AUDITSHIP_SHARD}}/checkpoints.db\")"
    )]
    Locked {
        /// The pipeline.
        pipeline: String,
        /// The database.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

/// What to do about a failed statement, where SQLite says enough to know.
fn sqlite_hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ReadOnly) => {
            "; make the database file, its -wal and -shm files and its directory writable by this user (or the file system writable), then start again: shipping resumes from the last checkpoint and nothing is shipped twice"
        }
        Some(rusqlite::ErrorCode::DiskFull) => {
            "; free space on the file system holding it, then start again: shipping resumes from the last checkpoint"
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            "; another process holds a lock on it (a sqlite3 shell or a backup tool?); auditship retries until it is released"
        }
        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::PermissionDenied) => {
            "; check that the file and its directory exist and are readable and writable by this user"
        }
        _ => "",
    }
}

impl StoreError {
    /// Whether retrying can help (a busy or locked database can free up).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

/// A sandbox's committed position in one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The sandbox.
    pub resource_id: String,
    /// The last event shipped.
    pub last_event_id: Option<String>,
    /// Newest cursor time shipped (µs since the Unix epoch).
    pub cursor_us: Option<i64>,
    /// The same time as the server spelled it.
    pub cursor_text: Option<String>,
    /// Every id shipped at exactly `cursor_us`.
    pub tie_ids: Vec<String>,
    /// Events shipped in this stream so far.
    pub events_shipped: u64,
    /// When the row was last written (µs since the Unix epoch).
    pub updated_at_us: i64,
}

/// One position as `auditship checkpoints --export` writes it: one JSON object per line, the
/// checkpoint's fields beside the pipeline and stream it belongs to. `--import` reads it back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportedCheckpoint {
    /// The pipeline's name.
    pub pipeline: String,
    /// The stream (`live`, `backfill:…`, `job:…`).
    pub stream: String,
    /// The position.
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
}

/// A named backfill job (`auditship backfill --job NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Its name, unique within the pipeline.
    pub name: String,
    /// The window's start, µs since the Unix epoch (inclusive).
    pub since_us: i64,
    /// The window's end (inclusive), fixed when the job first ran.
    pub until_us: i64,
    /// The sandboxes it covers.
    pub sandboxes: Vec<String>,
    /// When it first ran.
    pub started_at_us: i64,
    /// When it finished, if it did.
    pub finished_at_us: Option<i64>,
}

impl Job {
    /// The checkpoint stream holding the job's progress.
    pub fn stream_key(name: &str) -> String {
        format!("job:{name}")
    }
}

/// One commit: positions and sink state, applied in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    /// Positions to write, whole rows.
    pub positions: Vec<Checkpoint>,
    /// Sink state to upsert, by sink name.
    pub sink_state: Vec<(String, StateEntry)>,
    /// Events shipped per (sandbox, hour start in µs), added to the ledger.
    pub hours: Vec<(String, i64, u64)>,
    /// Manifest entries to insert, by sink name.
    pub manifest: Vec<(String, ManifestRow)>,
}

/// A manifest entry as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    /// Its place in the sink's chain.
    pub seq: u64,
    /// The unit.
    pub unit: String,
    /// The stretch's start, in bytes.
    pub offset: u64,
    /// The stretch's end, in bytes.
    pub end: u64,
    /// The entry's hash.
    pub hash: String,
    /// The entry as one JSON line.
    pub line: String,
}

/// The newest entry of a sink's manifest chain, as stored (see [`Store::manifest_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHead {
    /// Its place in the chain.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// Its unit.
    pub unit: String,
}

/// The start of the hour holding `us` (µs since the Unix epoch).
pub fn hour_of(us: i64) -> i64 {
    us.div_euclid(3_600_000_000) * 3_600_000_000
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Work to run on the store's thread with its connection; it sends its own reply.
type Work = Box<dyn FnOnce(&mut Connection) + Send>;

enum Command {
    /// Anything else, as a closure (see [`Store::with`]).
    With(Work),
    Load {
        pipeline: String,
        stream: String,
        reply: Reply<HashMap<String, Checkpoint>>,
    },
    Streams {
        pipeline: String,
        reply: Reply<Vec<(String, Checkpoint)>>,
    },
    SinkState {
        pipeline: String,
        sink: String,
        reply: Reply<Vec<StateEntry>>,
    },
    Register {
        pipeline: String,
        sink: String,
        entries: Vec<StateEntry>,
        reply: Reply<()>,
    },
    Forget {
        pipeline: String,
        sink: String,
        keys: Vec<String>,
        reply: Reply<()>,
    },
    Commit {
        pipeline: String,
        stream: String,
        commit: Commit,
        reply: Reply<()>,
    },
}

/// A handle to the store's thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: std::sync::mpsc::Sender<Command>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (creating, mode 0600) and migrate the database, and start its thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| open_err(format!("creating directory {}: {e}", dir.display())))?;
        }
        // Create the file ourselves so it is never world-readable.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(format!("{e}; check the directory exists and is writable")))?;
        let mut conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
            .map_err(|e| open_err(format!("{e}; is the file a SQLite database and writable?")))?;
        migrate(&mut conn).map_err(|e| open_err(format!("applying migrations: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("auditship-sqlite".into())
            .spawn(move || serve(conn, rx, thread_path))
            .map_err(|e| open_err(format!("starting the store thread: {e}")))?;
        Ok(Store {
            tx,
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Run `f` on the store's thread, serialized with every other command.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        self.ask(move |reply| {
            Command::With(Box::new(move |conn: &mut Connection| {
                let _ = reply.send(f(conn).map_err(|source| StoreError::Sqlite {
                    path: (*path).clone(),
                    source,
                }));
            }))
        })
        .await
    }

    /// A named backfill job of `pipeline`, if it ever ran.
    pub async fn job(&self, pipeline: &str, name: &str) -> Result<Option<Job>, StoreError> {
        let (pipeline, name) = (pipeline.to_string(), name.to_string());
        self.with(move |conn| {
            conn.query_row(
                "SELECT since_us, until_us, sandboxes, started_at_us, finished_at_us FROM backfill_jobs WHERE pipeline = ?1 AND job = ?2",
                params![pipeline, name],
                |r| {
                    let sandboxes: String = r.get(2)?;
                    Ok(Job {
                        name: name.clone(),
                        since_us: r.get(0)?,
                        until_us: r.get(1)?,
                        sandboxes: serde_json::from_str(&sandboxes).unwrap_or_default(),
                        started_at_us: r.get(3)?,
                        finished_at_us: r.get(4)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Record a job's first run (its window is fixed from then on).
    pub async fn start_job(&self, pipeline: &str, job: &Job) -> Result<(), StoreError> {
        let (pipeline, job) = (pipeline.to_string(), job.clone());
        self.with(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO backfill_jobs (pipeline, job, since_us, until_us, sandboxes, started_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    pipeline,
                    job.name,
                    job.since_us,
                    job.until_us,
                    serde_json::Value::from(job.sandboxes.clone()).to_string(),
                    job.started_at_us
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Take positions exported from another database (`auditship checkpoints --import`): a row
    /// is written where this database has none for its (stream, sandbox) or an older one, so
    /// importing every shard's export into every shard is safe. Sink state is not imported: it
    /// describes the exporting shard's own files. Returns (written, kept as they were).
    pub async fn import(
        &self,
        pipeline: &str,
        rows: Vec<(String, Checkpoint)>,
    ) -> Result<(usize, usize), StoreError> {
        let pipeline = pipeline.to_string();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let (mut written, mut kept) = (0, 0);
            for (stream, c) in rows {
                let existing: Option<Option<i64>> = tx
                    .query_row(
                        "SELECT cursor_us FROM checkpoints WHERE pipeline = ?1 AND stream = ?2 AND resource_id = ?3",
                        params![pipeline, stream, c.resource_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let newer = match existing {
                    None => true,
                    Some(old) => c.cursor_us > old,
                };
                if !newer {
                    kept += 1;
                    continue;
                }
                upsert_position(&tx, &pipeline, &stream, &c)?;
                written += 1;
            }
            tx.commit()?;
            Ok((written, kept))
        })
        .await
    }

    /// Events shipped per (sandbox, hour start) of `pipeline` in `[from_us, to_us]`.
    pub async fn shipped_hours(
        &self,
        pipeline: &str,
        from_us: i64,
        to_us: i64,
    ) -> Result<std::collections::BTreeMap<(String, i64), u64>, StoreError> {
        let pipeline = pipeline.to_string();
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT resource_id, hour_us, events FROM shipped_hours WHERE pipeline = ?1 AND hour_us >= ?2 AND hour_us <= ?3",
            )?;
            let rows = stmt.query_map(params![pipeline, hour_of(from_us), to_us], |r| {
                Ok(((r.get::<_, String>(0)?, r.get::<_, i64>(1)?), r.get::<_, i64>(2)?.max(0) as u64))
            })?;
            rows.collect()
        })
        .await
    }

    /// Set the ledger's counts of these (sandbox, hour) pairs (after a reconciliation made the
    /// sinks whole, the API's counts are the truth).
    pub async fn set_shipped_hours(
        &self,
        pipeline: &str,
        rows: Vec<(String, i64, u64)>,
    ) -> Result<(), StoreError> {
        let pipeline = pipeline.to_string();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            for (rid, hour, n) in rows {
                tx.execute(
                    "INSERT INTO shipped_hours (pipeline, resource_id, hour_us, events) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline, resource_id, hour_us) DO UPDATE SET events = excluded.events",
                    params![pipeline, rid, hour, n as i64],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Mark a job finished: running it again does nothing.
    pub async fn finish_job(&self, pipeline: &str, name: &str, at_us: i64) -> Result<(), StoreError> {
        let (pipeline, name) = (pipeline.to_string(), name.to_string());
        self.with(move |conn| {
            conn.execute(
                "UPDATE backfill_jobs SET finished_at_us = ?3 WHERE pipeline = ?1 AND job = ?2",
                params![pipeline, name, at_us],
            )
            .map(|_| ())
        })
        .await
    }

    /// The positions of every sandbox in `stream`.
    pub async fn load(
        &self,
        pipeline: &str,
        stream: &str,
    ) -> Result<HashMap<String, Checkpoint>, StoreError> {
        let (pipeline, stream) = (pipeline.to_string(), stream.to_string());
        self.ask(|reply| Command::Load {
            pipeline,
            stream,
            reply,
        })
        .await
    }

    /// Every (stream, position) of a pipeline.
    pub async fn streams(&self, pipeline: &str) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let pipeline = pipeline.to_string();
        self.ask(|reply| Command::Streams { pipeline, reply }).await
    }

    /// A sink's committed state.
    pub async fn sink_state(&self, pipeline: &str, sink: &str) -> Result<Vec<StateEntry>, StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.ask(|reply| Command::SinkState {
            pipeline,
            sink,
            reply,
        })
        .await
    }

    /// Insert sink state entries now, in one transaction, skipping each whose key exists.
    pub async fn register(
        &self,
        pipeline: &str,
        sink: &str,
        entries: Vec<StateEntry>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.ask(|reply| Command::Register {
            pipeline,
            sink,
            entries,
            reply,
        })
        .await
    }

    /// Delete sink state entries.
    pub async fn forget(&self, pipeline: &str, sink: &str, keys: Vec<String>) -> Result<(), StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.ask(|reply| Command::Forget {
            pipeline,
            sink,
            keys,
            reply,
        })
        .await
    }

    /// The newest entry of `sink`'s manifest chain, if it has one.
    pub async fn manifest_head(&self, pipeline: &str, sink: &str) -> Result<Option<StoredHead>, StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            conn.query_row(
                "SELECT seq, hash, unit FROM manifest WHERE pipeline = ?1 AND sink = ?2 ORDER BY seq DESC LIMIT 1",
                params![pipeline, sink],
                |r| {
                    Ok(StoredHead {
                        seq: r.get::<_, i64>(0)?.max(0) as u64,
                        hash: r.get(1)?,
                        unit: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// How far `unit` of `sink` is sealed (0: not at all).
    pub async fn sealed_end(&self, pipeline: &str, sink: &str, unit: &str) -> Result<u64, StoreError> {
        let (pipeline, sink, unit) = (pipeline.to_string(), sink.to_string(), unit.to_string());
        self.with(move |conn| {
            conn.query_row(
                "SELECT COALESCE(MAX(end_bytes), 0) FROM manifest WHERE pipeline = ?1 AND sink = ?2 AND unit = ?3",
                params![pipeline, sink, unit],
                |r| Ok(r.get::<_, i64>(0)?.max(0) as u64),
            )
        })
        .await
    }

    /// `sink`'s manifest entries, in chain order; only those not yet published if `unpublished`.
    pub async fn manifest_rows(
        &self,
        pipeline: &str,
        sink: &str,
        unpublished: bool,
    ) -> Result<Vec<ManifestRow>, StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, unit, offset_bytes, end_bytes, hash, line FROM manifest
                 WHERE pipeline = ?1 AND sink = ?2 AND (?3 = 0 OR published = 0) ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![pipeline, sink, unpublished as i64], |r| {
                Ok(ManifestRow {
                    seq: r.get::<_, i64>(0)?.max(0) as u64,
                    unit: r.get(1)?,
                    offset: r.get::<_, i64>(2)?.max(0) as u64,
                    end: r.get::<_, i64>(3)?.max(0) as u64,
                    hash: r.get(4)?,
                    line: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Record that `sink`'s entries `seqs` are written next to their data.
    pub async fn mark_published(&self, pipeline: &str, sink: &str, seqs: Vec<u64>) -> Result<(), StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE manifest SET published = 1 WHERE pipeline = ?1 AND sink = ?2 AND seq = ?3",
                )?;
                for seq in seqs {
                    stmt.execute(params![pipeline, sink, seq as i64])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Apply one commit in one transaction.
    pub async fn commit(&self, pipeline: &str, stream: &str, commit: Commit) -> Result<(), StoreError> {
        let (pipeline, stream) = (pipeline.to_string(), stream.to_string());
        self.ask(|reply| Command::Commit {
            pipeline,
            stream,
            commit,
            reply,
        })
        .await
    }

    /// A [`StateRegistry`] for one sink of one pipeline.
    pub fn registry(&self, pipeline: &str, sink: &str) -> Arc<dyn StateRegistry> {
        Arc::new(SinkRegistry {
            store: self.clone(),
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
        })
    }

    /// Take the exclusive lock of `pipeline` on this database, held until the guard drops.
    pub fn lock(&self, pipeline: &str) -> Result<PipelineLock, StoreError> {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        let safe: String = pipeline
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        name.push(format!(".{safe}.lock"));
        let lock_path = self.path.with_file_name(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| StoreError::Open {
                path: lock_path.clone(),
                message: e.to_string(),
            })?;
        match file.try_lock() {
            Ok(()) => Ok(PipelineLock { _file: file }),
            Err(_) => Err(StoreError::Locked {
                pipeline: pipeline.to_string(),
                path: self.path.to_path_buf(),
                lock: lock_path,
            }),
        }
    }
}

/// One manifest chain as the database holds it: `(seq, hash, unit)` in order.
pub type ChainRows = Vec<(u64, String, String)>;

/// A read-only look at a checkpoint database, for `auditship verify`: opening it writes nothing
/// (no migration, no journal-mode change), so an auditor's check leaves the database as it was,
/// and works with read access alone.
pub struct Snapshot {
    conn: Connection,
    path: PathBuf,
}

impl Snapshot {
    /// Open `path` read-only. A database older than the manifest (schema 4) is an error that
    /// says so.
    pub fn open(path: &Path) -> Result<Snapshot, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            message: format!("{e}; reading it needs read access to the file and its directory"),
        })?;
        let has_manifest: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'manifest'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|source| StoreError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
        if !has_manifest {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                message:
                    "it predates manifests (no `manifest` table); run the pipeline once with this version"
                        .into(),
            });
        }
        Ok(Snapshot {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Every manifest chain of `pipeline`, by sink: `(seq, hash, unit)` in order.
    pub fn manifest_chains(
        &self,
        pipeline: &str,
    ) -> Result<std::collections::BTreeMap<String, ChainRows>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT sink, seq, hash, unit FROM manifest WHERE pipeline = ?1 ORDER BY sink, seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![pipeline], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?.max(0) as u64,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out: std::collections::BTreeMap<String, ChainRows> = Default::default();
        for row in rows {
            let (sink, seq, hash, unit) = row.map_err(|e| self.err(e))?;
            out.entry(sink).or_default().push((seq, hash, unit));
        }
        Ok(out)
    }

    /// Per sandbox of `pipeline`: the newest cursor time any of its streams shipped.
    pub fn shipped_until(
        &self,
        pipeline: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT resource_id, MAX(cursor_us) FROM checkpoints WHERE pipeline = ?1 AND cursor_us IS NOT NULL GROUP BY resource_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![pipeline], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }
}

/// Holds a pipeline's lock file locked (released on drop, or by the kernel when the process
/// dies, so a `kill -9` never leaves a stale lock).
#[derive(Debug)]
pub struct PipelineLock {
    _file: File,
}

struct SinkRegistry {
    store: Store,
    pipeline: String,
    sink: String,
}

#[async_trait::async_trait]
impl StateRegistry for SinkRegistry {
    async fn register(&self, entries: Vec<StateEntry>) -> Result<(), SinkError> {
        self.store
            .register(&self.pipeline, &self.sink, entries)
            .await
            .map_err(store_to_sink)
    }

    async fn forget(&self, keys: Vec<String>) -> Result<(), SinkError> {
        self.store
            .forget(&self.pipeline, &self.sink, keys)
            .await
            .map_err(store_to_sink)
    }
}

fn store_to_sink(e: StoreError) -> SinkError {
    SinkError::Remote {
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_us INTEGER NOT NULL)",
    )?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction()?;
        let applied: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()?;
        if applied.is_none() {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_us) VALUES (?1, ?2)",
                params![version, chrono::Utc::now().timestamp_micros()],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

fn serve(mut conn: Connection, rx: std::sync::mpsc::Receiver<Command>, path: PathBuf) {
    let wrap = |source: rusqlite::Error| StoreError::Sqlite {
        path: path.clone(),
        source,
    };
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::With(f) => f(&mut conn),
            Command::Load {
                pipeline,
                stream,
                reply,
            } => {
                let r = load(&conn, &pipeline, Some(&stream)).map(|rows| {
                    rows.into_iter()
                        .map(|(_, c)| (c.resource_id.clone(), c))
                        .collect()
                });
                let _ = reply.send(r.map_err(wrap));
            }
            Command::Streams { pipeline, reply } => {
                let _ = reply.send(load(&conn, &pipeline, None).map_err(wrap));
            }
            Command::SinkState {
                pipeline,
                sink,
                reply,
            } => {
                let r = (|| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT key, value FROM sink_state WHERE pipeline = ?1 AND sink = ?2",
                    )?;
                    let rows = stmt.query_map(params![pipeline, sink], |r| {
                        Ok(StateEntry {
                            key: r.get(0)?,
                            value: r.get(1)?,
                        })
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })();
                let _ = reply.send(r.map_err(wrap));
            }
            Command::Register {
                pipeline,
                sink,
                entries,
                reply,
            } => {
                let r = (|| {
                    let tx = conn.transaction()?;
                    {
                        let mut stmt = tx.prepare_cached(
                            "INSERT OR IGNORE INTO sink_state (pipeline, sink, key, value) VALUES (?1, ?2, ?3, ?4)",
                        )?;
                        for entry in &entries {
                            stmt.execute(params![pipeline, sink, entry.key, entry.value])?;
                        }
                    }
                    tx.commit()
                })();
                let _ = reply.send(r.map_err(wrap));
            }
            Command::Forget {
                pipeline,
                sink,
                keys,
                reply,
            } => {
                let r = (|| {
                    let tx = conn.transaction()?;
                    {
                        let mut stmt = tx.prepare_cached(
                            "DELETE FROM sink_state WHERE pipeline = ?1 AND sink = ?2 AND key = ?3",
                        )?;
                        for key in &keys {
                            stmt.execute(params![pipeline, sink, key])?;
                        }
                    }
                    tx.commit()
                })();
                let _ = reply.send(r.map_err(wrap));
            }
            Command::Commit {
                pipeline,
                stream,
                commit,
                reply,
            } => {
                let _ = reply.send(apply(&mut conn, &pipeline, &stream, &commit).map_err(wrap));
            }
        }
    }
}

fn load(
    conn: &Connection,
    pipeline: &str,
    stream: Option<&str>,
) -> rusqlite::Result<Vec<(String, Checkpoint)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT stream, resource_id, last_event_id, cursor_us, tie_ids, events_shipped, updated_at_us, cursor_text
         FROM checkpoints WHERE pipeline = ?1 AND (?2 IS NULL OR stream = ?2)
         ORDER BY stream, resource_id",
    )?;
    let rows = stmt.query_map(params![pipeline, stream], |r| {
        let ties: String = r.get(4)?;
        Ok((
            r.get::<_, String>(0)?,
            Checkpoint {
                resource_id: r.get(1)?,
                last_event_id: r.get(2)?,
                cursor_us: r.get(3)?,
                tie_ids: serde_json::from_str(&ties).unwrap_or_default(),
                events_shipped: r.get::<_, i64>(5)?.max(0) as u64,
                updated_at_us: r.get(6)?,
                cursor_text: r.get(7)?,
            },
        ))
    })?;
    rows.collect()
}

/// Write one position (a commit's, or an imported one), replacing the row of its sandbox.
fn upsert_position(conn: &Connection, pipeline: &str, stream: &str, p: &Checkpoint) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO checkpoints (pipeline, stream, resource_id, last_event_id, cursor_us, tie_ids, events_shipped, updated_at_us, cursor_text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (pipeline, stream, resource_id) DO UPDATE SET
           last_event_id = excluded.last_event_id, cursor_us = excluded.cursor_us,
           tie_ids = excluded.tie_ids, events_shipped = excluded.events_shipped,
           updated_at_us = excluded.updated_at_us, cursor_text = excluded.cursor_text",
    )?;
    let ties = serde_json::to_string(&p.tie_ids).unwrap_or_else(|_| "[]".into());
    upsert.execute(params![
        pipeline,
        stream,
        p.resource_id,
        p.last_event_id,
        p.cursor_us,
        ties,
        p.events_shipped as i64,
        p.updated_at_us,
        p.cursor_text
    ])?;
    Ok(())
}

fn apply(conn: &mut Connection, pipeline: &str, stream: &str, commit: &Commit) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        for p in &commit.positions {
            upsert_position(&tx, pipeline, stream, p)?;
        }
        let mut state = tx.prepare_cached(
            "INSERT INTO sink_state (pipeline, sink, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pipeline, sink, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM sink_state WHERE pipeline = ?1 AND sink = ?2 AND key = ?3")?;
        for (sink, entry) in &commit.sink_state {
            if entry.is_deletion() {
                delete.execute(params![pipeline, sink, entry.key])?;
            } else {
                state.execute(params![pipeline, sink, entry.key, entry.value])?;
            }
        }
        let mut hours = tx.prepare_cached(
            "INSERT INTO shipped_hours (pipeline, resource_id, hour_us, events) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pipeline, resource_id, hour_us) DO UPDATE SET events = events + excluded.events",
        )?;
        for (rid, hour, n) in &commit.hours {
            hours.execute(params![pipeline, rid, hour, *n as i64])?;
        }
        let mut manifest = tx.prepare_cached(
            "INSERT INTO manifest (pipeline, sink, seq, unit, offset_bytes, end_bytes, hash, line)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (sink, m) in &commit.manifest {
            manifest.execute(params![
                pipeline,
                sink,
                m.seq as i64,
                m.unit,
                m.offset as i64,
                m.end as i64,
                m.hash,
                m.line
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_positions_and_sink_state_together_and_reloads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cp.db");
        let store = Store::open(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "database must not be readable by others");
        store
            .register(
                "p",
                "archive",
                vec![StateEntry {
                    key: "a.ndjson".into(),
                    value: 0,
                }],
            )
            .await
            .unwrap();
        let cp = Checkpoint {
            resource_id: "sb-1".into(),
            last_event_id: Some("e2".into()),
            cursor_us: Some(42),
            cursor_text: Some("1970-01-01T00:00:00.000042Z".into()),
            tie_ids: vec!["e1".into(), "e2".into()],
            events_shipped: 2,
            updated_at_us: 1,
        };
        store
            .commit(
                "p",
                "live",
                Commit {
                    positions: vec![cp.clone()],
                    sink_state: vec![(
                        "archive".into(),
                        StateEntry {
                            key: "a.ndjson".into(),
                            value: 99,
                        },
                    )],
                    hours: vec![("sb".into(), 3_600_000_000, 2)],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // Registering an existing key never moves its committed value; the new keys registered
        // with it in the same call are all inserted.
        let entry = |key: &str, value: i64| StateEntry {
            key: key.into(),
            value,
        };
        store
            .register(
                "p",
                "archive",
                vec![entry("b.ndjson", 5), entry("a.ndjson", 0), entry("c.ndjson", 7)],
            )
            .await
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load("p", "live").await.unwrap().get("sb-1"), Some(&cp));
        assert!(store.load("p", "backfill:x").await.unwrap().is_empty());
        let mut state = store.sink_state("p", "archive").await.unwrap();
        state.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            state,
            vec![entry("a.ndjson", 99), entry("b.ndjson", 5), entry("c.ndjson", 7)]
        );
    }

    #[tokio::test]
    async fn a_deletion_entry_removes_its_key_in_the_commit_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cp.db")).unwrap();
        for key in ["pending:a", "pending:b"] {
            store
                .register(
                    "p",
                    "cold",
                    vec![StateEntry {
                        key: key.into(),
                        value: 7,
                    }],
                )
                .await
                .unwrap();
        }
        store
            .commit(
                "p",
                "live",
                Commit {
                    positions: vec![],
                    sink_state: vec![("cold".into(), StateEntry::deleted("pending:a"))],
                    hours: vec![],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            store.sink_state("p", "cold").await.unwrap(),
            vec![StateEntry {
                key: "pending:b".into(),
                value: 7
            }]
        );
    }

    #[tokio::test]
    async fn a_second_runner_of_the_same_pipeline_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cp.db")).unwrap();
        let guard = store.lock("p").unwrap();
        let err = store.lock("p").unwrap_err();
        assert!(err.to_string().contains("already running"), "{err}");
        assert!(store.lock("other").is_ok());
        drop(guard);
        assert!(store.lock("p").is_ok());
    }
}

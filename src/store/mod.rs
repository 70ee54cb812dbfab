//! The checkpoint store: one SQLite file (WAL, `synchronous=FULL`) owned by one dedicated thread.
//!
//! Async code talks to the thread over a channel and awaits a reply, so SQLite never blocks an
//! async worker. The schema lives in `migrations/` as numbered SQL files, applied in order on
//! open and recorded in `schema_migrations`.
//!
//! # Layout
//! - `mod.rs`: the [`Store`] handle and its thread; every operation is a closure run there.
//! - `model.rs`: what it keeps ([`SavedPosition`], [`Job`], [`Commit`], [`ManifestRow`]).
//! - `sql.rs`: the statements behind positions and commits; `schema.rs`: the migrations.
//! - `digests.rs`: signed digests ([`DigestRow`]) and the entries none lists yet.
//! - `registry.rs`: the store as a sink's state registry; `snapshot.rs`: read-only access for
//!   `verify`; `error.rs`: [`StoreError`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use auditship_sink::{StateEntry, StateRegistry};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

mod digests;
mod error;
mod model;
mod registry;
mod schema;
mod snapshot;
mod sql;

pub use digests::DigestRow;
pub use error::StoreError;
pub use model::{hour_of, Commit, ExportedPosition, Job, ManifestRow, SavedPosition, StoredHead};
pub use snapshot::{ChainRows, Snapshot};

use registry::SinkRegistry;
use schema::migrate;
use sql::{apply, execute_each, load, manifest_row, upsert_position};

/// Work for the store's thread: a closure with the connection, which sends its own reply. Every
/// operation of the store is one (see [`Store::with`]): one way in, in the order sent.
type Work = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the store's thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: std::sync::mpsc::Sender<Work>,
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
            auditship_sink::create_dir_all_durable(dir, 0o750)
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
        std::thread::Builder::new()
            .name("auditship-sqlite".into())
            .spawn(move || serve(conn, rx))
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

    /// Run `f` on the store's thread, serialized with every other operation, and await its
    /// result.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let (reply, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn: &mut Connection| {
            let _ = reply.send(f(conn).map_err(|source| StoreError::Sqlite {
                path: (*path).clone(),
                source,
            }));
        });
        self.tx.send(work).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
        rows: Vec<(String, SavedPosition)>,
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
    ) -> Result<HashMap<String, SavedPosition>, StoreError> {
        let (pipeline, stream) = (pipeline.to_string(), stream.to_string());
        self.with(move |conn| {
            let rows = load(conn, &pipeline, Some(&stream))?;
            Ok(rows
                .into_iter()
                .map(|(_, c)| (c.resource_id.clone(), c))
                .collect())
        })
        .await
    }

    /// Every (stream, position) of a pipeline.
    pub async fn streams(&self, pipeline: &str) -> Result<Vec<(String, SavedPosition)>, StoreError> {
        let pipeline = pipeline.to_string();
        self.with(move |conn| load(conn, &pipeline, None)).await
    }

    /// A sink's committed state.
    pub async fn sink_state(&self, pipeline: &str, sink: &str) -> Result<Vec<StateEntry>, StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT key, value FROM sink_state WHERE pipeline = ?1 AND sink = ?2")?;
            let rows = stmt.query_map(params![pipeline, sink], |r| {
                Ok(StateEntry {
                    key: r.get(0)?,
                    value: r.get(1)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
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
        self.with(move |conn| {
            execute_each(
                conn,
                "INSERT OR IGNORE INTO sink_state (pipeline, sink, key, value) VALUES (?1, ?2, ?3, ?4)",
                entries.iter().map(|e| (&pipeline, &sink, &e.key, e.value)),
            )
        })
        .await
    }

    /// Delete sink state entries.
    pub async fn forget(&self, pipeline: &str, sink: &str, keys: Vec<String>) -> Result<(), StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            execute_each(
                conn,
                "DELETE FROM sink_state WHERE pipeline = ?1 AND sink = ?2 AND key = ?3",
                keys.iter().map(|k| (&pipeline, &sink, k)),
            )
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
            let rows = stmt.query_map(params![pipeline, sink, unpublished as i64], manifest_row)?;
            rows.collect()
        })
        .await
    }

    /// Record that `sink`'s entries `seqs` are written next to their data.
    pub async fn mark_published(&self, pipeline: &str, sink: &str, seqs: Vec<u64>) -> Result<(), StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            execute_each(
                conn,
                "UPDATE manifest SET published = 1 WHERE pipeline = ?1 AND sink = ?2 AND seq = ?3",
                seqs.iter().map(|seq| (&pipeline, &sink, *seq as i64)),
            )
        })
        .await
    }

    /// Apply one commit in one transaction.
    pub async fn commit(&self, pipeline: &str, stream: &str, commit: Commit) -> Result<(), StoreError> {
        let (pipeline, stream) = (pipeline.to_string(), stream.to_string());
        self.with(move |conn| apply(conn, &pipeline, &stream, &commit))
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

/// Holds a pipeline's lock file locked (released on drop, or by the kernel when the process
/// dies, so a `kill -9` never leaves a stale lock).
#[derive(Debug)]
pub struct PipelineLock {
    _file: File,
}

/// The store's thread: runs each piece of work in turn until every handle is gone.
fn serve(mut conn: Connection, rx: std::sync::mpsc::Receiver<Work>) {
    while let Ok(work) = rx.recv() {
        work(&mut conn);
    }
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
        let cp = SavedPosition {
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

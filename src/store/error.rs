//! What can go wrong with the store, and what to do about it.

use std::path::PathBuf;

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

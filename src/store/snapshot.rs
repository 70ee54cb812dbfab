//! A read-only look at a checkpoint database (`auditship verify --pipeline`).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use super::StoreError;

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

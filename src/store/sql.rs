//! The statements behind positions and commits, run on the store's thread.

use rusqlite::{params, Connection};

use super::{Commit, ManifestRow, SavedPosition};

/// Run `sql` once for each row of parameters, all in one transaction (registering, forgetting
/// and marking many rows at once).
pub(super) fn execute_each<P: rusqlite::Params>(
    conn: &mut Connection,
    sql: &str,
    rows: impl IntoIterator<Item = P>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(sql)?;
        for row in rows {
            stmt.execute(row)?;
        }
    }
    tx.commit()
}

pub(super) fn load(
    conn: &Connection,
    pipeline: &str,
    stream: Option<&str>,
) -> rusqlite::Result<Vec<(String, SavedPosition)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT stream, resource_id, last_event_id, cursor_us, tie_ids, events_shipped, updated_at_us, cursor_text
         FROM checkpoints WHERE pipeline = ?1 AND (?2 IS NULL OR stream = ?2)
         ORDER BY stream, resource_id",
    )?;
    let rows = stmt.query_map(params![pipeline, stream], |r| {
        let ties: String = r.get(4)?;
        Ok((
            r.get::<_, String>(0)?,
            SavedPosition {
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
pub(super) fn upsert_position(
    conn: &Connection,
    pipeline: &str,
    stream: &str,
    p: &SavedPosition,
) -> rusqlite::Result<()> {
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

pub(super) fn apply(
    conn: &mut Connection,
    pipeline: &str,
    stream: &str,
    commit: &Commit,
) -> rusqlite::Result<()> {
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

/// A row of `SELECT seq, unit, offset_bytes, end_bytes, hash, line FROM manifest`.
pub(super) fn manifest_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ManifestRow> {
    Ok(ManifestRow {
        seq: r.get::<_, i64>(0)?.max(0) as u64,
        unit: r.get(1)?,
        offset: r.get::<_, i64>(2)?.max(0) as u64,
        end: r.get::<_, i64>(3)?.max(0) as u64,
        hash: r.get(4)?,
        line: r.get(5)?,
    })
}

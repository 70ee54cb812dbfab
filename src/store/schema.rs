//! The schema: numbered migrations from `migrations/`, applied in order on open.

use rusqlite::{params, Connection, OptionalExtension};

/// The numbered migrations, in order.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_checkpoints.sql")),
    (2, include_str!("../../migrations/0002_backfill_jobs.sql")),
    (3, include_str!("../../migrations/0003_shipped_hours.sql")),
    (4, include_str!("../../migrations/0004_manifest.sql")),
    (5, include_str!("../../migrations/0005_digests.sql")),
];

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
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

//! Signed digests as the store keeps them: the newest of a sink's chain, those not yet written
//! beside the manifests, and the manifest entries no digest lists yet.

use rusqlite::{params, OptionalExtension};

use super::sql::manifest_row;
use super::{ManifestRow, Store, StoreError};

/// A signed digest as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRow {
    /// Its place in the sink's chain of digests.
    pub seq: u64,
    /// Its last manifest entry.
    pub through: u64,
    /// The signed digest, as published.
    pub body: String,
}

impl Store {
    /// Keep a signed digest of `sink`, not yet published. A digest that is already there (the
    /// same seq) is an error: a chain never forks.
    pub async fn insert_digest(
        &self,
        pipeline: &str,
        sink: &str,
        digest: DigestRow,
    ) -> Result<(), StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO digests (pipeline, sink, seq, through, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    pipeline,
                    sink,
                    digest.seq as i64,
                    digest.through as i64,
                    digest.body
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// The newest digest of `sink`, if it has one.
    pub async fn last_digest(&self, pipeline: &str, sink: &str) -> Result<Option<DigestRow>, StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            conn.query_row(
                "SELECT seq, through, body FROM digests WHERE pipeline = ?1 AND sink = ?2 ORDER BY seq DESC LIMIT 1",
                params![pipeline, sink],
                digest_row,
            )
            .optional()
        })
        .await
    }

    /// `sink`'s digests not yet written beside its manifests, in chain order.
    pub async fn unpublished_digests(
        &self,
        pipeline: &str,
        sink: &str,
    ) -> Result<Vec<DigestRow>, StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, through, body FROM digests WHERE pipeline = ?1 AND sink = ?2 AND published = 0 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![pipeline, sink], digest_row)?;
            rows.collect()
        })
        .await
    }

    /// Record that `sink`'s digest `seq` is written beside its manifests.
    pub async fn mark_digest_published(
        &self,
        pipeline: &str,
        sink: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            conn.execute(
                "UPDATE digests SET published = 1 WHERE pipeline = ?1 AND sink = ?2 AND seq = ?3",
                params![pipeline, sink, seq as i64],
            )
            .map(|_| ())
        })
        .await
    }

    /// `sink`'s manifest entries after `seq`, in chain order: those no digest lists yet, when
    /// `seq` is the newest digest's `through`.
    pub async fn manifest_rows_after(
        &self,
        pipeline: &str,
        sink: &str,
        seq: u64,
    ) -> Result<Vec<ManifestRow>, StoreError> {
        let (pipeline, sink) = (pipeline.to_string(), sink.to_string());
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, unit, offset_bytes, end_bytes, hash, line FROM manifest
                 WHERE pipeline = ?1 AND sink = ?2 AND seq > ?3 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![pipeline, sink, seq as i64], manifest_row)?;
            rows.collect()
        })
        .await
    }
}

fn digest_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DigestRow> {
    Ok(DigestRow {
        seq: r.get::<_, i64>(0)?.max(0) as u64,
        through: r.get::<_, i64>(1)?.max(0) as u64,
        body: r.get(2)?,
    })
}

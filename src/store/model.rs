//! What the store keeps: positions, jobs, commits, manifest rows.

use auditship_sink::StateEntry;

/// A sandbox's position as the store saved it in one stream: where its source resumes (the
/// client's [`Position`](auditship_client::Position): cursor time and the ids at it), plus the last
/// event id, the count shipped and when the row was written.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedPosition {
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
/// saved position's fields beside the pipeline and stream it belongs to. `--import` reads it back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportedPosition {
    /// The pipeline's name.
    pub pipeline: String,
    /// The stream (`live`, `backfill:…`, `job:…`).
    pub stream: String,
    /// The position.
    #[serde(flatten)]
    pub position: SavedPosition,
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
    pub positions: Vec<SavedPosition>,
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

/// The newest entry of a sink's manifest chain, as stored (see [`Store::manifest_head`](super::Store::manifest_head)).
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

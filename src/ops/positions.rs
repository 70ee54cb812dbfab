//! The saved positions of a pipeline as portable rows, one JSON object a line: what
//! `auditship checkpoints --export` writes and `--import` reads back into another database
//! (moving a pipeline to a new host, restoring a backup). The row format is
//! [`ExportedPosition`]: a [`SavedPosition`]'s fields beside its pipeline and stream.
//!
//! ```
//! use auditship::ops::positions::{from_json_lines, to_json_lines};
//! use auditship::store::{ExportedPosition, SavedPosition};
//!
//! let rows = vec![ExportedPosition {
//!     pipeline: "compliance".into(),
//!     stream: "live".into(),
//!     position: SavedPosition { resource_id: "sb-1".into(), cursor_us: Some(1), ..Default::default() },
//! }];
//! let text = to_json_lines(&rows)?;
//! let back = from_json_lines(&text, "compliance")?;
//! assert_eq!(back, vec![("live".to_string(), rows[0].position.clone())]);
//! assert!(from_json_lines(&text, "siem").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::config::PipelineConfig;
use crate::store::{ExportedPosition, SavedPosition, Store, StoreError};

/// Why an export cannot be imported. Retrying never helps; the fix is the file or the
/// pipeline it is imported with.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line is not an exported position.
    #[error("line {line}: not an exported checkpoint: {source}")]
    NotAnExport {
        /// The line, from 1.
        line: usize,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A line belongs to another pipeline.
    #[error("line {line}: the export is of pipeline {found:?}, not {expected:?}; import it with that pipeline's file")]
    OtherPipeline {
        /// The line, from 1.
        line: usize,
        /// The pipeline the line names.
        found: String,
        /// The pipeline it was imported into.
        expected: String,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every saved position of `p`, by stream (none when its database does not exist yet).
pub async fn export(p: &PipelineConfig) -> Result<Vec<ExportedPosition>, StoreError> {
    if !p.checkpoint_path.exists() {
        return Ok(Vec::new());
    }
    let rows = Store::open(&p.checkpoint_path)?.streams(&p.name).await?;
    Ok(rows
        .into_iter()
        .map(|(stream, position)| ExportedPosition {
            pipeline: p.name.clone(),
            stream,
            position,
        })
        .collect())
}

/// The rows as JSON lines.
pub fn to_json_lines(rows: &[ExportedPosition]) -> Result<String, serde_json::Error> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&serde_json::to_string(row)?);
        text.push('\n');
    }
    Ok(text)
}

/// Read JSON lines (blank lines skipped) as `(stream, position)` rows of `pipeline`; a row of
/// another pipeline is an error, not skipped.
pub fn from_json_lines(text: &str, pipeline: &str) -> Result<Vec<(String, SavedPosition)>, ImportError> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: ExportedPosition =
            serde_json::from_str(line).map_err(|source| ImportError::NotAnExport { line: n + 1, source })?;
        if row.pipeline != pipeline {
            return Err(ImportError::OtherPipeline {
                line: n + 1,
                found: row.pipeline,
                expected: pipeline.to_string(),
            });
        }
        rows.push((row.stream, row.position));
    }
    Ok(rows)
}

/// Write `rows` into `p`'s database where they are newer than what it holds; returns how many
/// were written and how many kept. Holds the pipeline's lock meanwhile: a running pipeline
/// would overwrite what is imported with its own positions.
pub async fn import(
    p: &PipelineConfig,
    rows: Vec<(String, SavedPosition)>,
) -> Result<(usize, usize), ImportError> {
    let store = Store::open(&p.checkpoint_path)?;
    let _lock = store.lock(&p.name)?;
    Ok(store.import(&p.name, rows).await?)
}

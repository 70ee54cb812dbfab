//! What a `type = "file"` sink table holds ([`FileSinkConfig`]), and the file sink's side of the
//! contract's [`SinkConfig`]: how the pipeline resolves, checks and builds it, and where its
//! archive is read back.

use std::path::Path;

use auditship_sink::{
    ArchiveLocation, Field, Interpolate, Sink, SinkConfig, SinkContext, SinkError, UnitCompression,
};
use serde::Deserialize;

use crate::{FileSink, PathTemplate};

impl SinkConfig for FileSinkConfig {
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String> {
        if vars.text("path", &mut self.path, Field::Path) {
            self.validate()?;
        }
        Ok(())
    }

    fn build(&self, ctx: SinkContext, _state_dir: &Path) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(FileSink::open(self.clone(), ctx)?))
    }

    fn appends_to(&self) -> Option<&str> {
        Some(&self.path)
    }

    fn archive(&self) -> Option<ArchiveLocation> {
        PathTemplate::parse(&self.path)
            .ok()
            .map(|t| ArchiveLocation::Dir(t.base().to_path_buf()))
    }
}

/// Configuration of a `type = "file"` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Path template, relative to the working directory: `{resource_id}`, `{date}` (UTC date of
    /// the event) and `{pipeline}` are replaced; values are made into safe path components.
    pub path: String,
    /// Compression of the files: `none` (default), `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Compression level (gzip 0–9, zstd 1–22). Default: 6 for gzip, 3 for zstd.
    #[serde(default)]
    pub compression_level: Option<u32>,
    /// Start a new generation of a file once it holds this many bytes (on disk).
    #[serde(default)]
    pub rotate_max_bytes: Option<u64>,
    /// Start a new generation of a file once it has been open this long.
    #[serde(default)]
    pub rotate_max_age_ms: Option<u64>,
    /// How many files may stay open at once; the least recently written are closed beyond it.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Close and seal (enter in the manifest) a file that has not been written this long, so
    /// yesterday's files of a long run are verifiable without rotation settings. Writing it
    /// again later continues it, with a new manifest entry for the new stretch.
    #[serde(default = "default_seal_idle_ms")]
    pub seal_idle_ms: u64,
    /// A flush of at least this many bytes (before compression) is written while the previous
    /// flush's fsync still runs, and reported durable at the flush after it; a smaller one is
    /// written and synced in one go. Overlapping keeps both the CPU and the disk busy when the
    /// sink is what holds a pipeline back; under a light load it would only mean more, smaller
    /// fsyncs. `0`: every flush overlaps.
    #[serde(default = "default_sync_overlap_min_bytes")]
    pub sync_overlap_min_bytes: u64,
}

/// Ten minutes: a quiet sandbox's file is not closed and reopened all day long, and a day's
/// file is sealed soon after the day ends.
pub(crate) fn default_seal_idle_ms() -> u64 {
    600_000
}

/// 4 MiB: a few thousand events, far above a quiet fleet's flush and far below a busy one's.
pub(crate) fn default_sync_overlap_min_bytes() -> u64 {
    4 << 20
}

/// 256 open files: a few hundred sandboxes per day fit without reopening, far below `ulimit -n`.
pub(crate) fn default_max_open_files() -> usize {
    256
}

/// File compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain NDJSON.
    #[default]
    None,
    /// gzip, one member per flush.
    Gzip,
    /// zstd, one frame per flush.
    Zstd,
}

impl Compression {
    /// The manifest's name for it.
    pub fn unit(self) -> UnitCompression {
        match self {
            Compression::None => UnitCompression::None,
            Compression::Gzip => UnitCompression::Gzip,
            Compression::Zstd => UnitCompression::Zstd,
        }
    }
}

impl FileSinkConfig {
    /// Check the configuration without touching the disk.
    pub fn validate(&self) -> Result<PathTemplate, String> {
        let template = PathTemplate::parse(&self.path)?;
        if let Some(level) = self.compression_level {
            let ok = match self.compression {
                Compression::None => false,
                Compression::Gzip => level <= 9,
                Compression::Zstd => (1..=22).contains(&level),
            };
            if !ok {
                return Err(format!(
                    "compression_level {level} does not fit compression {:?}; gzip takes 0-9, zstd 1-22, none takes no level",
                    self.compression
                ));
            }
        }
        if self.seal_idle_ms == 0 {
            return Err("seal_idle_ms must be greater than 0".into());
        }
        if self.rotate_max_bytes == Some(0) || self.rotate_max_age_ms == Some(0) {
            return Err("rotate_max_bytes and rotate_max_age_ms must be greater than 0 (leave them out to never rotate)".into());
        }
        if self.max_open_files == 0 {
            return Err("max_open_files must be at least 1".into());
        }
        Ok(template)
    }
}

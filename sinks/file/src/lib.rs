//! auditship's file sink: NDJSON archives, one event per line, exactly as received.
//!
//! # Crash exactness
//! Every file the sink appends to is *registered* (committed to the state store with its current
//! length) before the first byte is written. On each flush the sink writes, fsyncs and reports the
//! new durable length of every file it touched; the pipeline commits those lengths in the same
//! SQLite transaction as the checkpoint. A large flush (`sync_overlap_min_bytes`) leaves its
//! fsync running while the next flush writes: its lengths are reported, and its batches
//! acknowledged, only once that fsync is done (see [`FileSink::flush`](Sink::flush)). On start,
//! every registered file is truncated back to its committed length, which drops exactly the
//! bytes whose checkpoint never committed (a torn last line included), unless those bytes are
//! not what the sink writes: then the file is set aside and the start stops (`foreign.rs`).
//! Registered paths are absolute: the `path` template is resolved against the working
//! directory when the sink starts, so a later start from elsewhere still finds its files.
//! Compressed files are
//! flushed as independent gzip members / zstd frames, so every committed length is a valid end
//! of the stream.
//!
//! # Files
//! The `path` template picks a file per event. Rotation (by size or age) moves a template path to
//! its next *generation*: `2026-11-25.ndjson`, then `2026-11-25.1.ndjson`, `2026-11-25.2.ndjson`.
//! Files are created with mode 0640 and directories with 0750.
//!
//! # Seals
//! A file is *sealed* (reported through [`Sink::take_sealed`] for the pipeline's tamper-evident
//! manifest) when it rotates, when it is closed because too many are open or it was idle for
//! `seal_idle_ms`, when the sink closes, and at start for files a crash left unsealed. A file
//! written again after a seal gets another manifest entry for the stretch after it.
//! [`FileManifests`] writes the entries to an `auditship.manifest` file in each directory.
//!
//! # Layout
//! - `config.rs`: [`FileSinkConfig`] and the contract's `SinkConfig` for it.
//! - `sink.rs`: [`FileSink`], its slots (a template path and its generation) and stretches.
//! - `encode.rs`: lines to bytes; `sync.rs`: a flush's fsync, overlapping the next flush.
//! - `recovery.rs`: rolling registered files back at start; `manifests.rs`: [`FileManifests`].
//! - `foreign.rs`: bytes after a committed length that the sink did not write, set aside.
//! - `template.rs`: the `path` template, and the path made absolute against the working directory.

mod config;
mod encode;
mod foreign;
mod manifests;
mod recovery;
mod sink;
mod sync;
mod template;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditship_sink::{
    Batch, DigestFile, ManifestLine, ManifestPublisher, Precomputed, Sealed, Sink, SinkContext, SinkError,
    Spans, StateEntry, UnitCompression, DIGEST_DIR, MANIFEST_NAME,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use config::{Compression, FileSinkConfig};
pub use encode::encode_lines;
pub use manifests::FileManifests;
pub use sink::{FileSink, IDLE_AFTER};
use template::absolute;
pub use template::{PathTemplate, Values, PLACEHOLDERS};

use encode::*;
use recovery::*;

use sync::*;

#[cfg(test)]
mod tests;

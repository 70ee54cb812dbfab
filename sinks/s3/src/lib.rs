//! auditship's S3 sink: events gathered into compressed NDJSON objects, each uploaded once.
//!
//! # Objects
//! Events are gathered per rendered `key_prefix` (by default one prefix per pipeline, date and
//! sandbox) until `batch_max_events`, `batch_max_bytes` (uncompressed) or `batch_timeout_ms`,
//! then sealed into one object: NDJSON, each event exactly as received, compressed as
//! configured. Keys sort by time and are unique:
//! `PREFIX` + first event time (`20261125T101500.123456Z`) + `-` + a run id + `-` + a counter.
//! Every upload carries the body's SHA-256, which the server checks; bodies above
//! `multipart_threshold_bytes` go up in parts, each with its own SHA-256.
//!
//! # Exactly once, across crashes
//! A sealed object is first written to a staging file (fsync'd), then its key is *registered*
//! as pending in the checkpoint database, and only then uploaded. Once uploaded, the batches it
//! holds count as durable; the pending entry is deleted in the same transaction as the
//! checkpoint that passes its events. After a crash, every pending object is put in place
//! (uploaded from its staging file under its recorded key, unless it is already there) before
//! the sources start, and its event ids are remembered: when the sources deliver those events
//! again (the checkpoint never passed them) they are recognised and not written a second time.
//! So no event is in two objects, and none is lost.
//!
//! # Manifests
//! Every uploaded object is sealed for the pipeline's tamper-evident manifest; [`S3Manifests`]
//! writes each entry as its own object beside the data, `PREFIX/auditship.manifest/...`, with the
//! same encryption and Object Lock as the data (a locked archive's manifest cannot be deleted
//! either).
//!
//! # Faults
//! Uploads that fail for a reason that can pass (5xx, throttling, timeouts, an unreachable
//! endpoint) are retried forever with backoff, logged every 30 s; the checkpoint waits and the
//! pipeline's bounded queues hold the sources back. Access denied, a missing bucket or a bucket
//! without Object Lock stop the pipeline with an error that names the bucket and the fix.
//! Credentials come only from the standard AWS chain (environment, profile, instance role).
//!
//! # Layout
//! - `config.rs`: [`S3SinkConfig`], its checks, the contract's `SinkConfig`, and [`connect`].
//! - `sink.rs`: [`S3Sink`]: gathering events per object, staging, the sink contract;
//!   `upload.rs`: create-only puts and multipart uploads, retried, S3 errors sorted;
//!   `recover.rs`: staged objects put in place after a crash, replayed events recognised.
//! - `layout.rs`: [`ObjectLayout`], what objects are (keys, bodies, where manifests go), and
//!   [`NdjsonLayout`], this sink's; the Security Lake sink brings its own.
//! - `object.rs`: an object's body and checksums; `manifests.rs`: [`S3Manifests`].
//! - `archive.rs`: reading the archive back ([`S3Archive`]); `testing`: a throwaway moto server
//!   for tests (not used by the sink itself).

mod archive;
mod config;
mod layout;
mod manifests;
mod object;
mod recover;
mod sink;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod upload;

pub use archive::{get_object, list_objects, S3Archive};
pub use config::{connect, Compression, LockMode, S3SinkConfig, Sse};
pub use layout::{NdjsonLayout, ObjectLayout};
pub use manifests::{digest_key, manifest_key, S3Manifests};
pub use object::sha256_base64;
pub use sink::S3Sink;

use config::*;
use object::*;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditship_sink::template::{Placeholder, Template};
use auditship_sink::{
    encode_component, Batch, DigestFile, ManifestLine, ManifestPublisher, Precomputed, Sealed, Sink,
    SinkContext, SinkError, Spans, StateEntry, UnitCompression, DIGEST_DIR, MANIFEST_NAME,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode, ServerSideEncryption,
};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[cfg(test)]
mod tests;

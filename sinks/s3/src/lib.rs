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

mod archive;
mod config;
pub mod testing;

pub use archive::{get_object, list_objects, S3Archive};

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditship_sink::{
    encode_component, Batch, ManifestLine, ManifestPublisher, Precomputed, Sealed, Sink, SinkContext,
    SinkError, Spans, StateEntry, UnitCompression, MANIFEST_NAME,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode, ServerSideEncryption,
};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Configuration of a `type = "s3"` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    /// The bucket.
    pub bucket: String,
    /// The region; default: the AWS chain's (`AWS_REGION`, profile), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible endpoint (MinIO, moto…); default: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Key prefix template: `{pipeline}`, `{date}` (UTC date of the event), `{resource_id}`;
    /// values become safe key components (`/` in a sandbox id is `%2F`).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Object compression: `gzip` (default), `zstd` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Seal an object at this many events.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Seal an object at this many uncompressed bytes.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// Seal an object this long after its first event.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// Server-side encryption: `AES256` or `aws:kms`.
    #[serde(default)]
    pub server_side_encryption: Option<Sse>,
    /// The KMS key for `aws:kms` (default: the bucket's or the account's AWS-managed key).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Object Lock mode for every object: `GOVERNANCE` or `COMPLIANCE` (the bucket must have
    /// Object Lock enabled).
    #[serde(default)]
    pub object_lock_mode: Option<LockMode>,
    /// Object Lock retention, in days from the upload.
    #[serde(default)]
    pub object_lock_retain_days: Option<u32>,
    /// Bodies above this size are uploaded in parts.
    #[serde(default = "default_multipart_threshold_bytes")]
    pub multipart_threshold_bytes: u64,
    /// Part size of multipart uploads (S3's minimum is 5 MiB).
    #[serde(default = "default_multipart_part_bytes")]
    pub multipart_part_bytes: u64,
    /// Where sealed objects wait (fsync'd) until uploaded. Default: `s3-staging/<sink>` beside
    /// the checkpoint database.
    #[serde(default)]
    pub staging_dir: Option<String>,
}

fn default_key_prefix() -> String {
    "{pipeline}/{date}/{resource_id}/".into()
}
fn default_batch_max_events() -> usize {
    10_000
}
fn default_batch_max_bytes() -> u64 {
    8 * 1024 * 1024
}
fn default_batch_timeout_ms() -> u64 {
    60_000
}
fn default_multipart_threshold_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_multipart_part_bytes() -> u64 {
    8 * 1024 * 1024
}

/// Object compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (`.ndjson.gz`).
    #[default]
    Gzip,
    /// zstd (`.ndjson.zst`).
    Zstd,
    /// None (`.ndjson`).
    None,
}

impl Compression {
    fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".ndjson.gz",
            Compression::Zstd => ".ndjson.zst",
            Compression::None => ".ndjson",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/gzip",
            Compression::Zstd => "application/zstd",
            Compression::None => "application/x-ndjson",
        }
    }

    fn unit(self) -> UnitCompression {
        match self {
            Compression::Gzip => UnitCompression::Gzip,
            Compression::Zstd => UnitCompression::Zstd,
            Compression::None => UnitCompression::None,
        }
    }
}

/// Server-side encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Sse {
    /// S3-managed keys.
    #[serde(rename = "AES256")]
    Aes256,
    /// KMS keys.
    #[serde(rename = "aws:kms")]
    Kms,
}

/// Object Lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LockMode {
    /// Users with special permission may shorten or remove the retention.
    Governance,
    /// Nobody, not even the root account, can delete the object before its date.
    Compliance,
}

/// Parsed `key_prefix`.
#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    ResourceId,
    Date,
    Pipeline,
}

fn parse_prefix(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("key_prefix {text:?}: `{{` without a closing `}}`"))?;
        parts.push(match &rest[open + 1..open + close] {
            "resource_id" => Part::ResourceId,
            "date" => Part::Date,
            "pipeline" => Part::Pipeline,
            other => {
                return Err(format!(
                    "key_prefix: unknown placeholder `{{{other}}}`; use {{resource_id}}, {{date}} or {{pipeline}}"
                ))
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    if text.starts_with('/') {
        return Err("key_prefix must not start with '/'".into());
    }
    Ok(parts)
}

impl S3SinkConfig {
    /// Check the configuration offline.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("bucket is empty".into());
        }
        parse_prefix(&self.key_prefix)?;
        if self.batch_max_events == 0 || self.batch_max_bytes == 0 || self.batch_timeout_ms == 0 {
            return Err(
                "batch_max_events, batch_max_bytes and batch_timeout_ms must be greater than 0".into(),
            );
        }
        if self.multipart_part_bytes < 5 * 1024 * 1024 {
            return Err(
                "multipart_part_bytes must be at least 5242880 (5 MiB, S3's minimum part size)".into(),
            );
        }
        if self.kms_key_id.is_some() && self.server_side_encryption != Some(Sse::Kms) {
            return Err("kms_key_id needs server_side_encryption = \"aws:kms\"".into());
        }
        match (self.object_lock_mode, self.object_lock_retain_days) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "object_lock_mode and object_lock_retain_days go together; set both (or neither)".into(),
                )
            }
            (Some(_), Some(0)) => return Err("object_lock_retain_days must be at least 1".into()),
            _ => {}
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!("endpoint {e:?} must start with http:// or https://"));
            }
        }
        Ok(())
    }
}

/// Events gathered for one object.
struct Buffer {
    /// The events' raw bytes, shared with the pipeline's batches (no copy until sealing).
    lines: Vec<bytes::Bytes>,
    /// Uncompressed size, newlines included.
    bytes: u64,
    ids: Vec<Arc<str>>,
    /// The events by sandbox, for the manifest.
    spans: Spans,
    events: usize,
    first_batch: u64,
    first_time_us: i64,
    opened_at: Instant,
}

/// An object whose events the pipeline has not yet checkpointed: its ids are recognised if they
/// come again, and its pending entry is deleted once they are checkpointed.
struct Held {
    key: String,
    /// Ids not yet seen again in this run (recovered objects only).
    unseen: usize,
    /// The last batch (this run) holding one of its events.
    last_batch: u64,
    staging: PathBuf,
}

/// The S3 sink. See the crate documentation for its guarantees.
pub struct S3Sink {
    config: S3SinkConfig,
    prefix: Vec<Part>,
    ctx: SinkContext,
    client: Option<aws_sdk_s3::Client>,
    staging: PathBuf,
    run_id: String,
    counter: u64,
    buffers: HashMap<String, Buffer>,
    written_through: u64,
    held: Vec<Held>,
    /// Event id → index in `held`, and whether it was seen in this run.
    known: HashMap<Arc<str>, (usize, bool)>,
    /// Deletions waiting for the checkpoint to pass their objects.
    released: Vec<StateEntry>,
    /// Objects uploaded (or put in place after a crash) not yet handed to the manifest.
    sealed: Vec<Sealed>,
}

const PENDING: &str = "pending:";

/// What an upload failure means.
enum Failure {
    Retry(String),
    Stop(String),
}

impl S3Sink {
    /// Build the sink (no network traffic until [`Sink::prepare`]). `default_staging` is used
    /// when the configuration names no staging directory.
    pub fn open(config: S3SinkConfig, ctx: SinkContext, default_staging: PathBuf) -> Result<Self, SinkError> {
        config
            .validate()
            .map_err(|m| SinkError::Config(format!("sinks.{}: {m}", ctx.sink)))?;
        let prefix = parse_prefix(&config.key_prefix).map_err(SinkError::Config)?;
        let staging = config
            .staging_dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or(default_staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| SinkError::io(format!("creating staging directory {}", staging.display()), e))?;
        let seed = format!(
            "{}:{}:{}:{:?}",
            ctx.pipeline,
            ctx.sink,
            std::process::id(),
            std::time::SystemTime::now()
        );
        let run_id = hex(&Sha256::digest(seed.as_bytes())[..4]);
        Ok(S3Sink {
            config,
            prefix,
            ctx,
            client: None,
            staging,
            run_id,
            counter: 0,
            buffers: HashMap::new(),
            written_through: 0,
            held: Vec::new(),
            known: HashMap::new(),
            released: Vec::new(),
            sealed: Vec::new(),
        })
    }

    fn name(&self) -> String {
        format!("sinks.{}", self.ctx.sink)
    }

    fn client(&self) -> Result<&aws_sdk_s3::Client, SinkError> {
        self.client
            .as_ref()
            .ok_or_else(|| SinkError::Config(format!("{}: not prepared", self.name())))
    }

    async fn connect(&mut self) {
        let c = &self.config;
        self.client = Some(connect(c.region.as_deref(), c.endpoint.as_deref(), c.force_path_style).await);
    }

    fn render_prefix(&self, resource_id: &str, time_us: Option<i64>) -> String {
        let mut out = String::new();
        for p in &self.prefix {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::ResourceId => encode_component(&mut out, resource_id),
                Part::Pipeline => encode_component(&mut out, &self.ctx.pipeline),
                Part::Date => {
                    let date = time_us
                        .and_then(chrono::DateTime::from_timestamp_micros)
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .unwrap_or_else(|| "unknown-date".into());
                    encode_component(&mut out, &date);
                }
            }
        }
        out
    }

    fn staging_path(&self, key: &str) -> PathBuf {
        self.staging
            .join(format!("{}.obj", hex(&Sha256::digest(key.as_bytes())[..16])))
    }

    fn due(&self, b: &Buffer) -> bool {
        b.events >= self.config.batch_max_events
            || b.bytes >= self.config.batch_max_bytes
            || b.opened_at.elapsed() >= Duration::from_millis(self.config.batch_timeout_ms)
    }

    /// Seal, stage, register and upload one buffer; its events are then durable.
    async fn ship(&mut self, prefix: &str, buffer: &Buffer) -> Result<(), SinkError> {
        let time = chrono::DateTime::from_timestamp_micros(buffer.first_time_us)
            .map(|d| d.format("%Y%m%dT%H%M%S%.6fZ").to_string())
            .unwrap_or_else(|| "00000000T000000.000000Z".into());
        self.counter += 1;
        let key = format!(
            "{prefix}{time}-{}-{:06}{}",
            self.run_id,
            self.counter,
            self.config.compression.extension()
        );
        let staging = self.staging_path(&key);
        // Compressing megabytes and fsync'ing them are blocking work: off the async workers.
        let (compression, lines, size, path) = (
            self.config.compression,
            buffer.lines.clone(),
            buffer.bytes,
            staging.clone(),
        );
        let name = self.name();
        // The body's SHA-256 is taken once, here: the upload's checksum and the manifest use it.
        let (body, sha256) =
            tokio::task::spawn_blocking(move || -> Result<(bytes::Bytes, [u8; 32]), SinkError> {
                let body = compress(compression, &lines, size)
                    .map_err(|e| SinkError::io(format!("{name}: compressing an object"), e))?;
                stage(&path, &body)
                    .map_err(|e| SinkError::io(format!("{name}: writing {}", path.display()), e))?;
                let sha256: [u8; 32] = Sha256::digest(&body).into();
                Ok((body, sha256))
            })
            .await
            .map_err(|e| SinkError::io("staging", std::io::Error::other(e.to_string())))??;
        let entry = StateEntry {
            key: format!("{PENDING}{key}"),
            value: chrono::Utc::now().timestamp_micros(),
        };
        if let Err(e) = self.ctx.registry.register(vec![entry]).await {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
        self.upload_until_done(&key, body.clone(), &sha256).await?;
        // What the object holds is known: the manifest needs neither its bytes nor a read-back.
        let precomputed = Precomputed {
            start: 0,
            sha256,
            events: buffer.spans.events,
            sandboxes: buffer.spans.spans.clone(),
        };
        self.sealed.push(Sealed {
            unit: key.clone(),
            end: body.len() as u64,
            compression: self.config.compression.unit(),
            // Kept for the read-back the pipeline falls back to if the precomputed part does
            // not fit (it always starts at 0 for a new key).
            content: Some(body),
            precomputed: Some(precomputed),
        });
        let idx = self.held.len();
        for id in &buffer.ids {
            self.known.insert(id.clone(), (idx, true));
        }
        self.held.push(Held {
            key,
            unseen: 0,
            // An upper bound: the object holds nothing written after this batch.
            last_batch: self.written_through,
            staging,
        });
        Ok(())
    }

    /// Upload `body` (whose SHA-256 is `sha256`) under `key`, retrying what can pass.
    async fn upload_until_done(
        &self,
        key: &str,
        body: bytes::Bytes,
        sha256: &[u8; 32],
    ) -> Result<(), SinkError> {
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256);
        let mut delay = Duration::from_millis(200);
        let mut warned: Option<Instant> = None;
        let mut failures = 0u32;
        loop {
            match self.upload(key, &body, &checksum).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(sink = %self.ctx.sink, bucket = %self.config.bucket, failures, "S3 uploads work again");
                    }
                    return Ok(());
                }
                Err(Failure::Stop(m)) => {
                    return Err(SinkError::Remote {
                        message: m,
                        retryable: false,
                    })
                }
                Err(Failure::Retry(m)) => {
                    failures += 1;
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        tracing::warn!(sink = %self.ctx.sink, bucket = %self.config.bucket, key = %key, failures, error = %m, "S3 upload failed; retrying (checkpoints wait, nothing is dropped)");
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn retain_until(&self) -> Option<DateTime> {
        self.config.retain_until()
    }

    async fn upload(&self, key: &str, body: &bytes::Bytes, checksum: &str) -> Result<(), Failure> {
        let client = self.client().map_err(|e| Failure::Stop(e.to_string()))?;
        let c = &self.config;
        let (sse, lock) = c.protection();
        if (body.len() as u64) <= c.multipart_threshold_bytes {
            client
                .put_object()
                .bucket(&c.bucket)
                .key(key)
                .body(ByteStream::from(body.clone()))
                .content_type(c.compression.content_type())
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(checksum)
                .set_server_side_encryption(sse)
                .set_ssekms_key_id(c.kms_key_id.clone())
                .set_object_lock_mode(lock)
                .set_object_lock_retain_until_date(self.retain_until())
                .send()
                .await
                .map_err(|e| self.classify(e))?;
            return Ok(());
        }
        let created = client
            .create_multipart_upload()
            .bucket(&c.bucket)
            .key(key)
            .content_type(c.compression.content_type())
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(c.kms_key_id.clone())
            .set_object_lock_mode(lock)
            .set_object_lock_retain_until_date(self.retain_until())
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(Failure::Retry("the server gave no multipart upload id".into()));
        };
        let mut parts = Vec::new();
        let result: Result<(), Failure> = async {
            let part_len = c.multipart_part_bytes as usize;
            for (i, start) in (0..body.len()).step_by(part_len).enumerate() {
                let number = i as i32 + 1;
                // A slice of the shared body: no copy per part.
                let chunk = body.slice(start..(start + part_len).min(body.len()));
                let checksum = sha256_b64(&chunk);
                let part = client
                    .upload_part()
                    .bucket(&c.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(chunk))
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .checksum_sha256(&checksum)
                    .send()
                    .await
                    .map_err(|e| self.classify(e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .checksum_sha256(checksum)
                        .build(),
                );
            }
            client
                .complete_multipart_upload()
                .bucket(&c.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| self.classify(e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = client
                .abort_multipart_upload()
                .bucket(&c.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Sort an SDK error into retry or stop, with a message that names the bucket and the fix.
    fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R>(&self, e: SdkError<E, R>) -> Failure
    where
        R: std::fmt::Debug,
    {
        let bucket = &self.config.bucket;
        let code = e.code().unwrap_or("").to_string();
        let detail = format!("{}", DisplayErrorContext(&e));
        let stop = match code.as_str() {
            "NoSuchBucket" => Some(format!("bucket {bucket:?} does not exist; create it or fix `bucket` in {}", self.name())),
            "AccessDenied" | "AllAccessDisabled" => Some(format!(
                "access to bucket {bucket:?} is denied; grant the credentials of the AWS chain s3:PutObject (and s3:PutObjectRetention with Object Lock) on it"
            )),
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken" => Some(format!(
                "the AWS credentials were refused by bucket {bucket:?} ({code}); check AWS_ACCESS_KEY_ID/AWS_PROFILE or the instance role"
            )),
            "InvalidBucketName" => Some(format!("{bucket:?} is not a valid bucket name")),
            "InvalidRequest" | "InvalidArgument" if detail.contains("Object Lock") || detail.contains("ObjectLock") => Some(format!(
                "bucket {bucket:?} has no Object Lock configuration; create the bucket with Object Lock enabled, or remove object_lock_mode from {}",
                self.name()
            )),
            _ => None,
        };
        match stop {
            Some(m) => Failure::Stop(format!("{}: {m} ({detail})", self.name())),
            None => Failure::Retry(format!("{}: bucket {bucket:?}: {detail}", self.name())),
        }
    }

    /// Put a pending object (from an earlier run) in place and remember its ids.
    async fn recover(&mut self, entry: &StateEntry) -> Result<(), SinkError> {
        let Some(key) = entry.key.strip_prefix(PENDING) else {
            return Ok(());
        };
        let key = key.to_string();
        let staging = self.staging_path(&key);
        let client = self.client()?.clone();
        let head = client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .send()
            .await;
        let body = match head {
            Ok(_) => match std::fs::read(&staging) {
                Ok(b) => b,
                Err(_) => {
                    let got = client
                        .get_object()
                        .bucket(&self.config.bucket)
                        .key(&key)
                        .send()
                        .await
                        .map_err(|e| self.remote(format!("reading back pending object {key}"), e))?;
                    got.body
                        .collect()
                        .await
                        .map_err(|e| SinkError::Remote {
                            message: format!("{}: reading back pending object {key}: {e}", self.name()),
                            retryable: true,
                        })?
                        .into_bytes()
                        .to_vec()
                }
            },
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                match std::fs::read(&staging) {
                    Ok(b) => {
                        tracing::info!(sink = %self.ctx.sink, key = %key, "uploading an object staged before a crash");
                        let sha256: [u8; 32] = Sha256::digest(&b).into();
                        self.upload_until_done(&key, bytes::Bytes::from(b.clone()), &sha256)
                            .await?;
                        b
                    }
                    Err(_) => {
                        // Neither uploaded nor staged: nothing of it reached S3, and the checkpoint
                        // never passed its events, so they come again.
                        tracing::warn!(sink = %self.ctx.sink, key = %key, "a pending object is neither in the bucket nor staged; its events will be shipped again");
                        self.ctx.registry.forget(vec![entry.key.clone()]).await?;
                        return Ok(());
                    }
                }
            }
            Err(e) => return Err(self.remote(format!("checking pending object {key}"), e)),
        };
        let ids = event_ids(&key, &body)
            .map_err(|m| SinkError::Config(format!("{}: pending object {key}: {m}", self.name())))?;
        self.sealed.push(Sealed {
            unit: key.clone(),
            end: body.len() as u64,
            compression: self.config.compression.unit(),
            content: Some(bytes::Bytes::from(body)),
            precomputed: None,
        });
        let idx = self.held.len();
        let mut unseen = 0;
        for id in ids {
            if self.known.insert(id, (idx, false)).is_none() {
                unseen += 1;
            }
        }
        tracing::info!(sink = %self.ctx.sink, key = %key, events = unseen, "object from before a crash is in place; its events will not be written again");
        self.held.push(Held {
            key,
            unseen,
            last_batch: 0,
            staging,
        });
        Ok(())
    }

    fn remote<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        what: String,
        e: SdkError<E, R>,
    ) -> SinkError {
        match self.classify(e) {
            Failure::Stop(m) => SinkError::Remote {
                message: format!("{what}: {m}"),
                retryable: false,
            },
            Failure::Retry(m) => SinkError::Remote {
                message: format!("{what}: {m}"),
                retryable: true,
            },
        }
    }

    /// Ship the buffer of `prefix`; on failure it stays (a reset then drops it, and the pipeline
    /// writes its batches again).
    async fn ship_buffer(&mut self, prefix: String) -> Result<(), SinkError> {
        let Some(b) = self.buffers.remove(&prefix) else {
            return Ok(());
        };
        match self.ship(&prefix, &b).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.buffers.insert(prefix, b);
                Err(e)
            }
        }
    }

    /// The last batch whose every event is in an uploaded object.
    fn through(&self) -> u64 {
        self.buffers
            .values()
            .map(|b| b.first_batch.saturating_sub(1))
            .min()
            .unwrap_or(self.written_through)
            .min(self.written_through)
    }

    /// Pending entries whose objects' events are all durable and seen: delete them with the
    /// checkpoint that covers them.
    fn release(&mut self) {
        let through = self.through();
        let mut keep = Vec::new();
        let mut remap = HashMap::new();
        for (i, h) in std::mem::take(&mut self.held).into_iter().enumerate() {
            if h.unseen == 0 && h.last_batch <= through {
                self.released
                    .push(StateEntry::deleted(format!("{PENDING}{}", h.key)));
                let _ = std::fs::remove_file(&h.staging);
            } else {
                remap.insert(i, keep.len());
                keep.push(h);
            }
        }
        self.known.retain(|_, (idx, _)| match remap.get(idx) {
            Some(n) => {
                *idx = *n;
                true
            }
            None => false,
        });
        self.held = keep;
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// The base64 SHA-256 of `bytes`, as S3's `ChecksumSHA256` spells it.
pub fn sha256_base64(bytes: &[u8]) -> String {
    sha256_b64(bytes)
}

fn sha256_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// The object body: every line and a newline, compressed.
fn compress(c: Compression, lines: &[bytes::Bytes], size: u64) -> std::io::Result<bytes::Bytes> {
    fn put(out: &mut impl std::io::Write, lines: &[bytes::Bytes]) -> std::io::Result<()> {
        for l in lines {
            out.write_all(l)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
    let out = match c {
        Compression::None => {
            let mut out = Vec::with_capacity(size as usize);
            put(&mut out, lines)?;
            out
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(size as usize / 4),
                flate2::Compression::new(6),
            );
            put(&mut enc, lines)?;
            enc.finish()?
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::with_capacity(size as usize / 4), 3)?;
            put(&mut enc, lines)?;
            enc.finish()?
        }
    };
    Ok(bytes::Bytes::from(out))
}

/// Write `body` to `path` durably (file and directory fsync'd).
fn stage(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The `id` of every event in an object body.
fn event_ids(key: &str, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let lines = archive::lines(key, body)?;
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Id<'_>>(l)
                .map(|i| Arc::from(i.id.as_ref()))
                .map_err(|e| format!("a line without an id: {e}"))
        })
        .collect()
}

#[async_trait]
impl Sink for S3Sink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.connect().await;
        let client = self.client()?.clone();
        let bucket = self.config.bucket.clone();
        if let Err(e) = client.head_bucket().bucket(&bucket).send().await {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let message = match status {
                Some(404) => format!("{}: bucket {bucket:?} does not exist; create it or fix `bucket`", self.name()),
                Some(403) => format!(
                    "{}: access to bucket {bucket:?} is denied; grant the AWS chain's credentials s3:ListBucket and s3:PutObject on it",
                    self.name()
                ),
                _ => format!(
                    "{}: cannot reach bucket {bucket:?} ({}); check `endpoint`, `region` and the network",
                    self.name(),
                    DisplayErrorContext(&e)
                ),
            };
            return Err(SinkError::Remote {
                message,
                retryable: !matches!(status, Some(404 | 403)),
            });
        }
        if self.config.object_lock_mode.is_some() {
            let lock = client
                .get_object_lock_configuration()
                .bucket(&bucket)
                .send()
                .await;
            let enabled = lock
                .as_ref()
                .ok()
                .and_then(|l| l.object_lock_configuration())
                .is_some_and(|c| c.object_lock_enabled().is_some_and(|e| e.as_str() == "Enabled"));
            if !enabled {
                return Err(SinkError::Config(format!(
                    "{}: bucket {bucket:?} has no Object Lock; create the bucket with Object Lock enabled (it turns versioning on), or remove object_lock_mode",
                    self.name()
                )));
            }
        }
        let recovered = self.ctx.recovered.clone();
        let mut referenced = std::collections::HashSet::new();
        for entry in &recovered {
            if let Some(key) = entry.key.strip_prefix(PENDING) {
                referenced.insert(self.staging_path(key));
            }
            self.recover(entry).await?;
        }
        // Staged objects no pending entry names were never registered: their events come again.
        if let Ok(dir) = std::fs::read_dir(&self.staging) {
            for f in dir.flatten() {
                if !referenced.contains(&f.path()) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        tracing::info!(sink = %self.ctx.sink, bucket = %bucket, recovered = self.held.len(), "S3 bucket reachable");
        Ok(())
    }

    async fn write(&mut self, batch: Arc<Batch>) -> Result<(), SinkError> {
        for e in &batch.events {
            if let Some((idx, seen)) = self.known.get_mut(&e.id) {
                // Already in an uploaded object: written again after a reset or a crash.
                if let Some(h) = self.held.get_mut(*idx) {
                    if !*seen {
                        *seen = true;
                        h.unseen = h.unseen.saturating_sub(1);
                    }
                    h.last_batch = h.last_batch.max(batch.number);
                }
                continue;
            }
            let prefix = self.render_prefix(&e.resource_id, e.time_us.or(e.cursor_us));
            let b = self.buffers.entry(prefix).or_insert_with(|| Buffer {
                lines: Vec::new(),
                bytes: 0,
                ids: Vec::new(),
                spans: Spans::default(),
                events: 0,
                first_batch: batch.number,
                first_time_us: e.cursor_us.or(e.time_us).unwrap_or(0),
                opened_at: Instant::now(),
            });
            b.lines.push(e.raw.clone());
            b.bytes += e.raw.len() as u64 + 1;
            b.ids.push(e.id.clone());
            b.spans.add(e);
            b.events += 1;
        }
        self.written_through = self.written_through.max(batch.number);
        Ok(())
    }

    async fn flush(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let due: Vec<String> = self
            .buffers
            .iter()
            .filter(|(_, b)| self.due(b))
            .map(|(k, _)| k.clone())
            .collect();
        for prefix in due {
            self.ship_buffer(prefix).await?;
        }
        self.release();
        Ok(std::mem::take(&mut self.released))
    }

    fn durable_through(&self) -> Option<u64> {
        Some(self.through())
    }

    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        let timeout = Duration::from_millis(self.config.batch_timeout_ms);
        self.buffers
            .values()
            .map(|b| tokio::time::Instant::from_std(b.opened_at + timeout))
            .min()
    }

    async fn reset(&mut self) -> Result<(), SinkError> {
        // Uploaded objects stay (their ids are recognised when written again); open buffers go.
        self.buffers.clear();
        Ok(())
    }

    async fn close(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let prefixes: Vec<String> = self.buffers.keys().cloned().collect();
        for prefix in prefixes {
            self.ship_buffer(prefix).await?;
        }
        self.release();
        Ok(std::mem::take(&mut self.released))
    }

    fn take_sealed(&mut self) -> Vec<Sealed> {
        std::mem::take(&mut self.sealed)
    }

    fn manifest_publisher(&self) -> Option<Arc<dyn ManifestPublisher>> {
        Some(Arc::new(S3Manifests {
            client: self.client.clone()?,
            config: self.config.clone(),
            pipeline: self.ctx.pipeline.clone(),
            sink: self.ctx.sink.clone(),
        }))
    }
}

impl S3SinkConfig {
    /// The Object Lock retain-until date of an object written now.
    fn retain_until(&self) -> Option<DateTime> {
        let days = self.object_lock_retain_days?;
        let until = chrono::Utc::now() + chrono::Duration::days(i64::from(days));
        Some(DateTime::from_secs(until.timestamp()))
    }

    /// Server-side encryption and Object Lock mode for every object written.
    fn protection(&self) -> (Option<ServerSideEncryption>, Option<ObjectLockMode>) {
        let sse = self.server_side_encryption.map(|s| match s {
            Sse::Aes256 => ServerSideEncryption::Aes256,
            Sse::Kms => ServerSideEncryption::AwsKms,
        });
        let lock = self.object_lock_mode.map(|m| match m {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        });
        (sse, lock)
    }
}

/// An S3 client: `region` (default: the AWS chain's, else `us-east-1`), an S3-compatible
/// `endpoint`, path-style addressing; credentials from the AWS chain.
pub async fn connect(
    region: Option<&str>,
    endpoint: Option<&str>,
    force_path_style: bool,
) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    let shared = loader.load().await;
    let mut conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(force_path_style);
    if shared.region().is_none() {
        conf = conf.region(aws_config::Region::new("us-east-1"));
    }
    if let Some(e) = endpoint {
        conf = conf.endpoint_url(e);
    }
    aws_sdk_s3::Client::from_conf(conf.build())
}

/// The key of a manifest entry's object: beside its unit, under `auditship.manifest/`, named by
/// pipeline, sink and place in the chain.
pub fn manifest_key(unit: &str, pipeline: &str, sink: &str, seq: u64) -> String {
    let mut key = match unit.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/"),
        None => String::new(),
    };
    key.push_str(MANIFEST_NAME);
    key.push('/');
    encode_component(&mut key, pipeline);
    key.push('.');
    encode_component(&mut key, sink);
    key.push_str(&format!(".{seq:012}.ndjson"));
    key
}

/// Writes an S3 sink's manifest entries, one object per entry (S3 cannot append); putting the
/// same entry again writes the same object, so publishing is idempotent.
pub struct S3Manifests {
    client: aws_sdk_s3::Client,
    config: S3SinkConfig,
    pipeline: String,
    sink: String,
}

#[async_trait]
impl ManifestPublisher for S3Manifests {
    async fn publish(&self, entries: &[ManifestLine]) -> Result<(), SinkError> {
        let c = &self.config;
        let (sse, lock) = c.protection();
        let retain = c.retain_until();
        for e in entries {
            let key = manifest_key(&e.unit, &self.pipeline, &self.sink, e.seq);
            let body = bytes::Bytes::from(format!("{}\n", e.line));
            self.client
                .put_object()
                .bucket(&c.bucket)
                .key(&key)
                .content_type("application/x-ndjson")
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(sha256_b64(&body))
                .body(ByteStream::from(body))
                .set_server_side_encryption(sse.clone())
                .set_ssekms_key_id(c.kms_key_id.clone())
                .set_object_lock_mode(lock.clone())
                .set_object_lock_retain_until_date(retain)
                .send()
                .await
                .map_err(|err| SinkError::Remote {
                    message: format!(
                        "sinks.{}: writing manifest object {key} to bucket {:?}: {}",
                        self.sink,
                        c.bucket,
                        DisplayErrorContext(&err)
                    ),
                    retryable: true,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! What a `type = "s3"` sink table holds ([`S3SinkConfig`]), and the S3 sink's side of the
//! contract's [`SinkConfig`]: how the pipeline resolves, checks and builds it, and where its
//! archive is read back.

use auditship_sink::{ArchiveLocation, Field, Interpolate, SinkConfig};

use super::*;

impl SinkConfig for S3SinkConfig {
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String> {
        let mut resolved = true;
        for (field, value) in [
            ("bucket", Some(&mut self.bucket)),
            ("key_prefix", Some(&mut self.key_prefix)),
            ("endpoint", self.endpoint.as_mut()),
            ("region", self.region.as_mut()),
            ("staging_dir", self.staging_dir.as_mut()),
        ] {
            if let Some(value) = value {
                resolved &= vars.text(field, value, Field::Setting);
            }
        }
        if resolved {
            self.validate()?;
        }
        Ok(())
    }

    fn build(&self, ctx: SinkContext, state_dir: &Path) -> Result<Box<dyn Sink>, SinkError> {
        // Staged objects live beside the checkpoint database that names them.
        let staging = state_dir.join("s3-staging").join(&ctx.pipeline).join(&ctx.sink);
        Ok(Box::new(S3Sink::open(self.clone(), ctx, staging)?))
    }

    fn archive(&self) -> Option<ArchiveLocation> {
        Some(ArchiveLocation::S3 {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.force_path_style,
        })
    }
}

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
    /// Object Lock retention, in days from the newest event an object holds (for a manifest
    /// or digest object: the newest event its entry lists, or its period's end), and at least
    /// a day from the upload (S3 takes only future dates). Objects uploaded again after a crash
    /// count from the upload.
    #[serde(default)]
    pub object_lock_retain_days: Option<u32>,
    /// Put every object (data, manifest, digest) under an Object Lock legal hold as well,
    /// which keeps it until the hold is lifted, whatever its retention (the bucket must have
    /// Object Lock enabled; lifting needs `s3:PutObjectLegalHold`).
    #[serde(default)]
    pub object_lock_legal_hold: bool,
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
    /// The longest one attempt of a request (an upload, a part) may take before it is given up
    /// and retried: a server that accepts the connection and then answers nothing would
    /// otherwise hold the sink, silently, for as long as TCP allows. The SDK makes 3 attempts
    /// (with backoff) before the sink logs the failure and retries on its own.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

pub(crate) fn default_request_timeout_ms() -> u64 {
    60_000
}

pub(crate) fn default_key_prefix() -> String {
    "{pipeline}/{date}/{resource_id}/".into()
}

pub(crate) fn default_batch_max_events() -> usize {
    10_000
}

pub(crate) fn default_batch_max_bytes() -> u64 {
    8 * 1024 * 1024
}

pub(crate) fn default_batch_timeout_ms() -> u64 {
    60_000
}

pub(crate) fn default_multipart_threshold_bytes() -> u64 {
    16 * 1024 * 1024
}

pub(crate) fn default_multipart_part_bytes() -> u64 {
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
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".ndjson.gz",
            Compression::Zstd => ".ndjson.zst",
            Compression::None => ".ndjson",
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/gzip",
            Compression::Zstd => "application/zstd",
            Compression::None => "application/x-ndjson",
        }
    }

    pub(crate) fn unit(self) -> UnitCompression {
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

/// The placeholders `key_prefix` takes.
const PREFIX_PLACEHOLDERS: [Placeholder; 3] =
    [Placeholder::ResourceId, Placeholder::Date, Placeholder::Pipeline];

/// Parse `key_prefix` (the contract's one template syntax).
pub(crate) fn parse_prefix(text: &str) -> Result<Template, String> {
    let template =
        Template::parse(text, &PREFIX_PLACEHOLDERS).map_err(|e| format!("{e} (in key_prefix {text:?})"))?;
    if text.starts_with('/') {
        return Err("key_prefix must not start with '/'".into());
    }
    Ok(template)
}

impl S3SinkConfig {
    /// Check the configuration offline.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("bucket is empty".into());
        }
        parse_prefix(&self.key_prefix)?;
        if self.request_timeout_ms == 0 {
            return Err(
                "request_timeout_ms must be greater than 0 (it bounds one attempt of an upload)".into(),
            );
        }
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

impl S3SinkConfig {
    /// The Object Lock retain-until date of an object whose newest event is at `newest_us`
    /// (`None`: unknown, counted from now): the retention from then, and at least a day from
    /// now, since S3 refuses dates in the past.
    pub(crate) fn retain_until(&self, newest_us: Option<i64>) -> Option<DateTime> {
        let days = self.object_lock_retain_days?;
        let now = chrono::Utc::now();
        let from = newest_us
            .and_then(chrono::DateTime::from_timestamp_micros)
            .unwrap_or(now);
        let until = (from + chrono::Duration::days(i64::from(days))).max(now + chrono::Duration::days(1));
        Some(DateTime::from_secs(until.timestamp()))
    }

    /// The legal hold status every object is written with.
    pub(crate) fn legal_hold(&self) -> Option<aws_sdk_s3::types::ObjectLockLegalHoldStatus> {
        self.object_lock_legal_hold
            .then_some(aws_sdk_s3::types::ObjectLockLegalHoldStatus::On)
    }

    /// Server-side encryption and Object Lock mode for every object written.
    pub(crate) fn protection(&self) -> (Option<ServerSideEncryption>, Option<ObjectLockMode>) {
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
    attempt_timeout: Option<std::time::Duration>,
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
    if let Some(t) = attempt_timeout {
        conf = conf.timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(t)
                .build(),
        );
    }
    aws_sdk_s3::Client::from_conf(conf.build())
}

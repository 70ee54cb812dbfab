//! What a `type = "security_lake"` sink table holds ([`SecurityLakeSinkConfig`]), and the
//! contract's [`SinkConfig`]: it builds an S3 sink ([`auditship_sink_s3::S3Sink`]) whose
//! objects are laid out by [`ParquetLayout`].

use std::path::Path;
use std::sync::Arc;

use auditship_sink::{ArchiveLocation, Field, Interpolate, Sink, SinkConfig, SinkContext, SinkError};
use auditship_sink_s3::{Compression, LockMode, S3Sink, S3SinkConfig, Sse};
use serde::Deserialize;

use crate::layout::ParquetLayout;

/// Configuration of a `type = "security_lake"` sink: one Security Lake custom source, which
/// takes one OCSF class.
///
/// The delivery settings (batching, encryption, Object Lock, multipart, staging, timeouts)
/// repeat the S3 sink's field by field, since serde cannot flatten a shared struct into a table
/// that refuses unknown keys; [`SecurityLakeSinkConfig::s3`] hands them over, and the S3 sink's
/// `validate` checks them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityLakeSinkConfig {
    /// The custom source's location as Security Lake shows it:
    /// `s3://aws-security-data-lake-REGION-…/ext/SOURCE/` (objects go under it, in
    /// `region=…/accountId=…/eventDay=YYYYMMDD/`).
    pub source_location: String,
    /// The OCSF class the source was created for: 4002 (HTTP Activity), 4001 (Network
    /// Activity) or 2004 (Detection Finding). Events of other classes are dead-lettered.
    pub class_uid: u32,
    /// The lake's AWS region: the bucket's, and the partitions' `region=`.
    pub region: String,
    /// The account id (or the external id given when the source was created): the
    /// partitions' `accountId=`.
    pub account_id: String,
    /// An S3-compatible endpoint (tests: moto); default: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Seal an object at this many events.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Seal an object at this many bytes of events (as JSON; the Parquet file is several times
    /// smaller). Security Lake asks for objects of at most 256 MB.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u64,
    /// Seal an object this long after its first event. Security Lake asks for objects every 5
    /// minutes to a day per partition.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// zstd level of the Parquet pages (1 to 22).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Server-side encryption: `AES256` or `aws:kms`.
    #[serde(default)]
    pub server_side_encryption: Option<Sse>,
    /// The KMS key for `aws:kms`.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Object Lock mode for every object: `GOVERNANCE` or `COMPLIANCE`.
    #[serde(default)]
    pub object_lock_mode: Option<LockMode>,
    /// Object Lock retention in days from the newest event an object holds.
    #[serde(default)]
    pub object_lock_retain_days: Option<u32>,
    /// Every object under an Object Lock legal hold as well.
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
    /// The longest one attempt of a request may take before it is given up and retried.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_batch_max_events() -> usize {
    1_000_000
}

fn default_batch_max_bytes() -> u64 {
    128 * 1024 * 1024
}

fn default_batch_timeout_ms() -> u64 {
    300_000
}

fn default_zstd_level() -> i32 {
    3
}

fn default_multipart_threshold_bytes() -> u64 {
    16 * 1024 * 1024
}

fn default_multipart_part_bytes() -> u64 {
    8 * 1024 * 1024
}

fn default_request_timeout_ms() -> u64 {
    60_000
}

impl SecurityLakeSinkConfig {
    /// The bucket and the source's prefix (`ext/SOURCE/`) of `source_location`.
    pub fn location(&self) -> Result<(String, String), String> {
        let rest = self.source_location.strip_prefix("s3://").ok_or_else(|| {
            format!(
                "source_location {:?} must be an s3:// address, as Security Lake shows the custom source's location (s3://BUCKET/ext/SOURCE/)",
                self.source_location
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() || prefix.is_empty() {
            return Err(format!(
                "source_location {:?} names no source: it is s3://BUCKET/ext/SOURCE/, as Security Lake shows it",
                self.source_location
            ));
        }
        Ok((bucket.to_string(), format!("{prefix}/")))
    }

    /// Check the configuration offline.
    pub fn validate(&self) -> Result<(), String> {
        let (_, prefix) = self.location()?;
        if crate::schema::schema_for(self.class_uid).is_none() {
            return Err(format!(
                "class_uid {}: no Parquet schema for that OCSF class (this sink writes {})",
                self.class_uid,
                crate::schema::CLASSES
                    .iter()
                    .map(|(u, n)| format!("{u} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (field, value) in [("region", &self.region), ("account_id", &self.account_id)] {
            if value.is_empty() || value.contains(['/', '=']) {
                return Err(format!(
                    "{field} {value:?} must be set, without '/' or '=' (it names a partition)"
                ));
            }
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(format!("zstd_level {} must be between 1 and 22", self.zstd_level));
        }
        if prefix.len() > 512 {
            return Err("source_location's path is longer than 512 bytes".into());
        }
        self.s3()?.validate()
    }

    /// The S3 sink settings this sink uploads with (its key prefix and compression are unused:
    /// the layout decides keys and bodies).
    pub fn s3(&self) -> Result<S3SinkConfig, String> {
        let (bucket, prefix) = self.location()?;
        Ok(S3SinkConfig {
            bucket,
            region: Some(self.region.clone()),
            endpoint: self.endpoint.clone(),
            force_path_style: self.force_path_style,
            key_prefix: prefix,
            compression: Compression::None,
            batch_max_events: self.batch_max_events,
            batch_max_bytes: self.batch_max_bytes,
            batch_timeout_ms: self.batch_timeout_ms,
            server_side_encryption: self.server_side_encryption,
            kms_key_id: self.kms_key_id.clone(),
            object_lock_mode: self.object_lock_mode,
            object_lock_retain_days: self.object_lock_retain_days,
            object_lock_legal_hold: self.object_lock_legal_hold,
            multipart_threshold_bytes: self.multipart_threshold_bytes,
            multipart_part_bytes: self.multipart_part_bytes,
            staging_dir: self.staging_dir.clone(),
            request_timeout_ms: self.request_timeout_ms,
        })
    }

    /// The layout of this source's objects.
    pub fn layout(&self) -> Result<ParquetLayout, String> {
        let (_, prefix) = self.location()?;
        ParquetLayout::new(
            self.class_uid,
            &prefix,
            &self.region,
            &self.account_id,
            self.zstd_level,
        )
    }
}

impl SinkConfig for SecurityLakeSinkConfig {
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String> {
        let mut resolved = true;
        for (field, value) in [
            ("source_location", Some(&mut self.source_location)),
            ("region", Some(&mut self.region)),
            ("account_id", Some(&mut self.account_id)),
            ("endpoint", self.endpoint.as_mut()),
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
        let named = |m: String| SinkError::Config(format!("sinks.{}: {m}", ctx.sink));
        let s3 = self.s3().map_err(named)?;
        let layout = self.layout().map_err(named)?;
        let staging = state_dir
            .join("security-lake-staging")
            .join(&ctx.pipeline)
            .join(&ctx.sink);
        Ok(Box::new(S3Sink::with_layout(s3, Arc::new(layout), ctx, staging)?))
    }

    fn archive(&self) -> Option<ArchiveLocation> {
        let (bucket, _) = self.location().ok()?;
        Some(ArchiveLocation::S3 {
            bucket,
            endpoint: self.endpoint.clone(),
            region: Some(self.region.clone()),
            path_style: self.force_path_style,
        })
    }
}

//! The S3 sink's manifest entries: one object per entry beside its unit, written create-only
//! in spirit (the same entry writes the same object); and its signed digests, one object each
//! under `auditship.digest/` at the fixed start of the key prefix, written create-only
//! (`If-None-Match: *`).

use super::*;

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

/// The key of a digest: under [`DIGEST_DIR`] in the "directory" every key of the sink starts
/// with (the key prefix up to the last `/` before its first placeholder).
pub fn digest_key(key_prefix: &Template, name: &str) -> String {
    let start = key_prefix.fixed_start();
    let root = start.rfind('/').map_or("", |i| &start[..=i]);
    format!("{root}{DIGEST_DIR}/{name}")
}

/// Writes an S3 sink's manifest entries, one object per entry (S3 cannot append); putting the
/// same entry again writes the same object, so publishing is idempotent.
pub struct S3Manifests {
    pub(crate) client: aws_sdk_s3::Client,
    pub(crate) config: S3SinkConfig,
    pub(crate) pipeline: String,
    pub(crate) sink: String,
    /// Where the sink's objects, manifest entries and digests go.
    pub(crate) layout: Arc<dyn ObjectLayout>,
}

impl S3Manifests {
    /// A publisher for the sink `sink` of `pipeline` configured by `config` (its bucket,
    /// protection and key prefix), through `client`.
    pub fn new(
        client: aws_sdk_s3::Client,
        config: S3SinkConfig,
        pipeline: &str,
        sink: &str,
    ) -> Result<Self, SinkError> {
        let layout = NdjsonLayout::new(&config, pipeline).map_err(SinkError::Config)?;
        Ok(S3Manifests {
            client,
            config,
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            layout: Arc::new(layout),
        })
    }
}

impl S3Manifests {
    /// Put `body` under `key`, create-only (`If-None-Match: *`): an object already there with
    /// the same bytes is this one, written before (a retry whose answer was lost, a crash
    /// before the database recorded it); with other bytes it is an error, not retried, and the
    /// object stays as it is.
    async fn put_create_only(
        &self,
        key: &str,
        body: bytes::Bytes,
        content_type: &str,
        newest_us: Option<i64>,
    ) -> Result<(), SinkError> {
        let c = &self.config;
        let (sse, lock) = c.protection();
        let put = self
            .client
            .put_object()
            .bucket(&c.bucket)
            .key(key)
            .if_none_match("*")
            .content_type(content_type)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(sha256_b64(&body))
            .body(ByteStream::from(body.clone()))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(c.kms_key_id.clone())
            .set_object_lock_mode(lock)
            .set_object_lock_retain_until_date(c.retain_until(newest_us))
            .set_object_lock_legal_hold_status(c.legal_hold())
            .send()
            .await;
        let err = match put {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if precondition_failed(&err) {
            match same_object(&self.client, &c.bucket, key, &body).await {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    return Err(SinkError::Remote {
                        message: format!(
                            "sinks.{}: object {key} in bucket {:?} already exists with other content; auditship never replaces an object (if another pipeline writes this prefix, give each its own)",
                            self.sink, c.bucket
                        ),
                        retryable: false,
                    })
                }
                Err(e) => {
                    return Err(SinkError::Remote {
                        message: format!("sinks.{}: reading back {key} in bucket {:?}: {e}", self.sink, c.bucket),
                        retryable: true,
                    })
                }
            }
        }
        Err(SinkError::Remote {
            message: format!(
                "sinks.{}: writing {key} to bucket {:?}: {}",
                self.sink,
                c.bucket,
                DisplayErrorContext(&err)
            ),
            retryable: true,
        })
    }
}

/// Whether a conditional write failed because an object is there (412 Precondition Failed).
pub(crate) fn precondition_failed<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    err.raw_response().is_some_and(|r| r.status().as_u16() == 412)
        || matches!(err, SdkError::ServiceError(s) if s.err().code() == Some("PreconditionFailed"))
}

/// Whether the object at `key` holds exactly `body`.
pub(crate) async fn same_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: &[u8],
) -> Result<bool, String> {
    let there = crate::archive::get_object(client, bucket, key).await?;
    Ok(there.as_ref() == body)
}

/// The newest time a manifest entry's line names (its sandboxes' last cursor times), in µs.
fn newest_in_entry(line: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("sandboxes")?
        .as_array()?
        .iter()
        .filter_map(|s| s.get("last_cursor")?.as_str())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros())
        .max()
}

#[async_trait]
impl ManifestPublisher for S3Manifests {
    async fn publish(&self, entries: &[ManifestLine]) -> Result<(), SinkError> {
        for e in entries {
            let key = self
                .layout
                .manifest_key(&e.unit, &self.pipeline, &self.sink, e.seq);
            let body = bytes::Bytes::from(format!("{}\n", e.line));
            self.put_create_only(&key, body, "application/x-ndjson", newest_in_entry(&e.line))
                .await?;
        }
        Ok(())
    }

    async fn publish_digest(&self, digest: &DigestFile) -> Result<(), SinkError> {
        let key = self.layout.digest_key(&digest.name);
        // Kept as long as the newest data it vouches for, counted from its period's end.
        let end = serde_json::from_str::<serde_json::Value>(&digest.body)
            .ok()
            .and_then(|v| v.get("period_end")?.as_str().map(str::to_string))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_micros());
        self.put_create_only(
            &key,
            bytes::Bytes::from(digest.body.clone()),
            "application/json",
            end,
        )
        .await
    }
}

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
    /// The sink's key prefix template (digests go under its fixed start).
    pub(crate) prefix: Template,
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
        let prefix = crate::config::parse_prefix(&config.key_prefix).map_err(SinkError::Config)?;
        Ok(S3Manifests {
            client,
            config,
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            prefix,
        })
    }
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

    async fn publish_digest(&self, digest: &DigestFile) -> Result<(), SinkError> {
        let c = &self.config;
        let key = digest_key(&self.prefix, &digest.name);
        let (sse, lock) = c.protection();
        let body = bytes::Bytes::from(digest.body.clone());
        let put = self
            .client
            .put_object()
            .bucket(&c.bucket)
            .key(&key)
            // Create-only: a digest is never replaced, not even by a buggy or second writer.
            .if_none_match("*")
            .content_type("application/json")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(sha256_b64(&body))
            .body(ByteStream::from(body))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(c.kms_key_id.clone())
            .set_object_lock_mode(lock)
            .set_object_lock_retain_until_date(c.retain_until())
            .send()
            .await;
        let err = match put {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let status = err.raw_response().map(|r| r.status().as_u16());
        // 412: there is one already (409: a concurrent write of it). The same bytes are this
        // digest published before a crash; other bytes are not ours to replace.
        if matches!(status, Some(412) | Some(409)) {
            let there = self.client.get_object().bucket(&c.bucket).key(&key).send().await;
            if let Ok(out) = there {
                if let Ok(bytes) = out.body.collect().await {
                    if bytes.into_bytes() == digest.body.as_bytes() {
                        return Ok(());
                    }
                    return Err(SinkError::Remote {
                        message: format!(
                            "sinks.{}: digest object {key} in bucket {:?} already exists with other content; a digest is never replaced (if another pipeline writes this prefix, give each its own)",
                            self.sink, c.bucket
                        ),
                        retryable: false,
                    });
                }
            }
        }
        Err(SinkError::Remote {
            message: format!(
                "sinks.{}: writing digest object {key} to bucket {:?}: {}",
                self.sink,
                c.bucket,
                DisplayErrorContext(&err)
            ),
            retryable: true,
        })
    }
}

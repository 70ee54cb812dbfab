//! The S3 sink's manifest entries: one object per entry beside its unit, written create-only
//! in spirit (the same entry writes the same object).

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

/// Writes an S3 sink's manifest entries, one object per entry (S3 cannot append); putting the
/// same entry again writes the same object, so publishing is idempotent.
pub struct S3Manifests {
    pub(crate) client: aws_sdk_s3::Client,
    pub(crate) config: S3SinkConfig,
    pub(crate) pipeline: String,
    pub(crate) sink: String,
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

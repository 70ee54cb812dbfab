//! Uploading an object: create-only puts and multipart uploads, retried while retrying can
//! help, and the S3 errors sorted into those that pass and those that need a human.

use super::sink::*;
use super::*;

impl S3Sink {
    /// Upload `body` (whose SHA-256 is `sha256`, whose newest event is at `newest_us`) under
    /// `key`, retrying what can pass.
    pub(crate) async fn upload_until_done(
        &self,
        key: &str,
        body: bytes::Bytes,
        sha256: &[u8; 32],
        newest_us: Option<i64>,
    ) -> Result<(), SinkError> {
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256);
        let mut delay = Duration::from_millis(200);
        let mut warned: Option<Instant> = None;
        let mut failures = 0u32;
        loop {
            match self.upload(key, &body, &checksum, newest_us).await {
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
                // `upload` settles whether the object there is this one.
                Err(Failure::Exists) => {
                    return Err(SinkError::Remote {
                        message: format!(
                            "{}: object {key} is already in bucket {:?}",
                            self.name(),
                            self.config.bucket
                        ),
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

    /// Upload `body` under `key`, create-only (`If-None-Match: *`): an object already there
    /// with the same bytes is this upload's earlier attempt (its answer lost); with other
    /// bytes it is an error that stops the sink, and the object stays as it is.
    pub(crate) async fn upload(
        &self,
        key: &str,
        body: &bytes::Bytes,
        checksum: &str,
        newest_us: Option<i64>,
    ) -> Result<(), Failure> {
        match self.upload_once(key, body, checksum, newest_us).await {
            Err(Failure::Exists) => {
                let client = self.client().map_err(|e| Failure::Stop(e.to_string()))?;
                match crate::manifests::same_object(client, &self.config.bucket, key, body).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Failure::Stop(format!(
                        "{}: object {key} in bucket {:?} already exists with other content; auditship never replaces an object (does another pipeline write this prefix?)",
                        self.name(),
                        self.config.bucket
                    ))),
                    Err(e) => Err(Failure::Retry(format!("{}: reading back {key}: {e}", self.name()))),
                }
            }
            other => other,
        }
    }

    async fn upload_once(
        &self,
        key: &str,
        body: &bytes::Bytes,
        checksum: &str,
        newest_us: Option<i64>,
    ) -> Result<(), Failure> {
        let client = self.client().map_err(|e| Failure::Stop(e.to_string()))?;
        let c = &self.config;
        let (sse, lock) = c.protection();
        let retain = c.retain_until(newest_us);
        if (body.len() as u64) <= c.multipart_threshold_bytes {
            client
                .put_object()
                .bucket(&c.bucket)
                .key(key)
                .if_none_match("*")
                .body(ByteStream::from(body.clone()))
                .content_type(self.layout.content_type())
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(checksum)
                .set_server_side_encryption(sse)
                .set_ssekms_key_id(c.kms_key_id.clone())
                .set_object_lock_mode(lock)
                .set_object_lock_retain_until_date(retain)
                .set_object_lock_legal_hold_status(c.legal_hold())
                .send()
                .await
                .map_err(|e| self.classify_put(e))?;
            return Ok(());
        }
        let created = client
            .create_multipart_upload()
            .bucket(&c.bucket)
            .key(key)
            .content_type(self.layout.content_type())
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(c.kms_key_id.clone())
            .set_object_lock_mode(lock)
            .set_object_lock_retain_until_date(retain)
            .set_object_lock_legal_hold_status(c.legal_hold())
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
                .if_none_match("*")
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| self.classify_put(e))?;
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

    /// [`S3Sink::classify`] for a create-only write: an object already there is
    /// [`Failure::Exists`].
    fn classify_put<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Failure {
        if crate::manifests::precondition_failed(&e) {
            return Failure::Exists;
        }
        self.classify(e)
    }

    /// Sort an SDK error into retry or stop, with a message that names the bucket and the fix.
    pub(crate) fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R>(
        &self,
        e: SdkError<E, R>,
    ) -> Failure
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

    pub(crate) fn remote<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
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
            Failure::Exists => SinkError::Remote {
                message: format!("{what}: an object is already there"),
                retryable: false,
            },
        }
    }
}

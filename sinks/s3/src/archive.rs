//! Reading an S3 sink's archive back: [`S3Archive`] lists and opens the objects under a prefix
//! for `auditship verify`, as the contract's [`Archive`]; the sink's own recovery reads object
//! bodies through [`lines`].

use std::io::Read;

use auditship_sink::{Archive, UnitCompression};
use aws_sdk_s3::error::DisplayErrorContext;

/// An archive under an S3 prefix. Its calls block: use it from a blocking thread of a Tokio
/// runtime (as `verify` runs).
pub struct S3Archive {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    runtime: tokio::runtime::Handle,
}

impl S3Archive {
    /// The archive under `prefix` of `bucket` (a prefix is a directory: a `/` is added when
    /// missing). `runtime` runs the requests.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let mut prefix = prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        S3Archive {
            client,
            bucket: bucket.to_string(),
            prefix,
            runtime,
        }
    }

    /// The prefix, with its final `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Archive for S3Archive {
    fn list(&self) -> std::io::Result<Vec<(String, u64)>> {
        let objects = self
            .runtime
            .block_on(list_objects(&self.client, &self.bucket, &self.prefix))
            .map_err(std::io::Error::other)?;
        let mut listed: Vec<(String, u64)> = objects
            .into_iter()
            .filter_map(|(key, size)| Some((key.strip_prefix(&self.prefix)?.to_string(), size)))
            .collect();
        listed.sort();
        Ok(listed)
    }

    fn open(&self, rel: &str) -> std::io::Result<Box<dyn Read + '_>> {
        let key = format!("{}{rel}", self.prefix);
        let body = self
            .runtime
            .block_on(get_object(&self.client, &self.bucket, &key))
            .map_err(std::io::Error::other)?;
        Ok(Box::new(std::io::Cursor::new(body)))
    }

    fn root(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// `GetObjectAttributes`: the stored `ChecksumSHA256` when it covers the whole object
    /// (`FULL_OBJECT`, or no type and no parts); a multipart object's is a checksum of its
    /// parts' checksums, which says nothing of the whole body's SHA-256.
    fn stored_sha256(&self, rel: &str) -> std::io::Result<Option<[u8; 32]>> {
        use aws_sdk_s3::types::{ChecksumType, ObjectAttributes};
        use base64::Engine as _;
        let key = format!("{}{rel}", self.prefix);
        let got = self
            .runtime
            .block_on(
                self.client
                    .get_object_attributes()
                    .bucket(&self.bucket)
                    .key(&key)
                    .object_attributes(ObjectAttributes::Checksum)
                    .object_attributes(ObjectAttributes::ObjectParts)
                    .send(),
            )
            .map_err(|e| std::io::Error::other(format!("attributes of {key}: {}", DisplayErrorContext(e))))?;
        let Some(checksum) = got.checksum() else {
            return Ok(None);
        };
        let whole = match checksum.checksum_type() {
            Some(ChecksumType::FullObject) => true,
            Some(_) => false,
            None => {
                got.object_parts()
                    .and_then(|p| p.total_parts_count())
                    .unwrap_or(0)
                    <= 1
            }
        };
        let Some(b64) = checksum.checksum_sha256().filter(|_| whole) else {
            return Ok(None);
        };
        // A composite checksum reads `…-N`; only a plain one is the body's SHA-256.
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok();
        Ok(bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()))
    }
}

/// The NDJSON lines of an object body, decoded by its key's extension (the contract's
/// [`UnitCompression::from_extension`]; any other key is read as plain text).
pub fn lines(key: &str, body: &[u8]) -> Result<Vec<String>, String> {
    let compression = UnitCompression::from_extension(key).unwrap_or(UnitCompression::None);
    let mut text = Vec::new();
    compression
        .decoder(body)
        .and_then(|mut d| d.read_to_end(&mut text))
        .map_err(|e| format!("{key}: not {}: {e}", compression.as_str()))?;
    let text = String::from_utf8(text).map_err(|e| format!("{key}: not UTF-8: {e}"))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Every object under `prefix` in `bucket` (all pages): key and size.
pub async fn list_objects(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| format!("listing s3://{bucket}/{prefix}: {}", DisplayErrorContext(e)))?;
        for o in page.contents() {
            if let Some(key) = o.key() {
                out.push((key.to_string(), o.size().unwrap_or(0).max(0) as u64));
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// One object's body.
pub async fn get_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<bytes::Bytes, String> {
    let got = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("reading s3://{bucket}/{key}: {}", DisplayErrorContext(e)))?;
    got.body
        .collect()
        .await
        .map(|b| b.into_bytes())
        .map_err(|e| format!("reading s3://{bucket}/{key}: {e}"))
}

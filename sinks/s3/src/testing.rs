//! A throwaway S3-compatible server (`moto_server`) and a client for it, for tests and benchmarks.
//!
//! The binary is found through `AUDITSHIP_MOTO`, else in the cache that
//! `./scripts/services install` fills; when there is none the error says how to get it.

use auditship_sink::testing::{free_port, service_binary, wait_listening};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The moto version the tests are written against.
pub const MOTO_VERSION: &str = "5.2.5";

/// Credentials moto accepts; tests put them in the environment, as the AWS chain reads them.
pub const TEST_ACCESS_KEY: &str = "testing";

/// A running `moto_server`, killed on drop.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
}

/// Where `./scripts/services install` puts the test services.
pub fn cache_dir() -> PathBuf {
    auditship_sink::testing::service_cache_dir()
}

/// Find `moto_server`, or say how to install it.
pub fn moto_binary() -> Result<PathBuf, String> {
    let cached = cache_dir()
        .join(format!("moto-{MOTO_VERSION}"))
        .join("bin")
        .join("moto_server");
    if let Some(p) = service_binary("AUDITSHIP_MOTO", &cached)? {
        return Ok(p);
    }
    Err(format!(
        "no S3 test server found (looked at $AUDITSHIP_MOTO and {}): run `./scripts/services install` \
         (it installs moto[server] {MOTO_VERSION} in a virtualenv there), then run the tests again",
        cached.display()
    ))
}

/// Put test credentials and a region in this process's environment (the AWS chain reads them).
pub fn test_credentials_env() {
    std::env::set_var("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", TEST_ACCESS_KEY);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::remove_var("AWS_PROFILE");
}

impl S3Server {
    /// Start a server on a free loopback port and wait until it answers.
    pub fn start() -> Result<S3Server, String> {
        let port = free_port()?;
        let mut s = S3Server {
            child: None,
            port,
            bin: moto_binary()?,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        wait_listening(self.port, "moto_server", Duration::from_secs(30))?;
        // Listening is not answering: wait until the port speaks S3 (it is moto, and moto is
        // ready), so a test never mistakes a warming server for a failing one.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if answers_s3(self.port) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "moto_server on port {} listens but does not answer S3 requests",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop the server (SIGSTOP: it stays alive with its data but answers nothing).
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-STOP", &c.id().to_string()]).status();
        }
    }

    /// Let a paused server answer again.
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client for `endpoint` with path-style addressing and the test credentials.
pub async fn client(endpoint: &str) -> aws_sdk_s3::Client {
    test_credentials_env();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Create `bucket`, with Object Lock (and so versioning) when `object_lock`.
pub async fn create_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    object_lock: bool,
) -> Result<(), String> {
    client
        .create_bucket()
        .bucket(bucket)
        .object_lock_enabled_for_bucket(object_lock)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "create bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })
}

/// One object read back.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its key.
    pub key: String,
    /// The body as stored.
    pub body: Vec<u8>,
    /// The SHA-256 checksum the server holds (base64), when there is one.
    pub checksum_sha256: Option<String>,
    /// Object Lock mode, when set.
    pub lock_mode: Option<String>,
    /// Object Lock retain-until date, when set.
    pub retain_until: Option<String>,
    /// Server-side encryption, when set.
    pub sse: Option<String>,
    /// The Object Lock legal hold status (`ON`, `OFF`), when set.
    pub legal_hold: Option<String>,
}

/// Every current data object of `bucket` (all pages), with body and attributes; manifest and
/// digest objects (under `auditship.manifest/`, `auditship.digest/`) are left out.
pub async fn read_all(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<Object>, String> {
    let all = read_all_objects(client, bucket).await?;
    Ok(all
        .into_iter()
        .filter(|o| {
            !o.key
                .split('/')
                .any(|c| c == auditship_sink::MANIFEST_NAME || c == auditship_sink::DIGEST_DIR)
        })
        .collect())
}

/// Every current object of `bucket` (all pages), manifests included.
pub async fn read_all_objects(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    for (key, _) in crate::list_objects(client, bucket, "").await? {
        let got = client
            .get_object()
            .bucket(bucket)
            .key(&key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| format!("get {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        let checksum_sha256 = got.checksum_sha256().map(str::to_string);
        let lock_mode = got.object_lock_mode().map(|m| m.as_str().to_string());
        let retain_until = got.object_lock_retain_until_date().map(|d| d.to_string());
        let sse = got.server_side_encryption().map(|s| s.as_str().to_string());
        let legal_hold = got
            .object_lock_legal_hold_status()
            .map(|s| s.as_str().to_string());
        let body = got
            .body
            .collect()
            .await
            .map_err(|e| format!("read {key}: {e}"))?
            .into_bytes()
            .to_vec();
        out.push(Object {
            key,
            body,
            checksum_sha256,
            lock_mode,
            retain_until,
            sse,
            legal_hold,
        });
    }
    Ok(out)
}

pub use crate::archive::lines;

/// Whether a plain `GET /` on `port` gets an S3 bucket listing back.
fn answers_s3(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.contains("ListAllMyBucketsResult")
}

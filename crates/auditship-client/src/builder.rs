//! [`ClientBuilder`]: every setting of a [`Client`](crate::Client), with its default.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::client::{Client, Inner};
use crate::observe::{self, Observer};
use crate::secret::ApiKey;
use crate::{
    install_crypto_provider, Error, RateLimiter, RetryPolicy, TlsOptions, DEFAULT_BASE_URL,
    MAX_CONCURRENT_HANDSHAKES,
};

/// Builds a [`Client`]. Every setting but the key has a default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let sim = auditship_sim::Simulator::start(Default::default()).await?;
/// use std::time::Duration;
/// use auditship_client::{Client, Error, RetryPolicy};
/// use auditship_client::secret::ApiKey;
///
/// let client = Client::builder()
///     .base_url(sim.base_url())
///     .api_key(ApiKey::new(sim.api_key()))
///     .tenant("tn_demo")                              // X-MIOSA-Tenant
///     .requests_per_minute(60)                        // shared by every client of this key
///     .timeout(Duration::from_secs(30))               // one request
///     .connect_timeout(Duration::from_secs(5))        // connect and socket handshake
///     .retry(RetryPolicy { max_attempts: Some(3), ..RetryPolicy::default() })
///     .user_agent("my-tool/1.0")
///     .build()?;
/// # let _ = client;
///
/// // Without a key, building fails and says how to give one.
/// let err = Client::builder().base_url(sim.base_url()).build().unwrap_err();
/// assert!(matches!(err, Error::Config(_)));
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ClientBuilder {
    base_url: Option<String>,
    api_key: Option<ApiKey>,
    tenant: Option<String>,
    requests_per_minute: Option<u32>,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    user_agent: Option<String>,
    tls: TlsOptions,
    allow_insecure_http: bool,
    max_response_bytes: Option<usize>,
    observer: observe::SharedObserver,
}

/// Whether `url`'s host is this machine (`localhost`, `127.0.0.0/8`, `::1`): the one place an
/// `http://` base URL keeps the key off the network.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl ClientBuilder {
    /// The API base URL, e.g. `https://api.miosa.ai/api/v1` (the default).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The API key.
    pub fn api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Read the API key from an environment variable.
    ///
    /// ```
    /// use auditship_client::Client;
    ///
    /// let missing = Client::builder().api_key_from_env("AUDITSHIP_DOC_UNSET_VARIABLE");
    /// assert!(missing.unwrap_err().to_string().contains("AUDITSHIP_DOC_UNSET_VARIABLE is not set"));
    /// ```
    pub fn api_key_from_env(mut self, var: &str) -> Result<Self, Error> {
        let key = std::env::var(var).map_err(|_| {
            Error::Config(format!(
                "environment variable {var} is not set; export your Miosa API key in it"
            ))
        })?;
        self.api_key = Some(ApiKey::new(key));
        Ok(self)
    }

    /// Send `X-MIOSA-Tenant` with every request.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The key's request budget per minute, shared by every client in this process that uses the
    /// same key. Default: 600.
    pub fn requests_per_minute(mut self, rpm: u32) -> Self {
        self.requests_per_minute = Some(rpm);
        self
    }

    /// Timeout of one HTTP request. Default: 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Timeout of a connection or socket handshake. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How `list` and `get` retry. The `tail` stream always retries forever.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(ua.into());
        self
    }

    /// Trust the CA certificates of this PEM file besides the public web roots (a private CA,
    /// or a TLS-inspecting proxy's).
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Accept any TLS certificate (a test server's). Anyone between the client and the API can
    /// then read the key: never for a real API.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.tls.insecure_skip_verify = accept;
        self
    }

    /// The largest REST response body read; a larger one is [`Error::TooLarge`], not retried.
    /// Default [`DEFAULT_MAX_RESPONSE_BYTES`](crate::DEFAULT_MAX_RESPONSE_BYTES) (16 MiB).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = Some(bytes);
        self
    }

    /// Accept an `http://` base URL to a host that is not loopback. The key then crosses the
    /// network in cleartext (the `Authorization` header, the socket's `?token=`): only for a
    /// network where nobody can listen. Default: refused, with an error saying so.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Report requests, retries, socket frames and tail transports to `observer` (see
    /// [`Observer`]). Default: [`NoObserver`](crate::NoObserver), which reports nothing.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observe::SharedObserver(observer);
        self
    }

    /// Build the client.
    pub fn build(self) -> Result<Client, Error> {
        install_crypto_provider();
        let base_text = self.base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let base = Url::parse(&base_text)
            .map_err(|e| Error::Config(format!("base_url {base_text:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "base_url must start with http:// or https://, got {}://",
                base.scheme()
            )));
        }
        if base.scheme() == "http" && !is_loopback(&base) && !self.allow_insecure_http {
            return Err(Error::Config(format!(
                "base_url {base} is http:// to another machine: the API key would cross the network in cleartext; use https://, or allow it for a trusted network (allow_insecure_http)"
            )));
        }
        let key = self.api_key.filter(|k| !k.is_empty()).ok_or_else(|| {
            Error::Config("no API key; set api_key (e.g. \"${MIOSA_API_KEY}\") or api_key_file".into())
        })?;
        let timeout = self.timeout.unwrap_or(Duration::from_secs(30));
        let connect_timeout = self.connect_timeout.unwrap_or(Duration::from_secs(5));
        let tls = self.tls.build()?;
        let mut http = reqwest::Client::builder();
        for ca in &tls.extra_roots {
            let cert = reqwest::Certificate::from_der(ca)
                .map_err(|e| Error::Config(format!("tls_ca_file: a certificate is not usable: {e}")))?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .danger_accept_invalid_certs(self.tls.insecure_skip_verify)
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .user_agent(
                self.user_agent
                    .unwrap_or_else(|| concat!("auditship/", env!("CARGO_PKG_VERSION")).to_string()),
            )
            // Requests are paced by the rate limiter; a few idle connections serve them all.
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        let limiter = RateLimiter::shared(&key, self.requests_per_minute.unwrap_or(600));
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                key,
                tenant: self.tenant,
                limiter,
                retry: self.retry.unwrap_or_default(),
                connect_timeout,
                socket_tls: tls.socket,
                handshakes: tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES),
                observer: self.observer,
                max_response_bytes: self
                    .max_response_bytes
                    .unwrap_or(crate::DEFAULT_MAX_RESPONSE_BYTES),
            }),
        })
    }
}

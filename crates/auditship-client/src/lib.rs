//! The Miosa egress-audit client: `list`, `get` and `tail` (a [`Stream`]),
//! in the shape of the official SDK's `Miosa.Sandboxes.Audit`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), auditship_client::Error> {
//! use auditship_client::{Client, Filters, TailOptions};
//! use futures_util::StreamExt;
//!
//! let client = Client::builder()
//!     .base_url("https://api.miosa.ai/api/v1")
//!     .api_key_from_env("MIOSA_API_KEY")?
//!     .build()?;
//! let audit = client.sandbox("sb-123").audit();
//! let rejected = audit.list(&Filters { action: Some("reject".into()), ..Default::default() }).await?;
//! let first = audit.get(rejected[0].id()).await?;
//! let mut stream = audit.tail(TailOptions::default()); // from now on (StartAt::Earliest: history first)
//! while let Some(event) = stream.next().await {
//!     println!("{}", event?.json());
//! }
//! # Ok(()) }
//! ```
//!
//! Everything the contract allows is accepted: every list shape, enveloped and binary frames,
//! `next_cursor` when present and `since`-paging with de-duplication at the boundary timestamp
//! when not. Requests share one rate limiter per API key, retry 429/5xx with jittered exponential
//! backoff honouring `Retry-After`, and log the `X-Request-ID` of failures.

mod error;
mod event;
mod observe;
mod org;
mod ratelimit;
mod scan;
pub mod secret;
mod tail;
mod tls;
mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use url::Url;

use secret::ApiKey;

pub use error::Error;
pub use event::LIST_ELEMENT;
pub use event::{format_time, parse_time, AuditEvent, AuditFields, CursorText, Page};
pub use observe::{NoObserver, Observer};
pub use org::{OrgPoller, SocketGate};
pub use ratelimit::RateLimiter;
pub use tail::{ActiveTransport, Position, StartAt, Tail, TailOptions, TailStatus, Transport};
pub use tls::TlsOptions;

/// The default API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.miosa.ai/api/v1";

/// Socket handshakes one client runs at once.
const MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// The socket subprotocol the server must select.
pub const SUBPROTOCOL: &str = "miosa-egress-audit-v1";

/// Filters of the list endpoint. All optional; `None` leaves a parameter out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Events of one resource (set for you by [`SandboxAudit`]).
    pub resource_id: Option<String>,
    /// `sandbox` (set for you by [`SandboxAudit`]).
    pub resource_type: Option<String>,
    /// Destination host.
    pub host: Option<String>,
    /// `allow`, `reject`, `stub`, `error`, `client_cancel`…
    pub action: Option<String>,
    /// Inclusive lower bound: an RFC 3339 time (or a relative string like `24h`, passed through).
    pub since: Option<String>,
    /// Upper bound, RFC 3339, inclusive: an event whose cursor time is exactly `until` is in the
    /// window. (The API's docs do not say; the bundled simulator and the shipper's backfill
    /// windows treat it so, and the client passes the bound through for the server to apply.)
    pub until: Option<String>,
    /// Page size (the API's maximum is 100). `None` sends none: the server's default (20 in
    /// the API reference) applies to [`SandboxAudit::list`]; `list_all`, `list_from` and tails
    /// ask for 100.
    pub limit: Option<u32>,
    /// A `next_cursor` from an earlier page.
    pub cursor: Option<String>,
    /// Caller-supplied user id.
    pub external_user_id: Option<String>,
    /// Caller-supplied workspace id.
    pub external_workspace_id: Option<String>,
}

impl Filters {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let fields: [(&'static str, &Option<String>); 9] = [
            ("resource_id", &self.resource_id),
            ("resource_type", &self.resource_type),
            ("host", &self.host),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
            ("cursor", &self.cursor),
            ("external_user_id", &self.external_user_id),
            ("external_workspace_id", &self.external_workspace_id),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        if let Some(limit) = self.limit {
            q.push(("limit", limit.to_string()));
        }
        q
    }
}

/// How the client retries a retryable failure (429, 5xx, a broken connection).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all; `None` retries forever (the shipper's source does).
    pub max_attempts: Option<u32>,
    /// The first backoff.
    pub initial: Duration,
    /// The longest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// Six attempts, the backoff from 250 ms doubling (capped at 30 s): five waits of 4–8 s in
    /// all before giving up.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: Some(6),
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// Jittered exponential backoff: each delay is a random point in the upper half of the current
/// step, so many sandboxes retrying together spread out instead of stampeding.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            step: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.step.min(20))
            .min(self.max);
        self.step = self.step.saturating_add(1);
        let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
        base.mul_f64(jitter)
    }

    /// Start again from the initial delay.
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// A sandbox in the sandbox list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Its id (what events carry as `resource_id`).
    pub id: String,
    /// `creating`, `running`, `stopped`…, when the server says.
    pub status: Option<String>,
}

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
    observer: observe::SharedObserver,
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

    /// Report requests, retries, socket frames and tail transports to `observer` (see
    /// [`Observer`]). Default: [`NoObserver`], which reports nothing.
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
            }),
        })
    }
}

/// A Miosa API client. Cheap to clone; clones share the connection pool and rate limiter.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Url,
    key: ApiKey,
    tenant: Option<String>,
    limiter: Arc<RateLimiter>,
    retry: RetryPolicy,
    connect_timeout: Duration,
    /// The socket's TLS configuration (see [`tls::TlsOptions`]).
    socket_tls: Arc<rustls::ClientConfig>,
    /// Socket handshakes in progress at once, per client.
    handshakes: tokio::sync::Semaphore,
    /// Told of responses, retries, frames and transports.
    observer: observe::SharedObserver,
}

/// A sandbox: anything that names one (`&str`, `String`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sandbox {
    /// The sandbox id (`resource_id` of its events).
    pub id: String,
}

impl From<&str> for Sandbox {
    fn from(id: &str) -> Self {
        Sandbox { id: id.to_string() }
    }
}

impl From<String> for Sandbox {
    fn from(id: String) -> Self {
        Sandbox { id }
    }
}

impl From<&String> for Sandbox {
    fn from(id: &String) -> Self {
        Sandbox { id: id.clone() }
    }
}

impl Client {
    /// Start building a client.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let sim = auditship_sim::Simulator::start(Default::default()).await?;
    /// use std::time::Duration;
    /// use auditship_client::Client;
    /// use auditship_client::secret::ApiKey;
    ///
    /// let client = Client::builder()
    ///     .base_url(sim.base_url()) // default: https://api.miosa.ai/api/v1
    ///     .api_key(ApiKey::new(sim.api_key()))
    ///     .requests_per_minute(120)
    ///     .timeout(Duration::from_secs(10))
    ///     .build()?;
    /// assert_eq!(client.base_url().as_str(), sim.base_url());
    /// # Ok(()) }
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The org-wide audit view (the seed's `Miosa.Audit`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::Filters;
    ///
    /// // Every sandbox's events, one page.
    /// let page = client.audit().list(&Filters { limit: Some(50), ..Default::default() }).await?;
    /// assert_eq!(page.len(), 50);
    /// # Ok(()) }
    /// ```
    pub fn audit(&self) -> OrgAudit {
        OrgAudit { client: self.clone() }
    }

    /// One sandbox: by id (`&str`, `String`) or a [`Sandbox`] value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::Sandbox;
    ///
    /// let by_id = client.sandbox("sb-123").audit();
    /// let by_value = client.sandbox(Sandbox { id: "sb-123".into() }).audit();
    /// assert_eq!(by_id.resource_id(), by_value.resource_id());
    /// # Ok(()) }
    /// ```
    pub fn sandbox(&self, sandbox: impl Into<Sandbox>) -> SandboxHandle {
        SandboxHandle {
            client: self.clone(),
            sandbox: sandbox.into(),
        }
    }

    /// The base URL, for logs (never carries the key).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The key this client sends, for redacting text that might hold it.
    pub fn key(&self) -> &ApiKey {
        &self.inner.key
    }

    fn endpoint(&self) -> String {
        let b = &self.inner.base;
        match b.port() {
            Some(p) => format!("{}://{}:{p}", b.scheme(), b.host_str().unwrap_or("")),
            None => format!("{}://{}", b.scheme(), b.host_str().unwrap_or("")),
        }
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.inner.base.clone();
        let joined = format!("{}{}", self.inner.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    /// One GET, no retry. `what` names the resource for 404 messages.
    async fn get_once(&self, path: &str, query: &[(&str, String)], what: &str) -> Result<Bytes, Error> {
        self.inner.limiter.acquire().await;
        let url = self.url(path, query);
        let mut req = self
            .inner
            .http
            .get(url)
            .bearer_auth(self.inner.key.expose())
            .header("accept", "application/json");
        if let Some(t) = &self.inner.tenant {
            req = req.header("x-miosa-tenant", t);
        }
        let resp = req.send().await.map_err(|e| {
            self.inner.observer.api_response(0);
            self.transport(&e)
        })?;
        let status = resp.status().as_u16();
        self.inner.observer.api_response(status);
        let request_id = request_id(resp.headers());
        let header_retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)));
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let (message, body_retry) = error_body(&body);
        // A server's message goes into logs: one line, bounded, and without the key.
        let mut message: String = self
            .inner
            .key
            .redact(&message)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if message.len() > 512 {
            let mut cut = 512;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Err(status_error(
            status,
            message,
            header_retry.or(body_retry),
            request_id,
            what,
        ))
    }

    fn transport(&self, e: &reqwest::Error) -> Error {
        // reqwest's messages name the URL; ours never carry the key, but redact anyway.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error::transport(self.endpoint(), self.inner.key.redact(&message))
    }

    /// GET with the retry policy: retryable failures wait (at least the server's `Retry-After`)
    /// and try again; warnings are logged on the first failure and then every 30 s, not per try.
    pub(crate) async fn get_retrying(
        &self,
        path: &str,
        query: &[(&str, String)],
        what: &str,
        policy: &RetryPolicy,
    ) -> Result<Bytes, Error> {
        let mut backoff = Backoff::new(policy.initial, policy.max);
        let mut attempt: u32 = 0;
        let mut last_warn: Option<Instant> = None;
        loop {
            attempt += 1;
            match self.get_once(path, query, what).await {
                Ok(body) => {
                    if attempt > 1 {
                        tracing::info!(
                            what,
                            attempts = attempt,
                            "Miosa API request succeeded after retrying"
                        );
                    }
                    return Ok(body);
                }
                Err(e) if e.is_retryable() && policy.max_attempts.is_none_or(|m| attempt < m) => {
                    let delay = backoff.next_delay().max(e.retry_after().unwrap_or_default());
                    self.inner.observer.api_retry();
                    if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        tracing::warn!(what, attempt, retry_in_ms = delay.as_millis() as u64, request_id = e.request_id(), error = %e, "Miosa API request failed; retrying");
                        last_warn = Some(Instant::now());
                    } else {
                        tracing::debug!(what, attempt, error = %e, "Miosa API request failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    if e.request_id().is_some() {
                        tracing::debug!(what, request_id = e.request_id(), error = %e, "Miosa API request failed");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One page of the list endpoint with these exact filters.
    pub async fn list_page(&self, filters: &Filters) -> Result<Page, Error> {
        self.list_page_with(filters, &self.inner.retry).await
    }

    pub(crate) async fn list_page_with(
        &self,
        filters: &Filters,
        policy: &RetryPolicy,
    ) -> Result<Page, Error> {
        let what = match &filters.resource_id {
            Some(id) => format!("audit events of {id}"),
            None => "audit events".to_string(),
        };
        let body = self
            .get_retrying("/egress/audit", &filters.query(), &what, policy)
            .await?;
        event::decode_page(body)
    }

    /// Fetch one event by id.
    pub async fn get_event(&self, event_id: &str) -> Result<AuditEvent, Error> {
        let path = format!("/egress/audit/{}", encode_segment(event_id));
        let body = self
            .get_retrying(&path, &[], &format!("audit event {event_id}"), &self.inner.retry)
            .await?;
        event::decode_single(body)
    }

    /// Every sandbox the key can see: `GET {base}/sandboxes`, or, where a server has no such
    /// route (404), `GET {base}/computers?template_type=miosa-sandbox`. Accepts a bare array or
    /// one under `data`, `sandboxes`, `computers` or `items`, each element an object with `id`;
    /// follows `next_cursor`, or `page`/`page_size`/`total`. Computers of another
    /// `template_type` are left out.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// let ids: Vec<String> = client.sandboxes().await?.into_iter().map(|s| s.id).collect();
    /// assert_eq!(ids, ["sb-123", "sb-456"]);
    /// # Ok(()) }
    /// ```
    pub async fn sandboxes(&self) -> Result<Vec<SandboxInfo>, Error> {
        match self.sandboxes_at("/sandboxes", &[]).await {
            Err(Error::NotFound { .. }) => {
                self.sandboxes_at("/computers", &[("template_type", "miosa-sandbox".to_string())])
                    .await
            }
            other => other,
        }
    }

    async fn sandboxes_at(
        &self,
        path: &str,
        base_query: &[(&str, String)],
    ) -> Result<Vec<SandboxInfo>, Error> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        let mut page: u64 = 1;
        for _ in 0..10_000 {
            let mut query: Vec<(&str, String)> = base_query.to_vec();
            query.push(("limit", "100".into()));
            match &cursor {
                Some(c) => query.push(("cursor", c.clone())),
                None if page > 1 => query.push(("page", page.to_string())),
                None => {}
            }
            let body = self
                .get_retrying(path, &query, "the sandbox list", &self.inner.retry)
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::Decode {
                what: "sandbox list".into(),
                message: e.to_string(),
                raw: Some(body.clone()),
            })?;
            let items = match &v {
                serde_json::Value::Array(a) => a.clone(),
                serde_json::Value::Object(m) => ["data", "sandboxes", "computers", "items"]
                    .iter()
                    .find_map(|k| m.get(*k).and_then(|x| x.as_array()).cloned())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let mut added = 0;
            for item in &items {
                let Some(id) = item.get("id").and_then(|x| x.as_str()) else {
                    continue;
                };
                let template = item.get("template_type").and_then(|x| x.as_str());
                if template.is_some_and(|t| t != "miosa-sandbox") {
                    continue;
                }
                if seen.insert(id.to_string()) {
                    added += 1;
                    out.push(SandboxInfo {
                        id: id.to_string(),
                        status: item.get("status").and_then(|x| x.as_str()).map(str::to_string),
                    });
                }
            }
            let next_cursor = v.get("next_cursor").and_then(|x| x.as_str()).map(str::to_string);
            let has_more = v.get("has_more").and_then(|x| x.as_bool());
            let paged = v.get("page").and_then(|p| {
                let n = p.get("page")?.as_u64()?;
                let size = p.get("page_size")?.as_u64()?;
                let total = p.get("total")?.as_u64()?;
                Some(n * size < total)
            });
            match (next_cursor, has_more, paged) {
                (Some(c), _, _) if added > 0 || cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
                (None, Some(true), _) | (None, _, Some(true)) if added > 0 => page += 1,
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// The retry policy for `list`/`get`.
    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// Whom to tell of responses, retries, frames and transports.
    pub(crate) fn observer(&self) -> &dyn Observer {
        &*self.inner.observer
    }
}

/// rustls needs one process-wide crypto provider; install ring's once (both the HTTP client and
/// the socket use rustls). [`ClientBuilder::build`] calls it; a program that makes its own
/// rustls configurations (a test server's) calls it first.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The `X-Request-ID` of a response, worth logging with every error.
pub(crate) fn request_id(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The typed error for an HTTP status of the REST API or the socket upgrade.
pub(crate) fn status_error(
    status: u16,
    message: String,
    retry_after: Option<Duration>,
    request_id: Option<String>,
    what: &str,
) -> Error {
    match status {
        401 | 403 => Error::Unauthorized {
            status,
            message,
            request_id,
        },
        404 => Error::NotFound {
            what: what.to_string(),
            request_id,
        },
        429 => Error::RateLimited {
            retry_after,
            request_id,
        },
        500..=599 => Error::Server {
            status,
            message,
            retry_after,
            request_id,
        },
        _ => Error::Rejected {
            status,
            message,
            request_id,
        },
    }
}

/// Percent-encode one path segment (ids are opaque and may hold `/`).
pub(crate) fn encode_segment(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// Read a message and a `retry_after` out of any error body shape the API uses.
fn error_body(body: &[u8]) -> (String, Option<Duration>) {
    let text = || {
        let s = String::from_utf8_lossy(body);
        let s = s.trim();
        if s.is_empty() {
            "no message".to_string()
        } else {
            s.chars().take(200).collect()
        }
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (text(), None);
    };
    let secs = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)))
    };
    let mut retry = secs(v.get("retry_after"));
    let message = match v.get("error") {
        Some(serde_json::Value::Object(e)) => {
            retry = retry.or_else(|| secs(e.get("retry_after")));
            let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("no message");
            match e.get("code").and_then(|c| c.as_str()) {
                Some(code) => format!("{code}: {msg}"),
                None => msg.to_string(),
            }
        }
        Some(serde_json::Value::String(msg)) => match v.get("code").and_then(|c| c.as_str()) {
            Some(code) => format!("{code}: {msg}"),
            None => msg.clone(),
        },
        _ => match (v.get("message"), v.get("errors")) {
            (Some(serde_json::Value::String(m)), _) => m.clone(),
            (_, Some(serde_json::Value::Array(errs))) => errs
                .iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join("; "),
            _ => text(),
        },
    };
    (message, retry)
}

/// The org-wide audit view: events of every resource.
#[derive(Clone, Debug)]
pub struct OrgAudit {
    client: Client,
}

impl OrgAudit {
    /// One page of events matching `filters`, from every resource.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::Filters;
    ///
    /// let rejected = client.audit().list(&Filters { action: Some("reject".into()), ..Default::default() }).await?;
    /// assert!(rejected.iter().all(|e| e.fields().unwrap().action.as_deref() == Some("reject")));
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, filters: &Filters) -> Result<Vec<AuditEvent>, Error> {
        Ok(self.client.list_page(filters).await?.events)
    }

    /// Every event matching `filters` from `filters.since` on, page after page, each once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::Filters;
    /// use futures_util::StreamExt;
    ///
    /// let all: Vec<_> = client.audit().list_all(Filters::default()).collect().await;
    /// assert_eq!(all.len(), 60); // two sandboxes, thirty events each
    /// # Ok(()) }
    /// ```
    pub fn list_all(
        &self,
        filters: Filters,
    ) -> impl Stream<Item = Result<AuditEvent, Error>> + Send + 'static {
        tail::list_all(self.client.clone(), filters)
    }

    /// Fetch one event by id (the response may be bare or wrapped in `data`/`event`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::{Error, Filters};
    ///
    /// let some = client.audit().list(&Filters::default()).await?;
    /// let again = client.audit().get(some[0].id()).await?;
    /// assert_eq!(again.raw(), some[0].raw());
    /// assert!(matches!(client.audit().get("evt_nope").await, Err(Error::NotFound { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, event_id: &str) -> Result<AuditEvent, Error> {
        self.client.get_event(event_id).await
    }
}

/// A sandbox handle; [`SandboxHandle::audit`] gives its audit view.
#[derive(Clone, Debug)]
pub struct SandboxHandle {
    client: Client,
    sandbox: Sandbox,
}

impl SandboxHandle {
    /// The sandbox's audit view (the seed's `Miosa.Sandboxes.Audit`).
    pub fn audit(&self) -> SandboxAudit {
        SandboxAudit {
            client: self.client.clone(),
            resource_id: self.sandbox.id.clone(),
        }
    }
}

/// The audit view of one sandbox: `list` and `list_all` are pre-scoped to it, `tail` follows it.
#[derive(Clone, Debug)]
pub struct SandboxAudit {
    client: Client,
    resource_id: String,
}

impl SandboxAudit {
    /// The sandbox id.
    pub fn resource_id(&self) -> &str {
        &self.resource_id
    }

    fn scoped(&self, filters: &Filters) -> Filters {
        Filters {
            resource_id: Some(self.resource_id.clone()),
            resource_type: Some("sandbox".into()),
            ..filters.clone()
        }
    }

    /// One page of this sandbox's events matching `filters` (`resource_id` and
    /// `resource_type = "sandbox"` are set for you). The server applies the filters; an event
    /// the page holds that names another resource is left out, as `list_all` and tails leave it
    /// out (a server that ignored `resource_id` would otherwise mix sandboxes). The page size is
    /// `filters.limit`, else the server's default.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::Filters;
    ///
    /// let audit = client.sandbox("sb-123").audit();
    /// let page = audit.list(&Filters { limit: Some(10), ..Default::default() }).await?;
    /// assert_eq!(page.len(), 10);
    /// assert!(page.iter().all(|e| e.fields().unwrap().resource_id.as_deref() == Some("sb-123")));
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, filters: &Filters) -> Result<Vec<AuditEvent>, Error> {
        let mut events = self.client.list_page(&self.scoped(filters)).await?.events;
        events.retain(|e| tail::belongs(e, Some(&self.resource_id)));
        Ok(events)
    }

    /// Every event of this sandbox matching `filters` from `filters.since` on, each once, oldest
    /// first, following `next_cursor` when the server gives one and `since`-paging when not.
    ///
    /// An element of a page that is not an event comes as an `Err` for which
    /// [`Error::is_list_element`] holds, and the stream goes on. Any other `Err` (the API still
    /// unreachable after the client's retries, a response that is not a list page, a refused
    /// key) is the last item: the listing did not reach its end.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::Filters;
    /// use futures_util::TryStreamExt;
    ///
    /// let events: Vec<_> = client.sandbox("sb-123").audit().list_all(Filters::default()).try_collect().await?;
    /// assert_eq!(events.len(), 30);
    /// assert!(events.windows(2).all(|w| w[0].cursor_us() <= w[1].cursor_us()));
    /// # Ok(()) }
    /// ```
    pub fn list_all(
        &self,
        filters: Filters,
    ) -> impl Stream<Item = Result<AuditEvent, Error>> + Send + 'static {
        tail::list_all(self.client.clone(), self.scoped(&filters))
    }

    /// Like [`SandboxAudit::list_all`], but starting after `start`: a time, or a resume
    /// [`Position`] (the newest cursor time shipped and the ids shipped at it). Backfills resume
    /// with it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use std::sync::Arc;
    /// use auditship_client::{Filters, Position, StartAt};
    /// use futures_util::TryStreamExt;
    ///
    /// let audit = client.sandbox("sb-123").audit();
    /// let first: Vec<_> = audit.list(&Filters { limit: Some(10), ..Default::default() }).await?;
    /// let newest = first.iter().max_by_key(|e| e.cursor_us()).unwrap();
    /// let resume = StartAt::Position(Position {
    ///     cursor_us: newest.cursor_us(),
    ///     cursor_text: newest.cursor_text().map(str::to_string),
    ///     ids_at_cursor: vec![Arc::clone(newest.id_arc())],
    /// });
    /// let rest: Vec<_> = audit.list_from(Filters::default(), resume, 100).try_collect().await?;
    /// assert_eq!(rest.len(), 20);
    /// # Ok(()) }
    /// ```
    pub fn list_from(
        &self,
        filters: Filters,
        start: StartAt,
        page_limit: u32,
    ) -> impl Stream<Item = Result<AuditEvent, Error>> + Send + 'static {
        tail::list_from(self.client.clone(), self.scoped(&filters), start, page_limit)
    }

    /// Fetch one event of this sandbox by id. An event of another sandbox is
    /// [`Error::NotFound`], as it is not in this view (one that names no resource is taken at
    /// the server's word); [`OrgAudit::get`] fetches any.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use auditship_client::{Error, Filters};
    ///
    /// let audit = client.sandbox("sb-123").audit();
    /// let page = audit.list(&Filters::default()).await?;
    /// let event = audit.get(page[0].id()).await?;
    /// assert_eq!(event.id(), page[0].id());
    ///
    /// // Another sandbox's event is not in this one's view.
    /// let other = client.sandbox("sb-456").audit().list(&Filters::default()).await?;
    /// assert!(matches!(audit.get(other[0].id()).await, Err(Error::NotFound { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, event_id: &str) -> Result<AuditEvent, Error> {
        let event = self.client.get_event(event_id).await?;
        if !tail::belongs(&event, Some(&self.resource_id)) {
            return Err(Error::NotFound {
                what: format!("audit event {event_id} of sandbox {}", self.resource_id),
                request_id: None,
            });
        }
        Ok(event)
    }

    /// Follow the sandbox live: a stream that prefers the WebSocket, falls back to polling the
    /// list endpoint, reconnects after drops, catches up after every (re)connect and never yields
    /// an event twice. Dropping the stream closes the socket.
    ///
    /// Items are `Ok(event)`, or `Err(e)`: an [`Error::Decode`] for a frame that is not an
    /// event (the stream goes on), or a fatal error after which it ends.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use auditship_sim::{SimConfig, Simulator};
    /// # let sim = Simulator::start(SimConfig { sandboxes: vec!["sb-123".into(), "sb-456".into()], backlog_per_sandbox: 30, ..SimConfig::default() }).await?;
    /// # let client = auditship_client::Client::builder().base_url(sim.base_url()).api_key(auditship_client::secret::ApiKey::new(sim.api_key())).build()?;
    /// use std::time::Duration;
    /// use auditship_client::{StartAt, TailOptions};
    /// use futures_util::StreamExt;
    ///
    /// let mut tail = client.sandbox("sb-123").audit().tail(TailOptions {
    ///     start: StartAt::Earliest,
    ///     poll_interval: Duration::from_secs(2),
    ///     ..Default::default()
    /// });
    /// let mut seen = 0;
    /// while let Some(event) = tail.next().await {
    ///     println!("{}", event?.json());
    ///     seen += 1;
    ///     if seen == 30 {
    ///         break; // the backlog; a live tail would go on
    ///     }
    /// }
    /// drop(tail); // closes the socket
    /// # Ok(()) }
    /// ```
    pub fn tail(&self, options: TailOptions) -> Tail {
        Tail::start(self.client.clone(), self.resource_id.clone(), options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_shape() {
        let (m, r) = error_body(
            br#"{"error":{"code":"rate","message":"slow down","request_id":"r1","retry_after":2}}"#,
        );
        assert_eq!((m.as_str(), r), ("rate: slow down", Some(Duration::from_secs(2))));
        assert_eq!(error_body(br#"{"error":"nope","code":"c"}"#).0, "c: nope");
        assert_eq!(
            error_body(br#"{"message":"m","retry_after":"1.5"}"#),
            ("m".into(), Some(Duration::from_millis(1500)))
        );
        assert_eq!(error_body(br#"{"errors":["a","b"]}"#).0, "a; b");
        assert_eq!(error_body(b"Bad Gateway").0, "Bad Gateway");
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
    }

    #[test]
    fn filters_become_query_parameters() {
        let f = Filters {
            action: Some("reject".into()),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            f.query(),
            vec![("action", "reject".to_string()), ("limit", "5".to_string())]
        );
        assert_eq!(encode_segment("sb/gamma x"), "sb%2Fgamma%20x");
    }
}

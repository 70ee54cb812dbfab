//! The [`Client`]: the API base, the key, the connection pool and rate limiter its clones
//! share, and the requests every view makes through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use crate::http::{encode_segment, error_body, request_id, status_error};
use crate::observe::{self, Observer};
use crate::secret::ApiKey;
use crate::{
    event, AuditEvent, Backoff, ClientBuilder, Error, Filters, OrgAudit, Page, RateLimiter, RetryPolicy,
    SandboxHandle,
};

/// A sandbox in the sandbox list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Its id (what events carry as `resource_id`).
    pub id: String,
    /// `creating`, `running`, `stopped`…, when the server says.
    pub status: Option<String>,
}

/// A Miosa API client. Cheap to clone; clones share the connection pool and rate limiter.
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Url,
    pub(crate) key: ApiKey,
    pub(crate) tenant: Option<String>,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) retry: RetryPolicy,
    pub(crate) connect_timeout: Duration,
    /// The socket's TLS configuration (see [`tls::TlsOptions`]).
    pub(crate) socket_tls: Arc<rustls::ClientConfig>,
    /// Socket handshakes in progress at once, per client.
    pub(crate) handshakes: tokio::sync::Semaphore,
    /// Told of responses, retries, frames and transports.
    pub(crate) observer: observe::SharedObserver,
    /// The largest response body read.
    pub(crate) max_response_bytes: usize,
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

    /// A response's body, refused once it passes `max_response_bytes` (before reading it, when
    /// the server states its length).
    async fn read_body(&self, mut resp: reqwest::Response, path: &str) -> Result<Bytes, Error> {
        let limit = self.inner.max_response_bytes;
        let too_large = || Error::TooLarge {
            what: format!("the response to GET {path}"),
            limit_bytes: limit,
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        // Most bodies arrive as one chunk: hand it on without a copy.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(&e))? {
            total += chunk.len();
            if total > limit {
                return Err(too_large());
            }
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => chunks.concat().into(),
        })
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
        let body = self.read_body(resp, path).await?;
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

//! The audit views of the official SDKs: [`OrgAudit`] (every resource) and [`SandboxAudit`]
//! (`Miosa.Sandboxes.Audit`, one sandbox).

use futures_util::Stream;

use crate::{tail, AuditEvent, Client, Error, Filters, Sandbox, StartAt, Tail, TailOptions};

/// The org-wide audit view: events of every resource.
#[derive(Clone, Debug)]
pub struct OrgAudit {
    pub(crate) client: Client,
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
    pub(crate) client: Client,
    pub(crate) sandbox: Sandbox,
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
    pub(crate) client: Client,
    pub(crate) resource_id: String,
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
    /// [`Position`](crate::Position) (the newest cursor time shipped and the ids shipped at it). Backfills resume
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
    /// an event twice. Dropping the stream stops all of it: the socket closes and polling stops.
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

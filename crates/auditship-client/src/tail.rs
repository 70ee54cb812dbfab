//! `tail`: follow one sandbox, and `list_all`: page through a window, each event once.
//!
//! # The tail state machine
//! ```text
//! start ─▶ CatchUp ─▶ Live(socket) ─drop─▶ CatchUp ─▶ Live …
//!             │ handshake fails
//!             ▼
//!          Poll(every poll_interval) ─ after backoff ─▶ try the socket again
//! ```
//! The socket has no resume cursor, so after every (re)connect the task first catches up through
//! the list endpoint from its position, *while the open socket buffers*, then replays the buffer
//! and goes live. Listing before connecting would lose what is written between the last page and
//! the socket's first frame. The overlap is removed by id ([`Seen`]).
//!
//! The task runs beside the [`Tail`] stream and hands events over a bounded channel: a slow
//! consumer stops the task reading its socket, and TCP pushes back to the server. If the server
//! drops the slow socket, the next catch-up fetches what was missed.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::event::decode_event;
use super::ws::Message;
use super::{
    format_time, parse_time, ws, AuditEvent, Backoff, Client, CursorText, Error, Filters, RetryPolicy,
};

/// Which transport a tail may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The socket when it can be had, polling while it cannot.
    #[default]
    Auto,
    /// The socket only (retried with backoff; never polls between catch-ups).
    #[serde(rename = "websocket")]
    WebSocket,
    /// Polling only.
    Poll,
}

/// Where a tail starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// The sandbox's full history.
    Earliest,
    /// Only events from now on.
    #[default]
    Now,
    /// Events from this time on (microseconds since the Unix epoch).
    Time(i64),
    /// Resume after a checkpoint.
    Position(Position),
}

/// A resume point: the newest cursor time shipped and every id shipped at exactly that time
/// (several events can share one timestamp, and `since` is inclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Cursor time in microseconds since the Unix epoch; `None` means the beginning.
    pub cursor_us: Option<i64>,
    /// The same time as the server spelled it, when known (paging sends it back as `since`).
    pub cursor_text: Option<String>,
    /// The ids already shipped at `cursor_us`.
    pub ids_at_cursor: Vec<Arc<str>>,
}

/// Options of [`SandboxAudit::tail`](super::SandboxAudit::tail).
#[derive(Clone, Debug)]
pub struct TailOptions {
    /// Polling cadence on the fallback path. Default 2 s (the SDKs' default).
    pub poll_interval: Duration,
    /// Socket, polling, or both. Default: [`Transport::Auto`] (the socket, and polling while
    /// it cannot be had).
    pub transport: Transport,
    /// Where to begin. Default: [`StartAt::Now`], only events from now on; a tail that should
    /// yield the sandbox's history first says [`StartAt::Earliest`].
    pub start: StartAt,
    /// Page size for catch-up and polling. Default 100 (the API's maximum).
    pub page_limit: u32,
    /// How long ids are remembered for de-duplication, in cursor time. Default 5 min.
    pub dedupe_window: Duration,
    /// The longest wait between socket attempts while polling. Default 5 min.
    pub socket_retry_max: Duration,
    /// Ping after this long without a frame; drop the socket after twice this. Default 30 s.
    pub ping_after: Duration,
    /// Events handed to the consumer ahead of time. Default 256.
    pub buffer: usize,
    /// Frames the socket may buffer during a catch-up; beyond them the socket is not read
    /// until the catch-up ends (TCP holds the rest back, nothing is lost; a server that drops
    /// a slow reader just makes the tail reconnect and catch up again). Default 2,000.
    pub catch_up_buffer_frames: usize,
    /// On the polling fallback, take events from this org-wide poller (one request per interval
    /// for every tail that shares it) instead of polling the sandbox alone. Default: none.
    pub org_poller: Option<super::OrgPoller>,
    /// Share socket attempts with other tails: while sockets fail fleet-wide, one probe at a
    /// time. Default: none (every tail retries on its own backoff).
    pub socket_gate: Option<super::SocketGate>,
}

impl Default for TailOptions {
    fn default() -> Self {
        TailOptions {
            poll_interval: Duration::from_secs(2),
            transport: Transport::Auto,
            start: StartAt::Now,
            page_limit: 100,
            dedupe_window: Duration::from_secs(300),
            socket_retry_max: Duration::from_secs(300),
            ping_after: Duration::from_secs(30),
            buffer: 256,
            catch_up_buffer_frames: 2_000,
            org_poller: None,
            socket_gate: None,
        }
    }
}

/// What a tail is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveTransport {
    /// Opening the socket or catching up.
    Connecting,
    /// Live on the socket.
    WebSocket,
    /// On the polling fallback.
    Polling,
    /// Stopped (a fatal error, or the sandbox is gone).
    Stopped,
}

impl ActiveTransport {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => ActiveTransport::WebSocket,
            2 => ActiveTransport::Polling,
            3 => ActiveTransport::Stopped,
            _ => ActiveTransport::Connecting,
        }
    }
}

/// A live tail of one sandbox: a `Stream` of events, each yielded once.
///
/// Items are `Ok(event)`, or `Err(e)`: a [`Error::Decode`] for a frame that is not an event (the
/// stream goes on), or a fatal error (unauthorized, sandbox not found) after which it ends.
/// Retryable failures are retried inside, forever, and logged.
///
/// A refused socket upgrade, whatever its HTTP status (a 404 included), is a failed handshake,
/// as the contract says: the tail falls back to polling the list endpoint and tries the socket
/// again later. Whether the sandbox is gone is the list endpoint's to say.
///
/// Dropping the stream stops everything it runs: the socket is closed, polling stops, and its
/// place in a shared org-wide poll ([`OrgPoller`](super::OrgPoller)) is given up.
pub struct Tail {
    rx: mpsc::Receiver<Vec<TailItem>>,
    /// The rest of the last chunk received.
    pending: VecDeque<TailItem>,
    task: JoinHandle<()>,
    status: Arc<AtomicU8>,
}

/// What a tail yields.
type TailItem = Result<AuditEvent, Error>;

/// Most items the tail task hands over at once. Frames that are already read are passed on
/// together: one channel send and one wake-up per chunk instead of per event.
const CHUNK: usize = 64;

impl Tail {
    pub(crate) fn start(client: Client, resource_id: String, options: TailOptions) -> Tail {
        let (tx, rx) = mpsc::channel(options.buffer.div_ceil(CHUNK).max(1));
        let status = Arc::new(AtomicU8::new(0));
        // The new tail is connecting (status 0) until it reaches its socket or the fallback.
        client
            .observer()
            .tail_transport(ActiveTransport::Stopped, ActiveTransport::Connecting);
        let seen = Seen::new(&options.start, options.dedupe_window);
        let task = TailTask {
            pager_base: Filters {
                resource_id: Some(resource_id.clone()),
                resource_type: Some("sandbox".into()),
                ..Default::default()
            },
            client,
            resource_id,
            options,
            seen,
            status: status.clone(),
            tx,
            out: Vec::new(),
            warned_ties: false,
            unswept: None,
            org_rx: None,
            org_failed: false,
        };
        Tail {
            rx,
            pending: VecDeque::new(),
            task: tokio::spawn(task.run()),
            status,
        }
    }

    /// What the tail is doing now.
    pub fn transport(&self) -> ActiveTransport {
        ActiveTransport::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// A handle that reads [`Tail::transport`] without holding the tail (for a consumer that
    /// moved the stream into an adapter).
    pub fn status_handle(&self) -> TailStatus {
        TailStatus(self.status.clone())
    }
}

/// See [`Tail::status_handle`].
#[derive(Clone, Debug)]
pub struct TailStatus(Arc<AtomicU8>);

impl TailStatus {
    /// What the tail is doing now.
    pub fn get(&self) -> ActiveTransport {
        ActiveTransport::from_u8(self.0.load(Ordering::Relaxed))
    }
}

impl Stream for Tail {
    type Item = Result<AuditEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.pending = VecDeque::from(chunk),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Ids emitted recently, for removing the overlap of list pages and socket frames. Ids are
/// opaque, so they are remembered by cursor time: every id within `window` of the newest cursor
/// time seen.
pub(crate) struct Seen {
    ids: HashMap<Arc<str>, i64, foldhash::fast::RandomState>,
    /// Ids newer than every id before them, in arrival (so strictly rising cursor) order: they
    /// cannot be repeats, and a repeat of one is found by its cursor time (a binary search), so
    /// they are hashed into `ids` only once cursor times are mixed. A live socket's steady
    /// stream, and the overlaps of its catch-ups and sweep, never hash it.
    log: VecDeque<(i64, Arc<str>)>,
    /// Whether an event's cursor time was not `inserted_at`. The same event could then carry
    /// two cursor times (a frame without `inserted_at`, its list copy with it), and "newer than
    /// everything" no longer proves it new.
    mixed_cursors: bool,
    newest: Option<i64>,
    /// `newest` as the server spelled it.
    newest_text: Option<CursorText>,
    window_us: i64,
    inserts_since_prune: usize,
}

impl Seen {
    pub(crate) fn new(start: &StartAt, window: Duration) -> Self {
        let mut seen = Seen {
            ids: HashMap::default(),
            log: VecDeque::new(),
            mixed_cursors: false,
            newest: None,
            newest_text: None,
            window_us: i64::try_from(window.as_micros()).unwrap_or(i64::MAX),
            inserts_since_prune: 0,
        };
        match start {
            StartAt::Earliest => {}
            StartAt::Now => seen.newest = Some(chrono::Utc::now().timestamp_micros()),
            StartAt::Time(t) => seen.newest = Some(*t),
            StartAt::Position(p) => {
                seen.newest = p.cursor_us;
                seen.newest_text = p.cursor_text.as_deref().map(CursorText::new);
                let at = p.cursor_us.unwrap_or(i64::MIN);
                for id in &p.ids_at_cursor {
                    seen.ids.insert(id.clone(), at);
                }
            }
        }
        seen
    }

    /// The next `since`: the newest cursor time, in the server's own spelling when known (as
    /// the SDKs do: a server that compares times as text still pages correctly).
    pub(crate) fn since(&self) -> Option<String> {
        let newest = self.newest?;
        let text = self.newest_text.as_ref().map(CursorText::as_str);
        Some(text.map_or_else(|| format_time(newest), str::to_string))
    }

    /// Record `event`; `false` if it was seen already.
    pub(crate) fn insert(&mut self, event: &AuditEvent) -> bool {
        let cursor = event.cursor_us().or(self.newest).unwrap_or(i64::MIN);
        self.mixed_cursors |= !event.cursor_is_inserted_at();
        let newer = self.newest.is_none_or(|n| cursor > n);
        if newer && !self.mixed_cursors {
            // Every id remembered was at or before `newest`, and an event's cursor time is its
            // own: this one is new.
            self.log.push_back((cursor, event.id_arc().clone()));
        } else {
            if self.mixed_cursors {
                // A copy may carry another cursor time than the logged one: look up by id.
                for (c, id) in self.log.drain(..) {
                    self.ids.insert(id, c);
                }
            } else if let Ok(k) = self.log.binary_search_by_key(&cursor, |(c, _)| *c) {
                // The log holds one id per cursor time (each newer than the last), and a repeat
                // carries its first copy's cursor time: only that entry can be it. Before, the
                // whole log was hashed here, which a sweep's single page made the cost of
                // hashing every event of a busy socket.
                if self.log[k].1 == *event.id_arc() {
                    return false;
                }
            }
            // One hash and probe (a repeat is rare: only overlaps repeat).
            match self.ids.entry(event.id_arc().clone()) {
                std::collections::hash_map::Entry::Occupied(_) => return false,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(cursor);
                }
            }
        }
        if newer {
            self.newest = Some(cursor);
            self.newest_text = event.cursor_text_handle();
        }
        self.inserts_since_prune += 1;
        // Prune when the map may have doubled: amortized O(1) per event.
        if self.inserts_since_prune >= 4096.max((self.ids.len() + self.log.len()) / 2) {
            self.prune();
        }
        true
    }

    fn prune(&mut self) {
        self.inserts_since_prune = 0;
        if let Some(newest) = self.newest {
            let floor = newest.saturating_sub(self.window_us);
            self.ids.retain(|_, c| *c >= floor);
            while self.log.front().is_some_and(|(c, _)| *c < floor) {
                self.log.pop_front();
            }
        }
    }
}

/// Pages through the list endpoint from a [`Seen`]'s newest cursor time: follows `next_cursor`
/// when the server gives one, otherwise asks again with `since` = the newest cursor time and drops
/// ids already seen, until a page adds nothing.
pub(crate) struct Pager {
    base: Filters,
    until_us: Option<i64>,
    cursor: Option<String>,
    /// `since` and its parsed floor for the current request (or cursor chain).
    chain: (Option<String>, Option<i64>),
    /// The newest cursor time in this pager's own pages, with the server's spelling of it.
    /// Paging moves by this, not by the newest time seen anywhere: a sweep must walk past
    /// events the socket already delivered to reach the ones it did not.
    frontier: Option<(i64, Option<CursorText>)>,
    started: bool,
    finished: bool,
    warned_ties: bool,
    /// The server refused a `next_cursor` it gave us: page by `since` from now on.
    ignore_cursor: bool,
}

/// The largest page a pager asks for when timestamp ties overflow a page.
const MAX_PAGE_LIMIT: u32 = 1000;

/// One step of a [`Pager`]: the new events (oldest first) and the elements that were not events.
pub(crate) struct PagerStep {
    pub events: Vec<AuditEvent>,
    pub invalid: Vec<Error>,
}

impl Pager {
    /// A pager over `base`. Its first request uses `base.since` when set (a sweep's start, or a
    /// caller's own `since`, even a relative one like `24h`), else the newest time `seen`
    /// holds, else the epoch: full history is asked for as `since` = the epoch rather than no
    /// `since` at all, because a server may answer a bare list with its *newest* page.
    pub(crate) fn new(mut base: Filters, limit: u32) -> Self {
        base.limit = Some(base.limit.unwrap_or(limit).clamp(1, MAX_PAGE_LIMIT));
        base.cursor = None;
        let until_us = base.until.as_deref().and_then(parse_time);
        Pager {
            base,
            until_us,
            cursor: None,
            chain: (None, None),
            frontier: None,
            started: false,
            finished: false,
            warned_ties: false,
            ignore_cursor: false,
        }
    }

    /// The newest cursor time this pager's own pages reached.
    pub(crate) fn frontier_us(&self) -> Option<i64> {
        self.frontier.as_ref().map(|f| f.0)
    }

    /// Ask the same page again (after a page that did not decode).
    pub(crate) fn restart(&mut self) {
        self.cursor = None;
        self.finished = false;
    }

    fn next_since(&self, seen: &Seen) -> Option<String> {
        if !self.started {
            return self
                .base
                .since
                .clone()
                .or_else(|| seen.since())
                .or_else(|| Some(format_time(0)));
        }
        match &self.frontier {
            Some((us, text)) => Some(
                text.as_ref()
                    .map_or_else(|| format_time(*us), |t| t.as_str().to_string()),
            ),
            None => self.chain.0.clone(),
        }
    }

    pub(crate) async fn next(
        &mut self,
        client: &Client,
        seen: &mut Seen,
        policy: &RetryPolicy,
    ) -> Result<Option<PagerStep>, Error> {
        if self.finished {
            return Ok(None);
        }
        let mut filters = self.base.clone();
        match &self.cursor {
            Some(c) => {
                filters.cursor = Some(c.clone());
                filters.since = self.chain.0.clone();
            }
            None => {
                let since = self.next_since(seen);
                let floor = since
                    .as_deref()
                    .and_then(parse_time)
                    .or(self.frontier.as_ref().map(|f| f.0));
                self.chain = (since.clone(), floor);
                filters.since = since;
            }
        }
        self.started = true;
        let page = match client.list_page_with(&filters, policy).await {
            Ok(page) => page,
            // No SDK reads a cursor back, so servers' cursors are untested ground: if one we were
            // given is refused, `since`-paging from the position reached is always correct.
            Err(e @ (Error::Rejected { .. } | Error::NotFound { .. })) if self.cursor.is_some() => {
                tracing::warn!(error = %e, "the server refused its own next_cursor; paging by since instead");
                self.ignore_cursor = true;
                self.cursor = None;
                return Ok(Some(PagerStep {
                    events: Vec::new(),
                    invalid: Vec::new(),
                }));
            }
            Err(e) => return Err(e),
        };
        let floor = self.chain.1;
        let mut ordered: Vec<(i64, usize, AuditEvent)> = page
            .events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (e.cursor_us().unwrap_or(i64::MIN), i, e))
            .collect();
        // Order inside a page is not documented: sort by (cursor time, arrival).
        ordered.sort_by_key(|(c, i, _)| (*c, *i));
        let returned = ordered.len();
        let mut advanced = false;
        let mut events = Vec::with_capacity(returned);
        for (_, _, event) in ordered {
            let cursor = event.cursor_us();
            if floor.is_some_and(|f| cursor.is_some_and(|c| c < f)) {
                continue;
            }
            if let Some(c) = cursor {
                if floor.is_none_or(|f| c > f) {
                    advanced = true;
                }
                if self.frontier.as_ref().is_none_or(|(f, _)| c > *f) {
                    // Inline: no allocation per event, and the page is not kept alive.
                    self.frontier = Some((c, event.cursor_text_handle()));
                }
            }
            if self.until_us.is_some_and(|u| cursor.is_some_and(|c| c > u)) {
                continue;
            }
            if !belongs(&event, self.base.resource_id.as_deref()) {
                continue;
            }
            if seen.insert(&event) {
                events.push(event);
            }
        }
        self.cursor = page
            .next_cursor
            .filter(|_| page.has_more != Some(false) && !self.ignore_cursor);
        let limit = self.base.limit.unwrap_or(100);
        if self.cursor.is_none() && !advanced && returned >= limit as usize && limit < MAX_PAGE_LIMIT {
            // A full page that all shares the `since` timestamp: more events may share it than a
            // page holds. Ask again with a bigger page (servers that cap pages lower will answer
            // the same page, and the warning below says what that means).
            self.base.limit = Some((limit * 2).min(MAX_PAGE_LIMIT));
            return Ok(Some(PagerStep {
                events,
                invalid: page.invalid,
            }));
        }
        // Done when the server says so, or when a page brings nothing past its `since`.
        if self.cursor.is_none() && (!advanced || page.has_more == Some(false)) {
            self.finished = true;
            let limit = limit as usize;
            if !advanced && returned >= limit && !self.warned_ties {
                self.warned_ties = true;
                tracing::warn!(
                    resource_id = self.base.resource_id.as_deref().unwrap_or("*"),
                    page_limit = limit,
                    "a full page shares one timestamp and the server gives no next_cursor; events past it cannot be paged by time"
                );
            }
        }
        Ok(Some(PagerStep {
            events,
            invalid: page.invalid,
        }))
    }
}

/// The stream behind `list_all`.
pub(crate) fn list_all(
    client: Client,
    filters: Filters,
) -> impl Stream<Item = Result<AuditEvent, Error>> + Send + 'static {
    list_from(client, filters, StartAt::Earliest, 100)
}

/// Every event matching `filters` after `start` (a time or a resume position; `Earliest` uses
/// `filters.since`), page after page, each once, then the stream ends.
pub(crate) fn list_from(
    client: Client,
    mut filters: Filters,
    start: StartAt,
    page_limit: u32,
) -> impl Stream<Item = Result<AuditEvent, Error>> + Send + 'static {
    if start != StartAt::Earliest {
        // The position decides where paging begins.
        filters.since = None;
    }
    let seen = Seen::new(&start, Duration::from_secs(300));
    let pager = Pager::new(filters, page_limit);
    let policy = client.retry_policy().clone();
    // A page at a time, then flattened: an `unfold` per event moved its whole state (client,
    // pager, ids seen) into a new future for every event it yielded (5 copies per event in
    // callgrind); per page, that cost is shared by up to a hundred events.
    futures_util::stream::unfold(Some((client, pager, seen, policy)), |state| async move {
        let (client, mut pager, mut seen, policy) = state?;
        let mut items: Vec<Result<AuditEvent, Error>> = Vec::new();
        match pager.next(&client, &mut seen, &policy).await {
            Ok(Some(step)) => {
                items.reserve(step.invalid.len() + step.events.len());
                items.extend(step.invalid.into_iter().map(Err));
                items.extend(step.events.into_iter().map(Ok));
                Some((items, Some((client, pager, seen, policy))))
            }
            Ok(None) => None,
            // The error is the listing's last item.
            Err(e) => Some((vec![Err(e)], None)),
        }
    })
    .flat_map(futures_util::stream::iter)
}

/// Whether `event` belongs to the resource asked for. A server that ignored the `resource_id`
/// filter would otherwise file every sandbox's events under each sandbox; an event that does
/// not name its resource is taken at the server's word.
pub(crate) fn belongs(event: &AuditEvent, resource_id: Option<&str>) -> bool {
    match (resource_id, event.resource_id()) {
        (Some(want), Some(got)) => want == got,
        _ => true,
    }
}

/// The cursor time of the first event a socket delivered (see [`TailTask::catch_up_to`]),
/// shared between the listing and the loop that buffers the socket meanwhile. `i64::MIN`
/// until one arrives (no parsed time is that small).
struct FirstFrame(std::sync::atomic::AtomicI64);

impl Default for FirstFrame {
    fn default() -> Self {
        FirstFrame(std::sync::atomic::AtomicI64::new(i64::MIN))
    }
}

impl FirstFrame {
    fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&t| t != i64::MIN)
    }

    /// Record `payload`'s cursor time if it is the first event with one.
    fn observe(&self, payload: &Bytes) {
        if self.get().is_some() {
            return;
        }
        if let Some(cursor) = decode_event(payload.clone(), "socket frame")
            .ok()
            .and_then(|e| e.cursor_us())
        {
            self.0.store(cursor, Ordering::Relaxed);
        }
    }
}

/// [`FirstFrame::observe`] for a socket message.
fn observe_first(first: &FirstFrame, msg: &Message) {
    if first.get().is_some() {
        return;
    }
    if let Message::Data(b) = msg {
        first.observe(b);
    }
}

/// How long into the live phase the one-time sweep runs (see `follow_socket`).
const SWEEP_AFTER: Duration = Duration::from_secs(2);

/// The dead letter for a frame over the cap: its bytes were never read, so there is no payload;
/// the socket closes and the catch-up after the reconnect fetches the event, if it was one,
/// through the list endpoint.
fn oversized_frame() -> Error {
    Error::Decode {
        what: "socket frame".into(),
        message: format!(
            "larger than {} bytes; the socket was closed (1009) and the list endpoint is used to catch up",
            ws::MAX_FRAME_BYTES
        ),
        raw: None,
    }
}

/// The consumer is gone: stop quietly.
struct Gone;

enum SocketEnd {
    /// The consumer dropped the stream.
    Gone,
    /// The socket closed or failed; reconnect after `reason` is logged. `worked` says whether it
    /// delivered live frames first (then the reconnect backoff starts over).
    Dropped { reason: String, worked: bool },
    /// A fatal error was handed to the consumer.
    Fatal,
}

impl Drop for TailTask {
    /// A tail that ends (dropped, aborted, or stopped) leaves the org poller, and tells the
    /// observer it stopped.
    fn drop(&mut self) {
        if let (Some(org), Some(_)) = (&self.options.org_poller, &self.org_rx) {
            org.unsubscribe(&self.resource_id);
        }
        let last = ActiveTransport::from_u8(self.status.load(Ordering::Relaxed));
        if last != ActiveTransport::Stopped {
            self.client
                .observer()
                .tail_transport(last, ActiveTransport::Stopped);
        }
    }
}

struct TailTask {
    client: Client,
    resource_id: String,
    options: TailOptions,
    seen: Seen,
    pager_base: Filters,
    status: Arc<AtomicU8>,
    tx: mpsc::Sender<Vec<TailItem>>,
    /// Items not handed over yet (see [`CHUNK`]).
    out: Vec<TailItem>,
    warned_ties: bool,
    /// Where the last catch-up before a socket ended, while that socket's sweep has not run
    /// (see `follow_socket`): the next listing starts here, whatever came in between.
    unswept: Option<String>,
    /// This sandbox's events from the org-wide poller, while subscribed.
    org_rx: Option<mpsc::Receiver<AuditEvent>>,
    /// The org-wide poller gave up on us: poll alone from now on.
    org_failed: bool,
}

impl TailTask {
    fn set_status(&self, s: ActiveTransport) {
        let old = ActiveTransport::from_u8(self.status.swap(s as u8, Ordering::Relaxed));
        if old != s {
            self.client.observer().tail_transport(old, s);
        }
    }

    /// Follow the sandbox until the receiver is gone or the tail must stop.
    ///
    /// Sub-futures are boxed where they are awaited (connect, catch-ups, the org forwarding,
    /// the socket follower): an async fn's future is as large as its largest await point, and
    /// every sandbox's task holds one. Measured in release: 14,160 bytes before, 3,296 + the
    /// socket follower's 5,512 while on a socket; 10,000 idle sandboxes went from 256–257 to
    /// 214–215 MiB resident (benches/HISTORY.md, change 14).
    async fn run(mut self) {
        let mut socket_backoff = Backoff::new(Duration::from_secs(5), self.options.socket_retry_max);
        let mut reconnect_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut next_socket_try = Instant::now();
        let mut on_fallback = false;
        loop {
            let mut try_socket =
                self.options.transport != Transport::Poll && Instant::now() >= next_socket_try;
            if try_socket {
                if let Some(Err(wait)) = self.options.socket_gate.as_ref().map(|g| g.may_try()) {
                    // Sockets are failing fleet-wide: another tail probes; keep polling.
                    next_socket_try = Instant::now() + wait;
                    try_socket = false;
                }
            }
            if try_socket {
                self.set_status(ActiveTransport::Connecting);
                let connected = tokio::select! {
                    r = Box::pin(ws::connect(&self.client, &self.resource_id)) => r,
                    _ = self.tx.closed() => return,
                };
                match connected {
                    Ok(socket) => {
                        socket_backoff.reset();
                        if let Some(g) = &self.options.socket_gate {
                            g.succeeded();
                        }
                        if let (Some(org), Some(_)) = (&self.options.org_poller, self.org_rx.take()) {
                            org.unsubscribe(&self.resource_id);
                        }
                        if on_fallback {
                            tracing::info!(resource_id = %self.resource_id, "audit socket is back; leaving the polling fallback");
                            on_fallback = false;
                        }
                        match Box::pin(self.follow_socket(socket)).await {
                            SocketEnd::Gone | SocketEnd::Fatal => {
                                self.set_status(ActiveTransport::Stopped);
                                return;
                            }
                            SocketEnd::Dropped { reason, worked } => {
                                self.client.observer().socket_dropped();
                                // A socket that delivered live frames was healthy: reconnect
                                // promptly. One that fails before that backs off further.
                                if worked {
                                    reconnect_backoff.reset();
                                }
                                let delay = reconnect_backoff.next_delay();
                                tracing::info!(resource_id = %self.resource_id, reason, reconnect_in_ms = delay.as_millis() as u64, "audit socket dropped; reconnecting and catching up");
                                if self.sleep(delay).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(g) = &self.options.socket_gate {
                            g.failed();
                        }
                        let delay = socket_backoff.next_delay();
                        next_socket_try = Instant::now() + delay;
                        if !on_fallback {
                            let what = if self.options.transport == Transport::WebSocket {
                                "audit socket unavailable; catching up through the list endpoint until it is back"
                            } else {
                                "audit socket unavailable; falling back to polling"
                            };
                            tracing::warn!(resource_id = %self.resource_id, error = %e, retry_socket_in_ms = delay.as_millis() as u64, "{what}");
                            on_fallback = true;
                        } else {
                            tracing::debug!(resource_id = %self.resource_id, error = %e, "audit socket still unavailable");
                        }
                        if self.options.transport == Transport::WebSocket {
                            // Socket-only: catch up through the list (no gap), then wait.
                            let from = self.unswept.take();
                            if Box::pin(self.catch_up(from)).await.is_err() {
                                self.set_status(ActiveTransport::Stopped);
                                return;
                            }
                            if self.sleep(delay).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
            }
            self.set_status(ActiveTransport::Polling);
            if let (Some(org), false) = (self.options.org_poller.clone(), self.org_failed) {
                if self.org_rx.is_none() {
                    // Subscribe first, then catch up alone to the present: the poller covers
                    // everything after its frontier, the catch-up everything before now.
                    self.org_rx = Some(org.subscribe(&self.resource_id));
                    let from = self.unswept.take();
                    if Box::pin(self.catch_up(from)).await.is_err() {
                        self.set_status(ActiveTransport::Stopped);
                        return;
                    }
                }
                let until = (self.options.transport != Transport::Poll).then_some(next_socket_try);
                match Box::pin(self.forward_org(until)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(resource_id = %self.resource_id, "the org-wide poller stopped; polling this sandbox alone");
                        self.org_rx = None;
                        self.org_failed = true;
                    }
                    Err(Gone) => return,
                }
                continue;
            }
            let from = self.unswept.take();
            if Box::pin(self.catch_up(from)).await.is_err() {
                self.set_status(ActiveTransport::Stopped);
                return;
            }
            if self.sleep(self.options.poll_interval).await.is_err() {
                return;
            }
        }
    }

    /// Hand on this sandbox's events from the org-wide poller until `until` (a socket attempt
    /// is due; `None`: forever). `Ok(false)`: the poller closed our channel.
    async fn forward_org(&mut self, until: Option<Instant>) -> Result<bool, Gone> {
        let Some(mut rx) = self.org_rx.take() else {
            return Ok(false);
        };
        let wait = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(wait);
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = &mut wait => {
                    self.org_rx = Some(rx);
                    return Ok(true);
                }
                _ = self.tx.closed() => return Err(Gone),
            };
            match event {
                Some(e) => {
                    if self.seen.insert(&e) {
                        self.send(Ok(e)).await?;
                    }
                }
                None => return Ok(false),
            }
        }
    }

    async fn sleep(&self, d: Duration) -> Result<(), Gone> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.tx.closed() => Err(Gone),
        }
    }

    /// Hand `item` over now, with any items gathered before it.
    async fn send(&mut self, item: TailItem) -> Result<(), Gone> {
        self.out.push(item);
        self.flush_out().await
    }

    /// Gather `item`, handing the gathered items over once they fill a chunk. The caller
    /// flushes before it waits for anything.
    async fn gather(&mut self, item: TailItem) -> Result<(), Gone> {
        self.out.push(item);
        if self.out.len() >= CHUNK {
            self.flush_out().await?;
        }
        Ok(())
    }

    /// Hand over every gathered item.
    async fn flush_out(&mut self) -> Result<(), Gone> {
        if self.out.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK));
        self.tx.send(chunk).await.map_err(|_| Gone)
    }

    /// Drain the list endpoint from the current position (or from `from`, a cursor-time text,
    /// for a sweep). `Err` means stop: the consumer is gone or a fatal error was handed over.
    async fn catch_up(&mut self, from: Option<String>) -> Result<(), Gone> {
        self.catch_up_to(from, None).await
    }

    /// [`Self::catch_up`], ending early once the listing has passed `bound` (the cursor time of
    /// the socket's first event, when one has arrived): every later event reaches us through
    /// the socket, so listing further would only fetch, for a busy sandbox without end, what
    /// the socket already holds.
    async fn catch_up_to(&mut self, from: Option<String>, bound: Option<&FirstFrame>) -> Result<(), Gone> {
        let base = Filters {
            since: from,
            ..self.pager_base.clone()
        };
        let mut pager = Pager::new(base, self.options.page_limit);
        pager.warned_ties = self.warned_ties;
        let forever = RetryPolicy {
            max_attempts: None,
            ..self.client.retry_policy().clone()
        };
        let mut decode_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match pager.next(&self.client, &mut self.seen, &forever).await {
                Ok(Some(step)) => {
                    for bad in step.invalid {
                        self.send(Err(bad)).await?;
                    }
                    for event in step.events {
                        self.gather(Ok(event)).await?;
                    }
                    self.flush_out().await?;
                    // Strictly past the bound: every event at the bound's own time (ties
                    // included) has been listed.
                    let past = bound
                        .and_then(FirstFrame::get)
                        .is_some_and(|b| pager.frontier_us().is_some_and(|f| f > b));
                    if past {
                        self.warned_ties = pager.warned_ties;
                        return Ok(());
                    }
                }
                Ok(None) => {
                    self.warned_ties = pager.warned_ties;
                    return Ok(());
                }
                Err(e @ Error::Decode { .. }) => {
                    // A whole page that does not decode is a server glitch: hand it over for the
                    // dead-letter file and try again, the position has not moved.
                    self.send(Err(e)).await?;
                    let delay = decode_backoff.next_delay();
                    self.sleep(delay).await?;
                    pager.restart();
                }
                Err(e) => {
                    tracing::error!(resource_id = %self.resource_id, error = %e, "stopping the tail of this sandbox");
                    let _ = self.send(Err(e)).await;
                    return Err(Gone);
                }
            }
        }
    }

    /// Run a list catch-up while the socket keeps being read into a buffer (up to
    /// [`TailOptions::catch_up_buffer_frames`]; then the socket waits), then replay the buffer.
    /// `Ok(())` means the socket is still good to follow live.
    async fn list_while_buffering(
        &mut self,
        socket: &mut ws::Socket,
        from: Option<String>,
        first: &FirstFrame,
    ) -> Result<(), SocketEnd> {
        let mut buffer: VecDeque<Message> = VecDeque::new();
        let mut full = false;
        let mut socket_failed: Option<String> = None;
        let mut oversized = false;
        // The catch-up borrows `self`; the loop below touches only locals and the socket.
        let cap = self.options.catch_up_buffer_frames;
        let key = self.client.key().clone();
        let listed = {
            let listing = self.catch_up_to(from, Some(first));
            tokio::pin!(listing);
            loop {
                tokio::select! {
                    r = &mut listing => break r,
                    frame = socket.next(), if !full && socket_failed.is_none() => match frame {
                        Some(Ok(msg)) => {
                            observe_first(first, &msg);
                            buffer.push_back(msg);
                            if buffer.len() >= cap {
                                full = true;
                            }
                        }
                        Some(Err(e)) => {
                            oversized |= e.is_oversized();
                            socket_failed = Some(key.redact(&e.to_string()));
                        }
                        None => socket_failed = Some("closed by the server".into()),
                    },
                }
            }
        };
        if listed.is_err() {
            return Err(SocketEnd::Fatal);
        }
        for msg in buffer {
            match self.on_message(msg).await {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    return Err(SocketEnd::Dropped {
                        reason,
                        worked: false,
                    })
                }
                Err(Gone) => return Err(SocketEnd::Gone),
            }
        }
        if oversized && self.send(Err(oversized_frame())).await.is_err() {
            return Err(SocketEnd::Gone);
        }
        if let Some(reason) = socket_failed {
            return Err(SocketEnd::Dropped {
                reason,
                worked: false,
            });
        }
        Ok(())
    }

    /// Catch up while the socket buffers, replay the buffer, then follow the socket live.
    ///
    /// A server may start delivering to a new socket a moment after it answers the upgrade; an
    /// event stored in that moment, after our last catch-up page, would reach neither. So
    /// [`SWEEP_AFTER`] into the live phase the task lists once more from where the catch-up
    /// ended (ids already seen are dropped), which closes that window.
    ///
    /// If the socket drops before its sweep, the next catch-up starts from the same point.
    async fn follow_socket(&mut self, socket: ws::Socket) -> SocketEnd {
        let end = self.follow_socket_inner(socket).await;
        // Events read before the socket ended are handed over before any reconnect wait.
        if !matches!(end, SocketEnd::Gone) && self.flush_out().await.is_err() {
            return SocketEnd::Gone;
        }
        end
    }

    async fn follow_socket_inner(&mut self, mut socket: ws::Socket) -> SocketEnd {
        let first = FirstFrame::default();
        let from = self.unswept.take();
        if let Err(end) = Box::pin(self.list_while_buffering(&mut socket, from.clone(), &first)).await {
            self.unswept = from;
            return end;
        }
        self.unswept = self.seen.since();
        let mut sweep_pending = self.unswept.is_some();
        let sweep_at = Instant::now() + SWEEP_AFTER;
        self.set_status(ActiveTransport::WebSocket);
        let ping_after = self.options.ping_after;
        let mut pinged = false;
        let mut worked = false;
        // One timer for the socket's life, re-armed lazily: a timeout per frame would cost a
        // timer registration per event.
        let mut last_frame = Instant::now();
        let idle = tokio::time::sleep(ping_after);
        tokio::pin!(idle);
        loop {
            if self.flush_out().await.is_err() {
                return SocketEnd::Gone;
            }
            let frame = tokio::select! {
                f = socket.next() => f,
                _ = &mut idle => {
                    if last_frame + ping_after > Instant::now() {
                        idle.as_mut().reset(last_frame + ping_after);
                        continue;
                    }
                    if pinged {
                        let reason = format!("no frame or pong for {} s", 2 * ping_after.as_secs());
                        return SocketEnd::Dropped { reason, worked };
                    }
                    pinged = true;
                    idle.as_mut().reset(Instant::now() + ping_after);
                    if let Err(e) = socket.ping().await {
                        let reason = self.client.key().redact(&e.to_string());
                        return SocketEnd::Dropped { reason, worked };
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(sweep_at), if sweep_pending => {
                    sweep_pending = false;
                    let from = self.unswept.clone();
                    if let Err(end) = Box::pin(self.list_while_buffering(&mut socket, from, &first)).await {
                        return end;
                    }
                    self.unswept = None;
                    continue;
                }
                _ = self.tx.closed() => {
                    let _ = socket.close().await;
                    return SocketEnd::Gone;
                }
            };
            last_frame = Instant::now();
            pinged = false;
            // Take every frame already read, up to a chunk, before handing events over.
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                if let Err(end) = self.on_frame(frame, &first, &mut worked).await {
                    return end;
                }
                if self.out.len() < CHUNK {
                    next = socket.next().now_or_never();
                }
            }
        }
    }

    /// Handle what the socket yielded; `Err` ends the socket.
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, ws::WsError>>,
        first: &FirstFrame,
        worked: &mut bool,
    ) -> Result<(), SocketEnd> {
        let reason = match frame {
            Some(Ok(msg)) => {
                *worked |= matches!(msg, Message::Data(_));
                observe_first(first, &msg);
                match self.on_message(msg).await {
                    Ok(None) => return Ok(()),
                    Ok(Some(reason)) => reason,
                    Err(Gone) => return Err(SocketEnd::Gone),
                }
            }
            Some(Err(e)) => {
                if e.is_oversized() && self.send(Err(oversized_frame())).await.is_err() {
                    return Err(SocketEnd::Gone);
                }
                self.client.key().redact(&e.to_string())
            }
            None => "closed by the server".into(),
        };
        Err(SocketEnd::Dropped {
            reason,
            worked: *worked,
        })
    }

    /// Handle one socket message. `Ok(Some(reason))` means the socket is closing.
    async fn on_message(&mut self, msg: Message) -> Result<Option<String>, Gone> {
        let payload: Bytes = match msg {
            Message::Data(b) => b,
            Message::Close(frame) => {
                let reason = match frame {
                    Some((code, reason)) => format!("closed by the server ({code} {reason})"),
                    None => "closed by the server".into(),
                };
                return Ok(Some(reason));
            }
            Message::Ping | Message::Pong => return Ok(None),
        };
        self.client.observer().frame_received();
        match decode_event(payload, "socket frame") {
            Ok(event) => {
                if belongs(&event, Some(&self.resource_id)) && self.seen.insert(&event) {
                    self.gather(Ok(event)).await?;
                }
            }
            Err(e) => self.gather(Err(e)).await?,
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, inserted_at: Option<&str>, timestamp: Option<&str>) -> AuditEvent {
        let mut json = format!(r#"{{"id":"{id}","resource_id":"sb-1""#);
        if let Some(t) = inserted_at {
            json += &format!(r#","inserted_at":"{t}""#);
        }
        if let Some(t) = timestamp {
            json += &format!(r#","timestamp":"{t}""#);
        }
        json += "}";
        AuditEvent::from_json(json).unwrap()
    }

    fn at(second: u32) -> String {
        format!("2026-11-26T10:00:{second:02}Z")
    }

    #[test]
    fn repeats_are_caught_whether_their_first_copy_was_logged_or_hashed() {
        let mut seen = Seen::new(&StartAt::Earliest, Duration::from_secs(300));
        // An in-order stream: all logged, none hashed.
        for s in 0..10 {
            assert!(seen.insert(&event(&format!("e{s}"), Some(&at(s)), None)));
        }
        assert_eq!((seen.log.len(), seen.ids.len()), (10, 0));
        assert_eq!(seen.since().as_deref(), Some(at(9).as_str()));
        // A repeat (at its own, older cursor time) is found in the log, which stays a log.
        assert!(!seen.insert(&event("e3", Some(&at(3)), None)));
        assert_eq!((seen.log.len(), seen.ids.len()), (10, 0));
        // So are the oldest and the newest logged; a new id at a logged time is new, once.
        assert!(!seen.insert(&event("e0", Some(&at(0)), None)));
        assert!(!seen.insert(&event("e9", Some(&at(9)), None)));
        assert!(seen.insert(&event("e3b", Some(&at(3)), None)));
        assert!(!seen.insert(&event("e3b", Some(&at(3)), None)));
        assert_eq!((seen.log.len(), seen.ids.len()), (10, 1));
        // A repeat of the newest (same cursor time) too, and a new id at that time is new.
        assert!(seen.insert(&event("e10", Some(&at(10)), None)));
        assert!(!seen.insert(&event("e10", Some(&at(10)), None)));
        assert!(seen.insert(&event("e10b", Some(&at(10)), None)));
        assert!(!seen.insert(&event("e10b", Some(&at(10)), None)));
        // An older event never seen is new, once.
        assert!(seen.insert(&event("late", Some(&at(1)), None)));
        assert!(!seen.insert(&event("late", Some(&at(1)), None)));
    }

    #[test]
    fn an_event_seen_under_two_cursor_times_is_still_one_event() {
        let mut seen = Seen::new(&StartAt::Earliest, Duration::from_secs(300));
        // A frame without `inserted_at` (cursor: its `timestamp`), then its list copy with an
        // `inserted_at` later than anything seen: newer, yet a repeat.
        assert!(seen.insert(&event("e1", None, Some(&at(1)))));
        assert!(seen.insert(&event("e2", Some(&at(2)), Some(&at(2)))));
        assert!(!seen.insert(&event("e1", Some(&at(5)), Some(&at(1)))));
    }

    #[test]
    fn the_log_is_pruned_to_the_window() {
        let mut seen = Seen::new(&StartAt::Earliest, Duration::from_secs(60));
        let t0 = parse_time("2026-11-26T10:00:00Z").unwrap();
        for i in 0..10_000i64 {
            let t = format_time(t0 + i * 1_000_000);
            assert!(seen.insert(&event(&format!("e{i}"), Some(&t), None)));
        }
        // 10,000 seconds of events; a prune ran at least every 4,096 inserts, so at most the
        // last window plus 4,096 remain, and the newest are among them.
        assert!(seen.log.len() <= 61 + 4096, "{}", seen.log.len());
        let newest = format_time(t0 + 9_999 * 1_000_000);
        assert!(!seen.insert(&event("e9999", Some(&newest), None)));
    }
}

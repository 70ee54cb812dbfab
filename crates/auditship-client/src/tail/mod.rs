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

mod pager;
mod seen;
mod task;
#[cfg(test)]
mod tests;

pub(crate) use pager::{belongs, list_all, list_from, Pager};
pub(crate) use seen::Seen;
use task::TailTask;

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
    /// The same bound in bytes, whichever comes first: frames of up to 1 MiB would otherwise
    /// let a server fill 2,000 MiB per socket during one catch-up. Default 16 MiB.
    pub catch_up_buffer_bytes: usize,
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
            catch_up_buffer_bytes: 16 << 20,
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

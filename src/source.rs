//! The source stage: one task per sandbox, built on the client's `tail` (live) or `list_from`
//! (a backfill window). It stamps each event with the sandbox's next sequence number and sends
//! it on; payloads that are not events become dead letters and never stop the stream.

use std::sync::Arc;

use auditship_sink::Event;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::LIST_ELEMENT;
use crate::client::{
    ActiveTransport, AuditEvent, Client, Error, Filters, StartAt, Tail, TailOptions, TailStatus,
};

/// An audit event as the pipeline carries it: its bytes, and the few fields the pipeline reads
/// (taken from the client's scan, not parsed again). `seq` is its place in its sandbox's stream
/// (where nothing counts them, any number). The one conversion from the client's events to the
/// pipeline's.
#[inline]
pub fn pipeline_event(event: AuditEvent, resource_id: Arc<str>, seq: u64) -> Event {
    Event {
        id: event.id_arc().clone(),
        resource_id,
        cursor_us: event.cursor_us(),
        cursor_span: event.cursor_span(),
        time_us: event.time_us(),
        seq,
        raw: event.into_raw(),
    }
}

/// Every event of sandbox `resource_id` the list endpoint holds from `since_us` to `until_us`
/// (both inclusive; the server applies them), as pipeline events in the order listed, `seq`
/// counting from 1. An element of a page that is not an event is skipped; any other error ends
/// the listing short and is returned, so a caller never mistakes a short listing for the window.
pub async fn list_window(
    client: &Client,
    resource_id: &str,
    since_us: i64,
    until_us: i64,
    page_limit: u32,
) -> Result<Vec<Event>, Error> {
    let filters = Filters {
        until: Some(crate::client::format_time(until_us)),
        ..Default::default()
    };
    let audit = client.sandbox(resource_id).audit();
    let mut stream = std::pin::pin!(audit.list_from(filters, StartAt::Time(since_us), page_limit));
    let rid: Arc<str> = Arc::from(resource_id);
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => {
                let seq = events.len() as u64 + 1;
                events.push(pipeline_event(e, rid.clone(), seq));
            }
            Err(e) if e.is_list_element() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(events)
}

/// What a source sends to the pipeline.
#[derive(Debug)]
pub enum SourceMsg {
    /// Events to ship, in order (those the source had at hand at once).
    Events(Vec<Event>),
    /// A payload that is not an event.
    DeadLetter(DeadLetter),
}

/// A payload that could not be taken as an event, or an event a sink could never deliver, with
/// why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The sandbox whose stream carried it.
    pub resource_id: Arc<str>,
    /// The event id, when the payload was an event.
    pub event_id: Option<Arc<str>>,
    /// The sink that refused the event (`None`: the source could not read it).
    pub sink: Option<String>,
    /// Whether a transform failed on it (the reason names which).
    pub transform: bool,
    /// Why it is not an event, or why the sink refused it.
    pub reason: String,
    /// The payload, when there was one.
    pub raw: Option<Bytes>,
}

/// What a source follows.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// Live: the tail stream (socket first, polling fallback).
    Live(TailOptions),
    /// Events given by the caller, sent on as they are; the source then ends.
    Given(Vec<Event>),
    /// A window of the past through the list endpoint; the source ends when it is shipped.
    Window {
        /// Where to begin (a time, or a resume position).
        start: StartAt,
        /// Inclusive upper bound, RFC 3339.
        until: Option<String>,
        /// Page size.
        page_limit: u32,
    },
}

/// How a source ended.
#[derive(Debug)]
pub enum SourceEnd {
    /// Asked to stop.
    Stopped,
    /// A window source shipped its window.
    Finished,
    /// The sandbox is gone (404): stop following it, keep its checkpoint.
    Deleted,
    /// A fatal error (a refused key, a rejected request).
    Fatal(Error),
    /// A window source's listing stopped before the window's end: the API was still
    /// unreachable after the client's retries, or a list response did not decode (it is
    /// dead-lettered). What was shipped before is checkpointed; a rerun resumes there.
    Unfinished(Error),
}

/// The result of one source task: how it ended and the transport it was on.
#[derive(Debug)]
pub struct SourceReport {
    /// The sandbox.
    pub resource_id: Arc<str>,
    /// How it ended.
    pub end: SourceEnd,
    /// The transport at the end (live sources only).
    pub transport: Option<ActiveTransport>,
    /// Events sent on.
    pub events: u64,
}

/// Send events given by the caller on, and end.
async fn given(resource_id: Arc<str>, events: Vec<Event>, tx: &mpsc::Sender<SourceMsg>) -> SourceReport {
    let n = events.len() as u64;
    let sent = events.is_empty() || tx.send(SourceMsg::Events(events)).await.is_ok();
    SourceReport {
        transport: None,
        resource_id,
        end: if sent {
            SourceEnd::Finished
        } else {
            SourceEnd::Stopped
        },
        events: n,
    }
}

/// Follow one sandbox until `shutdown`, the end of its window, or a fatal error.
pub async fn run(
    client: Client,
    resource_id: Arc<str>,
    kind: SourceKind,
    tx: mpsc::Sender<SourceMsg>,
    shutdown: CancellationToken,
) -> SourceReport {
    let audit = client.sandbox(&*resource_id).audit();
    let input = match kind {
        SourceKind::Given(events) => return given(resource_id, events, &tx).await,
        SourceKind::Live(options) => Input::Live(audit.tail(options)),
        SourceKind::Window {
            start,
            until,
            page_limit,
        } => Input::Window(Box::pin(audit.list_from(
            Filters {
                until,
                ..Default::default()
            },
            start,
            page_limit,
        ))),
    };
    let mut seq: u64 = 0;
    let tail_status = input.status();
    // A window's listing ends after any error but a bad element: that end is not the window's.
    let window = matches!(input, Input::Window(_));
    // Items already at hand travel on together: one send per chunk, not per event.
    let mut chunks = input.into_stream().ready_chunks(CHUNK);
    let mut events: Vec<Event> = Vec::new();
    let end = 'read: loop {
        let chunk = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break SourceEnd::Stopped,
            chunk = chunks.next() => chunk,
        };
        let Some(chunk) = chunk else {
            break SourceEnd::Finished;
        };
        let mut end = None;
        for item in chunk {
            let letter = match item {
                Ok(event) => {
                    seq += 1;
                    events.push(pipeline_event(event, resource_id.clone(), seq));
                    continue;
                }
                Err(Error::Decode { what, message, raw }) => {
                    if window && what != LIST_ELEMENT {
                        // A response that is not a list page: the listing stopped there (the
                        // dead letter keeps the response, so the report's error need not).
                        let e = Error::Decode {
                            what: what.clone(),
                            message: message.clone(),
                            raw: None,
                        };
                        tracing::error!(resource_id = %resource_id, error = %e, "the window is not finished (the response is dead-lettered)");
                        end = Some(SourceEnd::Unfinished(e));
                    }
                    DeadLetter {
                        resource_id: resource_id.clone(),
                        event_id: None,
                        sink: None,
                        transform: false,
                        reason: format!("{what}: {message}"),
                        raw,
                    }
                }
                Err(Error::NotFound { .. }) => {
                    tracing::warn!(resource_id = %resource_id, "sandbox not found (deleted?); no longer following it, its checkpoint is kept");
                    end = Some(SourceEnd::Deleted);
                    break;
                }
                Err(e) if e.is_retryable() && window => {
                    tracing::error!(resource_id = %resource_id, error = %e, "the listing gave up after its retries; the window is not finished");
                    end = Some(SourceEnd::Unfinished(e));
                    break;
                }
                Err(e) if e.is_retryable() => {
                    // The tail retries inside; a retryable error here is informational.
                    tracing::warn!(resource_id = %resource_id, error = %e, "source error; retrying");
                    continue;
                }
                Err(e) => {
                    end = Some(SourceEnd::Fatal(e));
                    break;
                }
            };
            // A dead letter keeps its place in the stream: the events before it go first.
            if !events.is_empty()
                && tx
                    .send(SourceMsg::Events(std::mem::take(&mut events)))
                    .await
                    .is_err()
            {
                break 'read SourceEnd::Stopped;
            }
            if tx.send(SourceMsg::DeadLetter(letter)).await.is_err() {
                break 'read SourceEnd::Stopped;
            }
            if end.is_some() {
                break;
            }
        }
        if !events.is_empty()
            && tx
                .send(SourceMsg::Events(std::mem::take(&mut events)))
                .await
                .is_err()
        {
            break SourceEnd::Stopped;
        }
        if let Some(end) = end {
            break end;
        }
    };
    SourceReport {
        transport: tail_status.map(|t| t.get()),
        resource_id,
        end,
        events: seq,
    }
}

/// A live tail or a window's listing.
enum Input {
    Live(Tail),
    Window(BoxStream<'static, Result<AuditEvent, Error>>),
}

/// Most events per message to the pipeline.
pub const CHUNK: usize = 128;

/// Messages the sources may queue for the pipeline: with [`CHUNK`] events each, about 8,000
/// events in all, whatever the number of sandboxes (the bound that holds memory when the sinks
/// are slower than the sockets).
pub const QUEUE_MESSAGES: usize = 64;

impl Input {
    /// A handle on the tail's transport that outlives the stream (live sources only).
    fn status(&self) -> Option<TailStatus> {
        match self {
            Input::Live(tail) => Some(tail.status_handle()),
            Input::Window(_) => None,
        }
    }

    fn into_stream(self) -> BoxStream<'static, Result<AuditEvent, Error>> {
        match self {
            Input::Live(tail) => Box::pin(tail),
            Input::Window(stream) => stream,
        }
    }
}

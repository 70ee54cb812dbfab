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

use crate::client::{ActiveTransport, Client, Error, Filters, StartAt, TailOptions};

/// What a source sends to the pipeline.
#[derive(Debug)]
pub enum SourceMsg {
    /// An event to ship.
    Event(Event),
    /// A payload that is not an event.
    DeadLetter(DeadLetter),
}

/// A payload that could not be taken as an event, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The sandbox whose stream carried it.
    pub resource_id: Arc<str>,
    /// Why it is not an event.
    pub reason: String,
    /// The payload, when there was one.
    pub raw: Option<Bytes>,
}

/// What a source follows.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// Live: the tail stream (socket first, polling fallback).
    Live(TailOptions),
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

/// Follow one sandbox until `shutdown`, the end of its window, or a fatal error.
pub async fn run(
    client: Client,
    resource_id: Arc<str>,
    kind: SourceKind,
    tx: mpsc::Sender<SourceMsg>,
    shutdown: CancellationToken,
) -> SourceReport {
    let audit = client.sandbox(&*resource_id).audit();
    let mut tail = None;
    let mut stream: BoxStream<'static, Result<crate::client::AuditEvent, Error>> = match kind {
        SourceKind::Live(options) => {
            let t = audit.tail(options);
            let status = TailStatus(std::sync::Arc::new(std::sync::Mutex::new(None)));
            tail = Some(status.clone());
            // Keep a way to read the tail's transport after it moves into the stream.
            Box::pin(StatusStream { inner: t, status })
        }
        SourceKind::Window {
            start,
            until,
            page_limit,
        } => Box::pin(audit.list_from(
            Filters {
                until,
                ..Default::default()
            },
            start,
            page_limit,
        )),
    };
    let mut seq: u64 = 0;
    let end = loop {
        let item = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break SourceEnd::Stopped,
            item = stream.next() => item,
        };
        let msg = match item {
            None => break SourceEnd::Finished,
            Some(Ok(event)) => {
                seq += 1;
                let cursor_us = event.cursor_us();
                let cursor_span = event.cursor_span();
                let time_us = event.time_us();
                let id = event.id_arc().clone();
                SourceMsg::Event(Event {
                    raw: event.into_raw(),
                    id,
                    resource_id: resource_id.clone(),
                    cursor_us,
                    cursor_span,
                    time_us,
                    seq,
                })
            }
            Some(Err(Error::Decode { what, message, raw })) => SourceMsg::DeadLetter(DeadLetter {
                resource_id: resource_id.clone(),
                reason: format!("{what}: {message}"),
                raw,
            }),
            Some(Err(Error::NotFound { .. })) => {
                tracing::warn!(resource_id = %resource_id, "sandbox not found (deleted?); no longer following it, its checkpoint is kept");
                break SourceEnd::Deleted;
            }
            Some(Err(e)) if e.is_retryable() => {
                // The stream retries inside; a retryable error here is informational.
                tracing::warn!(resource_id = %resource_id, error = %e, "source error; retrying");
                continue;
            }
            Some(Err(e)) => break SourceEnd::Fatal(e),
        };
        if tx.send(msg).await.is_err() {
            break SourceEnd::Stopped;
        }
    };
    drop(stream);
    SourceReport {
        transport: tail.and_then(|t| *t.0.lock().unwrap_or_else(|e| e.into_inner())),
        resource_id,
        end,
        events: seq,
    }
}

#[derive(Clone)]
struct TailStatus(std::sync::Arc<std::sync::Mutex<Option<ActiveTransport>>>);

/// Wraps a `Tail` and records its transport as items pass, so the report can say which
/// transport a sandbox ended on.
struct StatusStream {
    inner: crate::client::Tail,
    status: TailStatus,
}

impl futures_util::Stream for StatusStream {
    type Item = Result<crate::client::AuditEvent, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let t = self.inner.transport();
        if let Ok(mut s) = self.status.0.lock() {
            *s = Some(t);
        }
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

//! The task behind a [`Tail`]: the state machine of the module's documentation.

use super::*;

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

/// How long a closing handshake may take to write before the socket is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

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

pub(super) struct TailTask {
    pub(super) client: Client,
    pub(super) resource_id: String,
    pub(super) options: TailOptions,
    pub(super) seen: Seen,
    pub(super) pager_base: Filters,
    pub(super) status: Arc<AtomicU8>,
    pub(super) tx: mpsc::Sender<Vec<TailItem>>,
    /// Items not handed over yet (see [`CHUNK`]).
    pub(super) out: Vec<TailItem>,
    pub(super) warned_ties: bool,
    /// Where the last catch-up before a socket ended, while that socket's sweep has not run
    /// (see `follow_socket`): the next listing starts here, whatever came in between.
    pub(super) unswept: Option<String>,
    /// This sandbox's events from the org-wide poller, while subscribed.
    pub(super) org_rx: Option<mpsc::Receiver<AuditEvent>>,
    /// The org-wide poller gave up on us: poll alone from now on.
    pub(super) org_failed: bool,
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
    pub(super) async fn run(mut self) {
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
    /// [`TailOptions::catch_up_buffer_frames`] or `catch_up_buffer_bytes`; then the socket
    /// waits), then replay the buffer.
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
        let cap_bytes = self.options.catch_up_buffer_bytes;
        let mut buffered_bytes = 0usize;
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
                            if let Message::Data(b) = &msg {
                                buffered_bytes += b.len();
                            }
                            buffer.push_back(msg);
                            if buffer.len() >= cap || buffered_bytes >= cap_bytes {
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
                    // A server that reads nothing would hold this write forever.
                    match tokio::time::timeout(ping_after, socket.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            let reason = self.client.key().redact(&e.to_string());
                            return SocketEnd::Dropped { reason, worked };
                        }
                        Err(_) => {
                            let reason = format!("the server took no ping for {} s", ping_after.as_secs_f64());
                            return SocketEnd::Dropped { reason, worked };
                        }
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
                    // Bounded: a server that reads nothing cannot keep a dropped tail alive.
                    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close()).await;
                    return SocketEnd::Gone;
                }
            };
            // A server's own pings show that it is connected, not that it delivers: only other
            // frames (data, the pong to our ping, a close) count, so a server that pings and
            // sends nothing else is still found idle and dropped.
            if !matches!(frame, Some(Ok(Message::Ping))) {
                last_frame = Instant::now();
                pinged = false;
            }
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

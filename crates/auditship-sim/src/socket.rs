//! The WebSocket side: a socket per sandbox, its frames in every style, drops and oversized
//! frames.

use super::*;

pub(crate) async fn socket_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(rid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if !authorized(&state, &headers, &query) {
        return (StatusCode::UNAUTHORIZED, "invalid token").into_response();
    }
    let Some(sb) = state.sandbox(&rid) else {
        return (StatusCode::NOT_FOUND, "no such sandbox").into_response();
    };
    if state.config.no_socket.contains(&rid) {
        return (StatusCode::NOT_FOUND, "socket endpoint not available").into_response();
    }
    let f = &state.faults;
    if nth_fault(&f.handshakes, state.config.refuse_every_handshakes, &f.refused) {
        return (StatusCode::SERVICE_UNAVAILABLE, "socket handshake refused").into_response();
    }
    // Subscribe before answering the upgrade: every event stored after the client sees the 101
    // reaches this socket, so a client that lists after connecting misses nothing.
    let delay = Duration::from_millis(state.config.subscribe_delay_ms);
    let early = delay.is_zero().then(|| sb.tx.subscribe());
    let upgrade = if state.config.wrong_subprotocol.contains(&rid) {
        upgrade
    } else {
        upgrade.protocols([SUBPROTOCOL])
    };
    let upgrade = upgrade.max_message_size(1 << 20);
    upgrade.on_upgrade(move |socket| async move {
        let rx = match early {
            Some(rx) => rx,
            None => {
                tokio::time::sleep(delay).await;
                sb.tx.subscribe()
            }
        };
        state.open_sockets.fetch_add(1, Ordering::Relaxed);
        push_events(state.clone(), sb, socket, rx).await;
        state.open_sockets.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Most frames written before one flush.
pub(crate) const FRAMES_PER_FLUSH: usize = 256;

/// Push events to one socket until it closes: in fast mode the sandbox's prepared events, as
/// fast as the client reads; otherwise what the sandbox's broadcast carries. Frames go out in
/// batches (one flush per batch): per-frame flushes would make the simulator the bottleneck.
pub(crate) async fn push_events(
    state: Arc<SimState>,
    sb: Arc<SimSandbox>,
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<Arc<SimEvent>>,
) {
    let mut frames: u64 = 0;
    loop {
        let batch = if state.config.burst {
            let batch = sb.take_unsent(FRAMES_PER_FLUSH);
            if batch.is_empty() {
                // Everything is sent: answer pings until the client leaves.
                match socket.recv().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                }
            }
            batch
        } else {
            let first = tokio::select! {
                e = rx.recv() => e,
                incoming = socket.recv() => match incoming {
                    // Reading lets axum answer pings; a close or error ends the socket.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                },
            };
            let mut batch = Vec::new();
            let mut next = first;
            loop {
                match next {
                    Ok(e) => batch.push(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // A real server drops a consumer that cannot keep up.
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                if batch.len() >= FRAMES_PER_FLUSH {
                    break;
                }
                next = match rx.try_recv() {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(_empty_or_closed) => break,
                };
            }
            batch
        };
        for event in batch {
            match feed_event(&state, &mut socket, &event, frames).await {
                Ok(()) => frames += 1,
                Err(()) => return,
            }
            if state
                .config
                .drop_every_frames
                .is_some_and(|n| frames.is_multiple_of(n))
            {
                // Drop without a close frame: the client sees a broken connection.
                state.faults.drops.fetch_add(1, Ordering::Relaxed);
                let _ = socket.flush().await;
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

/// Queue one event's frame on `socket` (and the garbage or oversized frame the knobs put
/// before it). `Err` when the socket is gone.
pub(crate) async fn feed_event(
    state: &SimState,
    socket: &mut WebSocket,
    event: &SimEvent,
    frames: u64,
) -> Result<(), ()> {
    if state.config.garbage_ratio > 0.0 && rand::random::<f64>() < state.config.garbage_ratio {
        state.frames_garbage.fetch_add(1, Ordering::Relaxed);
        let garbage = if frames.is_multiple_of(2) {
            "this is not json{"
        } else {
            r#"{"no_id":true}"#
        };
        socket.feed(Message::Text(garbage.into())).await.map_err(drop)?;
    }
    let f = &state.faults;
    if nth_fault(&f.frames, state.config.oversize_every_frames, &f.oversized) {
        state.frames_garbage.fetch_add(1, Ordering::Relaxed);
        let huge = format!(r#"{{"id":"evt_huge","pad":"{}"}}"#, "x".repeat(1_100_000));
        socket.feed(Message::Text(huge.into())).await.map_err(drop)?;
    }
    let message = if state.config.mixed_frames {
        match frames % 4 {
            0 => Message::Text(event.json.clone()),
            1 => Message::Text(format!(r#"{{"event":{}}}"#, &*event.json).into()),
            2 => Message::Text(format!(r#"{{"data":{}}}"#, &*event.json).into()),
            _ => Message::Binary(event.json.clone().into()),
        }
    } else {
        Message::Text(event.json.clone())
    };
    socket.feed(message).await.map_err(drop)
}

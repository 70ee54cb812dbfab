//! The REST side: the list, get and sandbox-list endpoints, with the faults they inject.

use super::*;

pub(crate) async fn generate_live(state: Arc<SimState>, stop: CancellationToken) {
    let tick = Duration::from_millis(10);
    let per_tick = state.config.live_rate_per_sec * tick.as_secs_f64();
    let mut owed = 0.0;
    let mut made: u64 = 0;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        owed += per_tick;
        let n = owed.floor() as u64;
        owed -= n as f64;
        for _ in 0..n {
            if state
                .config
                .live_events_per_sandbox
                .is_some_and(|max| made >= max)
            {
                state.live_done.store(true, Ordering::Relaxed);
                return;
            }
            for sb in state.live_sandboxes() {
                sb.append(&state.config, None);
            }
            made += 1;
        }
    }
}

pub(crate) fn authorized(state: &SimState, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    let key = &state.config.api_key;
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer == Some(key.as_str()) || query.get("token") == Some(key)
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A 401, or an injected 429/5xx, before the real answer (after the injected delay).
pub(crate) async fn precheck(
    state: &SimState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<Response> {
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    if state.config.slow_response_ms > 0 {
        state.faults.slowed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(state.config.slow_response_ms)).await;
    }
    if !authorized(state, headers, query) {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"unauthorized","message":"invalid API key","request_id":"req_sim_401"}}"#
                .into(),
        ));
    }
    let roll = rand::random::<f64>();
    if roll < state.config.ratio_429 {
        state.faults.rate_limited.fetch_add(1, Ordering::Relaxed);
        let secs = state.config.retry_after_secs;
        let mut resp = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            format!(r#"{{"error":"rate limit exceeded","code":"rate_limited","retry_after":{secs}}}"#),
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{secs}")) {
            resp.headers_mut().insert("retry-after", v);
        }
        resp.headers_mut().insert(
            "x-request-id",
            axum::http::HeaderValue::from_static("req_sim_429"),
        );
        return Some(resp);
    }
    if roll < state.config.ratio_429 + state.config.ratio_5xx {
        state.faults.server_errors.fetch_add(1, Ordering::Relaxed);
        let (status, body) = match n % 3 {
            0 => (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"message":"internal error"}"#,
            ),
            1 => (StatusCode::BAD_GATEWAY, r#"{"errors":["upstream failed"]}"#),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        };
        let mut resp = json_response(status, body.into());
        resp.headers_mut().insert(
            "x-request-id",
            axum::http::HeaderValue::from_static("req_sim_5xx"),
        );
        return Some(resp);
    }
    None
}

pub(crate) async fn list_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = precheck(&state, &headers, &query).await {
        return resp;
    }
    if state.config.reject_cursors && query.contains_key("cursor") {
        return json_response(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"invalid_cursor","message":"cursor expired"}}"#.into(),
        );
    }
    let lexicographic = state.config.lexicographic_since;
    let since_text = query.get("since").cloned();
    let until_text = query.get("until").cloned();
    let since = match query.get("since") {
        Some(_) if lexicographic => None,
        Some(s) => match parse_time(s) {
            Some(t) => Some(t),
            None => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    format!(r#"{{"error":{{"code":"bad_since","message":"since {s:?} is not RFC 3339"}}}}"#),
                )
            }
        },
        None => None,
    };
    let until = query.get("until").and_then(|s| parse_time(s));
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, state.config.max_page);
    let offset = query
        .get("cursor")
        .and_then(|c| c.strip_prefix("c_"))
        .and_then(|c| usize::from_str_radix(c, 16).ok())
        .unwrap_or(0);
    let action = query.get("action");
    let host = query.get("host");
    let mut matching: Vec<Arc<SimEvent>> = Vec::new();
    // Only the first `offset + limit + 1` matches of each sandbox can reach this page (each
    // sandbox's events are in time order), and one past the page says whether there is more:
    // collecting every match would make paging a large backlog quadratic.
    let needed = offset + limit + 1;
    let mut total = 0;
    // Matches before `matching[0]` that were skipped without being collected.
    let mut skipped = 0;
    // One sandbox, no content filter: the window is a contiguous run of its events, so the
    // page is a slice (a large backlog paged by cursor would otherwise cost O(offset) a page).
    let contiguous = action.is_none() && host.is_none();
    let resource_filter = query
        .get("resource_id")
        .filter(|_| !state.config.ignore_resource_filter);
    let targets: Vec<Arc<SimSandbox>> = match resource_filter {
        Some(rid) => match state.sandbox(rid) {
            Some(sb) => vec![sb],
            None => {
                return json_response(
                    StatusCode::NOT_FOUND,
                    r#"{"error":{"code":"not_found","message":"no such sandbox"}}"#.into(),
                )
            }
        },
        None => state.live_sandboxes(),
    };
    let single = targets.len() == 1;
    for sb in targets {
        let d = sb.data.lock().unwrap_or_else(|e| e.into_inner());
        let from = match since {
            Some(s) => d.events.partition_point(|e| e.inserted_us < s),
            None => match (&since_text, lexicographic) {
                (Some(t), true) => d
                    .events
                    .partition_point(|e| e.inserted_text.as_str() < t.as_str()),
                _ => 0,
            },
        };
        if single && contiguous {
            let end = from
                + d.events[from..].partition_point(|e| match (&until_text, lexicographic) {
                    (Some(t), true) => e.inserted_text.as_str() <= t.as_str(),
                    _ => until.is_none_or(|u| e.inserted_us <= u),
                });
            total = end - from;
            skipped = offset.min(total);
            let take_to = (from + offset + limit + 1).min(end);
            matching.extend(d.events[(from + skipped).min(take_to)..take_to].iter().cloned());
            continue;
        }
        let in_window = d.events[from..]
            .iter()
            .take_while(|e| match (&until_text, lexicographic) {
                (Some(t), true) => e.inserted_text.as_str() <= t.as_str(),
                _ => until.is_none_or(|u| e.inserted_us <= u),
            });
        let wanted = |e: &&Arc<SimEvent>| {
            action.is_none_or(|a| e.json.contains(&format!(r#""action":"{a}""#)))
                && host.is_none_or(|h| e.json.contains(&format!(r#""host":"{h}""#)))
        };
        let mut taken = 0;
        for e in in_window.filter(wanted) {
            total += 1;
            if taken < needed {
                matching.push(e.clone());
                taken += 1;
            } else if state.config.list_shape != ListShape::Items
                && state.config.list_shape != ListShape::Mixed
            {
                // Only the `items` shape reports the total.
                break;
            }
        }
    }
    matching.sort_by_key(|e| e.inserted_us);
    let known = skipped + matching.len();
    let end = (offset + limit).min(known);
    let mut page: Vec<Arc<SimEvent>> = matching
        .get(offset.saturating_sub(skipped)..end.saturating_sub(skipped))
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    if state.config.shuffle_pages {
        // Reverse pairs: a cheap, deterministic disorder.
        for pair in page.chunks_mut(2) {
            pair.reverse();
        }
    }
    let array = format!(
        "[{}]",
        page.iter().map(|e| &*e.json).collect::<Vec<_>>().join(",")
    );
    let shape = match state.config.list_shape {
        ListShape::Mixed => {
            let all = ListShape::EVERY;
            all[(state.requests.load(Ordering::Relaxed) % all.len() as u64) as usize]
        }
        s => s,
    };
    let has_more = end < known;
    let body = match shape {
        ListShape::Bare | ListShape::Mixed => array,
        ListShape::Data => format!(r#"{{"data":{array}}}"#),
        ListShape::Events => format!(r#"{{"events":{array},"has_more":{has_more}}}"#),
        ListShape::Audit => format!(r#"{{"audit":{array},"next_cursor":null}}"#),
        ListShape::Items => format!(
            r#"{{"items":{array},"page":{{"page":{},"page_size":{limit},"total":{total}}}}}"#,
            offset / limit + 1
        ),
        ListShape::Cursor => {
            let next = if has_more {
                format!(r#""c_{end:x}""#)
            } else {
                "null".into()
            };
            format!(r#"{{"data":{array},"next_cursor":{next},"has_more":{has_more}}}"#)
        }
    };
    let f = &state.faults;
    if nth_fault(&f.lists, state.config.hang_every_lists, &f.hung) {
        return hanging_response(body);
    }
    json_response(StatusCode::OK, body)
}

/// Count one more of something (`seen`) and say whether it is an Nth one, a fault to inject
/// (`every` N; `None`: never), counting the injection in `injected`.
pub(crate) fn nth_fault(seen: &AtomicU64, every: Option<u64>, injected: &AtomicU64) -> bool {
    let nth = seen.fetch_add(1, Ordering::Relaxed) + 1;
    let hit = every.is_some_and(|n| nth.is_multiple_of(n));
    if hit {
        injected.fetch_add(1, Ordering::Relaxed);
    }
    hit
}

/// A 200 whose body stops halfway and never ends: a server that hangs mid-response.
pub(crate) fn hanging_response(body: String) -> Response {
    let mut half = body.into_bytes();
    half.truncate(half.len() / 2);
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(half))]);
    let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    let mut resp = Response::new(axum::body::Body::from_stream(stream));
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) async fn get_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = precheck(&state, &headers, &query).await {
        return resp;
    }
    for sb in state.every_sandbox() {
        let d = sb.data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = d.events.iter().find(|e| e.id == id) {
            let body = match state.requests.load(Ordering::Relaxed) % 3 {
                0 => e.json.to_string(),
                1 => format!(r#"{{"data":{}}}"#, e.json),
                _ => format!(r#"{{"event":{}}}"#, e.json),
            };
            return json_response(StatusCode::OK, body);
        }
    }
    json_response(
        StatusCode::NOT_FOUND,
        r#"{"error":{"code":"not_found","message":"no such event"}}"#.into(),
    )
}

pub(crate) async fn sandboxes_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = precheck(&state, &headers, &query).await {
        return resp;
    }
    let items: Vec<serde_json::Value> = state
        .live_sandboxes()
        .iter()
        .map(|sb| serde_json::json!({"id": sb.id, "status": "running", "template_type": "miosa-sandbox"}))
        .collect();
    json_response(StatusCode::OK, serde_json::json!({ "data": items }).to_string())
}

//! Paging through the list endpoint: the pager behind `list_all`, `list_from`, catch-ups and
//! polls.

use super::*;

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
    pub(super) warned_ties: bool,
    /// The server refused a `next_cursor` it gave us, or its cursors went round in a circle
    /// or stopped moving: page by `since` from now on.
    ignore_cursor: bool,
    /// The cursors followed since the last `since` request: one coming back is a loop.
    followed: std::collections::HashSet<String>,
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
            followed: std::collections::HashSet::new(),
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
                self.followed.clear();
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
        let via_cursor = self.cursor.is_some();
        let frontier_before = self.frontier_us();
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
        // A cursor that comes back, or a cursor page that neither moved this pager's frontier
        // nor brought an event, would be followed forever, spending the key's shared budget:
        // `since`-paging from the frontier reached is always correct, and it ends.
        if let Some(c) = &self.cursor {
            let repeated = !self.followed.insert(c.clone());
            let stalled = via_cursor && events.is_empty() && self.frontier_us() == frontier_before;
            if repeated || stalled {
                tracing::warn!(
                    resource_id = self.base.resource_id.as_deref().unwrap_or("*"),
                    why = if repeated {
                        "a next_cursor came back"
                    } else {
                        "a cursor page brought nothing new"
                    },
                    "the server's cursor paging does not move forward; paging by since instead"
                );
                self.ignore_cursor = true;
                self.cursor = None;
            }
        }
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

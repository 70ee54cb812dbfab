//! Where each sandbox stands as events pass the batcher, and where its source resumes.

use std::sync::Arc;

use auditship_sink::Event;

use crate::client::{CursorText, Position, StartAt};
use crate::store::SavedPosition;

/// Where one sandbox stands as events pass the batcher: its position ahead of the saved one
/// (a [`SavedPosition`] once the batches holding its events commit).
#[derive(Clone, Debug, Default)]
pub(super) struct PendingPosition {
    cursor_us: Option<i64>,
    /// The cursor time as the server spelled it (inline: no allocation, and the event's buffer,
    /// perhaps a whole list page, is not kept alive).
    cursor_src: Option<CursorText>,
    ties: Vec<Arc<str>>,
    last_id: Option<Arc<str>>,
    shipped: u64,
    /// Whether the open batch holds an event of this sandbox.
    pub(super) in_batch: bool,
    /// What the open batch changes, as indices into it, resolved when it closes: pushing an
    /// event then reads only its header, not its bytes or its id's count, which are cold by
    /// the time the batcher sees them (a profile had copying the cursor text here at 3-4% of
    /// the process: benches/HISTORY.md, change 11).
    open: OpenBatch,
}

/// A sandbox's changes in the open batch (see [`PendingPosition::resolve`]).
#[derive(Clone, Debug, Default)]
pub(super) struct OpenBatch {
    /// Whether the cursor time moved forward (the ties then start afresh).
    advanced: bool,
    /// The event that moved it last.
    cursor_at: Option<usize>,
    /// Events at the newest cursor time (or without one).
    ties: Vec<usize>,
    /// The sandbox's last event.
    last: Option<usize>,
}

impl PendingPosition {
    pub(super) fn from_saved(c: &SavedPosition) -> Self {
        PendingPosition {
            cursor_us: c.cursor_us,
            cursor_src: c.cursor_text.as_deref().map(CursorText::new),
            ties: c.tie_ids.iter().map(|s| Arc::from(s.as_str())).collect(),
            last_id: c.last_event_id.as_deref().map(Arc::from),
            shipped: c.events_shipped,
            in_batch: false,
            open: OpenBatch::default(),
        }
    }

    /// [`PendingPosition::advance`] for the event at `index` of the open batch, read when it closes
    /// ([`PendingPosition::resolve`]).
    pub(super) fn advance_at(&mut self, e: &Event, index: usize) {
        let open = &mut self.open;
        match (e.cursor_us, self.cursor_us) {
            (Some(c), p) if p.is_none_or(|p| c > p) => {
                self.cursor_us = Some(c);
                open.advanced = true;
                open.cursor_at = Some(index);
                open.ties.clear();
                open.ties.push(index);
            }
            (Some(c), Some(p)) if c < p => {}
            // Same cursor time, or an event without one (it cannot move the cursor; remember
            // its id at the current one so a resume skips it).
            _ => open.ties.push(index),
        }
        open.last = Some(index);
        self.shipped += 1;
    }

    /// Fold in the open batch's changes; `events` is that batch.
    pub(super) fn resolve(&mut self, events: &[Event]) {
        let open = &mut self.open;
        if std::mem::take(&mut open.advanced) {
            self.ties.clear();
            self.cursor_src = open.cursor_at.take().and_then(|i| events.get(i)).and_then(|e| {
                let (s, t) = e.cursor_span?;
                CursorText::from_span(&e.raw, s as usize, t as usize)
            });
        }
        self.ties.extend(
            open.ties
                .drain(..)
                .filter_map(|i| events.get(i).map(|e| e.id.clone())),
        );
        if let Some(e) = open.last.take().and_then(|i| events.get(i)) {
            self.last_id = Some(e.id.clone());
        }
    }

    /// Take `e` in at once (when the batch may not keep it, so its index would not resolve).
    pub(super) fn advance(&mut self, e: &Event) {
        self.advance_at(e, 0);
        self.resolve(std::slice::from_ref(e));
    }

    /// The position to save for `resource_id` once the batches it has seen are committed.
    pub(super) fn to_saved(&self, resource_id: &str) -> SavedPosition {
        SavedPosition {
            resource_id: resource_id.to_string(),
            last_event_id: self.last_id.as_deref().map(str::to_string),
            cursor_us: self.cursor_us,
            cursor_text: self.cursor_src.as_ref().map(|t| t.as_str().to_string()),
            tie_ids: self.ties.iter().map(|s| s.to_string()).collect(),
            events_shipped: self.shipped,
            updated_at_us: chrono::Utc::now().timestamp_micros(),
        }
    }
}

/// Where a sandbox's source begins: its committed position, else `fresh`.
pub(super) fn start_for(saved: Option<&SavedPosition>, fresh: StartAt) -> StartAt {
    match saved {
        Some(c) => StartAt::Position(Position {
            cursor_us: c.cursor_us,
            cursor_text: c.cursor_text.clone(),
            ids_at_cursor: c.tie_ids.iter().map(|s| Arc::from(s.as_str())).collect(),
        }),
        None => fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rid: &Arc<str>, id: usize, second: Option<u32>, pad: usize) -> Event {
        let time = second.map(|s| format!("2026-11-26T10:00:{s:02}.5Z"));
        let mut raw = format!(r#"{{"id":"e{id}""#);
        let mut cursor_span = None;
        if let Some(t) = &time {
            raw += r#","inserted_at":""#;
            cursor_span = Some((raw.len() as u32, (raw.len() + t.len()) as u32));
            raw += t;
            raw += "\"";
        }
        // Short events make the cursor text's fast copy fall back; long ones take it.
        raw += &format!(r#","pad":"{}"}}"#, "x".repeat(pad));
        Event {
            raw: bytes::Bytes::from(raw),
            id: Arc::from(format!("e{id}")),
            resource_id: rid.clone(),
            cursor_us: second.map(|s| 1_000_000 * i64::from(s)),
            cursor_span,
            time_us: None,
            seq: id as u64,
        }
    }

    #[test]
    fn positions_resolved_when_a_batch_closes_equal_those_read_per_event() {
        let rid: Arc<str> = Arc::from("sb-1");
        // Forward, ties, an older event, events without a time, a batch with no advance.
        let seconds = [
            Some(1),
            Some(2),
            Some(2),
            None,
            Some(1),
            Some(3),
            Some(3),
            Some(3),
            None,
            Some(2),
            Some(2),
            Some(4),
            None,
            Some(5),
            Some(5),
        ];
        for cuts in [
            vec![15],
            vec![3, 6, 10, 15],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        ] {
            let mut eager = PendingPosition::default();
            let mut lazy = PendingPosition::default();
            let mut from = 0;
            for (k, cut) in cuts.iter().enumerate() {
                let batch: Vec<Event> = (from..*cut)
                    .map(|i| event(&rid, i, seconds[i], if k % 2 == 0 { 0 } else { 64 }))
                    .collect();
                for (i, e) in batch.iter().enumerate() {
                    eager.advance(e);
                    lazy.advance_at(e, i);
                }
                lazy.resolve(&batch);
                let (a, b) = (eager.to_saved("sb-1"), lazy.to_saved("sb-1"));
                assert_eq!(
                    (
                        &a.last_event_id,
                        a.cursor_us,
                        &a.cursor_text,
                        &a.tie_ids,
                        a.events_shipped
                    ),
                    (
                        &b.last_event_id,
                        b.cursor_us,
                        &b.cursor_text,
                        &b.tie_ids,
                        b.events_shipped
                    ),
                    "cuts {cuts:?}, batch {k}"
                );
                from = *cut;
            }
            let end = eager.to_saved("sb-1");
            assert_eq!(end.cursor_text.as_deref(), Some("2026-11-26T10:00:05.5Z"));
            assert_eq!(end.tie_ids, ["e13", "e14"]);
            assert_eq!(end.last_event_id.as_deref(), Some("e14"));
        }
    }
}

//! The ids-seen window: what removes the overlap of list pages and socket frames.

use super::*;

/// Ids emitted recently, for removing the overlap of list pages and socket frames. Ids are
/// opaque, so they are remembered by cursor time: every id within `window` of the newest cursor
/// time seen.
pub(crate) struct Seen {
    pub(super) ids: HashMap<Arc<str>, i64, foldhash::fast::RandomState>,
    /// Ids newer than every id before them, in arrival (so strictly rising cursor) order: they
    /// cannot be repeats, and a repeat of one is found by its cursor time (a binary search), so
    /// they are hashed into `ids` only once cursor times are mixed. A live socket's steady
    /// stream, and the overlaps of its catch-ups and sweep, never hash it.
    pub(super) log: VecDeque<(i64, Arc<str>)>,
    /// Whether an event's cursor time was not `inserted_at`. The same event could then carry
    /// two cursor times (a frame without `inserted_at`, its list copy with it), and "newer than
    /// everything" no longer proves it new.
    pub(super) mixed_cursors: bool,
    pub(super) newest: Option<i64>,
    /// `newest` as the server spelled it.
    pub(super) newest_text: Option<CursorText>,
    pub(super) window_us: i64,
    pub(super) inserts_since_prune: usize,
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

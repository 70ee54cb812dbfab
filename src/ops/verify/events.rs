//! Every event read, indexed: duplicated ids and per-sandbox time gaps.

use super::*;

/// Every event read: where each id was first seen, and per sandbox the cursor times.
#[derive(Default)]
pub(super) struct EventIndex {
    /// Hash of (sandbox, id) → (object, byte offset of its stretch, line in the stretch).
    first: HashMap<u128, (u32, u64, u64)>,
    objects: Vec<String>,
    object_index: HashMap<String, u32>,
    /// Per (object holding the repeat, object holding the first): how many, and the first
    /// repeat's description.
    dups: BTreeMap<(u32, u32), (u64, String)>,
    times: HashMap<String, Vec<i64>>,
    /// The stretch being read: its repeats and times, kept apart until it decoded whole, so
    /// that a corrupt compressed stretch (whose decoder emits garbage before its checksum
    /// fails) adds no findings beyond `altered`.
    pending_dups: BTreeMap<(u32, u32), (u64, String)>,
    pending_times: HashMap<String, Vec<i64>>,
}

impl EventIndex {
    /// Read a stretch of `object` that starts at byte `offset` (see [`manifest::read_unit`]),
    /// adding every event to the index; returns the read's result and what the stretch holds.
    pub(super) fn read(
        &mut self,
        raw: impl Read,
        compression: UnitCompression,
        object: &str,
        offset: u64,
    ) -> (std::io::Result<(String, u64)>, manifest::Summary) {
        let mut summarizer = Summarizer::default();
        let read = manifest::read_unit(raw, compression, |chunk| {
            summarizer.feed(chunk, |l| self.add(l, object, offset))
        });
        let summary = summarizer.finish_with(|l| self.add(l, object, offset));
        let pending_times = std::mem::take(&mut self.pending_times);
        let pending_dups = std::mem::take(&mut self.pending_dups);
        if read.is_ok() {
            for (rid, times) in pending_times {
                self.times.entry(rid).or_default().extend(times);
            }
            for (pair, (n, first)) in pending_dups {
                let seen = self.dups.entry(pair).or_insert((0, String::new()));
                seen.0 += n;
                if seen.1.is_empty() {
                    seen.1 = first;
                }
            }
        } else if let Some(&o) = self.object_index.get(object) {
            // Rare (the stretch is reported altered): forget the ids it added.
            self.first
                .retain(|_, &mut (fo, foff, _)| fo != o || foff != offset);
        }
        (read, summary)
    }

    pub(super) fn add(&mut self, line: &manifest::Line<'_>, object: &str, offset: u64) {
        let Some(id) = line.id else { return };
        let o = match self.object_index.get(object) {
            Some(&o) => o,
            None => {
                self.objects.push(object.to_string());
                let o = (self.objects.len() - 1) as u32;
                self.object_index.insert(object.to_string(), o);
                o
            }
        };
        let key = key_of(line.resource_id, id);
        match self.first.get(&key) {
            Some(&(fo, foff, fline)) => {
                let place = |obj: u32, off: u64, l: u64| {
                    let name = self.objects.get(obj as usize).map_or("?", String::as_str);
                    if off == 0 {
                        format!("{name} line {l}")
                    } else {
                        format!("{name} (stretch at byte {off}) line {l}")
                    }
                };
                let seen = self.pending_dups.entry((o, fo)).or_insert((0, String::new()));
                seen.0 += 1;
                if seen.1.is_empty() {
                    seen.1 = format!(
                        "event {id:?} of sandbox {:?} at {} was already at {}",
                        line.resource_id,
                        place(o, offset, line.number),
                        place(fo, foff, fline)
                    );
                }
            }
            None => {
                self.first.insert(key, (o, offset, line.number));
            }
        }
        if let Some(t) = line.cursor_us {
            match self.pending_times.get_mut(line.resource_id) {
                Some(v) => v.push(t),
                None => {
                    self.pending_times.insert(line.resource_id.to_string(), vec![t]);
                }
            }
        }
    }

    /// One line per (object, object it repeats): `(detail, object)`.
    pub(super) fn duplicates(&mut self) -> Vec<(String, String)> {
        let name = |o: u32| self.objects.get(o as usize).cloned().unwrap_or_default();
        std::mem::take(&mut self.dups)
            .into_iter()
            .map(|((o, fo), (n, first))| {
                let detail = if n == 1 {
                    first
                } else {
                    format!("{n} events already in {} (the first: {first})", name(fo))
                };
                (detail, name(o))
            })
            .collect()
    }

    /// Events per (sandbox, hour), and per sandbox the first and last cursor time.
    #[allow(clippy::type_complexity)]
    pub(super) fn hours(&self) -> (BTreeMap<(String, i64), u64>, BTreeMap<String, (i64, i64)>) {
        let mut counts = BTreeMap::new();
        let mut spans = BTreeMap::new();
        for (rid, times) in &self.times {
            for t in times {
                *counts
                    .entry((rid.clone(), crate::store::hour_of(*t)))
                    .or_default() += 1;
            }
            if let (Some(lo), Some(hi)) = (times.iter().min(), times.iter().max()) {
                spans.insert(rid.clone(), (*lo, *hi));
            }
        }
        (counts, spans)
    }

    /// `(sandbox, from, to)` for every gap above `max_us` between consecutive cursor times.
    pub(super) fn gaps(&mut self, max_us: i64) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        let mut sandboxes: Vec<_> = self.times.iter_mut().collect();
        sandboxes.sort_by(|a, b| a.0.cmp(b.0));
        for (rid, times) in sandboxes {
            times.sort_unstable();
            for w in times.windows(2) {
                if w[1] - w[0] > max_us {
                    out.push((rid.clone(), w[0], w[1]));
                }
            }
        }
        out
    }
}

/// A 128-bit digest of (sandbox, id): collisions are out of reach, and it is a quarter the size
/// of the strings.
pub(super) fn key_of(rid: &str, id: &str) -> u128 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((rid.len() as u64).to_le_bytes());
    h.update(rid.as_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_le_bytes(b)
}

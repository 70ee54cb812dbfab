//! [`Sealer`]: what a sink's seals become, read back only where the sink did not hash as it wrote.

use super::*;

/// The sink-task side of manifests: turns a sink's seals into hashed, summarised stretches.
pub(crate) struct Sealer {
    pub(crate) store: Store,
    pub(crate) pipeline: String,
    pub(crate) sink: String,
    /// How far each unit is sealed as far as this run knows, entries not yet committed included
    /// (the store only knows committed ones).
    pub(crate) ends: HashMap<String, u64>,
}

impl Sealer {
    pub(crate) fn new(store: Store, pipeline: &str, sink: &str) -> Self {
        Sealer {
            store,
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
            ends: HashMap::new(),
        }
    }

    /// Read every new stretch `sealed` closes. A stretch that cannot be read is left out with
    /// an error in the log; the unit's next seal (at the latest, the next start) covers it.
    pub(crate) async fn stretches(&mut self, sealed: Vec<Sealed>) -> Vec<Stretch> {
        // Seals of one unit in one call (a restart's seal, then a rotation) start where the
        // unit's last entry ends: keep the furthest, as one stretch.
        let mut furthest: Vec<Sealed> = Vec::with_capacity(sealed.len());
        let mut at: HashMap<String, usize> = HashMap::new();
        for s in sealed {
            match at.get(&s.unit) {
                Some(&i) if furthest[i].end < s.end => furthest[i] = s,
                Some(_) => {}
                None => {
                    at.insert(s.unit.clone(), furthest.len());
                    furthest.push(s);
                }
            }
        }
        let mut work = Vec::new();
        let mut done = Vec::new();
        for s in furthest {
            let start = match self.ends.get(&s.unit) {
                Some(end) => *end,
                None => match self.store.sealed_end(&self.pipeline, &self.sink, &s.unit).await {
                    Ok(end) => end,
                    Err(e) => {
                        tracing::error!(sink = %self.sink, unit = %s.unit, error = %e, "cannot read the manifest's record of a unit; it is entered at its next seal");
                        continue;
                    }
                },
            };
            if s.end < start {
                tracing::error!(sink = %self.sink, unit = %s.unit, sealed_bytes = start, now_bytes = s.end, "archive unit is shorter than its manifest entries say: it was changed outside auditship (auditship verify names it)");
                self.ends.insert(s.unit, start);
                continue;
            }
            if s.end == start {
                self.ends.insert(s.unit, start);
                continue;
            }
            if let Some(p) = s.precomputed.as_ref().filter(|p| p.start == start) {
                // The sink hashed and counted the stretch as it wrote it: no read-back.
                self.ends.insert(s.unit.clone(), s.end);
                done.push(Stretch {
                    unit: s.unit.clone(),
                    offset: start,
                    length: s.end - start,
                    compression: s.compression,
                    sha256: hex(&p.sha256),
                    summary: Summary {
                        events: p.events,
                        unidentified: 0,
                        sandboxes: p.sandboxes.iter().map(span_of).collect(),
                    },
                });
                continue;
            }
            work.push((s, start));
        }
        if work.is_empty() {
            return done;
        }
        let read = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(s, start)| {
                    let r = read_stretch(&s, start);
                    (s.unit, s.end, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sink = %self.sink, error = %e, "reading sealed units failed; they are entered at their next seal");
                return done;
            }
        };
        let mut out = done;
        for (unit, end, r) in read {
            match r {
                Ok(stretch) => {
                    self.ends.insert(unit, end);
                    out.push(stretch);
                }
                Err(e) => {
                    tracing::error!(sink = %self.sink, unit = %unit, error = %e, "cannot read a sealed unit to enter it in the manifest; it is entered at its next seal");
                }
            }
        }
        out
    }
}

/// A sink's span facts as a manifest entry shows them.
pub(crate) fn span_of(f: &auditship_sink::SpanFacts) -> SandboxSpan {
    SandboxSpan {
        resource_id: f.resource_id.to_string(),
        events: f.events,
        first_id: f.first_id.to_string(),
        first_cursor: f.first_cursor_us.map(crate::client::format_time),
        last_id: f.last_id.to_string(),
        last_cursor: f.last_cursor_us.map(crate::client::format_time),
    }
}

/// Read the stretch `[start, s.end)` of a sealed unit.
pub(crate) fn read_stretch(s: &Sealed, start: u64) -> std::io::Result<Stretch> {
    let want = s.end - start;
    let stretch = match &s.content {
        Some(bytes) => {
            let part = usize::try_from(start)
                .ok()
                .zip(usize::try_from(s.end).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(|| std::io::Error::other("the sealed range is outside the unit's bytes"))?;
            Stretch::read(&s.unit, start, part, s.compression)?
        }
        None => {
            let mut file = std::fs::File::open(&s.unit)?;
            file.seek(std::io::SeekFrom::Start(start))?;
            Stretch::read(&s.unit, start, file.take(want), s.compression)?
        }
    };
    if stretch.length != want {
        return Err(std::io::Error::other(format!(
            "expected {want} bytes from offset {start}, found {}; the file was changed outside auditship",
            stretch.length
        )));
    }
    Ok(stretch)
}

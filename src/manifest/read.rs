//! Reading a unit back: its bytes hashed as stored, decoded, and summarised per sandbox.

use super::*;

/// Passes bytes through, hashing and counting them.
pub(crate) struct Hashing<R> {
    pub(crate) inner: R,
    pub(crate) hasher: Sha256,
    pub(crate) count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Read a unit's bytes from `raw` to its end: hash them as stored, decode them (every gzip
/// member / zstd frame in turn) and hand the NDJSON to `lines` in chunks that end at a line
/// break (the last may not). Returns the SHA-256 (hex) and the number of stored bytes.
pub fn read_unit(
    raw: impl Read,
    compression: UnitCompression,
    mut lines: impl FnMut(Bytes),
) -> Result<(String, u64), std::io::Error> {
    let mut hashing = Hashing {
        inner: raw,
        hasher: Sha256::new(),
        count: 0,
    };
    {
        let mut decoded = compression.decoder(&mut hashing)?;
        const CHUNK: usize = 1 << 20;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        loop {
            let filled = buf.len();
            buf.resize(filled + CHUNK, 0);
            let n = decoded.read(&mut buf[filled..])?;
            buf.truncate(filled + n);
            if n == 0 {
                if !buf.is_empty() {
                    lines(Bytes::from(std::mem::take(&mut buf)));
                }
                break;
            }
            if let Some(cut) = memchr::memrchr(b'\n', &buf[filled..]).map(|i| filled + i + 1) {
                let rest = buf.split_off(cut);
                lines(Bytes::from(std::mem::replace(&mut buf, rest)));
            } else if buf.len() > auditship_sink::MAX_LINE_BYTES {
                // One line, still open, past any event's size: a tampered unit.
                return Err(auditship_sink::line_too_long());
            }
        }
    }
    // Whatever the decoder left unread (bytes after the last frame) still counts.
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    Ok((hex(&hashing.hasher.finalize()), hashing.count))
}

/// Guess a unit's encoding from its first bytes (gzip and zstd magic numbers).
pub fn sniff(first: &[u8]) -> UnitCompression {
    if first.starts_with(&[0x1f, 0x8b]) {
        UnitCompression::Gzip
    } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        UnitCompression::Zstd
    } else {
        UnitCompression::None
    }
}

/// What a stretch holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines.
    pub events: u64,
    /// Lines without an id.
    pub unidentified: u64,
    /// Per sandbox, in order of first appearance.
    pub sandboxes: Vec<SandboxSpan>,
}

/// One line of a unit, as [`Summarizer::feed`] shows it to its visitor.
#[derive(Debug)]
pub struct Line<'a> {
    /// 1-based line number within the stretch.
    pub number: u64,
    /// The event's id, if the line has one.
    pub id: Option<&'a str>,
    /// Its sandbox (empty when the line has none).
    pub resource_id: &'a str,
    /// Its cursor time, µs since the Unix epoch.
    pub cursor_us: Option<i64>,
}

/// Counts and summarises NDJSON fed to it in chunks (see [`read_unit`]).
#[derive(Debug, Default)]
pub struct Summarizer {
    pub(crate) summary: Summary,
    pub(crate) index: std::collections::HashMap<String, usize>,
    pub(crate) last: Option<usize>,
    pub(crate) number: u64,
    /// The start of a line the previous chunk did not finish.
    pub(crate) partial: Vec<u8>,
    /// Per span, its last event's cursor time.
    pub(crate) last_cursor_us: Vec<Option<i64>>,
}

impl Summarizer {
    /// Take a chunk; `visit` sees every complete line.
    pub fn feed(&mut self, chunk: Bytes, mut visit: impl FnMut(&Line<'_>)) {
        let chunk = if self.partial.is_empty() {
            chunk
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(&chunk);
            Bytes::from(joined)
        };
        let mut start = 0usize;
        while let Some(end) = memchr::memchr(b'\n', &chunk[start..]).map(|i| start + i) {
            self.line(chunk.slice(start..end), &mut visit);
            start = end + 1;
        }
        self.partial.extend_from_slice(&chunk[start..]);
    }

    /// The summary (a last line without a line break counts too).
    pub fn finish(mut self) -> Summary {
        self.finish_with(|_| {})
    }

    /// [`Summarizer::finish`], showing the last line to `visit`.
    pub fn finish_with(&mut self, mut visit: impl FnMut(&Line<'_>)) -> Summary {
        if !self.partial.is_empty() {
            let last = Bytes::from(std::mem::take(&mut self.partial));
            self.line(last, &mut visit);
        }
        for (i, us) in std::mem::take(&mut self.last_cursor_us).into_iter().enumerate() {
            if let Some(span) = self.summary.sandboxes.get_mut(i) {
                span.last_cursor = us.map(crate::client::format_time);
            }
        }
        std::mem::take(&mut self.summary)
    }

    pub(crate) fn line(&mut self, line: Bytes, visit: &mut impl FnMut(&Line<'_>)) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.number += 1;
        let number = self.number;
        let summary = &mut self.summary;
        summary.events += 1;
        let event = AuditEvent::from_json(line).ok().filter(|e| !e.id().is_empty());
        let Some(event) = event else {
            summary.unidentified += 1;
            visit(&Line {
                number,
                id: None,
                resource_id: "",
                cursor_us: None,
            });
            return;
        };
        let rid = event.resource_id().unwrap_or("");
        let i = match self.last.filter(|&i| summary.sandboxes[i].resource_id == rid) {
            Some(i) => i,
            None => match self.index.get(rid) {
                Some(&i) => i,
                None => {
                    summary.sandboxes.push(SandboxSpan {
                        resource_id: rid.to_string(),
                        events: 0,
                        first_id: event.id().to_string(),
                        first_cursor: event.cursor_us().map(crate::client::format_time),
                        last_id: String::new(),
                        last_cursor: None,
                    });
                    self.index.insert(rid.to_string(), summary.sandboxes.len() - 1);
                    summary.sandboxes.len() - 1
                }
            },
        };
        self.last = Some(i);
        let span = &mut summary.sandboxes[i];
        span.events += 1;
        span.last_id.clear();
        span.last_id.push_str(event.id());
        // Formatted once, at the end: most lines are not the last.
        if let Some(slot) = self.last_cursor_us.get_mut(i) {
            *slot = event.cursor_us();
        } else {
            self.last_cursor_us.resize(i, None);
            self.last_cursor_us.push(event.cursor_us());
        }
        visit(&Line {
            number,
            id: Some(event.id()),
            resource_id: rid,
            cursor_us: event.cursor_us(),
        });
    }
}

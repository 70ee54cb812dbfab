//! Bytes after a file's committed length that auditship did not write: told apart from its own
//! uncommitted tail, and set aside instead of cut off.
//!
//! At start the sink rolls every file back to the length its checkpoint committed: what follows
//! is normally the tail of a write that was never committed (a crash, a failed flush), and its
//! events are fetched again. But someone else may have appended (an operator's note, another
//! program pointed at the same file, a restore that merged two copies); cutting that off would
//! destroy bytes that are not ours. So the tail is read first. What the sink writes is NDJSON:
//! lines that are JSON objects, or gzip members / zstd frames of such lines, the last one
//! possibly torn by the crash. A tail of anything else is foreign: the file is moved aside under
//! [`SET_ASIDE_PREFIX`] (nothing is deleted) and the start stops with an error naming both
//! files, the committed length and what to do. A foreign tail that is itself whole JSON-object
//! lines in the archive's format cannot be told from ours and is rolled back; the README says so.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::rc::Rc;

use auditship_sink::{UnitCompression, EXPANSION_FLOOR_BYTES, MAX_EXPANSION, MAX_LINE_BYTES};

use super::*;

/// Files set aside start with this (auditship's own namespace: no sandbox id encodes to it, and
/// `verify` does not take it for a unit); then the time, a dot and the file's own name.
pub(crate) const SET_ASIDE_PREFIX: &str = "auditship.set-aside.";

/// Why the bytes of `path` after `from` are not what this sink writes, or `None` if they are
/// (or there are none).
pub(crate) fn foreign_tail(
    path: &Path,
    from: u64,
    compression: UnitCompression,
) -> std::io::Result<Option<String>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(no_link)?;
    let total = file.metadata()?.len().saturating_sub(from);
    file.seek(SeekFrom::Start(from))?;
    let consumed = Rc::new(Cell::new(0));
    let mut raw = Consumed {
        inner: BufReader::new(file.take(total)),
        consumed: consumed.clone(),
    };
    let magic: &[u8] = match compression {
        UnitCompression::None => b"",
        UnitCompression::Gzip => &[0x1f, 0x8b],
        UnitCompression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
        // A file sink writes lines only: nothing after its sealed bytes is a Parquet file of its.
        UnitCompression::Parquet => return Ok(Some("the file sink writes no Parquet".into())),
    };
    let head = raw.fill_buf()?;
    if head.is_empty() {
        return Ok(None);
    }
    // A torn write may end inside the magic itself.
    let n = head.len().min(magic.len());
    if head[..n] != magic[..n] {
        return Ok(Some(format!(
            "they do not start a {} member, and every write of this sink does",
            compression.as_str()
        )));
    }
    // Decoders that take from a `BufRead` consume exactly what they decode, so where a decoder
    // fails says what failed: at the end of the bytes, a member the crash tore; before it,
    // something that is not a member of ours.
    let decoded: Box<dyn Read> = match compression {
        UnitCompression::None => Box::new(raw),
        UnitCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        UnitCompression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        UnitCompression::Parquet => return Ok(Some("the file sink writes no Parquet".into())),
    };
    lines_are_ours(decoded, &consumed, total)
}

/// A `BufRead` that counts what its reader took.
struct Consumed<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: BufRead> Read for Consumed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Consumed<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.consumed.set(self.consumed.get() + amount as u64);
        self.inner.consume(amount);
    }
}

/// Whether `text`, decoded from `total` bytes of which `consumed` are taken so far, is
/// JSON-object lines, the last possibly torn.
fn lines_are_ours(text: impl Read, consumed: &Cell<u64>, total: u64) -> std::io::Result<Option<String>> {
    let mut text = BufReader::new(text);
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut decoded = 0u64;
    loop {
        line.clear();
        let read = (&mut text)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return Ok(None),
            Ok(n) => decoded += n as u64,
            // The member or frame the crash cut: what decoded before it was checked.
            Err(_) if consumed.get() >= total => return Ok(None),
            Err(e) => return Ok(Some(format!("they do not decode: {e}"))),
        }
        number += 1;
        if line.len() > MAX_LINE_BYTES {
            return Ok(Some(format!("line {number} of them is longer than any event")));
        }
        if decoded
            > consumed
                .get()
                .saturating_mul(MAX_EXPANSION)
                .max(EXPANSION_FLOOR_BYTES)
        {
            return Ok(Some(format!(
                "they decode to more than {MAX_EXPANSION} times their size, which no flush of events does"
            )));
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            // The last line, torn by the crash: it must at least begin like one of ours.
            return Ok((line.first() != Some(&b'{'))
                .then(|| format!("their last line (line {number}) does not begin a JSON object")));
        };
        let object =
            body.first() == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
        if !object {
            return Ok(Some(format!(
                "line {number} of them is not a JSON object: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(60)])
            )));
        }
    }
}

/// Move `path` aside (same directory, durably) and return the error that stops the start.
pub(crate) fn set_aside(path: &Path, committed: u64, actual: u64, why: &str) -> SinkError {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_file_name(format!("{SET_ASIDE_PREFIX}{secs}.{name}"));
    let moved = std::fs::rename(path, &aside).and_then(|()| {
        let dir = aside
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    });
    let found = format!(
        "{}: {} bytes follow its committed length of {committed} bytes, and auditship did not write them ({why})",
        path.display(),
        actual - committed
    );
    match moved {
        Ok(()) => SinkError::Config(format!(
            "{found}. Nothing was cut off: the file was moved to {aside} and the pipeline stopped. Its first {committed} bytes are the archive's; keep what follows elsewhere and move the rest back, for example `tail -c +{} {aside} > KEEP && truncate -s {committed} {aside} && mv {aside} {}`, then start again",
            committed + 1,
            path.display(),
            aside = aside.display(),
        )),
        Err(e) => SinkError::Config(format!(
            "{found}. Nothing was cut off, but moving the file aside to {} failed ({e}): keep its bytes after the first {committed} elsewhere, truncate it to {committed} bytes, then start again",
            aside.display()
        )),
    }
}

/// A file [`set_aside`] moved and nobody has moved back yet, for `path`.
pub(crate) fn still_set_aside(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let file = entry.file_name();
        let rest = file.to_str()?.strip_prefix(SET_ASIDE_PREFIX)?;
        let (secs, own) = rest.split_once('.')?;
        (secs.bytes().all(|b| b.is_ascii_digit()) && own == name).then(|| entry.path())
    })
}

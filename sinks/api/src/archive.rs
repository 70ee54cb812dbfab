//! Reading archives back, the one way: [`Archive`] lists and opens a sink's units wherever they
//! are (a directory here, an S3 prefix in the S3 sink's crate); [`DirArchive`] is the one
//! directory walk; [`UnitCompression::decoder`] the one decoder of a unit's bytes.
//!
//! Reconciliation, `verify`, the demo's own check and the S3 sink's recovery all read through
//! these, so they agree on which files are units and how each is decoded.

use std::io::{self, Read};
use std::path::PathBuf;

use crate::UnitCompression;

/// Where an archive's units are read from: a directory, an S3 prefix.
pub trait Archive {
    /// Every object under the root: its path relative to the root (`/`-separated) and its
    /// size, sorted by path.
    fn list(&self) -> io::Result<Vec<(String, u64)>>;
    /// Read one object.
    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>>;
    /// How to show the root in reports.
    fn root(&self) -> String;
    /// The SHA-256 of the whole object as the store keeps it, without reading the body, when
    /// the store keeps one for the whole object (S3's `ChecksumSHA256` of a single-part
    /// upload); `None` when it cannot say (a directory, a multipart object's composite
    /// checksum, an object uploaded without one).
    fn stored_sha256(&self, rel: &str) -> io::Result<Option<[u8; 32]>> {
        let _ = rel;
        Ok(None)
    }
}

/// An archive in a local directory.
#[derive(Debug, Clone)]
pub struct DirArchive {
    root: PathBuf,
}

impl DirArchive {
    /// The archive under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirArchive { root: root.into() }
    }
}

impl Archive for DirArchive {
    /// Every regular file under the root. Symbolic links are never followed, to a directory
    /// (the walk could loop, or leave the archive) or to a file (a sink never makes one, so it
    /// is no unit of the archive): a unit replaced by a link reads as missing.
    fn list(&self) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let meta = std::fs::metadata(&self.root)?;
        if !meta.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory; give the directory the sink writes into",
                self.root.display()
            )));
        }
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child_rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                // `file_type` describes the entry itself, not what a link points to.
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push((entry.path(), child_rel));
                } else if kind.is_file() {
                    out.push((child_rel, entry.metadata()?.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(self.root.join(rel))?,
        )))
    }

    fn root(&self) -> String {
        self.root.display().to_string()
    }
}

impl UnitCompression {
    /// A unit's compression by its name's extension: `.gz` gzip, `.zst` zstd, `.ndjson`,
    /// `.jsonl`, `.json` and `.log` none, `.parquet` Parquet. `None`: the name is no unit's (a
    /// manifest, say).
    pub fn from_extension(name: &str) -> Option<Self> {
        if name.ends_with(".parquet") {
            Some(UnitCompression::Parquet)
        } else if name.ends_with(".gz") {
            Some(UnitCompression::Gzip)
        } else if name.ends_with(".zst") {
            Some(UnitCompression::Zstd)
        } else if [".ndjson", ".jsonl", ".json", ".log"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            Some(UnitCompression::None)
        } else {
            None
        }
    }

    /// The decoded bytes of `raw`, a unit stored with this compression: every gzip member or
    /// zstd frame in turn (sinks flush in independent members and frames).
    ///
    /// A unit that decodes to more than [`MAX_EXPANSION`] times the bytes read of it (past
    /// [`EXPANSION_FLOOR_BYTES`]) is refused with an `InvalidData` error as it reads: a
    /// tampered archive's decompression bomb must not take a reader's memory or hours of its
    /// time. Readers report that unit as unreadable (verify: altered).
    pub fn decoder<'a>(self, raw: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        self.decoder_with_floor(raw, EXPANSION_FLOOR_BYTES)
    }

    /// [`UnitCompression::decoder`] with another floor (tests use a small one).
    fn decoder_with_floor<'a>(self, raw: impl Read + 'a, floor: u64) -> io::Result<Box<dyn Read + 'a>> {
        let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let counted = Counted {
            inner: raw,
            read: read.clone(),
        };
        let decoded: Box<dyn Read + 'a> = match self {
            UnitCompression::None => return Ok(Box::new(counted.inner)),
            UnitCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
            UnitCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(counted)?),
            UnitCompression::Parquet => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a Parquet unit holds rows, not lines of JSON: it is checked by its hash",
                ))
            }
        };
        Ok(Box::new(Bounded {
            inner: decoded,
            read,
            decoded: 0,
            floor,
        }))
    }
}

/// The most a compressed unit may expand: JSON lines of audit events compress 5 to 30 times.
pub const MAX_EXPANSION: u64 = 200;

/// Decoded bytes always allowed, whatever the ratio (a small unit of very alike events).
pub const EXPANSION_FLOOR_BYTES: u64 = 64 << 20;

/// Counts the stored bytes a decoder has read.
struct Counted<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// A decoder that fails once its output passes [`MAX_EXPANSION`] times its input.
struct Bounded<'a> {
    inner: Box<dyn Read + 'a>,
    read: std::rc::Rc<std::cell::Cell<u64>>,
    decoded: u64,
    floor: u64,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.decoded += n as u64;
        let allowed = self.read.get().saturating_mul(MAX_EXPANSION).max(self.floor);
        if self.decoded > allowed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "decodes to more than {MAX_EXPANSION} times its stored size ({} bytes from {}): a decompression bomb, not a unit a sink wrote",
                    self.decoded,
                    self.read.get()
                ),
            ));
        }
        Ok(n)
    }
}

/// The longest line readers take: far above any event (the client refuses REST bodies over
/// 16 MiB and socket frames over 1 MiB), far below what would exhaust a reader's memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// The error for a line over [`MAX_LINE_BYTES`].
pub fn line_too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a line longer than {MAX_LINE_BYTES} bytes: no event is that long"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn the_walk_lists_files_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        std::fs::create_dir_all(root.join("sb-1")).unwrap();
        std::fs::write(root.join("sb-1/2026-11-01.ndjson"), b"{}\n").unwrap();
        std::fs::write(root.join("top.ndjson"), b"").unwrap();
        // A link to a directory holding the archive itself (a loop), and one to a file outside.
        std::os::unix::fs::symlink(&root, root.join("sb-1/loop")).unwrap();
        let outside = dir.path().join("outside.ndjson");
        std::fs::write(&outside, b"{\"id\":\"forged\"}\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sb-1/linked.ndjson")).unwrap();
        let listed = DirArchive::new(&root).list().unwrap();
        assert_eq!(
            listed,
            [
                ("sb-1/2026-11-01.ndjson".to_string(), 3),
                ("top.ndjson".to_string(), 0)
            ]
        );
    }

    #[test]
    fn every_compression_decodes_what_the_sinks_write_member_by_member() {
        let mut gz = Vec::new();
        for part in ["a\n", "b\n"] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(part.as_bytes()).unwrap();
            gz.extend(enc.finish().unwrap());
        }
        let mut zst = zstd::stream::encode_all(&b"a\n"[..], 3).unwrap();
        zst.extend(zstd::stream::encode_all(&b"b\n"[..], 3).unwrap());
        for (name, body) in [
            ("u.ndjson", b"a\nb\n".to_vec()),
            ("u.ndjson.gz", gz),
            ("u.ndjson.zst", zst),
        ] {
            let compression = UnitCompression::from_extension(name).unwrap();
            let mut text = String::new();
            compression
                .decoder(&body[..])
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, "a\nb\n", "{name}");
        }
        assert_eq!(UnitCompression::from_extension("auditship.manifest"), None);
    }

    /// 16 MiB of zeros compress to a few KiB: with a 1 MiB floor both decoders stop with
    /// `InvalidData` a little past the floor, while the same bytes as a real unit's (events,
    /// 10 times smaller compressed) decode whole.
    #[test]
    fn a_decompression_bomb_is_refused_and_a_real_unit_is_not() {
        let bomb_plain = vec![0u8; 16 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&bomb_plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&bomb_plain[..], 3).unwrap();
        for (c, raw) in [(UnitCompression::Gzip, gz), (UnitCompression::Zstd, zst)] {
            assert!(
                raw.len() * (MAX_EXPANSION as usize) < bomb_plain.len(),
                "{c:?}: not a bomb"
            );
            let mut out = Vec::new();
            let e = c
                .decoder_with_floor(&raw[..], 1 << 20)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{c:?}: {e}");
            assert!(e.to_string().contains("decompression bomb"), "{e}");
            assert!(
                out.len() <= 4 << 20,
                "{c:?}: {} bytes decoded before stopping",
                out.len()
            );
        }
        let events: String = (0..20_000)
            .map(|i| {
                format!(
                    "{{\"id\":\"evt_{i}\",\"resource_id\":\"sb-{}\",\"host\":\"h{}.example.com\"}}\n",
                    i % 7,
                    i * 7919 % 1000
                )
            })
            .collect();
        let zst = zstd::encode_all(events.as_bytes(), 3).unwrap();
        let mut out = Vec::new();
        UnitCompression::Zstd
            .decoder_with_floor(&zst[..], 1 << 16)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, events.as_bytes());
    }
}

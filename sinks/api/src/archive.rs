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
    /// `.jsonl`, `.json` and `.log` none. `None`: the name is no unit's (a manifest, say).
    pub fn from_extension(name: &str) -> Option<Self> {
        if name.ends_with(".gz") {
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
    pub fn decoder<'a>(self, raw: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            UnitCompression::None => Box::new(raw),
            UnitCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            UnitCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
        })
    }
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
}

//! [`FileManifests`]: the manifest entries written to an `auditship.manifest` file in each
//! directory of the archive, and the signed digests to `auditship.digest/` at its root.

use super::*;

/// Writes manifest entries to an [`MANIFEST_NAME`] file in each unit's directory, one JSON line
/// per entry, appended and fsync'd. An entry whose line the file already holds is not written
/// again, so publishing after a crash is idempotent; a torn last line (a crash mid-append) is cut
/// off first. Digests go to [`DIGEST_DIR`] under `root`, one file each.
#[derive(Debug, Clone, Default)]
pub struct FileManifests {
    /// The archive's root: the fixed directory of the sink's path template.
    pub root: PathBuf,
}

impl FileManifests {
    /// Publish to the archive under `root` (the fixed directory of the sink's path template).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileManifests { root: root.into() }
    }

    /// Write `digest` to `root/auditship.digest/NAME` without an async runtime: to a temporary
    /// name, fsync'd, renamed, the directory fsync'd. A file already there with the same bytes
    /// is left; with other bytes it is an error, not retried: a digest is never replaced.
    pub fn publish_digest_blocking(root: &Path, digest: &DigestFile) -> Result<(), SinkError> {
        let path = root.join(DIGEST_DIR).join(&digest.name);
        let dir = path.parent().unwrap_or(root).to_path_buf();
        let what = |e| SinkError::io(format!("writing digest {}", path.display()), e);
        match std::fs::read(&path) {
            Ok(have) if have == digest.body.as_bytes() => return Ok(()),
            Ok(_) => {
                return Err(SinkError::Remote {
                    message: format!(
                        "digest {} already exists with other content; a digest is never replaced: if the file was changed, restore it from a backup or move it aside (auditship verify names what no longer checks); if another pipeline writes this archive, give each its own",
                        path.display()
                    ),
                    retryable: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(what(e)),
        }
        auditship_sink::create_dir_all_durable(&dir, 0o750).map_err(what)?;
        // A crash leaves the temporary file; the retry writes it again from the start.
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp"));
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| what(crate::recovery::no_link(e)))?;
        file.write_all(digest.body.as_bytes()).map_err(what)?;
        file.sync_all().map_err(what)?;
        std::fs::rename(&tmp, &path).map_err(what)?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| SinkError::io(format!("syncing directory {}", dir.display()), e))
    }

    /// Publish without an async runtime (what [`ManifestPublisher::publish`] runs off the
    /// async workers).
    pub fn publish_blocking(entries: &[ManifestLine]) -> Result<(), SinkError> {
        let mut by_dir: Vec<(PathBuf, Vec<&str>)> = Vec::new();
        let mut index: HashMap<PathBuf, usize> = HashMap::new();
        for e in entries {
            let dir = Path::new(&e.unit)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let i = *index.entry(dir.clone()).or_insert_with(|| {
                by_dir.push((dir, Vec::new()));
                by_dir.len() - 1
            });
            by_dir[i].1.push(&e.line);
        }
        let mut files: Vec<File> = Vec::new();
        let mut new_dirs: Vec<File> = Vec::new();
        for (dir, lines) in &by_dir {
            let path = dir.join(MANIFEST_NAME);
            let what = |e| SinkError::io(format!("writing manifest {}", path.display()), e);
            let existed = path.exists();
            let mut file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .mode(0o640)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| what(crate::recovery::no_link(e)))?;
            let mut have = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut have).map_err(what)?;
            // A crash mid-append leaves a line without its newline: cut it, it is written again.
            let whole = have.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if whole < have.len() {
                tracing::warn!(path = %path.display(), bytes = have.len() - whole, "cutting a torn last line off the manifest");
                file.set_len(whole as u64).map_err(what)?;
                have.truncate(whole);
            }
            let present: std::collections::HashSet<&[u8]> =
                have.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
            let mut out = Vec::new();
            for line in lines {
                if !present.contains(line.as_bytes()) {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
            }
            if out.is_empty() {
                continue;
            }
            file.write_all(&out).map_err(what)?;
            files.push(file);
            if !existed {
                new_dirs.push(
                    File::open(dir)
                        .map_err(|e| SinkError::io(format!("opening directory {}", dir.display()), e))?,
                );
            }
        }
        let mut to_sync: Vec<(&File, &str, bool)> = files.iter().map(|f| (f, "a manifest", false)).collect();
        to_sync.extend(new_dirs.iter().map(|d| (d, "a directory", true)));
        sync_all_parallel(&to_sync)
    }
}

#[async_trait]
impl ManifestPublisher for FileManifests {
    async fn publish(&self, entries: &[ManifestLine]) -> Result<(), SinkError> {
        let entries = entries.to_vec();
        tokio::task::spawn_blocking(move || Self::publish_blocking(&entries))
            .await
            .map_err(|e| SinkError::Remote {
                message: format!("manifest writer failed: {e}"),
                retryable: true,
            })?
    }

    async fn publish_digest(&self, digest: &DigestFile) -> Result<(), SinkError> {
        let (root, digest) = (self.root.clone(), digest.clone());
        tokio::task::spawn_blocking(move || Self::publish_digest_blocking(&root, &digest))
            .await
            .map_err(|e| SinkError::Remote {
                message: format!("digest writer failed: {e}"),
                retryable: true,
            })?
    }
}

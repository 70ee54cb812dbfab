//! [`FileManifests`]: the manifest entries written to an `auditship.manifest` file in each
//! directory of the archive.

use super::*;

/// Writes manifest entries to an [`MANIFEST_NAME`] file in each unit's directory, one JSON line
/// per entry, appended and fsync'd. An entry whose line the file already holds is not written
/// again, so publishing after a crash is idempotent; a torn last line (a crash mid-append) is cut
/// off first.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileManifests;

impl FileManifests {
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
}

//! Directories that survive a power cut. `mkdir` only changes the parent directory's entries,
//! and those reach the disk when the parent is fsynced: a file can be fsynced and its
//! checkpoint committed while the directory holding it is still only in the page cache, and a
//! power cut then loses the file with its events marked shipped. So every level created here
//! is fsynced into its parent before the call returns; the new files' own entries are the
//! caller's to sync (the file sink syncs each new file's directory in the flush that made it).

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Create `dir` and any missing parents with `mode` (as `mkdir -p`), fsyncing the parent of
/// every level it creates. Levels that exist are left as they are (a symlink to a directory
/// counts as one: an operator's choice of where the data lives).
///
/// ```
/// # let tmp = std::env::temp_dir().join(format!("auditship-durable-doc-{}", std::process::id()));
/// auditship_sink::create_dir_all_durable(&tmp.join("a/b/c"), 0o750)?;
/// assert!(tmp.join("a/b/c").is_dir());
/// auditship_sink::create_dir_all_durable(&tmp.join("a/b/c"), 0o750)?; // exists: nothing to do
/// # std::fs::remove_dir_all(&tmp)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn create_dir_all_durable(dir: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut level = dir;
    loop {
        if level.as_os_str().is_empty() {
            break;
        }
        match std::fs::metadata(level) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", level.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(level);
                match level.parent() {
                    Some(parent) => level = parent,
                    None => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for level in missing.iter().rev() {
        match DirBuilder::new().mode(mode).create(level) {
            Ok(()) => {}
            // Another writer made it meanwhile; its entry may not be synced yet, so sync anyway.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let parent = level
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_every_missing_level_with_its_mode_and_refuses_a_file_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all_durable(&deep, 0o750).unwrap();
        for level in ["a", "a/b", "a/b/c"] {
            let mode = std::fs::metadata(tmp.path().join(level))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o750 & !umask(), "{level}");
        }
        create_dir_all_durable(&deep, 0o750).unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let e = create_dir_all_durable(&tmp.path().join("f"), 0o750).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let e = create_dir_all_durable(&tmp.path().join("f/g"), 0o750).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
    }

    fn umask() -> u32 {
        // The process's umask applies to mkdir's mode; read it back from a fresh directory.
        let tmp = tempfile::tempdir().unwrap();
        let probe = tmp.path().join("probe");
        DirBuilder::new().mode(0o777).create(&probe).unwrap();
        !std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777
    }
}

//! Start-up: every registered file rolled back to its committed length, and the generation each
//! template path resumes at.

use super::*;

/// What start-up found of a registered file.
pub(crate) enum Recovered {
    /// Gone (moved or deleted by someone else).
    Missing,
    /// Untouched for [`IDLE_AFTER`] and exactly its committed length.
    Idle,
    /// Anything else: keep tracking it.
    Active,
}

/// Truncate `path` to `len` if it is longer; a shorter file means data was removed by someone
/// else, which we report loudly but cannot repair. With `check`, the bytes after `len` are
/// first read: if auditship did not write them, the file is set aside and the error says so
/// ([`crate::foreign`]). `reset` passes `None`: it cuts what this process just wrote.
pub(crate) fn roll_back(
    path: &Path,
    len: u64,
    check: Option<UnitCompression>,
) -> Result<Recovered, SinkError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(aside) = crate::foreign::still_set_aside(path) {
                return Err(SinkError::Config(format!(
                    "{} was set aside as {} because bytes auditship did not write followed its committed length of {len} bytes; move it back without them (see the error of the start that set it aside), or delete {} to give the file up",
                    path.display(),
                    aside.display(),
                    aside.display()
                )));
            }
            if len > 0 {
                tracing::error!(path = %path.display(), committed_bytes = len, "archive file is missing although its checkpoint says it holds data; no longer tracking it");
            }
            return Ok(Recovered::Missing);
        }
        Err(e) => {
            return Err(SinkError::io(
                format!("reading {} for recovery", path.display()),
                e,
            ))
        }
    };
    let actual = meta.len();
    if actual > len {
        if let Some(compression) = check {
            let why = crate::foreign::foreign_tail(path, len, compression)
                .map_err(|e| SinkError::io(format!("reading {} for recovery", path.display()), e))?;
            if let Some(why) = why {
                return Err(crate::foreign::set_aside(path, len, actual, &why));
            }
        }
        tracing::info!(path = %path.display(), dropped_bytes = actual - len, "rolling back bytes written after the last checkpoint");
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .and_then(|file| file.set_len(len).and_then(|_| file.sync_all()))
            .map_err(|e| SinkError::io(format!("truncating {}", path.display()), e))?;
        return Ok(Recovered::Active);
    }
    if actual < len {
        tracing::error!(path = %path.display(), committed_bytes = len, actual_bytes = actual, "archive file is shorter than its checkpoint says: it was changed outside auditship");
        return Ok(Recovered::Active);
    }
    let idle = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age >= IDLE_AFTER);
    Ok(if idle { Recovered::Idle } else { Recovered::Active })
}

/// The relative path of generation `generation` of a template path: the number goes before the
/// first extension, `2026-11-25.ndjson.gz` → `2026-11-25.1.ndjson.gz`.
pub(crate) fn generation_path(rendered: &str, generation: u32) -> String {
    if generation == 0 {
        return rendered.to_string();
    }
    let name_start = rendered.rfind('/').map_or(0, |i| i + 1);
    let name = &rendered[name_start..];
    match name[1.min(name.len())..].find('.') {
        Some(dot) => {
            let at = name_start + 1 + dot;
            format!("{}.{generation}{}", &rendered[..at], &rendered[at..])
        }
        None => format!("{rendered}.{generation}"),
    }
}

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;

pub(crate) fn format_day(day: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(day.saturating_mul(MICROS_PER_DAY)) {
        Some(t) if day != i64::MIN => t.format("%Y-%m-%d").to_string(),
        _ => "undated".to_string(),
    }
}

/// Open `path` for appending at `expected_len`, creating it (and its directories) if needed.
/// Returns the file, whether it was created, and its length after any truncation.
pub(crate) fn open_for_append(
    path: &Path,
    expected_len: u64,
    compression: UnitCompression,
) -> Result<(File, bool, u64), SinkError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            auditship_sink::create_dir_all_durable(dir, 0o750)
                .map_err(|e| SinkError::io(format!("creating directory {}", dir.display()), e))?;
        }
    }
    let existed = path.exists();
    // Never through a link: one in the archive could point anywhere, and appending or
    // truncating there would write outside it.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| SinkError::io(format!("opening {}", path.display()), no_link(e)))?;
    let len = file
        .metadata()
        .map_err(|e| SinkError::io(format!("reading {}", path.display()), e))?
        .len();
    if len > expected_len {
        // A closed file ends at its durable length (a reset rolled back any failed attempt):
        // more is someone else's unless it reads as ours.
        let why = crate::foreign::foreign_tail(path, expected_len, compression)
            .map_err(|e| SinkError::io(format!("reading {}", path.display()), e))?;
        if let Some(why) = why {
            drop(file);
            return Err(crate::foreign::set_aside(path, expected_len, len, &why));
        }
        file.set_len(expected_len)
            .map_err(|e| SinkError::io(format!("truncating {}", path.display()), e))?;
        return Ok((file, !existed, expected_len));
    }
    Ok((file, !existed, len))
}

/// Where a template path starts this run: the newest generation that is registered or on disk.
pub(crate) fn starting_generation(
    recovered: &HashMap<String, u64>,
    legacy: &HashMap<String, String>,
    rendered: &str,
) -> u32 {
    let mut generation = 0;
    loop {
        let next = generation_path(rendered, generation + 1);
        if recovered.contains_key(&next) || legacy.contains_key(&next) || Path::new(&next).exists() {
            generation += 1;
        } else {
            return generation;
        }
    }
}

/// `ELOOP` from an `O_NOFOLLOW` open, said plainly.
pub(crate) fn no_link(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        std::io::Error::new(
            e.kind(),
            "it is a symbolic link, and the file sink never writes through one (it could point outside the archive); replace it with the file itself",
        )
    } else {
        e
    }
}

/// The lock files in an archive's base directory start with this (auditship's own namespace:
/// no sandbox id encodes to it); the pipeline's and the sink's names follow.
pub(crate) const LOCK_PREFIX: &str = "auditship.lock.";

/// An archive's lock, held while the sink lives: two processes with their own checkpoint
/// databases writing one archive would roll back each other's files at every start.
#[derive(Debug)]
pub(crate) struct ArchiveLock {
    _file: File,
}

/// Take the lock of sink `sink` of pipeline `pipeline` on the archive under `base` (creating
/// the directory and the lock file), or say who holds it. Per sink: two sinks of one pipeline
/// may share a base directory with files of their own; the same sink in two processes (two
/// shards given one path, a copy started by hand) may not.
pub(crate) fn lock_archive(base: &Path, pipeline: &str, sink: &str) -> Result<ArchiveLock, SinkError> {
    auditship_sink::create_dir_all_durable(base, 0o750)
        .map_err(|e| SinkError::io(format!("creating directory {}", base.display()), e))?;
    let mut name = LOCK_PREFIX.to_string();
    auditship_sink::encode_component(&mut name, pipeline);
    name.push('.');
    auditship_sink::encode_component(&mut name, sink);
    let path = base.join(name);
    let holder = format!("pipeline {pipeline}, sink {sink}");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| SinkError::io(format!("opening {}", path.display()), no_link(e)))?;
    if file.try_lock().is_err() {
        let mut other = String::new();
        let _ = std::io::Read::read_to_string(&mut file, &mut other);
        return Err(SinkError::Config(format!(
            "the archive {} is being written by another auditship process ({}; lock {}); two processes writing one archive would roll back each other's files after a crash: give each its own path (shards: put ${{AUDITSHIP_SHARD}} in it)",
            base.display(),
            other.trim(),
            path.display()
        )));
    }
    // Who holds it, for the next one to name; the lock itself is the flock, not this text.
    let _ = file.set_len(0);
    let _ = std::io::Write::write_all(
        &mut file,
        format!("{holder}, pid {}\n", std::process::id()).as_bytes(),
    );
    Ok(ArchiveLock { _file: file })
}

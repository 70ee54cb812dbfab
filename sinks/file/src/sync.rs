//! Making a flush's writes durable: the fsync of its files and of the directories of new ones,
//! which may run while the next flush writes.

use super::*;

/// One flush's writes, made durable by an fsync that runs while the next flush writes (see
/// [`FileSink::flush`]). Until it completes, none of its lengths move.
pub(crate) struct Round {
    /// Per slot written: its key, the file's length after the round, the stretch's hash after
    /// it, and the round's events by sandbox.
    pub(crate) lens: Vec<(String, u64, Option<Sha256>, Spans)>,
    /// The last batch the round holds.
    pub(crate) through: u64,
}

/// What a round's fsync covers: a handle on each file it wrote (with its path, for errors), and
/// the directories of the files it created.
pub(crate) struct ToSync {
    pub(crate) files: Vec<(File, String)>,
    pub(crate) dirs: Vec<PathBuf>,
}

/// A round and its fsync, running off the async workers.
pub(crate) struct InFlight {
    pub(crate) round: Round,
    /// The fsync's outcome; closed without one if the fsync thread panicked.
    pub(crate) done: tokio::sync::oneshot::Receiver<Result<(), SinkError>>,
}

impl InFlight {
    /// Start `round`'s fsync.
    pub(crate) fn start(round: Round, to_sync: ToSync) -> InFlight {
        let (tx, done) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(sync_round(to_sync));
        });
        InFlight { round, done }
    }
}

/// The outcome of a round's fsync, as received.
pub(crate) fn synced(
    outcome: Result<Result<(), SinkError>, tokio::sync::oneshot::error::RecvError>,
) -> Result<(), SinkError> {
    outcome.map_err(|_| SinkError::Remote {
        message: "the file sink's fsync thread failed".into(),
        retryable: false,
    })?
}

/// fsync a round's files, then the directories of the files it created (see
/// [`sync_all_parallel`]).
pub(crate) fn sync_round(ToSync { files, mut dirs }: ToSync) -> Result<(), SinkError> {
    let refs: Vec<(&File, &str, bool)> = files.iter().map(|(f, p)| (f, p.as_str(), false)).collect();
    sync_all_parallel(&refs)?;
    sync_dirs(&mut dirs)
}

/// fsync each directory once (its new entries), in full.
pub(crate) fn sync_dirs(dirs: &mut Vec<PathBuf>) -> Result<(), SinkError> {
    dirs.sort();
    dirs.dedup();
    let mut opened: Vec<File> = Vec::new();
    for dir in dirs.iter() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir.as_path()
        };
        opened.push(
            File::open(dir).map_err(|e| SinkError::io(format!("opening directory {}", dir.display()), e))?,
        );
    }
    let refs: Vec<(&File, &str, bool)> = opened.iter().map(|d| (d, "a directory", true)).collect();
    sync_all_parallel(&refs)
}

/// fsync every file, several at a time. With a file per sandbox a flush can touch thousands of
/// files; one after the other, each waits for its own journal commit, while concurrent fsyncs
/// share commits (ext4, xfs). Measured on this project's 2-core VM with 2,000 files per flush:
/// see the closing note of the change that added this.
pub(crate) fn sync_all_parallel(files: &[(&File, &str, bool)]) -> Result<(), SinkError> {
    const THREADS: usize = 16;
    let sync = |(f, what, full): &(&File, &str, bool)| {
        let r = if *full { f.sync_all() } else { f.sync_data() };
        r.map_err(|e| SinkError::io(format!("syncing {what}"), e))
    };
    if files.len() <= 2 {
        return files.iter().try_for_each(sync);
    }
    let chunk = files.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(sync)))
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(result) => result?,
                Err(_) => {
                    return Err(SinkError::Remote {
                        message: "an fsync thread panicked".into(),
                        retryable: true,
                    })
                }
            }
        }
        Ok(())
    })
}

//! A file system that forgets what was not synced: the power-loss harness.
//!
//! `kill -9` keeps the page cache, so every kill test would pass with no fsync at all. This is a
//! FUSE file system (on the `fuser` crate, served by a thread of the test) that keeps two states
//! of everything: what the programs on it see, and what a disk would still hold after a power
//! cut. Only `fsync`/`fdatasync` of a file copies its bytes (and length) to the second state,
//! and only `fsync` of a directory copies its entries (a new file, a new subdirectory, a rename,
//! an unlink): the strictest reading of POSIX, which is what a program must assume of an
//! unknown disk. [`Disk::power_cut`] takes the durable state at one instant, kills the process
//! at once, unmounts, and mounts that state again: whatever was not synced is gone, as after a
//! power loss.
//!
//! It needs `/dev/fuse` and root (the mount is made directly, without `fusermount`). Writes go
//! through to the file system (no writeback cache), so the kernel holds nothing that could
//! survive the cut; the remount starts the kernel's caches afresh.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Within one mount only the kernel changes the tree, so its caches stay right; a cut remounts.
const TTL: Duration = Duration::from_secs(1);

/// A regular file: what readers see, and what a power cut leaves.
#[derive(Clone, Default)]
struct FileData {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// The byte range changed since the last sync (a union; syncing copies it).
    dirty: Option<(usize, usize)>,
}

impl FileData {
    fn touch(&mut self, from: usize, to: usize) {
        self.dirty = Some(match self.dirty {
            Some((a, b)) => (a.min(from), b.max(to)),
            None => (from, to),
        });
    }

    fn sync(&mut self) {
        if let Some((from, to)) = self.dirty.take() {
            let len = self.data.len();
            self.durable.resize(len, 0);
            let to = to.min(len);
            if from < to {
                self.durable[from..to].copy_from_slice(&self.data[from..to]);
            }
        }
    }
}

/// A directory: its entries now, and as of its last fsync.
#[derive(Clone, Default)]
struct DirData {
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Clone)]
enum Kind {
    File(FileData),
    Dir(DirData),
}

#[derive(Clone)]
struct Node {
    kind: Kind,
    mode: u32,
    mtime: SystemTime,
}

/// Every inode ever made since the last cut (an unlinked one may still be open, or still be
/// named by a durable entry), and what the harness counted.
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// fsync/fdatasync of files, and fsync of directories, since the mount was first made.
    file_syncs: u64,
    dir_syncs: u64,
}

impl State {
    fn empty() -> State {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                kind: Kind::Dir(DirData::default()),
                mode: 0o755,
                mtime: SystemTime::now(),
            },
        );
        State {
            nodes,
            next_ino: 2,
            file_syncs: 0,
            dir_syncs: 0,
        }
    }

    /// What a power cut now would drop: bytes written since their file's last sync, and
    /// directory entries made, removed or renamed since their directory's.
    /// Counted over the tree as it stands, leaving out SQLite's `-shm` files: shared memory
    /// that SQLite never syncs and rebuilds after a crash, whose bytes would swamp the count.
    fn unsynced(&self) -> Dropped {
        let mut d = Dropped::default();
        let mut todo = vec![(OsString::new(), 1u64)];
        while let Some((name, ino)) = todo.pop() {
            match self.nodes.get(&ino).map(|n| &n.kind) {
                Some(Kind::File(f)) => {
                    if let (Some((from, to)), false) = (f.dirty, name.to_string_lossy().ends_with("-shm")) {
                        d.bytes += to.saturating_sub(from) as u64;
                    }
                }
                Some(Kind::Dir(dir)) => {
                    let changed = |a: &BTreeMap<OsString, u64>, b: &BTreeMap<OsString, u64>| {
                        a.iter().filter(|(n, i)| b.get(*n) != Some(*i)).count() as u64
                    };
                    d.entries += changed(&dir.entries, &dir.durable) + changed(&dir.durable, &dir.entries);
                    todo.extend(dir.entries.iter().map(|(n, i)| (n.clone(), *i)));
                }
                None => {}
            }
        }
        d
    }

    /// What a power cut now would leave: the tree reachable from the root through durable
    /// entries, each file holding its durable bytes.
    fn after_power_cut(&self) -> State {
        let mut nodes = HashMap::new();
        let mut todo = vec![1u64];
        while let Some(ino) = todo.pop() {
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            if nodes.contains_key(&ino) {
                continue;
            }
            let kind = match &node.kind {
                Kind::File(f) => Kind::File(FileData {
                    data: f.durable.clone(),
                    durable: f.durable.clone(),
                    dirty: None,
                }),
                Kind::Dir(d) => {
                    todo.extend(d.durable.values().copied());
                    Kind::Dir(DirData {
                        entries: d.durable.clone(),
                        durable: d.durable.clone(),
                    })
                }
            };
            nodes.insert(
                ino,
                Node {
                    kind,
                    mode: node.mode,
                    mtime: node.mtime,
                },
            );
        }
        State {
            nodes,
            next_ino: self.next_ino,
            file_syncs: self.file_syncs,
            dir_syncs: self.dir_syncs,
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File(f) => (FileType::RegularFile, f.data.len() as u64, 1),
            Kind::Dir(_) => (FileType::Directory, 0, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: (node.mode & 0o7777) as u16,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut DirData, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir(d)) => Ok(d),
            Some(Kind::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File(f)) => Ok(f),
            Some(Kind::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    fn make(&mut self, parent: u64, name: &OsStr, kind: Kind, mode: u32) -> Result<FileAttr, Errno> {
        let ino = self.next_ino;
        let dir = self.dir(parent)?;
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.entries.insert(name.to_owned(), ino);
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                mode,
                mtime: SystemTime::now(),
            },
        );
        self.attr(ino)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        match (&self.nodes.get(&ino).ok_or(Errno::ENOENT)?.kind, want_dir) {
            (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir(parent)?.entries.remove(name);
        Ok(())
    }

    fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        if let Some(&target) = self.dir(new_parent)?.entries.get(new_name) {
            if let Some(Kind::Dir(d)) = self.nodes.get(&target).map(|n| &n.kind) {
                if !d.entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        self.dir(parent)?.entries.remove(name);
        self.dir(new_parent)?.entries.insert(new_name.to_owned(), ino);
        Ok(())
    }
}

/// The `fuser` side: every call answers from the shared state.
struct LossyFs {
    state: Arc<Mutex<State>>,
    /// How long a sync takes before it makes anything durable: a disk's flush. Written data
    /// stays at risk that long, so cuts land in the window often, as they would on a disk.
    sync_delay: Duration,
}

impl LossyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in a handler poisons the lock; the state is still whole (each call changes it
        // in one step), and the test fails on its own assertions.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.state().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let r = (|| {
            if let Some(size) = size {
                let f = s.file(ino.0)?;
                let old = f.data.len();
                let new = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
                f.data.resize(new, 0);
                f.touch(old.min(new), old.max(new));
            }
            let node = s.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(mode) = mode {
                node.mode = mode;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => node.mtime = t,
                Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
                None => {}
            }
            s.attr(ino.0)
        })();
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let kind = Kind::Dir(DirData::default());
        reply_entry(reply, self.state().make(parent.0, name, kind, mode & !umask));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let kind = Kind::File(FileData::default());
        reply_entry(reply, self.state().make(parent.0, name, kind, mode & !umask));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let kind = Kind::File(FileData::default());
        match self.state().make(parent.0, name, kind, mode & !umask) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        reply_empty(reply, self.state().rename(parent.0, name, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().attr(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.state();
        match s.file(ino.0) {
            Ok(f) => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX).min(f.data.len());
                let to = from.saturating_add(size as usize).min(f.data.len());
                reply.data(&f.data[from..to]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let r = (|| {
            let f = s.file(ino.0)?;
            let from = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
            let to = from + data.len();
            if f.data.len() < to {
                f.data.resize(to, 0);
            }
            f.data[from..to].copy_from_slice(data);
            f.touch(from, to);
            s.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?.mtime = SystemTime::now();
            Ok(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        std::thread::sleep(self.sync_delay);
        let mut s = self.state();
        s.file_syncs += 1;
        let r = s.file(ino.0).map(FileData::sync);
        reply_empty(reply, r);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut s = self.state();
        let entries: Vec<(OsString, u64)> = match s.dir(ino.0) {
            Ok(d) => d.entries.iter().map(|(n, i)| (n.clone(), *i)).collect(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![(OsString::from("."), ino.0), (OsString::from(".."), ino.0)];
        all.extend(entries);
        for (i, (name, child)) in all.into_iter().enumerate().skip(offset as usize) {
            let kind = match s.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        std::thread::sleep(self.sync_delay);
        let mut s = self.state();
        s.dir_syncs += 1;
        let r = s.dir(ino.0).map(|d| d.durable = d.entries.clone());
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Room enough that nothing on it ever sees a full disk.
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// What power cuts dropped: unsynced bytes and unsynced directory entries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dropped {
    pub bytes: u64,
    pub entries: u64,
}

impl std::ops::AddAssign for Dropped {
    fn add_assign(&mut self, other: Dropped) {
        self.bytes += other.bytes;
        self.entries += other.entries;
    }
}

/// A mounted [`LossyFs`]; unmounted when dropped.
pub struct Disk {
    state: Arc<Mutex<State>>,
    sync_delay: Duration,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Disk {
    /// Mount an empty lossy file system at `mountpoint` (an empty directory), whose syncs each
    /// take `sync_delay` before they make anything durable.
    pub fn mount(mountpoint: &Path, sync_delay: Duration) -> Result<Disk, String> {
        let state = Arc::new(Mutex::new(State::empty()));
        let session = serve(&state, sync_delay, mountpoint)?;
        Ok(Disk {
            state,
            sync_delay,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// Cut the power under `pid`: the durable state is taken, the process killed (SIGKILL) in
    /// the same breath, and once it is gone the file system is mounted again holding only that
    /// state.
    pub fn power_cut(&mut self, child: &mut std::process::Child) -> Result<Dropped, String> {
        let (dropped, survivor) = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // Killed while the lock is held: nothing it does after this instant reaches the
            // file system.
            // SAFETY: kill(2) on our own child's pid, which we have not yet waited for.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            (s.unsynced(), s.after_power_cut())
        };
        child
            .wait()
            .map_err(|e| format!("waiting for the killed process: {e}"))?;
        self.unmount()?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = survivor;
        self.session = Some(serve(&self.state, self.sync_delay, &self.mountpoint)?);
        Ok(dropped)
    }

    /// (file fsyncs, directory fsyncs) served so far.
    pub fn syncs(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.file_syncs, s.dir_syncs)
    }

    fn unmount(&mut self) -> Result<(), String> {
        match self.session.take() {
            Some(session) => session
                .umount_and_join()
                .map_err(|e| format!("unmounting {}: {e}", self.mountpoint.display())),
            None => Ok(()),
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("{e}");
        }
    }
}

fn serve(
    state: &Arc<Mutex<State>>,
    sync_delay: Duration,
    mountpoint: &Path,
) -> Result<fuser::BackgroundSession, String> {
    let fs = LossyFs {
        state: state.clone(),
        sync_delay,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("auditship-lossyfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
        format!(
            "mounting the power-loss file system at {}: {e}. It needs /dev/fuse and root \
             (modprobe fuse; run the tests as root, as CI does)",
            mountpoint.display()
        )
    })
}

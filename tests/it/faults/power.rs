//! Power cuts: the process killed and, in the same instant, every write it had not synced
//! dropped (the lossy file system of [`crate::lossyfs`]). The checkpoint database (with its WAL)
//! and the archive, or the S3 sink's staging beside the database, sit on that file system. The
//! directories the pipeline file names exist and are synced before the first start, as an
//! operator's `/var/lib/auditship` would be; everything below them is auditship's to make
//! durable (a new sandbox's directory above all: a directory whose entry was never synced
//! vanishes with its files while the checkpoint that counted them survives).

use std::process::Command;

use super::*;
use crate::lossyfs::{Disk, Dropped};

/// Put `dirs` (directories directly under the workspace that the pipeline names) on a lossy
/// disk mounted at `disk/`: each made there and synced, the pipeline pointed at it, and a
/// symbolic link left at the old place for the tests' readers.
fn on_lossy_disk(ws: &Workspace, dirs: &[&str]) -> Disk {
    let root = ws.path();
    let mount = root.join("disk");
    std::fs::create_dir(&mount).unwrap();
    // A few milliseconds a sync, as a disk's flush takes: written data stays unsynced that
    // long, so the cuts often land where it would be lost.
    let disk = Disk::mount(&mount, Duration::from_millis(5)).unwrap_or_else(|e| panic!("{e}"));
    for d in dirs {
        std::fs::create_dir(mount.join(d)).unwrap();
        ws.point_at(
            &format!("{}/{d}/", root.display()),
            &format!("{}/disk/{d}/", root.display()),
        );
        std::os::unix::fs::symlink(format!("disk/{d}"), root.join(d)).unwrap();
    }
    std::fs::File::open(&mount).unwrap().sync_all().unwrap();
    disk
}

/// The cuts, for the table; what they dropped goes to the note, and a run whose cuts dropped
/// nothing at all (so proved nothing a kill -9 would not) fails. One kind alone may be 0: the
/// S3 staging syncs each object as soon as it is written, so its cuts often find no unsynced
/// bytes, only directory entries.
fn mark_cuts(row: &mut Row, p: Profile, dropped: Dropped) {
    row.injected = format!("{} × power cut, each followed by a restart", p.kills);
    let what = format!(
        "the cuts dropped {} unsynced bytes and {} unsynced directory entries in all",
        dropped.bytes, dropped.entries
    );
    let what = if dropped.bytes + dropped.entries == 0 {
        format!("FAILED: {what}, so they proved nothing")
    } else {
        what
    };
    row.note = [what, std::mem::take(&mut row.note)]
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
}

/// Kill rounds whose kills are power cuts of `disk`.
async fn cut_rounds(
    ws: &Workspace,
    sim: &Simulator,
    p: Profile,
    disk: &mut Disk,
) -> (Output, String, Dropped) {
    let mut dropped = Dropped::default();
    let (out, printed) = kill_rounds_by(
        ws,
        sim,
        p,
        |child| dropped += disk.power_cut(&mut child.child).unwrap_or_else(|e| panic!("{e}")),
        || {},
    )
    .await;
    (out, printed, dropped)
}

/// File sink and checkpoint database on the lossy disk.
pub(super) async fn power_file(p: Profile) -> Row {
    let started = Instant::now();
    let (sim, names) = kill_sim("pf", p).await;
    let ws = Workspace::new(&sim, &refs(&names), "", "rotate_max_bytes = 200000");
    // Declared after the workspace: unmounted before the workspace is removed.
    let mut disk = on_lossy_disk(&ws, &["archive", "state"]);
    let (out, printed, dropped) = cut_rounds(&ws, &sim, p, &mut disk).await;
    let expected = sim_lines(&sim, &refs(&names));
    let got = archived(&ws);
    let mut row = kill_row(
        "power-file",
        "power cut: unsynced writes dropped (file sink, checkpoint database)".into(),
        p,
        &expected,
        &got,
        &out,
        started,
    );
    row.leaks = key_leaks(sim.api_key(), &ws, &printed, &got);
    // The manifests survived the cuts too: every byte sealed and entered, in agreement with the
    // checkpoint database.
    let key = sim.api_key().to_string();
    let verified = ws.run(&key, &["verify", "disk/archive", "--pipeline", "pipe.toml"]);
    if verified.code != Some(0) || !verified.stdout.contains(": CLEAN") {
        row.note = format!(
            "FAILED: verify after the cuts: exit {:?}: {} {}",
            verified.code,
            last_line(&verified.stdout),
            last_line(&verified.stderr)
        );
    }
    mark_cuts(&mut row, p, dropped);
    row
}

/// S3 sink (its staging beside the checkpoint database) and the database on the lossy disk;
/// the bucket is a server's, which a power cut here does not touch.
#[cfg(feature = "s3")]
pub(super) async fn power_s3(p: Profile) -> Row {
    use auditship_sink_s3::testing::{client, create_bucket, lines, read_all, S3Server};
    let started = Instant::now();
    let server = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    let c = client(&server.endpoint()).await;
    create_bucket(&c, "power", false).await.unwrap();
    let (sim, names) = kill_sim("ps", p).await;
    let sink = format!(
        "[sinks.cold]\ntype = \"s3\"\nbucket = \"power\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nforce_path_style = true\nkey_prefix = \"a/{{resource_id}}/\"\ncompression = \"zstd\"\nbatch_max_events = 500\nbatch_timeout_ms = 300\n",
        server.endpoint()
    );
    let ws = Workspace::with_sinks(&sim, &refs(&names), "", &sink);
    let mut disk = on_lossy_disk(&ws, &["state"]);
    let (out, printed, dropped) = cut_rounds(&ws, &sim, p, &mut disk).await;
    let mut got = Vec::new();
    for o in read_all(&c, "power").await.unwrap() {
        got.extend(lines(&o.key, &o.body).unwrap());
    }
    let expected = sim_lines(&sim, &refs(&names));
    let mut row = kill_row(
        "power-s3",
        "power cut: unsynced writes dropped (S3 staging, checkpoint database)".into(),
        p,
        &expected,
        &got,
        &out,
        started,
    );
    row.leaks = key_leaks(sim.api_key(), &ws, &printed, &got);
    mark_cuts(&mut row, p, dropped);
    row
}

/// The harness itself: a cut keeps exactly what was synced, file bytes and directory entries
/// each on their own. (Without this the cases above could pass on a disk that drops nothing.)
#[test]
fn the_lossy_disk_keeps_only_what_was_synced() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    let mut disk = Disk::mount(m, Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
    let sync = |p: &std::path::Path| std::fs::File::open(p).unwrap().sync_all().unwrap();
    let write = |p: &std::path::Path, bytes: &[u8], synced: bool| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(bytes).unwrap();
        if synced {
            f.sync_all().unwrap();
        }
    };
    std::fs::create_dir(m.join("kept")).unwrap();
    sync(m);
    write(&m.join("kept/a"), b"synced\n", true);
    sync(&m.join("kept"));
    // Bytes after the last fsync.
    write(&m.join("kept/a"), b"not synced\n", false);
    // A rename not synced: the old name is what survives.
    write(&m.join("kept/d"), b"d\n", true);
    sync(&m.join("kept"));
    std::fs::rename(m.join("kept/d"), m.join("kept/e")).unwrap();
    // A file synced, but its directory's entry for it not.
    write(&m.join("kept/b"), b"synced\n", true);
    // A directory whose own entry was never synced, holding a synced file.
    std::fs::create_dir(m.join("new")).unwrap();
    write(&m.join("new/c"), b"synced\n", true);
    sync(&m.join("new"));
    // Another program's writes see everything before the cut.
    assert_eq!(std::fs::read(m.join("kept/a")).unwrap(), b"synced\nnot synced\n");

    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let dropped = disk.power_cut(&mut child).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(std::fs::read(m.join("kept/a")).unwrap(), b"synced\n");
    assert!(
        !m.join("kept/b").exists(),
        "a file whose entry was not synced survived"
    );
    assert!(
        !m.join("new").exists(),
        "a directory whose entry was not synced survived"
    );
    assert_eq!(std::fs::read(m.join("kept/d")).unwrap(), b"d\n");
    assert!(!m.join("kept/e").exists(), "an unsynced rename survived");
    assert!(dropped.bytes >= 11, "{dropped:?}");
    assert!(dropped.entries >= 3, "{dropped:?}");
    let (file_syncs, dir_syncs) = disk.syncs();
    assert!(file_syncs >= 4 && dir_syncs >= 4, "{file_syncs} {dir_syncs}");
    // The disk goes on after the cut: writes and syncs work as before.
    write(&m.join("kept/a"), b"again\n", true);
    assert_eq!(std::fs::read(m.join("kept/a")).unwrap(), b"synced\nagain\n");
    drop(disk);
}

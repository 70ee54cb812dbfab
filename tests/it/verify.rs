//! Tamper-evident archives: the archive of a real run verifies clean, and every kind of
//! tampering is found and named, on plain, gzip and zstd units, signed and unsigned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use auditship::manifest::Entry;
use auditship::ops::verify::{self, Anchor, DirArchive, Kind, Options, Report};
use auditship::sim::SimConfig;
use auditship_sink::MANIFEST_NAME;

use crate::util::{assert_exactly_once, finish, sim, sim_lines, walk, walk_all, Workspace};

const KEY_VAR: &str = "AUDITSHIP_TEST_MANIFEST_KEY";
const MANIFEST_KEY: &str = "test-manifest-key-0123456789abcdef";

/// Back-fill 3 sandboxes × 300 events into a file sink that rotates often (several units per
/// sandbox), with `compression`; `signed` adds `[manifest] hmac_key`.
async fn shipped_archive(
    ids: &[&str],
    compression: &str,
    signed: bool,
) -> (auditship::sim::Simulator, Workspace) {
    let sim = sim(
        ids,
        SimConfig {
            backlog_per_sandbox: 300,
            ..SimConfig::default()
        },
    )
    .await;
    let manifest = if signed {
        format!("[manifest]\nhmac_key = \"${{{KEY_VAR}}}\"\n")
    } else {
        String::new()
    };
    let tables = format!(
        r#"{manifest}
[sinks.archive]
type = "file"
path = "{{root}}/archive/{{resource_id}}/{{date}}.ndjson{ext}"
compression = "{compression}"
rotate_max_bytes = {rotate}
"#,
        // Compressed: a new file after every flush round, so each round is a unit.
        rotate = if compression == "none" { 12_000 } else { 1 },
        ext = match compression {
            "gzip" => ".gz",
            "zstd" => ".zst",
            _ => "",
        }
    );
    let ws = Workspace::with_tables(
        &sim,
        ids,
        // 120 a minute: a burst of 20 pages, then two a second. The pages after the burst come
        // one by one, each its own flush round, so every sandbox gets several units (a sink
        // takes every queued batch in one round, and the burst alone may make one unit each).
        "requests_per_minute = 120\npage_limit = 25",
        25,
        &tables,
    );
    let key = sim.api_key().to_string();
    let child = ws.spawn_env(
        &key,
        &["backfill", "pipe.toml", "--since", "2d"],
        &[(KEY_VAR, MANIFEST_KEY)],
    );
    let out = finish(child, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, ids));
    (sim, ws)
}

fn copy_tree(from: &Path, to: &Path) {
    let mut files = Vec::new();
    walk_all(from, &mut files);
    for f in files {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// A fresh copy of the archive to tamper with.
pub(crate) struct Copy {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
}

impl Copy {
    pub(crate) fn of(archive: &Path) -> Copy {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        copy_tree(archive, &root);
        Copy { _dir: dir, root }
    }

    /// Data files, sorted, relative to the root.
    pub(crate) fn units(&self) -> Vec<String> {
        let mut files = Vec::new();
        walk(&self.root, &mut files);
        let mut rel: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(&self.root).unwrap().display().to_string())
            .collect();
        rel.sort();
        rel
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn check(&self, opts: &Options) -> Report {
        verify::verify(&DirArchive::new(&self.root), opts).unwrap()
    }
}

/// The findings of `kind` that name `object`.
fn names(report: &Report, kind: Kind, object: &str) -> bool {
    report
        .findings
        .iter()
        .any(|f| f.kind == kind && f.object.as_deref() == Some(object))
}

pub(crate) fn kinds(report: &Report) -> Vec<Kind> {
    let mut k: Vec<Kind> = report.findings.iter().map(|f| f.kind).collect();
    k.dedup();
    k
}

/// The manifest lines of the directory holding `unit`.
fn manifest_of(copy: &Copy, unit: &str) -> (PathBuf, Vec<String>) {
    let path = copy.path(unit).parent().unwrap().join(MANIFEST_NAME);
    let lines = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (path, lines)
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Every tampering the issue names, on a copy each; `key` checks signatures.
fn tamper_cases(archive: &Path, key: Option<&str>) {
    let opts = Options {
        key: key.map(|k| auditship::transform::HmacKey::new(k.as_bytes())),
        ..Default::default()
    };
    let clean = Copy::of(archive);
    let report = clean.check(&opts);
    assert!(report.clean, "{}", report.to_text());
    let units = clean.units();
    assert!(units.len() >= 6, "several units per sandbox: {units:?}");
    assert_eq!(report.units, units.len());
    assert_eq!(
        report.entries,
        units.len(),
        "one entry per unit (each sealed once)"
    );
    assert_eq!(report.events, 900);
    assert_eq!(report.chains.len(), 1);
    assert_eq!(report.chains[0].signed, key.is_some());
    // Two units of the sandbox with the most: the second and the third of its series.
    let dir_of = |u: &str| Path::new(u).parent().unwrap().to_path_buf();
    let busiest = units
        .iter()
        .map(|u| dir_of(u))
        .max_by_key(|d| units.iter().filter(|u| dir_of(u) == *d).count())
        .unwrap();
    // In the order they were sealed (the manifest's), not by name: `x.2.ndjson` sorts before
    // `x.ndjson`, and the victim must not be the newest entry of the chain, whose removal
    // together with its line only the checkpoint database can tell.
    let series: Vec<String> = manifest_of(&clean, units.iter().find(|u| dir_of(u) == busiest).unwrap())
        .1
        .iter()
        .map(|l| {
            let unit = serde_json::from_str::<Entry>(l).unwrap().unit;
            let name = Path::new(&unit)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            busiest.join(name).display().to_string()
        })
        .collect();
    assert!(series.len() >= 3, "three units in one directory: {units:?}");
    let victim = series[1].clone();
    let other = series[2].clone();
    let first_unit = &series[0];

    // Gaps: every sandbox's events are spaced apart, so a 1 µs threshold names gaps, a year's
    // names none.
    let r = clean.check(&Options {
        max_gap_us: Some(1),
        ..opts.clone()
    });
    assert_eq!(kinds(&r), [Kind::Gap], "{}", r.to_text());
    let r = clean.check(&Options {
        max_gap_us: Some(365 * 86_400_000_000),
        ..opts.clone()
    });
    assert!(r.clean, "{}", r.to_text());

    // Flip one byte.
    let c = Copy::of(archive);
    let mut bytes = std::fs::read(c.path(&victim)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(c.path(&victim), &bytes).unwrap();
    let r = c.check(&opts);
    assert!(!r.clean && names(&r, Kind::Altered, &victim), "{}", r.to_text());
    assert_eq!(kinds(&r), [Kind::Altered], "{}", r.to_text());

    // Delete one unit.
    let c = Copy::of(archive);
    std::fs::remove_file(c.path(&victim)).unwrap();
    let r = c.check(&opts);
    assert!(names(&r, Kind::Removed, &victim), "{}", r.to_text());
    assert_eq!(kinds(&r), [Kind::Removed], "{}", r.to_text());

    // Reorder two units: swap their names.
    let c = Copy::of(archive);
    let tmp = c.path("swap.tmp");
    std::fs::rename(c.path(&victim), &tmp).unwrap();
    std::fs::rename(c.path(&other), c.path(&victim)).unwrap();
    std::fs::rename(&tmp, c.path(&other)).unwrap();
    let r = c.check(&opts);
    let named = |o: &str| r.findings.iter().any(|f| f.object.as_deref() == Some(o));
    assert!(!r.clean && named(&victim) && named(&other), "{}", r.to_text());
    assert!(
        r.findings
            .iter()
            .all(|f| [Kind::Altered, Kind::Truncated, Kind::Unsealed].contains(&f.kind)),
        "{}",
        r.to_text()
    );

    // Reorder two lines within a unit (the content is the same, the order is not).
    let c = Copy::of(archive);
    if !victim.ends_with(".gz") && !victim.ends_with(".zst") {
        let text = std::fs::read_to_string(c.path(&victim)).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(0, 1);
        std::fs::write(c.path(&victim), lines.join("\n") + "\n").unwrap();
        let r = c.check(&opts);
        assert!(names(&r, Kind::Altered, &victim), "{}", r.to_text());
    }

    // Reorder two manifest lines.
    let c = Copy::of(archive);
    let (manifest, mut lines) = manifest_of(&c, &victim);
    assert!(lines.len() >= 2);
    lines.swap(0, 1);
    write_lines(&manifest, &lines);
    let r = c.check(&opts);
    assert_eq!(kinds(&r), [Kind::OutOfOrder], "{}", r.to_text());

    // Duplicate one unit under another name.
    let c = Copy::of(archive);
    let copy_name = format!("{victim}.bak");
    std::fs::copy(c.path(&victim), c.path(&copy_name)).unwrap();
    let r = c.check(&opts);
    assert!(names(&r, Kind::Unlisted, &copy_name), "{}", r.to_text());
    assert!(names(&r, Kind::DuplicateEvent, &copy_name), "{}", r.to_text());

    // Duplicate one event inside a unit... appended after the seal.
    let c = Copy::of(archive);
    let mut bytes = std::fs::read(c.path(first_unit)).unwrap();
    let more = std::fs::read(c.path(&victim)).unwrap();
    bytes.extend_from_slice(&more);
    std::fs::write(c.path(first_unit), &bytes).unwrap();
    let r = c.check(&opts);
    assert!(names(&r, Kind::Unsealed, first_unit), "{}", r.to_text());
    assert!(names(&r, Kind::DuplicateEvent, first_unit), "{}", r.to_text());
    // --allow-unsealed accepts the bytes, not the duplicates.
    let r = c.check(&Options {
        allow_unsealed: true,
        ..opts.clone()
    });
    assert_eq!(kinds(&r), [Kind::DuplicateEvent], "{}", r.to_text());

    // Truncate one unit.
    let c = Copy::of(archive);
    let len = std::fs::metadata(c.path(&victim)).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(c.path(&victim))
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = c.check(&opts);
    assert!(names(&r, Kind::Truncated, &victim), "{}", r.to_text());

    // Remove a unit together with its manifest line: the next entry's link names it.
    let c = Copy::of(archive);
    let (manifest, lines) = manifest_of(&c, &victim);
    let name = Path::new(&victim)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let is_victim = |l: &String| {
        serde_json::from_str::<Entry>(l)
            .unwrap()
            .unit
            .ends_with(&format!("/{name}"))
    };
    let kept: Vec<String> = lines.iter().filter(|l| !is_victim(l)).cloned().collect();
    assert_eq!(kept.len() + 1, lines.len());
    write_lines(&manifest, &kept);
    std::fs::remove_file(c.path(&victim)).unwrap();
    let r = c.check(&opts);
    assert_eq!(kinds(&r), [Kind::MissingEntries], "{}", r.to_text());
    assert!(r.findings[0].detail.contains(&name), "{}", r.to_text());

    // Edit an entry (claim fewer events) and seal the edit with a fresh hash: the next entry's
    // link breaks, and a signed entry's HMAC no longer matches.
    let c = Copy::of(archive);
    let (manifest, mut lines) = manifest_of(&c, &victim);
    let i = lines.iter().position(is_victim).unwrap();
    let mut entry: Entry = serde_json::from_str(&lines[i]).unwrap();
    entry.events -= 1;
    entry.hash = entry.compute_hash();
    lines[i] = entry.to_line();
    write_lines(&manifest, &lines);
    let r = c.check(&opts);
    assert!(!r.clean, "{}", r.to_text());
    assert!(kinds(&r).contains(&Kind::BrokenLink), "{}", r.to_text());
    assert!(
        kinds(&r).contains(&Kind::EntryAltered),
        "the unit holds more events than the entry says: {}",
        r.to_text()
    );
    if key.is_some() {
        assert!(kinds(&r).contains(&Kind::BadSignature), "{}", r.to_text());
    }

    // Edit an entry without fixing its hash.
    let c = Copy::of(archive);
    let (manifest, mut lines) = manifest_of(&c, &victim);
    lines[0] = lines[0].replacen("\"events\":", "\"events\":1", 1);
    write_lines(&manifest, &lines);
    let r = c.check(&opts);
    assert!(kinds(&r).contains(&Kind::EntryAltered), "{}", r.to_text());

    // Delete a whole manifest.
    let c = Copy::of(archive);
    let (manifest, _) = manifest_of(&c, &victim);
    std::fs::remove_file(&manifest).unwrap();
    let r = c.check(&opts);
    assert!(names(&r, Kind::Unlisted, &victim), "{}", r.to_text());
    assert!(kinds(&r).contains(&Kind::MissingEntries), "{}", r.to_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_archive_verifies_and_every_tampering_is_named() {
    let ids = ["sb-v1", "sb-v2", "sb-v3"];
    let (sim, ws) = shipped_archive(&ids, "none", false).await;
    let archive = ws.path().join("archive");
    tokio::task::spawn_blocking(move || tamper_cases(&archive, None))
        .await
        .unwrap();

    // The binary: clean, as text and JSON, with the checkpoint database too.
    let key = sim.api_key().to_string();
    let out = ws.run(&key, &["verify", "archive"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("archive: CLEAN"), "{}", out.stdout);
    // Verifying reads the checkpoint database and changes nothing in it.
    let state_bytes = || {
        let mut files = Vec::new();
        walk_all(&ws.path().join("state"), &mut files);
        files
            .into_iter()
            // The lock file, and SQLite's WAL index (shared memory every reader maps and
            // marks; rebuilt from the WAL, it holds no data) are not the database.
            .filter(|f| {
                let name = f.to_string_lossy();
                !name.ends_with(".lock") && !name.ends_with("-shm")
            })
            .map(|f| {
                let bytes = std::fs::read(&f).unwrap();
                (f, bytes)
            })
            // A reader of a WAL database may create an empty WAL file: no data.
            .filter(|(f, bytes)| !(f.to_string_lossy().ends_with("-wal") && bytes.is_empty()))
            .collect::<BTreeMap<_, _>>()
    };
    let before = state_bytes();
    let out = ws.run(
        &key,
        &["verify", "archive", "--pipeline", "pipe.toml", "--format", "json"],
    );
    assert!(
        before == state_bytes(),
        "verify --pipeline changed the checkpoint database"
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["clean"], true);
    assert_eq!(json["events"], 900);
    assert!(json["findings"].as_array().unwrap().is_empty());

    // Against the API: every sandbox-hour agrees. A unit removed from a copy shows as missing
    // events in its hours too.
    let out = ws.run(
        &key,
        &["verify", "archive", "--pipeline", "pipe.toml", "--against-api"],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("sandbox-hours with the API"),
        "{}",
        out.stdout
    );
    let copy = Copy::of(&ws.path().join("archive"));
    let victim = copy.units()[1].clone();
    std::fs::remove_file(copy.path(&victim)).unwrap();
    let root = copy.root.display().to_string();
    let out = ws.run(
        &key,
        &["verify", &root, "--pipeline", "pipe.toml", "--against-api"],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("REMOVED") && out.stdout.contains("API MISMATCH"),
        "{}",
        out.stdout
    );

    // The newest unit removed with its manifest line leaves a chain that is whole; only the
    // checkpoint database knows it had one more entry.
    let store = auditship::store::Store::open(&ws.path().join("state/checkpoints.db")).unwrap();
    let rows = store.manifest_rows("pipe", "archive", false).await.unwrap();
    let last = rows.last().unwrap().clone();
    let unit = PathBuf::from(&last.unit);
    let manifest = unit.parent().unwrap().join(MANIFEST_NAME);
    let lines: Vec<String> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .filter(|l| !l.contains(&format!("\"seq\":{},", last.seq)))
        .map(str::to_string)
        .collect();
    write_lines(&manifest, &lines);
    std::fs::remove_file(&unit).unwrap();
    let out = ws.run(&key, &["verify", "archive"]);
    assert_eq!(
        out.code,
        Some(0),
        "without the database the shortened chain is whole: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("only caught with --pipeline"),
        "{}",
        out.stdout
    );
    let out = ws.run(&key, &["verify", "archive", "--pipeline", "pipe.toml"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("NOT IN ARCHIVE"), "{}", out.stdout);
    assert!(out.stdout.contains(&last.unit), "{}", out.stdout);
    // The API, asked up to where the checkpoint says the archive reached, holds those events.
    let out = ws.run(
        &key,
        &["verify", "archive", "--pipeline", "pipe.toml", "--against-api"],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("API MISMATCH"), "{}", out.stdout);
    // In-process, the same through the anchor.
    let mut chains = BTreeMap::new();
    chains.insert(
        ("pipe".to_string(), "archive".to_string()),
        rows.iter()
            .map(|r| (r.seq, r.hash.clone(), r.unit.clone()))
            .collect(),
    );
    let anchored = Options {
        anchor: Some(Anchor {
            chains,
            under: auditship::ops::verify::Under::Dir(ws.path().join("archive")),
        }),
        ..Default::default()
    };
    let r = verify::verify(&DirArchive::new(ws.path().join("archive")), &anchored).unwrap();
    assert_eq!(kinds(&r), [Kind::NotInArchive], "{}", r.to_text());

    // The workspace holds the archive beside the pipeline file and the state: those are notes.
    let out = ws.run(&key, &["verify", "."]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("state/checkpoints.db: not archive data"),
        "{}",
        out.stdout
    );

    // A path that is not there cannot be checked: exit 2.
    let out = ws.run(&key, &["verify", "no-such-dir"]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no-such-dir"), "{}", out.stderr);

    // An API whose list response does not decode cannot be compared with: exit 2, not a
    // comparison against a listing cut short.
    let broken = crate::util::BrokenListServer::start().await;
    ws.point_at(&sim.base_url(), &broken.base_url());
    let out = ws.run(
        &key,
        &["verify", "archive", "--pipeline", "pipe.toml", "--against-api"],
    );
    assert!(broken.requests() >= 1);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("could not decode list response"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_archives_verify_and_every_tampering_is_named() {
    let ids = ["sb-g1", "sb-g2", "sb-g3"];
    let (_sim, ws) = shipped_archive(&ids, "gzip", false).await;
    let archive = ws.path().join("archive");
    tokio::task::spawn_blocking(move || tamper_cases(&archive, None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_zstd_archives_verify_only_under_their_key() {
    let ids = ["sb-z1", "sb-z2", "sb-z3"];
    let (sim, ws) = shipped_archive(&ids, "zstd", true).await;
    let archive = ws.path().join("archive");
    let a = archive.clone();
    tokio::task::spawn_blocking(move || tamper_cases(&a, Some(MANIFEST_KEY)))
        .await
        .unwrap();

    let key = sim.api_key().to_string();
    let env = [(KEY_VAR, MANIFEST_KEY)];
    // With the pipeline (its [manifest] key) and with the key named on the command line: clean.
    let out = finish(
        ws.spawn_env(&key, &["verify", "archive", "--pipeline", "pipe.toml"], &env),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("signed"), "{}", out.stdout);
    let out = finish(
        ws.spawn_env(&key, &["verify", "archive", "--hmac-key-env", KEY_VAR], &env),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    // Under another key every entry fails; without a key the report says signatures went unchecked.
    let wrong = [(KEY_VAR, "another-key-of-sufficient-length!")];
    let out = finish(
        ws.spawn_env(&key, &["verify", "archive", "--hmac-key-env", KEY_VAR], &wrong),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("BAD SIGNATURE"), "{}", out.stdout);
    let out = ws.run(&key, &["verify", "archive"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("HMACs that were not checked"),
        "{}",
        out.stdout
    );
    // The key never shows up in what verify prints, nor in any file the run wrote.
    for f in ws.all_files() {
        let bytes = std::fs::read(ws.path().join(&f)).unwrap();
        assert!(
            !bytes
                .windows(MANIFEST_KEY.len())
                .any(|w| w == MANIFEST_KEY.as_bytes()),
            "{} holds the manifest key",
            f.display()
        );
    }
    // The pipeline needs its key to verify: a clear error, exit 2.
    let out = ws.run(&key, &["verify", "archive", "--pipeline", "pipe.toml"]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(KEY_VAR), "{}", out.stderr);
}

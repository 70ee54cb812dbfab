//! Signed digests: a real run's file archive proves itself offline with nothing but the public
//! key, and each tampering the issue names is caught and named without the checkpoint
//! database: a digest edited, removed, replayed from an earlier period or signed by another
//! key; the newest period's units, manifest lines and digests all removed; one byte of a unit
//! changed. The signing key appears nowhere but its own file.

use std::path::{Path, PathBuf};

use auditship::manifest::{DigestPublicKey, DigestSigningKey, Entry, SignedDigest};
use auditship::ops::verify::{self, DirArchive, Finding, Horizon, Kind, Options, Report};
use auditship::sim::SimConfig;
use auditship_sink::{DIGEST_DIR, MANIFEST_NAME};

use crate::util::{assert_exactly_once, sim, sim_lines, stop_when_all_committed, walk_all, Workspace};
use crate::verify::{kinds, Copy};

/// A signed run's archive and what checks it.
struct Signed {
    ws: Workspace,
    /// The archive's root (the file sink's fixed directory).
    root: PathBuf,
    public: DigestPublicKey,
    /// A moment before the pipeline was told to stop: its digests reach past it.
    stopping_us: i64,
    /// The pipeline's log.
    stderr: String,
}

/// Three sandboxes, live for about four seconds, into a file sink that rotates every few
/// dozen events, with digests every second signed by a key from `auditship keygen`.
async fn signed_run() -> Signed {
    let ids = ["sb-d1", "sb/d2", "sb-d3"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 100,
            live_rate_per_sec: 150.0,
            live_events_per_sandbox: Some(600),
            ..SimConfig::default()
        },
    )
    .await;
    let tables = r#"
[manifest]
signing_key_file = "{root}/keys/sign.key"
digest_interval_ms = 1000

[sinks.archive]
type = "file"
path = "{root}/archive/{resource_id}/{date}.ndjson"
rotate_max_bytes = 20000
"#;
    let ws = Workspace::with_tables(&sim, &ids, "", 500, tables);
    let (stopping_us, out) = keygen_and_run(&ws, &sim).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    let public = DigestPublicKey::from_file(&ws.path().join("keys/sign.pub")).unwrap();
    Signed {
        root: ws.path().join("archive"),
        ws,
        public,
        stopping_us,
        stderr: out.stderr,
    }
}

/// `auditship keygen --out keys/sign`, then `auditship run` until every event is committed,
/// then SIGTERM: a moment before the stop was asked for (the digests reach past it), and the
/// run's output.
async fn keygen_and_run(ws: &Workspace, sim: &auditship::sim::Simulator) -> (i64, crate::util::Output) {
    let key = sim.api_key().to_string();
    std::fs::create_dir(ws.path().join("keys")).unwrap();
    let out = ws.run(&key, &["keygen", "--out", "keys/sign"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    crate::util::wait_for(
        "every event to be committed",
        std::time::Duration::from_secs(120),
        || sim.live_done() && ws.committed_events() >= sim.total_events() as i64,
    )
    .await;
    let stopping_us = chrono::Utc::now().timestamp_micros();
    (stopping_us, stop_when_all_committed(ws, sim, child).await)
}

fn check(root: &Path, key: &DigestPublicKey, horizon: Horizon) -> Report {
    let opts = Options {
        public_key: Some(key.clone()),
        horizon: Some(horizon),
        ..Options::default()
    };
    verify::verify(&DirArchive::new(root), &opts).unwrap()
}

/// The digests under `root`, in chain order, with their paths.
fn digests(root: &Path) -> Vec<(PathBuf, SignedDigest)> {
    let mut files = Vec::new();
    walk_all(&root.join(DIGEST_DIR), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let d = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, d)
        })
        .collect()
}

/// The private key's forms a leak would take: its PEM body, its 32 secret bytes raw, in hex
/// and in base64.
fn key_needles(ws: &Workspace) -> Vec<Vec<u8>> {
    let pem = std::fs::read_to_string(ws.path().join("keys/sign.key")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = data_encoding::BASE64.decode(body.as_bytes()).unwrap();
    let seed = &der[der.len() - 32..];
    vec![
        body.clone().into_bytes(),
        seed.to_vec(),
        data_encoding::HEXLOWER.encode(seed).into_bytes(),
        data_encoding::BASE64.encode(seed).into_bytes(),
    ]
}

/// Whether a finding of `kind` names `object` (relative to the root), or any, with `None`.
fn found(findings: &[Finding], kind: Kind, object: Option<&str>) -> bool {
    findings
        .iter()
        .any(|f| f.kind == kind && (object.is_none() || f.object.as_deref() == object))
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap().display().to_string()
}

/// Remove what the digests from `from` on list: each unit cut back to where its first listed
/// stretch starts (removed when that is its start), and their manifest lines; the digests too
/// when `with_digests`. What is left is a consistent, shorter archive.
fn remove_newest(copy: &Copy, original: &Path, list: &[(PathBuf, SignedDigest)], with_digests: bool) {
    let mut cut: std::collections::BTreeMap<String, u64> = Default::default();
    let mut seqs = std::collections::HashSet::new();
    for (_, d) in list {
        for e in &d.entries {
            let unit = rel(original, Path::new(&e.unit));
            let at = cut.entry(unit).or_insert(e.offset);
            *at = (*at).min(e.offset);
            seqs.insert(e.seq);
        }
    }
    assert!(!seqs.is_empty(), "the newest digests list entries");
    for (unit, at) in &cut {
        let path = copy.path(unit);
        if *at == 0 {
            std::fs::remove_file(&path).unwrap();
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(*at)
                .unwrap();
        }
        let manifest = path.parent().unwrap().join(MANIFEST_NAME);
        let kept: Vec<String> = std::fs::read_to_string(&manifest)
            .unwrap()
            .lines()
            .filter(|l| !seqs.contains(&serde_json::from_str::<Entry>(l).unwrap().seq))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&manifest, kept.concat()).unwrap();
    }
    if with_digests {
        for (p, _) in list {
            std::fs::remove_file(copy.path(&rel(original, p))).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_file_archive_verifies_offline_and_each_tampering_is_named() {
    let s = signed_run().await;
    let list = digests(&s.root);
    let until = Horizon::Until(s.stopping_us);
    // Far later (a day): only the pipeline's signed stop lets the chain end early.
    let later = Horizon::Now(s.stopping_us + 86_400_000_000);

    // Clean, with only the archive and the public key.
    let clean = check(&s.root, &s.public, until);
    assert!(clean.clean, "{}", clean.to_text());
    assert_eq!(clean.digest_chains.len(), 1, "{}", clean.to_text());
    let chain = &clean.digest_chains[0];
    assert_eq!(chain.digests, list.len());
    assert!(chain.stopped, "the last digest records the stop");
    assert_eq!(
        chain.entries_through as usize, clean.entries,
        "every entry is signed"
    );
    let with_entries = list.iter().filter(|(_, d)| !d.entries.is_empty()).count();
    assert!(
        with_entries >= 3,
        "entries spread over {with_entries} periods; the run was too short to test periods"
    );
    assert!(
        list.iter().any(|(_, d)| d.entries.is_empty()) || list.len() >= 4,
        "{} digests",
        list.len()
    );
    let report = check(&s.root, &s.public, later);
    assert!(report.clean, "{}", report.to_text());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("where the pipeline stopped")),
        "{:?}",
        report.notes
    );

    // The command an auditor runs.
    let out = s.ws.run(
        "unused",
        &[
            "verify",
            "archive",
            "--public-key",
            "keys/sign.pub",
            "--until",
            &auditship::client::format_time(s.stopping_us),
        ],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(": CLEAN") && out.stdout.contains("digests pipe/archive"),
        "{}",
        out.stdout
    );

    let middle = list.len() / 2;
    let (middle_path, middle_digest) = &list[middle];

    // A digest edited.
    let copy = Copy::of(&s.root);
    let mut edited = middle_digest.clone();
    edited.period_end.push(' ');
    std::fs::write(copy.path(&rel(&s.root, middle_path)), edited.to_json()).unwrap();
    let r = check(&copy.root, &s.public, until);
    assert!(
        found(&r.findings, Kind::DigestAltered, Some(&rel(&s.root, middle_path))),
        "{}",
        r.to_text()
    );

    // A digest removed.
    let copy = Copy::of(&s.root);
    std::fs::remove_file(copy.path(&rel(&s.root, middle_path))).unwrap();
    let r = check(&copy.root, &s.public, until);
    assert!(found(&r.findings, Kind::MissingDigests, None), "{}", r.to_text());

    // The newest period's units, manifest lines and digests all removed: consistent without the
    // digests (verify without the key finds nothing), caught with them.
    let newest = list.iter().rposition(|(_, d)| !d.entries.is_empty()).unwrap();
    let copy = Copy::of(&s.root);
    remove_newest(&copy, &s.root, &list[newest..], true);
    let unkeyed = verify::verify(&DirArchive::new(&copy.root), &Options::default()).unwrap();
    assert!(
        unkeyed.clean,
        "the cut archive is consistent: {}",
        unkeyed.to_text()
    );
    for horizon in [until, later] {
        let r = check(&copy.root, &s.public, horizon);
        assert_eq!(kinds(&r), vec![Kind::MissingDigests], "{}", r.to_text());
    }

    // The same units and lines removed, the digests left: they name the entries.
    let copy = Copy::of(&s.root);
    remove_newest(&copy, &s.root, &list[newest..], false);
    let r = check(&copy.root, &s.public, until);
    assert_eq!(kinds(&r), vec![Kind::MissingEntries], "{}", r.to_text());

    // A digest replayed from an earlier period over a later one.
    let copy = Copy::of(&s.root);
    let (late_path, _) = &list[middle + 1];
    std::fs::copy(middle_path, copy.path(&rel(&s.root, late_path))).unwrap();
    let r = check(&copy.root, &s.public, until);
    assert!(
        found(&r.findings, Kind::DigestMoved, Some(&rel(&s.root, late_path))),
        "{}",
        r.to_text()
    );
    assert!(found(&r.findings, Kind::MissingDigests, None), "{}", r.to_text());

    // Another key's digest in the chain, and the whole archive checked with another key.
    let other = DigestSigningKey::generate().unwrap();
    let copy = Copy::of(&s.root);
    let forged = middle_digest.clone().seal(&other);
    std::fs::write(copy.path(&rel(&s.root, middle_path)), forged.to_json()).unwrap();
    let r = check(&copy.root, &s.public, until);
    assert!(
        found(&r.findings, Kind::WrongKey, Some(&rel(&s.root, middle_path))),
        "{}",
        r.to_text()
    );
    let other_public = DigestPublicKey::from_pem(&other.public_pem().unwrap()).unwrap();
    let r = check(&s.root, &other_public, until);
    let wrong = r.findings.iter().filter(|f| f.kind == Kind::WrongKey).count();
    assert_eq!(wrong, list.len(), "{}", r.to_text());

    // One byte of a unit changed.
    let copy = Copy::of(&s.root);
    let unit = copy.units().into_iter().next().unwrap();
    let mut bytes = std::fs::read(copy.path(&unit)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    std::fs::write(copy.path(&unit), bytes).unwrap();
    let r = check(&copy.root, &s.public, until);
    assert_eq!(kinds(&r), vec![Kind::Altered], "{}", r.to_text());

    // The signing key is in its own file and nowhere else: not in the archive, the database,
    // the pipeline's log.
    let needles = key_needles(&s.ws);
    let mut files = Vec::new();
    walk_all(s.ws.path(), &mut files);
    let mut searched = 0;
    for f in files.iter().filter(|f| !f.ends_with("keys/sign.key")) {
        let bytes = std::fs::read(f).unwrap();
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "the signing key is in {}",
                f.display()
            );
        }
        searched += 1;
    }
    assert!(searched > 10, "searched {searched} files");
    assert!(files.iter().any(|f| f.ends_with("state/checkpoints.db")));
    for n in &needles {
        assert!(
            !s.stderr.as_bytes().windows(n.len()).any(|w| w == n.as_slice()),
            "the signing key is in the log"
        );
    }
}

/// An export of a real run's window verifies offline and says which events it proves; any byte
/// of the file changed fails it, and so does a bundle rebuilt with a stretch changed, a stretch
/// left out, or the key inside swapped.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_of_a_signed_archive_verifies_and_any_change_to_it_fails() {
    use auditship::ops::bundle;

    let s = signed_run().await;
    // The first sandbox, from a moment inside its events on.
    let lines: Vec<serde_json::Value> =
        s.ws.archive_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let cursor =
        |v: &serde_json::Value| auditship::client::parse_time(v["inserted_at"].as_str().unwrap()).unwrap();
    let mut times: Vec<i64> = lines
        .iter()
        .filter(|v| v["resource_id"] == "sb/d2")
        .map(cursor)
        .collect();
    times.sort();
    let since = times[times.len() / 3];
    let expected = times.iter().filter(|t| **t >= since).count() as u64;
    let out = s.ws.run(
        "unused",
        &[
            "export",
            "archive",
            "--public-key",
            "keys/sign.pub",
            "--sandbox",
            "sb/d2",
            "--since",
            &auditship::client::format_time(since),
            "-o",
            "evidence.tar.zst",
        ],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let out = s.ws.run(
        "unused",
        &[
            "verify-export",
            "evidence.tar.zst",
            "--public-key",
            "keys/sign.pub",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        report["selected"]["sb/d2"]["events"].as_u64(),
        Some(expected),
        "{report:#}"
    );
    assert_eq!(
        report["selected"].as_object().unwrap().len(),
        1,
        "only the sandbox asked for: {report:#}"
    );
    // The bundle holds no more than it must: the run of digests that lists the selection.
    let bytes = std::fs::read(s.ws.path().join("evidence.tar.zst")).unwrap();
    let clean = bundle::check(&bytes[..], Some(&s.public));
    assert!(clean.clean, "{}", clean.to_text("evidence"));
    // The signing key is not in the bundle (decompressed), only the public one.
    let inside = zstd::decode_all(&bytes[..]).unwrap();
    for n in key_needles(&s.ws) {
        assert!(
            !inside.windows(n.len()).any(|w| w == n.as_slice()),
            "the signing key is in the bundle"
        );
    }
    assert!(
        clean.stretches > 1 && clean.stretches < clean.entries,
        "{} of {}",
        clean.stretches,
        clean.entries
    );

    // Any byte changed: the bundle no longer checks, unless the change left the content as it
    // was. zstd has bits its decoders ignore (reserved bits, the window size): flipping one
    // gives the same content under the same checksum, so nothing the bundle proves changed.
    // (zstd's own CLI shows it: a 2,440-byte frame has 7 such byte positions for this flip.)
    let step = (bytes.len() / 97).max(1);
    let mut positions: Vec<usize> = (0..bytes.len()).step_by(step).collect();
    positions.push(bytes.len() - 1);
    let mut content_unchanged = 0;
    for &at in &positions {
        let mut changed = bytes.clone();
        changed[at] ^= 0x20;
        let r = bundle::check(&changed[..], Some(&s.public));
        if r.clean {
            assert_eq!(
                zstd::decode_all(&changed[..]).ok().as_ref(),
                Some(&inside),
                "byte {at} of {} changed the content and the bundle still checks",
                bytes.len()
            );
            content_unchanged += 1;
        }
    }
    assert!(
        content_unchanged * 10 < positions.len(),
        "{content_unchanged} of {} changes left the content as it was: the sample tests little",
        positions.len()
    );

    // Rebuilt (valid tar and zstd) with one change each: the content checks catch it.
    let rebuild = |edit: &Edit<'_>| -> Vec<u8> {
        let mut tar = tar::Archive::new(zstd::Decoder::new(&bytes[..]).unwrap());
        let mut out = tar::Builder::new(Vec::new());
        for f in tar.entries().unwrap() {
            let mut f = f.unwrap();
            let path = f.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data).unwrap();
            if let Some(data) = edit(&path, data) {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                out.append_data(&mut h, &path, &data[..]).unwrap();
            }
        }
        zstd::encode_all(&out.into_inner().unwrap()[..], 3).unwrap()
    };
    let same = rebuild(&|_, d| Some(d));
    assert!(
        bundle::check(&same[..], Some(&s.public)).clean,
        "a faithful rebuild checks"
    );
    let first_stretch = std::sync::OnceLock::new();
    let altered = rebuild(&|p, mut d| {
        if p.starts_with("stretches/") && first_stretch.set(p.to_string()).is_ok() {
            let at = d.len() / 2;
            d[at] = if d[at] == b'7' { b'8' } else { b'7' };
        }
        Some(d)
    });
    let r = bundle::check(&altered[..], Some(&s.public));
    assert!(
        found(
            &r.findings,
            Kind::Altered,
            first_stretch.get().map(String::as_str)
        ),
        "{}",
        r.to_text("altered")
    );
    let dropped = rebuild(&|p, d| {
        (!p.starts_with("stretches/") || Some(p) != first_stretch.get().map(String::as_str)).then_some(d)
    });
    let r = bundle::check(&dropped[..], Some(&s.public));
    assert!(
        found(
            &r.findings,
            Kind::Removed,
            first_stretch.get().map(String::as_str)
        ),
        "{}",
        r.to_text("dropped")
    );
    let other = DigestSigningKey::generate().unwrap();
    let swapped = rebuild(&|p, d| {
        Some(if p == "public-key.pem" {
            other.public_pem().unwrap().into_bytes()
        } else {
            d
        })
    });
    let r = bundle::check(&swapped[..], None);
    assert!(
        r.findings.iter().any(|f| f.kind == Kind::WrongKey),
        "{}",
        r.to_text("swapped")
    );
    let r = bundle::check(&swapped[..], Some(&s.public));
    assert!(
        r.findings
            .iter()
            .any(|f| f.kind == Kind::WrongKey && f.object.as_deref() == Some("public-key.pem")),
        "{}",
        r.to_text("swapped")
    );
}

/// A change to one file of a bundle: its new bytes, or `None` to leave it out.
type Edit<'a> = dyn Fn(&str, Vec<u8>) -> Option<Vec<u8>> + 'a;

/// The same proof for an S3 archive (moto): a clean run verifies with the public key alone;
/// an edited digest, the newest period's objects, manifest objects and digests all removed,
/// and one byte of an object changed are each named. Digests are written create-only: the
/// sink sends `If-None-Match: *`, and a second, different digest under the same name is
/// refused, not written over.
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_s3_archive_verifies_offline_and_each_tampering_is_named() {
    use auditship_sink::ManifestPublisher as _;
    use auditship_sink_s3::testing::{client, create_bucket, read_all_objects, S3Server};

    auditship_sink_s3::testing::test_credentials_env();
    let server = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    let c = client(&server.endpoint()).await;
    create_bucket(&c, "signed", false).await.unwrap();
    let ids = ["sb-s1", "sb/s2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 100,
            live_rate_per_sec: 150.0,
            live_events_per_sandbox: Some(600),
            ..SimConfig::default()
        },
    )
    .await;
    let tables = format!(
        r#"
[manifest]
signing_key_file = "{{root}}/keys/sign.key"
digest_interval_ms = 1000

[sinks.cold]
type = "s3"
bucket = "signed"
region = "us-east-1"
endpoint = "{}"
force_path_style = true
key_prefix = "miosa/{{date}}/{{resource_id}}/"
compression = "gzip"
batch_max_events = 150
batch_timeout_ms = 400
"#,
        server.endpoint()
    );
    let ws = Workspace::with_tables(&sim, &ids, "", 500, &tables);
    let (stopping_us, _) = keygen_and_run(&ws, &sim).await;
    let until = Horizon::Until(stopping_us);
    let public = DigestPublicKey::from_file(&ws.path().join("keys/sign.pub")).unwrap();

    let check_stored = |public: DigestPublicKey, stored_checksums: bool| {
        let c = c.clone();
        async move {
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let archive = verify::S3Archive::new(c, "signed", "miosa/", handle);
                let opts = Options {
                    public_key: Some(public),
                    horizon: Some(until),
                    stored_checksums,
                    ..Options::default()
                };
                verify::verify(&archive, &opts).unwrap()
            })
            .await
            .unwrap()
        }
    };
    let check = |public: DigestPublicKey| check_stored(public, false);
    let clean = check(public.clone()).await;
    assert!(clean.clean, "{}", clean.to_text());
    // By the checksums S3 keeps, without downloading the data.
    let by_attributes = check_stored(public.clone(), true).await;
    assert!(by_attributes.clean, "{}", by_attributes.to_text());
    let note = format!(
        "{} units were checked by the SHA-256 the store keeps",
        clean.units
    );
    assert!(
        by_attributes.notes.iter().any(|n| n.starts_with(&note)),
        "{note}: {:?}",
        by_attributes.notes
    );
    assert_eq!(clean.digest_chains.len(), 1, "{}", clean.to_text());
    assert_eq!(clean.digest_chains[0].entries_through as usize, clean.entries);

    let objects = read_all_objects(&c, "signed").await.unwrap();
    let mut list: Vec<(String, SignedDigest)> = objects
        .iter()
        .filter(|o| o.key.starts_with(&format!("miosa/{DIGEST_DIR}/pipe/cold/")))
        .map(|o| (o.key.clone(), serde_json::from_slice(&o.body).unwrap()))
        .collect();
    list.sort_by_key(|(_, d)| d.seq);
    assert_eq!(list.len(), clean.digest_chains[0].digests);
    assert!(
        list.iter().filter(|(_, d)| !d.entries.is_empty()).count() >= 3,
        "{} digests",
        list.len()
    );
    let put = |key: String, body: Vec<u8>| {
        let c = c.clone();
        async move {
            c.put_object()
                .bucket("signed")
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
    };

    // Create-only: the same digest again is accepted as published; another under its name is
    // refused and the object stays as it was.
    let (middle_key, middle) = list[list.len() / 2].clone();
    let config: auditship_sink_s3::S3SinkConfig =
        toml::from_str("bucket = \"signed\"\nkey_prefix = \"miosa/{date}/{resource_id}/\"").unwrap();
    let publisher = auditship_sink_s3::S3Manifests::new(c.clone(), config, "pipe", "cold").unwrap();
    publisher.publish_digest(&middle.file()).await.unwrap();
    let mut other = middle.file();
    other.body = other.body.replace("\"seq\"", "\"seq\" ");
    let e = publisher.publish_digest(&other).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("already exists"),
        "{e}"
    );
    let there = c
        .get_object()
        .bucket("signed")
        .key(&middle_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        there.body.collect().await.unwrap().into_bytes(),
        middle.file().body.as_bytes()
    );

    // A digest removed, one replayed from an earlier period over a later one, one signed by
    // another key: each named, then put back.
    let rel = middle_key.strip_prefix("miosa/").unwrap();
    c.delete_object()
        .bucket("signed")
        .key(&middle_key)
        .send()
        .await
        .unwrap();
    let r = check(public.clone()).await;
    assert!(found(&r.findings, Kind::MissingDigests, None), "{}", r.to_text());
    let (earlier_key, earlier) = &list[list.len() / 2 - 1];
    put(middle_key.clone(), earlier.file().body.into_bytes()).await;
    let r = check(public.clone()).await;
    assert!(
        found(&r.findings, Kind::DigestMoved, Some(rel)),
        "{} (from {earlier_key})",
        r.to_text()
    );
    let other_key = DigestSigningKey::generate().unwrap();
    put(
        middle_key.clone(),
        middle.clone().seal(&other_key).file().body.into_bytes(),
    )
    .await;
    let r = check(public.clone()).await;
    assert!(found(&r.findings, Kind::WrongKey, Some(rel)), "{}", r.to_text());
    put(middle_key.clone(), middle.file().body.into_bytes()).await;
    assert!(check(public.clone()).await.clean, "restored");

    // A digest edited.
    let mut edited = middle.clone();
    edited.entries.clear();
    put(middle_key.clone(), edited.to_json().into_bytes()).await;
    let r = check(public.clone()).await;
    assert!(
        found(&r.findings, Kind::DigestAltered, Some(rel)),
        "{}",
        r.to_text()
    );
    put(middle_key.clone(), middle.file().body.into_bytes()).await;
    assert!(check(public.clone()).await.clean, "restored");

    // One byte of an object changed.
    let data = objects.iter().find(|o| !o.key.contains("auditship.")).unwrap();
    let mut bytes = data.body.to_vec();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    put(data.key.clone(), bytes).await;
    let r = check(public.clone()).await;
    let rel = data.key.strip_prefix("miosa/").unwrap();
    assert!(found(&r.findings, Kind::Altered, Some(rel)), "{}", r.to_text());
    // Replaced (same length) with a SHA-256 S3 keeps: named by the stored checksum, unread.
    let mut flipped = data.body.to_vec();
    flipped[at] ^= 0x01;
    c.put_object()
        .bucket("signed")
        .key(&data.key)
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .body(aws_sdk_s3::primitives::ByteStream::from(flipped.clone()))
        .send()
        .await
        .unwrap();
    let r = check_stored(public.clone(), true).await;
    assert!(found(&r.findings, Kind::Altered, Some(rel)), "{}", r.to_text());
    assert!(
        r.findings.iter().any(|f| f.detail.contains("stored SHA-256")),
        "{}",
        r.to_text()
    );
    put(data.key.clone(), data.body.to_vec()).await;

    // The newest period's objects, their manifest objects and the digests all removed.
    let newest = list.iter().rposition(|(_, d)| !d.entries.is_empty()).unwrap();
    let mut gone = Vec::new();
    for (key, d) in &list[newest..] {
        gone.push(key.clone());
        for e in &d.entries {
            assert_eq!(e.offset, 0, "an S3 object is one stretch");
            gone.push(e.unit.clone());
            gone.push(auditship_sink_s3::manifest_key(&e.unit, "pipe", "cold", e.seq));
        }
    }
    for key in &gone {
        c.delete_object().bucket("signed").key(key).send().await.unwrap();
    }
    let handle = tokio::runtime::Handle::current();
    let c2 = c.clone();
    let unkeyed = tokio::task::spawn_blocking(move || {
        verify::verify(
            &verify::S3Archive::new(c2, "signed", "miosa/", handle),
            &Options::default(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert!(
        unkeyed.clean,
        "consistent without the digests: {}",
        unkeyed.to_text()
    );
    let r = check(public.clone()).await;
    assert_eq!(kinds(&r), vec![Kind::MissingDigests], "{}", r.to_text());
}

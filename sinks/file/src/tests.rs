use auditship_sink::testing::MemRegistry;
use auditship_sink::Event;
use std::io::Read as _;

use super::*;

fn ctx(recovered: Vec<StateEntry>) -> (SinkContext, Arc<MemRegistry>) {
    let (ctx, registry, _) = auditship_sink::testing::context("archive", recovered);
    (ctx, registry)
}

fn event(rid: &str, n: u64) -> Event {
    Event {
        raw: format!(r#"{{"id":"e{n}","resource_id":"{rid}","n":1.50}}"#).into(),
        id: format!("e{n}").into(),
        resource_id: rid.into(),
        cursor_us: Some(1_764_000_000_000_000 + n as i64),
        cursor_span: None,
        time_us: Some(1_764_000_000_000_000 + n as i64),
        seq: n,
    }
}

fn batch(number: u64, rid: &str, range: std::ops::Range<u64>) -> Arc<Batch> {
    Arc::new(Batch {
        number,
        events: range.map(|n| event(rid, n)).collect(),
    })
}

fn config(dir: &Path, extra: impl FnOnce(&mut FileSinkConfig)) -> FileSinkConfig {
    let mut c = FileSinkConfig {
        path: format!("{}/{{resource_id}}/{{date}}.ndjson", dir.display()),
        compression: Compression::None,
        compression_level: None,
        rotate_max_bytes: None,
        rotate_max_age_ms: None,
        max_open_files: 256,
        seal_idle_ms: 600_000,
        sync_overlap_min_bytes: 4 << 20,
    };
    extra(&mut c);
    c
}

#[tokio::test]
async fn writes_events_verbatim_and_reports_durable_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, registry) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), ctx).unwrap();
    sink.write(batch(1, "sb/1", 0..3)).await.unwrap();
    let state = sink.flush().await.unwrap();
    let path = dir.path().join("sb%2F1/2025-11-24.ndjson");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(text.starts_with(r#"{"id":"e0","resource_id":"sb/1","n":1.50}"#));
    assert_eq!(
        state,
        vec![StateEntry {
            key: path.display().to_string(),
            value: text.len() as i64
        }]
    );
    let registered = registry.0.lock().unwrap().clone();
    assert_eq!(
        registered,
        vec![StateEntry {
            key: path.display().to_string(),
            value: 0
        }]
    );
    let mode = std::fs::metadata(&path).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o640);
}

#[tokio::test]
async fn reopening_truncates_uncommitted_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    let committed = sink.flush().await.unwrap();
    sink.write(batch(2, "a", 2..4)).await.unwrap();
    sink.flush().await.unwrap(); // durable but never committed: a crash follows
    let path = PathBuf::from(&committed[0].key);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"torn")
        .unwrap();
    drop(sink);

    let (c, _) = ctx(committed.clone());
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len() as i64, committed[0].value);
    sink.write(batch(1, "a", 2..4)).await.unwrap();
    sink.flush().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let ids: Vec<_> = text.lines().map(|l| l[7..9].to_string()).collect();
    assert_eq!(ids, ["e0", "e1", "e2", "e3"]);
}

#[tokio::test]
async fn gzip_and_zstd_members_decode_to_all_lines() {
    for compression in [Compression::Gzip, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = ctx(vec![]);
        let mut sink = FileSink::open(config(dir.path(), |c| c.compression = compression), c).unwrap();
        for i in 0..3 {
            sink.write(batch(i, "a", i * 10..i * 10 + 10)).await.unwrap();
            sink.flush().await.unwrap();
        }
        let path = dir.path().join("a/2025-11-24.ndjson");
        let raw = std::fs::read(&path).unwrap();
        let mut text = String::new();
        match compression {
            Compression::Gzip => {
                flate2::read::MultiGzDecoder::new(&raw[..])
                    .read_to_string(&mut text)
                    .unwrap();
            }
            _ => {
                text = String::from_utf8(zstd::stream::decode_all(&raw[..]).unwrap()).unwrap();
            }
        }
        assert_eq!(text.lines().count(), 30, "{compression:?}");
    }
}

#[tokio::test]
async fn rotates_by_size_into_numbered_generations() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.rotate_max_bytes = Some(100)), c).unwrap();
    let mut committed = Vec::new();
    for i in 0..3 {
        sink.write(batch(i, "a", i * 5..i * 5 + 5)).await.unwrap();
        committed.extend(sink.flush().await.unwrap());
    }
    for name in ["2025-11-24.ndjson", "2025-11-24.1.ndjson", "2025-11-24.2.ndjson"] {
        let text = std::fs::read_to_string(dir.path().join("a").join(name)).unwrap();
        assert_eq!(text.lines().count(), 5, "{name}");
    }
    // A restart continues in the newest generation.
    drop(sink);
    let (c, reg) = ctx(committed);
    let mut sink = FileSink::open(config(dir.path(), |c| c.rotate_max_bytes = Some(1000)), c).unwrap();
    sink.write(batch(9, "a", 100..101)).await.unwrap();
    sink.flush().await.unwrap();
    assert!(reg.0.lock().unwrap().is_empty());
    let text = std::fs::read_to_string(dir.path().join("a/2025-11-24.2.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 6);
}

#[tokio::test]
async fn reset_forgets_unflushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    sink.flush().await.unwrap();
    sink.write(batch(2, "a", 2..4)).await.unwrap();
    sink.reset().await.unwrap();
    sink.write(batch(2, "a", 2..4)).await.unwrap();
    sink.flush().await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("a/2025-11-24.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 4);
}

#[test]
fn generation_paths_put_the_number_before_the_extension() {
    assert_eq!(
        generation_path("a/2026-11-25.ndjson.gz", 0),
        "a/2026-11-25.ndjson.gz"
    );
    assert_eq!(
        generation_path("a/2026-11-25.ndjson.gz", 2),
        "a/2026-11-25.2.ndjson.gz"
    );
    assert_eq!(generation_path("a/log", 1), "a/log.1");
    assert_eq!(generation_path(".hidden", 1), ".hidden.1");
}

#[tokio::test]
async fn a_file_removed_behind_our_back_is_started_again_with_true_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    let committed = sink.flush().await.unwrap();
    drop(sink);
    let path = PathBuf::from(&committed[0].key);
    std::fs::remove_file(&path).unwrap();

    let (c, _) = ctx(committed);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    sink.write(batch(2, "a", 2..3)).await.unwrap();
    let state = sink.flush().await.unwrap();
    let len = std::fs::metadata(&path).unwrap().len() as i64;
    assert_eq!(
        state[0].value, len,
        "the committed length is the file's real length"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn rotates_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.rotate_max_age_ms = Some(30)), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    sink.flush().await.unwrap(); // opened just now: young
    sink.write(batch(2, "a", 2..4)).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(60));
    sink.flush().await.unwrap(); // now old: the next write starts a new generation
    sink.write(batch(3, "a", 4..5)).await.unwrap();
    sink.flush().await.unwrap();
    let count = |name: &str| {
        std::fs::read_to_string(dir.path().join("a").join(name))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(count("2025-11-24.ndjson"), 4);
    assert_eq!(count("2025-11-24.1.ndjson"), 1);
}

#[tokio::test]
async fn idle_and_missing_files_are_forgotten_and_taken_as_they_are_if_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    sink.write(batch(1, "old", 0..2)).await.unwrap();
    sink.write(batch(2, "gone", 0..2)).await.unwrap();
    sink.write(batch(3, "busy", 0..2)).await.unwrap();
    let committed = sink.flush().await.unwrap();
    drop(sink);
    let path = |sb: &str| dir.path().join(sb).join("2025-11-24.ndjson");
    let three_days_ago = std::time::SystemTime::now() - Duration::from_secs(72 * 3600);
    std::fs::File::options()
        .write(true)
        .open(path("old"))
        .unwrap()
        .set_modified(three_days_ago)
        .unwrap();
    std::fs::remove_file(path("gone")).unwrap();

    let (c, registry) = ctx(committed.clone());
    registry.0.lock().unwrap().extend(committed);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    sink.prepare().await.unwrap();
    let kept: Vec<String> = registry.0.lock().unwrap().iter().map(|e| e.key.clone()).collect();
    assert_eq!(kept, vec![path("busy").display().to_string()]);

    // Writing to the forgotten file again registers it at its current length: nothing is lost
    // and a crash would roll back to exactly that.
    let before = std::fs::metadata(path("old")).unwrap().len();
    sink.write(batch(4, "old", 2..3)).await.unwrap();
    let registered = registry.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        registered,
        StateEntry {
            key: path("old").display().to_string(),
            value: before as i64
        }
    );
    sink.flush().await.unwrap();
    assert_eq!(std::fs::read_to_string(path("old")).unwrap().lines().count(), 3);
}

/// Regression: with more active files than `max_open_files * 4`, closed slots are dropped; a
/// dropped slot made again used to start from its length at registration (0) and truncate the
/// file on the next flush.
#[tokio::test]
async fn many_more_files_than_may_stay_open_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.max_open_files = 1), c).unwrap();
    // More than 64 × max_open_files sandboxes, so closed slots are forgotten and made again.
    let sandboxes: Vec<String> = (0..80).map(|i| format!("sb{i}")).collect();
    for round in 0..4u64 {
        for sb in &sandboxes {
            sink.write(batch(round, sb, round * 10..round * 10 + 3))
                .await
                .unwrap();
            sink.flush().await.unwrap();
        }
    }
    for sb in &sandboxes {
        let text = std::fs::read_to_string(dir.path().join(sb).join("2025-11-24.ndjson")).unwrap();
        assert_eq!(text.lines().count(), 12, "{sb}");
    }
}

#[tokio::test]
async fn one_flush_over_more_files_than_may_be_open() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.max_open_files = 3), c).unwrap();
    for round in 0..3u64 {
        let events = (0..25u64)
            .flat_map(|sb| (0..2).map(move |k| event(&format!("sb{sb}"), round * 10 + k)))
            .collect();
        sink.write(Arc::new(Batch {
            number: round,
            events,
        }))
        .await
        .unwrap();
        let state = sink.flush().await.unwrap();
        assert_eq!(state.len(), 25, "every file's new length is reported");
        let open = sink
            .inner
            .as_ref()
            .unwrap()
            .slots
            .values()
            .filter(|s| s.file.is_some())
            .count();
        assert!(open <= 3, "{open} files left open");
    }
    for sb in 0..25 {
        let text = std::fs::read_to_string(dir.path().join(format!("sb{sb}/2025-11-24.ndjson"))).unwrap();
        assert_eq!(text.lines().count(), 6, "sb{sb}");
    }
}

/// Without a manifest nothing is hashed: the seals carry no hash (the pipeline drops them),
/// and the files hold the same bytes as with one.
#[tokio::test]
async fn without_a_manifest_seals_carry_no_hash_and_the_files_are_the_same() {
    let mut texts = Vec::new();
    for manifest in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = ctx(vec![]);
        c.manifest = manifest;
        let mut sink = FileSink::open(config(dir.path(), |c| c.rotate_max_bytes = Some(100)), c).unwrap();
        sink.write(batch(1, "a", 0..3)).await.unwrap();
        let state = sink.flush().await.unwrap();
        sink.write(batch(2, "a", 3..5)).await.unwrap();
        sink.flush().await.unwrap();
        sink.close().await.unwrap();
        let sealed = sink.take_sealed();
        assert!(!sealed.is_empty());
        assert!(
            sealed.iter().all(|s| s.precomputed.is_some() == manifest),
            "manifest {manifest}: {:?}",
            sealed.iter().map(|s| s.precomputed.is_some()).collect::<Vec<_>>()
        );
        let first = std::fs::read_to_string(&state[0].key).unwrap();
        let second = std::fs::read_to_string(state[0].key.replace(".ndjson", ".1.ndjson")).unwrap();
        texts.push((first, second));
    }
    assert_eq!(texts[0], texts[1]);
    assert_eq!(texts[0].0.lines().count() + texts[0].1.lines().count(), 5);
}

#[tokio::test]
async fn rotation_close_and_recovery_seal_each_file_through_its_durable_length() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.rotate_max_bytes = Some(100)), c).unwrap();
    sink.write(batch(1, "a", 0..3)).await.unwrap();
    let state = sink.flush().await.unwrap();
    // Over 100 bytes: rotated, so generation 0 is sealed through its whole length.
    let sealed = sink.take_sealed();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].unit, state[0].key);
    assert_eq!(sealed[0].end as i64, state[0].value);
    assert!(sealed[0].content.is_none());
    // Hashed and counted as written: the same as reading the file back.
    let p = sealed[0]
        .precomputed
        .as_ref()
        .expect("the sink wrote the whole stretch");
    let bytes = std::fs::read(&sealed[0].unit).unwrap();
    assert_eq!(p.start, 0);
    assert_eq!(p.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
    assert_eq!(p.events, 3);
    assert_eq!(p.sandboxes.len(), 1);
    assert_eq!(
        (&*p.sandboxes[0].first_id, &*p.sandboxes[0].last_id),
        ("e0", "e2")
    );
    assert!(sink.take_sealed().is_empty(), "a seal is handed over once");
    // The next flush writes generation 1; nothing is sealed until close.
    sink.write(batch(2, "a", 3..4)).await.unwrap();
    let state = sink.flush().await.unwrap();
    assert!(state[0].key.ends_with(".1.ndjson"));
    assert!(sink.take_sealed().is_empty());
    let closed = sink.close().await.unwrap();
    assert!(closed.is_empty());
    let sealed = sink.take_sealed();
    let ends: Vec<(String, u64)> = sealed.iter().map(|s| (s.unit.clone(), s.end)).collect();
    assert!(
        ends.contains(&(state[0].key.clone(), state[0].value as u64)),
        "{ends:?}"
    );

    // A restart seals every file the last run left, through its committed length; what this
    // process did not write, the pipeline reads back. (The last run's sink is gone, and its
    // lock on the archive with it.)
    drop(sink);
    let (c, _) = ctx(state.clone());
    let mut sink = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    let sealed = sink.take_sealed();
    assert_eq!(sealed.len(), 1);
    assert!(sealed[0].precomputed.is_none());
    assert_eq!(
        (sealed[0].unit.clone(), sealed[0].end as i64),
        (state[0].key.clone(), state[0].value)
    );
}

#[tokio::test]
async fn an_idle_file_is_closed_and_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.seal_idle_ms = 50), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    sink.flush().await.unwrap();
    assert!(sink.take_sealed().is_empty());
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Another sandbox's batch makes the sink flush; file "a" has been idle past the limit.
    sink.write(batch(2, "b", 2..3)).await.unwrap();
    sink.flush().await.unwrap();
    let sealed: Vec<String> = sink.take_sealed().into_iter().map(|s| s.unit).collect();
    assert_eq!(sealed.len(), 1);
    assert!(sealed[0].contains("/a/"), "{sealed:?}");
    // Nothing more arrives: the sink asks to be woken, and a flush with nothing to write seals
    // the file that went idle meanwhile.
    let deadline = sink
        .flush_deadline()
        .expect("a quiet sink still wants to look for idle files");
    tokio::time::sleep_until(deadline.max(tokio::time::Instant::now() + Duration::from_millis(80))).await;
    assert!(sink.flush().await.unwrap().is_empty());
    let sealed: Vec<String> = sink.take_sealed().into_iter().map(|s| s.unit).collect();
    assert_eq!(sealed.len(), 1);
    assert!(sealed[0].contains("/b/"), "{sealed:?}");
}

#[tokio::test]
async fn manifests_are_written_per_directory_once_and_torn_lines_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let unit = |d: &str| dir.path().join(d).join("x.ndjson").display().to_string();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let lines = vec![
        ManifestLine {
            seq: 1,
            unit: unit("a"),
            line: r#"{"seq":1}"#.into(),
        },
        ManifestLine {
            seq: 2,
            unit: unit("b"),
            line: r#"{"seq":2}"#.into(),
        },
        ManifestLine {
            seq: 3,
            unit: unit("a"),
            line: r#"{"seq":3}"#.into(),
        },
    ];
    FileManifests::default().publish(&lines).await.unwrap();
    let a = dir.path().join("a").join(MANIFEST_NAME);
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "{\"seq\":1}\n{\"seq\":3}\n");
    let mode = std::fs::metadata(&a).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o640);
    // Published again after a crash, with a torn line left by the crash: no line twice.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&a)
        .unwrap()
        .write_all(b"{\"se")
        .unwrap();
    FileManifests::default().publish(&lines).await.unwrap();
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "{\"seq\":1}\n{\"seq\":3}\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("b").join(MANIFEST_NAME)).unwrap(),
        "{\"seq\":2}\n"
    );
}

/// Lines of many sizes, more than one `writev` takes.
fn lines(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!(r#"{{"id":"e{i}","pad":"{}"}}"#, "x".repeat(i % 700))))
        .collect()
}

/// `lines` as one NDJSON text.
fn joined(lines: &[Bytes]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| [&l[..], b"\n"])
        .flatten()
        .copied()
        .collect()
}

#[test]
fn vectored_writes_put_every_line_in_order_and_hash_what_they_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ndjson");
    let mut file = File::create(&path).unwrap();
    let lines = lines(3 * LINES_PER_WRITE + 17);
    let mut hasher = Sha256::new();
    let n = write_lines(&mut file, &lines, Some(&mut hasher)).unwrap();
    drop(file);
    let written = std::fs::read(&path).unwrap();
    assert_eq!(n, written.len() as u64);
    let expected = joined(&lines);
    assert_eq!(written, expected);
    let want: [u8; 32] = Sha256::digest(&expected).into();
    let got: [u8; 32] = hasher.finalize().into();
    assert_eq!(got, want);
}

#[test]
fn lines_fed_to_an_encoder_decode_to_the_joined_text() {
    let lines = lines(2_000);
    let text = joined(&lines);
    assert_eq!(encode_lines(Compression::None, None, &lines).unwrap(), text);
    let gz = encode_lines(Compression::Gzip, None, &lines).unwrap();
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, text);
    let zst = encode_lines(Compression::Zstd, Some(5), &lines).unwrap();
    assert_eq!(zstd::decode_all(&zst[..]).unwrap(), text);
    // One unit each, as the joined text makes.
    assert!(gz.len() < text.len() / 2 && zst.len() < text.len() / 2);
}

/// The bytes `rid`'s events `range` take in a file.
fn lines_len(rid: &str, range: std::ops::Range<u64>) -> i64 {
    range.map(|n| event(rid, n).raw.len() as i64 + 1).sum()
}

/// State entries by key, for comparing without caring about order.
fn by_key(mut entries: Vec<StateEntry>) -> Vec<(String, i64)> {
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries.into_iter().map(|e| (e.key, e.value)).collect()
}

#[tokio::test]
async fn an_overlapped_flush_is_reported_at_the_next_and_close_lands_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.sync_overlap_min_bytes = 0), c).unwrap();
    let a = dir.path().join("a/2025-11-24.ndjson").display().to_string();
    let b = dir.path().join("b/2025-11-24.ndjson").display().to_string();
    sink.write(batch(1, "a", 0..3)).await.unwrap();
    sink.write(batch(2, "b", 0..2)).await.unwrap();
    let first = sink.flush().await.unwrap();
    assert!(
        first.is_empty(),
        "the round's fsync runs on: nothing is durable yet ({first:?})"
    );
    assert_eq!(sink.durable_through(), Some(0));
    let due = sink.flush_deadline().expect("a round in flight wants reporting");
    assert!(due <= tokio::time::Instant::now());
    // Written already, only not yet reported durable.
    assert_eq!(std::fs::read_to_string(&a).unwrap().lines().count(), 3);

    sink.write(batch(3, "a", 3..5)).await.unwrap();
    let second = sink.flush().await.unwrap();
    assert_eq!(
        by_key(second),
        vec![
            (a.clone(), lines_len("a", 0..3)),
            (b.clone(), lines_len("b", 0..2))
        ],
        "the first round's lengths, not the second's"
    );
    assert_eq!(sink.durable_through(), Some(2));

    // Nothing new to write: the flush waits for the round in flight and reports it.
    let third = sink.flush().await.unwrap();
    assert_eq!(by_key(third), vec![(a.clone(), lines_len("a", 0..5))]);
    assert_eq!(sink.durable_through(), None, "nothing is in flight");

    sink.write(batch(4, "b", 2..4)).await.unwrap();
    assert!(sink.flush().await.unwrap().is_empty());
    let closed = sink.close().await.unwrap();
    assert_eq!(by_key(closed), vec![(b.clone(), lines_len("b", 0..4))]);
    assert_eq!(sink.durable_through(), None);
    assert_eq!(
        std::fs::read_to_string(&b).unwrap().len() as i64,
        lines_len("b", 0..4)
    );
}

#[tokio::test]
async fn a_reset_cuts_off_the_round_in_flight_and_its_rewrite_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.sync_overlap_min_bytes = 0), c).unwrap();
    let a = dir.path().join("a/2025-11-24.ndjson");
    sink.write(batch(1, "a", 0..3)).await.unwrap();
    assert!(sink.flush().await.unwrap().is_empty());
    sink.write(batch(2, "a", 3..5)).await.unwrap();
    let first = sink.flush().await.unwrap();
    assert_eq!(first[0].value, lines_len("a", 0..3));
    assert_eq!(sink.durable_through(), Some(1));
    // Batch 2 was written and its fsync is running: a retry starts over from batch 1's end.
    sink.reset().await.unwrap();
    assert_eq!(std::fs::metadata(&a).unwrap().len() as i64, lines_len("a", 0..3));
    sink.write(batch(2, "a", 3..5)).await.unwrap();
    let closed = sink.close().await.unwrap();
    assert_eq!(closed.last().unwrap().value, lines_len("a", 0..5));
    let text = std::fs::read_to_string(&a).unwrap();
    let ids: Vec<&str> = text.lines().map(|l| &l[7..9]).collect();
    assert_eq!(ids, ["e0", "e1", "e2", "e3", "e4"]);
}

#[tokio::test]
async fn files_rotate_and_seal_exactly_while_flushes_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(
        config(dir.path(), |c| {
            c.sync_overlap_min_bytes = 0;
            c.rotate_max_bytes = Some(300);
        }),
        c,
    )
    .unwrap();
    let mut state = Vec::new();
    let mut sealed = Vec::new();
    for i in 0..12 {
        sink.write(batch(i + 1, "a", i * 3..i * 3 + 3)).await.unwrap();
        state.extend(sink.flush().await.unwrap());
        sealed.extend(sink.take_sealed());
    }
    state.extend(sink.close().await.unwrap());
    sealed.extend(sink.take_sealed());
    // Every event once, in order, over the generations.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 3, "rotated: {files:?}");
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    let mut ids = Vec::new();
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            ids.push(line[7..line.find("\",").unwrap()].to_string());
        }
    }
    ids.sort_by_key(|id| id[1..].parse::<u64>().unwrap());
    let expected: Vec<String> = (0..36).map(|n| format!("e{n}")).collect();
    assert_eq!(ids, expected, "every event once");
    // Each file is sealed through its whole length, with the hash of exactly those bytes, and
    // its last state entry is that length.
    for f in &files {
        let unit = f.display().to_string();
        let bytes = std::fs::read(f).unwrap();
        let seals: Vec<&Sealed> = sealed.iter().filter(|s| s.unit == unit).collect();
        assert!(!seals.is_empty(), "{unit} was never sealed");
        let last = seals.iter().map(|s| s.end).max().unwrap();
        assert_eq!(last, bytes.len() as u64, "{unit} sealed short of its end");
        for s in seals {
            let p = s.precomputed.as_ref().expect("the sink wrote the whole stretch");
            let stretch = &bytes[p.start as usize..s.end as usize];
            assert_eq!(p.sha256, <[u8; 32]>::from(Sha256::digest(stretch)), "{unit}");
            assert_eq!(p.events as usize, stretch.iter().filter(|b| **b == b'\n').count());
        }
        let committed = state.iter().rev().find(|e| e.key == unit).map(|e| e.value);
        assert_eq!(committed, Some(bytes.len() as i64), "{unit}");
    }
}

#[tokio::test]
async fn a_flush_that_fails_after_an_overlapped_round_moves_no_length_and_the_retry_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    // Batch 1 is large enough to overlap; batch 2 is small, so its flush takes in the round in
    // flight and syncs everything in one go, and fails: sandbox "x" cannot get its directory.
    let mut sink = FileSink::open(config(dir.path(), |c| c.sync_overlap_min_bytes = 100), c).unwrap();
    std::fs::write(dir.path().join("x"), b"in the way").unwrap();
    let a = dir.path().join("a/2025-11-24.ndjson");
    sink.write(batch(1, "a", 0..3)).await.unwrap();
    assert!(sink.flush().await.unwrap().is_empty(), "in flight");
    sink.write(batch(2, "x", 0..1)).await.unwrap();
    let failed = sink.flush().await.unwrap_err();
    assert!(failed.to_string().contains("x"), "{failed}");
    // Nothing was reported, so the pipeline writes batch 1 again: the retry must start from
    // before it, not after.
    sink.reset().await.unwrap();
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 0);
    std::fs::remove_file(dir.path().join("x")).unwrap();
    sink.write(batch(1, "a", 0..3)).await.unwrap();
    sink.write(batch(2, "x", 0..1)).await.unwrap();
    let state = sink.close().await.unwrap();
    assert_eq!(std::fs::read_to_string(&a).unwrap().lines().count(), 3);
    let a_key = a.display().to_string();
    assert_eq!(
        state.iter().rev().find(|e| e.key == a_key).map(|e| e.value),
        Some(lines_len("a", 0..3))
    );
}

#[tokio::test]
async fn files_closed_within_a_flush_over_more_files_than_may_be_open_seal_with_true_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.max_open_files = 3), c).unwrap();
    let mut sealed = Vec::new();
    // Every round is one flush over 12 files, 3 at a time: files written earlier in the same
    // flush, holding bytes from earlier rounds, are closed (and sealed) to stay within the limit.
    for round in 0..3u64 {
        let events = (0..12u64)
            .flat_map(|sb| (0..2).map(move |k| event(&format!("sb{sb}"), round * 10 + k)))
            .collect();
        sink.write(Arc::new(Batch {
            number: round + 1,
            events,
        }))
        .await
        .unwrap();
        sink.flush().await.unwrap();
        sealed.extend(sink.take_sealed());
    }
    sink.close().await.unwrap();
    sealed.extend(sink.take_sealed());
    for sb in 0..12 {
        let path = dir.path().join(format!("sb{sb}/2025-11-24.ndjson"));
        let bytes = std::fs::read(&path).unwrap();
        let unit = path.display().to_string();
        let mut seals: Vec<&Sealed> = sealed.iter().filter(|s| s.unit == unit).collect();
        seals.sort_by_key(|s| s.end);
        let mut covered = 0;
        for s in seals {
            let p = s.precomputed.as_ref().expect("the sink wrote the whole stretch");
            assert_eq!(p.start, covered, "{unit}: stretches follow each other");
            let stretch = &bytes[p.start as usize..s.end as usize];
            assert_eq!(
                p.sha256,
                <[u8; 32]>::from(Sha256::digest(stretch)),
                "{unit}: the hash of bytes {}..{}",
                p.start,
                s.end
            );
            assert_eq!(
                p.events as usize,
                stretch.iter().filter(|b| **b == b'\n').count(),
                "{unit}"
            );
            covered = s.end;
        }
        assert_eq!(covered, bytes.len() as u64, "{unit} sealed through its end");
    }
}

/// A sandbox id too long for a file name (a hostile or broken server's) is dead-lettered
/// with the reason, and the rest of the batch is written: retrying the open would fail forever
/// and stall the pipeline.
#[tokio::test]
async fn an_id_too_long_for_a_file_name_is_dead_lettered_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _registry, dead) = auditship_sink::testing::context("archive", vec![]);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), ctx).unwrap();
    let long = "s".repeat(300);
    let events = vec![
        event("sb-1", 0),
        event(&long, 1),
        event(&long, 2),
        event("sb-1", 3),
    ];
    sink.write(Arc::new(Batch { number: 1, events })).await.unwrap();
    sink.flush().await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("sb-1/2025-11-24.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let dead = dead.0.lock().unwrap().clone();
    let ids: Vec<&str> = dead.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert!(
        dead[0].1.contains("300 bytes long, more than the 255"),
        "{}",
        dead[0].1
    );
}

/// An archive file replaced by a symbolic link is never written through: the flush fails and
/// says so, and the link's target is left as it was.
#[tokio::test]
async fn a_link_in_place_of_an_archive_file_is_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    std::fs::write(&target, b"precious\n").unwrap();
    std::fs::create_dir_all(dir.path().join("sb-1")).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("sb-1/2025-11-24.ndjson")).unwrap();
    let (ctx, _registry) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |_| {}), ctx).unwrap();
    sink.write(batch(1, "sb-1", 0..3)).await.unwrap();
    let e = sink.flush().await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

/// A second sink of the same pipeline and sink name on the same archive (another process,
/// with its own checkpoint database) is refused before it rolls anything back, naming the
/// holder; a sink of another name may share the directory, and the lock goes with its sink.
#[tokio::test]
async fn a_second_writer_of_one_archive_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut first = FileSink::open(config(dir.path(), |_| {}), c).unwrap();
    first.write(batch(1, "sb-1", 0..3)).await.unwrap();
    let state = first.flush().await.unwrap();
    // The second start recovers from the first's committed state: it would cut the file back.
    let (c, _) = ctx(state.clone());
    let e = FileSink::open(config(dir.path(), |_| {}), c)
        .err()
        .expect("refused");
    assert!(!e.is_retryable());
    let shown = e.to_string();
    assert!(
        shown.contains("another auditship process (pipeline p, sink archive, pid"),
        "{shown}"
    );
    let (c, _, _) = auditship_sink::testing::context("rejects", vec![]);
    let other = FileSink::open(config(dir.path(), |_| {}), c);
    assert!(other.is_ok(), "another sink may share the directory");
    drop(first);
    let (c, _) = ctx(state);
    assert!(
        FileSink::open(config(dir.path(), |_| {}), c).is_ok(),
        "the lock went with its sink"
    );
}

/// `path` under `dir` spelled relative to the test's working directory (without changing it:
/// tests run in parallel).
fn relative_to_cwd(dir: &Path, rest: &str) -> String {
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    format!("{up}{}/{rest}", dir.display().to_string().trim_start_matches('/'))
}

#[tokio::test]
async fn a_relative_path_is_registered_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let (c, registry) = ctx(vec![]);
    let relative = relative_to_cwd(dir.path(), "{resource_id}/{date}.ndjson");
    let mut sink = FileSink::open(config(dir.path(), |c| c.path = relative.clone()), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    let state = sink.flush().await.unwrap();
    let registered = registry.0.lock().unwrap().clone();
    for key in [&registered[0].key, &state[0].key] {
        assert!(Path::new(key).is_absolute(), "{key}");
        assert_eq!(
            std::fs::canonicalize(key).unwrap(),
            std::fs::canonicalize(dir.path().join("a/2025-11-24.ndjson")).unwrap()
        );
    }
}

#[tokio::test]
async fn a_relative_path_an_earlier_version_registered_is_rolled_back_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    // As an earlier version would have run it: the same relative template.
    let relative = relative_to_cwd(dir.path(), "{resource_id}/{date}.ndjson");
    let config = || config(dir.path(), |c| c.path = relative.clone());
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    let committed = sink.flush().await.unwrap();
    sink.write(batch(2, "a", 2..4)).await.unwrap();
    sink.flush().await.unwrap(); // never committed
    drop(sink);
    let path = PathBuf::from(&committed[0].key);
    let legacy = StateEntry {
        key: relative_to_cwd(dir.path(), "a/2025-11-24.ndjson"),
        value: committed[0].value,
    };

    let (c, registry) = ctx(vec![legacy.clone()]);
    let mut sink = FileSink::open(config(), c).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len() as i64, legacy.value);
    sink.write(batch(3, "a", 2..4)).await.unwrap();
    let state = sink.flush().await.unwrap();
    // The same file under the key its manifest entries name, not registered again at 0.
    assert!(registry.0.lock().unwrap().is_empty());
    assert_eq!(state[0].key, legacy.key);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 4);
}

/// A committed file, then `tail` appended as if by a crash (`ours`) or by someone else.
async fn committed_then(dir: &Path, compression: Compression, tail: &[u8]) -> (PathBuf, Vec<StateEntry>) {
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir, |c| c.compression = compression), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    let committed = sink.flush().await.unwrap();
    drop(sink);
    let path = PathBuf::from(&committed[0].key);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(tail)
        .unwrap();
    (path, committed)
}

#[tokio::test]
async fn bytes_auditship_did_not_write_are_set_aside_not_cut() {
    let ours = |compression| {
        let lines = [
            Bytes::from_static(b"{\"id\":\"e9\"}"),
            Bytes::from_static(b"{\"id\":\"e10\"}"),
        ];
        let mut member = encode_lines(compression, None, &lines).unwrap();
        // Torn by the crash.
        member.truncate(member.len() - 3);
        member
    };
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        // Our own torn tail is rolled back.
        let dir = tempfile::tempdir().unwrap();
        let (path, committed) = committed_then(dir.path(), compression, &ours(compression)).await;
        let (c, _) = ctx(committed.clone());
        FileSink::open(config(dir.path(), |c| c.compression = compression), c).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as i64,
            committed[0].value,
            "{compression:?}"
        );

        // Someone else's line after ours is not.
        let dir = tempfile::tempdir().unwrap();
        let mut tail = ours(compression);
        if compression == Compression::None {
            tail.extend_from_slice(b"\n");
        }
        tail.extend_from_slice(b"operator: archive checked 2026-12-06\n");
        let (path, committed) = committed_then(dir.path(), compression, &tail).await;
        let whole = committed[0].value as usize + tail.len();
        let (c, _) = ctx(committed.clone());
        let err = FileSink::open(config(dir.path(), |c| c.compression = compression), c)
            .err()
            .expect("foreign bytes stop the start");
        let message = err.to_string();
        assert!(!err.is_retryable());
        assert!(
            message.contains("auditship did not write them") && message.contains("Nothing was cut off"),
            "{compression:?}: {message}"
        );
        assert!(!path.exists());
        let aside: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(crate::foreign::SET_ASIDE_PREFIX)
            })
            .collect();
        assert_eq!(aside.len(), 1, "{compression:?}");
        assert_eq!(
            std::fs::metadata(&aside[0]).unwrap().len() as usize,
            whole,
            "every byte kept"
        );
        assert!(message.contains(&aside[0].display().to_string()), "{message}");

        // Until someone moves it back, every start stops.
        let (c, _) = ctx(committed.clone());
        let again = FileSink::open(config(dir.path(), |c| c.compression = compression), c)
            .err()
            .expect("still set aside");
        assert!(again.to_string().contains("was set aside as"), "{again}");

        // Moved back without the foreign bytes, the start goes on.
        let f = std::fs::OpenOptions::new().write(true).open(&aside[0]).unwrap();
        f.set_len(committed[0].value as u64).unwrap();
        std::fs::rename(&aside[0], &path).unwrap();
        let (c, _) = ctx(committed.clone());
        FileSink::open(config(dir.path(), |c| c.compression = compression), c).unwrap();
    }
}

#[tokio::test]
async fn bytes_appended_to_a_closed_file_while_running_are_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = ctx(vec![]);
    let mut sink = FileSink::open(config(dir.path(), |c| c.max_open_files = 1), c).unwrap();
    sink.write(batch(1, "a", 0..2)).await.unwrap();
    let committed = sink.flush().await.unwrap();
    // Another file takes the one open slot: `a` is closed.
    sink.write(batch(2, "b", 0..2)).await.unwrap();
    sink.flush().await.unwrap();
    let path = PathBuf::from(&committed[0].key);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"not ours\n")
        .unwrap();
    sink.write(batch(3, "a", 2..3)).await.unwrap();
    let err = sink.flush().await.expect_err("the write stops");
    assert!(err.to_string().contains("auditship did not write them"), "{err}");
    assert!(!path.exists());
}

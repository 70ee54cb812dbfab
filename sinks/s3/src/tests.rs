use std::sync::Arc;
use std::time::Duration;

use auditship_sink::testing::context;
use auditship_sink::{Batch, Event, Sink};

use super::*;
use crate::testing::{client, create_bucket, lines, read_all, S3Server};

fn server() -> S3Server {
    // The sink reads credentials from the AWS chain: put the test ones in place before any sink
    // connects, not only when a test's own client does (tests run in any order).
    crate::testing::test_credentials_env();
    S3Server::start().unwrap_or_else(|e| panic!("{e}"))
}

fn config(endpoint: &str, bucket: &str) -> S3SinkConfig {
    S3SinkConfig {
        object_lock_legal_hold: false,
        bucket: bucket.into(),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.into()),
        force_path_style: true,
        key_prefix: default_key_prefix(),
        compression: Compression::Gzip,
        batch_max_events: 100,
        batch_max_bytes: default_batch_max_bytes(),
        batch_timeout_ms: 60_000,
        server_side_encryption: None,
        kms_key_id: None,
        object_lock_mode: None,
        object_lock_retain_days: None,
        multipart_threshold_bytes: default_multipart_threshold_bytes(),
        multipart_part_bytes: default_multipart_part_bytes(),
        staging_dir: None,
        request_timeout_ms: default_request_timeout_ms(),
    }
}

fn event(rid: &str, n: u64, pad: usize) -> Event {
    let raw = format!(
        r#"{{"id":"{rid}-e{n}","resource_id":"{rid}","inserted_at":"2026-11-25T10:00:00.{n:06}Z","pad":"{}"}}"#,
        "x".repeat(pad)
    );
    Event {
        raw: raw.into(),
        id: format!("{rid}-e{n}").into(),
        resource_id: rid.into(),
        cursor_us: Some(1_764_064_800_000_000 + n as i64),
        cursor_span: None,
        time_us: Some(1_764_064_800_000_000 + n as i64),
        seq: n,
    }
}

fn batch(number: u64, events: Vec<Event>) -> Arc<Batch> {
    Arc::new(Batch { number, events })
}

async fn all_lines(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut out = Vec::new();
    for o in read_all(c, bucket).await.unwrap() {
        out.extend(lines(&o.key, &o.body).unwrap());
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn raw_lines(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.raw.to_vec()).unwrap())
        .collect()
}

#[test]
fn bad_configurations_are_named() {
    let mut c = config("http://x", "b");
    c.object_lock_mode = Some(LockMode::Compliance);
    assert!(c.validate().unwrap_err().contains("go together"));
    let mut c = config("http://x", "b");
    c.key_prefix = "{nope}/".into();
    assert!(c.validate().unwrap_err().contains("unknown placeholder"));
    let mut c = config("http://x", "b");
    c.kms_key_id = Some("k".into());
    assert!(c.validate().unwrap_err().contains("aws:kms"));
    let mut c = config("http://x", "b");
    c.multipart_part_bytes = 1024;
    assert!(c.validate().unwrap_err().contains("5 MiB"));
    let mut c = config("http://x", "b");
    c.request_timeout_ms = 0;
    assert!(c.validate().unwrap_err().contains("request_timeout_ms"));
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_hold_exactly_the_events_with_checksum_sse_and_retention() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "worm", true).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.endpoint(), "worm");
    cfg.server_side_encryption = Some(Sse::Aes256);
    cfg.object_lock_mode = Some(LockMode::Compliance);
    cfg.object_lock_retain_days = Some(2555);
    cfg.object_lock_legal_hold = true;
    let (ctx, registry, _) = context("cold", vec![]);
    let mut sink = S3Sink::open(cfg, ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();

    let mut sent = Vec::new();
    let mut deleted = Vec::new();
    for n in 1..=5u64 {
        let events: Vec<Event> = (0..60)
            .flat_map(|i| [event("sb-a", n * 100 + i, 20), event("sb/b", n * 100 + i, 20)])
            .collect();
        sent.extend(events.iter().cloned());
        sink.write(batch(n, events)).await.unwrap();
        deleted.extend(sink.flush().await.unwrap());
        assert!(sink.durable_through().unwrap() < n || sink.buffers.is_empty());
    }
    // Part of the events still wait for their object; close ships them.
    assert!(sink.flush_deadline().is_some());
    deleted.extend(sink.close().await.unwrap());
    assert_eq!(sink.durable_through(), Some(5));
    assert!(deleted.iter().all(|e| e.is_deletion()));
    assert_eq!(
        deleted.len(),
        registry.0.lock().unwrap().len(),
        "every pending entry is released"
    );
    assert_eq!(
        std::fs::read_dir(staging.path()).unwrap().count(),
        0,
        "staging is emptied"
    );

    let objects = read_all(&c, "worm").await.unwrap();
    assert!(objects.len() >= 6, "{} objects", objects.len());
    let mut got = Vec::new();
    for o in &objects {
        assert!(
            o.key.starts_with("p/2025-11-25/sb-a/") || o.key.starts_with("p/2025-11-25/sb%2Fb/"),
            "{}",
            o.key
        );
        assert!(o.key.ends_with(".ndjson.gz"));
        assert_eq!(
            o.checksum_sha256.as_deref(),
            Some(sha256_b64(&o.body).as_str()),
            "{}",
            o.key
        );
        assert_eq!(o.lock_mode.as_deref(), Some("COMPLIANCE"));
        // Retained 2555 days from the newest event the object holds (2025-11-25T10:00:00Z and
        // some µs), not from the upload.
        let until = o.retain_until.as_deref().unwrap_or_default();
        assert!(
            until.starts_with("2032-11-23T10:00:00"),
            "{}: retained until {until}",
            o.key
        );
        assert_eq!(o.legal_hold.as_deref(), Some("ON"), "{}", o.key);
        assert_eq!(o.sse.as_deref(), Some("AES256"));
        got.extend(lines(&o.key, &o.body).unwrap());
    }
    assert_eq!(sorted(got), sorted(raw_lines(&sent)));
    let mut keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), objects.len(), "keys are unique");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_objects_go_up_in_parts() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "big", false).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let mut cfg = config(&s.endpoint(), "big");
    cfg.compression = Compression::None;
    cfg.multipart_threshold_bytes = 1024 * 1024;
    cfg.multipart_part_bytes = 5 * 1024 * 1024;
    cfg.batch_max_events = 1_000_000;
    let (ctx, _, _) = context("cold", vec![]);
    let mut sink = S3Sink::open(cfg, ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    let events: Vec<Event> = (0..700).map(|n| event("sb-a", n, 10_000)).collect();
    sink.write(batch(1, events.clone())).await.unwrap();
    sink.close().await.unwrap();
    let objects = read_all(&c, "big").await.unwrap();
    assert_eq!(objects.len(), 1);
    assert!(objects[0].body.len() > 5 * 1024 * 1024);
    assert_eq!(
        lines(&objects[0].key, &objects[0].body).unwrap(),
        raw_lines(&events)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_named_at_start() {
    let s = server();
    let staging = tempfile::tempdir().unwrap();
    let (ctx, _, _) = context("cold", vec![]);
    let mut sink = S3Sink::open(
        config(&s.endpoint(), "no-such-bucket"),
        ctx,
        staging.path().to_path_buf(),
    )
    .unwrap();
    let e = sink.prepare().await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("\"no-such-bucket\" does not exist"), "{e}");

    let c = client(&s.endpoint()).await;
    create_bucket(&c, "plain", false).await.unwrap();
    let mut cfg = config(&s.endpoint(), "plain");
    cfg.object_lock_mode = Some(LockMode::Governance);
    cfg.object_lock_retain_days = Some(1);
    let (ctx, _, _) = context("cold", vec![]);
    let mut sink = S3Sink::open(cfg, ctx, staging.path().to_path_buf()).unwrap();
    let e = sink.prepare().await.unwrap_err();
    assert!(e.to_string().contains("has no Object Lock"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_by_a_crash_is_finished_on_start_and_its_events_not_written_twice() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "crash", false).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let cfg = config(&s.endpoint(), "crash");
    let (ctx, registry, _) = context("cold", vec![]);
    let mut sink = S3Sink::open(cfg.clone(), ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    let first: Vec<Event> = (0..100).map(|n| event("sb-a", n, 10)).collect();
    sink.write(batch(1, first.clone())).await.unwrap();
    // The store becomes unreachable mid-run and the process dies: the object is staged and
    // registered, but not in the bucket.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    sink.client = Some(client(&format!("http://{dead}")).await);
    let flushing = tokio::spawn(async move {
        let _ = sink.flush().await;
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !flushing.is_finished(),
        "the upload cannot finish with the store away"
    );
    flushing.abort();
    let _ = flushing.await;
    let pending = registry.0.lock().unwrap().clone();
    assert_eq!(pending.len(), 1);
    assert!(read_all(&c, "crash").await.unwrap().is_empty());

    // Restart: the pending object is put in place first; the same events delivered again (the
    // checkpoint never passed them) are recognised; new events go on as usual.
    let (ctx, _, _) = context("cold", pending.clone());
    let mut sink = S3Sink::open(cfg, ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    assert_eq!(read_all(&c, "crash").await.unwrap().len(), 1);
    let more: Vec<Event> = (100..150).map(|n| event("sb-a", n, 10)).collect();
    let mut again = first.clone();
    again.extend(more.iter().cloned());
    sink.write(batch(1, again)).await.unwrap();
    let released = sink.close().await.unwrap();
    assert!(released.contains(&StateEntry::deleted(pending[0].key.clone())));

    let mut want = raw_lines(&first);
    want.extend(raw_lines(&more));
    assert_eq!(sorted(all_lines(&c, "crash").await), sorted(want));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_server_holds_the_flush_and_nothing_is_lost() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "pause", false).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let (ctx, _, _) = context("cold", vec![]);
    let mut sink = S3Sink::open(config(&s.endpoint(), "pause"), ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    // 250 events: two full objects go up at the flush, the rest at close.
    let events: Vec<Event> = (0..250).map(|n| event("sb-a", n, 10)).collect();
    s.pause();
    sink.write(batch(1, events.clone())).await.unwrap();
    let flushing = tokio::spawn(async move {
        sink.flush().await.unwrap();
        sink
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!flushing.is_finished(), "no success while the server is stopped");
    s.resume();
    let mut sink = tokio::time::timeout(Duration::from_secs(60), flushing)
        .await
        .expect("uploads resume")
        .unwrap();
    sink.close().await.unwrap();
    assert_eq!(sorted(all_lines(&c, "pause").await), sorted(raw_lines(&events)));
}

/// A sandbox id too long for an S3 key is dead-lettered with the reason, and the rest of the
/// batch goes up: S3 would refuse the key on every retry.
#[tokio::test]
async fn an_id_too_long_for_an_object_key_is_dead_lettered_not_retried() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "long", false).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let (ctx, _registry, dead) = context("cold", vec![]);
    let mut sink = S3Sink::open(config(&s.endpoint(), "long"), ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    let long = "s".repeat(1000);
    sink.write(batch(
        1,
        vec![event("sb-1", 1, 0), event(&long, 2, 0), event("sb-1", 3, 0)],
    ))
    .await
    .unwrap();
    sink.close().await.unwrap();
    let dead = dead.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1.contains("S3's 1024 bytes"), "{}", dead[0].1);
    let got = all_lines(&c, "long").await;
    assert_eq!(got.len(), 2, "{got:?}");
}

/// Objects are written create-only (`If-None-Match: *`, which the test server enforces): the
/// same bytes again (an attempt whose answer was lost) count as written; other bytes under the
/// key are refused and the object stays as it was. Manifest and digest objects go the same way.
#[tokio::test(flavor = "multi_thread")]
async fn objects_are_written_create_only() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "once", false).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let (ctx, _, _) = context("cold", vec![]);
    let mut sink = S3Sink::open(config(&s.endpoint(), "once"), ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    let first = bytes::Bytes::from_static(b"{\"id\":\"a\"}\n");
    let other = bytes::Bytes::from_static(b"{\"id\":\"b\"}\n");
    let put = |body: &bytes::Bytes| (body.clone(), sha256_b64(body));
    let (body, sum) = put(&first);
    assert!(sink.upload("k/x.ndjson", &body, &sum, None).await.is_ok());
    assert!(
        sink.upload("k/x.ndjson", &body, &sum, None).await.is_ok(),
        "the same bytes again"
    );
    let (body, sum) = put(&other);
    match sink.upload("k/x.ndjson", &body, &sum, None).await {
        Err(crate::sink::Failure::Stop(m)) => assert!(m.contains("already exists with other content"), "{m}"),
        _ => panic!("other bytes under the key were not refused"),
    }
    let there = c
        .get_object()
        .bucket("once")
        .key("k/x.ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(there.body.collect().await.unwrap().into_bytes(), first);

    // Manifest lines: the same line again is written once; another under its key is refused.
    let publisher = S3Manifests::new(c.clone(), config(&s.endpoint(), "once"), "p", "cold").unwrap();
    let line = ManifestLine {
        seq: 1,
        unit: "k/x.ndjson".into(),
        line: r#"{"seq":1}"#.into(),
    };
    publisher.publish(std::slice::from_ref(&line)).await.unwrap();
    publisher.publish(std::slice::from_ref(&line)).await.unwrap();
    let forged = ManifestLine {
        line: r#"{"seq":1,"forged":true}"#.into(),
        ..line
    };
    let e = publisher.publish(&[forged]).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("already exists"),
        "{e}"
    );
}

/// A layout whose bodies store a digest of each id (as a redacting transform would), not the
/// id: `{"uid":"d-ID"}` lines, or the same uid for every event when `masked`.
#[derive(Debug)]
struct Digested {
    masked: bool,
}

impl Digested {
    fn uid(&self, id: &str) -> String {
        if self.masked {
            "***".into()
        } else {
            format!("d-{id}")
        }
    }
}

impl ObjectLayout for Digested {
    fn admit(&self, e: &Event) -> Result<(String, bytes::Bytes), String> {
        let line = serde_json::json!({ "uid": self.uid(&e.id) }).to_string();
        Ok(("digested/".into(), bytes::Bytes::from(line)))
    }
    fn encode(&self, kept: &[bytes::Bytes], size: u64) -> std::io::Result<bytes::Bytes> {
        compress(Compression::None, kept, size)
    }
    fn extension(&self) -> &'static str {
        ".ndjson"
    }
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }
    fn unit(&self) -> UnitCompression {
        UnitCompression::None
    }
    fn ids_in_body(&self) -> bool {
        false
    }
    fn event_ids(&self, _key: &str, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
        Ok(String::from_utf8_lossy(body)
            .lines()
            .filter_map(|l| self.stored_id(l.as_bytes()))
            .map(Arc::from)
            .collect())
    }
    fn stored_id(&self, kept: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(kept).ok()?;
        Some(v["uid"].as_str()?.to_string())
    }
    fn digest_key(&self, name: &str) -> String {
        format!("{DIGEST_DIR}/{name}")
    }
}

/// The crash window after the checkpoint that passes an object was handed over and before it
/// committed: the object is uploaded, its staged copy and kept ids are gone, its pending entry
/// is still there. Its events come again and must be matched by the ids its body stores.
async fn crash_after_release(masked: bool) -> (Vec<String>, usize) {
    let s = server();
    let c = client(&s.endpoint()).await;
    let bucket = if masked { "masked" } else { "digested" };
    create_bucket(&c, bucket, false).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let cfg = config(&s.endpoint(), bucket);
    let layout = || Arc::new(Digested { masked }) as Arc<dyn ObjectLayout>;
    let (ctx, registry, _) = context("lake", vec![]);
    let mut sink = S3Sink::with_layout(cfg.clone(), layout(), ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    let first: Vec<Event> = (0..100).map(|n| event("sb-a", n, 10)).collect();
    sink.write(batch(1, first.clone())).await.unwrap();
    sink.flush().await.unwrap();
    drop(sink);
    let pending = registry.0.lock().unwrap().clone();
    assert_eq!(pending.len(), 1, "the object is registered");
    for f in std::fs::read_dir(staging.path()).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }

    let (ctx, _, _) = context("lake", pending.clone());
    let mut sink = S3Sink::with_layout(cfg, layout(), ctx, staging.path().to_path_buf()).unwrap();
    sink.prepare().await.unwrap();
    let more: Vec<Event> = (100..130).map(|n| event("sb-a", n, 10)).collect();
    let mut again = first.clone();
    again.extend(more.iter().cloned());
    sink.write(batch(1, again)).await.unwrap();
    sink.close().await.unwrap();
    let stored: Vec<String> = all_lines(&c, bucket).await;
    (stored, first.len() + more.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_events_are_matched_by_the_ids_their_object_stores() {
    let (stored, events) = crash_after_release(false).await;
    assert_eq!(stored.len(), events, "every event once");
    let distinct: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), events);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_ids_that_repeat_are_not_matched_so_nothing_is_skipped() {
    // Every stored id is "***": matching by it would skip the 30 new events. Instead the 100
    // come again (written twice) and the 30 new ones are written: nothing lost.
    let (stored, events) = crash_after_release(true).await;
    assert_eq!(stored.len(), events + 100, "{} lines", stored.len());
}

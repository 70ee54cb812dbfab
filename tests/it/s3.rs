//! The binary shipping into a real S3-compatible server (moto, started per test on a free port),
//! read back by a separate S3 client.

use std::time::Duration;

use auditship::sim::SimConfig;
use auditship_sink_s3::testing::{client, create_bucket, lines, read_all, read_all_objects, S3Server};

use crate::util::{
    assert_exactly_once, finish, signal, sim, sim_lines, stop_when_all_committed, wait_for, Workspace,
};

fn server() -> S3Server {
    // Children inherit the AWS chain's test credentials from this process.
    auditship_sink_s3::testing::test_credentials_env();
    S3Server::start().unwrap_or_else(|e| panic!("{e}"))
}

fn s3_sink(s: &S3Server, bucket: &str, extra: &str) -> String {
    format!(
        "[sinks.cold]\ntype = \"s3\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nforce_path_style = true\nkey_prefix = \"miosa/{{date}}/{{resource_id}}/\"\ncompression = \"gzip\"\nbatch_max_events = 150\nbatch_timeout_ms = 400\n{extra}\n",
        s.endpoint()
    )
}

/// Every event line in the bucket, and the objects' count.
async fn bucket_lines(c: &aws_sdk_s3::Client, bucket: &str) -> (Vec<String>, usize) {
    let objects = read_all(c, bucket).await.unwrap();
    let mut out = Vec::new();
    for o in &objects {
        assert_eq!(
            o.checksum_sha256.as_deref(),
            Some(auditship_sink_s3::sha256_base64(&o.body).as_str()),
            "{}: the server holds the body's SHA-256",
            o.key
        );
        out.extend(lines(&o.key, &o.body).unwrap());
    }
    (out, objects.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_pipeline_ships_every_event_once_into_checksummed_locked_objects() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "archive", true).await.unwrap();
    let ids = ["sb-s1", "sb/s2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 300,
            live_rate_per_sec: 200.0,
            live_events_per_sandbox: Some(400),
            ..SimConfig::default()
        },
    )
    .await;
    let extra = "server_side_encryption = \"AES256\"\nobject_lock_mode = \"COMPLIANCE\"\nobject_lock_retain_days = 2555";
    let ws = Workspace::with_sinks(&sim, &ids, "", &s3_sink(&s, "archive", extra));
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    let out = stop_when_all_committed(&ws, &sim, child).await;
    assert!(out.stderr.contains("S3 bucket reachable"), "{}", out.stderr);

    let (got, objects) = bucket_lines(&c, "archive").await;
    assert!(objects > 4, "{objects} objects");
    assert_exactly_once(&got, &sim_lines(&sim, &ids));
    // Manifest objects included: locked and encrypted like the data.
    let all = read_all_objects(&c, "archive").await.unwrap();
    let manifests = all
        .iter()
        .filter(|o| o.key.contains("/auditship.manifest/"))
        .count();
    assert_eq!(manifests, objects, "one manifest object per data object");
    for o in all {
        assert!(o.key.starts_with("miosa/"), "{}", o.key);
        assert_eq!(o.lock_mode.as_deref(), Some("COMPLIANCE"), "{}", o.key);
        assert!(o.retain_until.is_some());
        assert_eq!(o.sse.as_deref(), Some("AES256"));
    }

    // The bucket verifies clean, against the checkpoint database too.
    let verify = |args: &[&str]| {
        let mut all = vec!["verify", "s3://archive/miosa/"];
        all.extend_from_slice(args);
        ws.run(&key, &all)
    };
    let out = verify(&["--pipeline", "pipe.toml"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(": CLEAN"), "{}", out.stdout);
    let endpoint = s.endpoint();
    let out = verify(&["--s3-endpoint", &endpoint, "--s3-path-style", "--format", "json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["units"].as_u64(), Some(objects as u64));

    // Object Lock keeps every version, but a new version can still be put over one, a delete
    // marker hides one, and a copy can be added: each is named.
    let data: Vec<String> = read_all(&c, "archive")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let (altered, removed, copied) = (&data[0], &data[1], &data[2]);
    c.put_object()
        .bucket("archive")
        .key(altered)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"{}\n"))
        .send()
        .await
        .unwrap();
    c.delete_object()
        .bucket("archive")
        .key(removed)
        .send()
        .await
        .unwrap();
    let copy_key = format!("{copied}.copy");
    c.copy_object()
        .bucket("archive")
        // The copy source is URL-encoded: a sandbox id's `%2F` must reach the server as is.
        .copy_source(format!("archive/{}", copied.replace('%', "%25")))
        .key(&copy_key)
        .send()
        .await
        .unwrap();
    let out = verify(&["--pipeline", "pipe.toml", "--format", "json"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let named = |kind: &str, key: &str| {
        json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == kind && f["object"].as_str() == key.strip_prefix("miosa/"))
    };
    assert!(named("altered", altered) || named("truncated", altered), "{json}");
    assert!(named("removed", removed), "{json}");
    assert!(named("unlisted", &copy_key), "{json}");
    assert!(named("duplicate_event", &copy_key), "{json}");
}

/// Run `pipe.toml` of `ws` and `kill -9` it six times at moments spread over 0.7–1.6 s after
/// each start, every other time with the server `s` stalled first, so that an object seals (its
/// age bound is 400 ms), is staged and registered, and its upload hangs: the kill is sure to land
/// while it is pending and the next start must finish it. Then a last run ships everything.
/// Returns every run's stderr; fails unless some start recovered a pending object.
pub(crate) async fn kill_9_with_pending_objects(
    s: &S3Server,
    ws: &Workspace,
    sim: &auditship::sim::Simulator,
    key: &str,
) -> String {
    let mut stderr = String::new();
    for round in 0..6u64 {
        let child = ws.spawn(key, &["run", "pipe.toml"]);
        tokio::time::sleep(Duration::from_millis(700 + (round * 337) % 900)).await;
        if round % 2 == 1 {
            s.pause();
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        signal(&child, libc::SIGKILL);
        s.resume();
        let out = finish(child, Duration::from_secs(10));
        assert_eq!(out.code, None, "killed by a signal");
        stderr.push_str(&out.stderr);
    }
    let child = ws.spawn(key, &["run", "pipe.toml"]);
    // The earlier runs may have shipped everything already: give this one time to start (and
    // install its signal handlers) before asking it to stop.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let out = stop_when_all_committed(ws, sim, child).await;
    stderr.push_str(&out.stderr);
    assert!(
        stderr.contains("object from before a crash is in place"),
        "no kill landed while an object was pending; the recovery went untested"
    );
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_leaves_no_event_in_two_objects() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "crashes", false).await.unwrap();
    let ids = ["sb-c1", "sb-c2", "sb-c3"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 300,
            live_rate_per_sec: 250.0,
            live_events_per_sandbox: Some(1_200),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::with_sinks(&sim, &ids, "", &s3_sink(&s, "crashes", ""));
    let key = sim.api_key().to_string();
    kill_9_with_pending_objects(&s, &ws, &sim, &key).await;
    let (got, _) = bucket_lines(&c, "crashes").await;
    assert_exactly_once(&got, &sim_lines(&sim, &ids));
    // Objects put in place after a crash are in the manifest too.
    let out = ws.run(&key, &["verify", "s3://crashes", "--pipeline", "pipe.toml"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_stopped_mid_run_holds_the_checkpoint_and_loses_nothing() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "outage", false).await.unwrap();
    let ids = ["sb-o1", "sb-o2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 200,
            live_rate_per_sec: 200.0,
            live_events_per_sandbox: Some(1_000),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::with_sinks(&sim, &ids, "", &s3_sink(&s, "outage", ""));
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for("some events to be shipped", Duration::from_secs(60), || {
        ws.committed_events() >= 400
    })
    .await;
    s.pause();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let frozen = ws.committed_events();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ws.committed_events(),
        frozen,
        "the checkpoint passed events S3 does not hold"
    );
    s.resume();
    stop_when_all_committed(&ws, &sim, child).await;
    let (got, _) = bucket_lines(&c, "outage").await;
    assert_exactly_once(&got, &sim_lines(&sim, &ids));
}

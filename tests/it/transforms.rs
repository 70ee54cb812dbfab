//! Transforms and routing end to end: several sinks fed from one pipeline, each with exactly its
//! events, an untouched archive beside them, secrets never in clear, and checkpoints that pass
//! filtered and failed events.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use auditship::config::{self, LoadMode};
use auditship::pipeline::{self, Mode, RunOptions, RunReport};
use auditship::secret::ApiKey;
use auditship::sim::{SimConfig, Simulator};
use serde_json::Value;

use crate::util::{
    assert_exactly_once, finish, kill_9_rounds, signal, sim, sim_lines, stop_when_all_committed, wait_for,
    walk, Workspace,
};

/// Every line of every file under `dir`.
fn lines_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    if dir.exists() {
        walk(dir, &mut files);
    }
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The simulator's events, parsed.
fn sim_events(sim: &Simulator, ids: &[&str]) -> Vec<Value> {
    sim_lines(sim, ids)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids_where(events: &[Value], f: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| f(e))
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Ids of `lines`, asserting each appears once; `id` picks the id out of a line.
fn unique_ids(lines: &[String], id: impl Fn(&Value) -> &Value) -> BTreeSet<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        *counts.entry(id(&v).as_str().unwrap().to_string()).or_default() += 1;
    }
    let dup: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "duplicated: {dup:?}");
    counts.into_keys().collect()
}

async fn run_until(ws: &Workspace, sim: &Simulator, done: impl Fn() -> bool) -> RunReport {
    let mut p = config::load(&ws.pipeline, LoadMode::Validate).unwrap();
    assert!(p.warnings.iter().all(|w| !w.contains("hmac")), "{:?}", p.warnings);
    p.api_key = Some(ApiKey::new(sim.api_key()));
    let opts = RunOptions::new(Mode::Live);
    let stop = opts.shutdown.clone();
    let handle = tokio::spawn(async move { pipeline::run(&p, opts).await });
    wait_for("the sinks to hold every event", Duration::from_secs(60), || {
        sim.live_done() && done()
    })
    .await;
    // Let the last batches reach every sink before the drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    handle.await.unwrap().expect("the pipeline stops cleanly")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sink_gets_exactly_its_events_and_the_archive_stays_untouched() {
    std::env::set_var("AUDITSHIP_TEST_HMAC_ROUTING", "routing-test-key-0123456789abcdef");
    let ids = ["sb-t1", "sb-t2", "sb-t3"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 200,
            live_rate_per_sec: 300.0,
            live_events_per_sandbox: Some(150),
            secret_every_events: Some(3),
            ..SimConfig::default()
        },
    )
    .await;
    let sinks = r#"
[[transforms]]
type = "redact"
fields = ["metadata.authorization"]
mode = "hmac-sha256"
hmac_key = "${AUDITSHIP_TEST_HMAC_ROUTING}"
secrets = true

[sinks.archive]
type = "file"
path = "{root}/archive/{resource_id}/{date}.ndjson"
pipeline_transforms = false

[sinks.siem]
type = "file"
path = "{root}/siem/{date}.ndjson"
when = { action = ["reject", "denied"] }
transforms = ["ocsf"]

[sinks.errors]
type = "file"
path = "{root}/errors/{date}.ndjson"
when = { any = [{ action = "error" }, { status_code = { gte = 500 } }] }
transforms = [{ type = "remove", fields = ["request_transforms"] }]
"#;
    let ws = Workspace::with_sinks(&sim, &ids, "", sinks);
    let report = run_until(&ws, &sim, || {
        ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    let events = sim_events(&sim, &ids);
    let total = events.len();

    // The archive: every event, byte for byte, secrets and all (it skips the pipeline's redact).
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    assert!(
        ws.archive_lines().iter().any(|l| l.contains("Bearer msk_live_")),
        "the archive is untouched"
    );

    // The SIEM: exactly the rejected and denied events, in OCSF, secrets never in clear.
    let siem = lines_under(&ws.path().join("siem"));
    let want = ids_where(&events, |e| {
        matches!(e["action"].as_str(), Some("reject" | "denied"))
    });
    assert!(
        want.len() > 50,
        "enough rejects to mean something: {}",
        want.len()
    );
    assert_eq!(unique_ids(&siem, |v| &v["metadata"]["uid"]), want);
    let mut hmac_seen = 0;
    for l in &siem {
        assert!(
            !l.contains("msk_live_") && !l.contains("tok_"),
            "a secret in clear: {l}"
        );
        let v: Value = serde_json::from_str(l).unwrap();
        for field in [
            "class_uid",
            "category_uid",
            "activity_id",
            "type_uid",
            "severity_id",
            "time",
        ] {
            assert!(v[field].is_number(), "{field} in {l}");
        }
        assert_eq!(v["class_uid"], 4002);
        assert_eq!(v["metadata"]["version"], auditship::transform::ocsf::OCSF_VERSION);
        assert_eq!(v["action"], "Denied");
        if let Some(a) = v["unmapped"]["metadata"]["authorization"].as_str() {
            assert!(a.starts_with("hmac-sha256:"), "{a}");
            hmac_seen += 1;
        }
    }
    assert!(hmac_seen > 10, "redacted values still correlate: {hmac_seen}");

    // The error sink: its route, its own transform, and the pipeline's redaction.
    let errors = lines_under(&ws.path().join("errors"));
    let want = ids_where(&events, |e| {
        e["action"] == "error" || e["status_code"].as_i64().is_some_and(|c| c >= 500)
    });
    assert!(!want.is_empty());
    assert_eq!(unique_ids(&errors, |v| &v["id"]), want);
    for l in &errors {
        assert!(
            !l.contains("request_transforms") && !l.contains("msk_live_") && !l.contains("tok_"),
            "{l}"
        );
    }

    // Routed-away events count as delivered: the checkpoint passed every event.
    let shipped: u64 = report.shipped.values().sum();
    assert_eq!(shipped as usize, total);
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_events_advance_the_checkpoint_across_kill_9_without_duplicates() {
    let ids = ["sb-f1", "sb-f2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 300,
            live_rate_per_sec: 250.0,
            live_events_per_sandbox: Some(1200),
            ties: 3,
            ..SimConfig::default()
        },
    )
    .await;
    let sinks = r#"
[[transforms]]
type = "filter"
when = { action = { ne = "allow" } }

[sinks.siem]
type = "file"
path = "{root}/siem/{resource_id}.ndjson"
when = { action = "reject" }
transforms = ["ocsf"]
rotate_max_bytes = 20000
"#;
    let ws = Workspace::with_sinks(&sim, &ids, "", sinks);
    let key = sim.api_key().to_string();
    kill_9_rounds(&ws, &key, 5).await;
    // Every event, filtered or not, must reach the checkpoint: nothing would be re-fetched
    // forever, and nothing is left behind.
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    stop_when_all_committed(&ws, &sim, child).await;
    assert_eq!(ws.committed_events(), sim.total_events() as i64);

    let siem = lines_under(&ws.path().join("siem"));
    let events = sim_events(&sim, &ids);
    let want = ids_where(&events, |e| e["action"] == "reject");
    assert_eq!(siem.len(), want.len(), "one line per reject, no duplicates");
    assert_eq!(unique_ids(&siem, |v| &v["metadata"]["uid"]), want);

    // A restart finds nothing new to do.
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_eq!(lines_under(&ws.path().join("siem")).len(), want.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_a_transform_fails_on_are_dead_lettered_and_count_as_handled() {
    let ids = ["sb-d1"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 400,
            ..SimConfig::default()
        },
    )
    .await;
    // `host` is a string: setting `host.flag` cannot work, so error events fail in this sink.
    let sinks = r#"
[sinks.archive]
type = "file"
path = "{root}/archive/{resource_id}/{date}.ndjson"

[sinks.tagged]
type = "file"
path = "{root}/tagged/out.ndjson"
transforms = [{ type = "set", fields = { "host.flag" = true }, when = { action = "error" } }, { type = "set", fields = { shipped_by = "auditship" } }]
"#;
    let ws = Workspace::with_sinks(&sim, &ids, "", sinks);
    let report = run_until(&ws, &sim, || {
        ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    let events = sim_events(&sim, &ids);
    let failing = ids_where(&events, |e| e["action"] == "error");
    assert!(failing.len() > 20, "{}", failing.len());

    let tagged = lines_under(&ws.path().join("tagged"));
    let want = ids_where(&events, |e| e["action"] != "error");
    assert_eq!(unique_ids(&tagged, |v| &v["id"]), want);
    assert!(tagged.iter().all(|l| l.contains(r#""shipped_by":"auditship""#)));
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));

    let letters: Vec<Value> = std::fs::read_to_string(ws.path().join("state/dead-letter.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lettered: BTreeSet<String> = letters
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lettered, failing);
    for l in &letters {
        assert_eq!(l["sink"], "tagged");
        assert_eq!(l["transform_failed"], true);
        assert_eq!(
            l["reason"],
            "sinks.tagged.transforms[1] (set): cannot set `host.flag`: `host` is a string"
        );
        // The dead letter keeps the event as received, so nothing is lost.
        assert!(l["raw"].as_str().unwrap().contains(r#""action":"error""#));
    }
    assert_eq!(report.dead_lettered as usize, failing.len());
    assert_eq!(report.shipped.values().sum::<u64>() as usize, events.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_transform_command_shows_what_each_sink_would_get() {
    let dir = tempfile::tempdir().unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ocsf");
    let mut input = String::new();
    for name in ["allow", "reject", "denied", "error"] {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(golden.join(format!("{name}.input.json"))).unwrap(),
        )
        .unwrap();
        input.push_str(&v.to_string());
        input.push('\n');
    }
    // Wrapped in an envelope, and without any time: OCSF cannot map it.
    input.push_str(r#"{"event":{"id":"evt_notime","action":"reject","resource_id":"sb-1"}}"#);
    input.push('\n');
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    std::fs::write(
        dir.path().join("pipe.toml"),
        r#"
[source]
sandboxes = ["sb-42"]

[[transforms]]
type = "redact"
fields = ["path"]
mode = "mask"

[sinks.archive]
type = "file"
path = "archive/{date}.ndjson"
pipeline_transforms = false

[sinks.siem]
type = "file"
path = "siem/{date}.ndjson"
when = { action = ["reject", "denied"] }
transforms = ["ocsf"]
"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditship"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("MIOSA_API_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, stdout, stderr) = run(&["transform", "pipe.toml", "--input", "events.ndjson"]);
    assert_eq!(code, Some(2), "a failed event gives exit 2; stderr: {stderr}");
    assert!(stdout.contains("== sinks.archive: 5 of 5 events =="), "{stdout}");
    assert!(stdout.contains("== sinks.siem: 2 of 5 events =="), "{stdout}");
    assert!(
        stderr.contains("sinks.siem: evt_allow dropped by sinks.siem.when"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sinks.siem: evt_notime failed: sinks.siem.transforms[1] (ocsf)"),
        "{stderr}"
    );
    assert!(
        stdout.contains("/upload?token=[REDACTED]"),
        "the archive skips the redaction: {stdout}"
    );

    let (code, stdout, _) = run(&[
        "transform",
        "pipe.toml",
        "--input",
        "events.ndjson",
        "--sink",
        "siem",
    ]);
    assert_eq!(code, Some(2));
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for v in &lines {
        assert_eq!(v["class_uid"], 4002);
        assert_eq!(
            v["http_request"]["url"]["path"], "***",
            "the pipeline's mask ran before ocsf"
        );
    }

    let (code, _, stderr) = run(&[
        "transform",
        "pipe.toml",
        "--input",
        "events.ndjson",
        "--sink",
        "nope",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("has no sink \"nope\" (it has: archive, siem)"),
        "{stderr}"
    );
    std::fs::write(dir.path().join("bad.ndjson"), "{\"id\":\"x\"}\nnot json\n").unwrap();
    let (code, _, stderr) = run(&["transform", "pipe.toml", "--input", "bad.ndjson"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("line 2: not an event"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_loaded_without_its_hmac_key_refuses_to_run_instead_of_masking() {
    let ids = ["sb-h1"];
    let sim = sim(&ids, SimConfig::default()).await;
    let sinks = r#"
[[transforms]]
type = "redact"
fields = ["path"]
mode = "hmac-sha256"
hmac_key = "${AUDITSHIP_TEST_HMAC_NEVER_SET}"

[sinks.archive]
type = "file"
path = "{root}/archive/{resource_id}.ndjson"
"#;
    let ws = Workspace::with_sinks(&sim, &ids, "", sinks);
    let mut p = config::load(&ws.pipeline, LoadMode::Validate).unwrap();
    p.api_key = Some(ApiKey::new(sim.api_key()));
    let e = pipeline::run(&p, RunOptions::new(Mode::Live)).await.unwrap_err();
    assert!(
        e.to_string().contains("transforms[1] (redact) has no HMAC key"),
        "{e}"
    );
    assert!(!e.is_retryable());
    let out = ws.run(sim.api_key(), &["run", "pipe.toml"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("AUDITSHIP_TEST_HMAC_NEVER_SET is not set"),
        "{}",
        out.stderr
    );
}

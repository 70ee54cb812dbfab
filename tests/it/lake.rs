//! The Security Lake sink into a real S3-compatible server (moto, per test on a free port), its
//! Parquet read back by pyarrow and duckdb (PyPI, pinned, installed by `scripts/services`) through
//! `tests/ocsf/read_lake.py`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use auditship::sim::SimConfig;
use auditship_sink_s3::testing::{client, create_bucket, read_all, read_all_objects, S3Server};
use serde_json::Value;

use crate::util::{sim, sim_lines, stop_when_all_committed, Workspace};

const SOURCE: &str = "ext/miosa-http/";

fn server() -> S3Server {
    auditship_sink_s3::testing::test_credentials_env();
    S3Server::start().unwrap_or_else(|e| panic!("{e}"))
}

/// An archive of every event as received, and the lake's HTTP Activity source, whose events go
/// through `transforms` (a TOML array).
fn sinks(s: &S3Server, transforms: &str, extra: &str) -> String {
    format!(
        r#"
[sinks.archive]
type = "file"
path = "{{root}}/archive/{{resource_id}}/{{date}}.ndjson"

[sinks.lake]
type = "security_lake"
source_location = "s3://lake/{SOURCE}"
class_uid = 4002
region = "us-east-1"
account_id = "123456789012"
endpoint = "{}"
force_path_style = true
batch_max_events = 150
batch_timeout_ms = 400
transforms = {transforms}
{extra}
"#,
        s.endpoint()
    )
}

/// What pyarrow and duckdb read of the lake's objects (downloaded under their keys).
struct Read {
    json: Value,
    objects: usize,
}

async fn read_lake(c: &aws_sdk_s3::Client) -> Read {
    let dir = tempfile::tempdir().unwrap();
    let objects = read_all(c, "lake").await.unwrap();
    for o in &objects {
        assert_eq!(
            o.checksum_sha256.as_deref(),
            Some(auditship_sink_s3::sha256_base64(&o.body).as_str()),
            "{}: the server holds the body's SHA-256",
            o.key
        );
        assert!(
            o.key.starts_with(SOURCE) && o.key.ends_with(".parquet"),
            "{}",
            o.key
        );
        let path = dir.path().join(&o.key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &o.body).unwrap();
    }
    let python = crate::ocsf::python().unwrap_or_else(|e| panic!("{e}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ocsf/read_lake.py");
    let out = Command::new(python).arg(script).arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the readers failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Read {
        json: serde_json::from_str(&text).unwrap(),
        objects: objects.len(),
    }
}

fn sim_ids(sim: &auditship::sim::Simulator, ids: &[&str]) -> Vec<String> {
    sim_lines(sim, ids)
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lake_gets_every_event_as_ocsf_parquet_that_pyarrow_and_duckdb_read() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "lake", true).await.unwrap();
    let ids = ["sb-l1", "sb-l2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 300,
            live_rate_per_sec: 200.0,
            live_events_per_sandbox: Some(200),
            ..SimConfig::default()
        },
    )
    .await;
    let extra = "object_lock_mode = \"COMPLIANCE\"\nobject_lock_retain_days = 30";
    let ws = Workspace::with_sinks(&sim, &ids, "", &sinks(&s, r#"["ocsf"]"#, extra));
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    stop_when_all_committed(&ws, &sim, child).await;

    let expected = sim_ids(&sim, &ids);
    let read = read_lake(&c).await;
    let j = &read.json;
    assert!(read.objects > 1, "{} objects", read.objects);
    assert_eq!(j["files"].as_u64(), Some(read.objects as u64));
    // pyarrow: every row, every event once, one schema in every file.
    let uids: Vec<String> = j["pyarrow"]["uids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids.len(), expected.len(), "rows = events");
    assert_eq!(
        uids.iter().collect::<HashSet<_>>(),
        expected.iter().collect::<HashSet<_>>(),
        "every event, by metadata.uid"
    );
    assert_eq!(j["pyarrow"]["schemas"], 1, "one schema for the source");
    let types = &j["pyarrow"]["types"];
    assert_eq!(types["time"], "timestamp[ms, tz=+00:00]", "{j}");
    for nested in ["metadata", "dst_endpoint", "http_request"] {
        assert!(
            types[nested].as_str().unwrap().starts_with("struct<"),
            "{nested}: {j}"
        );
    }
    assert!(
        types["unmapped"]
            .as_str()
            .unwrap()
            .starts_with("map<string, string"),
        "{j}"
    );
    // duckdb: all files at once, the partitions read from the paths as Athena reads them.
    let d = &j["duckdb"];
    assert_eq!(d["rows"].as_u64(), Some(expected.len() as u64));
    assert_eq!(d["distinct_uids"].as_u64(), Some(expected.len() as u64));
    assert_eq!(d["types"]["time"], "TIMESTAMP WITH TIME ZONE", "{j}");
    assert!(
        d["types"]["metadata"].as_str().unwrap().starts_with("STRUCT("),
        "{j}"
    );
    assert!(
        d["types"]["unmapped"].as_str().unwrap().starts_with("MAP("),
        "{j}"
    );
    for partition in ["region", "accountId", "eventDay"] {
        assert!(!d["types"][partition].is_null(), "{partition}: {j}");
    }
    assert!(!d["event_days"].as_array().unwrap().is_empty(), "{j}");

    // Inside the partitions only Parquet; auditship's manifests and digests under _auditship/.
    let all = read_all_objects(&c, "lake").await.unwrap();
    let mut manifests = 0;
    for o in &all {
        assert!(o.key.starts_with(SOURCE), "{}", o.key);
        if o.key.starts_with(&format!("{SOURCE}_auditship/")) {
            manifests += usize::from(o.key.contains("/auditship.manifest/"));
        } else {
            assert!(
                o.key.ends_with(".parquet"),
                "not Parquet among the partitions: {}",
                o.key
            );
        }
        assert_eq!(o.lock_mode.as_deref(), Some("COMPLIANCE"), "{}", o.key);
    }
    assert_eq!(manifests, read.objects, "one manifest entry per object");

    // The source verifies clean: every object's SHA-256 and every chain.
    let out = ws.run(
        &key,
        &[
            "verify",
            &format!("s3://lake/{SOURCE}"),
            "--pipeline",
            "pipe.toml",
        ],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(": CLEAN"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Parquet units were checked by their SHA-256"),
        "{}",
        out.stdout
    );
    // An export bundle does not carry Parquet yet, and says so.
    let keys = ws.run(&key, &["keygen", "--out", "sign"]);
    assert_eq!(keys.code, Some(0), "{}", keys.stderr);
    let out = ws.run(
        &key,
        &[
            "export",
            &format!("s3://lake/{SOURCE}"),
            "--s3-endpoint",
            &s.endpoint(),
            "--s3-path-style",
            "--public-key",
            "sign.pub",
            "-o",
            "lake.tar.zst",
        ],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("lists parquet units") && out.stderr.contains("NDJSON archives only"),
        "{}",
        out.stderr
    );
    assert!(!ws.path().join("lake.tar.zst").exists());
    // And one changed object is named.
    let victim = read_all(&c, "lake").await.unwrap().remove(0);
    let mut changed = victim.body.clone();
    let mid = changed.len() / 2;
    changed[mid] ^= 0x01;
    c.put_object()
        .bucket("lake")
        .key(&victim.key)
        .body(aws_sdk_s3::primitives::ByteStream::from(changed))
        .send()
        .await
        .unwrap();
    let out = ws.run(
        &key,
        &[
            "verify",
            &format!("s3://lake/{SOURCE}"),
            "--pipeline",
            "pipe.toml",
        ],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ALTERED"), "{}", out.stdout);
}

/// With the ids redacted (metadata.uid is their keyed digest), the objects do not hold the
/// events' ids: after a crash, the ids kept beside each staged object recognise the events that
/// come again.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_leaves_the_lake_with_every_event_once_even_with_redacted_ids() {
    let s = server();
    let c = client(&s.endpoint()).await;
    create_bucket(&c, "lake", false).await.unwrap();
    let ids = ["sb-k1", "sb-k2", "sb-k3"];
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
    let redact = r#"[{ type = "redact", fields = ["id"], mode = "hmac-sha256", hmac_key = "lake-test-key-0123456789abcdef0123" }, "ocsf"]"#;
    let ws = Workspace::with_sinks(&sim, &ids, "", &sinks(&s, redact, ""));
    let key = sim.api_key().to_string();
    // Kills land while objects are pending: the next start must recognise their events by the
    // ids kept beside them.
    let stderr = crate::s3::kill_9_with_pending_objects(&s, &ws, &sim, &key).await;

    let expected = sim_ids(&sim, &ids);
    let read = read_lake(&c).await;
    let uids: Vec<&str> = read.json["pyarrow"]["uids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        uids.iter().all(|u| u.starts_with("hmac-sha256:")),
        "the ids are redacted"
    );
    let unique: HashSet<&str> = uids.iter().copied().collect();
    let lost = expected.len().saturating_sub(unique.len());
    let duplicated = uids.len() - unique.len();
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "{} rows in {} objects for {} events",
        uids.len(),
        read.objects,
        expected.len()
    );
    assert_eq!(
        read.json["duckdb"]["distinct_uids"].as_u64(),
        Some(expected.len() as u64)
    );
    // The objects' own uids are digests, not the events' ids: what recognised the events that
    // came again were the ids kept beside the staged objects.
    assert!(
        stderr.contains("ids_from=\"kept beside it\""),
        "no recovery used the kept ids: {stderr}"
    );
}

#[test]
fn transform_prints_the_parquet_schema_of_a_class() {
    let run = |class: &str| {
        Command::new(env!("CARGO_BIN_EXE_auditship"))
            .args(["transform", "--parquet-schema", class])
            .output()
            .unwrap()
    };
    let out = run("4002");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for column in [
        "OPTIONAL INT64 time (TIMESTAMP(MILLIS,true));",
        "OPTIONAL group metadata {",
        "OPTIONAL BYTE_ARRAY http_method (STRING);",
        "OPTIONAL group unmapped (MAP) {",
    ] {
        assert!(text.contains(column), "{column} not in:\n{text}");
    }
    let out = run("3002");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Parquet schema for OCSF class 3002"), "{err}");
}

/// Gap findings (class 2004) fit their source's schema and read back whole.
#[test]
fn gap_findings_become_detection_finding_parquet() {
    use auditship::ops::completeness::{CompletenessReport, ReportHour};
    use auditship_sink_s3::ObjectLayout;
    let report = CompletenessReport {
        pipeline: "pipe".into(),
        hours: (0..3)
            .map(|i| ReportHour {
                resource_id: format!("sb-{i}"),
                hour: "2026-11-25T10:00:00Z".into(),
                api: 10,
                ledger: 7,
                gap: 3,
                reshipped: 3,
                ..Default::default()
            })
            .collect(),
        hash: "ab".repeat(32),
        ..Default::default()
    };
    let findings = auditship::ops::gap_findings::findings(&report);
    let layout =
        auditship_sink_security_lake::ParquetLayout::new(2004, "ext/gaps/", "us-east-1", "1", 3).unwrap();
    let kept: Vec<bytes::Bytes> = findings
        .iter()
        .map(|e| layout.admit(e).unwrap_or_else(|why| panic!("{why}")).1)
        .collect();
    let body = layout.encode(&kept, 0).unwrap();
    let uids: Vec<String> = auditship_sink_security_lake::uids(&body)
        .unwrap()
        .iter()
        .map(|u| u.to_string())
        .collect();
    let expected: Vec<String> = findings.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(uids, expected);
}

//! Reconciliation: a gap punched into an archive is found hour by hour and filled with exactly
//! the missing events; a consistent window reports nothing and ships nothing.

use auditship::sim::SimConfig;

use crate::util::{assert_exactly_once, sim, sim_lines, sim_rejects, walk, Workspace};

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_finds_and_fills_a_gap_punched_into_an_archive() {
    let ids = ["sb-r1", "sb-r2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 400,
            ..SimConfig::default()
        },
    )
    .await;
    let sinks = r#"
[manifest]
signing_key_file = "{root}/keys/sign.key"

[sinks.archive]
type = "file"
path = "{root}/archive/{resource_id}/{date}.ndjson"

[sinks.rejects]
type = "file"
path = "{root}/rejects/{resource_id}.ndjson"
when = { action = "reject" }

# The SIEM's: no audit event reaches it, only gap findings.
[sinks.siem]
type = "file"
path = "{root}/siem/findings.ndjson"
when = { action = "none" }
"#;
    let ws = Workspace::with_sinks(&sim, &ids, "requests_per_minute = 100000", sinks);
    let key = sim.api_key().to_string();
    std::fs::create_dir(ws.path().join("keys")).unwrap();
    let out = ws.run(&key, &["keygen", "--out", "keys/sign"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = ws.run(&key, &["backfill", "pipe.toml", "--since", "2d"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));

    let clean = ws.run(&key, &["reconcile", "pipe.toml", "--since", "2d"]);
    assert_eq!(clean.code, Some(0), "{}", clean.stderr);
    assert!(clean.stdout.contains("0 hour(s) differ"), "{}", clean.stdout);
    assert!(clean.stdout.contains("800 events in the API"), "{}", clean.stdout);
    assert!(
        clean.stdout.contains("0 event(s) shipped again"),
        "{}",
        clean.stdout
    );

    // Punch a gap: 37 events of sb-r1 vanish from the archive, among them some rejects from
    // the rejects sink too.
    let mut files = Vec::new();
    walk(&ws.path().join("archive/sb-r1"), &mut files);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| !(100..137).contains(i))
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&files[0], kept.join("\n") + "\n").unwrap();
    let rejects_file = ws.path().join("rejects/sb-r1.ndjson");
    let rejects = std::fs::read_to_string(&rejects_file).unwrap();
    let rejects_kept: Vec<&str> = rejects.lines().skip(3).collect();
    std::fs::write(&rejects_file, rejects_kept.join("\n") + "\n").unwrap();
    assert_eq!(ws.archive_lines().len(), 800 - 37);

    let dry = ws.run(&key, &["reconcile", "pipe.toml", "--since", "2d", "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert!(dry.stdout.contains("archive: 37"), "{}", dry.stdout);
    assert!(dry.stdout.contains("rejects: 3"), "{}", dry.stdout);
    assert!(dry.stdout.contains("sb-r1"), "{}", dry.stdout);
    assert!(
        !dry.stdout.contains("sb-r2 "),
        "only sb-r1 differs: {}",
        dry.stdout
    );
    assert_eq!(ws.archive_lines().len(), 800 - 37, "a dry run ships nothing");

    let fix = ws.run(
        &key,
        &[
            "reconcile",
            "pipe.toml",
            "--since",
            "2d",
            "--report",
            "report.json",
            "--gap-findings-to",
            "siem",
        ],
    );
    assert_eq!(fix.code, Some(0), "{}", fix.stderr);
    assert!(
        fix.stdout
            .contains("completeness report written to report.json (37 gap event(s)"),
        "{}",
        fix.stdout
    );
    assert!(fix.stdout.contains("event(s) shipped again"), "{}", fix.stdout);
    // Every event once again: the gap is filled with exactly what was missing.
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    let rejects_now: Vec<String> = std::fs::read_to_string(&rejects_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_exactly_once(&rejects_now, &sim_rejects(&sim, &["sb-r1"]));

    let again = ws.run(&key, &["reconcile", "pipe.toml", "--since", "2d"]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stdout.contains("0 hour(s) differ"), "{}", again.stdout);

    // The signed completeness report: every sandbox-hour, the gap where it was, what was
    // shipped again; checked with the public key alone; any change to it fails the check.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path().join("report.json")).unwrap()).unwrap();
    let hours = report["hours"].as_array().unwrap();
    let api: u64 = hours.iter().map(|h| h["api"].as_u64().unwrap()).sum();
    assert_eq!(api, 800, "{report:#}");
    let gaps: Vec<&serde_json::Value> = hours.iter().filter(|h| h["gap"].as_u64() != Some(0)).collect();
    assert!(
        !gaps.is_empty() && gaps.iter().all(|h| h["resource_id"] == "sb-r1"),
        "{report:#}"
    );
    assert_eq!(gaps.iter().map(|h| h["gap"].as_u64().unwrap()).sum::<u64>(), 37);
    assert_eq!(
        gaps.iter().map(|h| h["reshipped"].as_u64().unwrap()).sum::<u64>(),
        37
    );
    // Each file sink's count, as [should hold, holds] when compared: 37 lacking in the
    // archive sink, 3 in the rejects sink.
    let lacking = |sink: &str| -> u64 {
        hours
            .iter()
            .filter_map(|h| h["archive"][sink].as_array())
            .map(|c| c[0].as_u64().unwrap() - c[1].as_u64().unwrap())
            .sum()
    };
    assert_eq!((lacking("archive"), lacking("rejects")), (37, 3), "{report:#}");
    assert_eq!(report["complete"], true);
    let out = ws.run(
        &key,
        &["verify-report", "report.json", "--public-key", "keys/sign.pub"],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("VALID") && out.stdout.contains("37 found missing"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("GAP sb-r1"), "{}", out.stdout);
    let text = std::fs::read_to_string(ws.path().join("report.json")).unwrap();
    std::fs::write(
        ws.path().join("edited.json"),
        text.replacen("\"gap\": 0", "\"gap\": 1", 1),
    )
    .unwrap();
    let out = ws.run(
        &key,
        &["verify-report", "edited.json", "--public-key", "keys/sign.pub"],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("NOT VALID: changed after it was signed"),
        "{}",
        out.stdout
    );
    // One OCSF Detection Finding per gap hour went into the SIEM's sink, and nothing else.
    let findings: Vec<serde_json::Value> = std::fs::read_to_string(ws.path().join("siem/findings.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(findings.len(), gaps.len(), "{findings:#?}");
    // Valid OCSF, by the validator the transform's output passes too.
    crate::ocsf::assert_valid_ocsf(&findings.iter().map(|f| f.to_string()).collect::<Vec<_>>());
    for (f, h) in findings.iter().zip(&gaps) {
        assert_eq!(
            (f["class_uid"].as_u64(), f["type_uid"].as_u64()),
            (Some(2004), Some(200401))
        );
        assert_eq!(f["resources"][0]["uid"], h["resource_id"]);
        assert_eq!(f["unmapped"]["hour"], h["hour"]);
        assert_eq!(f["unmapped"]["missing_events"], h["gap"]);
        assert_eq!(f["unmapped"]["report_hash"], report["hash"]);
        assert_eq!(f["status"], "Resolved", "the gap was filled");
    }
    // Never overwritten.
    let out = ws.run(
        &key,
        &[
            "reconcile",
            "pipe.toml",
            "--since",
            "2d",
            "--report",
            "report.json",
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("never overwritten"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_response_that_does_not_decode_fails_the_reconcile_instead_of_shortening_the_api_side() {
    let ids = ["sb-rb"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 50,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let key = sim.api_key().to_string();
    let out = ws.run(&key, &["backfill", "pipe.toml", "--since", "2d"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let broken = crate::util::BrokenListServer::start().await;
    ws.point_at(&sim.base_url(), &broken.base_url());
    let out = ws.run(&key, &["reconcile", "pipe.toml", "--since", "2d"]);
    assert!(broken.requests() >= 1);
    // Before, the broken page was skipped like a bad element, the API side read as empty and
    // the reconcile exited 0. A response that is not JSON is no passing fault: exit 1.
    assert_eq!(
        out.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("could not decode list response"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("events in the API"), "{}", out.stdout);
}

//! `--metrics-addr`: `/metrics` parses as Prometheus text and its counters match what was
//! shipped; `/health` turns ready once every sandbox is connected; no secret in any of it.

use std::collections::BTreeMap;
use std::time::Duration;

use auditship::sim::SimConfig;

use crate::util::{finish, signal, sim, sim_rejects, wait_for, Workspace, ARCHIVE_AND_REJECTS};

/// `name{labels}` → value, checking the text format on the way: every sample's family is
/// declared with HELP and TYPE before its samples, and every value is a number.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(typed.contains(name), "{name} has no TYPE line before it");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(series.to_string(), v);
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_what_was_shipped_and_health_turns_ready() {
    let key = "msk_live_METRICS_SECRET_71f3";
    let ids = ["sb-m1", "sb-m2", "sb-mpoll"];
    let sim = sim(
        &ids,
        SimConfig {
            api_key: key.into(),
            backlog_per_sandbox: 150,
            live_rate_per_sec: 100.0,
            live_events_per_sandbox: Some(100),
            no_socket: vec!["sb-mpoll".into()],
            garbage_ratio: 0.05,
            ..SimConfig::default()
        },
    )
    .await;
    // The SIEM's copy is OCSF: the transform's counters are served too.
    let sinks = format!("{ARCHIVE_AND_REJECTS}transforms = [\"ocsf\"]\n");
    let ws = Workspace::with_sinks(&sim, &ids, "", &sinks);
    let port = auditship_sink::testing::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let child = ws.spawn(key, &["run", "pipe.toml", "--metrics-addr", &addr]);
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("http://{addr}{path}");
        async move {
            match http.get(url).send().await {
                Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(_) => None,
            }
        }
    };
    // Ready once every sandbox is past its catch-up (on its socket or on the fallback).
    let start = std::time::Instant::now();
    loop {
        if let Some((200, body)) = get("/health").await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "ready");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never ready: {:?}",
            get("/health").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get("/live").await.map(|r| r.0), Some(200));

    wait_for("every event committed", Duration::from_secs(60), || {
        sim.live_done() && ws.committed_events() >= sim.total_events() as i64
    })
    .await;
    // Let a commit pass the last acknowledgements.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        !text.contains("METRICS_SECRET") && !text.contains("msk_"),
        "a secret in /metrics"
    );
    let m = parse_prometheus(&text);
    let total = sim.total_events() as f64;
    let rejects = sim_rejects(&sim, &ids).len() as f64;
    let siem_lines = std::fs::read_to_string(ws.path().join("siem.ndjson"))
        .unwrap()
        .lines()
        .count() as f64;
    assert_eq!(siem_lines, rejects);
    let at = |series: &str| *m.get(series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(
        at(r#"auditship_events_shipped_total{pipeline="pipe",sink="archive"}"#),
        total
    );
    assert_eq!(
        at(r#"auditship_events_shipped_total{pipeline="pipe",sink="siem"}"#),
        rejects
    );
    assert_eq!(
        at(r#"auditship_sink_filtered_total{pipeline="pipe",sink="siem"}"#),
        total - rejects
    );
    assert_eq!(
        at(r#"auditship_ocsf_events_total{pipeline="pipe",at="sinks.siem",outcome="mapped"}"#),
        rejects
    );
    assert_eq!(
        at(r#"auditship_ocsf_events_total{pipeline="pipe",at="sinks.siem",outcome="failed"}"#),
        0.0
    );
    // Every simulated event has fields the mapping does not place (effect, policy_id, ...).
    assert!(at(r#"auditship_ocsf_unmapped_fields_total{pipeline="pipe",at="sinks.siem"}"#) >= rejects);
    assert!(
        !text.contains(r#"at="transforms""#) && !text.contains(r#"at="sinks.archive""#),
        "only places with an ocsf step are reported"
    );
    assert_eq!(at(r#"auditship_events_committed_total{pipeline="pipe"}"#), total);
    assert_eq!(at(r#"auditship_events_received_total{pipeline="pipe"}"#), total);
    let dead = std::fs::read_to_string(ws.path().join("state/dead-letter.ndjson"))
        .map(|t| t.lines().count())
        .unwrap_or(0) as f64;
    assert!(dead > 0.0, "the simulator sent garbage frames");
    assert_eq!(
        at(r#"auditship_dead_letters_total{pipeline="pipe",reason="not_an_event"}"#),
        dead
    );
    assert_eq!(at(r#"auditship_sandboxes{pipeline="pipe"}"#), 3.0);
    assert_eq!(at("auditship_sockets_open"), 2.0);
    assert_eq!(at("auditship_sandboxes_polling"), 1.0);
    assert_eq!(at("auditship_sandboxes_connecting"), 0.0);
    assert!(at(r#"auditship_api_responses_total{status="200"}"#) >= 3.0);
    let lag = at(r#"auditship_lag_seconds{pipeline="pipe"}"#);
    assert!((0.0..60.0).contains(&lag), "lag {lag}");
    assert!(at(r#"auditship_checkpoint_age_seconds{pipeline="pipe"}"#) < 60.0);
    assert_eq!(
        at(r#"auditship_sink_failing{pipeline="pipe",sink="archive"}"#),
        0.0
    );
    // A file sink rolls back instead of skipping replays (the Kafka sink's count is checked in
    // its own tests).
    assert_eq!(
        at(r#"auditship_sink_replays_skipped_total{pipeline="pipe",sink="archive"}"#),
        0.0
    );

    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_metrics_port_is_a_clear_error() {
    let sim = sim(&["sb-mx"], SimConfig::default()).await;
    let ws = Workspace::new(&sim, &["sb-mx"], "", "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = ws.run(sim.api_key(), &["run", "pipe.toml", "--metrics-addr", &addr]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot listen on {addr} for metrics")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pick another --metrics-addr"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_grafana_dashboard_only_queries_series_auditship_serves() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/auditship-dashboard.json");
    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let served = auditship::metrics::render();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("auditship_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    served.contains(&format!("# TYPE {name} ")),
                    "{}: {name} is not served",
                    panel["title"]
                );
                checked += 1;
                rest = &rest[i + name.len()..];
            }
        }
    }
    assert!(checked >= 12, "{checked}");
}

/// The families `/metrics` declares, with their help texts and types, are the ones
/// `tests/golden/metrics-families.txt` lists (written by the hand-made renderer this replaced):
/// dashboards and alerts keyed on them keep working.
#[test]
fn the_families_and_their_help_texts_stay_as_they_were() {
    let served = auditship::metrics::render();
    let mut declared: Vec<&str> = served.lines().filter(|l| l.starts_with("# ")).collect();
    declared.sort_unstable();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics-families.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, declared.join("\n") + "\n").unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1 and review it", path.display()));
    let expected: Vec<&str> = golden.lines().collect();
    assert_eq!(
        declared,
        expected,
        "the served families differ from {}",
        path.display()
    );
}

/// The systemd unit's command line works for any shard: shard 10 of 12 gets the base port plus
/// 10 (`--metrics-port-per-shard`), shown here by taking that port first. (The unit used to
/// append the shard to the port's digits: `946%i` made port 94610 for shard 10.)
#[tokio::test(flavor = "multi_thread")]
async fn the_systemd_unit_gives_every_shard_its_own_metrics_port() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/auditship@.service"),
    )
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let ids: Vec<String> = (0..60).map(|i| format!("sb-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sim = sim(&ids, SimConfig::default()).await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let shard_port = taken.local_addr().unwrap().port();
    let base = shard_port - 10;
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1) // the binary's path
        .map(|a| {
            a.replace("%i", "10")
                .replace("${SHARDS}", "12")
                .replace("127.0.0.1:9460", &format!("127.0.0.1:{base}"))
        })
        .map(|a| {
            if a.ends_with(".toml") {
                "pipe.toml".to_string()
            } else {
                a
            }
        })
        .collect();
    assert!(
        args.iter().any(|a| a == &format!("127.0.0.1:{base}")),
        "the unit's base port moved: {exec}"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ws.run(sim.api_key(), &args);
    assert_eq!(out.code, Some(1), "{args:?}: stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot listen on 127.0.0.1:{shard_port} for metrics")),
        "{args:?}: {}",
        out.stderr
    );
}

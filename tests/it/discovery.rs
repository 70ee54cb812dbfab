//! `sandboxes = "all"`: new sandboxes are found and followed, deleted ones left (their
//! checkpoints kept), include/exclude globs respected.

use std::time::Duration;

use auditship::config::{self, LoadMode};
use auditship::pipeline::{self, Mode, RunOptions};
use auditship::secret::ApiKey;
use auditship::sim::SimConfig;

use crate::util::{assert_exactly_once, sim, sim_lines, wait_for, Workspace};

#[tokio::test(flavor = "multi_thread")]
async fn discovery_follows_new_sandboxes_and_leaves_deleted_ones() {
    let first = ["sb-a", "sb-b", "sb-skip-0"];
    let sim = sim(
        &first,
        SimConfig {
            backlog_per_sandbox: 20,
            live_rate_per_sec: 20.0,
            live_events_per_sandbox: Some(200),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &first, "", "");
    let text = std::fs::read_to_string(&ws.pipeline).unwrap();
    let text = text.replace(
        r#"sandboxes = ["sb-a", "sb-b", "sb-skip-0"]"#,
        "sandboxes = \"all\"\nexclude = [\"sb-skip-*\"]\ndiscover_interval_ms = 1000",
    );
    std::fs::write(&ws.pipeline, text).unwrap();
    let mut p = config::load(&ws.pipeline, LoadMode::Validate).unwrap();
    assert!(p.discovery.is_some());
    p.api_key = Some(ApiKey::new(sim.api_key()));
    let opts = RunOptions::new(Mode::Live);
    let stop = opts.shutdown.clone();
    let progress = opts.progress.clone();
    let handle = tokio::spawn(async move { pipeline::run(&p, opts).await });
    let has = |sb: &str| ws.path().join("archive").join(sb).exists();
    wait_for("the first sandboxes shipping", Duration::from_secs(30), || {
        has("sb-a") && has("sb-b")
    })
    .await;

    sim.add_sandbox("sb-new", 30);
    sim.add_sandbox("sb-skip-1", 10);
    wait_for("the new sandbox followed", Duration::from_secs(30), || {
        has("sb-new")
    })
    .await;
    sim.remove_sandbox("sb-a");
    wait_for("the deleted sandbox left", Duration::from_secs(30), || {
        progress.sandboxes.load(std::sync::atomic::Ordering::Relaxed) == 2
    })
    .await;
    wait_for("every live event", Duration::from_secs(60), || sim.live_done()).await;
    let followed = ["sb-b", "sb-new"];
    wait_for("the followed sandboxes complete", Duration::from_secs(30), || {
        let lines = ws.archive_lines_so_far();
        let want = sim_lines(&sim, &followed);
        want.iter().all(|l| lines.contains(l))
    })
    .await;
    stop.cancel();
    let report = handle.await.unwrap().expect("stops cleanly");

    assert!(
        !has("sb-skip-0") && !has("sb-skip-1"),
        "excluded sandboxes are never followed"
    );
    let lines: Vec<String> = ws
        .archive_lines()
        .into_iter()
        .filter(|l| !l.contains(r#""resource_id":"sb-a""#))
        .collect();
    assert_exactly_once(&lines, &sim_lines(&sim, &followed));
    // The deleted sandbox shipped without duplicates up to its removal, and is reported.
    let a_lines: Vec<String> = ws
        .archive_lines()
        .into_iter()
        .filter(|l| l.contains(r#""resource_id":"sb-a""#))
        .collect();
    let unique: std::collections::HashSet<&String> = a_lines.iter().collect();
    assert_eq!(unique.len(), a_lines.len(), "no duplicates for sb-a");
    assert!(a_lines.len() >= 20, "sb-a shipped before it left");
    // Whichever comes first: the next list without it, or its own endpoint answering 404.
    let why = report.stopped.get("sb-a").map(String::as_str);
    assert!(
        matches!(
            why,
            Some("left the sandbox list" | "sandbox not found (deleted?)")
        ),
        "{why:?}"
    );
    assert!(report.shipped.contains_key("sb-new"));
}

//! Scheduled backfills: named jobs that resume after a kill and do nothing once finished, and
//! dry runs that count without shipping.

use std::time::Duration;

use auditship::sim::SimConfig;

use crate::util::{
    assert_exactly_once, finish, signal, sim, sim_lines, sim_rejects, wait_for, Workspace,
    ARCHIVE_AND_REJECTS,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_job_resumes_with_its_own_window_and_a_finished_one_ships_nothing() {
    let ids = ["sb-j1", "sb-j2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 3_000,
            ..SimConfig::default()
        },
    )
    .await;
    // 300 requests a minute: a burst of 50 pages, then five a second, so the kill lands mid-way.
    let ws = Workspace::new(&sim, &ids, "requests_per_minute = 300\npage_limit = 50", "");
    let key = sim.api_key().to_string();
    let child = ws.spawn(
        &key,
        &["backfill", "pipe.toml", "--job", "nightly-1", "--since", "2d"],
    );
    wait_for(
        "part of the window to be shipped",
        Duration::from_secs(60),
        || ws.archive_lines_so_far().len() > 500,
    )
    .await;
    signal(&child, libc::SIGKILL);
    finish(child, Duration::from_secs(10));
    let partial = ws.archive_lines_so_far().len();
    assert!(partial < 6_000, "killed before the end ({partial})");

    // Events that arrive after the job started are outside its window: the resumed job must
    // not ship them (its window was fixed at its first run).
    for id in ids {
        sim.append(id, 7);
    }
    let out = ws.run(&key, &["backfill", "pipe.toml", "--job", "nightly-1"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("resuming job nightly-1: window"),
        "{}",
        out.stderr
    );
    let archived = ws.archive_lines();
    let first_6000: Vec<String> = ids
        .iter()
        .flat_map(|s| sim.events(s).into_iter().take(3_000).map(|e| e.json.to_string()))
        .collect();
    assert_exactly_once(&archived, &first_6000);

    // Finished: running it again (as cron would after a retry) does nothing and says so.
    let again = ws.run(
        &key,
        &["backfill", "pipe.toml", "--job", "nightly-1", "--since", "2d"],
    );
    assert_eq!(again.code, Some(0), "stderr: {}", again.stderr);
    assert!(
        again
            .stderr
            .contains("job nightly-1 of pipeline pipe finished at"),
        "{}",
        again.stderr
    );
    assert_eq!(ws.archive_lines().len(), archived.len());

    // A new job name is a new window; it covers the appended events too.
    let dry = ws.run(
        &key,
        &[
            "backfill",
            "pipe.toml",
            "--job",
            "nightly-2",
            "--since",
            "2d",
            "--dry-run",
        ],
    );
    assert_eq!(dry.code, Some(0), "stderr: {}", dry.stderr);
    assert!(dry.stdout.contains("total"), "{}", dry.stdout);
    let total: u64 = dry
        .stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(total, sim.total_events() as u64, "{}", dry.stdout);
    assert_eq!(
        ws.archive_lines().len(),
        archived.len(),
        "a dry run ships nothing"
    );
    let status = ws.run(&key, &["backfill", "pipe.toml", "--job", "nightly-2"]);
    assert_eq!(
        status.code,
        Some(1),
        "a dry run records no job: {}",
        status.stderr
    );
    assert!(
        status.stderr.contains("has not run before: give --since"),
        "{}",
        status.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_counts_per_sandbox_and_per_sink_from_where_the_job_stands() {
    let ids = ["sb-d1", "sb-d2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 700,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::with_sinks(&sim, &ids, "requests_per_minute = 100000", ARCHIVE_AND_REJECTS);
    let key = sim.api_key().to_string();
    let out = ws.run(&key, &["backfill", "pipe.toml", "--since", "2d", "--dry-run"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let rejects = sim_rejects(&sim, &ids).len();
    let row = |name: &str| -> Vec<String> {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {}", out.stdout))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("sb-d1")[1], "700");
    assert_eq!(row("sb-d2")[1], "700");
    assert_eq!(row("total")[1], "1400");
    assert_eq!(row("archive")[1], "1400");
    assert_eq!(row("siem")[1], rejects.to_string());
    assert!(!ws.path().join("archive").exists(), "nothing shipped");
    assert!(
        !ws.path().join("state/checkpoints.db").exists(),
        "nothing recorded"
    );

    // From where a job stands: after the job finishes, a dry run of it counts nothing new.
    let done = ws.run(&key, &["backfill", "pipe.toml", "--job", "j", "--since", "2d"]);
    assert_eq!(done.code, Some(0), "stderr: {}", done.stderr);
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    let dry = ws.run(&key, &["backfill", "pipe.toml", "--job", "j", "--dry-run"]);
    assert_eq!(dry.code, Some(0));
    assert!(dry.stderr.contains("finished"), "{}", dry.stderr);
}

//! The pipeline in-process: every transport and every awkward server behaviour ends with every
//! event archived exactly once, byte for byte.

use std::time::Duration;

use auditship::client::ActiveTransport;
use auditship::config::{self, LoadMode};
use auditship::pipeline::{self, Mode, RunOptions, RunReport};
use auditship::secret::ApiKey;
use auditship::sim::{ListShape, SimConfig, Simulator, TimeFormat};

use crate::util::{assert_exactly_once, sim, sim_lines, wait_for, Workspace};

/// Run the workspace's pipeline until the archive holds every event the simulator made (and it
/// is done generating), then stop it gracefully: the drain commits the checkpoint.
async fn ship(ws: &Workspace, sim: &Simulator, sandboxes: &[&str]) -> RunReport {
    let mut p = config::load(&ws.pipeline, LoadMode::Validate).unwrap();
    p.api_key = Some(ApiKey::new(sim.api_key()));
    let opts = RunOptions::new(Mode::Live);
    let stop = opts.shutdown.clone();
    let handle = tokio::spawn(async move { pipeline::run(&p, opts).await });
    wait_for("every event to be archived", Duration::from_secs(60), || {
        let expected: usize = sandboxes.iter().map(|s| sim.events(s).len()).sum();
        sim.live_done() && ws.archive_lines_so_far().len() >= expected
    })
    .await;
    stop.cancel();
    handle.await.unwrap().expect("the pipeline stops cleanly")
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_path_ships_backlog_and_live_events_once_verbatim() {
    let ids = ["sb-a", "sb-b"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 120,
            live_rate_per_sec: 400.0,
            live_events_per_sandbox: Some(200),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let report = ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    for id in ids {
        assert_eq!(
            report.transports.get(id),
            Some(&ActiveTransport::WebSocket),
            "{id}"
        );
        assert_eq!(report.shipped[id], 320);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_without_a_socket_fall_back_to_polling() {
    let ids = ["sb-404", "sb-wrong-proto", "sb-ok"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 50,
            live_rate_per_sec: 200.0,
            live_events_per_sandbox: Some(100),
            no_socket: vec!["sb-404".into()],
            wrong_subprotocol: vec!["sb-wrong-proto".into()],
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let report = ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    assert_eq!(report.transports["sb-404"], ActiveTransport::Polling);
    assert_eq!(report.transports["sb-wrong-proto"], ActiveTransport::Polling);
    assert_eq!(report.transports["sb-ok"], ActiveTransport::WebSocket);
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_sockets_reconnect_and_catch_up_without_a_gap() {
    let ids = ["sb-drop-1", "sb-drop-2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 30,
            live_rate_per_sec: 300.0,
            live_events_per_sandbox: Some(400),
            drop_every_frames: Some(7),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    // Counted by this test's own simulator (the process-wide metric is shared with the tests
    // running beside this one): a socket is dropped every 7 frames, so the live events reached
    // the archive only through many reconnects.
    let drops = sim.faults().socket_drops;
    assert!(drops > 10, "sockets were dropped and reopened: {drops}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_starts_delivering_late_leaves_no_gap() {
    // Events stored between the upgrade and the server's subscription reach no socket; the
    // catch-up may have finished before them. The sweep after going live finds them.
    let ids = ["sb-late-1", "sb-late-2"];
    let sim = sim(
        &ids,
        SimConfig {
            live_rate_per_sec: 400.0,
            live_events_per_sandbox: Some(1600),
            subscribe_delay_ms: 300,
            drop_every_frames: Some(150),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn timestamp_ties_across_page_boundaries_in_every_list_shape() {
    for shape in ListShape::EVERY {
        let ids = ["sb-ties"];
        let sim = sim(
            &ids,
            SimConfig {
                backlog_per_sandbox: 233,
                ties: 7,
                list_shape: shape,
                shuffle_pages: true,
                ..SimConfig::default()
            },
        )
        .await;
        let ws = Workspace::new(&sim, &ids, "transport = \"poll\"\npage_limit = 10", "");
        ship(&ws, &sim, &ids).await;
        let lines = ws.archive_lines();
        assert_exactly_once(&lines, &sim_lines(&sim, &ids));
        // Within a sandbox the archive is in cursor order even though pages were shuffled.
        let times: Vec<&str> = lines
            .iter()
            .map(|l| &l[l.find("\"inserted_at\"").unwrap()..])
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{shape:?}: archive out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_the_resource_filter_does_not_mix_sandboxes() {
    let ids = ["sb-mix-1", "sb-mix-2", "sb-mix-3"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 60,
            ignore_resource_filter: true,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "transport = \"poll\"\npage_limit = 25", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    for id in ids {
        let dir = ws.path().join("archive").join(id);
        let mut files = Vec::new();
        crate::util::walk(&dir, &mut files);
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        assert_eq!(text.lines().count(), 60, "{id}");
        assert!(
            text.lines()
                .all(|l| l.contains(&format!("\"resource_id\":\"{id}\""))),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_next_cursor_falls_back_to_since_paging() {
    let ids = ["sb-cursor"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 120,
            ties: 3,
            list_shape: ListShape::Cursor,
            reject_cursors: true,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "transport = \"poll\"\npage_limit = 10", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn since_is_sent_back_in_the_servers_own_spelling() {
    // A server that spells times with milliseconds and an offset and compares `since` as text:
    // `2026-…T10:00:00.123000Z` sorts before `2026-…T10:00:00.123+00:00`, so a client that
    // reformats the time would drop the events at the boundary of every page.
    let ids = ["sb-spelling"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 180,
            ties: 6,
            time_format: TimeFormat::MillisOffset,
            lexicographic_since: true,
            list_shape: ListShape::Data,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "transport = \"poll\"\npage_limit = 10", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    // And a restart resumes from the checkpoint with the same spelling.
    sim.append("sb-spelling", 40);
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn more_ties_than_a_page_holds_are_fetched_with_a_bigger_page() {
    let ids = ["sb-big-ties"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 200,
            ties: 45,
            list_shape: ListShape::Bare,
            max_page: 1000,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "transport = \"poll\"\npage_limit = 10", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_frames_are_dead_lettered_and_never_stop_the_stream() {
    let ids = ["sb-garbage"];
    let sim = sim(
        &ids,
        SimConfig {
            live_rate_per_sec: 300.0,
            live_events_per_sandbox: Some(300),
            garbage_ratio: 0.2,
            oversize_every_frames: Some(40),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let report = ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    let dead = std::fs::read_to_string(ws.path().join("state/dead-letter.ndjson")).unwrap();
    let entries: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!entries.is_empty());
    assert_eq!(entries.len() as u64, report.dead_lettered);
    assert!(entries.len() as u64 <= sim.garbage_frames());
    let mut oversized = 0;
    for e in &entries {
        assert_eq!(e["resource_id"], "sb-garbage");
        let reason = e["reason"].as_str().unwrap();
        assert!(reason.starts_with("socket frame:"), "{reason}");
        assert!(e["time"].is_string());
        if reason.contains("larger than 1048576 bytes") {
            oversized += 1;
            assert!(e["raw"].is_null());
        } else {
            let raw = e["raw"].as_str().unwrap();
            assert!(raw == "this is not json{" || raw == r#"{"no_id":true}"#, "{raw}");
        }
    }
    assert!(oversized > 0, "an oversized frame was dead-lettered");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_server_errors_are_retried_without_loss() {
    let ids = ["sb-flaky-1", "sb-flaky-2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 150,
            live_rate_per_sec: 200.0,
            live_events_per_sandbox: Some(100),
            ratio_429: 0.15,
            ratio_5xx: 0.15,
            drop_every_frames: Some(20),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "page_limit = 25", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_sandbox_ids_stay_inside_the_archive_directory() {
    let ids = ["../evil", "sb/gamma", ".", "..", "a\\b"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 5,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    ship(&ws, &sim, &ids).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    for f in ws.all_files() {
        let top = f
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        assert!(
            top == "archive" || top == "state" || top == "pipe.toml",
            "{} is outside archive/ and state/",
            f.display()
        );
    }
    assert!(!ws.path().parent().unwrap().join("evil").exists());
    // One directory per sandbox, beside the sink's lock on its archive.
    let dirs: Vec<String> = std::fs::read_dir(ws.path().join("archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("auditship.lock."))
        .collect();
    assert_eq!(dirs.len(), 5, "one directory per sandbox: {dirs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn far_more_sandboxes_than_open_files_lose_nothing() {
    // Regression: files closed and forgotten to respect max_open_files were reopened at a stale
    // length and truncated.
    // More than 64 × max_open_files sandboxes, so closed slots are forgotten and made again.
    let ids: Vec<String> = (0..70).map(|i| format!("sb-many-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sim = sim(
        &refs,
        SimConfig {
            backlog_per_sandbox: 10,
            live_rate_per_sec: 20.0,
            live_events_per_sandbox: Some(20),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &refs, "", "max_open_files = 1");
    ship(&ws, &sim, &refs).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &refs));
    // Regression: a file closed within a flush (to stay within max_open_files) was sealed
    // before that flush's bytes, with a hash that went on through them: `verify` called the
    // next stretch altered.
    let verified = ws.run(sim.api_key(), &["verify", "archive", "--pipeline", "pipe.toml"]);
    assert_eq!(verified.code, Some(0), "{}{}", verified.stdout, verified.stderr);
    assert!(verified.stdout.contains(": CLEAN"), "{}", verified.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_from_the_checkpoint_without_duplicates() {
    let ids = ["sb-r1", "sb-r2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 100,
            ties: 4,
            ..SimConfig::default()
        },
    )
    .await;
    for sink_extra in [
        "",
        "compression = \"gzip\"",
        "compression = \"zstd\"\nrotate_max_bytes = 2000",
    ] {
        let ws = Workspace::new(&sim, &ids, "", sink_extra);
        ship(&ws, &sim, &ids).await;
        for id in ids {
            sim.append(id, 13);
        }
        let report = ship(&ws, &sim, &ids).await;
        // A fresh workspace ships the whole history on its first run; the second run ships only
        // what was appended in between.
        assert_eq!(
            report.shipped["sb-r1"] + report.shipped["sb-r2"],
            26,
            "{sink_extra}"
        );
        assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    }
}

//! The real binary: signals, kill -9, restarts, backfills, secrets.

use std::time::{Duration, Instant};

use auditship::sim::SimConfig;

use crate::util::{
    assert_exactly_once, finish, kill_9_rounds, signal, sim, sim_lines, wait_for, BrokenListServer, Workspace,
};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_zero_and_a_restart_adds_nothing() {
    let ids = ["sb-t1", "sb-t2"];
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
    let ws = Workspace::new(&sim, &ids, "", "");
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for("the archive to fill", Duration::from_secs(60), || {
        sim.live_done() && ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    signal(&child, libc::SIGTERM);
    let stopped = Instant::now();
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "drained in {:?}",
        stopped.elapsed()
    );
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));

    // The restart: once every sandbox is past its catch-up (what a restart would ship again,
    // it ships then), stop it and count.
    let addr = format!("127.0.0.1:{}", auditship_sink::testing::free_port().unwrap());
    let child = ws.spawn(&key, &["run", "pipe.toml", "--metrics-addr", &addr]);
    crate::util::wait_ready(&addr, Duration::from_secs(30)).await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    kill_9_rounds_then_finish(["sb-k1", "sb-k2", "sb-k3"], "rotate_max_bytes = 20000").await;
}

/// The same with every flush of the file sink overlapping the last one's fsync (the overlap a
/// busy pipeline's large flushes get), so kills also land while a round is written but not
/// yet durable.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_flushes_overlap_loses_nothing_and_duplicates_nothing() {
    kill_9_rounds_then_finish(
        ["sb-o1", "sb-o2", "sb-o3"],
        "rotate_max_bytes = 20000\nsync_overlap_min_bytes = 0",
    )
    .await;
}

/// Six kill -9s of `auditship run` at spread-out moments, then a run to the end: every event
/// once in the archive, and the manifests clean. `sink_extra`: lines for the archive sink.
async fn kill_9_rounds_then_finish(ids: [&str; 3], sink_extra: &str) {
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 400,
            live_rate_per_sec: 250.0,
            live_events_per_sandbox: Some(1500),
            drop_every_frames: Some(97),
            ties: 3,
            ..SimConfig::default()
        },
    )
    .await;
    // Small batches and frequent commits: more moments for a kill to land between a write and
    // its commit.
    let ws = Workspace::new(&sim, &ids, "", sink_extra);
    let key = sim.api_key().to_string();
    kill_9_rounds(&ws, &key, 6).await;
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for("the archive to hold every event", Duration::from_secs(90), || {
        sim.live_done() && ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    // Six crashes left stretches unsealed; the restarts sealed them: the manifests cover every
    // byte, and agree with the checkpoint database.
    let verified = ws.run(&key, &["verify", "archive", "--pipeline", "pipe.toml"]);
    assert_eq!(verified.code, Some(0), "{}{}", verified.stdout, verified.stderr);
    assert!(verified.stdout.contains(": CLEAN"), "{}", verified.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_never_appears_in_output_logs_or_files() {
    let key = "msk_live_TOPSECRET_4f1c9a7e";
    let ids = ["sb-s1", "sb-nosock"];
    let sim = sim(
        &ids,
        SimConfig {
            api_key: key.into(),
            backlog_per_sandbox: 50,
            // Ten seconds of live frames: the socket surely carries some (and so garbage),
            // even when a loaded machine connects it late or a few handshakes fail. (Four
            // seconds once passed with no garbage frame sent at all.)
            live_rate_per_sec: 150.0,
            live_events_per_sandbox: Some(1500),
            no_socket: vec!["sb-nosock".into()],
            drop_every_frames: Some(9),
            ratio_429: 0.2,
            ratio_5xx: 0.2,
            garbage_ratio: 0.2,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let child = ws.spawn(key, &["--log-level", "trace", "run", "pipe.toml"]);
    // The dead-letter file must exist too: it is one of the files searched for the key.
    let dead_letters = ws.path().join("state/dead-letter.ndjson");
    let started = Instant::now();
    // The polling sandbox meets 40% failed list requests: a run of ten in a row (seen once)
    // backs its retries off to over 20 s each, so the wait allows minutes, not seconds.
    while !(sim.live_done() && ws.archive_lines_so_far().len() >= sim.total_events() && dead_letters.exists())
    {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "after 300 s: {} of {} events archived, garbage frames sent {}, dead-letter file {}; stderr tail: {}",
            ws.archive_lines_so_far().len(),
            sim.total_events(),
            sim.garbage_frames(),
            if dead_letters.exists() { "present" } else { "absent" },
            child.stderr_text().lines().rev().take(20).collect::<Vec<_>>().join(" | ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0));
    assert!(!out.stderr.is_empty(), "trace logging produced output");
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let leak = text.lines().find(|l| l.contains(key));
        assert!(
            leak.is_none(),
            "the key is in {name}: {}",
            leak.unwrap_or_default()
        );
    }
    for f in ws.all_files() {
        let bytes = std::fs::read(ws.path().join(&f)).unwrap();
        let name = f.display().to_string();
        if name == "pipe.toml" {
            continue;
        }
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "the key is in {name}"
        );
    }
    // Nothing auditship created is readable by other users, whatever umask it inherited (the
    // test's own is the usual 022).
    use std::os::unix::fs::PermissionsExt as _;
    let mut checked = 0;
    for f in ws.all_files() {
        if f == std::path::Path::new("pipe.toml") {
            continue;
        }
        let mut path = ws.path().join(&f);
        loop {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o007, 0, "{} has mode {:o}", path.display(), mode & 0o777);
            checked += 1;
            match path.parent() {
                Some(p) if p != ws.path() => path = p.to_path_buf(),
                _ => break,
            }
        }
    }
    assert!(
        ws.all_files().iter().any(|f| f.ends_with("dead-letter.ndjson")) && checked > 4,
        "archive, state and dead letters were checked"
    );
    // A refused key: a clear error that names the fix, still without the key.
    let wrong = "msk_live_WRONGSECRET_99";
    let out = ws.run(wrong, &["--log-level", "debug", "run", "pipe.toml"]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("refused the key"), "{}", out.stderr);
    assert!(!out.stderr.contains(wrong) && !out.stdout.contains(wrong));
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_ships_20000_past_events_exactly_once_and_a_rerun_is_a_no_op() {
    let ids = ["sb-b1", "sb-b2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 10_000,
            ties: 3,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "requests_per_minute = 100000", "");
    let key = sim.api_key().to_string();
    let out = ws.run(&key, &["backfill", "pipe.toml", "--since", "7d"]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("20000 events shipped"), "{}", out.stderr);
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    // Same window again: nothing new.
    let since = auditship::client::format_time(sim.events("sb-b1")[0].inserted_us - 1_000_000);
    let out = ws.run(&key, &["backfill", "pipe.toml", "--since", &since]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let again = ws.run(&key, &["backfill", "pipe.toml", "--since", &since]);
    assert_eq!(again.code, Some(0));
    assert!(again.stderr.contains(" 0 events shipped"), "{}", again.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backfill_resumes_where_it_stopped() {
    let ids = ["sb-bk"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 6_000,
            ..SimConfig::default()
        },
    )
    .await;
    // 300 requests a minute: a burst of 50 pages, then five a second, so the kill lands mid-way.
    let ws = Workspace::new(&sim, &ids, "requests_per_minute = 300\npage_limit = 50", "");
    let key = sim.api_key().to_string();
    // Absolute bounds: a window is resumed by naming it again (a relative `--since 1d` is a new
    // window each time; the resume hint prints the absolute one).
    let now = chrono::Utc::now().timestamp_micros();
    let since = auditship::client::format_time(now - 86_400_000_000);
    let until = auditship::client::format_time(now);
    let args = [
        "backfill",
        "pipe.toml",
        "--since",
        since.as_str(),
        "--until",
        until.as_str(),
    ];
    let child = ws.spawn(&key, &args);
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
    let out = ws.run(&key, &args);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_backfill_exits_2_with_a_resume_hint() {
    let ids = ["sb-bi"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 3_000,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "requests_per_minute = 600\npage_limit = 20", "");
    let child = ws.spawn(sim.api_key(), &["backfill", "pipe.toml", "--since", "1d"]);
    wait_for("some progress", Duration::from_secs(60), || {
        !ws.archive_lines_so_far().is_empty()
    })
    .await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("resume with: auditship backfill pipe.toml --since"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_that_cannot_reach_the_api_exits_2_not_done() {
    let ids = ["sb-unreached"];
    let sim = sim(&ids, SimConfig::default()).await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let key = sim.api_key().to_string();
    // Nothing listens on the simulator's port any more.
    drop(sim);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = ws.run(&key, &["backfill", "pipe.toml", "--since", "1d", "--job", "j1"]);
    // The listing gives up after the client's retries (about 6 s). That is not a finished
    // window: cron must see it fail, and the job must not be marked done.
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(!out.stderr.contains(" done: "), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("sb-unreached: the listing stopped: could not reach the Miosa API"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("resume with: auditship backfill pipe.toml --job j1"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&key));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_whose_list_response_does_not_decode_exits_2_and_keeps_the_response() {
    let broken = BrokenListServer::start().await;
    let ids = ["sb-broken"];
    let sim = sim(&ids, SimConfig::default()).await;
    let ws = Workspace::new(&sim, &ids, "", "");
    ws.point_at(&sim.base_url(), &broken.base_url());
    let key = sim.api_key().to_string();
    let out = ws.run(&key, &["backfill", "pipe.toml", "--since", "1d"]);
    assert!(broken.requests() >= 1);
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("sb-broken: the listing stopped: could not decode list response"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("resume with:"), "{}", out.stderr);
    // The response is kept, with why, for whoever looks into it.
    let letters = std::fs::read_to_string(ws.path().join("state/dead-letter.ndjson")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.lines().next().unwrap()).unwrap();
    assert!(
        letter["reason"].as_str().unwrap().starts_with("list response"),
        "{letter}"
    );
    assert!(letters.contains("evt_1"), "{letters}");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_all_stops_with_an_error_on_a_list_response_that_does_not_decode() {
    let ids = ["sb-la"];
    let sim = sim(&ids, SimConfig::default()).await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let broken = BrokenListServer::start().await;
    ws.point_at(&sim.base_url(), &broken.base_url());
    let out = ws.run(
        sim.api_key(),
        &["list", "pipe.toml", "--sandbox", "sb-la", "--all"],
    );
    assert!(broken.requests() >= 1);
    // Before, the broken page was skipped like a bad element and the listing ended "complete".
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
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_every_sandbox_is_gone_exits_1_and_says_why() {
    let sim = sim(&["sb-exists"], SimConfig::default()).await;
    let ws = Workspace::new(&sim, &["sb-typo-1", "sb-typo-2"], "transport = \"poll\"", "");
    let out = ws.run(sim.api_key(), &["run", "pipe.toml"]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("no sandbox left to follow"), "{}", out.stderr);
    assert!(
        out.stderr.contains("sb-typo-1: sandbox not found"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_get_tail_and_checkpoints_commands() {
    let ids = ["sb-cli", "sb/other"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 40,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let key = sim.api_key().to_string();

    let out = ws.run(
        &key,
        &["list", "pipe.toml", "--sandbox", "sb-cli", "--limit", "5"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 5);
    let out = ws.run(&key, &["list", "pipe.toml", "--sandbox", "sb/other", "--all"]);
    let expected: Vec<String> = sim
        .events("sb/other")
        .iter()
        .map(|e| e.json.to_string())
        .collect();
    let mut got: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want, "--all lists every event once, verbatim");

    let id = sim.events("sb-cli")[7].id.clone();
    let out = ws.run(&key, &["get", "pipe.toml", &id]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim_end(), &*sim.events("sb-cli")[7].json);

    let child = ws.spawn(
        &key,
        &["tail", "pipe.toml", "--sandbox", "sb-cli", "--start", "earliest"],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.append("sb-cli", 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().count(),
        43,
        "backlog and live events, each once"
    );

    let out = ws.run(&key, &["checkpoints", "pipe.toml"]);
    assert!(out.stdout.contains("no checkpoints yet"), "{}", out.stdout);
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for("the archive", Duration::from_secs(30), || {
        ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    signal(&child, libc::SIGTERM);
    assert_eq!(finish(child, Duration::from_secs(30)).code, Some(0));
    let out = ws.run(&key, &["checkpoints", "pipe.toml"]);
    let row = out
        .stdout
        .lines()
        .find(|l| l.contains("sb-cli"))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.starts_with("live") && row.trim_end().ends_with(" 43"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_pipeline_files_without_losing_events_and_refuses_broken_ones() {
    let ids = ["sb-hup1", "sb-hup2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 50,
            live_rate_per_sec: 60.0,
            live_events_per_sandbox: Some(300),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for("live events flowing", Duration::from_secs(30), || {
        ws.archive_lines_so_far().len() > 150
    })
    .await;

    // A broken file: the reload is refused and the running pipeline goes on.
    let good = std::fs::read_to_string(&ws.pipeline).unwrap();
    std::fs::write(
        &ws.pipeline,
        format!("{good}\n[sinks.copy]\ntype = \"file\"\npth = \"x\"\n"),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    let before = ws.archive_lines_so_far().len();
    wait_for("events after a refused reload", Duration::from_secs(30), || {
        ws.archive_lines_so_far().len() > before + 60
    })
    .await;

    // A good file with a second sink: the pipeline drains and restarts with it.
    let copy = ws.path().join("copy");
    std::fs::write(
        &ws.pipeline,
        format!(
            "{good}\n[sinks.copy]\ntype = \"file\"\npath = \"{}/{{resource_id}}.ndjson\"\n",
            copy.display()
        ),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    wait_for("the new sink to get events", Duration::from_secs(30), || {
        copy.exists() && std::fs::read_dir(&copy).map(|d| d.count() > 0).unwrap_or(false)
    })
    .await;
    wait_for("every event archived", Duration::from_secs(60), || {
        sim.live_done() && ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("reload refused"), "{}", out.stderr);
    assert!(out.stderr.contains("unknown field `pth`"), "{}", out.stderr);
    assert!(
        out.stderr.contains("reloaded the pipeline files"),
        "{}",
        out.stderr
    );
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
}

/// A server that answers every request with a 500 (or, for socket upgrades, a 400) whose body
/// echoes the request head: the URL with `?token=` and the `Authorization` header.
async fn echoing_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let status = if text.contains("Upgrade") {
                    "400 Bad Request"
                } else {
                    "500 Internal Server Error"
                };
                let body = serde_json::json!({"error": {"code": "echo", "message": text}}).to_string();
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len(),
                    text.lines().next().unwrap_or_default().replace(' ', "_")
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_never_appears_on_network_error_paths() {
    let key = "msk_live_NETSECRET_5d2e8a";
    let echo = echoing_server().await;
    let dead = auditship_sink::testing::free_port().unwrap();
    for (what, base) in [
        (
            "a server that echoes requests in its errors",
            format!("http://{echo}/api/v1?org=1"),
        ),
        ("nothing listening", format!("http://127.0.0.1:{dead}/api/v1")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pipe.toml"),
            format!(
                "[source]\nbase_url = \"{base}\"\napi_key = \"${{MIOSA_API_KEY}}\"\nsandboxes = [\"sb-e1\", \"sb-e2\"]\nconnect_timeout_ms = 500\n[checkpoint]\npath = \"state/cp.db\"\n[sinks.archive]\ntype = \"file\"\npath = \"archive/{{resource_id}}.ndjson\"\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("err.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditship"))
            .args(["--log-level", "trace", "run", "pipe.toml"])
            .current_dir(dir.path())
            .env("MIOSA_API_KEY", key)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("retrying") || text.contains("falling back"),
            "{what}: the error paths ran: {text}"
        );
        let leak = text.lines().find(|l| l.contains(key) || l.contains("NETSECRET"));
        assert!(
            leak.is_none(),
            "{what}: the key leaked: {}",
            leak.unwrap_or_default()
        );
        if what.contains("echo") {
            assert!(
                // The server echoed the Authorization header; it reaches the log redacted.
                text.contains("authorization: Bearer ***"),
                "{what}: the echo was logged redacted: {}",
                &text[..text.len().min(2000)]
            );
        }
        let files: Vec<std::path::PathBuf> = {
            let mut v = Vec::new();
            crate::util::walk(dir.path(), &mut v);
            v
        };
        for f in files
            .iter()
            .filter(|f| !f.ends_with("pipe.toml") && !f.ends_with("err.log"))
        {
            let bytes = std::fs::read(f).unwrap();
            assert!(
                !bytes.windows(9).any(|w| w == b"NETSECRET"),
                "{what}: the key is in {}",
                f.display()
            );
        }
    }
}

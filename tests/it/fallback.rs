//! The polling fallback at fleet scale: a thousand sandboxes without sockets share one
//! org-wide list request per interval, and every event still arrives exactly once.

use std::time::{Duration, Instant};

use auditship::config::{self, LoadMode};
use auditship::pipeline::{self, Mode, RunOptions};
use auditship::secret::ApiKey;
use auditship::sim::SimConfig;

use crate::util::{assert_exactly_once, sim, sim_lines, wait_for, Workspace};

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_sandboxes_on_the_fallback_share_one_poll_per_interval() {
    fleet_on_the_fallback("poll").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_sandboxes_without_sockets_probe_sockets_one_at_a_time() {
    // Transport auto, and no sandbox has a socket: after a few failures, one probe at a time.
    fleet_on_the_fallback("auto").await;
}

async fn fleet_on_the_fallback(transport: &str) {
    let ids: Vec<String> = (0..1000).map(|i| format!("sb-fleet-{i:04}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sim = sim(
        &refs,
        SimConfig {
            backlog_per_sandbox: 1,
            live_rate_per_sec: 0.5,
            live_events_per_sandbox: Some(5),
            no_socket: ids.clone(),
            ..SimConfig::default()
        },
    )
    .await;
    // Every 500 ms; a budget large enough that the limiter is not what is counted.
    let ws = Workspace::new(
        &sim,
        &refs,
        &format!("transport = \"{transport}\"\nrequests_per_minute = 1000000\nstart = \"earliest\""),
        "",
    );
    let text = std::fs::read_to_string(&ws.pipeline)
        .unwrap()
        .replace("poll_interval_ms = 100", "poll_interval_ms = 500");
    std::fs::write(&ws.pipeline, text).unwrap();
    let mut p = config::load(&ws.pipeline, LoadMode::Validate).unwrap();
    p.api_key = Some(ApiKey::new(sim.api_key()));
    let opts = RunOptions::new(Mode::Live);
    let stop = opts.shutdown.clone();
    let handle = tokio::spawn(async move { pipeline::run(&p, opts).await });

    // Each sandbox catches up alone once (its own position), then joins the shared poll.
    wait_for("the backlog of every sandbox", Duration::from_secs(60), || {
        ws.archive_lines_so_far().len() >= 1000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (before, start) = (sim.requests(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = sim.requests() - before;
    let intervals = start.elapsed().as_secs_f64() / 0.5;
    assert!(!sim.live_done(), "measured while events were still being made");
    // Per interval: a page or three of new events and the request that finds nothing more.
    assert!(
        (requests as f64) < intervals * 8.0,
        "{requests} requests in {intervals:.0} intervals for 1000 polling sandboxes"
    );
    assert!(
        requests as f64 >= intervals * 0.5,
        "the shared poll runs: {requests}"
    );

    wait_for("every event", Duration::from_secs(60), || {
        sim.live_done() && ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    stop.cancel();
    handle.await.unwrap().unwrap();
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &refs));
}

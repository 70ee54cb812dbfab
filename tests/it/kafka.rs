//! The binary shipping into a real Kafka-protocol broker (tansu, started per test on a free port),
//! read back by a separate consumer with `assign()`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use auditship::sim::{SimConfig, Simulator};
use auditship_sink_kafka::testing::{read_topic, Broker, Record};

use crate::util::{
    assert_exactly_once, finish, signal, sim, sim_lines, stop_when_all_committed, wait_for, Proc, Workspace,
};

fn broker() -> Broker {
    Broker::start().unwrap_or_else(|e| panic!("{e}"))
}

fn kafka_sink(broker: &Broker, topic: &str) -> String {
    format!(
        "[sinks.siem]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\nkey = \"resource_id\"\ncompression = \"zstd\"\nstall_timeout_ms = 3000\n",
        broker.address()
    )
}

fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect()
}

/// Every sandbox's messages are in one partition and in cursor-time order, keyed by the sandbox,
/// with the event id and sandbox in headers.
fn assert_per_sandbox_order(sim: &Simulator, sandboxes: &[&str], records: &[Record]) {
    let times: HashMap<String, i64> = sandboxes
        .iter()
        .flat_map(|s| sim.events(s))
        .map(|e| (e.json.to_string(), e.inserted_us))
        .collect();
    for sb in sandboxes {
        let mine: Vec<&Record> = records
            .iter()
            .filter(|r| r.header("resource_id").as_deref() == Some(*sb))
            .collect();
        assert!(!mine.is_empty(), "{sb}: no messages");
        assert!(
            mine.iter().all(|r| r.key.as_deref() == Some(sb.as_bytes())),
            "{sb}: keyed by the sandbox"
        );
        assert!(
            mine.windows(2).all(|w| w[0].partition == w[1].partition),
            "{sb}: one partition"
        );
        let t: Vec<i64> = mine
            .iter()
            .map(|r| times[&String::from_utf8(r.value.clone()).unwrap()])
            .collect();
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "{sb}: in cursor-time order");
        for r in &mine {
            let id = r.header("event_id").unwrap();
            assert!(String::from_utf8_lossy(&r.value).contains(&format!("\"id\":\"{id}\"")));
        }
    }
}

/// The broker keeps topics in memory, so what it held dies with it: pause the shipper (so that
/// nothing is acknowledged that the reader misses), read the topic, kill the broker, resume.
async fn read_all_then_kill(child: &Proc, b: &mut Broker, topic: &str) -> Vec<Record> {
    signal(child, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_topic(&b.address(), topic, usize::MAX, Duration::from_secs(2)).unwrap();
    assert!(!before.is_empty());
    b.kill();
    signal(child, libc::SIGCONT);
    before
}

/// With the broker down, the checkpoint must not pass an event the broker did not hold
/// (`before`: the topic as read just before the kill). It may still move up to that: a delivery
/// report the shipper had not handled when it was paused is handled after it resumes.
async fn assert_checkpoint_within(ws: &Workspace, before: &[Record], how_long: Duration) {
    let mut held = values(before);
    held.sort();
    held.dedup();
    let deadline = Instant::now() + Duration::from_millis(1_000) + how_long;
    while Instant::now() < deadline {
        let committed = ws.committed_events();
        assert!(
            committed <= held.len() as i64,
            "the checkpoint passed events Kafka does not hold: {committed} committed, {} held",
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What two lives of the broker held together: an event the old broker took just before it
/// died may be sent again to the new one (its acknowledgement died with it), so it counts once.
fn union(before: &[Record], after: &[Record]) -> Vec<String> {
    let before = values(before);
    let mut all = before.clone();
    all.extend(values(after).into_iter().filter(|v| !before.contains(v)));
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_pipeline_ships_every_event_once_in_per_sandbox_order() {
    let b = broker();
    let ids = ["sb-k1", "sb/k2", "sb-k3"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 400,
            live_rate_per_sec: 300.0,
            live_events_per_sandbox: Some(600),
            drop_every_frames: Some(151),
            ties: 3,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::with_sinks(&sim, &ids, "", &kafka_sink(&b, "miosa.audit"));
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    let out = stop_when_all_committed(&ws, &sim, child).await;
    assert!(out.stderr.contains("Kafka brokers reachable"), "{}", out.stderr);

    let expected = sim_lines(&sim, &ids);
    let records = read_topic(
        &b.address(),
        "miosa.audit",
        expected.len() + 1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_exactly_once(&values(&records), &expected);
    assert_per_sandbox_order(&sim, &ids, &records);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_killed_and_restarted_mid_run_loses_nothing() {
    let mut b = broker();
    let ids = ["sb-r1", "sb-r2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 200,
            live_rate_per_sec: 200.0,
            live_events_per_sandbox: Some(1_200),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::with_sinks(&sim, &ids, "", &kafka_sink(&b, "audit.restart"));
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for(
        "a third of the events to be shipped",
        Duration::from_secs(60),
        || ws.committed_events() >= (sim.total_events() / 3) as i64,
    )
    .await;

    let before = read_all_then_kill(&child, &mut b, "audit.restart").await;
    assert_checkpoint_within(&ws, &before, Duration::from_secs(3)).await;

    b.restart().unwrap();
    let out = stop_when_all_committed(&ws, &sim, child).await;
    assert!(
        out.stderr.contains("events await Kafka delivery") || out.stderr.contains("rebuilding the producer"),
        "the outage was reported: {}",
        out.stderr
    );

    let after = read_topic(&b.address(), "audit.restart", usize::MAX, Duration::from_secs(3)).unwrap();
    // Each broker life holds each event at most once.
    let after_v = values(&after);
    let mut distinct = after_v.clone();
    distinct.sort();
    distinct.dedup();
    assert_exactly_once(&after_v, &distinct);
    assert_exactly_once(&union(&before, &after), &sim_lines(&sim, &ids));
    assert_per_sandbox_order(&sim, &ids, &after);
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_to_file_and_kafka_waits_for_both_and_loses_nothing_in_either() {
    let mut b = broker();
    let ids = ["sb-f1", "sb-f2"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 300,
            live_rate_per_sec: 150.0,
            live_events_per_sandbox: Some(600),
            ..SimConfig::default()
        },
    )
    .await;
    let sinks = format!(
        "[sinks.archive]\ntype = \"file\"\npath = \"{{root}}/archive/{{resource_id}}.ndjson\"\n\n{}",
        kafka_sink(&b, "audit.fanout")
    );
    let ws = Workspace::with_sinks(&sim, &ids, "", &sinks);
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for("some events to be shipped", Duration::from_secs(60), || {
        ws.committed_events() >= 300
    })
    .await;
    let before = read_all_then_kill(&child, &mut b, "audit.fanout").await;
    // Kafka is down: the file sink keeps writing, but the checkpoint waits for Kafka.
    assert_checkpoint_within(&ws, &before, Duration::from_secs(2)).await;

    // Stopped while Kafka is down: the drain gives up, nothing uncommitted is counted as shipped.
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);

    // Back up: the next run sends Kafka what it lacks and rolls the files back to the checkpoint
    // before writing on, so the archive holds every event once.
    b.restart().unwrap();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    stop_when_all_committed(&ws, &sim, child).await;

    let expected = sim_lines(&sim, &ids);
    assert_exactly_once(&ws.archive_lines(), &expected);
    let after = read_topic(&b.address(), "audit.fanout", usize::MAX, Duration::from_secs(3)).unwrap();
    assert_exactly_once(&union(&before, &after), &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_too_large_for_the_broker_go_to_the_dead_letter_file_and_the_rest_ships() {
    let b = broker();
    let ids = ["sb-big"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 200,
            pad_every_events: Some(40),
            pad_bytes: 3_000,
            ..SimConfig::default()
        },
    )
    .await;
    let sink = format!(
        "{}options = {{ \"message.max.bytes\" = 2000 }}\n",
        kafka_sink(&b, "audit.big")
    );
    let ws = Workspace::with_sinks(&sim, &ids, "", &sink);
    let key = sim.api_key().to_string();
    let out = ws.run(
        &key,
        &["backfill", "pipe.toml", "--since", "2000-01-01T00:00:00Z"],
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);

    let (big, small): (Vec<String>, Vec<String>) =
        sim_lines(&sim, &ids).into_iter().partition(|l| l.len() > 2_000);
    assert_eq!(big.len(), 5);
    let records = read_topic(&b.address(), "audit.big", small.len() + 1, Duration::from_secs(3)).unwrap();
    assert_exactly_once(&values(&records), &small);

    let dead = std::fs::read_to_string(ws.path().join("state/dead-letter.ndjson")).unwrap();
    let letters: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), big.len(), "{dead}");
    for l in &letters {
        assert_eq!(l["sink"], "siem");
        assert_eq!(l["resource_id"], "sb-big");
        assert!(
            l["reason"].as_str().unwrap().contains("message size limit"),
            "{l}"
        );
        assert!(
            big.contains(&l["raw"].as_str().unwrap().to_string()),
            "the event is kept whole"
        );
        assert!(l["event_id"].as_str().unwrap().starts_with("evt_"));
    }
    assert!(out.stderr.contains("dead-lettered"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_is_offline_and_a_run_names_the_unreachable_broker() {
    let ids = ["sb-v"];
    let sim = sim(&ids, SimConfig::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sink = format!(
        "[sinks.siem]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\ntopic = \"audit\"\nhealthcheck_timeout_ms = 1000\n"
    );
    let ws = Workspace::with_sinks(&sim, &ids, "", &sink);
    let key = sim.api_key().to_string();
    let out = ws.run(&key, &["validate", "pipe.toml"]);
    assert_eq!(out.code, Some(0), "validate needs no broker: {}", out.stderr);

    let out = ws.run(&key, &["run", "pipe.toml"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("check `brokers`"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_pipeline_killed_mid_run_ships_each_event_once_in_per_sandbox_order() {
    let b = broker();
    let ids = ["sb-x1", "sb-x2", "sb-x3", "sb-x4", "sb-x5"];
    let sim = sim(
        &ids,
        SimConfig {
            backlog_per_sandbox: 300,
            live_rate_per_sec: 120.0,
            live_events_per_sandbox: Some(900),
            ties: 2,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = Workspace::with_sinks(&sim, &ids, "", &kafka_sink(&b, "audit.kills"));
    let key = sim.api_key().to_string();
    // Kill -9 while events flow, each time some way past the last checkpoint; count what the
    // topic held beyond the checkpoint at each kill (what a restart would otherwise repeat).
    let mut uncheckpointed = 0usize;
    let mut log = String::new();
    for _ in 0..3 {
        let child = ws.spawn(&key, &["run", "pipe.toml"]);
        let start = ws.committed_events();
        wait_for(
            "the run to commit another 500 events",
            Duration::from_secs(60),
            || ws.committed_events() >= start + 500,
        )
        .await;
        signal(&child, libc::SIGKILL);
        let out = finish(child, Duration::from_secs(10));
        assert_eq!(out.code, None, "killed by a signal: {}", out.stderr);
        log.push_str(&out.stderr);
        let committed = ws.committed_events();
        let mut held =
            values(&read_topic(&b.address(), "audit.kills", usize::MAX, Duration::from_secs(1)).unwrap());
        held.sort();
        held.dedup();
        uncheckpointed += held.len().saturating_sub(committed.max(0) as usize);
    }
    assert!(
        uncheckpointed > 0,
        "no kill left an event delivered past the checkpoint: the test tested nothing"
    );
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    let out = stop_when_all_committed(&ws, &sim, child).await;
    log.push_str(&out.stderr);
    assert!(
        log.contains("read the Kafka partitions past the last checkpoint"),
        "each start reads past the checkpoint: {log}"
    );

    let expected = sim_lines(&sim, &ids);
    let records = read_topic(
        &b.address(),
        "audit.kills",
        expected.len() + 1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_exactly_once(&values(&records), &expected);
    assert_per_sandbox_order(&sim, &ids, &records);
    let partitions: std::collections::HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 1,
        "the sandboxes span several partitions: {partitions:?}"
    );
}

//! The binary shipping into a real Kafka-protocol broker (tansu, started per test on a free port),
//! read back by a separate consumer with `assign()`.

use std::collections::HashMap;
use std::time::Duration;

use auditship::sim::{SimConfig, Simulator};
use auditship_sink_kafka::testing::{read_topic, Broker, Record};

use crate::util::{assert_exactly_once, finish, signal, sim, sim_lines, wait_for, Workspace};

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
        .map(|e| (e.json.clone(), e.inserted_us))
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
    wait_for("every event to be committed", Duration::from_secs(90), || {
        sim.live_done() && ws.committed_events() >= sim.total_events() as i64
    })
    .await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
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

    // The broker keeps topics in memory, so what it held dies with it: read it all first,
    // with the shipper paused so that nothing is acknowledged that the reader misses.
    signal(&child, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_topic(&b.address(), "audit.restart", usize::MAX, Duration::from_secs(2)).unwrap();
    assert!(!before.is_empty());
    b.kill();
    signal(&child, libc::SIGCONT);

    // While it is down, the checkpoint must not move.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let frozen = ws.committed_events();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(
        ws.committed_events(),
        frozen,
        "the checkpoint advanced with the broker down"
    );

    b.restart().unwrap();
    wait_for("every event to be committed", Duration::from_secs(120), || {
        sim.live_done() && ws.committed_events() >= sim.total_events() as i64
    })
    .await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("events await Kafka delivery") || out.stderr.contains("rebuilding the producer"),
        "the outage was reported: {}",
        out.stderr
    );

    let after = read_topic(&b.address(), "audit.restart", usize::MAX, Duration::from_secs(3)).unwrap();
    let expected = sim_lines(&sim, &ids);
    let (before_v, after_v) = (values(&before), values(&after));
    // Each broker life holds each event at most once; an event the old broker took just before
    // it died may be sent again to the new one (its acknowledgement died with it).
    assert_exactly_once(&after_v, &{
        let mut v: Vec<String> = after_v.clone();
        v.sort();
        v.dedup();
        v
    });
    let mut all = before_v.clone();
    all.extend(after_v.iter().filter(|v| !before_v.contains(v)).cloned());
    assert_exactly_once(&all, &expected);
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
    signal(&child, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_topic(&b.address(), "audit.fanout", usize::MAX, Duration::from_secs(2)).unwrap();
    b.kill();
    signal(&child, libc::SIGCONT);

    // Kafka is down: the file sink keeps writing, but the checkpoint waits for Kafka.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let frozen = ws.committed_events();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        ws.committed_events(),
        frozen,
        "the checkpoint passed events Kafka does not hold"
    );

    // Stopped while Kafka is down: the drain gives up, nothing uncommitted is counted as shipped.
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);

    // Back up: the next run sends Kafka what it lacks and rolls the files back to the checkpoint
    // before writing on, so the archive holds every event once.
    b.restart().unwrap();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    wait_for("every event to be committed", Duration::from_secs(120), || {
        sim.live_done() && ws.committed_events() >= sim.total_events() as i64
    })
    .await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);

    let expected = sim_lines(&sim, &ids);
    assert_exactly_once(&ws.archive_lines(), &expected);
    let after = read_topic(&b.address(), "audit.fanout", usize::MAX, Duration::from_secs(3)).unwrap();
    let before_v = values(&before);
    let mut all = before_v.clone();
    all.extend(values(&after).into_iter().filter(|v| !before_v.contains(v)));
    assert_exactly_once(&all, &expected);
}

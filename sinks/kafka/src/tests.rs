use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use auditship_sink::testing::context;
use auditship_sink::{Batch, Event, Sink, StateEntry};

use super::*;
use crate::config::{default_key, default_stall_timeout_ms};
use crate::testing::{read_topic, Broker};

fn config(brokers: &str, topic: &str) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        key: default_key(),
        compression: Compression::Zstd,
        options: BTreeMap::new(),
        stall_timeout_ms: default_stall_timeout_ms(),
        healthcheck_timeout_ms: 5_000,
    }
}

fn event(rid: &str, n: u64, pad: usize) -> Event {
    let raw = format!(
        r#"{{"id":"{rid}-e{n}","resource_id":"{rid}","action":"{}","host":"h{n}.example.com","pad":"{}"}}"#,
        if n.is_multiple_of(2) { "allow" } else { "reject" },
        "x".repeat(pad)
    );
    Event {
        raw: raw.into(),
        id: format!("{rid}-e{n}").into(),
        resource_id: rid.into(),
        cursor_us: Some(1_764_000_000_000_000 + n as i64),
        cursor_span: None,
        time_us: Some(1_764_000_000_000_000 + n as i64),
        seq: n,
    }
}

fn batch(number: u64, events: Vec<Event>) -> Arc<Batch> {
    Arc::new(Batch { number, events })
}

fn broker() -> Broker {
    Broker::start().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn options_the_sink_owns_are_refused_and_bad_ones_named() {
    let mut c = config("127.0.0.1:9", "t");
    c.options
        .insert("bootstrap.servers".into(), OptionValue::Text("x:1".into()));
    assert!(c.validate().unwrap_err().contains("use `brokers` instead"));

    let mut c = config("127.0.0.1:9", "t");
    c.options
        .insert("no.such.setting".into(), OptionValue::Integer(1));
    let e = c.validate().unwrap_err();
    assert!(e.contains("no.such.setting"), "{e}");

    let mut c = config("127.0.0.1:9", "t");
    c.options.insert("linger.ms".into(), OptionValue::Integer(20));
    c.options
        .insert("enable.idempotence".into(), OptionValue::Bool(false));
    let warnings = c.validate().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("enable.idempotence"));

    assert!(config(" , ", "t")
        .validate()
        .unwrap_err()
        .contains("brokers is empty"));
    assert!(config("h:1", "a b").validate().unwrap_err().contains("' '"));
}

#[test]
fn secrets_in_options_never_print() {
    let mut c = config("127.0.0.1:9", "t");
    c.options
        .insert("sasl.password".into(), OptionValue::Text("hunter2-secret".into()));
    c.options
        .insert("sasl.username".into(), OptionValue::Text("shipper".into()));
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(shown.contains("shipper"));
    assert_eq!(c.scrub("bad value hunter2-secret"), "bad value ***");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_check_names_the_brokers_when_none_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config(&format!("127.0.0.1:{port}"), "t");
    c.healthcheck_timeout_ms = 1_000;
    let (ctx, _, _) = context("siem", vec![]);
    let mut sink = KafkaSink::open(c, ctx).unwrap();
    let e = sink.prepare().await.unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.contains("check `brokers`"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_once_in_order_with_headers_and_keys() {
    let b = broker();
    let (ctx, _, dead) = context("siem", vec![]);
    let mut sink = KafkaSink::open(config(&b.address(), "audit.one"), ctx).unwrap();
    sink.prepare().await.unwrap();
    let mut sent = Vec::new();
    for n in 0..6u64 {
        let events: Vec<Event> = (0..50)
            .flat_map(|i| [event("sb-a", n * 50 + i, 10), event("sb/b", n * 50 + i, 10)])
            .collect();
        sent.extend(events.iter().cloned());
        sink.write(batch(n, events)).await.unwrap();
        if n % 2 == 1 {
            let state = sink.flush().await.unwrap();
            assert!(
                !state.is_empty() && state.iter().all(|e| e.key.starts_with("next_offset:")),
                "a flush records where its partitions end: {state:?}"
            );
        }
    }
    sink.close().await.unwrap();
    assert!(dead.0.lock().unwrap().is_empty());

    let got = read_topic(&b.address(), "audit.one", sent.len() + 1, Duration::from_secs(5)).unwrap();
    assert_eq!(got.len(), sent.len());
    for rid in ["sb-a", "sb/b"] {
        let want: Vec<&[u8]> = sent
            .iter()
            .filter(|e| &*e.resource_id == rid)
            .map(|e| &e.raw[..])
            .collect();
        let mine: Vec<_> = got
            .iter()
            .filter(|r| r.key.as_deref() == Some(rid.as_bytes()))
            .collect();
        let values: Vec<&[u8]> = mine.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values, want, "{rid}: every event once, in order, byte for byte");
        assert!(mine.windows(2).all(|w| w[0].partition == w[1].partition));
        for r in &mine {
            assert_eq!(r.header("resource_id").as_deref(), Some(rid));
            let id = r.header("event_id").unwrap();
            assert!(String::from_utf8_lossy(&r.value).contains(&format!("\"id\":\"{id}\"")));
            assert!(matches!(r.header("action").as_deref(), Some("allow" | "reject")));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_follow_the_template_and_the_key_field() {
    let b = broker();
    let (ctx, _, _) = context("siem", vec![]);
    let mut c = config(&b.address(), "audit.{action}");
    c.key = "host".into();
    c.compression = Compression::Lz4;
    let mut sink = KafkaSink::open(c, ctx).unwrap();
    sink.prepare().await.unwrap();
    sink.write(batch(0, (0..10).map(|n| event("sb-a", n, 0)).collect()))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    let allow = read_topic(&b.address(), "audit.allow", 6, Duration::from_secs(5)).unwrap();
    let reject = read_topic(&b.address(), "audit.reject", 6, Duration::from_secs(5)).unwrap();
    assert_eq!((allow.len(), reject.len()), (5, 5));
    let mut keys: Vec<String> = allow
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "h0.example.com",
            "h2.example.com",
            "h4.example.com",
            "h6.example.com",
            "h8.example.com"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_too_large_is_dead_lettered_and_the_rest_delivered() {
    let b = broker();
    let (ctx, _, dead) = context("siem", vec![]);
    let mut c = config(&b.address(), "audit.big");
    c.options
        .insert("message.max.bytes".into(), OptionValue::Integer(4_000));
    let mut sink = KafkaSink::open(c, ctx).unwrap();
    sink.prepare().await.unwrap();
    let events = vec![
        event("sb-a", 1, 10),
        event("sb-a", 2, 10_000),
        event("sb-a", 3, 10),
    ];
    sink.write(batch(0, events)).await.unwrap();
    sink.flush().await.unwrap();
    let dead = dead.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "sb-a-e2");
    assert!(dead[0].1.contains("message size limit"), "{}", dead[0].1);
    let got = read_topic(&b.address(), "audit.big", 3, Duration::from_secs(3)).unwrap();
    let ids: Vec<String> = got.iter().filter_map(|r| r.header("event_id")).collect();
    assert_eq!(ids, ["sb-a-e1", "sb-a-e3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flush_waits_out_a_broker_restart_and_loses_nothing() {
    let mut b = broker();
    let (ctx, _, _) = context("siem", vec![]);
    let mut c = config(&b.address(), "audit.restart");
    c.stall_timeout_ms = 2_000;
    let mut sink = KafkaSink::open(c, ctx).unwrap();
    sink.prepare().await.unwrap();
    sink.write(batch(0, (0..20).map(|n| event("sb-a", n, 0)).collect()))
        .await
        .unwrap();
    sink.flush().await.unwrap();

    // The broker dies: a flush must wait, not fail and not report success.
    b.kill();
    sink.write(batch(1, (20..40).map(|n| event("sb-a", n, 0)).collect()))
        .await
        .unwrap();
    let flushed = tokio::time::timeout(Duration::from_secs(3), sink.flush()).await;
    assert!(flushed.is_err(), "a flush with the broker down must not return");

    // It comes back empty (in-memory storage) and refuses the old producer id: the sink rebuilds
    // its producer and sends everything undelivered again.
    b.restart().unwrap();
    tokio::time::timeout(Duration::from_secs(60), sink.flush())
        .await
        .expect("flush after the broker returned")
        .unwrap();
    let got = read_topic(&b.address(), "audit.restart", 21, Duration::from_secs(5)).unwrap();
    let ids: Vec<String> = got.iter().filter_map(|r| r.header("event_id")).collect();
    let want: Vec<String> = (20..40).map(|n| format!("sb-a-e{n}")).collect();
    assert_eq!(ids, want);
}

/// Each id in `records` once, and each sandbox's in the order sent.
fn assert_once_in_order(records: &[crate::testing::Record], sent: &[Event]) {
    let ids: Vec<String> = records.iter().filter_map(|r| r.header("event_id")).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "{} messages repeat an event",
        ids.len() - distinct.len()
    );
    let mut want: Vec<String> = sent.iter().map(|e| e.id.to_string()).collect();
    want.sort();
    want.dedup();
    assert_eq!(distinct, want, "every event once");
    let sandboxes: HashSet<&str> = sent.iter().map(|e| &*e.resource_id).collect();
    for rid in sandboxes {
        let got: Vec<String> = records
            .iter()
            .filter(|r| r.header("resource_id").as_deref() == Some(rid))
            .filter_map(|r| r.header("event_id"))
            .collect();
        let mut order: Vec<String> = Vec::new();
        for e in sent.iter().filter(|e| &*e.resource_id == rid) {
            if !order.iter().any(|o| **o == *e.id) {
                order.push(e.id.to_string());
            }
        }
        assert_eq!(got, order, "{rid}: in the order sent");
    }
}

fn events(rids: &[&str], from: u64, to: u64) -> Vec<Event> {
    (from..to)
        .flat_map(|n| rids.iter().map(move |r| event(r, n, 20)))
        .collect()
}

/// The committed state after `entries` were committed over `base` (later keys win, deletions
/// remove).
fn commit(base: &[StateEntry], entries: &[StateEntry]) -> Vec<StateEntry> {
    let mut out: Vec<StateEntry> = base.to_vec();
    for e in entries {
        out.retain(|o| o.key != e.key);
        if !e.is_deletion() {
            out.push(e.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_what_the_topic_holds_past_the_checkpoint_is_not_sent_again() {
    let b = broker();
    let rids = ["sb-a", "sb-b", "sb-c", "sb-d"];
    // First life: two flushes, the first committed with the checkpoint; then the process dies
    // with batch 1 and 2 delivered but not checkpointed.
    let (ctx, registry, _) = context("siem", vec![]);
    let mut sink = KafkaSink::open(config(&b.address(), "audit.crash"), ctx).unwrap();
    sink.prepare().await.unwrap();
    let registered = registry.0.lock().unwrap().clone();
    assert!(
        !registered.is_empty(),
        "the topic's partitions are registered before the first send"
    );
    let b0 = events(&rids, 0, 20);
    sink.write(batch(0, b0.clone())).await.unwrap();
    let s0 = sink.flush().await.unwrap();
    assert!(s0.iter().all(|e| e.key.starts_with("next_offset:")), "{s0:?}");
    assert!(!s0.is_empty());
    let b1 = events(&rids, 20, 40);
    sink.write(batch(1, b1.clone())).await.unwrap();
    sink.flush().await.unwrap();
    let b2 = events(&rids, 40, 50);
    sink.write(batch(2, b2.clone())).await.unwrap();
    sink.flush().await.unwrap();
    drop(sink);
    let committed = commit(&registered, &s0);

    // Second life: the sources replay from the checkpoint (batches 1 and 2), then new events.
    // Sandbox sb-a comes first and moves on before the others replay: a crash now must still
    // find their old messages (pinned below sb-a's new ones).
    let (ctx, _, _) = context("siem", committed.clone());
    let mut sink = KafkaSink::open(config(&b.address(), "audit.crash"), ctx).unwrap();
    sink.prepare().await.unwrap();
    let replay_a: Vec<Event> = b1
        .iter()
        .chain(&b2)
        .filter(|e| &*e.resource_id == "sb-a")
        .cloned()
        .collect();
    let new_a = events(&["sb-a"], 50, 60);
    sink.write(batch(0, replay_a.iter().chain(&new_a).cloned().collect()))
        .await
        .unwrap();
    let s1 = sink.flush().await.unwrap();
    assert_eq!(sink.replays_skipped(), replay_a.len() as u64);
    drop(sink);
    let committed = commit(&committed, &s1);

    // Third life: everything replays from the new checkpoint; then new events for all.
    let (ctx, _, _) = context("siem", committed);
    let mut sink = KafkaSink::open(config(&b.address(), "audit.crash"), ctx).unwrap();
    sink.prepare().await.unwrap();
    let replay: Vec<Event> = b1
        .iter()
        .chain(&b2)
        .filter(|e| &*e.resource_id != "sb-a")
        .cloned()
        .collect();
    let tail = events(&rids, 60, 70);
    sink.write(batch(0, replay.clone())).await.unwrap();
    sink.write(batch(1, tail.clone())).await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(sink.replays_skipped(), replay.len() as u64);

    let mut sent: Vec<Event> = b0;
    sent.extend(b1);
    sent.extend(b2);
    sent.extend(new_a);
    sent.extend(tail);
    let got = read_topic(
        &b.address(),
        "audit.crash",
        sent.len() + 1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_once_in_order(&got, &sent);
    let partitions: HashSet<i32> = got.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 1,
        "the test spans several partitions: {partitions:?}"
    );
}

/// Before the read past the last flush, the rebuilt producer sent all 150 messages again; against
/// tansu it then heard nothing back (what the broker held was sent again under a new producer
/// id), was rebuilt every second, and the flush never ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_rebuilt_after_a_stall_does_not_send_again_what_the_broker_took() {
    let (b, proxy) = Broker::start_behind_proxy().unwrap_or_else(|e| panic!("{e}"));
    let (ctx, _, _) = context("siem", vec![]);
    let mut c = config(&proxy.address(), "audit.stall");
    c.stall_timeout_ms = 1_000;
    let mut sink = KafkaSink::open(c, ctx).unwrap();
    sink.prepare().await.unwrap();
    let rids = ["sb-a", "sb-b", "sb-c"];
    let first = events(&rids, 0, 30);
    sink.write(batch(0, first.clone())).await.unwrap();
    sink.flush().await.unwrap();

    // The broker takes what comes next, but its answers never reach the producer. Batches go
    // out one request at a time: the first five per partition are in flight (the idempotent
    // producer's limit), the rest wait in the producer and never reach the broker.
    proxy.stall();
    let mut second = Vec::new();
    for n in 0..10u64 {
        let part = events(&rids, 30 + n * 5, 35 + n * 5);
        second.extend(part.iter().cloned());
        sink.write(batch(1 + n, part)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::timeout(Duration::from_secs(60), sink.flush())
        .await
        .expect("the flush ends once the producer is rebuilt")
        .unwrap();
    assert!(
        proxy.withheld() > 0,
        "the stall withheld no answer: the test tested nothing"
    );
    assert!(sink.generation > 0, "the producer was rebuilt");
    assert!(
        sink.replays_skipped() > 0,
        "the rebuilt producer found what the old one had delivered"
    );
    let third = events(&rids, 80, 90);
    sink.write(batch(11, third.clone())).await.unwrap();
    sink.close().await.unwrap();

    let mut sent = first;
    sent.extend(second);
    sent.extend(third);
    let got = read_topic(
        &b.address(),
        "audit.stall",
        sent.len() + 1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_once_in_order(&got, &sent);
}

#[test]
fn offset_keys_read_back_and_foreign_keys_are_left_alone() {
    use crate::replay::{parse_key, state_key, ALL_PARTITIONS};
    assert_eq!(parse_key(&state_key("audit.one", 2)), Some(("audit.one", 2)));
    assert_eq!(
        parse_key(&state_key("a-b_c", ALL_PARTITIONS)),
        Some(("a-b_c", ALL_PARTITIONS))
    );
    for foreign in [
        "next_offset:x:t",
        "next_offset:-2:t",
        "next_offset:1:",
        "file/a.ndjson",
        "next_offset:1",
    ] {
        assert_eq!(parse_key(foreign), None, "{foreign}");
    }
}

use std::sync::Arc;
use std::time::Duration;

use auditship_sink::testing::context;
use auditship_sink::{Batch, Event, Sink};

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
            assert!(sink.flush().await.unwrap().is_empty());
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

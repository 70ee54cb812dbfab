//! The client library against the simulator: list, get, list_all, tail.

use std::collections::HashSet;
use std::time::Duration;

use auditship::client::{Client, Error, Filters, StartAt, TailOptions, Transport};
use auditship::secret::ApiKey;
use auditship::sim::SimConfig;
use futures_util::StreamExt;

use crate::util::sim;

fn client(sim: &auditship::sim::Simulator) -> Client {
    Client::builder()
        .base_url(sim.base_url())
        .api_key(ApiKey::new(sim.api_key()))
        .build()
        .unwrap()
}

/// The ids of the next `n` events of `tail`, within 60 s.
async fn take_ids(tail: &mut auditship::client::Tail, n: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        let item = tokio::time::timeout_at(deadline, tail.next())
            .await
            .expect("events keep coming");
        got.push(item.unwrap().unwrap().id().to_string());
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn list_get_and_list_all() {
    let sim = sim(
        &["sb-1", "sb-2"],
        SimConfig {
            backlog_per_sandbox: 250,
            ties: 5,
            ..SimConfig::default()
        },
    )
    .await;
    let c = client(&sim);
    let audit = c.sandbox("sb-1").audit();
    let page = audit
        .list(&Filters {
            limit: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert!(page
        .iter()
        .all(|e| e.fields().unwrap().resource_id.as_deref() == Some("sb-1")));
    for _ in 0..3 {
        // The simulator answers bare, `data`-wrapped and `event`-wrapped in turn.
        let got = audit.get(page[3].id()).await.unwrap();
        assert_eq!(got.raw(), page[3].raw());
    }
    let rejected = audit
        .list(&Filters {
            action: Some("reject".into()),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!rejected.is_empty());
    assert!(rejected
        .iter()
        .all(|e| e.fields().unwrap().action.as_deref() == Some("reject")));

    let all: Vec<_> = audit.list_all(Filters::default()).collect().await;
    let ids: Vec<String> = all.into_iter().map(|e| e.unwrap().id().to_string()).collect();
    assert_in_order_once(&sim, "sb-1", &ids);

    let org: Vec<_> = c.audit().list_all(Filters::default()).collect().await;
    assert_eq!(org.len(), 500);

    match audit.get("evt_missing").await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_is_a_typed_error_without_the_key() {
    let sim = sim(&["sb-1"], SimConfig::default()).await;
    let c = Client::builder()
        .base_url(sim.base_url())
        .api_key(ApiKey::new("msk_u_not_the_right_one"))
        .build()
        .unwrap();
    let err = c
        .sandbox("sb-1")
        .audit()
        .list(&Filters::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("msk_u_not_the_right_one"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_yields_every_event_once_in_order_through_drops_and_fallback() {
    for (transport, no_socket) in [
        (Transport::Auto, false),
        (Transport::Auto, true),
        (Transport::Poll, false),
    ] {
        let sim = sim(
            &["sb-tail"],
            SimConfig {
                backlog_per_sandbox: 40,
                live_rate_per_sec: 300.0,
                live_events_per_sandbox: Some(300),
                drop_every_frames: Some(11),
                no_socket: if no_socket { vec!["sb-tail".into()] } else { vec![] },
                ties: 2,
                ..SimConfig::default()
            },
        )
        .await;
        let c = client(&sim);
        let mut tail = c.sandbox("sb-tail").audit().tail(TailOptions {
            start: StartAt::Earliest,
            transport,
            poll_interval: Duration::from_millis(100),
            ..TailOptions::default()
        });
        let got = take_ids(&mut tail, 340).await;
        assert_in_order_once(&sim, "sb-tail", &got);
        // Nothing more arrives: no duplicate later either.
        assert!(tokio::time::timeout(Duration::from_millis(500), tail.next())
            .await
            .is_err());
    }
}

/// The benchmarks' fast mode: prepared events pushed as fast as the socket reads, listable
/// once sent, so a tail that loses its socket every few hundred frames still gets each once.
#[tokio::test(flavor = "multi_thread")]
async fn fast_mode_pushes_every_prepared_event_once() {
    let sim = sim(
        &["sb-fast"],
        SimConfig {
            burst: true,
            live_events_per_sandbox: Some(3_000),
            drop_every_frames: Some(700),
            mixed_frames: false,
            ..SimConfig::default()
        },
    )
    .await;
    // Nothing is listable before a socket takes it.
    assert_eq!(sim.events("sb-fast").len(), 0);
    let c = client(&sim);
    let mut tail = c.sandbox("sb-fast").audit().tail(TailOptions {
        start: StartAt::Earliest,
        ..TailOptions::default()
    });
    let got = take_ids(&mut tail, 3_000).await;
    assert_eq!(sim.events("sb-fast").len(), 3_000);
    assert_in_order_once(&sim, "sb-fast", &got);
    assert!(tokio::time::timeout(Duration::from_millis(500), tail.next())
        .await
        .is_err());
}

/// A busy sandbox: the catch-up lists only up to the socket's first event and the socket
/// carries the rest. (Listing until a page adds nothing would chase the sandbox's head,
/// fetching every event twice and overflowing the catch-up buffer over and over.)
#[tokio::test(flavor = "multi_thread")]
async fn catch_up_stops_at_the_sockets_first_event_on_a_busy_sandbox() {
    let sim = sim(
        &["sb-busy"],
        SimConfig {
            burst: true,
            live_events_per_sandbox: Some(20_000),
            mixed_frames: false,
            ..SimConfig::default()
        },
    )
    .await;
    let c = client(&sim);
    let mut tail = c.sandbox("sb-busy").audit().tail(TailOptions {
        start: StartAt::Earliest,
        catch_up_buffer_frames: 2_000,
        ..TailOptions::default()
    });
    let got = take_ids(&mut tail, 20_000).await;
    assert_in_order_once(&sim, "sb-busy", &got);
    // Let the one-time sweep run (2 s into the socket): it too stops past the first event.
    assert!(tokio::time::timeout(Duration::from_millis(2_500), tail.next())
        .await
        .is_err());
    // The socket, a page or two of catch-up and a page or two of sweep; listing the 20,000
    // events takes 200 pages.
    let requests = sim.requests();
    assert!(requests <= 10, "{requests} requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_tail_closes_its_socket() {
    let sim = sim(
        &["sb-drop"],
        SimConfig {
            backlog_per_sandbox: 10,
            live_rate_per_sec: 50.0,
            ..SimConfig::default()
        },
    )
    .await;
    let c = client(&sim);
    let mut tail = c.sandbox("sb-drop").audit().tail(TailOptions {
        start: StartAt::Earliest,
        ..TailOptions::default()
    });
    for _ in 0..15 {
        tail.next().await.unwrap().unwrap();
    }
    assert_eq!(sim.open_sockets(), 1);
    drop(tail);
    crate::util::wait_for("the socket to close", Duration::from_secs(10), || {
        sim.open_sockets() == 0
    })
    .await;
}

/// `ids` holds every event of `sandbox` exactly once, in cursor-time order. The order of events
/// that share one timestamp is not defined by the API, so ties may come in any order.
fn assert_in_order_once(sim: &auditship::sim::Simulator, sandbox: &str, ids: &[String]) {
    let events = sim.events(sandbox);
    let time: std::collections::HashMap<&str, i64> =
        events.iter().map(|e| (e.id.as_str(), e.inserted_us)).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no duplicates"
    );
    assert_eq!(ids.len(), events.len(), "every event");
    let times: Vec<i64> = ids
        .iter()
        .map(|id| *time.get(id.as_str()).expect("a known id"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in cursor-time order");
}

/// A server that ignores `resource_id` returns every sandbox's events: a sandbox's `list`
/// leaves the others' out, as `list_all` and tails do, and its `get` of another sandbox's event
/// is `NotFound`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_view_holds_only_its_sandbox_when_the_server_ignores_the_filter() {
    let sim = sim(
        &["sb-1", "sb-2"],
        SimConfig {
            backlog_per_sandbox: 30,
            ignore_resource_filter: true,
            list_shape: auditship::sim::ListShape::Data,
            ..SimConfig::default()
        },
    )
    .await;
    let c = client(&sim);
    // The server really mixes them: the org-wide page of the same request holds both.
    let mixed = c
        .audit()
        .list(&Filters {
            resource_id: Some("sb-1".into()),
            limit: Some(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let owners: HashSet<String> = mixed
        .iter()
        .filter_map(|e| e.resource_id().map(str::to_string))
        .collect();
    assert_eq!(owners.len(), 2, "the server should ignore the filter here");

    let audit = c.sandbox("sb-1").audit();
    let page = audit
        .list(&Filters {
            limit: Some(60),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 30);
    assert!(page.iter().all(|e| e.resource_id() == Some("sb-1")));

    let other = mixed.iter().find(|e| e.resource_id() == Some("sb-2")).unwrap();
    assert!(matches!(audit.get(other.id()).await, Err(Error::NotFound { .. })));
    assert_eq!(
        c.sandbox("sb-2").audit().get(other.id()).await.unwrap().id(),
        other.id()
    );
}

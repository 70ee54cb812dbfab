//! A hostile or broken server cannot take the client's memory: each limit ends in a clear
//! error, on a real TCP connection to a server written here byte by byte.

#![allow(clippy::expect_used)]

use std::time::Duration;

use auditship_client::secret::ApiKey;
use auditship_client::{Client, Error, Filters};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The heap, counted, so that each test asserts the memory its hostile server could take.
#[global_allocator]
static HEAP: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

/// The tests of this file run one at a time, so that each one's peak is its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// While it lives, the other tests wait; [`HeapWatch::peak_growth_mib`] is the most the heap
/// grew over what it held when the watch began (the client's buffers and the server's).
struct HeapWatch {
    base: usize,
    _one: tokio::sync::MutexGuard<'static, ()>,
}

async fn watch_heap() -> HeapWatch {
    let one = ONE_AT_A_TIME.lock().await;
    let base = HEAP.current_usage();
    HEAP.reset_peak_usage();
    HeapWatch { base, _one: one }
}

impl HeapWatch {
    fn peak_growth_mib(&self) -> f64 {
        HEAP.peak_usage().saturating_sub(self.base) as f64 / f64::from(1 << 20)
    }

    /// Fail unless the heap stayed under `bound_mib` over the base.
    fn assert_under(&self, bound_mib: f64, what: &str) {
        let peak = self.peak_growth_mib();
        eprintln!("{what}: the heap grew by at most {peak:.2} MiB (bound {bound_mib} MiB)");
        assert!(
            peak < bound_mib,
            "{what}: the heap grew by {peak:.1} MiB, over the {bound_mib} MiB bound"
        );
    }
}

/// Read one request's head (to its blank line); `None` when the client hung up first.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut request = vec![0u8; 8192];
    let mut read = 0;
    while !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut request[read..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => read += n,
        }
    }
    Some(String::from_utf8_lossy(&request[..read]).into_owned())
}

/// A server that answers every request with `head`, then calls `body` with the socket until it
/// fails (the client hung up). Returns its base URL.
async fn server<F, Fut>(head: &'static str, body: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                if read_request(&mut socket).await.is_none() {
                    return;
                }
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                body(socket).await;
            });
        }
    });
    format!("http://{addr}/api/v1")
}

fn client(base: &str, max_response_bytes: usize) -> Client {
    Client::builder()
        .base_url(base)
        .api_key(ApiKey::new("msk_test_hostile"))
        .max_response_bytes(max_response_bytes)
        .build()
        .expect("a client")
}

/// A body that never ends (chunked, no length) is cut off at the limit: the call returns
/// `TooLarge` instead of reading until memory runs out, which would never return here.
#[tokio::test]
async fn an_endless_body_is_refused_at_the_limit() {
    let heap = watch_heap().await;
    let base = server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        |mut socket| async move {
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            loop {
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        },
    )
    .await;
    let listed = tokio::time::timeout(
        Duration::from_secs(20),
        client(&base, 1024 * 1024)
            .sandbox("sb-1")
            .audit()
            .list(&Filters::default()),
    )
    .await
    .expect("the client stopped reading at its limit");
    match listed {
        Err(
            e @ Error::TooLarge {
                limit_bytes: 1_048_576,
                ..
            },
        ) => {
            assert!(!e.is_retryable());
            let shown = e.to_string();
            assert!(
                shown.contains("max_response_bytes") && !shown.contains("msk_test_hostile"),
                "{shown}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    heap.assert_under(4.0, "an endless body, 1 MiB limit");
}

/// A response head that never ends (header lines forever) is refused at the HTTP client's
/// head limit (hyper's, about 400 KiB), not read until memory runs out.
#[tokio::test]
async fn an_endless_response_head_is_refused() {
    let heap = watch_heap().await;
    let base = server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
        |mut socket| async move {
            let line = format!("x-filler: {}\r\n", "y".repeat(1000));
            while socket.write_all(line.as_bytes()).await.is_ok() {}
        },
    )
    .await;
    let listed = tokio::time::timeout(
        Duration::from_secs(30),
        client(&base, 1024 * 1024)
            .sandbox("sb-1")
            .audit()
            .list(&Filters::default()),
    )
    .await
    .expect("the client stopped reading the head");
    let e = listed.expect_err("an endless head is an error");
    let shown = e.to_string();
    assert!(!shown.contains("msk_test_hostile"), "{shown}");
    eprintln!("an endless response head: {shown}");
    heap.assert_under(4.0, "an endless response head");
}

/// A declared length over the limit is refused before a byte of the body is read.
#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_reading() {
    let _one = watch_heap().await;
    let base = server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n",
        |socket| async move {
            // Send nothing: a client that waited for the body would time out instead.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(socket);
        },
    )
    .await;
    let listed = tokio::time::timeout(
        Duration::from_secs(10),
        client(&base, 1024 * 1024)
            .sandbox("sb-1")
            .audit()
            .list(&Filters::default()),
    )
    .await
    .expect("refused without waiting for the body");
    assert!(matches!(listed, Err(Error::TooLarge { .. })), "{listed:?}");
}

/// Under the limit, a body in many chunks arrives whole.
#[tokio::test]
async fn a_body_in_many_chunks_under_the_limit_arrives_whole() {
    let _one = watch_heap().await;
    let base = server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        |mut socket| async move {
            let page = r#"{"data":[{"id":"evt_1","resource_id":"sb-1","inserted_at":"2026-11-25T10:00:00Z"},{"id":"evt_2","resource_id":"sb-1","inserted_at":"2026-11-25T10:00:01Z"}]}"#;
            for piece in page.as_bytes().chunks(7) {
                let chunk = format!("{:x}\r\n{}\r\n", piece.len(), String::from_utf8_lossy(piece));
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                let _ = socket.flush().await;
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        },
    )
    .await;
    let listed = client(&base, 1024 * 1024)
        .sandbox("sb-1")
        .audit()
        .list(&Filters::default())
        .await
        .expect("a page");
    let ids: Vec<&str> = listed.iter().map(|e| e.id()).collect();
    assert_eq!(ids, ["evt_1", "evt_2"]);
}

/// A full response with `body`, then the connection closed.
fn response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Requests the server below has answered.
static ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A `next_cursor` that comes back, or fresh cursors over the same page, end cursor paging
/// (with a warning) instead of being followed forever on the key's budget; the events come
/// once each.
#[tokio::test]
async fn cursors_that_loop_or_stall_end_in_since_paging() {
    let heap = watch_heap().await;
    for fresh_cursors in [false, true] {
        let base = server("", move |mut socket| async move {
            let n = ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let cursor = if fresh_cursors { format!("c{n}") } else { "c1".to_string() };
            let page = format!(
                r#"{{"data":[{{"id":"evt_1","resource_id":"sb-1","inserted_at":"2026-11-25T10:00:00Z"}},{{"id":"evt_2","resource_id":"sb-1","inserted_at":"2026-11-25T10:00:01Z"}}],"next_cursor":"{cursor}","has_more":true}}"#
            );
            let _ = socket.write_all(response(&page).as_bytes()).await;
        })
        .await;
        let before = ANSWERED.load(std::sync::atomic::Ordering::Relaxed);
        let filters = Filters {
            resource_id: Some("sb-1".into()),
            ..Filters::default()
        };
        let all: Vec<_> = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::StreamExt::collect::<Vec<_>>(client(&base, 1024 * 1024).audit().list_all(filters)),
        )
        .await
        .expect("the listing ended");
        let ids: Vec<String> = all
            .into_iter()
            .map(|e| e.expect("an event").id().to_string())
            .collect();
        assert_eq!(ids, ["evt_1", "evt_2"], "fresh cursors: {fresh_cursors}");
        let asked = ANSWERED.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            asked <= 5,
            "{asked} requests for one page (fresh cursors: {fresh_cursors})"
        );
    }
    heap.assert_under(4.0, "cursors that loop");
}

/// A server on loopback that answers a socket upgrade (101, the subprotocol) and hands the
/// socket to `upgraded`, and hands any other request's socket to `rest`. Returns the base URL.
async fn ws_server<U, UF, R, RF>(upgraded: U, rest: R) -> String
where
    U: Fn(tokio::net::TcpStream) -> UF + Send + Sync + 'static,
    UF: std::future::Future<Output = ()> + Send,
    R: Fn(tokio::net::TcpStream) -> RF + Send + Sync + 'static,
    RF: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    let (upgraded, rest) = (std::sync::Arc::new(upgraded), std::sync::Arc::new(rest));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (upgraded, rest) = (upgraded.clone(), rest.clone());
            tokio::spawn(async move {
                let Some(raw) = read_request(&mut socket).await else {
                    return;
                };
                // The key's case matters: only the header's name is matched without case.
                let Some(key) = raw
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-key:"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
                else {
                    rest(socket).await;
                    return;
                };
                use sha1::Digest as _;
                let accept = data_encoding::BASE64.encode(&sha1::Sha1::digest(
                    format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
                ));
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\nsec-websocket-protocol: {}\r\n\r\n",
                    auditship_client::SUBPROTOCOL
                );
                if socket.write_all(head.as_bytes()).await.is_ok() {
                    upgraded(socket).await;
                }
            });
        }
    });
    format!("http://{addr}/api/v1")
}

/// Socket upgrades the pinging server below has accepted.
static UPGRADES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A server whose socket pings every 50 ms and does nothing else (it sends no event, reads
/// nothing, so never answers our ping): its pings must not pass for life. The tail drops the
/// socket after twice `ping_after` and connects again. (Pings reset the idle timer before, and
/// such a socket was kept forever.) The list endpoint answers empty pages.
#[tokio::test]
async fn a_socket_that_only_pings_is_dropped_as_idle() {
    let heap = watch_heap().await;
    let base = ws_server(
        |mut socket| async move {
            UPGRADES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Ping, never read: the client's pongs and pings go unanswered.
            while socket.write_all(&[0x89, 0x00]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
        |mut socket| async move {
            let _ = socket.write_all(response(r#"{"data":[]}"#).as_bytes()).await;
        },
    )
    .await;
    let options = auditship_client::TailOptions {
        transport: auditship_client::Transport::WebSocket,
        ping_after: Duration::from_millis(300),
        socket_retry_max: Duration::from_secs(1),
        ..auditship_client::TailOptions::default()
    };
    let tail = client(&base, 1024 * 1024).sandbox("sb-1").audit().tail(options);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while UPGRADES.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the socket that only pings was kept: {} upgrade(s) in 15 s",
            UPGRADES.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    heap.assert_under(4.0, "a socket that only pings and never reads");
    drop(tail);
}

/// Bytes of socket frames the flooding server below has handed to TCP.
static FLOODED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Its socket upgrades.
static FLOOD_UPGRADES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// While a catch-up waits on a slow list endpoint, a server pushes 100 frames of 512 KiB down
/// the socket: the tail buffers up to `catch_up_buffer_bytes` (1 MiB here) and then stops
/// reading, so the server can hand TCP only that plus what the kernel's buffers hold. (Bounded
/// only by 2,000 frames, the tail read all 50 MiB into memory.)
#[tokio::test]
async fn the_catch_up_buffer_is_bounded_in_bytes() {
    let heap = watch_heap().await;
    let base = ws_server(
        |mut socket| async move {
            FLOOD_UPGRADES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let payload = 512 * 1024;
            let mut frame = vec![0x81, 127];
            frame.extend_from_slice(&(payload as u64).to_be_bytes());
            frame.extend(std::iter::repeat_n(b'x', payload));
            for _ in 0..100 {
                if socket.write_all(&frame).await.is_err() {
                    return;
                }
                FLOODED.fetch_add(frame.len(), std::sync::atomic::Ordering::Relaxed);
            }
        },
        |mut socket| async move {
            // The list endpoint, slow: the catch-up waits while the socket floods.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = socket.write_all(response(r#"{"data":[]}"#).as_bytes()).await;
        },
    )
    .await;
    let options = auditship_client::TailOptions {
        transport: auditship_client::Transport::WebSocket,
        catch_up_buffer_bytes: 1 << 20,
        ..auditship_client::TailOptions::default()
    };
    let tail = client(&base, 1024 * 1024).sandbox("sb-1").audit().tail(options);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while FLOOD_UPGRADES.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail never opened its socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Well inside the list's 3 s delay: everything the tail would read, it has read by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    heap.assert_under(4.0, "a socket flooded during a catch-up, 1 MiB buffer");
    let flooded = FLOODED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        flooded < 24 << 20,
        "{} MiB of frames taken during one catch-up (the buffer's bound is 1 MiB)",
        flooded >> 20
    );
    drop(tail);
}

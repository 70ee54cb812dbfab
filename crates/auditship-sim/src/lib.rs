//! The bundled Miosa simulator: serves the whole egress-audit contract on loopback, with knobs
//! for every awkward thing a real server may do (every list shape, enveloped/binary/garbage
//! frames, timestamp ties, dropped sockets, sandboxes without a socket, 429s and 5xx).
//!
//! The demo, the tests and the benchmarks run it in-process ([`Simulator::start`]);
//! `auditship sim` runs it standalone.
//!
//! # Layout
//! - `lib.rs`: [`SimConfig`] (every knob) and the running [`Simulator`].
//! - `data.rs`: the fleet's events (their shapes, times, ties) and the fault counters.
//! - `http.rs`: the list, get and sandbox-list endpoints; `socket.rs`: the sockets.
//! - `tls.rs`: HTTPS and WSS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::SinkExt;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use auditship_client::{format_time, parse_time, SUBPROTOCOL};

mod data;
mod http;
mod socket;
mod tls;

use data::*;
pub use data::{SimEvent, SimFaults};
use http::*;
use socket::*;
pub use tls::SimTls;
use tls::*;

/// The shape of list responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ListShape {
    /// A bare array.
    Bare,
    /// `{"data": [...]}`.
    Data,
    /// `{"events": [...], "has_more": …}`.
    Events,
    /// `{"audit": [...]}`.
    Audit,
    /// `{"items": [...], "page": {…}}`.
    Items,
    /// `{"data": [...], "next_cursor": …, "has_more": …}`: cursor paging.
    Cursor,
    /// Every shape in turn, one per response.
    #[default]
    Mixed,
}

/// How the simulator spells times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeFormat {
    /// `2026-11-25T10:00:00.123456Z`.
    #[default]
    Micros,
    /// `2026-11-25T10:00:00.123+00:00`: millisecond precision, numeric offset.
    MillisOffset,
}

impl ListShape {
    /// Every single shape (all but `Mixed`).
    pub const EVERY: [ListShape; 6] = [
        ListShape::Bare,
        ListShape::Data,
        ListShape::Events,
        ListShape::Audit,
        ListShape::Items,
        ListShape::Cursor,
    ];
}

/// Simulator knobs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The key clients must send (Bearer header or `?token=`).
    pub api_key: String,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Sandbox ids.
    pub sandboxes: Vec<String>,
    /// Past events per sandbox, present at start.
    pub backlog_per_sandbox: usize,
    /// Live events per second per sandbox (0: none).
    pub live_rate_per_sec: f64,
    /// Stop generating live events after this many per sandbox.
    pub live_events_per_sandbox: Option<u64>,
    /// Sandboxes whose socket answers 404.
    pub no_socket: Vec<String>,
    /// Sandboxes whose socket accepts without selecting the subprotocol.
    pub wrong_subprotocol: Vec<String>,
    /// Close each socket after this many frames.
    pub drop_every_frames: Option<u64>,
    /// Share of list/get requests answered 429.
    pub ratio_429: f64,
    /// Share of list/get requests answered 500/502/503.
    pub ratio_5xx: f64,
    /// `Retry-After` sent with 429s, in seconds.
    pub retry_after_secs: f64,
    /// Refuse every Nth socket handshake (counted across sandboxes) with a 503.
    pub refuse_every_handshakes: Option<u64>,
    /// Every list and get response waits this long before it is sent.
    pub slow_response_ms: u64,
    /// Every Nth list response (counted across sandboxes) sends its headers and half its body,
    /// then hangs until the client gives up.
    pub hang_every_lists: Option<u64>,
    /// Share of socket frames preceded by a garbage frame.
    pub garbage_ratio: f64,
    /// Precede every Nth frame sent (counted across all sockets, so sockets that are dropped
    /// sooner still get some) with a frame over the 1 MiB cap.
    pub oversize_every_frames: Option<u64>,
    /// Consecutive events sharing one `inserted_at` (1: no ties).
    pub ties: usize,
    /// List response shape.
    pub list_shape: ListShape,
    /// Shuffle the order of events inside each page.
    pub shuffle_pages: bool,
    /// Send frames in every style in turn (plain, `{"event"}`, `{"data"}`, binary).
    pub mixed_frames: bool,
    /// Largest page the list endpoint returns.
    pub max_page: usize,
    /// How times are spelled.
    pub time_format: TimeFormat,
    /// Answer 400 to any request that carries a `cursor` (a server whose cursors expire).
    pub reject_cursors: bool,
    /// Events buffered per sandbox for its sockets; a socket that falls further behind is
    /// closed, as a real server drops a slow consumer. The buffer is allocated up front.
    pub socket_buffer_events: usize,
    /// Ignore the list endpoint's `resource_id` filter: every page holds every sandbox's events.
    pub ignore_resource_filter: bool,
    /// Start delivering to a new socket only this long after the upgrade (events stored in
    /// between never reach it: the client must list them).
    pub subscribe_delay_ms: u64,
    /// Compare `since`/`until` with the stored text, character by character, the way a naive
    /// server comparing strings would: only a client that sends back the server's own spelling
    /// pages correctly.
    pub lexicographic_since: bool,
    /// Every Nth event of a sandbox carries a `pad` field of `pad_bytes` characters (events
    /// larger than a sink's limit).
    pub pad_every_events: Option<u64>,
    /// Size of the `pad` field.
    pub pad_bytes: usize,
    /// Every Nth event carries a credential in `metadata.authorization` (`Bearer msk_live_…`) and
    /// a `token=` in its path, for redaction tests.
    pub secret_every_events: Option<u64>,
    /// Serve HTTPS and WSS with this certificate instead of plain HTTP.
    pub tls: Option<SimTls>,
    /// Fast mode, for benchmarks: every sandbox's `live_events_per_sandbox` live events are
    /// rendered before the server listens, and its socket receives them as fast as it reads, in
    /// batched writes. An event becomes listable as it is handed to a socket. Meant for one
    /// socket per sandbox (a second one would take the rest of the events).
    pub burst: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: "msk_sim_demo_key".into(),
            port: 0,
            sandboxes: vec!["sb-1".into()],
            backlog_per_sandbox: 0,
            live_rate_per_sec: 0.0,
            live_events_per_sandbox: None,
            no_socket: Vec::new(),
            wrong_subprotocol: Vec::new(),
            drop_every_frames: None,
            ratio_429: 0.0,
            ratio_5xx: 0.0,
            retry_after_secs: 0.2,
            refuse_every_handshakes: None,
            slow_response_ms: 0,
            hang_every_lists: None,
            garbage_ratio: 0.0,
            oversize_every_frames: None,
            ties: 1,
            list_shape: ListShape::Mixed,
            shuffle_pages: true,
            mixed_frames: true,
            max_page: 100,
            time_format: TimeFormat::Micros,
            reject_cursors: false,
            subscribe_delay_ms: 0,
            ignore_resource_filter: false,
            socket_buffer_events: 4_096,
            lexicographic_since: false,
            pad_every_events: None,
            pad_bytes: 0,
            secret_every_events: None,
            burst: false,
            tls: None,
        }
    }
}

/// A running simulator. Stops when dropped or on [`Simulator::stop`].
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: CancellationToken,
}

impl Simulator {
    /// Start serving on 127.0.0.1.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        let mut fleet = Fleet::default();
        let sandboxes: Vec<Arc<SimSandbox>> =
            config.sandboxes.iter().map(|id| fleet.add(id, &config)).collect();
        // The backlog: past events 1 ms apart, ending an hour ago.
        let start =
            chrono::Utc::now().timestamp_micros() - 3_600_000_000 - config.backlog_per_sandbox as i64 * 1_000;
        for sb in &sandboxes {
            for k in 0..config.backlog_per_sandbox {
                sb.append(&config, Some(start + k as i64 * 1_000));
            }
        }
        if config.burst {
            for sb in &sandboxes {
                for _ in 0..config.live_events_per_sandbox.unwrap_or(0) {
                    sb.prepare(&config);
                }
            }
        }
        let state = Arc::new(SimState {
            config,
            fleet: std::sync::RwLock::new(fleet),
            requests: AtomicU64::new(0),
            frames_garbage: AtomicU64::new(0),
            open_sockets: AtomicU64::new(0),
            live_done: AtomicBool::new(false),
            faults: FaultCounters::default(),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", state.config.port)).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let app = Router::new()
            .route("/api/v1/egress/audit", get(list_handler))
            .route("/api/v1/egress/audit/{id}", get(get_handler))
            .route("/api/v1/egress/audit/resource/{rid}", get(socket_handler))
            .route("/api/v1/sandboxes", get(sandboxes_handler))
            .with_state(state.clone());
        let stop = shutdown.clone();
        match &state.config.tls {
            Some(t) => spawn_server(
                TlsListener::spawn(listener, t.server_config()?, stop.clone())?,
                app,
                stop,
            ),
            None => spawn_server(listener, app, stop),
        }
        if state.config.live_rate_per_sec > 0.0 && !state.config.burst {
            tokio::spawn(generate_live(state.clone(), shutdown.clone()));
        } else {
            state.live_done.store(true, Ordering::Relaxed);
        }
        Ok(Simulator {
            addr,
            state,
            shutdown,
        })
    }

    /// The API base URL, `http://127.0.0.1:PORT/api/v1` (`https://` when it serves TLS).
    pub fn base_url(&self) -> String {
        let scheme = if self.state.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/api/v1", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key clients must send.
    pub fn api_key(&self) -> &str {
        &self.state.config.api_key
    }

    /// Append `n` events to `sandbox` now (stored and pushed to open sockets).
    pub fn append(&self, sandbox: &str, n: usize) {
        if let Some(sb) = self.state.sandbox(sandbox) {
            for _ in 0..n {
                sb.append(&self.state.config, None);
            }
        }
    }

    /// Create a sandbox now (no backlog; live events from now on, and the given `backlog`).
    pub fn add_sandbox(&self, id: &str, backlog: usize) {
        let sb = {
            let mut f = self.state.fleet.write().unwrap_or_else(|e| e.into_inner());
            f.removed.remove(id);
            match f.by_id.get(id).cloned() {
                Some(sb) => sb,
                None => f.add(id, &self.state.config),
            }
        };
        for _ in 0..backlog {
            sb.append(&self.state.config, None);
        }
    }

    /// Delete a sandbox: it leaves the sandbox list, and its audit endpoints answer 404 (its
    /// events stay countable by [`Simulator::events`]).
    pub fn remove_sandbox(&self, id: &str) {
        let mut f = self.state.fleet.write().unwrap_or_else(|e| e.into_inner());
        f.removed.insert(id.to_string());
    }

    /// Every event of `sandbox`, in insertion order.
    pub fn events(&self, sandbox: &str) -> Vec<Arc<SimEvent>> {
        let sb = self.state.fleet().by_id.get(sandbox).cloned();
        sb.map(|sb| sb.data.lock().unwrap_or_else(|e| e.into_inner()).events.clone())
            .unwrap_or_default()
    }

    /// Events of every sandbox.
    pub fn total_events(&self) -> usize {
        self.state
            .every_sandbox()
            .iter()
            .map(|sb| sb.data.lock().unwrap_or_else(|e| e.into_inner()).events.len())
            .sum()
    }

    /// Whether live generation has finished.
    pub fn live_done(&self) -> bool {
        self.state.live_done.load(Ordering::Relaxed)
    }

    /// Requests served (list, get, socket, sandboxes).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Sockets open now.
    pub fn open_sockets(&self) -> u64 {
        self.state.open_sockets.load(Ordering::Relaxed)
    }

    /// Garbage and oversized frames sent.
    pub fn garbage_frames(&self) -> u64 {
        self.state.frames_garbage.load(Ordering::Relaxed)
    }

    /// The faults injected so far, by kind.
    pub fn faults(&self) -> SimFaults {
        let f = &self.state.faults;
        let oversized = f.oversized.load(Ordering::Relaxed);
        SimFaults {
            rate_limited: f.rate_limited.load(Ordering::Relaxed),
            server_errors: f.server_errors.load(Ordering::Relaxed),
            refused_handshakes: f.refused.load(Ordering::Relaxed),
            hung_responses: f.hung.load(Ordering::Relaxed),
            slow_responses: f.slowed.load(Ordering::Relaxed),
            socket_drops: f.drops.load(Ordering::Relaxed),
            garbage_frames: self.garbage_frames() - oversized,
            oversized_frames: oversized,
        }
    }

    /// Stop serving.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

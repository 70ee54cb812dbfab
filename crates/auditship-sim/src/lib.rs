//! The bundled Miosa simulator: serves the whole egress-audit contract on loopback, with knobs
//! for every awkward thing a real server may do (every list shape, enveloped/binary/garbage
//! frames, timestamp ties, dropped sockets, sandboxes without a socket, 429s and 5xx).
//!
//! The demo, the tests and the benchmarks run it in-process ([`Simulator::start`]);
//! `auditship sim` runs it standalone.

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

/// A certificate the simulator serves HTTPS and WSS with.
#[derive(Clone, Debug)]
pub struct SimTls {
    /// The certificate chain, PEM (the server's certificate first).
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl SimTls {
    fn server_config(&self) -> std::io::Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            std::io::Error::other(format!("simulator TLS {what}: {e}"))
        };
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| bad("key", &e))?;
        auditship_client::install_crypto_provider();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("setup", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn spawn_server<L>(listener: L, app: Router, stop: CancellationToken)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "simulator server failed");
        }
    });
}

/// Connections whose TLS handshake has finished; handshakes run on their own tasks, so a slow
/// or failing one does not hold up the others.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn spawn(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(pair) => pair,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A client that does not trust the certificate fails here; that is its test.
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // The acceptor stopped (the simulator is shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// One stored event.
#[derive(Debug)]
pub struct SimEvent {
    /// Its id.
    pub id: String,
    /// Its `inserted_at`, microseconds.
    pub inserted_us: i64,
    /// Its `inserted_at` as written in the JSON.
    pub inserted_text: String,
    /// Its JSON, one line (shared, so a frame or a page never copies it).
    pub json: Utf8Bytes,
}

#[derive(Default)]
struct SandboxData {
    events: Vec<Arc<SimEvent>>,
    /// Fast mode: rendered events not handed to a socket yet.
    unsent: std::collections::VecDeque<Arc<SimEvent>>,
    generated: u64,
    last_time: i64,
    in_group: usize,
}

struct SimSandbox {
    id: String,
    salt: u64,
    data: Mutex<SandboxData>,
    tx: broadcast::Sender<Arc<SimEvent>>,
}

struct SimState {
    config: SimConfig,
    /// The fleet: sandboxes can be added and removed while the simulator runs.
    fleet: std::sync::RwLock<Fleet>,
    requests: AtomicU64,
    frames_garbage: AtomicU64,
    open_sockets: AtomicU64,
    live_done: AtomicBool,
    faults: FaultCounters,
}

#[derive(Default)]
struct FaultCounters {
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    refused: AtomicU64,
    hung: AtomicU64,
    slowed: AtomicU64,
    drops: AtomicU64,
    oversized: AtomicU64,
    /// Frames sent on all sockets, for `oversize_every_frames`.
    frames: AtomicU64,
    /// Socket handshakes, for `refuse_every_handshakes`.
    handshakes: AtomicU64,
    /// List responses, for `hang_every_lists`.
    lists: AtomicU64,
}

/// The faults a simulator has injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// List/get requests answered 429.
    pub rate_limited: u64,
    /// List/get requests answered 500/502/503.
    pub server_errors: u64,
    /// Socket handshakes refused with a 503.
    pub refused_handshakes: u64,
    /// List responses that hung halfway.
    pub hung_responses: u64,
    /// Responses (list, get, sandbox list) sent `slow_response_ms` late.
    pub slow_responses: u64,
    /// Sockets dropped without a close frame.
    pub socket_drops: u64,
    /// Garbage frames (not JSON, or JSON without an id).
    pub garbage_frames: u64,
    /// Frames over the 1 MiB cap.
    pub oversized_frames: u64,
}

/// A running simulator. Stops when dropped or on [`Simulator::stop`].
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: CancellationToken,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Every action the SDKs document, and `denied`, which fixtures show.
const ACTIONS: [&str; 7] = [
    "allow",
    "allow",
    "reject",
    "stub",
    "error",
    "client_cancel",
    "denied",
];
const HOSTS: [&str; 4] = ["api.openai.com", "pypi.org", "github.com", "evil.example"];

impl SimSandbox {
    /// Append one event at `time_hint` (or now), under the lock so the store and the broadcast
    /// agree on order.
    fn append(&self, config: &SimConfig, time_hint: Option<i64>) -> Arc<SimEvent> {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let event = self.render(&mut d, config, time_hint);
        d.events.push(event.clone());
        // No receivers is fine: nobody is tailing.
        let _ = self.tx.send(event.clone());
        event
    }

    /// Fast mode: render an event that waits for a socket to take it.
    fn prepare(&self, config: &SimConfig) {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let event = self.render(&mut d, config, None);
        d.unsent.push_back(event);
    }

    /// Fast mode: hand up to `max` prepared events to a socket; they are listable from now on.
    fn take_unsent(&self, max: usize) -> Vec<Arc<SimEvent>> {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let n = d.unsent.len().min(max);
        let taken: Vec<Arc<SimEvent>> = d.unsent.drain(..n).collect();
        d.events.extend(taken.iter().cloned());
        taken
    }

    /// The next event of this sandbox (its id, time and JSON), counted but not stored.
    fn render(&self, d: &mut SandboxData, config: &SimConfig, time_hint: Option<i64>) -> Arc<SimEvent> {
        let ties = config.ties;
        let step = match config.time_format {
            TimeFormat::Micros => 1,
            TimeFormat::MillisOffset => 1_000,
        };
        let n = d.generated;
        d.generated += 1;
        let now = time_hint.unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
        let time = if d.in_group > 0 && d.in_group < ties.max(1) {
            d.in_group += 1;
            d.last_time
        } else {
            d.in_group = 1;
            let t = now.max(d.last_time + step);
            (t + step - 1) / step * step
        };
        d.last_time = time;
        let h = splitmix(self.salt ^ n);
        let id = format!("evt_{h:016x}");
        let action = ACTIONS[(h % ACTIONS.len() as u64) as usize];
        let secret = config
            .secret_every_events
            .is_some_and(|every| every > 0 && n % every == every - 1);
        let host = HOSTS[((h >> 8) % HOSTS.len() as u64) as usize];
        let json = format!(
            concat!(
                r#"{{"id":"{id}","tenant_id":"tn_demo","resource_id":{rid},"resource_type":"sandbox","#,
                r#""action":"{action}","effect":"{effect}","host":"{host}","method":"POST","path":"/v1/items?q=[REDACTED]{token}","#,
                r#""status_code":{status},"duration_ms":{dur},"bytes_in":{bin},"bytes_out":{bout},"policy_id":"pol_default","#,
                r#""rule_id":"rule_{rule}","actor_id":"agent-7","request_transforms":[{{"type":"secret_placeholder","name":"OPENAI_KEY"}}],"#,
                r#""metadata":{{"seq":{n},{auth}"cost_usd":1.50,"ratio":1e-3,"note":"caf\u00e9 \"quoted\""}},"#,
                r#"{pad}"inserted_at":"{ins}","timestamp":"{ts}"}}"#
            ),
            pad = match config.pad_every_events {
                Some(every) if every > 0 && n % every == every - 1 => {
                    format!(r#""pad":"{}","#, "x".repeat(config.pad_bytes))
                }
                _ => String::new(),
            },
            id = id,
            token = if secret {
                format!("&token=tok_{:016x}", h.rotate_left(17))
            } else {
                String::new()
            },
            auth = if secret {
                format!(r#""authorization":"Bearer msk_live_{:016x}","#, h.rotate_left(29))
            } else {
                String::new()
            },
            rid = serde_json::Value::String(self.id.clone()),
            action = action,
            effect = if action == "allow" { "allow" } else { "deny" },
            host = host,
            status = if action == "allow" { 200 } else { 0 },
            dur = h % 900,
            bin = h % 65536,
            bout = (h >> 16) % 4096,
            rule = h % 17,
            n = n,
            ins = spell_time(config.time_format, time),
            ts = spell_time(config.time_format, time - 1500),
        );
        Arc::new(SimEvent {
            id,
            inserted_us: time,
            inserted_text: spell_time(config.time_format, time),
            json: json.into(),
        })
    }
}

fn spell_time(format: TimeFormat, us: i64) -> String {
    match format {
        TimeFormat::Micros => format_time(us),
        TimeFormat::MillisOffset => chrono::DateTime::from_timestamp_micros(us)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.3f+00:00")
            .to_string(),
    }
}

/// The sandboxes a simulator serves, in creation order; removed ones keep their events (for
/// the tests' accounting) but answer 404.
#[derive(Default)]
struct Fleet {
    by_id: HashMap<String, Arc<SimSandbox>>,
    order: Vec<String>,
    removed: std::collections::HashSet<String>,
}

impl Fleet {
    fn add(&mut self, id: &str, config: &SimConfig) -> Arc<SimSandbox> {
        let (tx, _) = broadcast::channel(config.socket_buffer_events.max(16));
        let sb = Arc::new(SimSandbox {
            id: id.to_string(),
            salt: splitmix(self.order.len() as u64 ^ 0xA0D1_7000),
            data: Mutex::new(SandboxData::default()),
            tx,
        });
        self.by_id.insert(id.to_string(), sb.clone());
        self.order.push(id.to_string());
        sb
    }
}

impl SimState {
    fn fleet(&self) -> std::sync::RwLockReadGuard<'_, Fleet> {
        self.fleet.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A sandbox that exists now.
    fn sandbox(&self, id: &str) -> Option<Arc<SimSandbox>> {
        let f = self.fleet();
        f.by_id.get(id).filter(|_| !f.removed.contains(id)).cloned()
    }

    /// The sandboxes that exist now, in creation order.
    fn live_sandboxes(&self) -> Vec<Arc<SimSandbox>> {
        let f = self.fleet();
        f.order
            .iter()
            .filter(|id| !f.removed.contains(*id))
            .filter_map(|id| f.by_id.get(id).cloned())
            .collect()
    }

    /// Every sandbox ever, removed ones too.
    fn every_sandbox(&self) -> Vec<Arc<SimSandbox>> {
        let f = self.fleet();
        f.order.iter().filter_map(|id| f.by_id.get(id).cloned()).collect()
    }
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

async fn generate_live(state: Arc<SimState>, stop: CancellationToken) {
    let tick = Duration::from_millis(10);
    let per_tick = state.config.live_rate_per_sec * tick.as_secs_f64();
    let mut owed = 0.0;
    let mut made: u64 = 0;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        owed += per_tick;
        let n = owed.floor() as u64;
        owed -= n as f64;
        for _ in 0..n {
            if state
                .config
                .live_events_per_sandbox
                .is_some_and(|max| made >= max)
            {
                state.live_done.store(true, Ordering::Relaxed);
                return;
            }
            for sb in state.live_sandboxes() {
                sb.append(&state.config, None);
            }
            made += 1;
        }
    }
}

fn authorized(state: &SimState, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    let key = &state.config.api_key;
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer == Some(key.as_str()) || query.get("token") == Some(key)
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A 401, or an injected 429/5xx, before the real answer (after the injected delay).
async fn precheck(
    state: &SimState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<Response> {
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    if state.config.slow_response_ms > 0 {
        state.faults.slowed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(state.config.slow_response_ms)).await;
    }
    if !authorized(state, headers, query) {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"unauthorized","message":"invalid API key","request_id":"req_sim_401"}}"#
                .into(),
        ));
    }
    let roll = rand::random::<f64>();
    if roll < state.config.ratio_429 {
        state.faults.rate_limited.fetch_add(1, Ordering::Relaxed);
        let secs = state.config.retry_after_secs;
        let mut resp = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            format!(r#"{{"error":"rate limit exceeded","code":"rate_limited","retry_after":{secs}}}"#),
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{secs}")) {
            resp.headers_mut().insert("retry-after", v);
        }
        resp.headers_mut().insert(
            "x-request-id",
            axum::http::HeaderValue::from_static("req_sim_429"),
        );
        return Some(resp);
    }
    if roll < state.config.ratio_429 + state.config.ratio_5xx {
        state.faults.server_errors.fetch_add(1, Ordering::Relaxed);
        let (status, body) = match n % 3 {
            0 => (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"message":"internal error"}"#,
            ),
            1 => (StatusCode::BAD_GATEWAY, r#"{"errors":["upstream failed"]}"#),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        };
        let mut resp = json_response(status, body.into());
        resp.headers_mut().insert(
            "x-request-id",
            axum::http::HeaderValue::from_static("req_sim_5xx"),
        );
        return Some(resp);
    }
    None
}

async fn list_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = precheck(&state, &headers, &query).await {
        return resp;
    }
    if state.config.reject_cursors && query.contains_key("cursor") {
        return json_response(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"invalid_cursor","message":"cursor expired"}}"#.into(),
        );
    }
    let lexicographic = state.config.lexicographic_since;
    let since_text = query.get("since").cloned();
    let until_text = query.get("until").cloned();
    let since = match query.get("since") {
        Some(_) if lexicographic => None,
        Some(s) => match parse_time(s) {
            Some(t) => Some(t),
            None => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    format!(r#"{{"error":{{"code":"bad_since","message":"since {s:?} is not RFC 3339"}}}}"#),
                )
            }
        },
        None => None,
    };
    let until = query.get("until").and_then(|s| parse_time(s));
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, state.config.max_page);
    let offset = query
        .get("cursor")
        .and_then(|c| c.strip_prefix("c_"))
        .and_then(|c| usize::from_str_radix(c, 16).ok())
        .unwrap_or(0);
    let action = query.get("action");
    let host = query.get("host");
    let mut matching: Vec<Arc<SimEvent>> = Vec::new();
    // Only the first `offset + limit + 1` matches of each sandbox can reach this page (each
    // sandbox's events are in time order), and one past the page says whether there is more:
    // collecting every match would make paging a large backlog quadratic.
    let needed = offset + limit + 1;
    let mut total = 0;
    // Matches before `matching[0]` that were skipped without being collected.
    let mut skipped = 0;
    // One sandbox, no content filter: the window is a contiguous run of its events, so the
    // page is a slice (a large backlog paged by cursor would otherwise cost O(offset) a page).
    let contiguous = action.is_none() && host.is_none();
    let resource_filter = query
        .get("resource_id")
        .filter(|_| !state.config.ignore_resource_filter);
    let targets: Vec<Arc<SimSandbox>> = match resource_filter {
        Some(rid) => match state.sandbox(rid) {
            Some(sb) => vec![sb],
            None => {
                return json_response(
                    StatusCode::NOT_FOUND,
                    r#"{"error":{"code":"not_found","message":"no such sandbox"}}"#.into(),
                )
            }
        },
        None => state.live_sandboxes(),
    };
    let single = targets.len() == 1;
    for sb in targets {
        let d = sb.data.lock().unwrap_or_else(|e| e.into_inner());
        let from = match since {
            Some(s) => d.events.partition_point(|e| e.inserted_us < s),
            None => match (&since_text, lexicographic) {
                (Some(t), true) => d
                    .events
                    .partition_point(|e| e.inserted_text.as_str() < t.as_str()),
                _ => 0,
            },
        };
        if single && contiguous {
            let end = from
                + d.events[from..].partition_point(|e| match (&until_text, lexicographic) {
                    (Some(t), true) => e.inserted_text.as_str() <= t.as_str(),
                    _ => until.is_none_or(|u| e.inserted_us <= u),
                });
            total = end - from;
            skipped = offset.min(total);
            let take_to = (from + offset + limit + 1).min(end);
            matching.extend(d.events[(from + skipped).min(take_to)..take_to].iter().cloned());
            continue;
        }
        let in_window = d.events[from..]
            .iter()
            .take_while(|e| match (&until_text, lexicographic) {
                (Some(t), true) => e.inserted_text.as_str() <= t.as_str(),
                _ => until.is_none_or(|u| e.inserted_us <= u),
            });
        let wanted = |e: &&Arc<SimEvent>| {
            action.is_none_or(|a| e.json.contains(&format!(r#""action":"{a}""#)))
                && host.is_none_or(|h| e.json.contains(&format!(r#""host":"{h}""#)))
        };
        let mut taken = 0;
        for e in in_window.filter(wanted) {
            total += 1;
            if taken < needed {
                matching.push(e.clone());
                taken += 1;
            } else if state.config.list_shape != ListShape::Items
                && state.config.list_shape != ListShape::Mixed
            {
                // Only the `items` shape reports the total.
                break;
            }
        }
    }
    matching.sort_by_key(|e| e.inserted_us);
    let known = skipped + matching.len();
    let end = (offset + limit).min(known);
    let mut page: Vec<Arc<SimEvent>> = matching
        .get(offset.saturating_sub(skipped)..end.saturating_sub(skipped))
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    if state.config.shuffle_pages {
        // Reverse pairs: a cheap, deterministic disorder.
        for pair in page.chunks_mut(2) {
            pair.reverse();
        }
    }
    let array = format!(
        "[{}]",
        page.iter().map(|e| &*e.json).collect::<Vec<_>>().join(",")
    );
    let shape = match state.config.list_shape {
        ListShape::Mixed => {
            let all = ListShape::EVERY;
            all[(state.requests.load(Ordering::Relaxed) % all.len() as u64) as usize]
        }
        s => s,
    };
    let has_more = end < known;
    let body = match shape {
        ListShape::Bare | ListShape::Mixed => array,
        ListShape::Data => format!(r#"{{"data":{array}}}"#),
        ListShape::Events => format!(r#"{{"events":{array},"has_more":{has_more}}}"#),
        ListShape::Audit => format!(r#"{{"audit":{array},"next_cursor":null}}"#),
        ListShape::Items => format!(
            r#"{{"items":{array},"page":{{"page":{},"page_size":{limit},"total":{total}}}}}"#,
            offset / limit + 1
        ),
        ListShape::Cursor => {
            let next = if has_more {
                format!(r#""c_{end:x}""#)
            } else {
                "null".into()
            };
            format!(r#"{{"data":{array},"next_cursor":{next},"has_more":{has_more}}}"#)
        }
    };
    let f = &state.faults;
    if nth_fault(&f.lists, state.config.hang_every_lists, &f.hung) {
        return hanging_response(body);
    }
    json_response(StatusCode::OK, body)
}

/// Count one more of something (`seen`) and say whether it is an Nth one, a fault to inject
/// (`every` N; `None`: never), counting the injection in `injected`.
fn nth_fault(seen: &AtomicU64, every: Option<u64>, injected: &AtomicU64) -> bool {
    let nth = seen.fetch_add(1, Ordering::Relaxed) + 1;
    let hit = every.is_some_and(|n| nth.is_multiple_of(n));
    if hit {
        injected.fetch_add(1, Ordering::Relaxed);
    }
    hit
}

/// A 200 whose body stops halfway and never ends: a server that hangs mid-response.
fn hanging_response(body: String) -> Response {
    let mut half = body.into_bytes();
    half.truncate(half.len() / 2);
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(half))]);
    let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    let mut resp = Response::new(axum::body::Body::from_stream(stream));
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn get_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = precheck(&state, &headers, &query).await {
        return resp;
    }
    for sb in state.every_sandbox() {
        let d = sb.data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = d.events.iter().find(|e| e.id == id) {
            let body = match state.requests.load(Ordering::Relaxed) % 3 {
                0 => e.json.to_string(),
                1 => format!(r#"{{"data":{}}}"#, e.json),
                _ => format!(r#"{{"event":{}}}"#, e.json),
            };
            return json_response(StatusCode::OK, body);
        }
    }
    json_response(
        StatusCode::NOT_FOUND,
        r#"{"error":{"code":"not_found","message":"no such event"}}"#.into(),
    )
}

async fn sandboxes_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = precheck(&state, &headers, &query).await {
        return resp;
    }
    let items: Vec<serde_json::Value> = state
        .live_sandboxes()
        .iter()
        .map(|sb| serde_json::json!({"id": sb.id, "status": "running", "template_type": "miosa-sandbox"}))
        .collect();
    json_response(StatusCode::OK, serde_json::json!({ "data": items }).to_string())
}

async fn socket_handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(rid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if !authorized(&state, &headers, &query) {
        return (StatusCode::UNAUTHORIZED, "invalid token").into_response();
    }
    let Some(sb) = state.sandbox(&rid) else {
        return (StatusCode::NOT_FOUND, "no such sandbox").into_response();
    };
    if state.config.no_socket.contains(&rid) {
        return (StatusCode::NOT_FOUND, "socket endpoint not available").into_response();
    }
    let f = &state.faults;
    if nth_fault(&f.handshakes, state.config.refuse_every_handshakes, &f.refused) {
        return (StatusCode::SERVICE_UNAVAILABLE, "socket handshake refused").into_response();
    }
    // Subscribe before answering the upgrade: every event stored after the client sees the 101
    // reaches this socket, so a client that lists after connecting misses nothing.
    let delay = Duration::from_millis(state.config.subscribe_delay_ms);
    let early = delay.is_zero().then(|| sb.tx.subscribe());
    let upgrade = if state.config.wrong_subprotocol.contains(&rid) {
        upgrade
    } else {
        upgrade.protocols([SUBPROTOCOL])
    };
    let upgrade = upgrade.max_message_size(1 << 20);
    upgrade.on_upgrade(move |socket| async move {
        let rx = match early {
            Some(rx) => rx,
            None => {
                tokio::time::sleep(delay).await;
                sb.tx.subscribe()
            }
        };
        state.open_sockets.fetch_add(1, Ordering::Relaxed);
        push_events(state.clone(), sb, socket, rx).await;
        state.open_sockets.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Most frames written before one flush.
const FRAMES_PER_FLUSH: usize = 256;

/// Push events to one socket until it closes: in fast mode the sandbox's prepared events, as
/// fast as the client reads; otherwise what the sandbox's broadcast carries. Frames go out in
/// batches (one flush per batch): per-frame flushes would make the simulator the bottleneck.
async fn push_events(
    state: Arc<SimState>,
    sb: Arc<SimSandbox>,
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<Arc<SimEvent>>,
) {
    let mut frames: u64 = 0;
    loop {
        let batch = if state.config.burst {
            let batch = sb.take_unsent(FRAMES_PER_FLUSH);
            if batch.is_empty() {
                // Everything is sent: answer pings until the client leaves.
                match socket.recv().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                }
            }
            batch
        } else {
            let first = tokio::select! {
                e = rx.recv() => e,
                incoming = socket.recv() => match incoming {
                    // Reading lets axum answer pings; a close or error ends the socket.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                },
            };
            let mut batch = Vec::new();
            let mut next = first;
            loop {
                match next {
                    Ok(e) => batch.push(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // A real server drops a consumer that cannot keep up.
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                if batch.len() >= FRAMES_PER_FLUSH {
                    break;
                }
                next = match rx.try_recv() {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(_empty_or_closed) => break,
                };
            }
            batch
        };
        for event in batch {
            match feed_event(&state, &mut socket, &event, frames).await {
                Ok(()) => frames += 1,
                Err(()) => return,
            }
            if state
                .config
                .drop_every_frames
                .is_some_and(|n| frames.is_multiple_of(n))
            {
                // Drop without a close frame: the client sees a broken connection.
                state.faults.drops.fetch_add(1, Ordering::Relaxed);
                let _ = socket.flush().await;
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

/// Queue one event's frame on `socket` (and the garbage or oversized frame the knobs put
/// before it). `Err` when the socket is gone.
async fn feed_event(
    state: &SimState,
    socket: &mut WebSocket,
    event: &SimEvent,
    frames: u64,
) -> Result<(), ()> {
    if state.config.garbage_ratio > 0.0 && rand::random::<f64>() < state.config.garbage_ratio {
        state.frames_garbage.fetch_add(1, Ordering::Relaxed);
        let garbage = if frames.is_multiple_of(2) {
            "this is not json{"
        } else {
            r#"{"no_id":true}"#
        };
        socket.feed(Message::Text(garbage.into())).await.map_err(drop)?;
    }
    let f = &state.faults;
    if nth_fault(&f.frames, state.config.oversize_every_frames, &f.oversized) {
        state.frames_garbage.fetch_add(1, Ordering::Relaxed);
        let huge = format!(r#"{{"id":"evt_huge","pad":"{}"}}"#, "x".repeat(1_100_000));
        socket.feed(Message::Text(huge.into())).await.map_err(drop)?;
    }
    let message = if state.config.mixed_frames {
        match frames % 4 {
            0 => Message::Text(event.json.clone()),
            1 => Message::Text(format!(r#"{{"event":{}}}"#, &*event.json).into()),
            2 => Message::Text(format!(r#"{{"data":{}}}"#, &*event.json).into()),
            _ => Message::Binary(event.json.clone().into()),
        }
    } else {
        Message::Text(event.json.clone())
    };
    socket.feed(message).await.map_err(drop)
}

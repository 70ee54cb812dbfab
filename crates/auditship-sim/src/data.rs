//! The simulated fleet: each sandbox's events, their shapes and times, and the faults injected.

use super::*;

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
pub(crate) struct SandboxData {
    pub(crate) events: Vec<Arc<SimEvent>>,
    /// Fast mode: rendered events not handed to a socket yet.
    pub(crate) unsent: std::collections::VecDeque<Arc<SimEvent>>,
    pub(crate) generated: u64,
    pub(crate) last_time: i64,
    pub(crate) in_group: usize,
}

pub(crate) struct SimSandbox {
    pub(crate) id: String,
    pub(crate) salt: u64,
    pub(crate) data: Mutex<SandboxData>,
    pub(crate) tx: broadcast::Sender<Arc<SimEvent>>,
}

pub(crate) struct SimState {
    pub(crate) config: SimConfig,
    /// The fleet: sandboxes can be added and removed while the simulator runs.
    pub(crate) fleet: std::sync::RwLock<Fleet>,
    pub(crate) requests: AtomicU64,
    pub(crate) frames_garbage: AtomicU64,
    pub(crate) open_sockets: AtomicU64,
    pub(crate) live_done: AtomicBool,
    pub(crate) faults: FaultCounters,
}

#[derive(Default)]
pub(crate) struct FaultCounters {
    pub(crate) rate_limited: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) hung: AtomicU64,
    pub(crate) slowed: AtomicU64,
    pub(crate) drops: AtomicU64,
    pub(crate) oversized: AtomicU64,
    /// Frames sent on all sockets, for `oversize_every_frames`.
    pub(crate) frames: AtomicU64,
    /// Socket handshakes, for `refuse_every_handshakes`.
    pub(crate) handshakes: AtomicU64,
    /// List responses, for `hang_every_lists`.
    pub(crate) lists: AtomicU64,
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

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Every action the SDKs document, and `denied`, which fixtures show.
pub(crate) const ACTIONS: [&str; 7] = [
    "allow",
    "allow",
    "reject",
    "stub",
    "error",
    "client_cancel",
    "denied",
];
pub(crate) const HOSTS: [&str; 4] = ["api.openai.com", "pypi.org", "github.com", "evil.example"];

impl SimSandbox {
    /// Append one event at `time_hint` (or now), under the lock so the store and the broadcast
    /// agree on order.
    pub(crate) fn append(&self, config: &SimConfig, time_hint: Option<i64>) -> Arc<SimEvent> {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let event = self.render(&mut d, config, time_hint);
        d.events.push(event.clone());
        // No receivers is fine: nobody is tailing.
        let _ = self.tx.send(event.clone());
        event
    }

    /// Fast mode: render an event that waits for a socket to take it.
    pub(crate) fn prepare(&self, config: &SimConfig) {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let event = self.render(&mut d, config, None);
        d.unsent.push_back(event);
    }

    /// Fast mode: hand up to `max` prepared events to a socket; they are listable from now on.
    pub(crate) fn take_unsent(&self, max: usize) -> Vec<Arc<SimEvent>> {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let n = d.unsent.len().min(max);
        let taken: Vec<Arc<SimEvent>> = d.unsent.drain(..n).collect();
        d.events.extend(taken.iter().cloned());
        taken
    }

    /// The next event of this sandbox (its id, time and JSON), counted but not stored.
    pub(crate) fn render(
        &self,
        d: &mut SandboxData,
        config: &SimConfig,
        time_hint: Option<i64>,
    ) -> Arc<SimEvent> {
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

pub(crate) fn spell_time(format: TimeFormat, us: i64) -> String {
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
pub(crate) struct Fleet {
    pub(crate) by_id: HashMap<String, Arc<SimSandbox>>,
    pub(crate) order: Vec<String>,
    pub(crate) removed: std::collections::HashSet<String>,
}

impl Fleet {
    pub(crate) fn add(&mut self, id: &str, config: &SimConfig) -> Arc<SimSandbox> {
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
    pub(crate) fn fleet(&self) -> std::sync::RwLockReadGuard<'_, Fleet> {
        self.fleet.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A sandbox that exists now.
    pub(crate) fn sandbox(&self, id: &str) -> Option<Arc<SimSandbox>> {
        let f = self.fleet();
        f.by_id.get(id).filter(|_| !f.removed.contains(id)).cloned()
    }

    /// The sandboxes that exist now, in creation order.
    pub(crate) fn live_sandboxes(&self) -> Vec<Arc<SimSandbox>> {
        let f = self.fleet();
        f.order
            .iter()
            .filter(|id| !f.removed.contains(*id))
            .filter_map(|id| f.by_id.get(id).cloned())
            .collect()
    }

    /// Every sandbox ever, removed ones too.
    pub(crate) fn every_sandbox(&self) -> Vec<Arc<SimSandbox>> {
        let f = self.fleet();
        f.order.iter().filter_map(|id| f.by_id.get(id).cloned()).collect()
    }
}

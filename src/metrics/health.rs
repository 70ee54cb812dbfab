//! `/health`: whether the process is ready (every pipeline running, every live tail connected,
//! no sink failing), with the reasons when it is not.

use std::sync::atomic::Ordering;

use super::stats::pipelines;
use super::{TAILS_CONNECTING, TAILS_POLLING, TAILS_WEBSOCKET};

/// Readiness: every pipeline running, no live tail still connecting, no sink failing. Returns
/// whether ready and a JSON explanation.
pub fn health() -> (bool, serde_json::Value) {
    let pipelines = pipelines();
    let mut ready = !pipelines.is_empty();
    let mut reasons = Vec::new();
    if pipelines.is_empty() {
        reasons.push("no pipeline has started".to_string());
    }
    let mut detail = Vec::new();
    for (name, s) in &pipelines {
        let running = s.running.load(Ordering::Relaxed);
        if !running {
            ready = false;
            reasons.push(format!("pipeline {name} is not running"));
        }
        let failing: Vec<String> = s
            .sinks_now()
            .iter()
            .filter(|k| k.failing.load(Ordering::Relaxed))
            .map(|k| k.name.clone())
            .collect();
        for f in &failing {
            ready = false;
            reasons.push(format!("pipeline {name}: sink {f} is failing"));
        }
        detail.push(serde_json::json!({"pipeline": name, "running": running, "failing_sinks": failing}));
    }
    let connecting = TAILS_CONNECTING.get();
    if connecting > 0 {
        ready = false;
        reasons.push(format!("{connecting} sandbox(es) connecting or catching up"));
    }
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "reasons": reasons,
        "pipelines": detail,
        "sockets_open": TAILS_WEBSOCKET.get(),
        "sandboxes_polling": TAILS_POLLING.get(),
        "sandboxes_connecting": connecting,
    });
    (ready, body)
}

//! Process-wide counters. Each is incremented in the one place that also logs (or reports) the
//! event it counts. Nothing serves them yet: a Prometheus endpoint is planned; until then
//! library users and tests read them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Miosa API requests retried after a retryable failure.
pub static API_RETRIES: Counter = Counter::new();
/// Socket data frames received.
pub static FRAMES_RECEIVED: Counter = Counter::new();
/// Sockets that closed or failed after the handshake.
pub static SOCKET_DROPS: Counter = Counter::new();
/// Payloads written to a dead-letter file.
pub static DEAD_LETTERED: Counter = Counter::new();
/// Events handed to sinks.
pub static EVENTS_EMITTED: Counter = Counter::new();
/// Events dropped by a filter, a sink's route or `dedupe` (they count as delivered).
pub static EVENTS_DROPPED: Counter = Counter::new();
/// Events a transform failed on (sent to the dead-letter file).
pub static TRANSFORM_FAILURES: Counter = Counter::new();

//! The org-wide poller: one list request per interval (no `resource_id`) serves every tail on
//! the polling fallback, instead of one request per sandbox.
//!
//! A tail that falls back to polling subscribes, then catches up on its own from its position
//! to the present; from then on the poller hands it every event of its sandbox. No gap: the
//! poller asks from its frontier (the newest cursor time it has seen, inclusive), so an event
//! stored after the subscription is either in the tail's own catch-up or in the poller's next
//! pages, and the tail's id set removes what both deliver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::tail::{Pager, Seen};
use super::AuditEvent;
use super::{Client, Error, Filters, RetryPolicy, StartAt};

/// A handle on an org-wide poller; cheap to clone. The poller stops when the last handle is
/// dropped.
#[derive(Clone)]
pub struct OrgPoller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OrgPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgPoller")
            .field("subscribers", &self.subscribers())
            .finish()
    }
}

struct Inner {
    subs: Mutex<HashMap<String, mpsc::Sender<AuditEvent>>>,
    wake: Notify,
}

/// Events queued per subscriber before the poller waits for it.
const SUBSCRIBER_BUFFER: usize = 4_096;

/// How far back the poller's first request reaches, in client time: a server clock behind ours
/// by less than this loses nothing (later requests page by the server's own times).
const FIRST_LOOKBACK: Duration = Duration::from_secs(300);

impl OrgPoller {
    /// Start a poller on `client` that lists every `interval` with pages of `page_limit`,
    /// remembering ids for `dedupe_window` of cursor time.
    pub fn start(client: Client, interval: Duration, page_limit: u32, dedupe_window: Duration) -> OrgPoller {
        let inner = Arc::new(Inner {
            subs: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        tokio::spawn(run(
            Arc::downgrade(&inner),
            client,
            interval,
            page_limit,
            dedupe_window,
        ));
        OrgPoller { inner }
    }

    /// Receive the events of `resource_id` from the next poll on. Subscribing again replaces
    /// the previous subscription.
    pub(crate) fn subscribe(&self, resource_id: &str) -> mpsc::Receiver<AuditEvent> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.lock().insert(resource_id.to_string(), tx);
        self.inner.wake.notify_one();
        rx
    }

    /// Stop receiving `resource_id`'s events (its socket is back).
    pub(crate) fn unsubscribe(&self, resource_id: &str) {
        self.lock().remove(resource_id);
    }

    /// How many tails it serves now.
    pub fn subscribers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<AuditEvent>>> {
        self.inner.subs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn run(
    inner: Weak<Inner>,
    client: Client,
    interval: Duration,
    page_limit: u32,
    dedupe_window: Duration,
) {
    let first =
        chrono::Utc::now().timestamp_micros() - i64::try_from(FIRST_LOOKBACK.as_micros()).unwrap_or(0);
    let mut seen = Seen::new(&StartAt::Time(first), dedupe_window);
    let base = Filters {
        resource_type: Some("sandbox".into()),
        ..Default::default()
    };
    let forever = RetryPolicy {
        max_attempts: None,
        ..client.retry_policy().clone()
    };
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let idle = strong.subs.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if idle {
            // Nothing to serve: wait for a subscriber; every few seconds, see whether the last
            // handle is gone.
            tokio::select! {
                _ = strong.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        drop(strong);
        let mut pager = Pager::new(base.clone(), page_limit);
        loop {
            match pager.next(&client, &mut seen, &forever).await {
                Ok(Some(step)) => {
                    if !step.invalid.is_empty() {
                        tracing::warn!(count = step.invalid.len(), "the org-wide list held elements that are not events; skipped (each sandbox's own catch-up dead-letters them)");
                    }
                    let Some(strong) = inner.upgrade() else { return };
                    for event in step.events {
                        let Some(rid) = event.resource_id().map(str::to_string) else {
                            continue;
                        };
                        let tx = strong
                            .subs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&rid)
                            .cloned();
                        if let Some(tx) = tx {
                            if tx.send(event).await.is_err() {
                                // The tail went away without unsubscribing.
                                strong.subs.lock().unwrap_or_else(|e| e.into_inner()).remove(&rid);
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(Error::Decode { .. }) => {
                    pager.restart();
                    tokio::time::sleep(interval).await;
                }
                Err(e) => {
                    // A refused key or the like: every subscriber is told by its channel closing
                    // and goes back to polling on its own, where it meets the error and stops.
                    tracing::error!(error = %e, "the org-wide poll failed; tails poll on their own");
                    if let Some(strong) = inner.upgrade() {
                        strong.subs.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Shared by the tails of a fleet: after several sandboxes in a row fail to open their socket,
/// only one probe a `probe_every` may try (the others keep polling); a probe that succeeds opens
/// the gate for all. A fleet whose server has no socket endpoint then costs one upgrade request
/// per probe period instead of one per sandbox per backoff step.
#[derive(Clone, Debug)]
pub struct SocketGate {
    inner: Arc<Mutex<GateState>>,
    probe_every: Duration,
}

#[derive(Debug, Default)]
struct GateState {
    failures_in_row: u32,
    closed_until: Option<tokio::time::Instant>,
}

/// Failures in a row (across the fleet) that close the gate.
const GATE_AFTER_FAILURES: u32 = 3;

impl SocketGate {
    /// A gate that lets one probe through every `probe_every` while closed.
    pub fn new(probe_every: Duration) -> SocketGate {
        SocketGate {
            inner: Arc::new(Mutex::new(GateState::default())),
            probe_every,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this tail may try its socket now; `Err(wait)`: not before `wait` from now.
    pub(crate) fn may_try(&self) -> Result<(), Duration> {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        match s.closed_until {
            None => Ok(()),
            Some(t) if now >= t => {
                // This tail is the probe; the next one waits a full period.
                s.closed_until = Some(now + self.probe_every);
                Ok(())
            }
            Some(t) => Err(t - now),
        }
    }

    /// A socket attempt failed.
    pub(crate) fn failed(&self) {
        let mut s = self.lock();
        s.failures_in_row = s.failures_in_row.saturating_add(1);
        if s.failures_in_row >= GATE_AFTER_FAILURES && s.closed_until.is_none() {
            s.closed_until = Some(tokio::time::Instant::now() + self.probe_every);
        }
    }

    /// A socket opened: every tail may try again.
    pub(crate) fn succeeded(&self) {
        let mut s = self.lock();
        s.failures_in_row = 0;
        s.closed_until = None;
    }
}

//! How failed requests are retried: the policy, and the jittered exponential backoff every retry
//! loop of the client uses.

use std::time::Duration;

/// How the client retries a retryable failure (429, 5xx, a broken connection).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all; `None` retries forever (the shipper's source does).
    pub max_attempts: Option<u32>,
    /// The first backoff.
    pub initial: Duration,
    /// The longest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// Six attempts, the backoff from 250 ms doubling (capped at 30 s): five waits of 4–8 s in
    /// all before giving up.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: Some(6),
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// Jittered exponential backoff: each delay is a random point in the upper half of the current
/// step, so many sandboxes retrying together spread out instead of stampeding.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            step: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.step.min(20))
            .min(self.max);
        self.step = self.step.saturating_add(1);
        let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
        base.mul_f64(jitter)
    }

    /// Start again from the initial delay.
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

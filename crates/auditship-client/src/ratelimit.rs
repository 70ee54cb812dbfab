use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::secret::ApiKey;

/// A token bucket for one API key's per-minute request budget.
///
/// Every client that uses the same key in this process shares one bucket
/// ([`RateLimiter::shared`]), so a thousand sandboxes polling at once stay within the budget
/// together instead of each spending all of it. The bucket holds ten seconds' worth of requests,
/// so a start-up burst is allowed but cannot spend the whole minute at once.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A new, unshared bucket of `requests_per_minute`.
    pub fn new(requests_per_minute: u32) -> Self {
        let rpm = f64::from(requests_per_minute.max(1));
        let capacity = (rpm / 6.0).max(1.0);
        RateLimiter {
            per_second: rpm / 60.0,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// The bucket for `key`, shared process-wide. The first caller's budget wins.
    pub fn shared(key: &ApiKey, requests_per_minute: u32) -> Arc<RateLimiter> {
        static REGISTRY: OnceLock<Mutex<HashMap<u64, Weak<RateLimiter>>>> = OnceLock::new();
        // A hash, not the key, is the map's key: the registry must not hold secrets.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.expose().hash(&mut h);
        let fingerprint = h.finish();
        let registry = REGISTRY.get_or_init(Default::default);
        let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(&fingerprint).and_then(Weak::upgrade) {
            return existing;
        }
        let limiter = Arc::new(RateLimiter::new(requests_per_minute));
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(fingerprint, Arc::downgrade(&limiter));
        limiter
    }

    /// Wait for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let (tokens, last) = *state;
                let tokens =
                    (tokens + now.duration_since(last).as_secs_f64() * self.per_second).min(self.capacity);
                if tokens >= 1.0 {
                    *state = (tokens - 1.0, now);
                    return;
                }
                *state = (tokens, now);
                Duration::from_secs_f64((1.0 - tokens) / self.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_paces() {
        let limiter = RateLimiter::new(60);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(10));
        limiter.acquire().await;
        limiter.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn same_key_shares_a_bucket() {
        let a = RateLimiter::shared(&ApiKey::new("msk_same"), 60);
        let b = RateLimiter::shared(&ApiKey::new("msk_same"), 999);
        let c = RateLimiter::shared(&ApiKey::new("msk_other"), 60);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}

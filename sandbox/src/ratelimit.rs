//! The `/directory_users` limit: N requests per rolling second per directory (workos-api.md §6).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Seconds sent in `Retry-After` on a 429 from the limiter.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A rolling-window limiter keyed by directory id. `limit: None` disables it.
#[derive(Debug)]
pub struct RateLimiter {
    limit: Option<u32>,
    window: Duration,
    hits: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    pub fn new(limit: Option<u32>, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            hits: HashMap::new(),
        }
    }

    /// Requests per window, or `None` when disabled.
    pub fn limit(&self) -> Option<u32> {
        self.limit
    }

    /// Change (or disable) the limit; the history is kept.
    pub fn set_limit(&mut self, limit: Option<u32>) {
        self.limit = limit;
    }

    /// Forget every key's history.
    pub fn reset(&mut self) {
        self.hits.clear();
    }

    /// Count a request for `key` at `now`. `true` if allowed; a refused request is not counted.
    pub fn check(&mut self, key: &str, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let window = self.window;
        let q = self.hits.entry(key.to_owned()).or_default();
        while q.front().is_some_and(|t| now.saturating_duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return false;
        }
        q.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_per_rolling_second_per_key() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rl = RateLimiter::new(Some(4), Duration::from_secs(1));
        for i in 0..4 {
            assert!(rl.check("dir_a", t0 + ms(i * 100)), "request {i}");
        }
        assert!(!rl.check("dir_a", t0 + ms(500)), "fifth in the window");
        assert!(rl.check("dir_b", t0 + ms(500)), "another key is unaffected");
        assert!(!rl.check("dir_a", t0 + ms(999)));
        // The first hit (t0) leaves the window at t0+1s; one slot frees.
        assert!(rl.check("dir_a", t0 + ms(1000)));
        assert!(!rl.check("dir_a", t0 + ms(1050)));
        // The second hit (t0+100ms) leaves at t0+1.1s.
        assert!(rl.check("dir_a", t0 + ms(1100)));
    }

    #[test]
    fn disabled_limiter_allows_everything() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(None, Duration::from_secs(1));
        assert!((0..100).all(|_| rl.check("d", t0)));
        rl.set_limit(Some(1));
        assert!(rl.check("d", t0));
        assert!(!rl.check("d", t0));
    }
}

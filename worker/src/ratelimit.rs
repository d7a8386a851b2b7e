//! A token-bucket rate limit (entries or terms per second). Zero disables it.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    /// Available tokens; negative means debt to wait off.
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            last: Instant::now(),
        }
    }

    /// How long to wait before spending `n` tokens (then spends them).
    pub fn reserve(&mut self, n: usize) -> Duration {
        if self.per_second <= 0.0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits_and_limited_accrues_debt() {
        let mut unlimited = RateLimit::new(0);
        assert_eq!(unlimited.reserve(1_000_000), Duration::ZERO);
        let mut limited = RateLimit::new(100);
        assert_eq!(limited.reserve(100), Duration::ZERO);
        let wait = limited.reserve(50);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}

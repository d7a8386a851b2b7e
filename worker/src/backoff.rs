//! Jittered exponential backoff ("full jitter"): spreads retries of many
//! workers so they do not hit a recovering PostgreSQL at the same instant.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A uniformly random fraction in [0, 1), from the std library's per-process
/// random keys (no extra dependency for something this small).
pub fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The exponential ceiling for `attempt` (1-based): base * 2^(attempt-1), capped.
pub fn ceiling(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    base.saturating_mul(factor).min(max)
}

/// A delay drawn uniformly between half the ceiling and the ceiling, so that
/// retries keep growing while never lining up.
pub fn jittered(base: Duration, attempt: u32, max: Duration) -> Duration {
    let ceiling = ceiling(base, attempt, max);
    ceiling.mul_f64(0.5 + 0.5 * random_fraction())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_bounds() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        assert_eq!(ceiling(base, 1, max), base);
        assert_eq!(ceiling(base, 4, max), Duration::from_millis(800));
        assert_eq!(ceiling(base, 40, max), max);
        let mut distinct = std::collections::HashSet::new();
        for attempt in 1..=8 {
            for _ in 0..20 {
                let d = jittered(base, attempt, max);
                let c = ceiling(base, attempt, max);
                assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
                distinct.insert(d);
            }
        }
        assert!(
            distinct.len() > 100,
            "jitter should vary: {}",
            distinct.len()
        );
    }
}

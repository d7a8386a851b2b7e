//! The one backoff of every retry loop (ADR 0020): jittered exponential
//! delays ("full jitter" between half the ceiling and the ceiling), so that
//! many workers retrying a recovering PostgreSQL or Redis never line up.
//!
//! A loop keeps a [`Backoff`] made from one of the named policies below,
//! asks it for [`Backoff::next_delay`] after each failure and calls
//! [`Backoff::reset`] after a success. The timings of every loop are here and
//! nowhere else; [`crate::failure::retry`] uses the same type.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How a loop's delays grow: the ceiling of the first delay, doubling per
/// failure up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
}

/// Longest pause between retries while PostgreSQL or Redis is unavailable.
pub const MAX_OUTAGE_DELAY: Duration = Duration::from_secs(30);

/// PostgreSQL outages of a consumer loop's batch and control entries.
pub const BATCH_OUTAGE: BackoffPolicy = BackoffPolicy::new(ms(100), MAX_OUTAGE_DELAY);
/// PostgreSQL outages of an analytics loop, and a batch it could not run.
pub const ANALYTICS_OUTAGE: BackoffPolicy = BackoffPolicy::new(ms(200), MAX_OUTAGE_DELAY);
/// Redis unreachable or a consumer group lost: creating groups and reading.
pub const REDIS_OUTAGE: BackoffPolicy = BackoffPolicy::new(ms(200), MAX_OUTAGE_DELAY);
/// Acknowledging committed entries (a redelivery would change nothing, so
/// the ceiling stays short: the loop moves on as soon as Redis answers).
pub const REDIS_ACK: BackoffPolicy = BackoffPolicy::new(ms(100), Duration::from_secs(5));
/// Failures of the fold loop (outages and conflicts alike).
pub const FOLD: BackoffPolicy = BackoffPolicy::new(ms(50), MAX_OUTAGE_DELAY);
/// Failures of the fold loop while draining: short, since it gives up after
/// a few (the deltas are durable and folded by another process).
pub const FOLD_DRAIN: BackoffPolicy = BackoffPolicy::new(ms(50), Duration::from_secs(1));
/// Reruns of a conflicting batch transaction (deadlock or serialization).
pub const BATCH_CONFLICT: BackoffPolicy = BackoffPolicy::new(ms(5), Duration::from_secs(1));
/// Reruns of a conflicting analytics transaction.
pub const ANALYTICS_CONFLICT: BackoffPolicy = BackoffPolicy::new(ms(5), ms(500));
/// Reruns of a conflicting reorg or control-entry transaction.
pub const REORG_CONFLICT: BackoffPolicy = BackoffPolicy::new(ms(20), Duration::from_secs(2));
/// Reruns of a conflicting `rollback` (it competes with running writers).
pub const ROLLBACK_CONFLICT: BackoffPolicy = BackoffPolicy::new(ms(50), Duration::from_secs(2));

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

impl BackoffPolicy {
    pub const fn new(base: Duration, max: Duration) -> Self {
        BackoffPolicy { base, max }
    }

    /// No waiting at all (a policy that is never used to wait).
    pub const NONE: BackoffPolicy = BackoffPolicy::new(Duration::ZERO, Duration::ZERO);

    /// The ceiling of the delay after failure `attempt` (1-based):
    /// base * 2^(attempt-1), capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay after failure `attempt`, drawn uniformly between half the
    /// ceiling and the ceiling, so that retries keep growing while never
    /// lining up. For schedules whose count is kept elsewhere (an analytics
    /// term's attempts live in its queue row); a loop uses [`Backoff`].
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(0.5 + 0.5 * random_fraction())
    }
}

/// A retry loop's backoff: the failures since its last success.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// Counts one more failure and returns the pause before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures)
    }

    /// A success: the next failure waits the base delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success (or the start).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Continues under `policy` from the same failure count (a fold loop
    /// that began draining).
    pub fn set_policy(&mut self, policy: BackoffPolicy) {
        self.policy = policy;
    }
}

/// A uniformly random fraction in [0, 1), from the std library's per-process
/// random keys (no extra dependency for something this small).
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_bounds() {
        let policy = BackoffPolicy::new(ms(100), Duration::from_secs(10));
        assert_eq!(policy.ceiling(1), ms(100));
        assert_eq!(policy.ceiling(4), ms(800));
        assert_eq!(policy.ceiling(40), Duration::from_secs(10));
        let mut distinct = std::collections::HashSet::new();
        for attempt in 1..=8 {
            for _ in 0..20 {
                let d = policy.delay(attempt);
                let c = policy.ceiling(attempt);
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

    #[test]
    fn next_delay_counts_failures_and_reset_starts_over() {
        let policy = BackoffPolicy::new(ms(100), Duration::from_secs(1));
        let mut backoff = Backoff::new(policy);
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(backoff.failures(), 6);
        for (i, d) in delays.iter().enumerate() {
            let c = policy.ceiling(i as u32 + 1);
            assert!(*d >= c / 2 && *d <= c, "delay {i}: {d:?}, ceiling {c:?}");
        }
        assert!(
            delays[5] >= ms(500),
            "capped at max, drawn from its upper half"
        );
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        let first = backoff.next_delay();
        assert!(first >= ms(50) && first <= ms(100), "{first:?}");
    }

    #[test]
    fn a_new_policy_continues_from_the_same_failure_count() {
        let mut backoff = Backoff::new(FOLD);
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.set_policy(FOLD_DRAIN);
        let d = backoff.next_delay();
        assert_eq!(backoff.failures(), 11);
        assert!(d >= ms(500) && d <= Duration::from_secs(1), "{d:?}");
    }
}

//! Shared health state, updated by the consumer loops, the analytics loops and
//! the monitor task, read by `/readyz` and `/health`. Tasks report through
//! the methods below; the state itself is private.
//!
//! Each task reports into its own [`Source`] slot and only its own success
//! clears it, so one task's success never hides another's failure (a commit
//! does not clear the monitor's Redis error, an analytics error does not
//! outlive the analytics loop's next good batch).

use crate::intake::StreamBacklog;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The service a health source depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Postgres,
    Redis,
}

/// One task's health slot: a service and the task using it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub service: Service,
    pub task: String,
}

impl Source {
    /// The monitor's reachability probe of PostgreSQL (schema version query).
    pub fn postgres_probe() -> Source {
        Source::new(Service::Postgres, "probe")
    }
    /// The monitor's reachability probe of Redis (stream backlog).
    pub fn redis_probe() -> Source {
        Source::new(Service::Redis, "probe")
    }
    /// The monitor's analytics queue statistics (informational only).
    pub fn queue_stats() -> Source {
        Source::new(Service::Postgres, "analytics queue stats")
    }
    /// A consumer loop's batch writes.
    pub fn batch(consumer: &str) -> Source {
        Source::new(Service::Postgres, format!("batch {consumer}"))
    }
    /// A consumer loop's reads and acknowledgements.
    pub fn stream(consumer: &str) -> Source {
        Source::new(Service::Redis, format!("stream {consumer}"))
    }
    /// The fold loop (ADR 0015).
    pub fn fold() -> Source {
        Source::new(Service::Postgres, "fold")
    }
    /// Analytics loop number `index`.
    pub fn analytics(index: usize) -> Source {
        Source::new(Service::Postgres, format!("analytics {index}"))
    }

    fn new(service: Service, task: impl Into<String>) -> Source {
        Source {
            service,
            task: task.into(),
        }
    }

    fn is_analytics(&self) -> bool {
        self.task.starts_with("analytics ") && self.service == Service::Postgres
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = match self.service {
            Service::Postgres => "postgres",
            Service::Redis => "redis",
        };
        write!(f, "{service} {}", self.task)
    }
}

/// The current problem of a source.
#[derive(Debug, Clone)]
struct Problem {
    message: String,
    /// An outage makes the process unready; a warning is only shown.
    outage: bool,
    /// Order of reports, to show the latest one as `last_error`.
    seq: u64,
}

#[derive(Debug, Default)]
pub struct Health {
    /// Whether this process consumes streams (false for `analytics`).
    consumes_streams: bool,
    schema_ok: AtomicBool,
    draining: AtomicBool,
    last_commit_unix_ms: AtomicU64,
    backlog: Mutex<Vec<StreamBacklog>>,
    analytics: Mutex<AnalyticsHealth>,
    fold: Mutex<FoldHealth>,
    reorgs: Mutex<ReorgHealth>,
    problems: Mutex<BTreeMap<Source, Problem>>,
    seq: AtomicU64,
}

/// The guarded value even if a panicking task poisoned the lock: health
/// figures are plain snapshots, never left half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct AnalyticsHealth {
    pub enabled: bool,
    pub queue_depth: i64,
    pub parked: i64,
    pub oldest_pending_seconds: f64,
    /// The latest problem of an analytics loop, while it lasts.
    pub last_error: Option<String>,
}

/// How far the base tables are behind the committed events (ADR 0015).
#[derive(Debug, Default, Clone, Serialize)]
pub struct FoldHealth {
    /// Deltas committed but not yet folded (all processes).
    pub pending_deltas: i64,
    /// Age of the oldest of them, in seconds.
    pub lag_seconds: f64,
    /// Deltas parked because they cannot be folded (ADR 0019).
    pub parked_deltas: i64,
    /// Deltas of a newer format, left for a newer binary.
    pub newer_format_deltas: i64,
}

/// `/health`'s view of the applied reorgs (all workers, from `chain_reorg`;
/// read by [`crate::reorg::stats`]).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReorgHealth {
    pub applied: i64,
    pub latest: Option<LatestReorg>,
}

/// The most recently applied reorg.
#[derive(Debug, Clone, Serialize)]
pub struct LatestReorg {
    pub network: String,
    pub fork_block: i64,
    pub depth: i64,
    pub applied_unix: f64,
    pub events_removed: i64,
    pub streams_passed: i32,
}

/// The `/health` document.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub ready: bool,
    pub postgres_sync_healthy: bool,
    pub redis_consumer_healthy: bool,
    pub schema_version_ok: bool,
    pub draining: bool,
    pub last_commit_unix_ms: Option<u64>,
    pub streams: Vec<StreamBacklog>,
    pub analytics: AnalyticsHealth,
    pub fold: FoldHealth,
    /// Chain reorganisations applied from rindexer's notices (ADR 0018).
    pub reorgs: ReorgHealth,
    /// The latest current problem, if any.
    pub last_error: Option<String>,
    /// Every current problem, by source ("postgres batch pod-0", …).
    pub errors: BTreeMap<String, String>,
}

impl Health {
    pub fn new(consumes_streams: bool, analytics_enabled: bool) -> Self {
        let health = Health {
            consumes_streams,
            ..Default::default()
        };
        lock(&health.analytics).enabled = analytics_enabled;
        // Unready until the first probe answers.
        health.outage(&Source::postgres_probe(), "not checked yet".into());
        if consumes_streams {
            health.outage(&Source::redis_probe(), "not checked yet".into());
        }
        health
    }

    fn problems(&self) -> MutexGuard<'_, BTreeMap<Source, Problem>> {
        lock(&self.problems)
    }

    fn put(&self, source: &Source, message: String, outage: bool) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.problems().insert(
            source.clone(),
            Problem {
                message,
                outage,
                seq,
            },
        );
    }

    /// `source` cannot do its work: unready until `source` succeeds again.
    pub fn outage(&self, source: &Source, message: String) {
        self.put(source, message, true);
    }

    /// `source` works but reports a problem (shown, readiness unchanged).
    pub fn warn(&self, source: &Source, message: String) {
        self.put(source, message, false);
    }

    /// `source` succeeded: its problem is over.
    pub fn clear(&self, source: &Source) {
        self.problems().remove(source);
    }

    /// A probe succeeded (same as [`Health::clear`]).
    pub fn probe_ok(&self, source: &Source) {
        self.clear(source);
    }

    /// The monitor read the schema version: whether this binary can work on it.
    pub fn set_schema_usable(&self, usable: bool) {
        self.schema_ok.store(usable, Ordering::Relaxed);
    }

    /// The process began draining: unready from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// A consumer loop committed a batch at `unix_ms`.
    pub fn record_commit(&self, unix_ms: u64) {
        self.last_commit_unix_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// The monitor's latest reading of the streams' backlog.
    pub fn set_stream_backlog(&self, backlog: Vec<StreamBacklog>) {
        *lock(&self.backlog) = backlog;
    }

    /// The monitor's latest reading of the analytics queue.
    pub fn set_analytics_queue(&self, depth: i64, parked: i64, oldest_pending_seconds: f64) {
        let mut analytics = lock(&self.analytics);
        analytics.queue_depth = depth;
        analytics.parked = parked;
        analytics.oldest_pending_seconds = oldest_pending_seconds;
    }

    /// The monitor's latest reading of the fold backlog.
    pub fn set_fold(&self, fold: FoldHealth) {
        *lock(&self.fold) = fold;
    }

    /// The monitor's latest reading of the applied reorgs.
    pub fn set_reorgs(&self, reorgs: ReorgHealth) {
        *lock(&self.reorgs) = reorgs;
    }

    fn service_ok(&self, service: Service) -> bool {
        !self
            .problems()
            .iter()
            .any(|(s, p)| p.outage && s.service == service)
    }

    /// Ready: no task has a PostgreSQL (or, when consuming, Redis) outage,
    /// schema current, not draining.
    pub fn ready(&self) -> bool {
        self.service_ok(Service::Postgres)
            && self.schema_ok.load(Ordering::Relaxed)
            && (!self.consumes_streams || self.service_ok(Service::Redis))
            && !self.draining.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> HealthReport {
        let postgres = self.service_ok(Service::Postgres) && self.schema_ok.load(Ordering::Relaxed);
        let redis = !self.consumes_streams || self.service_ok(Service::Redis);
        let ready = self.ready();
        let last_commit = self.last_commit_unix_ms.load(Ordering::Relaxed);
        let problems = self.problems().clone();
        let latest = |filter: &dyn Fn(&Source) -> bool| {
            problems
                .iter()
                .filter(|(s, _)| filter(s))
                .max_by_key(|(_, p)| p.seq)
                .map(|(s, p)| format!("{s}: {}", p.message))
        };
        let mut analytics = lock(&self.analytics).clone();
        analytics.last_error = latest(&|s: &Source| s.is_analytics());
        HealthReport {
            status: if postgres && redis { "ok" } else { "degraded" },
            ready,
            postgres_sync_healthy: postgres,
            redis_consumer_healthy: redis,
            schema_version_ok: self.schema_ok.load(Ordering::Relaxed),
            draining: self.draining.load(Ordering::Relaxed),
            last_commit_unix_ms: (last_commit > 0).then_some(last_commit),
            streams: lock(&self.backlog).clone(),
            analytics,
            fold: lock(&self.fold).clone(),
            reorgs: lock(&self.reorgs).clone(),
            last_error: latest(&|_: &Source| true),
            errors: problems
                .iter()
                .map(|(s, p)| (s.to_string(), p.message.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(consumes: bool) -> Health {
        let health = Health::new(consumes, true);
        assert!(!health.ready(), "unready before the first probe");
        health.probe_ok(&Source::postgres_probe());
        health.probe_ok(&Source::redis_probe());
        health.set_schema_usable(true);
        assert!(health.ready());
        health
    }

    #[test]
    fn a_commit_does_not_clear_the_monitors_redis_error() {
        let health = healthy(true);
        health.outage(&Source::redis_probe(), "connection refused".into());
        // A consumer loop commits and acknowledges a batch.
        health.clear(&Source::batch("pod-0"));
        health.clear(&Source::stream("pod-0"));
        let report = health.report();
        assert!(!report.ready && !report.redis_consumer_healthy);
        assert_eq!(
            report.last_error.as_deref(),
            Some("redis probe: connection refused")
        );
        health.probe_ok(&Source::redis_probe());
        let report = health.report();
        assert!(report.ready);
        assert_eq!(report.last_error, None);
        assert!(report.errors.is_empty());
    }

    #[test]
    fn analytics_error_is_cleared_by_its_own_next_success() {
        let health = healthy(false);
        health.warn(&Source::analytics(0), "2 term(s) failed".into());
        health.warn(&Source::analytics(1), "1 term(s) failed".into());
        let report = health.report();
        assert!(
            report.ready,
            "term failures do not make the process unready"
        );
        assert_eq!(
            report.analytics.last_error.as_deref(),
            Some("postgres analytics 1: 1 term(s) failed")
        );
        // Another source's success leaves it; its own success clears it.
        health.clear(&Source::batch("pod-0"));
        health.clear(&Source::analytics(1));
        assert_eq!(
            health.report().analytics.last_error.as_deref(),
            Some("postgres analytics 0: 2 term(s) failed")
        );
        health.clear(&Source::analytics(0));
        assert_eq!(health.report().analytics.last_error, None);
    }

    #[test]
    fn an_outage_of_one_loop_keeps_the_process_unready_until_that_loop_recovers() {
        let health = healthy(true);
        health.outage(&Source::batch("pod-0-1"), "SQLSTATE 42501".into());
        // The monitor's probe and another loop succeed meanwhile.
        health.probe_ok(&Source::postgres_probe());
        health.clear(&Source::batch("pod-0-0"));
        let report = health.report();
        assert!(!report.ready && !report.postgres_sync_healthy);
        assert_eq!(
            report
                .errors
                .get("postgres batch pod-0-1")
                .map(String::as_str),
            Some("SQLSTATE 42501")
        );
        health.clear(&Source::batch("pod-0-1"));
        assert!(health.ready());
    }
}

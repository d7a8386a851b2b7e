//! Shared health state, updated by the pipeline and the monitor task, read by
//! `/readyz` and `/health`.

use crate::intake::StreamBacklog;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Health {
    /// Whether this process consumes streams (false for `analytics`).
    pub consumes_streams: bool,
    pub postgres_ok: AtomicBool,
    pub redis_ok: AtomicBool,
    pub schema_ok: AtomicBool,
    pub draining: AtomicBool,
    /// Consumer loops whose batch is refused for its network (see `network`).
    pub network_refusals: AtomicU32,
    pub last_commit_unix_ms: AtomicU64,
    pub backlog: Mutex<Vec<StreamBacklog>>,
    pub analytics: Mutex<AnalyticsHealth>,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct AnalyticsHealth {
    pub enabled: bool,
    pub queue_depth: i64,
    pub parked: i64,
    pub oldest_pending_seconds: f64,
    pub last_error: Option<String>,
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
    /// Whether every batch in hand belongs to the database's network.
    pub network_ok: bool,
    pub last_commit_unix_ms: Option<u64>,
    pub streams: Vec<StreamBacklog>,
    pub analytics: AnalyticsHealth,
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(consumes_streams: bool, analytics_enabled: bool) -> Self {
        let health = Health {
            consumes_streams,
            ..Default::default()
        };
        health.analytics.lock().expect("fresh mutex").enabled = analytics_enabled;
        health
    }

    /// Ready: PostgreSQL (and Redis, when consuming) reachable, schema current,
    /// no batch refused for its network, not draining.
    pub fn ready(&self) -> bool {
        self.network_refusals.load(Ordering::Relaxed) == 0
            && self.postgres_ok.load(Ordering::Relaxed)
            && self.schema_ok.load(Ordering::Relaxed)
            && (!self.consumes_streams || self.redis_ok.load(Ordering::Relaxed))
            && !self.draining.load(Ordering::Relaxed)
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    pub fn report(&self) -> HealthReport {
        let postgres =
            self.postgres_ok.load(Ordering::Relaxed) && self.schema_ok.load(Ordering::Relaxed);
        let redis = !self.consumes_streams || self.redis_ok.load(Ordering::Relaxed);
        let ready = self.ready();
        let last_commit = self.last_commit_unix_ms.load(Ordering::Relaxed);
        HealthReport {
            status: if postgres && redis { "ok" } else { "degraded" },
            ready,
            postgres_sync_healthy: postgres,
            redis_consumer_healthy: redis,
            schema_version_ok: self.schema_ok.load(Ordering::Relaxed),
            draining: self.draining.load(Ordering::Relaxed),
            network_ok: self.network_refusals.load(Ordering::Relaxed) == 0,
            last_commit_unix_ms: (last_commit > 0).then_some(last_commit),
            streams: self
                .backlog
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            analytics: self
                .analytics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

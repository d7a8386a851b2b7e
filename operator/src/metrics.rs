//! The operator's own metrics and HTTP endpoints (`/livez`, `/readyz`, `/metrics`).

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_errors: Counter,
    pub reconcile_duration: Histogram,
    /// 1 while this replica holds the leader Lease and runs the controller.
    pub leader: Gauge,
    /// Who leads, as /readyz tells it (e.g. "leader" or "standby; leader: pod-a").
    pub role: Mutex<String>,
    /// Set once the controller's PostgresWriter store has synced.
    pub ready: AtomicBool,
    /// Why the operator is not ready (shown by /readyz).
    pub not_ready_reason: Mutex<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgw_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let reconcile_errors = Counter::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed",
            reconcile_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controller, else 0",
            leader.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            role: Mutex::new("starting".to_string()),
            ready: AtomicBool::new(false),
            not_ready_reason: Mutex::new("starting".to_string()),
        }
    }

    pub fn set_not_ready(&self, reason: &str) {
        self.ready.store(false, Ordering::Relaxed);
        *self
            .not_ready_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = reason.to_string();
    }

    /// Records whether this replica leads, and who does otherwise.
    pub fn set_role(&self, leading: bool, role: &str) {
        self.leader.set(i64::from(leading));
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = role.to_string();
    }

    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.reconcile_duration.observe(took.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        if !ok {
            self.reconcile_errors.inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    let ready = metrics.clone();
    let scrape = metrics;
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let body = if ready.ready.load(Ordering::Relaxed) {
                    let role = ready.role.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    Ok(format!("ready ({role})"))
                } else {
                    Err(ready
                        .not_ready_reason
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone())
                };
                async move {
                    match body {
                        Ok(text) => (StatusCode::OK, text),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = scrape.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
}

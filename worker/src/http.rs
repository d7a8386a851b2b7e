//! HTTP endpoints on one port (contract §5): `/livez`, `/readyz`, `/health`,
//! `/metrics`, and `POST /drain` (loopback only) used by the preStop hook.
//! Also the tiny HTTP/1.1 client that `postgres-writer drain` uses.

use crate::health::Health;
use crate::lifecycle::{DrainOutcome, Lifecycle};
use crate::metrics::Metrics;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Stop signal and the drain's outcome.
    pub lifecycle: Arc<Lifecycle>,
    pub drain_timeout: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/drain", post(drain))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.health.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let report = state.health.report();
    let code = if report.postgres_sync_healthy && report.redis_consumer_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Stops intake and answers 200 once the in-flight batch is committed and
/// acked; an error status when the drain timed out with work unfinished.
async fn drain(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "drain is accepted from the pod itself only\n",
        )
            .into_response();
    }
    tracing::info!("drain requested");
    state.lifecycle.request_stop();
    // The process ends the drain itself after its drain timeout; the margin
    // lets that outcome, not this wait, decide the answer.
    let wait = state.drain_timeout + DRAIN_ANSWER_MARGIN;
    match state.lifecycle.drain_outcome(wait).await {
        Some(DrainOutcome::Finished) => (StatusCode::OK, "drained\n").into_response(),
        Some(DrainOutcome::TimedOut) => (
            StatusCode::GATEWAY_TIMEOUT,
            "drain timed out with work unfinished (it will be redelivered)\n",
        )
            .into_response(),
        None => (
            StatusCode::GATEWAY_TIMEOUT,
            "drain did not finish in time\n",
        )
            .into_response(),
    }
}

/// How much longer than the drain timeout `/drain` (and the `drain` command)
/// wait for the process to report how the drain ended.
pub const DRAIN_ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Serves until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// Minimal HTTP/1.1 request to a local server: returns (status, body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
            })?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain_answer(outcome: DrainOutcome) -> (u16, String) {
        let lifecycle = Arc::new(Lifecycle::new());
        let state = AppState {
            health: Arc::new(Health::new(true, false)),
            metrics: Arc::new(Metrics::new()),
            lifecycle: lifecycle.clone(),
            drain_timeout: Duration::from_millis(200),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, shutdown.clone()));
        let stop = lifecycle.stop_token();
        let ender = tokio::spawn(async move {
            stop.cancelled().await;
            lifecycle.end_drain(outcome);
        });
        let answer = request(addr, "POST", "/drain", Duration::from_secs(10))
            .await
            .unwrap();
        ender.await.unwrap();
        shutdown.cancel();
        server.await.unwrap().unwrap();
        answer
    }

    #[tokio::test]
    async fn drain_reports_a_timed_out_drain_as_a_failure() {
        let (status, body) = drain_answer(DrainOutcome::TimedOut).await;
        assert_eq!(status, 504, "{body}");
        assert!(body.contains("unfinished"), "{body}");
        let (status, body) = drain_answer(DrainOutcome::Finished).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.trim(), "drained");
    }
}

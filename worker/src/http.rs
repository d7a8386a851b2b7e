//! HTTP endpoints on one port (SPEC §5): `/livez`, `/readyz`, `/health`,
//! `/metrics`, and `POST /drain` (loopback only) used by the preStop hook.
//! Also the tiny HTTP/1.1 client that `postgres-writer drain` uses.

use crate::health::Health;
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
    /// Cancelled to stop intake (SIGTERM or drain).
    pub stop: CancellationToken,
    /// Cancelled once in-flight work is committed and acknowledged.
    pub drained: CancellationToken,
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

/// Stops intake and answers once the in-flight batch is committed and acked.
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
    state.stop.cancel();
    match tokio::time::timeout(state.drain_timeout, state.drained.cancelled()).await {
        Ok(()) => (StatusCode::OK, "drained\n").into_response(),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "drain did not finish in time\n",
        )
            .into_response(),
    }
}

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

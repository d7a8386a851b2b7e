//! The long-running process of `postgres-writer run` and `analytics`: HTTP,
//! the monitor, the consumer and fold loops and the analytics loops, until
//! SIGTERM/SIGINT or a drain (contract §4, §5). Part of the binary (declared in
//! main.rs), not of the library: it is where the arguments become the loops.

use anyhow::Context;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker::analytics::{self, AnalyticsSettings};
use worker::config::{AnalyticsArgs, DatabaseArgs, FoldArgs, HttpArgs, StreamArgs};
use worker::db;
use worker::health::{Health, Source};
use worker::http::{self, AppState};
use worker::intake::{IntakeError, StreamIntake, StreamSettings};
use worker::lifecycle::{pause, DrainOutcome, Lifecycle};
use worker::metrics::{Metrics, StreamLabel};
use worker::pipeline::Consumer;

/// Runs the process until SIGTERM/SIGINT or a drain; then stops intake, lets
/// every loop finish its transaction (the fold loop folds the consumers'
/// last batches), and exits 0 (1 when the drain timed out).
pub async fn serve(
    database: DatabaseArgs,
    streams: Option<(StreamArgs, FoldArgs)>,
    analytics_args: AnalyticsArgs,
    http_args: HttpArgs,
) -> anyhow::Result<ExitCode> {
    let pool = db::worker_pool(&database, "postgres-writer")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        streams.is_some(),
        analytics_args.analytics_enabled,
    ));
    let lifecycle = Arc::new(Lifecycle::new());
    let stop = lifecycle.stop_token();
    let http_shutdown = CancellationToken::new();

    let addr = SocketAddr::new(http_args.http_bind_address, http_args.http_port as u16);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP_PORT {addr}"))?;
    tracing::info!(%addr, "HTTP listening");
    let state = AppState {
        health: health.clone(),
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        drain_timeout: Duration::from_millis(http_args.drain_timeout_ms),
    };
    let http_task = tokio::spawn(http::serve(listener, state, http_shutdown.clone()));

    let work = TaskTracker::new();
    let monitor = Monitor {
        pool: pool.clone(),
        intake: streams
            .as_ref()
            .and_then(|(s, _)| StreamIntake::open(&StreamSettings::from(s)).ok()),
        metrics: metrics.clone(),
        health: health.clone(),
        last_schema: None,
    };
    work.spawn(monitor.run(stop.clone()));
    if let Some((stream_args, fold_args)) = streams {
        let consumers = TaskTracker::new();
        let fold_wake = Arc::new(tokio::sync::Notify::new());
        // Several consumer loops let PostgreSQL work on several batches at once.
        let loops = stream_args.consumer_concurrency;
        let names: Vec<String> = (0..loops)
            .map(|i| match loops {
                1 => stream_args.consumer_name.clone(),
                _ => format!("{}-{i}", stream_args.consumer_name),
            })
            .collect();
        for name in &names {
            let mut args = StreamSettings::from(&stream_args);
            args.consumer_name = name.clone();
            args.sibling_consumers = names.iter().filter(|n| *n != name).cloned().collect();
            let consumer = Consumer {
                args,
                pool: pool.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                fold_wake: Some(fold_wake.clone()),
            };
            let stop = stop.clone();
            work.spawn(consumers.track_future(async move {
                if let Err(error) = consumer.run(stop).await {
                    tracing::error!(error = %telemetry::ErrorChain(&*error), "consumer failed");
                }
            }));
        }
        consumers.close();
        work.spawn(worker::fold::run_loop(
            pool.clone(),
            worker::fold::FoldSettings::from(&fold_args),
            metrics.clone(),
            health.clone(),
            stop.clone(),
            fold_wake,
            consumers,
        ));
    }
    if analytics_args.analytics_enabled {
        let settings = AnalyticsSettings::from(&analytics_args);
        for index in 0..analytics_args.analytics_concurrency {
            work.spawn(analytics::run_loop(
                pool.clone(),
                settings.clone(),
                metrics.clone(),
                health.clone(),
                stop.clone(),
                index as usize,
            ));
        }
    }
    work.close();

    tokio::select! {
        _ = shutdown_signal() => tracing::info!("termination signal: draining"),
        _ = stop.cancelled() => tracing::info!("drain requested: draining"),
    }
    health.start_draining();
    lifecycle.request_stop();
    let timeout = Duration::from_millis(http_args.drain_timeout_ms);
    let finished = tokio::time::timeout(timeout, work.wait()).await.is_ok();
    lifecycle.end_drain(if finished {
        DrainOutcome::Finished
    } else {
        DrainOutcome::TimedOut
    });
    http_shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    pool.close().await;
    if finished {
        tracing::info!("drained: in-flight work committed and acknowledged");
        Ok(ExitCode::SUCCESS)
    } else {
        // Uncommitted work rolls back and unacknowledged entries are redelivered.
        tracing::error!(
            ?timeout,
            "drain timed out; exiting with work unfinished (it will be redelivered)"
        );
        Ok(ExitCode::FAILURE)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Longest wait for one health probe (PostgreSQL or Redis).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between two rounds of probes.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Every few seconds: reachability of PostgreSQL and Redis, schema version,
/// stream backlog and analytics queue, into `/health` (through [`Health`]'s
/// methods) and the metrics.
struct Monitor {
    pool: sqlx::PgPool,
    /// The streams' backlog, when this process consumes them.
    intake: Option<StreamIntake>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The schema state last seen, to log its changes only.
    last_schema: Option<db::SchemaState>,
}

impl Monitor {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            self.probe_postgres().await;
            self.probe_redis().await;
            if !pause(&stop, PROBE_INTERVAL).await {
                return;
            }
        }
    }

    /// The schema version, then (when usable) the fold backlog, the applied
    /// reorgs and the analytics queue.
    async fn probe_postgres(&mut self) {
        // A short deadline: a pool waiting for a dead server must not keep
        // readiness true (the pool's own acquire timeout is much longer).
        let checked = tokio::time::timeout(PROBE_TIMEOUT, db::schema_state(&self.pool))
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        let state = match checked {
            Ok(state) => state,
            Err(error) => {
                self.health.outage(
                    &Source::postgres_probe(),
                    telemetry::ErrorChain(&error).to_string(),
                );
                return;
            }
        };
        self.health.probe_ok(&Source::postgres_probe());
        // Equal, or newer and declared compatible (migrations/README.md).
        let usable = state.is_usable();
        if self.last_schema.as_ref() != Some(&state) {
            if usable {
                tracing::info!(%state, "schema usable");
            } else {
                tracing::warn!(%state, "schema not usable by this binary; not ready");
            }
            self.last_schema = Some(state);
        }
        self.health.set_schema_usable(usable);
        if !usable {
            return;
        }
        if let Err(error) =
            worker::fold::report_backlog(&self.pool, &self.metrics, &self.health).await
        {
            tracing::warn!(%error, "reading fold statistics failed");
        }
        match worker::reorg::stats(&self.pool).await {
            Ok(reorgs) => self.health.set_reorgs(reorgs),
            Err(error) => tracing::warn!(%error, "reading applied reorgs failed"),
        }
        match analytics::queue_stats(&self.pool).await {
            Ok((depth, parked, oldest)) => {
                self.health.clear(&Source::queue_stats());
                self.metrics.analytics_queue_depth.set(depth);
                self.metrics.analytics_queue_parked.set(parked);
                self.metrics.analytics_oldest_pending_seconds.set(oldest);
                self.health.set_analytics_queue(depth, parked, oldest);
            }
            // Shown in /health and logged; the figures keep their last value.
            Err(error) => {
                tracing::warn!(%error, "reading analytics queue statistics failed");
                self.health.warn(&Source::queue_stats(), error.to_string());
            }
        }
    }

    /// The streams' pending entries and lag, when this process consumes them.
    async fn probe_redis(&mut self) {
        let Some(intake) = self.intake.as_mut() else {
            return;
        };
        let backlog = tokio::time::timeout(PROBE_TIMEOUT, intake.backlog())
            .await
            .unwrap_or_else(|_| {
                Err(IntakeError::Reply {
                    command: "XINFO",
                    detail: format!("no answer within {PROBE_TIMEOUT:?}"),
                })
            });
        match backlog {
            Ok(backlog) => {
                self.health.probe_ok(&Source::redis_probe());
                for b in &backlog {
                    let label = StreamLabel {
                        stream: b.stream.clone(),
                    };
                    self.metrics
                        .stream_pending
                        .get_or_create(&label)
                        .set(b.pending as i64);
                    if let Some(lag) = b.lag {
                        self.metrics
                            .stream_lag
                            .get_or_create(&label)
                            .set(lag as i64);
                    }
                }
                self.health.set_stream_backlog(backlog);
            }
            Err(error) => {
                self.health.outage(
                    &Source::redis_probe(),
                    telemetry::ErrorChain(&error).to_string(),
                );
            }
        }
    }
}

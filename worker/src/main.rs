//! The `postgres-writer` binary: subcommands of contract §5.

use anyhow::{bail, Context};
use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker::analytics::{self, AnalyticsSettings};
use worker::config::{
    AnalyticsArgs, Cli, Command, DatabaseArgs, DeadLettersCommand, FoldArgs, FoldDeltasCommand,
    HttpArgs, StreamArgs,
};
use worker::health::{Health, Source};
use worker::http::{self, AppState};
use worker::intake::StreamSettings;
use worker::lifecycle::{pause, DrainOutcome, Lifecycle};
use worker::metrics::Metrics;
use worker::pipeline::Consumer;
use worker::{db, dead_letters, generate, verify};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Traces are exported by the long-running commands only.
    let (telemetry_args, service) = match &cli.command {
        Command::Run(a) => (a.telemetry.clone(), "postgres-writer-run"),
        Command::Analytics(a) => (a.telemetry.clone(), "postgres-writer-analytics"),
        _ => (telemetry::TelemetryArgs::disabled(), "postgres-writer"),
    };
    telemetry::run_main(&telemetry_args, service, "info,sqlx=warn", async move {
        dispatch(cli.command).await.or_else(schema_refused)
    })
}

/// Exit code of a command refused on a schema this binary cannot work on:
/// apart from every code `verify` gives (0 clean, 1 drift, 2 error,
/// 3 pending, 4 deltas of a newer format).
const EXIT_SCHEMA_REFUSED: u8 = 5;

/// Whether `error` is a refusal of [`db::require_usable_schema`].
fn is_schema_refusal(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<db::SchemaRefusal>(),
        Some(db::SchemaRefusal::Unusable { .. })
    )
}

/// A refusal of [`db::require_usable_schema`] exits with its own code.
fn schema_refused(error: anyhow::Error) -> anyhow::Result<ExitCode> {
    if !is_schema_refusal(&error) {
        return Err(error);
    }
    eprintln!("error: {error}");
    Ok(ExitCode::from(EXIT_SCHEMA_REFUSED))
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            args.validate()?;
            serve(
                args.database,
                Some((args.streams, args.fold)),
                args.analytics,
                args.http,
            )
            .await
        }
        Command::Analytics(args) => {
            args.validate()?;
            let mut analytics = args.analytics;
            analytics.analytics_enabled = true;
            serve(args.database, None, analytics, args.http).await
        }
        Command::Migrate(args) => {
            args.database.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-migrate")?;
            db::migrate(&pool).await.context("applying migrations")?;
            // The database's version: a newer binary may have migrated it further.
            let applied = db::applied_schema_version(&pool)
                .await
                .context("reading the applied schema version")?
                .unwrap_or_else(db::expected_schema_version);
            let report = format!("schema version {applied}");
            if let Some(path) = &args.termination_message_path {
                // Read back by the operator from the Job pod's terminated
                // state. The migrations are applied either way: a report
                // that cannot be written only leaves the version unreported.
                if let Err(error) = std::fs::write(path, &report) {
                    tracing::warn!(
                        path = %path.display(),
                        error = %telemetry::ErrorChain(&error),
                        "could not write the schema version report"
                    );
                }
            }
            println!("migrations applied; {report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain(args) => {
            args.validate()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], args.http_port as u16));
            // The worker answers within its own drain timeout plus a margin.
            let timeout =
                Duration::from_millis(args.drain_timeout_ms) + http::DRAIN_ANSWER_MARGIN * 2;
            let (status, body) = http::request(addr, "POST", "/drain", timeout)
                .await
                .with_context(|| format!("asking the worker on {addr} to drain"))?;
            if status != 200 {
                bail!("worker answered {status}: {}", body.trim());
            }
            println!("{}", body.trim());
            Ok(ExitCode::SUCCESS)
        }
        // Exit 1 means drift only: an error that stops verify exits 2, a
        // schema this binary cannot read exits EXIT_SCHEMA_REFUSED.
        Command::Verify(args) => match verify_command(args).await {
            Ok(code) => Ok(code),
            Err(error) if is_schema_refusal(&error) => Err(error),
            Err(error) => {
                eprintln!("error: {error:#}");
                Ok(ExitCode::from(2))
            }
        },
        Command::FoldDeltas(command) => fold_deltas_command(command).await,
        Command::Rebuild(args) => {
            args.database.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-rebuild")?;
            db::require_usable_schema(&pool, "rebuild").await?;
            for (table, rows) in verify::rebuild(&pool, args.analytics_only)
                .await
                .context("rebuilding")?
            {
                println!("{table:<18} {rows:>10} rows");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback(args) => {
            args.database.validate()?;
            if args.to_block < 0 {
                bail!("invalid --to-block {}: must be 0 or more", args.to_block);
            }
            let pool = db::pool(&args.database, "postgres-writer-rollback")?;
            db::require_usable_schema(&pool, "rollback").await?;
            let report = worker::rollback::rollback(&pool, &args.network, args.to_block)
                .await
                .context("rolling back")?;
            print!("{}", report.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Requeue(args) => {
            args.database.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-requeue")?;
            db::require_usable_schema(&pool, "requeue").await?;
            let terms = (!args.terms.is_empty()).then_some(args.terms.as_slice());
            let n = analytics::requeue_parked(&pool, terms)
                .await
                .context("requeueing parked terms")?;
            println!("requeued {n} parked term(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Summary(args) => {
            args.validate()?;
            let pool = db::pool(&args, "postgres-writer-summary")?;
            for (table, rows) in verify::summary(&pool).await.context("counting rows")? {
                println!("{table:<28} {rows:>10}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            args.validate()?;
            let spec = generate::GeneratorSpec {
                events: args.events,
                events_per_entry: args.events_per_entry,
                seed: args.seed,
                accounts: args.accounts,
                curves: args.curves,
                network: args.network,
                stream_prefix: args.stream_prefix.clone(),
            };
            let entries = generate::generate(&spec);
            let redis = worker::tls::redis_client(&args.redis_url, args.redis_ca_file.as_deref())?;
            let written = generate::publish(&redis, &entries)
                .await
                .context("writing sample entries to Redis")?;
            println!(
                "wrote {written} entries ({} events) to streams: {}",
                args.events,
                generate::stream_names(&args.stream_prefix).join(",")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters(command) => dead_letters_command(command).await,
        Command::Settings => {
            print!("{}", worker::config::settings_table());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `verify` (ADR 0019): exit 0 no drift, 1 drift, 2 error, 3 pending work not
/// done within `--max-wait`, 4 deltas of a newer format not modelled.
async fn verify_command(args: worker::config::VerifyArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let pool = db::pool(&args.database, "postgres-writer-verify")?;
    db::require_usable_schema(&pool, "verify").await?;
    let mut report = verify::verify(&pool, args.show)
        .await
        .context("verifying")?;
    if let Some(seconds) = args.max_wait {
        if report.is_clean() {
            verify::wait_for_pending(&pool, &mut report, Duration::from_secs(seconds))
                .await
                .context("waiting for the snapshot's pending work")?;
        }
    }
    print!("{}", report.render());
    Ok(ExitCode::from(report.verdict().exit_code()))
}

/// `fold-deltas list | replay` (ADR 0019). Replay exits 2 when a delta is
/// parked again.
async fn fold_deltas_command(command: FoldDeltasCommand) -> anyhow::Result<ExitCode> {
    match command {
        FoldDeltasCommand::List(args) => {
            args.database.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-fold-deltas")?;
            let parked = worker::fold::list_parked(&pool, args.limit)
                .await
                .context("listing parked fold deltas")?;
            println!(
                "{:>10} {:>9} {:>6} {:<11} {:<7} {:>8}  {:<32} reason",
                "id", "partition", "format", "kind", "sqlstate", "bytes", "parked at"
            );
            for p in &parked {
                println!(
                    "{:>10} {:>9} {:>6} {:<11} {:<7} {:>8}  {:<32} {}",
                    p.id,
                    p.partition,
                    p.format,
                    p.kind,
                    p.sqlstate.as_deref().unwrap_or("-"),
                    p.bytes,
                    p.parked_at,
                    p.reason
                );
            }
            println!("{} parked fold delta(s) listed", parked.len());
            Ok(ExitCode::SUCCESS)
        }
        FoldDeltasCommand::Replay(args) => {
            args.database.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-fold-deltas")?;
            db::require_usable_schema(&pool, "fold-deltas replay").await?;
            let ids = (!args.ids.is_empty()).then_some(args.ids.as_slice());
            let moved = worker::fold::replay_parked(&pool, ids)
                .await
                .context("replaying parked fold deltas")?;
            let again: Vec<i64> = worker::fold::list_parked(&pool, i64::MAX)
                .await
                .context("listing parked fold deltas")?
                .into_iter()
                .map(|p| p.id)
                .filter(|id| moved.contains(id))
                .collect();
            println!(
                "replayed {} parked fold delta(s): {} folded, {} parked again",
                moved.len(),
                moved.len() - again.len(),
                again.len()
            );
            Ok(if again.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

/// `dead-letters list | show | replay`. Replay exits 2 when a letter failed
/// again (it stays pending with its new reason), 1 on an outage.
async fn dead_letters_command(command: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadLettersCommand::List(args) => {
            args.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-dead-letters")?;
            let letters = dead_letters::select(
                &pool,
                &args.filter.filter(),
                args.status.into(),
                true,
                args.limit,
            )
            .await
            .context("listing dead letters")?;
            print!("{}", dead_letters::render_list(&letters));
            Ok(ExitCode::SUCCESS)
        }
        DeadLettersCommand::Show(args) => {
            args.database.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-dead-letters")?;
            match dead_letters::get(&pool, args.id)
                .await
                .context("reading the dead letter")?
            {
                Some(letter) => {
                    print!("{}", dead_letters::render_show(&letter));
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!("no dead letter with id {}", args.id),
            }
        }
        DeadLettersCommand::Replay(args) => {
            args.database.validate()?;
            let pool = db::pool(&args.database, "postgres-writer-dead-letters")?;
            db::require_usable_schema(&pool, "dead-letters replay").await?;
            let report = dead_letters::replay(
                &pool,
                &args.filter.filter(),
                args.dry_run,
                args.note.as_deref(),
            )
            .await
            .context("replaying dead letters")?;
            print!("{}", report.render());
            Ok(if report.failed_again() > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Runs the long-lived process: HTTP, monitor, consumer and fold loops (if
/// `streams`) and analytics loops, until SIGTERM/SIGINT or a drain; then
/// stops intake, lets every loop finish its transaction (the fold loop folds
/// the consumers' last batches), and exits 0.
async fn serve(
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
    work.spawn(monitor(
        pool.clone(),
        streams.as_ref().map(|(s, _)| StreamSettings::from(s)),
        metrics.clone(),
        health.clone(),
        stop.clone(),
    ));
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
    health.draining.store(true, Ordering::Relaxed);
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

/// Every few seconds: reachability of PostgreSQL and Redis, schema version,
/// stream backlog and analytics queue, into `/health` and the metrics.
async fn monitor(
    pool: sqlx::PgPool,
    streams: Option<StreamSettings>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut intake = streams
        .as_ref()
        .and_then(|s| worker::intake::StreamIntake::open(s).ok());
    let mut last_schema: Option<db::SchemaState> = None;
    loop {
        // A short deadline: a pool waiting for a dead server must not keep
        // readiness true (the pool's own acquire timeout is much longer).
        let checked = tokio::time::timeout(PROBE_TIMEOUT, db::schema_state(&pool))
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        match checked {
            Ok(state) => {
                health.probe_ok(&Source::postgres_probe());
                // Equal, or newer and declared compatible (migrations/README.md).
                let ok = state.is_usable();
                if last_schema.as_ref() != Some(&state) {
                    if ok {
                        tracing::info!(%state, "schema usable");
                    } else {
                        tracing::warn!(%state, "schema not usable by this binary; not ready");
                    }
                    last_schema = Some(state);
                }
                health.schema_ok.store(ok, Ordering::Relaxed);
                if ok {
                    if let Err(error) = worker::fold::report_backlog(&pool, &metrics, &health).await
                    {
                        tracing::warn!(%error, "reading fold statistics failed");
                    }
                    match worker::reorg::stats(&pool).await {
                        Ok(reorgs) => {
                            *health.reorgs.lock().unwrap_or_else(|e| e.into_inner()) = reorgs
                        }
                        Err(error) => {
                            tracing::warn!(%error, "reading applied reorgs failed");
                        }
                    }
                    match analytics::queue_stats(&pool).await {
                        Ok((depth, parked, oldest)) => {
                            health.clear(&Source::queue_stats());
                            metrics.analytics_queue_depth.set(depth);
                            metrics.analytics_queue_parked.set(parked);
                            metrics.analytics_oldest_pending_seconds.set(oldest);
                            let mut a = health.analytics.lock().unwrap_or_else(|e| e.into_inner());
                            a.queue_depth = depth;
                            a.parked = parked;
                            a.oldest_pending_seconds = oldest;
                        }
                        // Shown in /health and logged; the figures keep their last value.
                        Err(error) => {
                            tracing::warn!(%error, "reading analytics queue statistics failed");
                            health.warn(&Source::queue_stats(), error.to_string());
                        }
                    }
                }
            }
            Err(error) => {
                health.outage(
                    &Source::postgres_probe(),
                    telemetry::ErrorChain(&error).to_string(),
                );
            }
        }
        if let Some(intake) = intake.as_mut() {
            let backlog = tokio::time::timeout(PROBE_TIMEOUT, intake.backlog())
                .await
                .unwrap_or_else(|_| {
                    Err(worker::intake::IntakeError::Reply {
                        command: "XINFO",
                        detail: format!("no answer within {PROBE_TIMEOUT:?}"),
                    })
                });
            match backlog {
                Ok(backlog) => {
                    health.probe_ok(&Source::redis_probe());
                    for b in &backlog {
                        let label = worker::metrics::StreamLabel {
                            stream: b.stream.clone(),
                        };
                        metrics
                            .stream_pending
                            .get_or_create(&label)
                            .set(b.pending as i64);
                        if let Some(lag) = b.lag {
                            metrics.stream_lag.get_or_create(&label).set(lag as i64);
                        }
                    }
                    *health.backlog.lock().unwrap_or_else(|e| e.into_inner()) = backlog;
                }
                Err(error) => {
                    health.outage(
                        &Source::redis_probe(),
                        telemetry::ErrorChain(&error).to_string(),
                    );
                }
            }
        }
        if !pause(&stop, Duration::from_secs(2)).await {
            return;
        }
    }
}

//! The one-shot subcommands of the `postgres-writer` binary (contract §5):
//! each reads its arguments, does its work and returns the exit code. Part
//! of the binary (declared in main.rs), not of the library.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use worker::analytics;
use worker::config::{
    DatabaseArgs, DeadLettersCommand, DrainArgs, FoldDeltasCommand, GenerateArgs, MigrateArgs,
    RebuildArgs, RequeueArgs, RollbackArgs, VerifyArgs,
};
use worker::http;
use worker::{db, dead_letters, generate, verify};

/// `migrate`: applies the migrations and reports the database's schema version.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
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

/// `drain` (the preStop hook): asks the local worker to drain and waits for its answer.
pub async fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], args.http_port as u16));
    // The worker answers within its own drain timeout plus a margin.
    let timeout = Duration::from_millis(args.drain_timeout_ms) + http::DRAIN_ANSWER_MARGIN * 2;
    let (status, body) = http::request(addr, "POST", "/drain", timeout)
        .await
        .with_context(|| format!("asking the worker on {addr} to drain"))?;
    if status != 200 {
        bail!("worker answered {status}: {}", body.trim());
    }
    println!("{}", body.trim());
    Ok(ExitCode::SUCCESS)
}

/// `rebuild`: rewrites the derived tables from the events.
pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
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

/// `rollback`: removes a network's events above a block and recomputes what they touched.
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
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

/// `requeue`: gives parked analytics terms a fresh set of attempts.
pub async fn requeue(args: RequeueArgs) -> anyhow::Result<ExitCode> {
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

/// `summary`: row counts of the read model.
pub async fn summary(args: DatabaseArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let pool = db::pool(&args, "postgres-writer-summary")?;
    for (table, rows) in verify::summary(&pool).await.context("counting rows")? {
        println!("{table:<28} {rows:>10}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `generate`: writes sample rindexer entries to Redis streams.
pub async fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
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

/// `verify` (ADR 0019): exit 0 no drift, 1 drift, 2 error, 3 pending work not
/// done within `--max-wait`, 4 deltas of a newer format not modelled.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
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
pub async fn fold_deltas(command: FoldDeltasCommand) -> anyhow::Result<ExitCode> {
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
pub async fn dead_letters(command: DeadLettersCommand) -> anyhow::Result<ExitCode> {
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

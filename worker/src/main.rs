//! The `postgres-writer` binary: parses the command line and dispatches each
//! subcommand of contract §5, to [`serve`] (the long-running process) or to
//! [`commands`] (the one-shot commands).

mod commands;
mod serve;

use clap::Parser;
use std::process::ExitCode;
use worker::config::{Cli, Command};
use worker::db;

/// mimalloc instead of the system allocator: decoding and writing allocate
/// per field, and glibc's malloc and free took about a fifth of the
/// worker's CPU at scale (ADR 0022).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            serve::serve(
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
            serve::serve(args.database, None, analytics, args.http).await
        }
        Command::Migrate(args) => commands::migrate(args).await,
        Command::Drain(args) => commands::drain(args).await,
        // Exit 1 means drift only: an error that stops verify exits 2, a
        // schema this binary cannot read exits EXIT_SCHEMA_REFUSED.
        Command::Verify(args) => match commands::verify(args).await {
            Ok(code) => Ok(code),
            Err(error) if is_schema_refusal(&error) => Err(error),
            Err(error) => {
                eprintln!("error: {error:#}");
                Ok(ExitCode::from(2))
            }
        },
        Command::FoldDeltas(command) => commands::fold_deltas(command).await,
        Command::Rebuild(args) => commands::rebuild(args).await,
        Command::Rollback(args) => commands::rollback(args).await,
        Command::Requeue(args) => commands::requeue(args).await,
        Command::Summary(args) => commands::summary(args).await,
        Command::Generate(args) => commands::generate(args).await,
        Command::DeadLetters(command) => commands::dead_letters(command).await,
        Command::Settings => {
            print!("{}", worker::config::settings_table());
            Ok(ExitCode::SUCCESS)
        }
    }
}

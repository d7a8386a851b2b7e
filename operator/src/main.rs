//! The `postgres-writer-operator` binary: `run` the controller, or `crdgen`
//! to print the CRD that `crds/` holds.

use clap::{Args, Parser, Subcommand};
use kube::Client;
use operator::controller::{self, Context};
use operator::leader::{self, LeaseConfig};
use operator::metrics::Metrics;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "postgres-writer-operator",
    version,
    about = "Kubernetes operator for postgres-writer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (two replicas with leader election in the Helm chart).
    Run(RunArgs),
    /// Print the PostgresWriter CustomResourceDefinition as YAML.
    Crdgen,
}

#[derive(Args)]
struct RunArgs {
    /// Port of /livez, /readyz and /metrics.
    #[arg(long, env = "OPERATOR_HTTP_PORT", default_value_t = 8081)]
    http_port: u16,
    /// Watch only these namespaces (comma-separated or repeated; default: all namespaces).
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Wait after a failed migration Job before the next attempt, in seconds (doubles per attempt, up to 32×).
    #[arg(long, env = "MIGRATION_RETRY_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    migration_retry_seconds: u64,
    /// Run the controller only while holding the leader Lease (false: always, for a single replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease (coordination.k8s.io/v1).
    #[arg(long, env = "LEASE_NAME", default_value = "postgres-writer-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (default: the kubeconfig's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a silent leader keeps the Lease before a standby may take it.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(leader::LEASE_DURATION_SECONDS))]
    lease_duration_seconds: u64,
    /// Seconds the leader keeps leading without a successful renewal (below the lease duration).
    #[arg(long, env = "LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(leader::RENEW_DEADLINE_SECONDS))]
    renew_deadline_seconds: u64,
    /// Seconds between two tries to renew (leader) or acquire (standby) (below the renew deadline).
    #[arg(long, env = "LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(leader::RETRY_PERIOD_SECONDS))]
    retry_period_seconds: u64,
    #[command(flatten)]
    telemetry: telemetry::TelemetryArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => match operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => telemetry::run_main(
            &args.telemetry.clone(),
            "postgres-writer-operator",
            "info",
            async move { run(args).await.map(|()| ExitCode::SUCCESS) },
        ),
    }
}

/// The watched namespaces: trimmed, without empty names or repeats; empty means all.
fn watched(namespaces: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ns in namespaces {
        let ns = ns.trim().to_string();
        if !ns.is_empty() && !out.contains(&ns) {
            out.push(ns);
        }
    }
    out
}

/// Cancels `stop` on SIGTERM or Ctrl-C.
fn stop_on_signal(stop: CancellationToken) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown signal received");
        stop.cancel();
    });
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.http_port)).await?;
    let app = operator::metrics::router(metrics.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let stop = CancellationToken::new();
    stop_on_signal(stop.clone())?;
    let namespaces = watched(args.namespaces);
    let lease = args
        .leader_elect
        .then(|| {
            LeaseConfig::new(
                args.lease_namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string()),
                args.lease_name.clone(),
                args.identity
                    .clone()
                    .unwrap_or_else(leader::default_identity),
                args.lease_duration_seconds,
                args.renew_deadline_seconds,
                args.retry_period_seconds,
            )
        })
        .transpose()?;
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone())
            .with_migration_retry(Duration::from_secs(args.migration_retry_seconds)),
    );

    let probe = namespaces.first().map(String::as_str);
    if !controller::wait_for_crd(&client, probe, &metrics, &stop).await {
        return Ok(());
    }
    let Some(lease) = lease else {
        metrics.set_role(true, "leader election off");
        metrics.set_not_ready("waiting for the PostgresWriter watch to sync");
        controller::run(ctx, namespaces, stop).await;
        return Ok(());
    };
    leader::lead(client, lease, &metrics, &stop, |halt| {
        controller::run(ctx, namespaces, halt)
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["postgres-writer-operator", "run"];
        argv.extend(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            Command::Crdgen => unreachable!(),
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn namespaces_are_a_list_and_one_name_still_works() {
        let args = run_args(&["--namespace", "chain-a,chain-b", "--namespace", "chain-c"]).unwrap();
        assert_eq!(args.namespaces, ["chain-a", "chain-b", "chain-c"]);
        let args = run_args(&["--namespace", "chain"]).unwrap();
        assert_eq!(watched(args.namespaces), ["chain"]);
        assert_eq!(
            watched(vec![" a ".into(), String::new(), "b".into(), "a".into()]),
            ["a", "b"]
        );
        assert!(watched(Vec::new()).is_empty(), "empty: every namespace");
    }

    #[test]
    fn lease_settings_have_ranges_and_defaults() {
        let args = run_args(&[]).unwrap();
        assert!(args.leader_elect);
        assert_eq!(
            (
                args.lease_duration_seconds,
                args.renew_deadline_seconds,
                args.retry_period_seconds
            ),
            (15, 10, 2)
        );
        assert!(!run_args(&["--leader-elect", "false"]).unwrap().leader_elect);
        for bad in [
            ["--lease-duration-seconds", "1"],
            ["--lease-duration-seconds", "301"],
            ["--renew-deadline-seconds", "0"],
            ["--retry-period-seconds", "61"],
        ] {
            let err = run_args(&bad).err().expect("refused");
            assert!(err.to_string().contains(bad[0]), "{err}");
        }
    }
}

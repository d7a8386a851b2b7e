//! The `postgres-writer-operator` binary: `run` the controller, or `crdgen`
//! to print the CRD that `crds/` holds.

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use operator::controller::{error_policy, reconcile, Context};
use operator::crd::PostgresWriter;
use operator::leader::{self, Attempt, Elector, LeaseConfig};
use operator::metrics::Metrics;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
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

/// Lists PostgresWriters once: a 404 means the CRD is not installed.
async fn check_crd(api: &Api<PostgresWriter>) -> anyhow::Result<()> {
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the PostgresWriter CRD (postgreswriters.pgwriter.io) is not installed: \
             kubectl apply -f crds/postgreswriter.yaml (or install the Helm chart, which ships it)"
        ),
        Err(e) => Err(e.into()),
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

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
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
    let migration_retry = Duration::from_secs(args.migration_retry_seconds);

    // Not ready (and a clear log line every 10 s) until the CRD exists.
    let probe = api::<PostgresWriter>(&client, namespaces.first().map(String::as_str));
    while let Err(error) = check_crd(&probe).await {
        metrics.set_not_ready(&format!("{error:#}"));
        tracing::error!("{error:#}; retrying in 10 s");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
    let Some(lease) = lease else {
        metrics.set_role(true, "leader election off");
        metrics.set_not_ready("waiting for the PostgresWriter watch to sync");
        run_controllers(&client, &namespaces, &metrics, migration_retry, stop).await;
        return Ok(());
    };

    // A standby is ready: it takes over when the leader goes.
    let mut elector = Elector::new(client.clone(), lease.clone());
    tracing::info!(
        lease = %format!("{}/{}", lease.namespace, lease.name),
        identity = %lease.identity,
        "waiting for the leader Lease"
    );
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(Attempt::Leading) => break,
            Ok(Attempt::Standby(holder)) => {
                let holder = holder.unwrap_or_else(|| "none".into());
                metrics.set_role(false, &format!("standby; leader: {holder}"));
                metrics.ready.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(error = %telemetry::ErrorChain(&error), "leader election");
                metrics.set_role(false, "standby; the Lease cannot be read");
                metrics.set_not_ready(&format!("leader election: {error}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(lease.retry_period) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
    tracing::info!(identity = %lease.identity, "acquired the leader Lease; starting the controller");
    metrics.set_role(true, "leader");
    metrics.set_not_ready("leader: waiting for the PostgresWriter watch to sync");
    let ended =
        elector
            .lead(&stop, |halt| {
                let (client, metrics) = (client.clone(), metrics.clone());
                async move {
                    run_controllers(&client, &namespaces, &metrics, migration_retry, halt).await
                }
            })
            .await;
    metrics.set_role(false, "stopped");
    if ended.lost() {
        anyhow::bail!(
            "lost the leader Lease {}/{} ({ended:?}): exiting so that this replica restarts as a standby",
            lease.namespace,
            lease.name
        );
    }
    if ended == leader::Ended::ShutdownTimedOut {
        tracing::warn!(grace = ?leader::SHUTDOWN_GRACE, "the controller did not stop within the grace period; dropped it");
    }
    // Released for a quick takeover by a standby.
    match elector.release().await {
        Ok(()) => tracing::info!("released the leader Lease"),
        Err(error) => tracing::warn!(error = %telemetry::ErrorChain(&error), "releasing the Lease"),
    }
    Ok(())
}

/// One controller per watched namespace (one for all when the list is
/// empty), so that the operator needs only the namespaced Roles; they run
/// until `halt`.
async fn run_controllers(
    client: &Client,
    namespaces: &[String],
    metrics: &Arc<Metrics>,
    migration_retry: Duration,
    halt: CancellationToken,
) {
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=postgres-writer-operator");
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone()).with_migration_retry(migration_retry),
    );
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|ns| Some(ns.as_str())).collect()
    };
    tracing::info!(
        namespaces = %if namespaces.is_empty() { "(all)".to_string() } else { namespaces.join(",") },
        "starting controller"
    );
    let mut stores = Vec::new();
    let mut runs = Vec::new();
    for ns in scopes {
        let controller = Controller::new(
            api::<PostgresWriter>(client, ns),
            watcher::Config::default(),
        );
        // Ready once the controller's store holds the first full list.
        let store = controller.store();
        stores.push(store.clone());
        // Secrets: metadata only (the operator never holds their data), mapped
        // to the resources that reference them, so a rotation rolls the pods.
        let secrets = operator::controller::secret_mapper(store);
        let run = controller
            .owns(api::<Deployment>(client, ns), owned.clone())
            .owns(api::<Job>(client, ns), owned.clone())
            .owns(api::<ConfigMap>(client, ns), owned.clone())
            .owns(api::<Service>(client, ns), owned.clone())
            .owns(api::<PodDisruptionBudget>(client, ns), owned.clone())
            .watches(
                api::<PartialObjectMeta<Secret>>(client, ns),
                watcher::Config::default(),
                secrets,
            )
            .graceful_shutdown_on(halt.clone().cancelled_owned())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                    Err(error) => operator::controller::log_stream_error(&error),
                }
            });
        runs.push(run);
    }
    // Ready once every controller's store holds its first full list.
    let ready = metrics.clone();
    let synced = halt.clone();
    tokio::spawn(async move {
        for store in stores {
            // Polled again every second: the store's readiness is a oneshot
            // channel that wakes only its latest waiter, and the controller
            // waits on it too.
            loop {
                tokio::select! {
                    result = tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()) => match result {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => return,
                        Err(_) => continue,
                    },
                    _ = synced.cancelled() => return,
                }
            }
        }
        tracing::info!("PostgresWriter store synced; ready");
        ready.ready.store(true, Ordering::Relaxed);
    });
    futures::future::join_all(runs).await;
    tracing::info!("controller stopped");
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

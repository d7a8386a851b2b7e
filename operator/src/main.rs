//! The `postgres-writer-operator` binary: `run` the controller, or `crdgen`
//! to print the CRD that `crds/` holds.

use clap::{Parser, Subcommand};
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
use operator::metrics::Metrics;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
    /// Run the controller (one replica; see the Helm chart).
    Run {
        /// Port of /livez, /readyz and /metrics.
        #[arg(long, env = "OPERATOR_HTTP_PORT", default_value_t = 8081)]
        http_port: u16,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Wait after a failed migration Job before the next attempt, in seconds (doubles per attempt, up to 32×).
        #[arg(long, env = "MIGRATION_RETRY_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        migration_retry_seconds: u64,
        #[command(flatten)]
        telemetry: telemetry::TelemetryArgs,
    },
    /// Print the PostgresWriter CustomResourceDefinition as YAML.
    Crdgen,
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
        Command::Run {
            http_port,
            namespace,
            migration_retry_seconds,
            telemetry: telemetry_args,
        } => telemetry::run_main(
            &telemetry_args,
            "postgres-writer-operator",
            "info",
            async move {
                run(
                    http_port,
                    namespace,
                    Duration::from_secs(migration_retry_seconds),
                )
                .await
                .map(|()| ExitCode::SUCCESS)
            },
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

async fn run(
    http_port: u16,
    namespace: Option<String>,
    migration_retry: Duration,
) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", http_port)).await?;
    let app = operator::metrics::router(metrics.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // Not ready (and a clear log line every 10 s) until the CRD exists.
    let writers = api::<PostgresWriter>(&client, &namespace);
    while let Err(error) = check_crd(&writers).await {
        metrics.set_not_ready(&format!("{error:#}"));
        tracing::error!("{error:#}; retrying in 10 s");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
    metrics.set_not_ready("waiting for the PostgresWriter watch to sync");
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=postgres-writer-operator");
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone()).with_migration_retry(migration_retry),
    );
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "starting controller"
    );
    let controller = Controller::new(writers, watcher::Config::default());
    // Ready once the controller's store holds the first full list.
    let store = controller.store();
    // Secrets: metadata only (the operator never holds their data), mapped
    // to the resources that reference them, so a rotation rolls the pods.
    let secrets = operator::controller::secret_mapper(store.clone());
    let ready = metrics.clone();
    tokio::spawn(async move {
        // Polled again every second: the store's readiness is a oneshot
        // channel that wakes only its latest waiter, and the controller
        // waits on it too.
        loop {
            match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
        tracing::info!("PostgresWriter store synced; ready");
        ready.ready.store(true, Ordering::Relaxed);
    });
    controller
        .owns(api::<Deployment>(&client, &namespace), owned.clone())
        .owns(api::<Job>(&client, &namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
        .owns(api::<Service>(&client, &namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, &namespace), owned)
        .watches(
            api::<PartialObjectMeta<Secret>>(&client, &namespace),
            watcher::Config::default(),
            secrets,
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                Err(error) => {
                    tracing::warn!(error = %telemetry::ErrorChain(&error), "reconcile error")
                }
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}

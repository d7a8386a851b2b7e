//! The `postgres-writer-operator` binary: `run` the controller, or `crdgen`
//! to print the CRD that `crds/` holds.

use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use operator::controller::{error_policy, reconcile, Context};
use operator::crd::PostgresWriter;
use operator::metrics::Metrics;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
            telemetry: telemetry_args,
        } => telemetry::run_main(
            &telemetry_args,
            "postgres-writer-operator",
            "info",
            async move { run(http_port, namespace).await.map(|()| ExitCode::SUCCESS) },
        ),
    }
}

async fn run(http_port: u16, namespace: Option<String>) -> anyhow::Result<()> {
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
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=postgres-writer-operator");
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone()));
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "starting controller"
    );
    metrics.ready.store(true, Ordering::Relaxed);
    Controller::new(
        api::<PostgresWriter>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(api::<Deployment>(&client, &namespace), owned.clone())
    .owns(api::<Job>(&client, &namespace), owned.clone())
    .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
    .owns(api::<Service>(&client, &namespace), owned.clone())
    .owns(api::<PodDisruptionBudget>(&client, &namespace), owned)
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
            Err(error) => tracing::warn!(error = %telemetry::ErrorChain(&error), "reconcile error"),
        }
    })
    .await;
    tracing::info!("controller stopped");
    Ok(())
}

//! How the controllers run: one per watched namespace, over the custom
//! resource, the kinds it owns and Secrets (metadata only); ready once
//! their stores have synced; and how loud the errors of their streams are.

use super::{error_policy, reconcile, secret_mapper, Context, Error};
use crate::crd::PostgresWriter;
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the controller watches (list + watch): the custom resource, the
/// kinds it owns and Secrets (metadata only), as (API group, resource).
/// [`run`] builds the Controller from the same kinds; the chart's RBAC is
/// checked against this list and the requests the reconcile tests record.
pub const WATCHED: [(&str, &str); 7] = [
    ("pgwriter.io", "postgreswriters"),
    ("apps", "deployments"),
    ("batch", "jobs"),
    ("", "configmaps"),
    ("", "services"),
    ("policy", "poddisruptionbudgets"),
    ("", "secrets"),
];

/// Why the PostgresWriter API cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error(
        "the PostgresWriter CRD (postgreswriters.pgwriter.io) is not installed: \
         kubectl apply -f crds/postgreswriter.yaml (or install the Helm chart, which ships it)"
    )]
    NotInstalled,
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Lists PostgresWriters once: a 404 means the CRD is not installed.
async fn check_crd(api: &Api<PostgresWriter>) -> Result<(), CrdError> {
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(CrdError::NotInstalled),
        Err(e) => Err(e.into()),
    }
}

/// Not ready (and a clear log line every 10 s) until the CRD exists, probed
/// in `namespace` (all when None). False when `stop` came first.
pub async fn wait_for_crd(
    client: &Client,
    namespace: Option<&str>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> bool {
    let probe = api::<PostgresWriter>(client, namespace);
    while let Err(error) = check_crd(&probe).await {
        let error = telemetry::ErrorChain(&error).to_string();
        metrics.set_not_ready(&error);
        tracing::error!("{error}; retrying in 10 s");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.cancelled() => return false,
        }
    }
    true
}

/// The API of `K` in namespace `ns`, or in every namespace.
fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One controller per watched namespace (one for all when the list is
/// empty), so that the operator needs only the namespaced Roles; they run
/// until `halt`.
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>, halt: CancellationToken) {
    let client = &ctx.client;
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=postgres-writer-operator");
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
        let secrets = secret_mapper(store);
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
                    Err(error) => log_stream_error(&error),
                }
            });
        runs.push(run);
    }
    // Ready once every controller's store holds its first full list.
    let ready = ctx.metrics.clone();
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

/// The error type of the controller stream that [`run`] runs.
pub type StreamError = kube::runtime::controller::Error<Error, kube::runtime::watcher::Error>;

/// How loud an error of the controller stream is. A reconcile scheduled for
/// an object that is gone from the store is routine: after `kubectl delete`,
/// the garbage collection of its children triggers it two or three times.
/// Everything else is a warning.
pub fn stream_error_level<E, Q>(error: &kube::runtime::controller::Error<E, Q>) -> tracing::Level {
    match error {
        kube::runtime::controller::Error::ObjectNotFound(_) => tracing::Level::DEBUG,
        _ => tracing::Level::WARN,
    }
}

/// Logs one error of the controller stream at [`stream_error_level`].
pub fn log_stream_error(error: &StreamError) {
    if stream_error_level(error) == tracing::Level::DEBUG {
        tracing::debug!(error = %telemetry::ErrorChain(error), "reconcile skipped");
    } else {
        tracing::warn!(error = %telemetry::ErrorChain(error), "reconcile error");
    }
}

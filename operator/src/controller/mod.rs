//! The controller: `reconcile` computes the desired objects (pure functions in
//! [`crate::resources`]) and applies them with server-side apply; the status
//! and Kubernetes Events report what happened; `error_policy` backs off.
//!
//! - `migration`: the migration Jobs, their retries and schema reports;
//! - `workloads`: the Deployments, budgets and metrics Service;
//! - `secrets`: the Secret watch and the hash that rolls the pods;
//! - `pods`: why pods fail, as the kubelet reports it;
//! - `status`: conditions and phase, and the Degraded left by a failure;
//! - `events`: Kubernetes Events for transitions;
//! - `watches`: the controllers per namespace, readiness, stream errors.
//!
//! Rollout rule: the worker Deployment moves to a new image only after the
//! migration Job for that image has succeeded. Until then it keeps running
//! the image it has (replica and setting changes still roll out).
//!
//! Suspend: `spec.suspend` applies the Deployments with 0 replicas (the pods
//! drain as on any scale-down) and keeps everything else; spec.replicas is
//! untouched, so resuming restores it.
//!
//! Two replicas: only the holder of the leader Lease runs the controllers
//! ([`crate::leader`]); reconciles are idempotent besides.

mod conditions;
mod events;
mod migration;
mod pods;
mod secrets;
mod status;
mod watches;
mod workloads;

pub use conditions::{ConditionType, Phase, Reason};
pub use migration::{parse_schema_report, retry_delay, Migration};
pub use pods::pod_problems;
pub use secrets::{secret_mapper, writers_referencing};
pub use status::{condition, desired_status, failure_reason, status_patch, Observed};
pub use watches::{
    log_stream_error, run, stream_error_level, wait_for_crd, CrdError, StreamError, WATCHED,
};

use crate::crd::PostgresWriter;
use crate::metrics::Metrics;
use crate::resources::{self, Component};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "postgres-writer-operator";

/// What `reconcile` needs: the client, the event recorder and metrics.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for `error_policy`'s backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Wait after a failed migration attempt before the next one (doubles per attempt).
    pub migration_retry: Duration,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            migration_retry: DEFAULT_MIGRATION_RETRY,
        }
    }

    pub fn with_migration_retry(mut self, retry: Duration) -> Self {
        self.migration_retry = retry;
        self
    }
}

/// Default wait after a failed migration attempt before the next one.
pub const DEFAULT_MIGRATION_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error")]
    Kube(#[from] kube::Error),
    #[error("PostgresWriter {0} has no namespace")]
    NoNamespace(String),
}

fn object_key(cr: &PostgresWriter) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

/// Reconciles one `PostgresWriter` (idempotent). A failure is reported on
/// the resource itself (Degraded condition and a Warning Event) before
/// `error_policy` backs off.
#[tracing::instrument(skip_all, fields(name = %cr.name_any(), namespace = %cr.namespace().unwrap_or_default()))]
pub async fn reconcile(cr: Arc<PostgresWriter>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cr, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_ok());
    match &result {
        Ok(_) => {
            ctx.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&object_key(&cr));
        }
        Err(error) => status::report_failure(&cr, &ctx, error).await,
    }
    result
}

/// One reconcile: the ConfigMap, the migration Job, the workloads on the
/// image in effect, old Jobs removed; then the status, its Events and when
/// to look again.
async fn reconcile_inner(cr: &PostgresWriter, ctx: &Context) -> Result<Action, Error> {
    if cr.metadata.deletion_timestamp.is_some() {
        // Owned objects are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    let ns = cr
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cr.name_any()))?;
    let client = ctx.client.clone();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    apply(&config_maps, &resources::config_map(cr)).await?;
    let (versions, missing_secrets) = secrets::secret_versions(cr, &secrets).await?;
    let (migration, last_migration) = migration::ensure_migration(cr, ctx, &jobs, &pods).await?;

    let existing = deployments.get_opt(&resources::worker_name(cr)).await?;
    let image = match (
        &migration,
        existing.as_ref().and_then(workloads::deployment_image),
    ) {
        (Migration::Succeeded, _) => Some(cr.spec.image.clone()),
        // Hold the running image until the new one's migrations succeed.
        (_, running) => running,
    };
    let (worker, analytics) = match &image {
        Some(image) => {
            let (worker, analytics) =
                workloads::apply_workloads(cr, &client, image, existing.as_ref(), &versions)
                    .await?;
            (Some(worker), analytics)
        }
        None => (existing, None),
    };
    if migration == Migration::Succeeded {
        migration::remove_old_migration_jobs(cr, &jobs).await?;
    }
    let mut pod_failures =
        pods::component_problems(cr, &pods, worker.as_ref(), Component::Worker).await?;
    pod_failures.extend(
        pods::component_problems(cr, &pods, analytics.as_ref(), Component::Analytics).await?,
    );

    let old = cr.status.clone().unwrap_or_default();
    let status = desired_status(
        cr,
        &Observed {
            migration: &migration,
            last_migration: Some(last_migration),
            worker: worker.as_ref(),
            analytics: analytics.as_ref(),
            missing_secrets,
            pod_failures,
        },
        &old,
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if status != old {
        let api: Api<PostgresWriter> = Api::namespaced(client.clone(), &ns);
        api.patch_status(
            &cr.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status_patch(&status) })),
        )
        .await?;
    }
    events::publish_transitions(cr, ctx, &old, &status).await;
    let progressing =
        condition(&status, ConditionType::Progressing).is_some_and(|c| c.status == "True");
    Ok(Action::requeue(requeue_after(&migration, progressing)))
}

/// When to look again: at a failed migration's next attempt, soon while
/// rolling out, else every 5 minutes.
fn requeue_after(migration: &Migration, progressing: bool) -> Duration {
    match migration {
        Migration::Failed {
            retry_at: Some(at), ..
        } => Duration::try_from(at.0.duration_since(k8s_openapi::jiff::Timestamp::now()))
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
        _ if progressing => Duration::from_secs(10),
        _ => Duration::from_secs(300),
    }
}

/// Server-side apply, taking over fields another manager set.
async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Deletes an object if it exists.
async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Requeue with exponential backoff (5 s doubling to 5 min) per object.
pub fn error_policy(cr: Arc<PostgresWriter>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(object_key(&cr)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = Duration::from_secs(5)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(10)))
        .min(Duration::from_secs(300));
    tracing::warn!(name = %cr.name_any(), error = %telemetry::ErrorChain(error), failures, ?delay, "reconcile failed; backing off");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests;

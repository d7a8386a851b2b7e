//! The controller: `reconcile` computes the desired objects (pure functions in
//! [`crate::resources`]) and applies them with server-side apply; the status
//! and Kubernetes Events report what happened; `error_policy` backs off.
//!
//! Rollout rule: the worker Deployment moves to a new image only after the
//! migration Job for that image has succeeded. Until then it keeps running
//! the image it has (replica and setting changes still roll out).
//!
//! Single replica: the operator Deployment runs one replica with the Recreate
//! strategy (see the Helm chart); reconciles are idempotent, so a brief
//! overlap during a node failure is harmless.

use crate::crd::{PostgresWriter, PostgresWriterStatus};
use crate::metrics::Metrics;
use crate::resources::{self, Component};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the controller watches (list + watch): the custom resource and the
/// kinds it owns, as (API group, resource). `main.rs` builds the Controller
/// from the same kinds; the chart's RBAC is checked against this list and
/// the requests the reconcile tests record.
pub const WATCHED: [(&str, &str); 6] = [
    ("pgwriter.io", "postgreswriters"),
    ("apps", "deployments"),
    ("batch", "jobs"),
    ("", "configmaps"),
    ("", "services"),
    ("policy", "poddisruptionbudgets"),
];

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "postgres-writer-operator";

/// What `reconcile` needs: the client, the event recorder and metrics.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for `error_policy`'s backoff.
    pub failures: Mutex<HashMap<String, u32>>,
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error")]
    Kube(#[from] kube::Error),
    #[error("PostgresWriter {0} has no namespace")]
    NoNamespace(String),
}

/// State of the migration Job for spec.image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    Running,
    Succeeded,
    Failed(String),
}

impl Migration {
    pub fn of(job: &Job) -> Migration {
        let status = job.status.clone().unwrap_or_default();
        if status.succeeded.unwrap_or(0) > 0 {
            return Migration::Succeeded;
        }
        let failed = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True");
        match failed {
            Some(c) => Migration::Failed(format!(
                "{}: {}",
                c.reason.unwrap_or_else(|| "Failed".into()),
                c.message.unwrap_or_default()
            )),
            None => Migration::Running,
        }
    }
}

fn object_key(cr: &PostgresWriter) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

/// Reconciles one `PostgresWriter` (idempotent).
#[tracing::instrument(skip_all, fields(name = %cr.name_any(), namespace = %cr.namespace().unwrap_or_default()))]
pub async fn reconcile(cr: Arc<PostgresWriter>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cr, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_ok());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&object_key(&cr));
    }
    result
}

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

fn deployment_image(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

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
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);

    apply(&config_maps, &resources::config_map(cr)).await?;
    let job = apply(&jobs, &resources::migration_job(cr)).await?;
    let migration = Migration::of(&job);

    let existing = deployments.get_opt(&resources::worker_name(cr)).await?;
    let image = match (&migration, existing.as_ref().and_then(deployment_image)) {
        (Migration::Succeeded, _) => Some(cr.spec.image.clone()),
        // Hold the running image until the new one's migrations succeed.
        (_, running) => running,
    };
    let mut worker = existing;
    if let Some(image) = &image {
        worker = Some(apply(&deployments, &resources::worker_deployment(cr, image)).await?);
        if cr.spec.analytics.enabled {
            apply(&deployments, &resources::analytics_deployment(cr, image)).await?;
        } else {
            delete_if_present(&deployments, &resources::analytics_name(cr)).await?;
        }
        apply(&services, &resources::metrics_service(cr)).await?;
        apply(&budgets, &resources::pod_disruption_budget(cr)).await?;
    }
    if migration == Migration::Succeeded {
        remove_old_migration_jobs(cr, &jobs).await?;
    }

    let old = cr.status.clone().unwrap_or_default();
    let status = desired_status(
        cr,
        &migration,
        worker.as_ref(),
        &old,
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if status != old {
        let api: Api<PostgresWriter> = Api::namespaced(client.clone(), &ns);
        api.patch_status(
            &cr.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await?;
    }
    publish_transitions(cr, ctx, &old, &status).await;

    let progressing = condition(&status, "Progressing").is_some_and(|c| c.status == "True");
    Ok(Action::requeue(if progressing {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(300)
    }))
}

/// Jobs of earlier images are deleted once the current one has succeeded.
async fn remove_old_migration_jobs(
    cr: &PostgresWriter,
    jobs: &Api<Job>,
) -> Result<(), kube::Error> {
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={}",
        cr.name_any(),
        Component::Migration.as_str()
    );
    let current = resources::migration_job_name(cr);
    for job in jobs.list(&ListParams::default().labels(&selector)).await? {
        if job.name_any() != current {
            delete_if_present(jobs, &job.name_any()).await?;
        }
    }
    Ok(())
}

pub fn condition<'a>(status: &'a PostgresWriterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The status for what was observed (pure). A condition keeps its
/// lastTransitionTime while its status does not change.
pub fn desired_status(
    cr: &PostgresWriter,
    migration: &Migration,
    worker: Option<&Deployment>,
    old: &PostgresWriterStatus,
    now: Time,
) -> PostgresWriterStatus {
    let generation = cr.metadata.generation;
    let desired = cr.spec.replicas;
    let worker_status = worker.and_then(|d| d.status.clone()).unwrap_or_default();
    let running_image = worker.and_then(deployment_image);
    let on_spec_image = running_image.as_deref() == Some(cr.spec.image.as_str());
    let ready = worker_status.ready_replicas.unwrap_or(0);
    let updated = worker_status.updated_replicas.unwrap_or(0);
    let current = worker_status.replicas.unwrap_or(0);
    let rollout_done = on_spec_image
        && updated >= desired
        && ready >= desired
        && current == desired
        && worker_status.observed_generation >= worker.and_then(|d| d.metadata.generation);
    let stuck = worker_status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| {
            (c.type_ == "Progressing" && c.status == "False")
                || (c.type_ == "ReplicaFailure" && c.status == "True")
        });

    let mut conditions = Vec::new();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_string();
        let last_transition_time = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time,
        });
    };
    let image = &cr.spec.image;
    match migration {
        Migration::Succeeded => set(
            "Migrated",
            true,
            "MigrationSucceeded",
            format!("schema migrations of {image} applied"),
        ),
        Migration::Running => set(
            "Migrated",
            false,
            "MigrationRunning",
            format!("migration Job for {image} is running"),
        ),
        Migration::Failed(m) => set(
            "Migrated",
            false,
            "MigrationFailed",
            format!("migration Job for {image} failed: {m}"),
        ),
    }
    match (migration, &stuck) {
        (Migration::Failed(m), _) => set(
            "Degraded",
            true,
            "MigrationFailed",
            format!("workers stay on their current image: {m}"),
        ),
        (_, Some(c)) => set(
            "Degraded",
            true,
            "RolloutStuck",
            format!(
                "worker Deployment: {}",
                c.message.clone().unwrap_or_default()
            ),
        ),
        _ => set(
            "Degraded",
            false,
            "AsExpected",
            "no failure observed".to_string(),
        ),
    }
    match migration {
        Migration::Running => set(
            "Progressing",
            true,
            "MigrationRunning",
            format!("waiting for the migration of {image}"),
        ),
        _ if !rollout_done && !matches!(migration, Migration::Failed(_)) => set(
            "Progressing",
            true,
            "RollingOut",
            format!("{ready}/{desired} worker pods ready, {updated} updated"),
        ),
        _ => set(
            "Progressing",
            false,
            "RolloutComplete",
            format!("{ready}/{desired} worker pods ready"),
        ),
    }
    if rollout_done && *migration == Migration::Succeeded {
        set(
            "Ready",
            true,
            "AllReplicasReady",
            format!("{ready}/{desired} worker pods ready on {image}"),
        );
    } else if *migration != Migration::Succeeded {
        set(
            "Ready",
            false,
            "WaitingForMigration",
            format!("{ready}/{desired} worker pods ready; {image} not migrated yet"),
        );
    } else {
        set(
            "Ready",
            false,
            "ReplicasNotReady",
            format!("{ready}/{desired} worker pods ready on {image}"),
        );
    }

    PostgresWriterStatus {
        observed_generation: generation,
        conditions,
        replicas: current,
        ready_replicas: ready,
        selector: resources::worker_selector(cr),
        schema_version: match migration {
            Migration::Succeeded => Some(image.clone()),
            _ => old.schema_version.clone(),
        },
    }
}

/// Kubernetes Events for significant transitions (conditions that changed status or reason).
async fn publish_transitions(
    cr: &PostgresWriter,
    ctx: &Context,
    old: &PostgresWriterStatus,
    new: &PostgresWriterStatus,
) {
    let reference = cr.object_ref(&());
    for c in &new.conditions {
        let before = condition(old, &c.type_);
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let (type_, reason) = match (c.type_.as_str(), c.status.as_str(), c.reason.as_str()) {
            ("Migrated", "False", "MigrationRunning") => (EventType::Normal, "MigrationStarted"),
            ("Migrated", "True", _) => (EventType::Normal, "MigrationSucceeded"),
            ("Migrated", "False", "MigrationFailed") => (EventType::Warning, "MigrationFailed"),
            ("Degraded", "True", reason) => (EventType::Warning, reason),
            ("Ready", "True", _) => (EventType::Normal, "Ready"),
            _ => continue,
        };
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason, "could not publish event");
        }
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

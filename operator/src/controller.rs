//! The controller: `reconcile` computes the desired objects (pure functions in
//! [`crate::resources`]) and applies them with server-side apply; the status
//! and Kubernetes Events report what happened; `error_policy` backs off.
//!
//! Rollout rule: the worker Deployment moves to a new image only after the
//! migration Job for that image has succeeded. Until then it keeps running
//! the image it has (replica and setting changes still roll out).
//!
//! Migration Jobs are created, never updated: a Job's pod template is
//! immutable, so each template (image, pull policy, Secret references) has
//! its own Job, named by the template's hash. A failed Job is followed by a
//! new attempt after a backoff (`--migration-retry-seconds`, doubling per
//! attempt up to 32×), or at once when the spec changes the template; nobody
//! needs to delete a Job by hand. See docs/adr/0014.
//!
//! Secrets: the pods read the database and Redis URLs and CAs from Secrets;
//! the operator watches Secrets' metadata only (never their data), maps a
//! changed Secret to the resources that reference it, and puts a hash of
//! their resourceVersions on the pod templates, so a rotation rolls the pods
//! through the usual drain. A missing Secret is reported (Degraded,
//! `SecretMissing`) and does not roll the pods.
//!
//! Suspend: `spec.suspend` applies the Deployments with 0 replicas (the pods
//! drain as on any scale-down) and keeps everything else; spec.replicas is
//! untouched, so resuming restores it.
//!
//! Single replica: the operator Deployment runs one replica with the Recreate
//! strategy (see the Helm chart); reconciles are idempotent, so a brief
//! overlap during a node failure is harmless.

use crate::crd::{MigrationRecord, PostgresWriter, PostgresWriterStatus};
use crate::metrics::Metrics;
use crate::resources::{self, Component};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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

/// The resources to reconcile when a Secret changes: those in its
/// namespace that reference it (pure, over the controller's store).
pub fn writers_referencing(
    writers: &[Arc<PostgresWriter>],
    namespace: Option<&str>,
    secret: &str,
) -> Vec<ObjectRef<PostgresWriter>> {
    writers
        .iter()
        .filter(|cr| cr.namespace().as_deref() == namespace)
        .filter(|cr| {
            resources::all_referenced_secrets(cr)
                .iter()
                .any(|(_, name)| name == secret)
        })
        .map(|cr| ObjectRef::from_obj(&**cr))
        .collect()
}

/// Mapper for the metadata-only Secret watch (`Controller::watches`).
pub fn secret_mapper(
    store: Store<PostgresWriter>,
) -> impl Fn(PartialObjectMeta<Secret>) -> Vec<ObjectRef<PostgresWriter>> + Send + Sync + 'static {
    move |secret| {
        writers_referencing(
            &store.state(),
            secret.metadata.namespace.as_deref(),
            secret.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

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

/// State of the migration Job for spec.image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    Running,
    Succeeded,
    /// The Job failed: its reason, and when the next attempt starts.
    Failed {
        reason: String,
        retry_at: Option<Time>,
    },
}

impl Migration {
    /// The state of `job` alone (without the operator's retry schedule).
    pub fn of(job: &Job) -> Migration {
        match failed_condition(job) {
            _ if job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0 => {
                Migration::Succeeded
            }
            Some(c) => Migration::Failed {
                reason: format!(
                    "Job {} {}: {}",
                    job.name_any(),
                    c.reason.clone().unwrap_or_else(|| "Failed".into()),
                    c.message.clone().unwrap_or_default()
                ),
                retry_at: None,
            },
            None => Migration::Running,
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self, Migration::Failed { .. })
    }
}

fn failed_condition(job: &Job) -> Option<&k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
}

fn attempt_of(job: &Job) -> u32 {
    job.annotations()
        .get(resources::MIGRATION_ATTEMPT_ANNOTATION)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// Delay before attempt `next` after a failed attempt: the base doubling per
/// failed attempt, at most 32 times the base.
pub fn retry_delay(base: Duration, next: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(next.saturating_sub(1).min(5)))
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
        Err(error) => report_failure(&cr, &ctx, error).await,
    }
    result
}

/// Short reason of a failed reconcile: the API server's reason (Forbidden,
/// Invalid, Conflict, …) when it gave one.
pub fn failure_reason(error: &Error) -> String {
    match error {
        Error::Kube(kube::Error::Api(e)) if !e.reason.is_empty() => {
            format!("ReconcileFailed{}", e.reason)
        }
        _ => "ReconcileFailed".to_string(),
    }
}

/// Degraded=True with the error, and a Warning Event. Best effort: when
/// even the status write fails (e.g. no permission), it is logged.
async fn report_failure(cr: &PostgresWriter, ctx: &Context, error: &Error) {
    let Some(ns) = cr.namespace() else { return };
    let old = cr.status.clone().unwrap_or_default();
    let mut status = old.clone();
    // With its causes: the API server's own message is what a person needs.
    let message = telemetry::ErrorChain(error).to_string();
    let reason = failure_reason(error);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = condition(&old, "Degraded");
    let last_transition_time = previous
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    status.conditions.retain(|c| c.type_ != "Degraded");
    status.conditions.push(Condition {
        type_: "Degraded".to_string(),
        status: "True".to_string(),
        reason: reason.clone(),
        message: message.chars().take(1000).collect(),
        observed_generation: cr.metadata.generation,
        last_transition_time,
    });
    let unchanged = previous.is_some_and(|c| c.status == "True" && c.message == message);
    if !unchanged {
        let api: Api<PostgresWriter> = Api::namespaced(ctx.client.clone(), &ns);
        if let Err(e) = api
            .patch_status(
                &cr.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": { "conditions": status.conditions } })),
            )
            .await
        {
            tracing::warn!(error = %telemetry::ErrorChain(&e), "could not report the reconcile failure in the status");
        }
    }
    publish(ctx, cr, EventType::Warning, &reason, &message).await;
}

async fn publish(ctx: &Context, cr: &PostgresWriter, type_: EventType, reason: &str, note: &str) {
    publish_about(ctx, cr, type_, reason, note, None).await
}

/// The migration Job as an Event's related object: events about different
/// Jobs are then separate series (a series shows only its first note).
fn job_reference(cr: &PostgresWriter, job: &str) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("batch/v1".to_string()),
        kind: Some("Job".to_string()),
        name: Some(job.to_string()),
        namespace: cr.namespace(),
        ..Default::default()
    }
}

async fn publish_about(
    ctx: &Context,
    cr: &PostgresWriter,
    type_: EventType,
    reason: &str,
    note: &str,
    secondary: Option<k8s_openapi::api::core::v1::ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_string(),
        secondary,
    };
    if let Err(error) = ctx.recorder.publish(&event, &cr.object_ref(&())).await {
        tracing::warn!(error = %telemetry::ErrorChain(&error), reason, "could not publish event");
    }
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

/// Why the pods of a failed Job failed, e.g. `pod x: Error (exit code 1): …`.
async fn pod_failures(pods: &Api<Pod>, job: &str) -> Result<Vec<String>, kube::Error> {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let mut out = Vec::new();
    for pod in pods.list(&ListParams::default().labels(&selector)).await? {
        let status = pod.status.clone().unwrap_or_default();
        if status.phase.as_deref() != Some("Failed") {
            continue;
        }
        let terminated = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| c.state.and_then(|s| s.terminated));
        let why = match terminated {
            Some(t) => format!(
                "{} (exit code {}){}",
                t.reason.unwrap_or_else(|| "Terminated".into()),
                t.exit_code,
                t.message.map(|m| format!(": {m}")).unwrap_or_default()
            ),
            None => format!(
                "{}{}",
                status.reason.unwrap_or_else(|| "Failed".into()),
                status.message.map(|m| format!(": {m}")).unwrap_or_default()
            ),
        };
        out.push(format!("pod {}: {why}", pod.name_any()));
    }
    Ok(out)
}

/// Finds or starts the migration Job for the current template. Jobs are
/// created, never updated (their template is immutable); a failed attempt
/// is followed by a new one after [`retry_delay`], and a template change
/// (a fix in the spec) starts a new Job at once.
async fn ensure_migration(
    cr: &PostgresWriter,
    ctx: &Context,
    jobs: &Api<Job>,
    pods: &Api<Pod>,
) -> Result<(Migration, MigrationRecord), Error> {
    // The state with the Job it was read from, for status.lastMigration.
    let with_record = |job: &str, state: Migration, completion: Option<Time>| {
        let record = MigrationRecord {
            job_name: job.to_string(),
            image: cr.spec.image.clone(),
            result: match state {
                Migration::Running => "Running",
                Migration::Succeeded => "Succeeded",
                Migration::Failed { .. } => "Failed",
            }
            .to_string(),
            completion_time: completion,
            schema_version: None,
        };
        (state, record)
    };
    let selector = format!(
        "app.kubernetes.io/instance={},{}={}",
        cr.name_any(),
        resources::MIGRATION_TEMPLATE_LABEL,
        resources::migration_template_hash(cr)
    );
    let latest = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .max_by_key(attempt_of);
    let Some(job) = latest else {
        let job = resources::migration_job(cr, 0);
        create_job(jobs, &job).await?;
        return Ok(with_record(&job.name_any(), Migration::Running, None));
    };
    match Migration::of(&job) {
        Migration::Failed { mut reason, .. } => {
            let next = attempt_of(&job) + 1;
            let failed_at = failed_condition(&job)
                .and_then(|c| c.last_transition_time.clone())
                .map(|t| t.0)
                .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
            let delay = retry_delay(ctx.migration_retry, next);
            let retry_at = failed_at
                .checked_add(k8s_openapi::jiff::SignedDuration::try_from(delay).unwrap_or_default())
                .unwrap_or(failed_at);
            if k8s_openapi::jiff::Timestamp::now() >= retry_at {
                let retry = resources::migration_job(cr, next);
                create_job(jobs, &retry).await?;
                publish_about(
                    ctx,
                    cr,
                    EventType::Normal,
                    "MigrationRetried",
                    &format!(
                        "attempt {next} of the migration of {} after: {reason}",
                        cr.spec.image
                    ),
                    Some(job_reference(cr, &retry.name_any())),
                )
                .await;
                return Ok(with_record(&retry.name_any(), Migration::Running, None));
            }
            let pods = pod_failures(pods, &job.name_any()).await?;
            if !pods.is_empty() {
                reason = format!("{reason}; {}", pods.join("; "));
            }
            let state = Migration::Failed {
                reason,
                retry_at: Some(Time(retry_at)),
            };
            let completion = failed_condition(&job).and_then(|c| c.last_transition_time.clone());
            Ok(with_record(&job.name_any(), state, completion))
        }
        state => {
            let completion = job.status.as_ref().and_then(|s| s.completion_time.clone());
            let succeeded = state == Migration::Succeeded;
            let (state, mut record) = with_record(&job.name_any(), state, completion);
            if succeeded {
                record.schema_version = reported_schema_version(cr, pods, &record.job_name).await?;
            }
            Ok((state, record))
        }
    }
}

/// The schema version a succeeded migration Job reported: kept from the
/// status once read, else from its pod's termination message.
async fn reported_schema_version(
    cr: &PostgresWriter,
    pods: &Api<Pod>,
    job: &str,
) -> Result<Option<i64>, kube::Error> {
    let known = cr
        .status
        .as_ref()
        .and_then(|s| s.last_migration.as_ref())
        .filter(|m| m.job_name == job)
        .and_then(|m| m.schema_version);
    if known.is_some() {
        return Ok(known);
    }
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list.items.iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        if status.phase.as_deref() != Some("Succeeded") {
            return None;
        }
        status
            .container_statuses
            .as_ref()?
            .iter()
            .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.as_deref())
            .and_then(parse_schema_report)
    }))
}

/// `schema version N` (what `postgres-writer migrate` reports) → N.
pub fn parse_schema_report(message: &str) -> Option<i64> {
    message
        .trim()
        .strip_prefix("schema version ")?
        .parse()
        .ok()
        .filter(|v| *v > 0)
}

/// The resourceVersions of the Secrets the resource references (metadata
/// only: the operator never reads Secret data), and a message per missing one.
async fn secret_versions(
    cr: &PostgresWriter,
    secrets: &Api<Secret>,
) -> Result<(resources::SecretVersions, Vec<String>), kube::Error> {
    let mut versions = resources::SecretVersions::new();
    let mut missing = Vec::new();
    for (field, name) in resources::all_referenced_secrets(cr) {
        match secrets.get_metadata_opt(&name).await? {
            Some(meta) => {
                versions.insert(name, meta.metadata.resource_version.unwrap_or_default());
            }
            None => missing.push(format!("Secret {name} ({field}) not found")),
        }
    }
    Ok((versions, missing))
}

/// The pod template's current secrets hash of a Deployment (kept while a
/// Secret is missing).
fn current_secrets_hash(deployment: Option<&Deployment>) -> Option<String> {
    deployment?
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(resources::SECRETS_HASH_ANNOTATION)
        .cloned()
}

/// Container states that keep a pod from running, as the kubelet reports them.
const FAILING_WAITING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why pods are failing (pure): a container waiting for a failure reason
/// (with its last exit), an unschedulable pod, a failed pod.
pub fn pod_problems(pods: &[Pod]) -> Vec<String> {
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.name_any();
        let status = pod.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some("Failed") {
            out.push(format!(
                "pod {name}: {}{}",
                status.reason.clone().unwrap_or_else(|| "Failed".into()),
                status
                    .message
                    .clone()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
            continue;
        }
        if let Some(c) = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        }) {
            out.push(format!(
                "pod {name}: Unschedulable: {}",
                c.message.clone().unwrap_or_default()
            ));
            continue;
        }
        for c in status.container_statuses.iter().flatten() {
            let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.clone().unwrap_or_default();
            if !FAILING_WAITING_REASONS.contains(&reason.as_str()) {
                continue;
            }
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    format!(
                        " (last exit: {}, exit code {})",
                        t.reason.clone().unwrap_or_else(|| "Error".into()),
                        t.exit_code
                    )
                })
                .unwrap_or_default();
            out.push(format!(
                "pod {name}: {reason}{}{last}",
                waiting
                    .message
                    .clone()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// Pods of `component` that are not ready although they should be: their
/// problems, listed only while the Deployment is short of ready pods.
async fn component_problems(
    cr: &PostgresWriter,
    pods: &Api<Pod>,
    deployment: Option<&Deployment>,
    component: Component,
) -> Result<Vec<String>, kube::Error> {
    let Some(d) = deployment else {
        return Ok(Vec::new());
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if want == 0 || ready >= want {
        return Ok(Vec::new());
    }
    let selector = resources::selector_labels(cr, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(pod_problems(&list.items))
}

/// Creates a Job; one that exists already (a concurrent reconcile) is fine.
async fn create_job(jobs: &Api<Job>, job: &Job) -> Result<(), kube::Error> {
    match jobs.create(&PostParams::default(), job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    apply(&config_maps, &resources::config_map(cr)).await?;
    let (versions, missing_secrets) = secret_versions(cr, &secrets).await?;
    let (migration, last_migration) = ensure_migration(cr, ctx, &jobs, &pods).await?;

    let existing = deployments.get_opt(&resources::worker_name(cr)).await?;
    let image = match (&migration, existing.as_ref().and_then(deployment_image)) {
        (Migration::Succeeded, _) => Some(cr.spec.image.clone()),
        // Hold the running image until the new one's migrations succeed.
        (_, running) => running,
    };
    let mut worker = existing;
    let mut analytics = None;
    if let Some(image) = &image {
        // A missing Secret keeps the pods' current hash: rolling them onto
        // pods that cannot start would help nobody.
        let worker_hash = resources::secrets_hash(cr, Component::Worker, &versions)
            .or_else(|| current_secrets_hash(worker.as_ref()));
        worker = Some(
            apply(
                &deployments,
                &resources::worker_deployment(
                    cr,
                    resources::PodInputs {
                        image,
                        secrets_hash: worker_hash.as_deref(),
                    },
                ),
            )
            .await?,
        );
        apply(&budgets, &resources::pod_disruption_budget(cr)).await?;
        if cr.spec.analytics.enabled {
            let current = match resources::secrets_hash(cr, Component::Analytics, &versions) {
                Some(hash) => Some(hash),
                None => current_secrets_hash(
                    deployments
                        .get_opt(&resources::analytics_name(cr))
                        .await?
                        .as_ref(),
                ),
            };
            analytics = Some(
                apply(
                    &deployments,
                    &resources::analytics_deployment(
                        cr,
                        resources::PodInputs {
                            image,
                            secrets_hash: current.as_deref(),
                        },
                    ),
                )
                .await?,
            );
            apply(&budgets, &resources::analytics_disruption_budget(cr)).await?;
        } else {
            delete_if_present(&deployments, &resources::analytics_name(cr)).await?;
            delete_if_present(&budgets, &resources::analytics_name(cr)).await?;
        }
        apply(&services, &resources::metrics_service(cr)).await?;
    }
    if migration == Migration::Succeeded {
        remove_old_migration_jobs(cr, &jobs).await?;
    }
    let mut pod_failures =
        component_problems(cr, &pods, worker.as_ref(), Component::Worker).await?;
    pod_failures
        .extend(component_problems(cr, &pods, analytics.as_ref(), Component::Analytics).await?);

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
    publish_transitions(cr, ctx, &old, &status).await;

    let progressing = condition(&status, "Progressing").is_some_and(|c| c.status == "True");
    let wait = match &migration {
        Migration::Failed {
            retry_at: Some(at), ..
        } => Duration::try_from(at.0.duration_since(k8s_openapi::jiff::Timestamp::now()))
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
        _ if progressing => Duration::from_secs(10),
        _ => Duration::from_secs(300),
    };
    Ok(Action::requeue(wait))
}

/// Once the current template's migration has succeeded, every other
/// migration Job (earlier templates, failed attempts) is deleted.
async fn remove_old_migration_jobs(
    cr: &PostgresWriter,
    jobs: &Api<Job>,
) -> Result<(), kube::Error> {
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={}",
        cr.name_any(),
        Component::Migration.as_str()
    );
    let current = resources::migration_template_hash(cr);
    for job in jobs.list(&ListParams::default().labels(&selector)).await? {
        let same_template = job.labels().get(resources::MIGRATION_TEMPLATE_LABEL) == Some(&current);
        if !(same_template && Migration::of(&job) == Migration::Succeeded) {
            delete_if_present(jobs, &job.name_any()).await?;
        }
    }
    Ok(())
}

pub fn condition<'a>(status: &'a PostgresWriterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Rollout state of one Deployment against what the spec asks for.
struct Rollout {
    desired: i32,
    ready: i32,
    updated: i32,
    current: i32,
    done: bool,
    stuck: Option<String>,
}

impl Rollout {
    fn of(deployment: Option<&Deployment>, desired: i32, image: &str) -> Rollout {
        let status = deployment
            .and_then(|d| d.status.clone())
            .unwrap_or_default();
        let on_image = deployment.and_then(deployment_image).as_deref() == Some(image);
        let ready = status.ready_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let current = status.replicas.unwrap_or(0);
        let done = on_image
            && updated >= desired
            && ready >= desired
            && current == desired
            && status.observed_generation >= deployment.and_then(|d| d.metadata.generation);
        let stuck = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| {
                (c.type_ == "Progressing" && c.status == "False")
                    || (c.type_ == "ReplicaFailure" && c.status == "True")
            })
            .map(|c| c.message.unwrap_or_default());
        Rollout {
            desired,
            ready,
            updated,
            current,
            done,
            stuck,
        }
    }
}

/// What one reconcile observed, for [`desired_status`].
pub struct Observed<'a> {
    pub migration: &'a Migration,
    /// The latest migration Job of the current template.
    pub last_migration: Option<MigrationRecord>,
    pub worker: Option<&'a Deployment>,
    pub analytics: Option<&'a Deployment>,
    /// One message per referenced Secret that does not exist.
    pub missing_secrets: Vec<String>,
    /// Why worker or analytics pods fail (see [`pod_problems`]).
    pub pod_failures: Vec<String>,
}

/// The status for what was observed (pure). A condition keeps its
/// lastTransitionTime while its status does not change. Ready needs both
/// the worker and (when enabled) the analytics Deployment rolled out on
/// spec.image, and the resource not suspended. Every condition carries a
/// reason and a message, whether True or False.
pub fn desired_status(
    cr: &PostgresWriter,
    seen: &Observed,
    old: &PostgresWriterStatus,
    now: Time,
) -> PostgresWriterStatus {
    let migration = seen.migration;
    let generation = cr.metadata.generation;
    let image = &cr.spec.image;
    let suspended = cr.spec.suspend;
    let w = Rollout::of(
        seen.worker,
        resources::effective_replicas(cr, cr.spec.replicas),
        image,
    );
    let a = cr.spec.analytics.enabled.then(|| {
        Rollout::of(
            seen.analytics,
            resources::effective_replicas(cr, cr.spec.analytics.replicas),
            image,
        )
    });
    let rollout_done = w.done && a.as_ref().is_none_or(|a| a.done);
    let pods = match &a {
        Some(a) => format!(
            "{}/{} worker pods ready, {}/{} analytics pods ready",
            w.ready, w.desired, a.ready, a.desired
        ),
        None => format!("{}/{} worker pods ready", w.ready, w.desired),
    };
    let stuck = w
        .stuck
        .as_ref()
        .map(|m| format!("worker Deployment: {m}"))
        .or_else(|| {
            a.as_ref()
                .and_then(|a| a.stuck.as_ref())
                .map(|m| format!("analytics Deployment: {m}"))
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
            message: message.chars().take(1000).collect(),
            observed_generation: generation,
            last_transition_time,
        });
    };
    let retry = |retry_at: &Option<Time>| match retry_at {
        Some(t) => format!("; next attempt at {}", t.0),
        None => String::new(),
    };
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
        Migration::Failed { reason, retry_at } => set(
            "Migrated",
            false,
            "MigrationFailed",
            format!("migration of {image} failed: {reason}{}", retry(retry_at)),
        ),
    }
    match (migration, &stuck) {
        _ if !seen.missing_secrets.is_empty() => set(
            "Degraded",
            true,
            "SecretMissing",
            format!(
                "{}; pods that read it cannot start (the running ones keep running)",
                seen.missing_secrets.join("; ")
            ),
        ),
        (Migration::Failed { reason, retry_at }, _) => set(
            "Degraded",
            true,
            "MigrationFailed",
            format!(
                "workers stay on their current image: {reason}{}",
                retry(retry_at)
            ),
        ),
        _ if !seen.pod_failures.is_empty() => set(
            "Degraded",
            true,
            "PodsFailing",
            seen.pod_failures.join("; "),
        ),
        (_, Some(m)) => set("Degraded", true, "RolloutStuck", m.clone()),
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
        Migration::Failed { .. } => set(
            "Progressing",
            false,
            "MigrationFailed",
            format!("{image} is not rolled out: its migration failed"),
        ),
        Migration::Succeeded if !rollout_done => set(
            "Progressing",
            true,
            "RollingOut",
            format!("{pods}, {} worker pods updated", w.updated),
        ),
        Migration::Succeeded => set("Progressing", false, "RolloutComplete", pods.clone()),
    }
    if suspended {
        set(
            "Ready",
            false,
            "Suspended",
            format!(
                "suspended: worker and analytics pods scaled to 0 ({pods}); spec.replicas ({}) is restored on resume",
                cr.spec.replicas
            ),
        );
    } else if rollout_done {
        // On spec.image, so its migration has succeeded before (a new Job
        // for a changed pod template does not hold the pods back).
        set(
            "Ready",
            true,
            "AllReplicasReady",
            format!("{pods} on {image}"),
        );
    } else if *migration != Migration::Succeeded {
        set(
            "Ready",
            false,
            "WaitingForMigration",
            format!("{pods}; {image} not migrated yet"),
        );
    } else {
        set(
            "Ready",
            false,
            "ReplicasNotReady",
            format!("{pods} on {image}"),
        );
    }
    if suspended {
        set(
            "Suspended",
            true,
            "Suspended",
            format!(
                "spec.suspend is true: worker and analytics Deployments at 0 replicas ({} worker pods left)",
                w.current
            ),
        );
    } else {
        set(
            "Suspended",
            false,
            "NotSuspended",
            "spec.suspend is false".to_string(),
        );
    }

    let find = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    let degraded = find("Degraded").filter(|c| c.status == "True");
    let (phase, message) = if suspended {
        ("Suspended", find("Ready"))
    } else if find("Ready").is_some_and(|c| c.status == "True") {
        ("Ready", None)
    } else if migration.failed() {
        ("MigrationFailed", degraded)
    } else if degraded.is_some() {
        ("Degraded", degraded)
    } else if *migration == Migration::Running {
        ("Migrating", find("Progressing"))
    } else {
        ("RollingOut", find("Ready"))
    };
    // A short line for `kubectl get -o wide`; the conditions hold all of it.
    let message = message.map(|c| {
        let mut m: String = c.message.chars().take(160).collect();
        if m.len() < c.message.len() {
            m.push('…');
        }
        m
    });

    PostgresWriterStatus {
        observed_generation: generation,
        conditions,
        replicas: w.current,
        ready_replicas: w.ready,
        selector: resources::worker_selector(cr),
        schema_version: match seen.last_migration.as_ref() {
            Some(MigrationRecord {
                schema_version: Some(version),
                ..
            }) => Some(version.to_string()),
            _ => old.schema_version.clone(),
        },
        phase: Some(phase.to_string()),
        message,
        current_image: seen.worker.and_then(deployment_image),
        target_image: Some(image.clone()),
        last_migration: seen
            .last_migration
            .clone()
            .or_else(|| old.last_migration.clone()),
    }
}

/// The status as a merge patch: an absent optional field is sent as null,
/// so that a value it had before (e.g. the message of a phase now Ready) is
/// removed rather than kept.
pub fn status_patch(status: &PostgresWriterStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in [
            "observedGeneration",
            "schemaVersion",
            "phase",
            "message",
            "currentImage",
            "targetImage",
            "lastMigration",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
        if let Some(last) = map.get_mut("lastMigration").and_then(|v| v.as_object_mut()) {
            // A merge patch merges nested objects: a new Job's record must not
            // keep the previous Job's completion time or schema version.
            for key in ["completionTime", "schemaVersion"] {
                last.entry(key).or_insert(serde_json::Value::Null);
            }
        }
    }
    value
}

/// Kubernetes Events for significant transitions (conditions that changed status or reason).
async fn publish_transitions(
    cr: &PostgresWriter,
    ctx: &Context,
    old: &PostgresWriterStatus,
    new: &PostgresWriterStatus,
) {
    for c in &new.conditions {
        let before = condition(old, &c.type_);
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let (type_, reason) = match (c.type_.as_str(), c.status.as_str(), c.reason.as_str()) {
            ("Migrated", "False", "MigrationRunning") => (EventType::Normal, "MigrationStarted"),
            ("Migrated", "True", _) => (EventType::Normal, "MigrationSucceeded"),
            ("Migrated", "False", "MigrationFailed") => (EventType::Warning, "MigrationFailed"),
            // The Migrated transition above already says it.
            ("Degraded", "True", "MigrationFailed") => continue,
            ("Degraded", "True", reason) => (EventType::Warning, reason),
            ("Ready", "True", _) => (EventType::Normal, "Ready"),
            ("Suspended", "True", _) => (EventType::Normal, "Suspended"),
            // Not on creation: only a resume is worth an event.
            ("Suspended", "False", _) if before.is_some() => (EventType::Normal, "Resumed"),
            _ => continue,
        };
        let job = new
            .last_migration
            .as_ref()
            .filter(|_| c.type_ == "Migrated")
            .map(|m| job_reference(cr, &m.job_name));
        publish_about(ctx, cr, type_, reason, &c.message, job).await;
    }
}

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

#[cfg(test)]
mod tests;

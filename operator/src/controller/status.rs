//! The status: conditions, phase and the last migration, as a pure function
//! of what one reconcile observed ([`desired_status`]), and the Degraded
//! condition a failed reconcile leaves ([`report_failure`]).

use super::conditions::{ConditionType, Phase, Reason};
use super::events::publish;
use super::migration::Migration;
use super::workloads::deployment_image;
use super::{Context, Error};
use crate::crd::{MigrationRecord, PostgresWriter, PostgresWriterStatus};
use crate::resources;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

pub fn condition(status: &PostgresWriterStatus, type_: ConditionType) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == type_.as_str())
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
    /// Why worker or analytics pods fail (see [`super::pod_problems`]).
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
    let mut set = |type_: ConditionType, status: bool, reason: Reason, message: String| {
        let status = if status { "True" } else { "False" }.to_string();
        let last_transition_time = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_.as_str() && c.status == status)
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
            ConditionType::Migrated,
            true,
            Reason::MigrationSucceeded,
            format!("schema migrations of {image} applied"),
        ),
        Migration::Running => set(
            ConditionType::Migrated,
            false,
            Reason::MigrationRunning,
            format!("migration Job for {image} is running"),
        ),
        Migration::Failed { reason, retry_at } => set(
            ConditionType::Migrated,
            false,
            Reason::MigrationFailed,
            format!("migration of {image} failed: {reason}{}", retry(retry_at)),
        ),
    }
    match (migration, &stuck) {
        _ if !seen.missing_secrets.is_empty() => set(
            ConditionType::Degraded,
            true,
            Reason::SecretMissing,
            format!(
                "{}; pods that read it cannot start (the running ones keep running)",
                seen.missing_secrets.join("; ")
            ),
        ),
        (Migration::Failed { reason, retry_at }, _) => set(
            ConditionType::Degraded,
            true,
            Reason::MigrationFailed,
            format!(
                "workers stay on their current image: {reason}{}",
                retry(retry_at)
            ),
        ),
        _ if !seen.pod_failures.is_empty() => set(
            ConditionType::Degraded,
            true,
            Reason::PodsFailing,
            seen.pod_failures.join("; "),
        ),
        (_, Some(m)) => set(
            ConditionType::Degraded,
            true,
            Reason::RolloutStuck,
            m.clone(),
        ),
        _ => set(
            ConditionType::Degraded,
            false,
            Reason::AsExpected,
            "no failure observed".to_string(),
        ),
    }
    match migration {
        Migration::Running => set(
            ConditionType::Progressing,
            true,
            Reason::MigrationRunning,
            format!("waiting for the migration of {image}"),
        ),
        Migration::Failed { .. } => set(
            ConditionType::Progressing,
            false,
            Reason::MigrationFailed,
            format!("{image} is not rolled out: its migration failed"),
        ),
        Migration::Succeeded if !rollout_done => set(
            ConditionType::Progressing,
            true,
            Reason::RollingOut,
            format!("{pods}, {} worker pods updated", w.updated),
        ),
        Migration::Succeeded => set(
            ConditionType::Progressing,
            false,
            Reason::RolloutComplete,
            pods.clone(),
        ),
    }
    if suspended {
        set(ConditionType::Ready, false, Reason::Suspended,
            format!(
                "suspended: worker and analytics pods scaled to 0 ({pods}); spec.replicas ({}) is restored on resume",
                cr.spec.replicas
            ),
        );
    } else if rollout_done {
        // On spec.image, so its migration has succeeded before (a new Job
        // for a changed pod template does not hold the pods back).
        set(
            ConditionType::Ready,
            true,
            Reason::AllReplicasReady,
            format!("{pods} on {image}"),
        );
    } else if *migration != Migration::Succeeded {
        set(
            ConditionType::Ready,
            false,
            Reason::WaitingForMigration,
            format!("{pods}; {image} not migrated yet"),
        );
    } else {
        set(
            ConditionType::Ready,
            false,
            Reason::ReplicasNotReady,
            format!("{pods} on {image}"),
        );
    }
    if suspended {
        set(ConditionType::Suspended, true, Reason::Suspended,
            format!(
                "spec.suspend is true: worker and analytics Deployments at 0 replicas ({} worker pods left)",
                w.current
            ),
        );
    } else {
        set(
            ConditionType::Suspended,
            false,
            Reason::NotSuspended,
            "spec.suspend is false".to_string(),
        );
    }

    let find = |type_: ConditionType| conditions.iter().find(|c| c.type_ == type_.as_str());
    let degraded = find(ConditionType::Degraded).filter(|c| c.status == "True");
    let (phase, message) = if suspended {
        (Phase::Suspended, find(ConditionType::Ready))
    } else if find(ConditionType::Ready).is_some_and(|c| c.status == "True") {
        (Phase::Ready, None)
    } else if migration.failed() {
        (Phase::MigrationFailed, degraded)
    } else if degraded.is_some() {
        (Phase::Degraded, degraded)
    } else if *migration == Migration::Running {
        (Phase::Migrating, find(ConditionType::Progressing))
    } else {
        (Phase::RollingOut, find(ConditionType::Ready))
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

/// Short reason of a failed reconcile: the API server's reason (Forbidden,
/// Invalid, Conflict, …) when it gave one.
pub fn failure_reason(error: &Error) -> String {
    match error {
        Error::Kube(kube::Error::Api(e)) if !e.reason.is_empty() => {
            format!("{}{}", Reason::ReconcileFailed, e.reason)
        }
        _ => Reason::ReconcileFailed.to_string(),
    }
}

/// Degraded=True with the error, and a Warning Event. Best effort: when
/// even the status write fails (e.g. no permission), it is logged.
pub(super) async fn report_failure(cr: &PostgresWriter, ctx: &Context, error: &Error) {
    let Some(ns) = cr.namespace() else { return };
    let old = cr.status.clone().unwrap_or_default();
    let mut status = old.clone();
    // With its causes: the API server's own message is what a person needs.
    let message = telemetry::ErrorChain(error).to_string();
    let reason = failure_reason(error);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = condition(&old, ConditionType::Degraded);
    let last_transition_time = previous
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    status
        .conditions
        .retain(|c| c.type_ != ConditionType::Degraded.as_str());
    status.conditions.push(Condition {
        type_: ConditionType::Degraded.to_string(),
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

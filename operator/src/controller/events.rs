//! Kubernetes Events on the resource: significant transitions of its
//! conditions, migration retries and failed reconciles.

use super::conditions::ConditionType::{self, Degraded, Migrated, Ready, Suspended};
use super::conditions::Reason;
use super::status::condition;
use super::Context;
use crate::crd::{PostgresWriter, PostgresWriterStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

/// An Event about the resource.
pub(super) async fn publish(
    ctx: &Context,
    cr: &PostgresWriter,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    publish_about(ctx, cr, type_, reason, note, None).await
}

/// The migration Job as an Event's related object: events about different
/// Jobs are then separate series (a series shows only its first note).
pub(super) fn job_reference(cr: &PostgresWriter, job: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".to_string()),
        kind: Some("Job".to_string()),
        name: Some(job.to_string()),
        namespace: cr.namespace(),
        ..Default::default()
    }
}

/// An Event about the resource, optionally related to another object.
pub(super) async fn publish_about(
    ctx: &Context,
    cr: &PostgresWriter,
    type_: EventType,
    reason: &str,
    note: &str,
    secondary: Option<ObjectReference>,
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

/// Kubernetes Events for significant transitions (conditions that changed status or reason).
pub(super) async fn publish_transitions(
    cr: &PostgresWriter,
    ctx: &Context,
    old: &PostgresWriterStatus,
    new: &PostgresWriterStatus,
) {
    for c in &new.conditions {
        let Some(kind) = ConditionType::parse(&c.type_) else {
            continue;
        };
        let before = condition(old, kind);
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let (type_, reason) = match (kind, c.status.as_str(), Reason::parse(&c.reason)) {
            (Migrated, "False", Some(Reason::MigrationRunning)) => {
                (EventType::Normal, Reason::MigrationStarted.as_str())
            }
            (Migrated, "True", _) => (EventType::Normal, Reason::MigrationSucceeded.as_str()),
            (Migrated, "False", Some(Reason::MigrationFailed)) => {
                (EventType::Warning, Reason::MigrationFailed.as_str())
            }
            // The Migrated transition above already says it.
            (Degraded, "True", Some(Reason::MigrationFailed)) => continue,
            (Degraded, "True", _) => (EventType::Warning, c.reason.as_str()),
            (Ready, "True", _) => (EventType::Normal, Reason::Ready.as_str()),
            (Suspended, "True", _) => (EventType::Normal, Reason::Suspended.as_str()),
            // Not on creation: only a resume is worth an event.
            (Suspended, "False", _) if before.is_some() => {
                (EventType::Normal, Reason::Resumed.as_str())
            }
            _ => continue,
        };
        let job = new
            .last_migration
            .as_ref()
            .filter(|_| kind == Migrated)
            .map(|m| job_reference(cr, &m.job_name));
        publish_about(ctx, cr, type_, reason, &c.message, job).await;
    }
}

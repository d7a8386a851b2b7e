//! The migration Job: `postgres-writer migrate` for spec.image, one Job per
//! pod template and attempt (a Job's template is immutable).

use super::pod::{
    apply_pod_options, env, non_empty, pod_options, pod_security_context,
    restricted_security_context,
};
use super::secrets::ca_files;
use super::{labels, metadata, short_hash, Component};
use crate::crd::PostgresWriter;
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Label on migration Jobs: the hash of their pod template (image, pull
/// policy, Secret references), see [`migration_template_hash`].
pub const MIGRATION_TEMPLATE_LABEL: &str = "pgwriter.io/migration-template";

/// Annotation on migration Jobs: the attempt number for their template (0, 1, …).
pub const MIGRATION_ATTEMPT_ANNOTATION: &str = "pgwriter.io/migration-attempt";

/// Hash of the migration pod template. A Job's template is immutable, so
/// the operator never updates a Job: a template change (image, pull policy,
/// database or Redis Secret reference) gets a new Job under a new name.
pub fn migration_template_hash(cr: &PostgresWriter) -> String {
    let template = serde_json::to_string(&migration_pod_template(cr)).unwrap_or_default();
    short_hash(&template)
}

/// The migration Job's name for `attempt` of the current template: attempt 0
/// is `<name>-migrate-<template hash>`; retries hash the attempt in too, so
/// every name has the same length.
pub fn migration_job_name(cr: &PostgresWriter, attempt: u32) -> String {
    let template = migration_template_hash(cr);
    let suffix = match attempt {
        0 => template,
        n => short_hash(&format!("{template}/{n}")),
    };
    format!("{}-migrate-{suffix}", cr.name_any())
}

/// Where the migration container reports the schema version it applied.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// The migration pod: `postgres-writer migrate` with spec.image, placed by
/// `spec.pods` and `spec.migration.pods`. Its placement is part of the
/// template hash, so a placement change starts a new Job at once (which
/// also fixes a Job that a quota or a node selector left unscheduled).
fn migration_pod_template(cr: &PostgresWriter) -> PodTemplateSpec {
    let (env_from, mut env) = env(cr, Component::Migration);
    env.push(EnvVar {
        name: settings::TERMINATION_MESSAGE_PATH.env.to_string(),
        value: Some(TERMINATION_MESSAGE_PATH.to_string()),
        ..Default::default()
    });
    let (volumes, mounts, ca_env) = ca_files(cr, Component::Migration);
    env.extend(ca_env);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(cr, Component::Migration)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_string()),
            containers: vec![Container {
                name: "migrate".to_string(),
                image: Some(cr.spec.image.clone()),
                image_pull_policy: Some(cr.spec.image_pull_policy.as_str().to_string()),
                args: Some(vec!["migrate".to_string()]),
                env_from: Some(env_from),
                env: Some(env),
                // `migrate` writes `schema version N` here on success; on
                // failure the kubelet takes the log's tail instead, so the
                // status and events show the error itself.
                termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_string()),
                termination_message_policy: Some("FallbackToLogsOnError".to_string()),
                security_context: Some(restricted_security_context()),
                volume_mounts: non_empty(mounts),
                resources: cr.spec.migration.resources.clone(),
                ..Default::default()
            }],
            security_context: Some(pod_security_context()),
            volumes: non_empty(volumes),
            ..Default::default()
        }),
    };
    apply_pod_options(&mut template, &pod_options(cr, Component::Migration));
    template
}

/// Attempt `attempt` of the migration Job for the current template. A
/// non-zero exit of `migrate` fails the Job at once (the operator retries
/// with its own backoff and reports why); a pod lost to a disruption is
/// replaced and not counted.
pub fn migration_job(cr: &PostgresWriter, attempt: u32) -> Job {
    let mut meta = metadata(cr, migration_job_name(cr, attempt), Component::Migration);
    meta.labels.get_or_insert_with(BTreeMap::new).insert(
        MIGRATION_TEMPLATE_LABEL.to_string(),
        migration_template_hash(cr),
    );
    meta.annotations = Some(BTreeMap::from([(
        MIGRATION_ATTEMPT_ANNOTATION.to_string(),
        attempt.to_string(),
    )]));
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            active_deadline_seconds: Some(1800),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![
                    PodFailurePolicyRule {
                        action: "Ignore".to_string(),
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".to_string(),
                            status: "True".to_string(),
                        }]),
                        ..Default::default()
                    },
                    PodFailurePolicyRule {
                        action: "FailJob".to_string(),
                        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                            container_name: Some("migrate".to_string()),
                            operator: "NotIn".to_string(),
                            values: vec![0],
                        }),
                        ..Default::default()
                    },
                ],
            }),
            template: migration_pod_template(cr),
            ..Default::default()
        }),
        ..Default::default()
    }
}

//! Migration Jobs. They are created, never updated: a Job's pod template is
//! immutable, so each template (image, pull policy, Secret references) has
//! its own Job, named by the template's hash. A failed Job is followed by a
//! new attempt after a backoff (`--migration-retry-seconds`, doubling per
//! attempt up to 32×), or at once when the spec changes the template; nobody
//! needs to delete a Job by hand. See docs/adr/0014.

use super::conditions::Reason;
use super::events::{job_reference, publish_about};
use super::{delete_if_present, Context, Error};
use crate::crd::{MigrationRecord, PostgresWriter};
use crate::resources::{self, Component};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use std::time::Duration;

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

/// Finds or starts the migration Job for the current template. Jobs are
/// created, never updated (their template is immutable); a failed attempt
/// is followed by a new one after [`retry_delay`], and a template change
/// (a fix in the spec) starts a new Job at once.
pub(super) async fn ensure_migration(
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
                    Reason::MigrationRetried.as_str(),
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

/// Creates a Job; one that exists already (a concurrent reconcile) is fine.
async fn create_job(jobs: &Api<Job>, job: &Job) -> Result<(), kube::Error> {
    match jobs.create(&PostParams::default(), job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Once the current template's migration has succeeded, every other
/// migration Job (earlier templates, failed attempts) is deleted.
pub(super) async fn remove_old_migration_jobs(
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

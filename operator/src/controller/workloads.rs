//! The long-running pods' objects: the worker and analytics Deployments,
//! their PodDisruptionBudgets and the metrics Service, on the image in
//! effect (which lags behind spec.image until its migration succeeded).

use super::secrets::current_secrets_hash;
use super::{apply, delete_if_present};
use crate::crd::PostgresWriter;
use crate::resources::{self, Component, SecretVersions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Api, Client, ResourceExt};

/// The image of a Deployment's container (the one it runs or rolls out to).
pub(super) fn deployment_image(deployment: &Deployment) -> Option<String> {
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

/// Applies the worker Deployment on `image` with its budget, the analytics
/// Deployment with its budget (or deletes both when analytics is disabled)
/// and the metrics Service; returns the Deployments as applied. `worker` is
/// the worker Deployment as it is now.
pub(super) async fn apply_workloads(
    cr: &PostgresWriter,
    client: &Client,
    image: &str,
    worker: Option<&Deployment>,
    versions: &SecretVersions,
) -> Result<(Deployment, Option<Deployment>), kube::Error> {
    let ns = cr.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    // A missing Secret keeps the pods' current hash: rolling them onto
    // pods that cannot start would help nobody.
    let worker_hash = resources::secrets_hash(cr, Component::Worker, versions)
        .or_else(|| current_secrets_hash(worker));
    let worker = apply(
        &deployments,
        &resources::worker_deployment(
            cr,
            resources::PodInputs {
                image,
                secrets_hash: worker_hash.as_deref(),
            },
        ),
    )
    .await?;
    apply(&budgets, &resources::pod_disruption_budget(cr)).await?;
    let mut analytics = None;
    if cr.spec.analytics.enabled {
        let current = match resources::secrets_hash(cr, Component::Analytics, versions) {
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
    Ok((worker, analytics))
}

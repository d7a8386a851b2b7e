//! The worker and analytics Deployments.

use super::pod::{long_running_pod, PodInputs};
use super::{analytics_name, metadata, selector_labels, worker_name, Component};
use crate::crd::PostgresWriter;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Replicas of a Deployment: 0 while suspended (spec.replicas is kept).
pub fn effective_replicas(cr: &PostgresWriter, replicas: i32) -> i32 {
    if cr.spec.suspend {
        0
    } else {
        replicas
    }
}

fn deployment(
    cr: &PostgresWriter,
    name: String,
    component: Component,
    replicas: i32,
    inputs: PodInputs,
) -> Deployment {
    Deployment {
        metadata: metadata(cr, name, component),
        spec: Some(DeploymentSpec {
            replicas: Some(effective_replicas(cr, replicas)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cr, component)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: long_running_pod(cr, component, inputs.image, inputs.secrets_hash),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The worker Deployment running `image` (which may lag behind spec.image
/// while its migration Job has not succeeded).
pub fn worker_deployment(cr: &PostgresWriter, inputs: PodInputs) -> Deployment {
    deployment(
        cr,
        worker_name(cr),
        Component::Worker,
        cr.spec.replicas,
        inputs,
    )
}

pub fn analytics_deployment(cr: &PostgresWriter, inputs: PodInputs) -> Deployment {
    deployment(
        cr,
        analytics_name(cr),
        Component::Analytics,
        cr.spec.analytics.replicas,
        inputs,
    )
}

//! The PodDisruptionBudgets of the worker and analytics pods.

use super::{analytics_name, metadata, selector_labels, worker_name, Component};
use crate::crd::PostgresWriter;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// At most one pod of `component` voluntarily down at a time.
fn budget(cr: &PostgresWriter, name: String, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(cr, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cr, component)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// At most one worker pod voluntarily down at a time.
pub fn pod_disruption_budget(cr: &PostgresWriter) -> PodDisruptionBudget {
    budget(cr, worker_name(cr), Component::Worker)
}

/// At most one analytics pod voluntarily down at a time.
pub fn analytics_disruption_budget(cr: &PostgresWriter) -> PodDisruptionBudget {
    budget(cr, analytics_name(cr), Component::Analytics)
}

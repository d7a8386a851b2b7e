//! Desired objects, as pure functions of a `PostgresWriter`. The controller
//! applies them with server-side apply; every object carries a controller
//! owner reference to the resource, so deleting it garbage-collects them.
//!
//! One module per kind, as CloudNativePG's `pkg/specs`: `configmap`,
//! `deployment`, `job` (migration), `service` (metrics), `pdb`; `pod` holds
//! the pod templates they share and `secrets` the Secrets the pods read.
//! Here: the objects' names, labels and metadata. Every public item is
//! re-exported, so callers name `resources::…` whatever file it is in.

mod configmap;
mod deployment;
mod job;
mod pdb;
mod pod;
mod secrets;
mod service;

pub use configmap::*;
pub use deployment::*;
pub use job::*;
pub use pdb::*;
pub use pod::*;
pub use secrets::*;
pub use service::*;

use crate::crd::PostgresWriter;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Roles of the objects the operator manages (label `app.kubernetes.io/component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Worker,
    Analytics,
    Migration,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Worker => "worker",
            Component::Analytics => "analytics",
            Component::Migration => "migration",
        }
    }
}

/// Names of the managed objects.
pub fn worker_name(cr: &PostgresWriter) -> String {
    format!("{}-worker", cr.name_any())
}

pub fn analytics_name(cr: &PostgresWriter) -> String {
    format!("{}-analytics", cr.name_any())
}

/// Longest resource name: the longest derived name, `<name>-migrate-<10 hex>`,
/// must fit in a label value (63), as the Job controller labels its pods
/// with the Job name. The CRD refuses longer names.
pub const MAX_NAME_LENGTH: usize = 63 - "-migrate-".len() - 10;

/// 10 hex digits of keccak256: stable across builds (unlike std's hasher).
pub fn short_hash(text: &str) -> String {
    use tiny_keccak::{Hasher, Keccak};
    let mut hasher = Keccak::v256();
    hasher.update(text.as_bytes());
    let mut out = [0u8; 32];
    hasher.finalize(&mut out);
    out[..5].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn labels(cr: &PostgresWriter, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "postgres-writer".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), cr.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            component.as_str().to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "postgres-writer-operator".to_string(),
        ),
    ])
}

/// Labels that select a component's pods (a subset of `labels`, stable across upgrades).
pub fn selector_labels(cr: &PostgresWriter, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), cr.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            component.as_str().to_string(),
        ),
    ])
}

/// The worker pods' selector as a string (status.selector, for `kubectl scale` and HPAs).
pub fn worker_selector(cr: &PostgresWriter) -> String {
    selector_labels(cr, Component::Worker)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner(cr: &PostgresWriter) -> OwnerReference {
    cr.controller_owner_ref(&())
        .expect("PostgresWriter from the API has a name and uid")
}

fn metadata(cr: &PostgresWriter, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cr.namespace(),
        labels: Some(labels(cr, component)),
        owner_references: Some(vec![owner(cr)]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

//! Secrets: the pods read the database and Redis URLs and CAs from Secrets;
//! the operator watches Secrets' metadata only (never their data), maps a
//! changed Secret to the resources that reference it, and puts a hash of
//! their resourceVersions on the pod templates, so a rotation rolls the pods
//! through the usual drain. A missing Secret is reported (Degraded,
//! `SecretMissing`) and does not roll the pods.

use crate::crd::PostgresWriter;
use crate::resources;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use std::sync::Arc;

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

/// The resourceVersions of the Secrets the resource references (metadata
/// only: the operator never reads Secret data), and a message per missing one.
pub(super) async fn secret_versions(
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
pub(super) fn current_secrets_hash(deployment: Option<&Deployment>) -> Option<String> {
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

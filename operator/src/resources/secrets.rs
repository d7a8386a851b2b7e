//! The Secrets the pods read: which ones, the hash of their
//! resourceVersions on the pod templates (a rotation rolls the pods), and
//! how a pod gets them (environment by reference, CA files mounted).

use super::{short_hash, Component};
use crate::crd::PostgresWriter;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use std::collections::BTreeMap;

/// Annotation on worker and analytics pod templates: a hash of the
/// resourceVersions of the Secrets the pods read, so that rotating a
/// Secret rolls the pods (through the usual drain).
pub const SECRETS_HASH_ANNOTATION: &str = "pgwriter.io/secrets-hash";

/// Where the CA Secrets are mounted (one directory per service, file `ca.crt`).
pub const TLS_MOUNT_ROOT: &str = "/etc/postgres-writer/tls";

/// The Secrets the pods of `component` read, as (field of the spec, Secret
/// name), in a stable order: these are watched, and their resourceVersions
/// hashed into [`SECRETS_HASH_ANNOTATION`].
pub fn referenced_secrets(
    cr: &PostgresWriter,
    component: Component,
) -> Vec<(&'static str, String)> {
    let spec = &cr.spec;
    let mut out = vec![(
        "spec.database.urlSecretRef",
        spec.database.url_secret_ref.name.clone(),
    )];
    if let Some(s) = &spec.redis.url_secret_ref {
        out.push(("spec.redis.urlSecretRef", s.name.clone()));
    }
    if let Some(s) = &spec.database.ca_secret_ref {
        out.push(("spec.database.caSecretRef", s.name.clone()));
    }
    if let (Some(s), Component::Worker) = (&spec.redis.ca_secret_ref, component) {
        out.push(("spec.redis.caSecretRef", s.name.clone()));
    }
    out
}

/// Every Secret the resource references (any component), deduplicated.
pub fn all_referenced_secrets(cr: &PostgresWriter) -> Vec<(&'static str, String)> {
    let mut out = referenced_secrets(cr, Component::Worker);
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|(_, name)| seen.insert(name.clone()));
    out
}

/// The Secrets' resourceVersions the operator observed (name -> version;
/// a missing Secret is absent).
pub type SecretVersions = BTreeMap<String, String>;

/// Hash of the resourceVersions of the Secrets `component` reads, or None
/// when one of them is missing (the caller then keeps the pods' current
/// hash rather than rolling them onto pods that cannot start).
pub fn secrets_hash(
    cr: &PostgresWriter,
    component: Component,
    versions: &SecretVersions,
) -> Option<String> {
    let mut text = String::new();
    for (_, name) in referenced_secrets(cr, component) {
        let version = versions.get(&name)?;
        text.push_str(&format!("{name}={version}\n"));
    }
    Some(short_hash(&text))
}

/// An environment variable from a Secret's key (the pod does not start
/// without it).
pub(super) fn secret_env(name: &str, secret: &crate::crd::SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The CA Secrets a pod of `component` reads: the database CA in every pod,
/// the Redis CA in worker pods (the only ones that talk to Redis). Each is
/// mounted read-only and its path passed in the worker's setting.
pub fn ca_files(
    cr: &PostgresWriter,
    component: Component,
) -> (Vec<Volume>, Vec<VolumeMount>, Vec<EnvVar>) {
    let mut cas = Vec::new();
    if let Some(secret) = &cr.spec.database.ca_secret_ref {
        cas.push(("database-ca", settings::DATABASE_CA_FILE.env, secret));
    }
    if let (Some(secret), Component::Worker) = (&cr.spec.redis.ca_secret_ref, component) {
        cas.push(("redis-ca", settings::REDIS_CA_FILE.env, secret));
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    for (name, variable, secret) in cas {
        let dir = format!("{TLS_MOUNT_ROOT}/{name}");
        volumes.push(Volume {
            name: name.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: "ca.crt".to_string(),
                    mode: None,
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: name.to_string(),
            mount_path: dir.clone(),
            read_only: Some(true),
            ..Default::default()
        });
        env.push(EnvVar {
            name: variable.to_string(),
            value: Some(format!("{dir}/ca.crt")),
            ..Default::default()
        });
    }
    (volumes, mounts, env)
}

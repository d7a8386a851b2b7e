//! Desired objects, as pure functions of a `PostgresWriter`. The controller
//! applies them with server-side apply; every object carries a controller
//! owner reference to the resource, so deleting it garbage-collects them.

use crate::crd::{
    PodOptions, PostgresWriter, PostgresWriterSpec, RESERVED_ANNOTATIONS, RESERVED_LABELS,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Port of the worker's HTTP server (health, metrics, drain).
pub const HTTP_PORT: i32 = 8080;
/// Annotation on pod templates: changes when the ConfigMap does, so that a
/// settings change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "pgwriter.io/config-hash";
/// Annotation on worker and analytics pod templates: a hash of the
/// resourceVersions of the Secrets the pods read, so that rotating a
/// Secret rolls the pods (through the usual drain).
pub const SECRETS_HASH_ANNOTATION: &str = "pgwriter.io/secrets-hash";
/// Extra time after the drain timeout before the kubelet kills a pod.
pub const GRACE_MARGIN_SECONDS: i64 = 15;
/// Where the CA Secrets are mounted (one directory per service, file `ca.crt`).
pub const TLS_MOUNT_ROOT: &str = "/etc/postgres-writer/tls";

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
pub fn config_name(cr: &PostgresWriter) -> String {
    format!("{}-config", cr.name_any())
}
pub fn metrics_service_name(cr: &PostgresWriter) -> String {
    format!("{}-metrics", cr.name_any())
}
/// Label on migration Jobs: the hash of their pod template (image, pull
/// policy, Secret references), see [`migration_template_hash`].
pub const MIGRATION_TEMPLATE_LABEL: &str = "pgwriter.io/migration-template";
/// Annotation on migration Jobs: the attempt number for their template (0, 1, …).
pub const MIGRATION_ATTEMPT_ANNOTATION: &str = "pgwriter.io/migration-attempt";
/// Label on the pods the metrics Service selects (worker and analytics, never migration pods).
pub const METRICS_LABEL: &str = "pgwriter.io/metrics";

/// Longest resource name: the longest derived name, `<name>-migrate-<10 hex>`,
/// must fit in a label value (63), as the Job controller labels its pods
/// with the Job name. The CRD refuses longer names.
pub const MAX_NAME_LENGTH: usize = 63 - "-migrate-".len() - 10;

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

/// Non-secret settings shared by worker and analytics pods (contract §5 names).
pub fn config_data(spec: &PostgresWriterSpec) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        (
            settings::REDIS_STREAMS.env.to_string(),
            spec.streams.join(","),
        ),
        (
            settings::CONSUMER_GROUP.env.to_string(),
            spec.consumer_group.clone(),
        ),
        (
            settings::BATCH_SIZE.env.to_string(),
            spec.batch.size.to_string(),
        ),
        (
            settings::BATCH_TIMEOUT_MS.env.to_string(),
            spec.batch.timeout_ms.to_string(),
        ),
        (
            settings::CLAIM_IDLE_MS.env.to_string(),
            spec.claim_idle_ms.to_string(),
        ),
        (
            settings::FOLD_INTERVAL_MS.env.to_string(),
            spec.fold.interval_ms.to_string(),
        ),
        (
            settings::FOLD_POLL_INTERVAL_MS.env.to_string(),
            spec.fold.poll_interval_ms.to_string(),
        ),
        (
            settings::FOLD_MAX_PARTITIONS.env.to_string(),
            spec.fold.max_partitions.to_string(),
        ),
        (
            settings::FOLD_MAX_DELTAS.env.to_string(),
            spec.fold.max_deltas.to_string(),
        ),
        (
            settings::CONSUMER_REAP_IDLE_MS.env.to_string(),
            spec.consumer_reap_idle_ms.to_string(),
        ),
        (
            settings::DB_POOL_MIN_CONNECTIONS.env.to_string(),
            spec.database.pool.min_connections.to_string(),
        ),
        (
            settings::DB_POOL_MAX_CONNECTIONS.env.to_string(),
            spec.database.pool.max_connections.to_string(),
        ),
        (
            settings::DB_ACQUIRE_TIMEOUT_MS.env.to_string(),
            spec.database.pool.acquire_timeout_ms.to_string(),
        ),
        (
            settings::MAX_ENTRIES_PER_SECOND.env.to_string(),
            spec.rate_limits.max_entries_per_second.to_string(),
        ),
        (
            settings::ANALYTICS_MAX_TERMS_PER_SECOND.env.to_string(),
            spec.rate_limits.analytics_max_terms_per_second.to_string(),
        ),
        (
            settings::ANALYTICS_CONCURRENCY.env.to_string(),
            spec.analytics.concurrency.to_string(),
        ),
        (
            settings::ANALYTICS_BATCH_SIZE.env.to_string(),
            spec.analytics.batch_size.to_string(),
        ),
        (
            settings::ANALYTICS_MAX_ATTEMPTS.env.to_string(),
            spec.analytics.max_attempts.to_string(),
        ),
        (settings::HTTP_PORT.env.to_string(), HTTP_PORT.to_string()),
        (
            settings::DRAIN_TIMEOUT_MS.env.to_string(),
            (spec.drain.timeout_seconds * 1000).to_string(),
        ),
        (
            settings::OTEL_TRACES_SAMPLER_ARG.env.to_string(),
            spec.telemetry.sampling_ratio.to_string(),
        ),
        (
            settings::RUST_LOG.env.to_string(),
            spec.telemetry.log_level.clone(),
        ),
        (
            settings::OTEL_EXPORTER_OTLP_PROTOCOL.env.to_string(),
            spec.telemetry.otlp_protocol.as_str().to_string(),
        ),
    ]);
    if let Some(endpoint) = &spec.telemetry.otlp_endpoint {
        data.insert(
            settings::OTEL_EXPORTER_OTLP_ENDPOINT.env.to_string(),
            endpoint.clone(),
        );
    }
    if let Some(url) = &spec.redis.url {
        data.insert(settings::REDIS_URL.env.to_string(), url.clone());
    }
    data
}

pub fn config_map(cr: &PostgresWriter) -> ConfigMap {
    ConfigMap {
        metadata: metadata(cr, config_name(cr), Component::Worker),
        data: Some(config_data(&cr.spec)),
        ..Default::default()
    }
}

/// Hash of the settings, put on pod templates so edits roll the pods.
pub fn config_hash(cr: &PostgresWriter) -> String {
    let data = config_data(&cr.spec);
    let text = data
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect::<String>();
    short_hash(&text)
}

fn secret_env(name: &str, secret: &crate::crd::SecretKeyRef) -> EnvVar {
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

/// The effective pod options of `component`: `spec.pods`, then the
/// component's override on top (a set field replaces; labels and
/// annotations merge key by key, the override winning).
pub fn pod_options(cr: &PostgresWriter, component: Component) -> PodOptions {
    let common = cr.spec.pods.clone().unwrap_or_default();
    let over = match component {
        Component::Worker => None,
        Component::Analytics => cr.spec.analytics.pods.clone(),
        Component::Migration => cr.spec.migration.pods.clone(),
    };
    let Some(over) = over else { return common };
    fn merge(
        a: Option<BTreeMap<String, String>>,
        b: Option<BTreeMap<String, String>>,
    ) -> Option<BTreeMap<String, String>> {
        match (a, b) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
            (a, b) => b.or(a),
        }
    }
    PodOptions {
        image_pull_secrets: over.image_pull_secrets.or(common.image_pull_secrets),
        node_selector: over.node_selector.or(common.node_selector),
        tolerations: over.tolerations.or(common.tolerations),
        affinity: over.affinity.or(common.affinity),
        topology_spread_constraints: over
            .topology_spread_constraints
            .or(common.topology_spread_constraints),
        priority_class_name: over.priority_class_name.or(common.priority_class_name),
        labels: merge(common.labels, over.labels),
        annotations: merge(common.annotations, over.annotations),
        service_account_name: over.service_account_name.or(common.service_account_name),
        automount_service_account_token: over
            .automount_service_account_token
            .or(common.automount_service_account_token),
    }
}

/// Puts `options` on a pod template. The operator's labels and annotations
/// always win: a reserved key in the options (which the CRD refuses
/// anyway) is ignored, so selectors can never be broken from the spec.
pub fn apply_pod_options(template: &mut PodTemplateSpec, options: &PodOptions) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    for (target, extra, reserved) in [
        (&mut meta.labels, &options.labels, RESERVED_LABELS),
        (
            &mut meta.annotations,
            &options.annotations,
            RESERVED_ANNOTATIONS,
        ),
    ] {
        let Some(extra) = extra else { continue };
        let target = target.get_or_insert_with(BTreeMap::new);
        for (k, v) in extra {
            if !reserved.contains(&k.as_str()) && !target.contains_key(k) {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    let spec = template.spec.get_or_insert_with(Default::default);
    spec.image_pull_secrets = options.image_pull_secrets.clone().and_then(non_empty);
    spec.node_selector = options.node_selector.clone().filter(|m| !m.is_empty());
    spec.tolerations = options.tolerations.clone().and_then(non_empty);
    spec.affinity = options.affinity.clone();
    spec.topology_spread_constraints = options
        .topology_spread_constraints
        .clone()
        .and_then(non_empty);
    spec.priority_class_name = options.priority_class_name.clone();
    spec.service_account_name = options.service_account_name.clone();
    spec.automount_service_account_token =
        Some(options.automount_service_account_token.unwrap_or(false));
}

/// Environment of every pod: settings from the ConfigMap, secrets by reference,
/// the pod name as consumer name and OpenTelemetry service name.
fn env(cr: &PostgresWriter, component: Component) -> (Vec<EnvFromSource>, Vec<EnvVar>) {
    let env_from = vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: config_name(cr),
            optional: Some(false),
        }),
        ..Default::default()
    }];
    let mut env = vec![secret_env(
        settings::DATABASE_URL.env,
        &cr.spec.database.url_secret_ref,
    )];
    if let Some(secret) = &cr.spec.redis.url_secret_ref {
        env.push(secret_env(settings::REDIS_URL.env, secret));
    }
    env.push(EnvVar {
        name: settings::CONSUMER_NAME.env.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_string(),
                api_version: Some("v1".to_string()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    env.push(EnvVar {
        name: "POD_NAMESPACE".to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.namespace".to_string(),
                api_version: Some("v1".to_string()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Spans name the pod they come from (OpenTelemetry's Kubernetes resource
    // conventions); the kubelet expands the two variables above.
    env.push(EnvVar {
        name: "OTEL_RESOURCE_ATTRIBUTES".to_string(),
        value: Some(
            "k8s.pod.name=$(CONSUMER_NAME),k8s.namespace.name=$(POD_NAMESPACE)".to_string(),
        ),
        ..Default::default()
    });
    env.push(EnvVar {
        name: settings::OTEL_SERVICE_NAME.env.to_string(),
        value: Some(format!("postgres-writer-{}", component.as_str())),
        ..Default::default()
    });
    if component == Component::Worker {
        // Analytics runs in its own Deployment.
        env.push(EnvVar {
            name: settings::ANALYTICS_ENABLED.env.to_string(),
            value: Some("false".to_string()),
            ..Default::default()
        });
    }
    (env_from, env)
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

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A long-running pod (worker or analytics) for `image`.
fn long_running_pod(
    cr: &PostgresWriter,
    component: Component,
    image: &str,
    secrets_hash: Option<&str>,
) -> PodTemplateSpec {
    let (env_from, mut env) = env(cr, component);
    let (volumes, mounts, ca_env) = ca_files(cr, component);
    env.extend(ca_env);
    let (args, resources) = match component {
        Component::Analytics => (
            vec!["analytics".to_string()],
            cr.spec.analytics.resources.clone(),
        ),
        _ => (vec!["run".to_string()], cr.spec.resources.clone()),
    };
    let container = Container {
        name: component.as_str().to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some(cr.spec.image_pull_policy.as_str().to_string()),
        args: Some(args),
        env_from: Some(env_from),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/livez", 10, 6)),
        // Stop intake and wait for the in-flight batch before SIGTERM arrives.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["postgres-writer".to_string(), "drain".to_string()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources,
        security_context: Some(restricted_security_context()),
        volume_mounts: non_empty(mounts),
        ..Default::default()
    };
    let mut annotations = BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash(cr))]);
    annotations.insert("prometheus.io/scrape".to_string(), "true".to_string());
    annotations.insert("prometheus.io/port".to_string(), HTTP_PORT.to_string());
    if let Some(hash) = secrets_hash {
        annotations.insert(SECRETS_HASH_ANNOTATION.to_string(), hash.to_string());
    }
    let mut pod_labels = labels(cr, component);
    pod_labels.insert(METRICS_LABEL.to_string(), "true".to_string());
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            termination_grace_period_seconds: Some(
                cr.spec.drain.timeout_seconds + GRACE_MARGIN_SECONDS,
            ),
            security_context: Some(pod_security_context()),
            volumes: non_empty(volumes),
            ..Default::default()
        }),
    };
    apply_pod_options(&mut template, &pod_options(cr, component));
    template
}

/// What the pods of one Deployment get besides the spec: the image they run
/// (which lags behind spec.image until its migration has succeeded) and the
/// hash of the Secrets they read (None: keep no hash, see [`secrets_hash`]).
#[derive(Debug, Clone, Copy)]
pub struct PodInputs<'a> {
    pub image: &'a str,
    pub secrets_hash: Option<&'a str>,
}

impl<'a> PodInputs<'a> {
    pub fn image(image: &'a str) -> Self {
        PodInputs {
            image,
            secrets_hash: None,
        }
    }
}

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

/// ClusterIP Service in front of the worker and analytics pods' `/metrics`
/// (selected by [`METRICS_LABEL`], so migration pods are left out).
pub fn metrics_service(cr: &PostgresWriter) -> Service {
    Service {
        metadata: metadata(cr, metrics_service_name(cr), Component::Worker),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".to_string(), cr.name_any()),
                (METRICS_LABEL.to_string(), "true".to_string()),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

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

#[cfg(test)]
mod tests;

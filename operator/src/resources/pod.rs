//! The pod templates: the long-running worker and analytics pods, and what
//! every pod shares (environment, security contexts, the placement options
//! of `spec.pods`).

use super::configmap::{config_hash, config_name};
use super::secrets::{ca_files, secret_env, SECRETS_HASH_ANNOTATION};
use super::{labels, Component};
use crate::crd::{PodOptions, PostgresWriter, RESERVED_ANNOTATIONS, RESERVED_LABELS};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Port of the worker's HTTP server (health, metrics, drain).
pub const HTTP_PORT: i32 = 8080;

/// Annotation on pod templates: changes when the ConfigMap does, so that a
/// settings change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "pgwriter.io/config-hash";

/// Extra time after the drain timeout before the kubelet kills a pod.
pub const GRACE_MARGIN_SECONDS: i64 = 15;

/// Label on the pods the metrics Service selects (worker and analytics, never migration pods).
pub const METRICS_LABEL: &str = "pgwriter.io/metrics";

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
pub(super) fn env(cr: &PostgresWriter, component: Component) -> (Vec<EnvFromSource>, Vec<EnvVar>) {
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

/// None for an empty list, so that the API server's defaults apply.
pub(super) fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
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

/// The container security context of every pod (Pod Security "restricted").
pub(super) fn restricted_security_context() -> SecurityContext {
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

/// The pod security context of every pod: non-root, default seccomp.
pub(super) fn pod_security_context() -> PodSecurityContext {
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
pub(super) fn long_running_pod(
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
/// hash of the Secrets they read (None: keep no hash, see [`super::secrets_hash`]).
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

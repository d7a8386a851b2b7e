use super::*;
use crate::crd::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, SecretVolumeSource, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

pub(crate) fn sample() -> PostgresWriter {
    let spec: PostgresWriterSpec = serde_json::from_value(serde_json::json!({
        "image": "registry.example/postgres-writer:1.2.3",
        "replicas": 3,
        "streams": ["intuition_deposited", "intuition_redeemed"],
        "redis": {"url": "redis://redis:6379"},
        "database": {"urlSecretRef": {"name": "pg"}, "pool": {"maxConnections": 20}},
        "batch": {"size": 250},
        "rateLimits": {"maxEntriesPerSecond": 5000},
        "drain": {"timeoutSeconds": 45},
        "telemetry": {"otlpEndpoint": "http://otel:4318", "samplingRatio": 0.25}
    }))
    .unwrap();
    let mut cr = PostgresWriter::new("indexer", spec);
    cr.metadata = ObjectMeta {
        name: Some("indexer".into()),
        namespace: Some("chain".into()),
        uid: Some("uid-1".into()),
        generation: Some(2),
        ..Default::default()
    };
    cr
}

fn container(d: &Deployment) -> &Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

#[test]
fn spec_defaults_fill_unset_fields() {
    let cr = sample();
    assert_eq!(cr.spec.consumer_group, "postgres-writer");
    assert_eq!(cr.spec.database.pool.min_connections, 1);
    assert_eq!(cr.spec.database.url_secret_ref.key, "url");
    assert_eq!(cr.spec.batch.timeout_ms, 1000);
    assert!(cr.spec.analytics.enabled);
    assert_eq!(cr.spec.image_pull_policy, PullPolicy::IfNotPresent);
}

#[test]
fn every_object_is_owned_and_labelled() {
    let cr = sample();
    let metas = [
        config_map(&cr).metadata,
        migration_job(&cr, 0).metadata,
        worker_deployment(&cr, PodInputs::image("img")).metadata,
        analytics_deployment(&cr, PodInputs::image("img")).metadata,
        metrics_service(&cr).metadata,
        pod_disruption_budget(&cr).metadata,
    ];
    for meta in metas {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("PostgresWriter", "indexer", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("chain"));
        let labels = meta.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "indexer");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "postgres-writer-operator"
        );
    }
}

#[test]
fn config_map_carries_the_spec_settings_under_the_worker_names() {
    let data = config_map(&sample()).data.unwrap();
    assert_eq!(
        data["REDIS_STREAMS"],
        "intuition_deposited,intuition_redeemed"
    );
    assert_eq!(data["CONSUMER_GROUP"], "postgres-writer");
    assert_eq!(data["BATCH_SIZE"], "250");
    assert_eq!(data["FOLD_INTERVAL_MS"], "50");
    assert_eq!(data["FOLD_POLL_INTERVAL_MS"], "200");
    assert_eq!(data["FOLD_MAX_PARTITIONS"], "8");
    assert_eq!(data["FOLD_MAX_DELTAS"], "2000");
    assert_eq!(data["DB_POOL_MAX_CONNECTIONS"], "20");
    assert_eq!(data["MAX_ENTRIES_PER_SECOND"], "5000");
    assert_eq!(data["DRAIN_TIMEOUT_MS"], "45000");
    assert_eq!(data["REDIS_URL"], "redis://redis:6379");
    assert_eq!(data["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://otel:4318");
    assert_eq!(data["OTEL_TRACES_SAMPLER_ARG"], "0.25");
    assert_eq!(data["OTEL_EXPORTER_OTLP_PROTOCOL"], "http/protobuf");
    assert_eq!(data["HTTP_PORT"], "8080");
}

#[test]
fn worker_deployment_env_probes_prestop_and_grace() {
    let cr = sample();
    let d = worker_deployment(
        &cr,
        PodInputs::image("registry.example/postgres-writer:1.2.2"),
    );
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.selector.match_labels.as_ref().unwrap()["app.kubernetes.io/component"],
        "worker"
    );
    let c = container(&d);
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/postgres-writer:1.2.2")
    );
    assert_eq!(c.args.as_ref().unwrap(), &vec!["run".to_string()]);
    // Settings from the ConfigMap, the database URL from the Secret, consumer name = pod name.
    assert_eq!(
        c.env_from.as_ref().unwrap()[0]
            .config_map_ref
            .as_ref()
            .unwrap()
            .name,
        "indexer-config"
    );
    let db = env_value(c, "DATABASE_URL")
        .unwrap()
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((db.name.as_str(), db.key.as_str()), ("pg", "url"));
    let consumer = env_value(c, "CONSUMER_NAME")
        .unwrap()
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(consumer.field_path, "metadata.name");
    // Spans carry the pod's name and namespace.
    let namespace = env_value(c, "POD_NAMESPACE")
        .unwrap()
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(namespace.field_path, "metadata.namespace");
    let names = |e: &EnvVar| e.name.clone();
    let order: Vec<String> = c.env.as_ref().unwrap().iter().map(names).collect();
    let position = |name: &str| order.iter().position(|n| n == name).unwrap();
    assert!(
        position("CONSUMER_NAME") < position("OTEL_RESOURCE_ATTRIBUTES")
            && position("POD_NAMESPACE") < position("OTEL_RESOURCE_ATTRIBUTES"),
        "the kubelet expands only variables defined earlier: {order:?}"
    );
    assert_eq!(
        env_value(c, "OTEL_RESOURCE_ATTRIBUTES")
            .unwrap()
            .value
            .as_deref(),
        Some("k8s.pod.name=$(CONSUMER_NAME),k8s.namespace.name=$(POD_NAMESPACE)")
    );
    assert_eq!(
        env_value(c, "ANALYTICS_ENABLED").unwrap().value.as_deref(),
        Some("false")
    );
    assert!(
        env_value(c, "REDIS_URL").is_none(),
        "plain Redis URL comes from the ConfigMap"
    );
    // Probes on the worker's endpoints.
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/livez"));
    // preStop drains; the grace period covers the drain timeout.
    let pre_stop = c
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap();
    assert_eq!(
        pre_stop.command.as_ref().unwrap(),
        &vec!["postgres-writer".to_string(), "drain".to_string()]
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(45 + GRACE_MARGIN_SECONDS)
    );
    assert_eq!(
        c.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
}

#[test]
fn redis_url_from_a_secret_and_resources_are_passed_through() {
    let mut cr = sample();
    cr.spec.redis = RedisSpec {
        url: None,
        url_secret_ref: Some(SecretKeyRef {
            name: "redis".into(),
            key: "uri".into(),
        }),
        ca_secret_ref: None,
    };
    cr.spec.resources = Some(
        serde_json::from_value(
            serde_json::json!({"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m"}}),
        )
        .unwrap(),
    );
    let d = worker_deployment(&cr, PodInputs::image("img"));
    let c = container(&d);
    let redis = env_value(c, "REDIS_URL")
        .unwrap()
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((redis.name.as_str(), redis.key.as_str()), ("redis", "uri"));
    assert!(!config_map(&cr).data.unwrap().contains_key("REDIS_URL"));
    let resources = c.resources.as_ref().unwrap();
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "256Mi");
}

#[test]
fn settings_changes_change_the_pod_template() {
    let cr = sample();
    let before = worker_deployment(&cr, PodInputs::image("img"));
    let mut edited = cr.clone();
    edited.spec.database.pool.max_connections = 40;
    let after = worker_deployment(&edited, PodInputs::image("img"));
    let hash = |d: &Deployment| {
        template_meta(template_of(d)).annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION].clone()
    };
    assert_ne!(hash(&before), hash(&after));
    let mut scaled = cr.clone();
    scaled.spec.replicas = 5;
    assert_eq!(
        hash(&before),
        hash(&worker_deployment(&scaled, PodInputs::image("img"))),
        "scaling does not restart pods"
    );
}

#[test]
fn analytics_deployment_runs_the_analytics_command() {
    let mut cr = sample();
    cr.spec.analytics.replicas = 2;
    let d = analytics_deployment(&cr, PodInputs::image("img"));
    assert_eq!(d.metadata.name.as_deref(), Some("indexer-analytics"));
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    let c = container(&d);
    assert_eq!(c.args.as_ref().unwrap(), &vec!["analytics".to_string()]);
    assert!(env_value(c, "ANALYTICS_ENABLED").is_none());
}

#[test]
fn migration_job_is_per_image_and_runs_migrate() {
    let cr = sample();
    let job = migration_job(&cr, 0);
    assert!(job
        .metadata
        .name
        .as_deref()
        .unwrap()
        .starts_with("indexer-migrate-"));
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod.containers[0].args.as_ref().unwrap(),
        &vec!["migrate".to_string()]
    );
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/postgres-writer:1.2.3")
    );
    // `migrate` reports the schema version through the termination message;
    // a failure's message falls back to the log's tail.
    let container = &pod.containers[0];
    assert_eq!(
        container.termination_message_path.as_deref(),
        Some(TERMINATION_MESSAGE_PATH)
    );
    assert_eq!(
        container.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    assert!(container.env.as_ref().unwrap().iter().any(|e| {
        e.name == "TERMINATION_MESSAGE_PATH" && e.value.as_deref() == Some(TERMINATION_MESSAGE_PATH)
    }));
    let mut next = cr.clone();
    next.spec.image = "registry.example/postgres-writer:1.2.4".into();
    assert_ne!(migration_job_name(&cr, 0), migration_job_name(&next, 0));
    // The template, not only the image, names the Job (a Job's template is immutable).
    let mut secret = cr.clone();
    secret.spec.database.url_secret_ref.name = "other".into();
    assert_ne!(migration_job_name(&cr, 0), migration_job_name(&secret, 0));
    let mut pull = cr.clone();
    pull.spec.image_pull_policy = PullPolicy::Always;
    assert_ne!(migration_job_name(&cr, 0), migration_job_name(&pull, 0));
    // Settings that only the ConfigMap carries do not start a new migration.
    let mut batch = cr.clone();
    batch.spec.batch.size = 7;
    assert_eq!(migration_job_name(&cr, 0), migration_job_name(&batch, 0));
    // Retries get their own names of the same length.
    assert_ne!(migration_job_name(&cr, 0), migration_job_name(&cr, 1));
    assert_eq!(
        migration_job_name(&cr, 0).len(),
        migration_job_name(&cr, 1).len()
    );
    let longest = "x".repeat(MAX_NAME_LENGTH);
    let mut long = cr.clone();
    long.metadata.name = Some(longest);
    assert_eq!(migration_job_name(&long, 12).len(), 63);
    assert_eq!(
        job.metadata.labels.as_ref().unwrap()[MIGRATION_TEMPLATE_LABEL],
        migration_template_hash(&cr)
    );
}

#[test]
fn service_and_budget_select_the_right_pods() {
    let cr = sample();
    let svc = metrics_service(&cr);
    // Only worker and analytics pods carry the metrics label, migration pods do not.
    let selector = svc.spec.as_ref().unwrap().selector.clone().unwrap();
    let matches =
        |labels: &BTreeMap<String, String>| selector.iter().all(|(k, v)| labels.get(k) == Some(v));
    let pod_labels = |d: &Deployment| template_meta(template_of(d)).labels.clone().unwrap();
    assert!(matches(&pod_labels(&worker_deployment(
        &cr,
        PodInputs::image("img")
    ))));
    assert!(matches(&pod_labels(&analytics_deployment(
        &cr,
        PodInputs::image("img")
    ))));
    let job = migration_job(&cr, 0);
    assert!(!matches(
        template_meta(&job.spec.as_ref().unwrap().template)
            .labels
            .as_ref()
            .unwrap()
    ));
    let analytics_pdb = analytics_disruption_budget(&cr).spec.unwrap();
    assert_eq!(
        analytics_pdb.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
        "analytics"
    );
    assert_eq!(
        svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        HTTP_PORT
    );
    let pdb = pod_disruption_budget(&cr);
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
        "worker"
    );
    assert_eq!(
        worker_selector(&cr),
        "app.kubernetes.io/component=worker,app.kubernetes.io/instance=indexer"
    );
}

fn pod_spec_of(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

/// The CA file setting of a container, with the volume behind its mount.
fn mounted_ca<'a>(
    pod: &'a PodSpec,
    variable: &str,
) -> Option<(&'a VolumeMount, &'a SecretVolumeSource, String)> {
    let c = &pod.containers[0];
    let path = env_value(c, variable)?.value.clone().unwrap();
    let mount = c
        .volume_mounts
        .as_ref()?
        .iter()
        .find(|m| path.starts_with(&format!("{}/", m.mount_path)))?;
    let volume = pod
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == mount.name)?;
    let secret = volume.secret.as_ref()?;
    let file = path[mount.mount_path.len() + 1..].to_string();
    Some((mount, secret, file))
}

fn with_cas(cr: &mut PostgresWriter) {
    cr.spec.redis.url = Some("rediss://redis:6380".into());
    cr.spec.database.ca_secret_ref = Some(CaSecretRef {
        name: "pg-ca".into(),
        key: "root.pem".into(),
    });
    cr.spec.redis.ca_secret_ref =
        Some(serde_json::from_value(serde_json::json!({"name": "redis-ca"})).unwrap());
}

#[test]
fn ca_secrets_are_mounted_read_only_and_named_by_the_settings() {
    let mut cr = sample();
    with_cas(&mut cr);
    let worker = worker_deployment(&cr, PodInputs::image("img"));
    let pod = pod_spec_of(&worker);
    let (mount, secret, file) = mounted_ca(pod, "DATABASE_CA_FILE").expect("database CA mounted");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(secret.secret_name.as_deref(), Some("pg-ca"));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("root.pem", file.as_str())
    );
    assert_eq!(secret.optional, Some(false));
    let (mount, secret, file) = mounted_ca(pod, "REDIS_CA_FILE").expect("redis CA mounted");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(secret.secret_name.as_deref(), Some("redis-ca"));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("ca.crt", file.as_str()),
        "the key defaults to cert-manager's ca.crt"
    );
    assert_ne!(
        env_value(&pod.containers[0], "DATABASE_CA_FILE")
            .unwrap()
            .value,
        env_value(&pod.containers[0], "REDIS_CA_FILE")
            .unwrap()
            .value
    );
}

#[test]
fn analytics_and_migration_pods_get_the_database_ca_only() {
    let mut cr = sample();
    with_cas(&mut cr);
    let analytics = analytics_deployment(&cr, PodInputs::image("img"));
    let job = migration_job(&cr, 0);
    let job_pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    for pod in [pod_spec_of(&analytics), job_pod] {
        let (mount, secret, _) = mounted_ca(pod, "DATABASE_CA_FILE").expect("database CA mounted");
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(secret.secret_name.as_deref(), Some("pg-ca"));
        assert!(env_value(&pod.containers[0], "REDIS_CA_FILE").is_none());
        assert_eq!(pod.volumes.as_ref().unwrap().len(), 1);
    }
}

#[test]
fn without_ca_secrets_no_volume_is_added() {
    let cr = sample();
    for pod in [
        pod_spec_of(&worker_deployment(&cr, PodInputs::image("img"))).clone(),
        pod_spec_of(&analytics_deployment(&cr, PodInputs::image("img"))).clone(),
        migration_job(&cr, 0).spec.unwrap().template.spec.unwrap(),
    ] {
        assert!(pod.volumes.is_none());
        assert!(pod.containers[0].volume_mounts.is_none());
        assert!(env_value(&pod.containers[0], "DATABASE_CA_FILE").is_none());
    }
}

fn template_of(d: &Deployment) -> &PodTemplateSpec {
    &d.spec.as_ref().unwrap().template
}

fn template_meta(t: &PodTemplateSpec) -> &ObjectMeta {
    t.metadata.as_ref().unwrap()
}

fn with_pods(cr: &mut PostgresWriter) {
    cr.spec.pods = Some(
        serde_json::from_value(serde_json::json!({
            "imagePullSecrets": [{"name": "registry"}],
            "nodeSelector": {"pool": "writers"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "priorityClassName": "high",
            "labels": {"team": "data", "app.kubernetes.io/instance": "hijack"},
            "annotations": {"owner": "data", "pgwriter.io/config-hash": "hijack"},
            "serviceAccountName": "writer"
        }))
        .unwrap(),
    );
    cr.spec.analytics.pods = Some(
        serde_json::from_value(serde_json::json!({
            "nodeSelector": {"pool": "analytics"},
            "tolerations": [],
            "labels": {"team": "analytics", "tier": "batch"}
        }))
        .unwrap(),
    );
    cr.spec.migration.pods = Some(
        serde_json::from_value(serde_json::json!({
            "serviceAccountName": "migrator", "automountServiceAccountToken": true
        }))
        .unwrap(),
    );
    cr.spec.migration.resources = Some(
        serde_json::from_value(
            serde_json::json!({"requests": {"cpu": "100m"}, "limits": {"memory": "128Mi"}}),
        )
        .unwrap(),
    );
}

#[test]
fn pod_options_reach_every_pod_with_overrides_and_never_the_selectors() {
    let mut cr = sample();
    with_pods(&mut cr);
    let worker = worker_deployment(&cr, PodInputs::image("img"));
    let t = template_of(&worker);
    let spec = t.spec.as_ref().unwrap();
    assert_eq!(
        spec.image_pull_secrets.as_ref().unwrap()[0].name,
        "registry"
    );
    assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "writers");
    assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
    assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
    assert_eq!(spec.service_account_name.as_deref(), Some("writer"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let meta = t.metadata.as_ref().unwrap();
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "data");
    assert_eq!(
        labels["app.kubernetes.io/instance"], "indexer",
        "the operator's selector labels always win"
    );
    let annotations = meta.annotations.as_ref().unwrap();
    assert_eq!(annotations["owner"], "data");
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], config_hash(&cr));
    // The selector still selects the pods.
    let selector = worker
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));

    let analytics = analytics_deployment(&cr, PodInputs::image("img"));
    let t = template_of(&analytics);
    let spec = t.spec.as_ref().unwrap();
    assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "analytics");
    assert_eq!(spec.tolerations, None, "an empty override list clears");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("writer"),
        "inherited"
    );
    let labels = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(
        (labels["team"].as_str(), labels["tier"].as_str()),
        ("analytics", "batch")
    );
    assert_eq!(labels["app.kubernetes.io/component"], "analytics");

    let job = migration_job(&cr, 0);
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("migrator"));
    assert_eq!(pod.automount_service_account_token, Some(true), "asked for");
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "writers");
    let resources = pod.containers[0].resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "100m");
}

#[test]
fn without_pod_options_the_token_is_not_mounted() {
    let cr = sample();
    for pod in [
        pod_spec_of(&worker_deployment(&cr, PodInputs::image("img"))).clone(),
        pod_spec_of(&analytics_deployment(&cr, PodInputs::image("img"))).clone(),
        migration_job(&cr, 0).spec.unwrap().template.spec.unwrap(),
    ] {
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert!(pod.service_account_name.is_none() && pod.node_selector.is_none());
    }
}

#[test]
fn migration_placement_is_part_of_the_job_name() {
    let cr = sample();
    let mut placed = cr.clone();
    placed.spec.migration.pods = Some(
        serde_json::from_value(serde_json::json!({"nodeSelector": {"pool": "batch"}})).unwrap(),
    );
    assert_ne!(migration_job_name(&cr, 0), migration_job_name(&placed, 0));
    // Worker-only changes (analytics override) do not touch the Job.
    let mut analytics = cr.clone();
    analytics.spec.analytics.pods = placed.spec.migration.pods.clone();
    assert_eq!(
        migration_job_name(&cr, 0),
        migration_job_name(&analytics, 0)
    );
}

#[test]
fn secrets_hash_follows_the_referenced_secrets_versions() {
    let mut cr = sample();
    with_cas(&mut cr);
    let mut versions = SecretVersions::from([
        ("pg".to_string(), "10".to_string()),
        ("pg-ca".to_string(), "11".to_string()),
        ("redis-ca".to_string(), "12".to_string()),
    ]);
    let worker = secrets_hash(&cr, Component::Worker, &versions).unwrap();
    let analytics = secrets_hash(&cr, Component::Analytics, &versions).unwrap();
    versions.insert("redis-ca".into(), "13".into());
    assert_ne!(
        secrets_hash(&cr, Component::Worker, &versions).unwrap(),
        worker
    );
    assert_eq!(
        secrets_hash(&cr, Component::Analytics, &versions).unwrap(),
        analytics,
        "analytics pods do not read the Redis CA"
    );
    versions.insert("pg".into(), "20".into());
    assert_ne!(
        secrets_hash(&cr, Component::Analytics, &versions).unwrap(),
        analytics
    );
    versions.remove("pg-ca");
    assert_eq!(
        secrets_hash(&cr, Component::Worker, &versions),
        None,
        "missing"
    );
    let names: Vec<String> = all_referenced_secrets(&cr)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["pg", "pg-ca", "redis-ca"]);
    let d = worker_deployment(
        &cr,
        PodInputs {
            image: "img",
            secrets_hash: Some("abc"),
        },
    );
    let annotations = template_of(&d)
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert_eq!(annotations[SECRETS_HASH_ANNOTATION], "abc");
}

#[test]
fn suspend_scales_the_deployments_to_zero_and_keeps_spec_replicas() {
    let mut cr = sample();
    cr.spec.suspend = true;
    let replicas = |d: Deployment| d.spec.unwrap().replicas;
    assert_eq!(
        replicas(worker_deployment(&cr, PodInputs::image("img"))),
        Some(0)
    );
    assert_eq!(
        replicas(analytics_deployment(&cr, PodInputs::image("img"))),
        Some(0)
    );
    assert_eq!(cr.spec.replicas, 3);
    cr.spec.suspend = false;
    assert_eq!(
        replicas(worker_deployment(&cr, PodInputs::image("img"))),
        Some(3)
    );
    // Suspending does not start a migration Job.
    let mut suspended = cr.clone();
    suspended.spec.suspend = true;
    assert_eq!(
        migration_job_name(&cr, 0),
        migration_job_name(&suspended, 0)
    );
}

//! docs/examples/autoscaling/: each file parses, names the kinds and fields
//! its consumer reads (KEDA, the Prometheus adapter, the HPA controller),
//! and targets the PostgresWriter of crds/examples/minimal.yaml.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("docs/examples/autoscaling").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn minimal() -> Value {
    let text = std::fs::read_to_string(root().join("crds/examples/minimal.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The scale target every example must name: the resource, not its Deployment.
fn assert_targets_the_resource(target: &Value, file: &str) {
    assert_eq!(target["apiVersion"], "pgwriter.io/v1alpha1", "{file}");
    assert_eq!(target["kind"], "PostgresWriter", "{file}");
    assert_eq!(target["name"], minimal()["metadata"]["name"], "{file}");
}

#[test]
fn hpa_example_is_an_autoscaling_v2_hpa_on_the_stream_lag() {
    let all = docs("hpa-stream-lag.yaml");
    assert_eq!(all.len(), 1);
    let doc = &all[0];
    assert_eq!(doc["apiVersion"], "autoscaling/v2");
    assert_eq!(doc["kind"], "HorizontalPodAutoscaler");
    // The typed round trip keeps every field: no typo.
    let typed: HorizontalPodAutoscaler = serde_json::from_value(doc.clone()).unwrap();
    let mut back = serde_json::to_value(&typed).unwrap();
    back["apiVersion"] = doc["apiVersion"].clone();
    back["kind"] = doc["kind"].clone();
    assert_eq!(&back, doc, "fields the Kubernetes type does not know");
    let spec = typed.spec.unwrap();
    assert_targets_the_resource(
        &serde_json::to_value(&spec.scale_target_ref).unwrap(),
        "hpa",
    );
    assert!(spec.min_replicas.unwrap_or(1) <= spec.max_replicas);
    let metric = &spec.metrics.unwrap()[0];
    assert_eq!(metric.type_, "External");
    let external = metric.external.as_ref().unwrap();
    assert_eq!(external.metric.name, "pgw_stream_lag");
    assert_eq!(
        external
            .metric
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["service"],
        format!(
            "{}-metrics",
            minimal()["metadata"]["name"].as_str().unwrap()
        ),
        "the operator's metrics Service"
    );
    // The worker registers the metric (prefix pgw_).
    let worker = std::fs::read_to_string(root().join("worker/src/metrics.rs")).unwrap();
    assert!(worker.contains("\"stream_lag\""));
}

#[test]
fn adapter_rule_serves_the_metric_the_hpa_reads() {
    let all = docs("prometheus-adapter-values.yaml");
    let rules = all[0]["rules"]["external"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    let hpa = &docs("hpa-stream-lag.yaml")[0];
    let metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
        .as_str()
        .unwrap();
    assert!(rule["seriesQuery"].as_str().unwrap().starts_with(metric));
    assert_eq!(rule["name"]["as"], metric);
    assert_eq!(
        rule["resources"]["overrides"]["namespace"]["resource"],
        "namespace"
    );
    let query = rule["metricsQuery"].as_str().unwrap();
    for placeholder in ["<<.Series>>", "<<.LabelMatchers>>"] {
        assert!(query.contains(placeholder), "{query}");
    }
    // The HPA selects on a label the query keeps.
    assert!(query.contains("service"), "{query}");
}

#[test]
fn keda_example_scales_the_resource_on_pending_entries_of_each_stream() {
    let all = docs("keda-scaledobject.yaml");
    let kinds: Vec<&str> = all.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["TriggerAuthentication", "ScaledObject"]);
    for d in &all {
        assert_eq!(d["apiVersion"], "keda.sh/v1alpha1");
    }
    let auth = &all[0];
    assert_eq!(auth["spec"]["secretTargetRef"][0]["parameter"], "password");
    let so = &all[1];
    assert_targets_the_resource(&so["spec"]["scaleTargetRef"], "keda");
    assert!(
        so["spec"]["minReplicaCount"].as_i64().unwrap()
            <= so["spec"]["maxReplicaCount"].as_i64().unwrap()
    );
    let cr = minimal();
    let mut streams: Vec<&str> = Vec::new();
    // The redis-streams scaler's metadata keys (KEDA docs); values are strings.
    let known = [
        "address",
        "host",
        "port",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
        "usernameFromEnv",
        "passwordFromEnv",
    ];
    for trigger in so["spec"]["triggers"].as_array().unwrap() {
        assert_eq!(trigger["type"], "redis-streams");
        assert_eq!(
            trigger["authenticationRef"]["name"],
            auth["metadata"]["name"]
        );
        let meta = trigger["metadata"].as_object().unwrap();
        for (key, value) in meta {
            assert!(known.contains(&key.as_str()), "unknown trigger field {key}");
            assert!(value.is_string(), "{key}: KEDA metadata values are strings");
        }
        // Default consumer group of the CRD (the example leaves it out).
        assert_eq!(meta["consumerGroup"], "postgres-writer");
        let pending: u64 = meta["pendingEntriesCount"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pending > 0);
        streams.push(meta["stream"].as_str().unwrap());
    }
    let expected: Vec<&str> = cr["spec"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(streams, expected, "one trigger per stream of the resource");
}

#[test]
fn crd_default_consumer_group_is_the_one_the_examples_use() {
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("crds/postgreswriter.yaml")).unwrap(),
    )
    .unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["consumerGroup"]["default"],
        "postgres-writer"
    );
    // The scale subresource the examples rely on.
    let scale = &crd["spec"]["versions"][0]["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
}

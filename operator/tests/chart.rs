//! The Helm chart, checked with the real `helm` (scripts/tools.sh installs
//! it): `helm lint` and `helm template` for the default values and for a
//! values file that turns every option on; every rendered manifest must
//! deserialize into its Kubernetes type with no unknown field.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CHART: &str = "charts/postgres-writer-operator";
const ALL_ON: &str = "charts/postgres-writer-operator/ci-all-on-values.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm(args: &[&str]) -> String {
    let path = std::env::var("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".tools/bin/helm"));
    assert!(
        path.exists(),
        "helm not found at {}: run scripts/tools.sh (or set HELM)",
        path.display()
    );
    let out = Command::new(path)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(values: Option<&str>) -> Vec<Value> {
    let mut args = vec![
        "template",
        "pgw",
        CHART,
        "--namespace",
        "operators",
        "--include-crds",
    ];
    if let Some(v) = values {
        args.extend(["-f", v]);
    }
    let text = helm(&args);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Paths present in `original` but dropped by the typed round trip: fields
/// the Kubernetes type does not know (a typo in the chart).
fn unknown_fields(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => unknown_fields(v, w, &format!("{path}.{k}"), out),
                    None if v.is_null() => {}
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_as<T: DeserializeOwned + Serialize>(doc: &Value) -> Vec<String> {
    let typed: T = match serde_json::from_value(doc.clone()) {
        Ok(t) => t,
        Err(e) => return vec![format!("does not deserialize: {e}")],
    };
    let back = serde_json::to_value(&typed).unwrap();
    let mut out = Vec::new();
    unknown_fields(doc, &back, "", &mut out);
    out
}

/// Prometheus Operator kinds have no k8s-openapi type: the fields the chart
/// uses, with unknown fields refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MonitoringObject<S> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: S,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    namespace_selector: NamespaceSelector,
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_names: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusRuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn check(doc: &Value) -> Vec<String> {
    match doc["kind"].as_str().unwrap_or("") {
        "ServiceAccount" => check_as::<ServiceAccount>(doc),
        "ClusterRole" => check_as::<ClusterRole>(doc),
        "ClusterRoleBinding" => check_as::<ClusterRoleBinding>(doc),
        "Role" => check_as::<Role>(doc),
        "RoleBinding" => check_as::<RoleBinding>(doc),
        "Deployment" => check_as::<Deployment>(doc),
        "Service" => check_as::<Service>(doc),
        "ConfigMap" => check_as::<k8s_openapi::api::core::v1::ConfigMap>(doc),
        "CustomResourceDefinition" => check_as::<CustomResourceDefinition>(doc),
        "ServiceMonitor" => check_as::<MonitoringObject<ServiceMonitorSpec>>(doc),
        "PrometheusRule" => check_as::<MonitoringObject<PrometheusRuleSpec>>(doc),
        other => vec![format!("unexpected kind {other:?}")],
    }
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

#[test]
fn helm_lint_passes_for_default_and_all_on_values() {
    let out = helm(&["lint", CHART, "--strict"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm(&["lint", CHART, "--strict", "-f", ALL_ON]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn rendered_manifests_are_valid_kubernetes_objects() {
    for values in [None, Some(ALL_ON)] {
        let docs = render(values);
        for doc in &docs {
            let problems = check(doc);
            assert!(
                problems.is_empty(),
                "{values:?}: {} {}: {problems:?}",
                doc["kind"],
                doc["metadata"]["name"]
            );
        }
        let expected = match values {
            None => vec![
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "Service",
                "ServiceAccount",
            ],
            Some(_) => vec![
                "ConfigMap",
                "CustomResourceDefinition",
                "Deployment",
                "PrometheusRule",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
            ],
        };
        assert_eq!(kinds(&docs), expected, "{values:?}");
    }
}

#[test]
fn the_checker_refuses_a_typo() {
    let mut doc = render(None)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = Value::from("Always");
    assert_eq!(
        check(&doc),
        vec![".spec.template.spec.containers[0].imagePullPolicyy".to_string()]
    );
}

#[test]
fn dashboard_and_alerts_use_metrics_the_binaries_export() {
    let docs = render(Some(ALL_ON));
    let dashboard = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let json: Value =
        serde_json::from_str(dashboard["data"]["postgres-writer.json"].as_str().unwrap()).unwrap();
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let mut exprs: Vec<String> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    exprs.extend(
        rule["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["expr"].as_str().unwrap().to_string()),
    );
    // Every pgw_* metric name used must be one the worker or the operator registers.
    let worker = std::fs::read_to_string(root().join("worker/src/metrics.rs")).unwrap();
    let operator = std::fs::read_to_string(root().join("operator/src/metrics.rs")).unwrap();
    let mut checked = 0;
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let Some(rest) = word.strip_prefix("pgw_") else {
                continue;
            };
            let (source, base) = match rest.strip_prefix("operator_") {
                Some(r) => (&operator, r),
                None => (&worker, rest),
            };
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .fold(base, |b, s| b.strip_suffix(s).unwrap_or(b));
            assert!(
                source.contains(&format!("\"{base}\"")),
                "{word} (in `{expr}`) is not a registered metric"
            );
            checked += 1;
        }
    }
    assert!(checked > 15, "{checked}");
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let chart =
        std::fs::read_to_string(root().join(CHART).join("crds/postgreswriter.yaml")).unwrap();
    assert!(
        chart == operator::crd::crd_yaml().unwrap(),
        "{CHART}/crds/postgreswriter.yaml is stale: copy crds/postgreswriter.yaml there"
    );
}

#[test]
fn operator_deployment_follows_the_values() {
    let docs = render(Some(ALL_ON));
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        "registry.example/postgres-writer-operator:9.9.9"
    );
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert!(
        env.contains(&("WATCH_NAMESPACE", "chain"))
            && env.contains(&("OPERATOR_HTTP_PORT", "9090"))
            && env.contains(&("MIGRATION_RETRY_SECONDS", "30"))
            && env.contains(&(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://otel-collector.observability:4317"
            ))
            && env.contains(&("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
            && env.contains(&("OTEL_TRACES_SAMPLER_ARG", "0.5"))
            && env.contains(&("OTEL_SERVICE_NAME", "pgw-operator")),
        "{env:?}"
    );
}

#[test]
fn values_schema_refuses_bad_values() {
    let path = std::env::var("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".tools/bin/helm"));
    for (set, needle) in [
        ("metrics.port=0", "metrics.port"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("replicas=3", "replicas"),
        ("telemetry.otlpProtocol=thrift", "telemetry.otlpProtocol"),
        ("telemetry.otlpEndpoint=otel:4317", "telemetry.otlpEndpoint"),
    ] {
        let out = Command::new(&path)
            .args(["template", "pgw", CHART, "--set", set])
            .current_dir(root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{set}: {stderr}"
        );
    }
}

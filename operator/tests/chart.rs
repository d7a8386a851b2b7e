//! The Helm chart, checked with the real `helm` (scripts/tools.sh installs
//! it): `helm lint` and `helm template` for the default values and for a
//! values file that turns every option on; every rendered manifest must
//! deserialize into its Kubernetes type with no unknown field.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
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
/// The chart has no default image repository: every render sets one.
const REPOSITORY: &str = "image.repository=registry.example/postgres-writer-operator";

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
    match values {
        Some(v) => render_with(&["-f", v]),
        None => render_with(&[]),
    }
}

/// `helm template` with an image repository and extra arguments (e.g. `--set`).
fn render_with(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "pgw",
        CHART,
        "--namespace",
        "operators",
        "--include-crds",
        "--set",
        REPOSITORY,
    ];
    args.extend(extra);
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
        "PodDisruptionBudget" => check_as::<PodDisruptionBudget>(doc),
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
    let out = helm(&["lint", CHART, "--strict", "--set", REPOSITORY]);
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
            // The Role and RoleBinding of the leader-election Lease come with every install.
            None => vec![
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
            ],
            // Two watched namespaces: a Role and RoleBinding in each.
            Some(_) => vec![
                "ConfigMap",
                "CustomResourceDefinition",
                "Deployment",
                "PodDisruptionBudget",
                "PrometheusRule",
                "Role",
                "Role",
                "Role",
                "RoleBinding",
                "RoleBinding",
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
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert!(
        env.contains(&("WATCH_NAMESPACE", "chain,chain-2"))
            && env.contains(&("LEASE_NAME", "pgw-operator"))
            && env.contains(&("LEASE_DURATION_SECONDS", "20"))
            && env.contains(&("LEASE_RENEW_DEADLINE_SECONDS", "12"))
            && env.contains(&("LEASE_RETRY_PERIOD_SECONDS", "3"))
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
        ("replicas=0", "replicas"),
        (
            "leaderElection.leaseDurationSeconds=1",
            "leaseDurationSeconds",
        ),
        ("leaderElection.retryPeriodSeconds=61", "retryPeriodSeconds"),
        ("watchNamespace=Not_A_Namespace", "watchNamespace"),
        ("podDisruptionBudget.maxUnavailable=0", "maxUnavailable"),
        ("telemetry.otlpProtocol=thrift", "telemetry.otlpProtocol"),
        ("telemetry.otlpEndpoint=otel:4317", "telemetry.otlpEndpoint"),
    ] {
        let out = Command::new(&path)
            .args(["template", "pgw", CHART, "--set", REPOSITORY, "--set", set])
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

#[test]
fn install_without_an_image_repository_is_refused_with_a_clear_message() {
    let path = std::env::var("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".tools/bin/helm"));
    for extra in [&[][..], &["--set", "image.repository="][..]] {
        let out = Command::new(&path)
            .args(["template", "pgw", CHART])
            .args(extra)
            .current_dir(root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("image.repository is required"),
            "{extra:?}: {stderr}"
        );
    }
    let values = std::fs::read_to_string(root().join(CHART).join("values.yaml")).unwrap();
    let values: Value = serde_yaml::from_str(&values).unwrap();
    assert_eq!(values["image"]["repository"], "", "no placeholder default");
}

fn env_of(d: &Value) -> Vec<Value> {
    d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone()
}

fn env_value(d: &Value, name: &str) -> Option<String> {
    env_of(d)
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// (kind, namespace) of every RBAC object granting the controller's rules.
fn controller_rbac(docs: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = docs
        .iter()
        .filter(|d| {
            d["kind"].as_str().is_some_and(|k| k.contains("Role"))
                && !d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-leader-election")
        })
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn rbac_follows_watch_namespace() {
    let pair = |kind: &str, ns: &str| (kind.to_string(), ns.to_string());
    // Empty (the default): one ClusterRole, nothing namespaced.
    let docs = render(None);
    assert_eq!(
        controller_rbac(&docs),
        vec![pair("ClusterRole", ""), pair("ClusterRoleBinding", "")]
    );
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(env_value(d, "WATCH_NAMESPACE"), None);
    // A list: one Role and RoleBinding per namespace, no ClusterRole.
    let docs = render_with(&["--set", "watchNamespace={chain-a,chain-b,chain-c}"]);
    let mut expected = Vec::new();
    for ns in ["chain-a", "chain-b", "chain-c"] {
        expected.extend([pair("Role", ns), pair("RoleBinding", ns)]);
    }
    expected.sort();
    assert_eq!(controller_rbac(&docs), expected);
    assert!(!docs.iter().any(|d| d["kind"] == "ClusterRole"));
    for binding in docs.iter().filter(|d| d["kind"] == "RoleBinding") {
        assert_eq!(
            binding["subjects"][0]["namespace"], "operators",
            "{binding}"
        );
        assert_eq!(binding["roleRef"]["kind"], "Role");
    }
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        env_value(d, "WATCH_NAMESPACE").as_deref(),
        Some("chain-a,chain-b,chain-c")
    );
    // One name as a string, as before: one Role.
    let docs = render_with(&["--set", "watchNamespace=chain"]);
    assert_eq!(
        controller_rbac(&docs),
        vec![pair("Role", "chain"), pair("RoleBinding", "chain")]
    );
}

#[test]
fn leader_election_is_wired_and_least_privilege() {
    let docs = render(None);
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(d["spec"]["replicas"], 2, "two replicas by default");
    let lease_name = env_value(d, "LEASE_NAME").unwrap();
    assert_eq!(lease_name, "pgw-postgres-writer-operator");
    // POD_NAME and POD_NAMESPACE from the downward API.
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let e = env_of(d).into_iter().find(|e| e["name"] == name).unwrap();
        assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
    }
    // The Lease Role: in the release namespace; only the verbs leader.rs uses.
    let role = docs
        .iter()
        .find(|d| {
            d["kind"] == "Role" && d["metadata"]["name"] == format!("{lease_name}-leader-election")
        })
        .expect("a leader-election Role");
    assert_eq!(role["metadata"]["namespace"], "operators");
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(
            rule["apiGroups"],
            serde_json::json!(["coordination.k8s.io"])
        );
        assert_eq!(rule["resources"], serde_json::json!(["leases"]));
        for verb in rule["verbs"].as_array().unwrap() {
            let verb = verb.as_str().unwrap();
            // Everything but create is limited to the one Lease.
            if verb != "create" {
                assert_eq!(
                    rule["resourceNames"],
                    serde_json::json!([lease_name]),
                    "{verb}"
                );
            }
            granted.push(verb.to_string());
        }
    }
    granted.sort();
    assert_eq!(granted, ["create", "get", "update"]);
    // leader.rs uses exactly these calls on the Lease API.
    let source = std::fs::read_to_string(root().join("operator/src/leader.rs")).unwrap();
    for call in [".get_opt(", ".create(", ".replace("] {
        assert!(source.contains(call), "{call}");
    }
    for call in [".patch(", ".delete(", ".list(", ".watch("] {
        assert!(
            !source.contains(call),
            "leader.rs uses {call} the chart does not grant"
        );
    }
    // The PDB covers the operator pods.
    let pdb = docs
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .unwrap();
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn leader_election_ranges_are_the_operators() {
    use operator::leader::{LEASE_DURATION_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_PERIOD_SECONDS};
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(CHART).join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join(CHART).join("values.yaml")).unwrap(),
    )
    .unwrap();
    for (key, range) in [
        ("leaseDurationSeconds", LEASE_DURATION_SECONDS),
        ("renewDeadlineSeconds", RENEW_DEADLINE_SECONDS),
        ("retryPeriodSeconds", RETRY_PERIOD_SECONDS),
    ] {
        let s = &schema["properties"]["leaderElection"]["properties"][key];
        assert_eq!(
            (s["minimum"].as_u64(), s["maximum"].as_u64()),
            (Some(*range.start()), Some(*range.end())),
            "{key}"
        );
        let default = values["leaderElection"][key].as_u64().unwrap();
        assert!(range.contains(&default), "{key}");
    }
}

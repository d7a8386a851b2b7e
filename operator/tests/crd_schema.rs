//! The CRD: the committed YAML equals `crdgen`'s output, and its
//! openAPIV3Schema accepts the example resources and refuses invalid ones
//! (what the API server does on `kubectl apply`).

use kube::CustomResourceExt;
use operator::crd::PostgresWriter;
use serde_json::{json, Value};

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn committed_crd_matches_crdgen() {
    let generated = operator::crd::crd_yaml().unwrap();
    assert!(
        repo_file("crds/postgreswriter.yaml") == generated,
        "crds/postgreswriter.yaml is stale: run `cargo run -p operator -- crdgen > crds/postgreswriter.yaml`"
    );
}

/// The openAPIV3Schema as a JSON Schema validator. OpenAPI's `nullable` and
/// the `x-kubernetes-*` keywords are ignored by JSON Schema, which only
/// makes this validator more permissive than the API server, never stricter.
fn validator() -> jsonschema::Validator {
    let crd = serde_json::to_value(PostgresWriter::crd()).unwrap();
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn examples() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_yaml::from_str(&text).unwrap();
        out.push((path.display().to_string(), value));
    }
    assert!(out.len() >= 2, "examples missing");
    out
}

#[test]
fn examples_are_accepted_and_deserialize() {
    let validator = validator();
    for (path, example) in examples() {
        let errors: Vec<String> = validator
            .iter_errors(&example)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{path} refused: {errors:#?}");
        let typed: PostgresWriter = serde_json::from_value(example).unwrap();
        assert!(!typed.spec.streams.is_empty());
    }
}

#[test]
fn invalid_resources_are_refused_with_the_field_named() {
    let validator = validator();
    let (_, base) = examples()
        .into_iter()
        .find(|(p, _)| p.ends_with("minimal.yaml"))
        .unwrap();
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "/spec/replicas",
            Box::new(|v| v["spec"]["replicas"] = json!(-1)),
        ),
        (
            "/spec/streams",
            Box::new(|v| v["spec"]["streams"] = json!([])),
        ),
        (
            "/spec/streams/0",
            Box::new(|v| v["spec"]["streams"] = json!([""])),
        ),
        (
            "/spec/imagePullPolicy",
            Box::new(|v| v["spec"]["imagePullPolicy"] = json!("Sometimes")),
        ),
        (
            "/spec/batch/size",
            Box::new(|v| v["spec"]["batch"] = json!({"size": 0})),
        ),
        (
            "/spec/database/pool/maxConnections",
            Box::new(|v| v["spec"]["database"]["pool"] = json!({"maxConnections": 5000})),
        ),
        (
            "/spec/telemetry/samplingRatio",
            Box::new(|v| v["spec"]["telemetry"] = json!({"samplingRatio": 1.5})),
        ),
        (
            "/spec/redis/url",
            Box::new(|v| v["spec"]["redis"]["url"] = json!("http://redis:6379")),
        ),
        (
            "/spec",
            Box::new(|v| {
                v["spec"].as_object_mut().unwrap().remove("image");
            }),
        ),
        (
            "/spec/replicas",
            Box::new(|v| v["spec"]["replicas"] = json!("three")),
        ),
    ];
    for (pointer, mutate) in cases {
        let mut resource = base.clone();
        mutate(&mut resource);
        let errors: Vec<String> = validator
            .iter_errors(&resource)
            .map(|e| e.instance_path().to_string())
            .collect();
        assert!(
            errors.iter().any(|p| p == pointer),
            "{pointer}: expected a refusal there, got {errors:?}"
        );
    }
}

#[test]
fn crd_names_subresources_and_columns() {
    let crd = serde_json::to_value(PostgresWriter::crd()).unwrap();
    assert_eq!(crd["spec"]["group"], "pgwriter.io");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["pgw"]));
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, vec!["Replicas", "Ready", "Migrated", "Age"]);
    // Defaults live in the schema.
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["replicas"]["default"], 1);
    assert_eq!(
        spec["properties"]["consumerGroup"]["default"],
        "postgres-writer"
    );
    assert_eq!(
        spec["properties"]["redis"]["x-kubernetes-validations"][0]["rule"],
        "has(self.url) != has(self.urlSecretRef)"
    );
    assert!(
        spec["properties"]["redis"]["x-kubernetes-validations"][1]["rule"]
            .as_str()
            .unwrap()
            .contains("rediss://")
    );
    for service in ["database", "redis"] {
        assert_eq!(
            spec["properties"][service]["properties"]["caSecretRef"]["properties"]["key"]
                ["default"],
            "ca.crt",
            "{service}.caSecretRef.key defaults to cert-manager's key"
        );
    }
}

//! The CRD: the committed YAML equals `crdgen`'s output, and its
//! openAPIV3Schema accepts the example resources and refuses invalid ones
//! (what the API server does on `kubectl apply`).

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
    let crd = serde_json::to_value(operator::crd::crd()).unwrap();
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
        (
            "/spec/streams/0",
            Box::new(|v| v["spec"]["streams"] = json!(["a,b"])),
        ),
        (
            "/spec/streams/0",
            Box::new(|v| v["spec"]["streams"] = json!(["  "])),
        ),
        (
            "/spec/consumerGroup",
            Box::new(|v| v["spec"]["consumerGroup"] = json!("group\u{7}")),
        ),
        (
            "/spec/consumerGroup",
            Box::new(|v| v["spec"]["consumerGroup"] = json!(" ")),
        ),
        (
            "/spec/telemetry/otlpEndpoint",
            Box::new(|v| v["spec"]["telemetry"] = json!({"otlpEndpoint": "otel:4317"})),
        ),
        (
            "/spec/telemetry/otlpProtocol",
            Box::new(|v| v["spec"]["telemetry"] = json!({"otlpProtocol": "thrift"})),
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
    let crd = serde_json::to_value(operator::crd::crd()).unwrap();
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
    assert_eq!(
        columns,
        vec![
            "Replicas",
            "Ready",
            "Status",
            "Migrated",
            "Age",
            "Image",
            "Target",
            "Migration",
            "Message"
        ]
    );
    let wide: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 1)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        wide,
        vec!["Image", "Target", "Migration", "Message"],
        "-o wide only"
    );
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
    // What JSON Schema cannot say, the API server checks (operator/tests/e2e/ shows each refusal).
    assert_eq!(
        spec["properties"]["streams"]["x-kubernetes-list-type"],
        "set"
    );
    assert_eq!(spec["properties"]["streams"]["minItems"], 1);
    assert_eq!(
        spec["properties"]["database"]["properties"]["pool"]["x-kubernetes-validations"][0]["rule"],
        "self.minConnections <= self.maxConnections"
    );
    // Pod placement: the Kubernetes types' own schemas, in all three places.
    for pods in [
        &spec["properties"]["pods"],
        &spec["properties"]["analytics"]["properties"]["pods"],
        &spec["properties"]["migration"]["properties"]["pods"],
    ] {
        for field in [
            "imagePullSecrets",
            "nodeSelector",
            "tolerations",
            "affinity",
            "topologySpreadConstraints",
            "priorityClassName",
            "serviceAccountName",
            "automountServiceAccountToken",
        ] {
            assert!(pods["properties"][field].is_object(), "{field}");
        }
        let rule = pods["properties"]["labels"]["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap();
        assert!(rule.contains("'app.kubernetes.io/instance'"), "{rule}");
    }
    assert_eq!(spec["properties"]["suspend"]["default"], false);
    let root = &version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"][0];
    assert_eq!(
        root["rule"],
        format!(
            "self.metadata.name.size() <= {}",
            operator::resources::MAX_NAME_LENGTH
        )
    );
}

/// The CRD's ranges are the worker's: the worker accepts each field's
/// minimum and maximum and refuses one step beyond each (a CRD stricter than
/// the worker would refuse what works; looser, it would accept pods that
/// crash at start-up).
#[test]
fn crd_ranges_are_the_workers_ranges() {
    use clap::Parser;
    let crd = serde_json::to_value(operator::crd::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let field = |path: &str| -> (f64, f64) {
        let mut node = spec;
        for part in path.split('.') {
            node = &node["properties"][part];
        }
        let (min, max) = (node["minimum"].as_f64(), node["maximum"].as_f64());
        (
            min.unwrap_or_else(|| panic!("{path}: no minimum")),
            max.unwrap_or_else(|| panic!("{path}: no maximum")),
        )
    };
    // (CRD field, worker flag, factor from the CRD's unit to the worker's, extra flags)
    let cases: [(&str, &str, f64, &[&str]); 18] = [
        ("batch.size", "--batch-size", 1.0, &[]),
        ("fold.intervalMs", "--fold-interval-ms", 1.0, &[]),
        ("fold.pollIntervalMs", "--fold-poll-interval-ms", 1.0, &[]),
        ("fold.maxPartitions", "--fold-max-partitions", 1.0, &[]),
        ("fold.maxDeltas", "--fold-max-deltas", 1.0, &[]),
        ("batch.timeoutMs", "--batch-timeout-ms", 1.0, &[]),
        ("claimIdleMs", "--claim-idle-ms", 1.0, &[]),
        (
            "database.pool.maxConnections",
            "--db-pool-max-connections",
            1.0,
            &["--db-pool-min-connections", "0"],
        ),
        (
            "database.pool.minConnections",
            "--db-pool-min-connections",
            1.0,
            &["--db-pool-max-connections", "1000"],
        ),
        (
            "database.pool.acquireTimeoutMs",
            "--db-acquire-timeout-ms",
            1.0,
            &[],
        ),
        (
            "rateLimits.maxEntriesPerSecond",
            "--max-entries-per-second",
            1.0,
            &[],
        ),
        (
            "rateLimits.analyticsMaxTermsPerSecond",
            "--analytics-max-terms-per-second",
            1.0,
            &[],
        ),
        ("analytics.concurrency", "--analytics-concurrency", 1.0, &[]),
        ("analytics.batchSize", "--analytics-batch-size", 1.0, &[]),
        (
            "analytics.maxAttempts",
            "--analytics-max-attempts",
            1.0,
            &[],
        ),
        ("drain.timeoutSeconds", "--drain-timeout-ms", 1000.0, &[]),
        (
            "telemetry.samplingRatio",
            "--otel-traces-sampler-arg",
            1.0,
            &[],
        ),
        ("analytics.replicas", "", 0.0, &[]),
    ];
    let accepts = |flag: &str, value: f64, extra: &[&str]| -> bool {
        let value = if value.fract() == 0.0 {
            format!("{}", value as i64)
        } else {
            value.to_string()
        };
        let mut args = vec![
            "postgres-writer",
            "run",
            "--database-url",
            "postgres://u@h/db",
            "--redis-streams",
            "s",
            flag,
            &value,
        ];
        args.extend_from_slice(extra);
        match worker::config::Cli::try_parse_from(&args) {
            Ok(cli) => match cli.command {
                worker::config::Command::Run(run) => {
                    run.validate().is_ok() && run.telemetry.validate().is_ok()
                }
                _ => unreachable!(),
            },
            Err(_) => false,
        }
    };
    for (path, flag, factor, extra) in cases {
        if flag.is_empty() {
            continue; // operator-only field (pod counts)
        }
        let (min, max) = field(path);
        let step = if factor == 1.0 && path.contains("Ratio") {
            0.01
        } else {
            1.0
        };
        assert!(
            accepts(flag, min * factor, extra),
            "{path}: the worker refuses the CRD's minimum {min}"
        );
        assert!(
            accepts(flag, max * factor, extra),
            "{path}: the worker refuses the CRD's maximum {max}"
        );
        assert!(
            !accepts(flag, (min - step) * factor, extra),
            "{path}: the worker accepts below the CRD's minimum {min}"
        );
        assert!(
            !accepts(flag, (max + step) * factor, extra),
            "{path}: the worker accepts above the CRD's maximum {max}"
        );
    }
}

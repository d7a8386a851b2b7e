//! The CRD: the committed YAML equals `crdgen`'s output, and its
//! openAPIV3Schema accepts the example resources and refuses invalid ones
//! (what the API server does on `kubectl apply`).

use operator::crd::PostgresWriter;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

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

/// The spec's numeric fields that have a range, by dotted path.
fn ranged_fields(node: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    let Some(properties) = node["properties"].as_object() else {
        return;
    };
    for (name, child) in properties {
        let path = match prefix {
            "" => name.clone(),
            _ => format!("{prefix}.{name}"),
        };
        if child.get("minimum").is_some() || child.get("maximum").is_some() {
            out.push((path, child.clone()));
        } else {
            ranged_fields(child, &path, out);
        }
    }
}

/// `resource` with the spec field at `path` set to `value`.
fn with_field(resource: &Value, path: &str, value: &Value) -> Value {
    let mut resource = resource.clone();
    let mut node = &mut resource["spec"];
    for part in path.split('.') {
        node = &mut node[part];
    }
    *node = value.clone();
    resource
}

/// What the operator puts in the pods' ConfigMap for `resource`.
fn config_of(resource: &Value) -> BTreeMap<String, String> {
    let cr: PostgresWriter = serde_json::from_value(resource.clone()).expect("a PostgresWriter");
    operator::resources::config_data(&cr.spec)
}

/// The environment variables a worker subcommand reads.
fn read_by(subcommand: &str) -> BTreeSet<String> {
    use clap::CommandFactory;
    let command = worker::config::Cli::command();
    let sub = command
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("no subcommand {subcommand}"));
    sub.get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

/// Starts `postgres-writer run` (parse and validate, as at start-up) with a
/// ConfigMap's values, passed as the flags the catalog names.
fn worker_run_with(config: &BTreeMap<String, String>) -> Result<(), String> {
    use clap::Parser;
    let run_reads = read_by("run");
    let mut args = vec![
        "postgres-writer".to_string(),
        "run".to_string(),
        "--database-url".to_string(),
        "postgres://u@h/db".to_string(),
    ];
    for (key, value) in config {
        let setting = settings::by_env(key).unwrap_or_else(|| panic!("{key}: not a setting"));
        if let (Some(flag), true) = (setting.flag(), run_reads.contains(key)) {
            args.push(format!("--{flag}={value}"));
        }
    }
    let cli = worker::config::Cli::try_parse_from(&args).map_err(|e| e.to_string())?;
    let worker::config::Command::Run(run) = cli.command else {
        unreachable!()
    };
    run.validate().map_err(|e| e.to_string())?;
    run.telemetry.validate().map_err(|e| e.to_string())
}

/// The CRD and the worker agree, checked through what the operator does
/// rather than a hand-kept table: each ranged field of the spec is traced to
/// the worker setting the operator passes it as (by moving it to its
/// minimum and maximum and watching the ConfigMap), then
/// - the field's schema default is the catalog's default of that setting;
/// - the worker starts with what the operator passes for the field's minimum
///   and maximum (a CRD stricter than the worker would refuse what works),
///   and refuses what it would pass one step beyond each (looser, it would
///   accept pods that crash at start-up).
#[test]
fn crd_ranges_and_defaults_are_the_workers() {
    let crd = serde_json::to_value(operator::crd::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let (_, base) = examples()
        .into_iter()
        .find(|(p, _)| p.ends_with("minimal.yaml"))
        .unwrap();
    let base_config = config_of(&base);
    worker_run_with(&base_config).expect("the worker starts with the defaults");
    let mut fields = Vec::new();
    ranged_fields(spec, "", &mut fields);
    let mut traced = BTreeMap::new();
    let mut operator_only = Vec::new();
    for (path, schema) in &fields {
        // The CRD's bounds are JSON Schema numbers (1.0); an integer field takes 1.
        let typed = |value: f64| match schema["type"].as_str() {
            Some("integer") => json!(value as i64),
            _ => json!(value),
        };
        let bound = |key: &str| typed(schema[key].as_f64().expect("a numeric bound"));
        let (min, max) = (bound("minimum"), bound("maximum"));
        let mut keys = BTreeSet::new();
        for bound in [&min, &max] {
            let config = config_of(&with_field(&base, path, bound));
            keys.extend(
                config
                    .iter()
                    .filter(|(k, v)| base_config.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone()),
            );
        }
        let env = match keys.len() {
            0 => {
                operator_only.push(path.as_str());
                continue;
            }
            1 => keys.pop_first().unwrap(),
            _ => panic!("{path} changes several settings: {keys:?}"),
        };
        let setting = settings::by_env(&env).unwrap_or_else(|| panic!("{env}: not in the catalog"));
        traced.insert(env.clone(), path.clone());

        // Defaults: the schema's, the serde default's and the catalog's are one.
        let default = &typed(
            schema["default"]
                .as_f64()
                .unwrap_or_else(|| panic!("{path}: no default in the schema")),
        );
        let passed = config_of(&with_field(&base, path, default))[&env].clone();
        assert_eq!(
            Some(passed.clone()),
            setting.default_value(),
            "{path}: the schema's default becomes {env}={passed}, not the catalog's default"
        );
        assert_eq!(
            base_config[&env], passed,
            "{path}: serde and schema defaults differ"
        );

        // Ranges: both ends start, one step beyond each is refused. A
        // resource the API server admits has minConnections <= maxConnections.
        let admitted = |value: &Value| {
            let resource = with_field(&base, path, value);
            match path.as_str() {
                "database.pool.minConnections" => with_field(
                    &resource,
                    "database.pool.maxConnections",
                    &json!(settings::DB_POOL_MAX_CONNECTIONS.max),
                ),
                _ => resource,
            }
        };
        let step = if schema["type"] == "integer" {
            1.0
        } else {
            0.01
        };
        for (bound, beyond) in [(&min, -step), (&max, step)] {
            let config = config_of(&admitted(bound));
            worker_run_with(&config).unwrap_or_else(|e| {
                panic!(
                    "{path}: the worker refuses the CRD's bound {bound} ({env}={}): {e}",
                    config[&env]
                )
            });
            let outside = typed(bound.as_f64().unwrap() + beyond);
            let config = config_of(&admitted(&outside));
            let error = worker_run_with(&config).err().unwrap_or_else(|| {
                panic!(
                    "{path}: the worker accepts {outside}, outside the CRD's range ({env}={})",
                    config[&env]
                )
            });
            assert!(
                error.contains(&env) || error.contains(setting.flag().unwrap_or("-")),
                "{path}: the refusal of {outside} does not name {env}: {error}"
            );
        }
    }
    // Pod counts are the operator's own.
    operator_only.sort();
    assert_eq!(operator_only, ["analytics.replicas", "replicas"]);
    // The worker's numeric settings the CRD exposes: none lost, none gained unnoticed.
    assert_eq!(
        traced.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "ANALYTICS_BATCH_SIZE",
            "ANALYTICS_CONCURRENCY",
            "ANALYTICS_MAX_ATTEMPTS",
            "ANALYTICS_MAX_TERMS_PER_SECOND",
            "BATCH_SIZE",
            "BATCH_TIMEOUT_MS",
            "CLAIM_IDLE_MS",
            "CONSUMER_REAP_IDLE_MS",
            "DB_ACQUIRE_TIMEOUT_MS",
            "DB_POOL_MAX_CONNECTIONS",
            "DB_POOL_MIN_CONNECTIONS",
            "DRAIN_TIMEOUT_MS",
            "FOLD_INTERVAL_MS",
            "FOLD_MAX_DELTAS",
            "FOLD_MAX_PARTITIONS",
            "FOLD_POLL_INTERVAL_MS",
            "MAX_ENTRIES_PER_SECOND",
            "OTEL_TRACES_SAMPLER_ARG",
        ]
    );
    // What lies between the off value and the range, the API server refuses (CEL).
    let reap = &spec["properties"]["consumerReapIdleMs"];
    assert_eq!(
        reap["x-kubernetes-validations"][0]["rule"],
        format!(
            "self == 0 || self >= {}",
            settings::CONSUMER_REAP_IDLE_MS.min
        )
    );
    assert!(worker_run_with(&BTreeMap::from([(
        "CONSUMER_REAP_IDLE_MS".to_string(),
        (settings::CONSUMER_REAP_IDLE_MS.min - 1).to_string()
    )]))
    .is_err());
    // Strings with a default.
    assert_eq!(
        spec["properties"]["consumerGroup"]["default"].as_str(),
        settings::CONSUMER_GROUP.default.value()
    );
    assert_eq!(
        spec["properties"]["consumerGroup"]["maxLength"],
        settings::CONSUMER_NAME_MAX_CHARS
    );
    // The partition count, where the CRD explains the fold's bound.
    let partitions = &spec["properties"]["fold"]["properties"]["maxPartitions"];
    assert_eq!(
        partitions["maximum"].as_f64(),
        Some(f64::from(settings::FOLD_PARTITIONS))
    );
    assert!(partitions["description"]
        .as_str()
        .unwrap()
        .contains(&format!("(of {})", settings::FOLD_PARTITIONS)));
}

/// Every ConfigMap key and pod variable the operator sets is a setting of
/// the catalog, read by the worker command of the pods that get it.
#[test]
fn operator_sets_only_settings_the_worker_reads() {
    let (_, full) = examples()
        .into_iter()
        .find(|(p, _)| p.ends_with("full.yaml"))
        .unwrap();
    let mut cr: PostgresWriter = serde_json::from_value(full).unwrap();
    cr.metadata.namespace = Some("chain".into());
    cr.metadata.uid = Some("uid-1".into());
    // Outside the CLI: the log subscriber's filter and OpenTelemetry's own variables.
    let not_flags = ["RUST_LOG", "POD_NAMESPACE", "OTEL_RESOURCE_ATTRIBUTES"];
    let (run, analytics, migrate) = (read_by("run"), read_by("analytics"), read_by("migrate"));
    let config = operator::resources::config_data(&cr.spec);
    assert!(config.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"));
    for key in config.keys() {
        assert!(
            settings::by_env(key).is_some(),
            "ConfigMap key {key}: not in the catalog"
        );
        assert!(
            run.contains(key) || analytics.contains(key) || not_flags.contains(&key.as_str()),
            "ConfigMap key {key}: neither `run` nor `analytics` reads it"
        );
    }
    let inputs = || operator::resources::PodInputs::image("img");
    // Every pod gets the shared variables (the migration Job REDIS_URL too).
    let reads: BTreeSet<String> = run
        .iter()
        .chain(&analytics)
        .chain(&migrate)
        .cloned()
        .collect();
    let pods = [
        serde_json::to_value(operator::resources::worker_deployment(&cr, inputs())).unwrap(),
        serde_json::to_value(operator::resources::analytics_deployment(&cr, inputs())).unwrap(),
        serde_json::to_value(operator::resources::migration_job(&cr, 0)).unwrap(),
    ];
    let mut names = BTreeSet::new();
    for object in pods {
        let env = &object["spec"]["template"]["spec"]["containers"][0]["env"];
        for name in env
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
        {
            names.insert(name.to_string());
            if not_flags.contains(&name) {
                continue;
            }
            assert!(
                settings::by_env(name).is_some(),
                "pod variable {name}: not in the catalog"
            );
            assert!(
                reads.contains(name),
                "pod variable {name}: its command does not read it"
            );
        }
    }
    for name in [
        "DATABASE_URL",
        "DATABASE_CA_FILE",
        "REDIS_CA_FILE",
        "CONSUMER_NAME",
    ] {
        assert!(names.contains(name), "{name} not set on any pod");
    }
}

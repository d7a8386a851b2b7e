//! The first scenarios of the user's story, each in its own namespace.

use crate::harness::*;
use serde_json::{json, Value};

/// Steps 2, 3, 4 and 7: creation, scaling, image change with a failing and
/// retried migration, deletion.
pub fn story(kube: &Kube) {
    let ns = namespace(kube, "story");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    apply(kube, &ns, &cr);

    // 2. A migration Job for the image; no Deployment before it succeeds.
    let job = wait_for_job(kube, &ns, "indexer", IMAGE_A, 0);
    wait_condition(
        kube,
        &ns,
        "indexer",
        "Migrated",
        "False",
        "MigrationRunning",
    );
    assert!(kube.get(&ns, "deployment/indexer-worker").is_none());
    finish_job_pod(kube, &ns, &job, 0);
    let obj = wait_condition(
        kube,
        &ns,
        "indexer",
        "Migrated",
        "True",
        "MigrationSucceeded",
    );
    let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
    for what in [
        "deployment/indexer-worker",
        "deployment/indexer-analytics",
        "configmap/indexer-config",
        "service/indexer-metrics",
        "poddisruptionbudget/indexer-worker",
        "poddisruptionbudget/indexer-analytics",
    ] {
        let o = wait_for(what, || {
            kube.get(&ns, what).ok_or_else(|| "absent".to_string())
        });
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"], &owner["controller"]),
            (&json!("PostgresWriter"), &json!(uid), &json!(true)),
            "{what} is owned by the resource"
        );
    }
    let svc = kube.get(&ns, "service/indexer-metrics").unwrap();
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app.kubernetes.io/instance": "indexer", "pgwriter.io/metrics": "true"}),
        "the metrics Service leaves migration pods out"
    );
    let obj = wait_condition(kube, &ns, "indexer", "Ready", "False", "ReplicasNotReady");
    assert_eq!(
        obj["status"]["observedGeneration"], obj["metadata"]["generation"],
        "observedGeneration"
    );
    // Ready needs the analytics pods too.
    make_pods_ready(kube, &ns, "indexer", "worker", 1);
    let obj = wait_for("worker pod counted ready", || {
        let o = kube.get(&ns, "pgw/indexer").unwrap();
        if o["status"]["readyReplicas"] == 1 {
            Ok(o)
        } else {
            Err(o["status"].to_string())
        }
    });
    let (ready, _, message) = condition(&obj, "Ready").unwrap();
    assert_eq!(ready, "False", "analytics not ready yet: {message}");
    assert!(message.contains("0/1 analytics pods ready"), "{message}");
    make_pods_ready(kube, &ns, "indexer", "analytics", 1);
    wait_condition(kube, &ns, "indexer", "Ready", "True", "AllReplicasReady");
    let table = kube.kubectl(&["-n", &ns, "get", "pgw"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REPLICAS", "READY", "STATUS", "MIGRATED", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..5], ["indexer", "1", "1", "Ready", "True"], "{table}");
    println!("kubectl get pgw:\n{table}");

    // 3. kubectl scale through the scale subresource.
    kube.kubectl(&["-n", &ns, "scale", "pgw/indexer", "--replicas=3"]);
    deployment_where(kube, &ns, "indexer-worker", "3 replicas", |d| {
        d["spec"]["replicas"] == 3
    });
    let obj = wait_for("status.replicas = 3", || {
        let o = kube.get(&ns, "pgw/indexer").unwrap();
        if o["status"]["replicas"] == 3 {
            Ok(o)
        } else {
            Err(o["status"].to_string())
        }
    });
    let selector = "app.kubernetes.io/component=worker,app.kubernetes.io/instance=indexer";
    assert_eq!(obj["status"]["selector"], selector);
    let scale: Value = serde_json::from_str(&kube.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/pgwriter.io/v1alpha1/namespaces/{ns}/postgreswriters/indexer/scale"),
    ]))
    .unwrap();
    assert_eq!(
        (
            &scale["spec"]["replicas"],
            &scale["status"]["replicas"],
            &scale["status"]["selector"]
        ),
        (&json!(3), &json!(3), &json!(selector)),
        "scale subresource: {scale}"
    );
    assert_eq!(kube.list(&ns, "pods", selector).len(), 3);
    // A hand-made scale of the Deployment is undone (two generations later: 5, then 3 again).
    let before = kube.get(&ns, "deployment/indexer-worker").unwrap()["metadata"]["generation"]
        .as_i64()
        .unwrap();
    kube.kubectl(&[
        "-n",
        &ns,
        "scale",
        "deployment/indexer-worker",
        "--replicas=5",
    ]);
    deployment_where(kube, &ns, "indexer-worker", "back to 3 replicas", |d| {
        d["spec"]["replicas"] == 3 && d["metadata"]["generation"].as_i64() >= Some(before + 2)
    });
    make_pods_ready(kube, &ns, "indexer", "worker", 3);

    // 4. Image change: a new Job; the workers stay on the old image.
    merge_patch(
        kube,
        &ns,
        "pgw/indexer",
        json!({"spec": {"image": IMAGE_B}}),
    );
    let job_b = wait_for_job(kube, &ns, "indexer", IMAGE_B, 0);
    let obj = wait_condition(
        kube,
        &ns,
        "indexer",
        "Progressing",
        "True",
        "MigrationRunning",
    );
    assert_eq!(
        obj["status"]["observedGeneration"],
        obj["metadata"]["generation"]
    );
    let worker = kube.get(&ns, "deployment/indexer-worker").unwrap();
    assert_eq!(
        container_image(&worker),
        IMAGE_A,
        "workers wait for the migration"
    );
    // The migration fails: Degraded with the Job's and the pod's reason, and an Event.
    finish_job_pod(kube, &ns, &job_b, 1);
    let obj = wait_condition(kube, &ns, "indexer", "Degraded", "True", "MigrationFailed");
    let (_, _, message) = condition(&obj, "Degraded").unwrap();
    assert!(
        message.contains(&job_b)
            && message.contains("PodFailurePolicy")
            && message.contains("Error (exit code 1)")
            && message.contains("permission denied for schema public"),
        "Degraded names the Job's and the pod's reason: {message}"
    );
    let (progressing, reason, _) = condition(&obj, "Progressing").unwrap();
    assert_eq!(
        (progressing.as_str(), reason.as_str()),
        ("False", "MigrationFailed")
    );
    wait_for_event(kube, &ns, "indexer", "Warning", "MigrationFailed");
    let worker = kube.get(&ns, "deployment/indexer-worker").unwrap();
    assert_eq!(
        container_image(&worker),
        IMAGE_A,
        "a failed migration keeps the old image"
    );
    // Retried without anyone deleting the Job: attempt 1 starts after the backoff.
    let retry = wait_for_job(kube, &ns, "indexer", IMAGE_B, 1);
    assert!(
        kube.get(&ns, &format!("job/{job_b}")).is_some(),
        "the failed Job is kept for inspection"
    );
    finish_job_pod(kube, &ns, &retry, 0);
    deployment_where(kube, &ns, "indexer-worker", "on the new image", |d| {
        container_image(d) == IMAGE_B
    });
    deployment_where(kube, &ns, "indexer-analytics", "on the new image", |d| {
        container_image(d) == IMAGE_B
    });
    let obj = wait_condition(kube, &ns, "indexer", "Degraded", "False", "AsExpected");
    // The version the migration pod reported in its termination message.
    assert_eq!(obj["status"]["schemaVersion"], "10");
    assert_eq!(obj["status"]["lastMigration"]["schemaVersion"], 10);
    assert_eq!(obj["status"]["lastMigration"]["image"], IMAGE_B);
    wait_for("earlier migration Jobs removed", || {
        let jobs = names(&kube.list(&ns, "jobs", "app.kubernetes.io/instance=indexer"));
        if jobs == [retry.clone()] {
            Ok(())
        } else {
            Err(format!("{jobs:?}"))
        }
    });

    // 7. Deleting the resource: the garbage collector removes what it owned.
    kube.kubectl(&["-n", &ns, "delete", "pgw/indexer", "--wait=true"]);
    wait_for("owned objects garbage-collected", || {
        let left = kube.kubectl(&[
            "-n",
            &ns,
            "get",
            "deployments,replicasets,jobs,pods,configmaps,services,poddisruptionbudgets",
            "-l",
            "app.kubernetes.io/instance=indexer",
            "-o",
            "name",
        ]);
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    kube.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// Step 5: same image, new Secret reference, pull policy and Redis source:
/// no wedge on the immutable Job template; the Deployments follow.
pub fn no_wedge(kube: &Kube) {
    let ns = namespace(kube, "wedge");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    apply_and_migrate(kube, &ns, &cr);
    deployment_where(kube, &ns, "indexer-worker", "created", |_| true);

    merge_patch(
        kube,
        &ns,
        "pgw/indexer",
        json!({"spec": {
            "imagePullPolicy": "Always",
            "database": {"urlSecretRef": {"name": "indexer-db-2"}},
            "redis": {"url": null, "urlSecretRef": {"name": "redis-credentials"}}
        }}),
    );
    for name in ["indexer-worker", "indexer-analytics"] {
        deployment_where(kube, &ns, name, "new Secret refs and pull policy", |d| {
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            let env = c["env"].as_array().cloned().unwrap_or_default();
            let secret_of = |var: &str| {
                env.iter()
                    .find(|e| e["name"] == var)
                    .map(|e| e["valueFrom"]["secretKeyRef"]["name"].clone())
            };
            c["imagePullPolicy"] == "Always"
                && secret_of("DATABASE_URL") == Some(json!("indexer-db-2"))
                && secret_of("REDIS_URL") == Some(json!("redis-credentials"))
        });
    }
    // The new template got its own Job (the database may be a new one), and no reconcile failed.
    let jobs = kube.list(&ns, "jobs", "app.kubernetes.io/component=migration");
    assert_eq!(jobs.len(), 2, "{:?}", names(&jobs));
    let obj = kube.get(&ns, "pgw/indexer").unwrap();
    let (_, reason, message) = condition(&obj, "Degraded").unwrap();
    assert!(
        !reason.starts_with("ReconcileFailed"),
        "{reason}: {message}"
    );
    assert!(events(kube, &ns, "indexer", "ReconcileFailedInvalid").is_empty());
    kube.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// A reconcile failure the CRD cannot foresee (the API server refuses the
/// Deployment) reaches the resource as a condition and an Event, and clears
/// once fixed.
pub fn reconcile_error_is_reported(kube: &Kube) {
    let ns = namespace(kube, "error");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    cr["spec"]["resources"] = json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}});
    apply_and_migrate(kube, &ns, &cr);
    let obj = wait_condition(
        kube,
        &ns,
        "indexer",
        "Degraded",
        "True",
        "ReconcileFailedInvalid",
    );
    let (_, _, message) = condition(&obj, "Degraded").unwrap();
    assert!(
        message.contains("must be less than or equal to cpu limit"),
        "{message}"
    );
    wait_for_event(kube, &ns, "indexer", "Warning", "ReconcileFailedInvalid");
    merge_patch(
        kube,
        &ns,
        "pgw/indexer",
        json!({"spec": {"resources": {"requests": {"cpu": "500m"}}}}),
    );
    wait_condition(kube, &ns, "indexer", "Degraded", "False", "AsExpected");
    deployment_where(kube, &ns, "indexer-worker", "created", |_| true);
    kube.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// Step 6: the API server refuses each invalid resource, naming the problem.
pub fn invalid_resources_are_refused(kube: &Kube) {
    let ns = namespace(kube, "invalid");
    let base = minimal_example();
    let max = operator::resources::MAX_NAME_LENGTH;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "negative replicas",
            Box::new(|v| v["spec"]["replicas"] = json!(-1)),
            "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
        ),
        (
            "empty stream list",
            Box::new(|v| v["spec"]["streams"] = json!([])),
            "spec.streams: Invalid value: 0: spec.streams in body should have at least 1 items",
        ),
        (
            "duplicate streams",
            Box::new(|v| v["spec"]["streams"] = json!(["a", "a"])),
            "spec.streams[1]: Duplicate value: \"a\"",
        ),
        (
            "comma in a stream name",
            Box::new(|v| v["spec"]["streams"] = json!(["a,b"])),
            "spec.streams[0]: Invalid value: \"a,b\": spec.streams[0] in body should match",
        ),
        (
            "minConnections > maxConnections",
            Box::new(|v| {
                v["spec"]["database"]["pool"] = json!({"minConnections": 20, "maxConnections": 10})
            }),
            "spec.database.pool: Invalid value: minConnections must not exceed maxConnections",
        ),
        (
            "OTLP endpoint without http(s)://",
            Box::new(|v| v["spec"]["telemetry"] = json!({"otlpEndpoint": "otel:4318"})),
            "spec.telemetry.otlpEndpoint: Invalid value: \"otel:4318\": spec.telemetry.otlpEndpoint in body should match '^https?://'",
        ),
        (
            "unknown OTLP protocol",
            Box::new(|v| v["spec"]["telemetry"] = json!({"otlpProtocol": "thrift"})),
            "spec.telemetry.otlpProtocol: Unsupported value: \"thrift\"",
        ),
        (
            "name too long for the derived names",
            Box::new(move |v| v["metadata"]["name"] = json!("n".repeat(max + 1))),
            "must be at most 44 characters: the longest derived name",
        ),
    ];
    let mut failures = Vec::new();
    for (what, mutate, expected) in &cases {
        let mut cr = base.clone();
        mutate(&mut cr);
        let out = kube.kubectl_stdin(
            &["-n", &ns, "create", "--dry-run=server", "-f", "-"],
            &cr.to_string(),
        );
        println!("{what}: {}", out.stderr.trim());
        if out.ok || !out.stderr.contains(expected) {
            failures.push(format!(
                "{what}: expected {expected:?}, got ok={} {}",
                out.ok, out.stderr
            ));
        }
    }
    // The limit itself is accepted.
    let mut cr = base.clone();
    cr["metadata"]["name"] = json!("n".repeat(max));
    let out = kube.kubectl_stdin(
        &["-n", &ns, "create", "--dry-run=server", "-f", "-"],
        &cr.to_string(),
    );
    assert!(out.ok, "a {max}-character name is accepted: {}", out.stderr);
    assert!(failures.is_empty(), "{failures:#?}");
    kube.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

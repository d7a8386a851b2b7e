//! Pod placement and identity, Secret rotation, suspend, and the status a
//! person reads (issue 16, items 1, 2, 3 and 7), each in its own namespace.

use crate::harness::*;
use serde_json::{json, Value};

fn pod_spec(template_owner: &Value) -> &Value {
    &template_owner["spec"]["template"]["spec"]
}

fn template_annotation(d: &Value, key: &str) -> Option<String> {
    d["spec"]["template"]["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

/// Placement and identity reach every pod: common `spec.pods`, the analytics
/// and migration overrides, the migration Job's resources under a quota that
/// admits only pods that set them; reserved labels are refused; a placement
/// change gets a new migration Job.
pub fn placement_and_identity(kube: &Kube) {
    let ns = namespace(kube, "placement");
    let priority = format!("pgw-e2e-{}", std::process::id());
    kube.kubectl(&[
        "create",
        "priorityclass",
        &priority,
        "--value=1000",
        "--description=postgres-writer e2e",
    ]);
    kube.kubectl(&["-n", &ns, "create", "serviceaccount", "writer"]);
    kube.kubectl(&["-n", &ns, "create", "serviceaccount", "migrator"]);
    // A quota on cpu and memory: the API server admits only pods that set
    // them. No quota controller runs here, so its status is written by hand.
    kube.kubectl(&[
        "-n",
        &ns,
        "create",
        "quota",
        "compute",
        "--hard=requests.cpu=10,requests.memory=10Gi,limits.cpu=20,limits.memory=20Gi",
    ]);
    kube.kubectl(&[
        "-n",
        &ns,
        "patch",
        "resourcequota",
        "compute",
        "--subresource=status",
        "--type=merge",
        "-p",
        &json!({"status": {
            "hard": {"requests.cpu": "10", "requests.memory": "10Gi", "limits.cpu": "20", "limits.memory": "20Gi"},
            "used": {"requests.cpu": "0", "requests.memory": "0", "limits.cpu": "0", "limits.memory": "0"}
        }})
        .to_string(),
    ]);
    let resources = json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}});
    let spread = json!([{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "indexer", "app.kubernetes.io/component": "worker"}}
    }]);
    let affinity = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "indexer"}}}
    }]}});
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    cr["spec"]["resources"] = resources.clone();
    cr["spec"]["analytics"] = json!({"resources": resources, "pods": {
        "nodeSelector": {"pool": "analytics"},
        "labels": {"team": "analytics", "cost-center": "42"}
    }});
    cr["spec"]["migration"] = json!({"resources": resources, "pods": {
        "serviceAccountName": "migrator",
        "annotations": {"example.com/job": "migrate"}
    }});
    cr["spec"]["pods"] = json!({
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"pool": "writers"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "writers", "effect": "NoSchedule"}],
        "affinity": affinity,
        "topologySpreadConstraints": spread,
        "priorityClassName": priority,
        "labels": {"team": "data"},
        "annotations": {"example.com/owner": "data-team"},
        "serviceAccountName": "writer"
    });

    // The operator's own labels and annotations are refused, naming the rule.
    for (field, key) in [
        ("labels", "app.kubernetes.io/instance"),
        ("annotations", "pgwriter.io/secrets-hash"),
    ] {
        let mut bad = cr.clone();
        bad["spec"]["pods"][field] = json!({ key: "x" });
        let out = kube.kubectl_stdin(
            &["-n", &ns, "create", "--dry-run=server", "-f", "-"],
            &bad.to_string(),
        );
        println!("reserved {field}: {}", out.stderr.trim());
        assert!(
            !out.ok
                && out
                    .stderr
                    .contains(&format!("{field} must not set the operator's own keys")),
            "{}",
            out.stderr
        );
    }

    apply(kube, &ns, &cr);
    let job_name = wait_for_job(kube, &ns, "indexer", IMAGE_A, 0);
    let job = kube.get(&ns, &format!("job/{job_name}")).unwrap();
    let spec = pod_spec(&job);
    assert_eq!(spec["serviceAccountName"], "migrator", "override: {spec}");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["nodeSelector"], json!({"pool": "writers"}));
    assert_eq!(spec["priorityClassName"], json!(priority));
    assert_eq!(spec["imagePullSecrets"], json!([{"name": "registry"}]));
    assert_eq!(
        spec["containers"][0]["resources"]["requests"]["cpu"],
        "100m"
    );
    let labels = &job["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["team"], "data");
    assert_eq!(labels["app.kubernetes.io/component"], "migration");
    assert_eq!(
        job["spec"]["template"]["metadata"]["annotations"]["example.com/job"],
        "migrate"
    );
    // The quota admitted the migration pod because it sets its resources.
    finish_job_pod(kube, &ns, &job_name, 0);

    let worker = deployment_where(kube, &ns, "indexer-worker", "created", |_| true);
    let spec = pod_spec(&worker);
    assert_eq!(spec["serviceAccountName"], "writer");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["nodeSelector"], json!({"pool": "writers"}));
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(spec["affinity"], affinity);
    assert_eq!(spec["topologySpreadConstraints"], spread);
    assert_eq!(spec["priorityClassName"], json!(priority));
    let meta = &worker["spec"]["template"]["metadata"];
    assert_eq!(meta["labels"]["team"], "data");
    assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "indexer");
    assert_eq!(meta["annotations"]["example.com/owner"], "data-team");
    let analytics = deployment_where(kube, &ns, "indexer-analytics", "created", |_| true);
    let spec = pod_spec(&analytics);
    assert_eq!(
        spec["nodeSelector"],
        json!({"pool": "analytics"}),
        "override"
    );
    assert_eq!(spec["serviceAccountName"], "writer", "inherited");
    let meta = &analytics["spec"]["template"]["metadata"];
    assert_eq!(meta["labels"]["team"], "analytics", "override wins");
    assert_eq!(meta["labels"]["cost-center"], "42");
    assert_eq!(meta["labels"]["app.kubernetes.io/component"], "analytics");
    // The pods themselves were admitted (service account, priority class, quota).
    make_pods_ready(kube, &ns, "indexer", "worker", 1);
    make_pods_ready(kube, &ns, "indexer", "analytics", 1);
    let pods = kube.list(
        &ns,
        "pods",
        "app.kubernetes.io/instance=indexer,app.kubernetes.io/component=worker",
    );
    assert_eq!(pods[0]["spec"]["priority"], 1000);
    wait_condition(kube, &ns, "indexer", "Ready", "True", "AllReplicasReady");

    // A placement change on the migration pod is a new Job (its template is
    // immutable), started at once; the workers are not held back.
    merge_patch(
        kube,
        &ns,
        "pgw/indexer",
        json!({"spec": {"migration": {"pods": {"tolerations": [{"key": "batch", "operator": "Exists"}]}}}}),
    );
    let second = wait_for("a new migration Job for the new placement", || {
        let jobs = names(&kube.list(&ns, "jobs", "app.kubernetes.io/component=migration"));
        jobs.iter()
            .find(|j| **j != job_name)
            .cloned()
            .ok_or_else(|| format!("{jobs:?}"))
    });
    let job = kube.get(&ns, &format!("job/{second}")).unwrap();
    assert_eq!(pod_spec(&job)["tolerations"][0]["key"], "batch");
    let obj = kube.get(&ns, "pgw/indexer").unwrap();
    assert_eq!(
        condition(&obj, "Ready").unwrap().0,
        "True",
        "{}",
        obj["status"]
    );
    finish_job_pod(kube, &ns, &second, 0);
    wait_for("the earlier Job removed", || {
        let jobs = names(&kube.list(&ns, "jobs", "app.kubernetes.io/component=migration"));
        (jobs == [second.clone()])
            .then_some(())
            .ok_or_else(|| format!("{jobs:?}"))
    });
    kube.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    kube.kubectl(&["delete", "priorityclass", &priority, "--wait=false"]);
}

/// Rotating a referenced Secret rolls the worker and analytics pods; a
/// missing Secret is reported and does not roll them; it clears once back.
pub fn secret_rotation(kube: &Kube) {
    let ns = namespace(kube, "secrets");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    apply_and_migrate(kube, &ns, &cr);
    make_pods_ready(kube, &ns, "indexer", "worker", 1);
    make_pods_ready(kube, &ns, "indexer", "analytics", 1);
    wait_condition(kube, &ns, "indexer", "Ready", "True", "AllReplicasReady");
    let key = "pgwriter.io/secrets-hash";
    let before: Vec<String> = ["indexer-worker", "indexer-analytics"]
        .iter()
        .map(|d| {
            let d = kube.get(&ns, &format!("deployment/{d}")).unwrap();
            template_annotation(&d, key).expect("secrets hash on the template")
        })
        .collect();

    // Rotation: new data in the database URL Secret.
    let rotated = kube.kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "indexer-db",
        "--from-literal=url=postgres://writer:rotated@postgres:5432/intuition",
        "--dry-run=client",
        "-o",
        "json",
    ]);
    let out = kube.kubectl_stdin(&["-n", &ns, "replace", "-f", "-"], &rotated);
    assert!(out.ok, "{}", out.stderr);
    for (name, old) in ["indexer-worker", "indexer-analytics"].iter().zip(&before) {
        deployment_where(kube, &ns, name, "rolled for the rotated Secret", |d| {
            template_annotation(d, key).is_some_and(|h| h != *old)
        });
    }
    // The rollout goes through the Deployment (new pods, the old ones drained).
    wait_condition(kube, &ns, "indexer", "Progressing", "True", "RollingOut");

    // A missing Secret: reported, and the pods are not rolled onto it.
    merge_patch(
        kube,
        &ns,
        "pgw/indexer",
        json!({"spec": {"database": {"caSecretRef": {"name": "indexer-db-ca"}}}}),
    );
    let obj = wait_condition(kube, &ns, "indexer", "Degraded", "True", "SecretMissing");
    let (_, _, message) = condition(&obj, "Degraded").unwrap();
    assert!(
        message.contains("Secret indexer-db-ca (spec.database.caSecretRef) not found"),
        "{message}"
    );
    wait_for_event(kube, &ns, "indexer", "Warning", "SecretMissing");
    let hash_while_missing = deployment_where(kube, &ns, "indexer-worker", "CA mounted", |d| {
        pod_spec(d)["volumes"][0]["secret"]["secretName"] == "indexer-db-ca"
    });
    let kept = template_annotation(&hash_while_missing, key);
    kube.kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "indexer-db-ca",
        "--from-literal=ca.crt=PEM",
    ]);
    wait_condition(kube, &ns, "indexer", "Degraded", "False", "AsExpected");
    deployment_where(kube, &ns, "indexer-worker", "hash with the CA", |d| {
        template_annotation(d, key) != kept
    });
    kube.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// Prints `kubectl get pgw -o wide` and `kubectl describe pgw` (shown with
/// --no-capture), and returns the table.
fn show(kube: &Kube, ns: &str, state: &str) -> String {
    let table = kube.kubectl(&["-n", ns, "get", "pgw", "-o", "wide"]);
    let describe = kube.kubectl(&["-n", ns, "describe", "pgw", "indexer"]);
    println!(
        "===== {state}: kubectl get pgw -o wide\n{table}\n===== {state}: kubectl describe pgw indexer\n{describe}"
    );
    table
}

fn column(table: &str, name: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let start = header
        .find(name)
        .unwrap_or_else(|| panic!("{name} in {header}"));
    let row = lines.next().unwrap();
    row[start..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Suspend drains to 0 and keeps everything else; the scale subresource
/// keeps working; resuming restores the replicas. A crashing pod and a
/// failed migration are reported. Shows the three states a person reads.
pub fn suspend_and_status(kube: &Kube) {
    let ns = namespace(kube, "suspend");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    cr["spec"]["replicas"] = json!(2);
    let job = apply_and_migrate(kube, &ns, &cr);
    make_pods_ready(kube, &ns, "indexer", "worker", 2);
    make_pods_ready(kube, &ns, "indexer", "analytics", 1);
    let obj = wait_condition(kube, &ns, "indexer", "Ready", "True", "AllReplicasReady");
    let status = &obj["status"];
    assert_eq!(status["phase"], "Ready");
    assert_eq!(status["currentImage"], IMAGE_A);
    assert_eq!(status["targetImage"], IMAGE_A);
    assert_eq!(status["lastMigration"]["jobName"], json!(job));
    assert_eq!(status["lastMigration"]["result"], "Succeeded");
    assert!(
        status["lastMigration"]["completionTime"].is_string(),
        "{status}"
    );
    let table = show(kube, &ns, "healthy");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REPLICAS",
            "READY",
            "STATUS",
            "MIGRATED",
            "AGE",
            "IMAGE",
            "TARGET",
            "MIGRATION",
            "MESSAGE"
        ],
        "{table}"
    );
    assert_eq!(column(&table, "STATUS"), "Ready");
    assert_eq!(column(&table, "IMAGE"), IMAGE_A);

    // A crashing worker pod: Degraded with the kubelet's reason, and an Event.
    let pods = kube.list(
        &ns,
        "pods",
        "app.kubernetes.io/instance=indexer,app.kubernetes.io/component=worker",
    );
    let pod = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let t = now();
    kube.patch_status(&ns, &pod, json!({
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": t}],
        "containerStatuses": [{"name": "worker", "image": IMAGE_A, "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": t, "finishedAt": t}}}]
    }));
    let obj = wait_condition(kube, &ns, "indexer", "Degraded", "True", "PodsFailing");
    let (_, _, message) = condition(&obj, "Degraded").unwrap();
    assert!(
        message.contains(&pod)
            && message.contains("CrashLoopBackOff")
            && message.contains("OOMKilled, exit code 137"),
        "{message}"
    );
    wait_for_event(kube, &ns, "indexer", "Warning", "PodsFailing");
    make_pods_ready(kube, &ns, "indexer", "worker", 2);
    wait_condition(kube, &ns, "indexer", "Degraded", "False", "AsExpected");

    // Suspend: both Deployments at 0, everything else kept.
    merge_patch(kube, &ns, "pgw/indexer", json!({"spec": {"suspend": true}}));
    for name in ["indexer-worker", "indexer-analytics"] {
        deployment_where(kube, &ns, name, "0 replicas", |d| {
            d["spec"]["replicas"] == 0
        });
    }
    let obj = wait_condition(kube, &ns, "indexer", "Suspended", "True", "Suspended");
    assert_eq!(obj["spec"]["replicas"], 2, "spec.replicas is kept");
    wait_for("status Suspended with no worker pods", || {
        let o = kube.get(&ns, "pgw/indexer").unwrap();
        let s = &o["status"];
        (s["phase"] == "Suspended" && s["replicas"] == 0)
            .then_some(())
            .ok_or_else(|| s.to_string())
    });
    let (ready, reason, _) = condition(&kube.get(&ns, "pgw/indexer").unwrap(), "Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "Suspended"));
    for what in [
        "configmap/indexer-config",
        "service/indexer-metrics",
        "poddisruptionbudget/indexer-worker",
        "poddisruptionbudget/indexer-analytics",
        &format!("job/{job}"),
    ] {
        assert!(
            kube.get(&ns, what).is_some(),
            "{what} is kept while suspended"
        );
    }
    wait_for("no worker or analytics pods", || {
        let pods = names(&kube.list(
            &ns,
            "pods",
            "app.kubernetes.io/instance=indexer,pgwriter.io/metrics=true",
        ));
        pods.is_empty()
            .then_some(())
            .ok_or_else(|| format!("{pods:?}"))
    });
    wait_for_event(kube, &ns, "indexer", "Normal", "Suspended");
    // The scale subresource keeps working: it sets spec.replicas, used on resume.
    kube.kubectl(&["-n", &ns, "scale", "pgw/indexer", "--replicas=3"]);
    wait_for("spec.replicas 3 while suspended", || {
        let o = kube.get(&ns, "pgw/indexer").unwrap();
        let (_, _, message) = condition(&o, "Ready").unwrap_or_default();
        (o["spec"]["replicas"] == 3 && message.contains("spec.replicas (3)"))
            .then_some(())
            .ok_or(message)
    });
    let d = kube.get(&ns, "deployment/indexer-worker").unwrap();
    assert_eq!(d["spec"]["replicas"], 0, "still suspended");
    let table = show(kube, &ns, "suspended");
    assert_eq!(column(&table, "STATUS"), "Suspended");

    // Resume: the replicas come back (3, as scaled while suspended).
    merge_patch(
        kube,
        &ns,
        "pgw/indexer",
        json!({"spec": {"suspend": false}}),
    );
    deployment_where(kube, &ns, "indexer-worker", "3 replicas", |d| {
        d["spec"]["replicas"] == 3
    });
    deployment_where(kube, &ns, "indexer-analytics", "1 replica", |d| {
        d["spec"]["replicas"] == 1
    });
    make_pods_ready(kube, &ns, "indexer", "worker", 3);
    make_pods_ready(kube, &ns, "indexer", "analytics", 1);
    wait_condition(kube, &ns, "indexer", "Ready", "True", "AllReplicasReady");
    wait_condition(kube, &ns, "indexer", "Suspended", "False", "NotSuspended");
    wait_for_event(kube, &ns, "indexer", "Normal", "Resumed");

    // A failed migration: current and target images differ, the Job is named.
    merge_patch(
        kube,
        &ns,
        "pgw/indexer",
        json!({"spec": {"image": IMAGE_B}}),
    );
    let job_b = wait_for_job(kube, &ns, "indexer", IMAGE_B, 0);
    finish_job_pod(kube, &ns, &job_b, 1);
    let obj = wait_condition(kube, &ns, "indexer", "Degraded", "True", "MigrationFailed");
    let status = &obj["status"];
    assert_eq!(status["phase"], "MigrationFailed");
    assert_eq!(status["currentImage"], IMAGE_A);
    assert_eq!(status["targetImage"], IMAGE_B);
    assert_eq!(status["lastMigration"]["jobName"], json!(job_b));
    assert_eq!(status["lastMigration"]["result"], "Failed");
    // The failed Job reported no version; the applied one stays in schemaVersion.
    assert!(
        status["lastMigration"]["schemaVersion"].is_null(),
        "{status}"
    );
    assert_eq!(status["schemaVersion"], "10");
    assert!(
        status["message"].as_str().unwrap_or("").contains(&job_b),
        "{status}"
    );
    for c in status["conditions"].as_array().unwrap() {
        assert!(
            c["reason"].as_str().is_some_and(|r| !r.is_empty())
                && c["message"].as_str().is_some_and(|m| !m.is_empty()),
            "every condition has a reason and a message: {c}"
        );
    }
    let table = show(kube, &ns, "failed migration");
    assert_eq!(column(&table, "STATUS"), "MigrationFailed");
    assert_eq!(column(&table, "TARGET"), IMAGE_B);
    kube.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

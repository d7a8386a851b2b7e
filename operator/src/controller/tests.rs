//! Reconcile tests against the recorded fake API server.

mod fake_api;

use super::*;
use crate::crd::{PostgresWriterSpec, PostgresWriterStatus};
use fake_api::FakeApi;
use kube::api::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use serde_json::{json, Value};

const NS: &str = "chain";
const IMAGE_A: &str = "registry.example/postgres-writer:1.0.0";
const IMAGE_B: &str = "registry.example/postgres-writer:1.1.0";

fn writer(image: &str, replicas: i32) -> PostgresWriter {
    let spec: PostgresWriterSpec = serde_json::from_value(json!({
        "image": image, "replicas": replicas, "streams": ["s1"],
        "redis": {"url": "redis://redis:6379"}, "database": {"urlSecretRef": {"name": "pg"}}
    }))
    .unwrap();
    let mut cr = PostgresWriter::new("indexer", spec);
    cr.metadata = ObjectMeta {
        name: Some("indexer".into()),
        namespace: Some(NS.into()),
        uid: Some("uid-cr".into()),
        generation: Some(1),
        ..Default::default()
    };
    cr
}

struct Harness {
    ctx: Arc<Context>,
    api: Arc<FakeApi>,
}

impl Harness {
    fn new() -> Harness {
        let (client, api) = FakeApi::start();
        api.seed(&secret_path("pg"), secret("pg", "1"));
        Harness {
            ctx: Arc::new(Context::new(client, Arc::new(Metrics::new()))),
            api,
        }
    }

    /// Reconciles `cr` with the status the fake server holds for it, and
    /// returns the transcript of requests.
    async fn reconcile(&self, cr: &mut PostgresWriter) -> Vec<String> {
        if let Some(stored) = self.api.object(&cr_path()) {
            cr.status = serde_json::from_value(stored["status"].clone()).ok();
        }
        // The API server holds the resource as the user last applied it.
        self.api
            .seed(&cr_path(), serde_json::to_value(&*cr).unwrap());
        reconcile(Arc::new(cr.clone()), self.ctx.clone())
            .await
            .expect("reconcile");
        if let Some(stored) = self.api.object(&cr_path()) {
            cr.status = serde_json::from_value(stored["status"].clone()).ok();
        }
        self.api.take_transcript()
    }

    /// The stored condition's status (True: true) and reason.
    fn condition(&self, type_: ConditionType) -> (bool, Reason) {
        let status = &self.api.object(&cr_path()).unwrap()["status"];
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_.as_str())
            .unwrap();
        let reason = c["reason"].as_str().unwrap();
        (
            c["status"] == "True",
            Reason::parse(reason).unwrap_or_else(|| panic!("unknown reason {reason}")),
        )
    }

    fn worker_image(&self) -> Option<String> {
        self.api
            .object(&deployment_path("indexer-worker"))
            .map(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
    }

    /// The first migration Job's pod, succeeded with `message` as its
    /// termination message (what `migrate` writes).
    fn succeed_job_pod(&self, cr: &PostgresWriter, message: &str) {
        let job = resources::migration_job_name(cr, 0);
        self.api.seed(
            &format!("/api/v1/namespaces/{NS}/pods/{job}-ok"),
            json!({"metadata": {"name": format!("{job}-ok"), "labels": {"batch.kubernetes.io/job-name": job}},
                   "status": {"phase": "Succeeded", "containerStatuses": [{"name": "migrate", "state": {"terminated":
                       {"exitCode": 0, "reason": "Completed", "message": message}}}]}}),
        );
    }

    fn set_job_status(&self, cr: &PostgresWriter, status: Value) {
        let path = job_path(&resources::migration_job_name(cr, 0));
        let mut job = self.api.object(&path).expect("job applied");
        job["status"] = status;
        self.api.seed(&path, job);
    }

    fn set_worker_status(&self, replicas: i64, ready: i64) {
        self.set_deployment_status("indexer-worker", replicas, ready);
    }

    fn set_deployment_status(&self, name: &str, replicas: i64, ready: i64) {
        let path = deployment_path(name);
        let mut d = self.api.object(&path).expect("deployment applied");
        d["status"] = json!({"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "availableReplicas": ready});
        self.api.seed(&path, d);
    }
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

/// A Secret as the metadata-only GET returns it.
fn secret(name: &str, version: &str) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": name, "namespace": NS, "resourceVersion": version}})
}

fn cr_path() -> String {
    format!("/apis/pgwriter.io/v1alpha1/namespaces/{NS}/postgreswriters/indexer")
}
fn job_path(name: &str) -> String {
    format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}")
}
fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}")
}

fn has(transcript: &[String], needle: &str) -> bool {
    transcript.iter().any(|t| t == needle)
}

#[tokio::test]
async fn first_creation_starts_the_migration_and_holds_the_workers() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 2);
    let t = h.reconcile(&mut cr).await;
    println!("transcript (first creation):\n  {}", t.join("\n  "));
    assert!(has(
        &t,
        &format!("PATCH /api/v1/namespaces/{NS}/configmaps/indexer-config")
    ));
    assert!(has(
        &t,
        &format!("POST /apis/batch/v1/namespaces/{NS}/jobs")
    ));
    assert!(has(
        &t,
        &format!("GET {}", deployment_path("indexer-worker"))
    ));
    assert!(
        !t.iter().any(|r| r.starts_with("PATCH /apis/apps/v1")),
        "no Deployment before the migration: {t:?}"
    );
    assert!(has(&t, &format!("PATCH {}/status", cr_path())));
    assert_eq!(
        h.condition(ConditionType::Migrated),
        (false, Reason::MigrationRunning)
    );
    assert_eq!(
        h.condition(ConditionType::Progressing),
        (true, Reason::MigrationRunning)
    );
    assert_eq!(
        h.condition(ConditionType::Ready),
        (false, Reason::WaitingForMigration)
    );
    assert_eq!(
        h.api.events(),
        vec![("Normal".to_string(), Reason::MigrationStarted.to_string())]
    );
    let status = cr.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.selector,
        "app.kubernetes.io/component=worker,app.kubernetes.io/instance=indexer"
    );
}

#[tokio::test]
async fn job_done_applies_the_deployments_and_ready_follows_the_pods() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 2);
    h.reconcile(&mut cr).await;
    h.succeed_job_pod(&cr, "schema version 12");
    h.set_job_status(&cr, json!({"succeeded": 1}));
    let t = h.reconcile(&mut cr).await;
    println!("transcript (migration succeeded):\n  {}", t.join("\n  "));
    for path in [
        deployment_path("indexer-worker"),
        deployment_path("indexer-analytics"),
        format!("/api/v1/namespaces/{NS}/services/indexer-metrics"),
        format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/indexer-worker"),
    ] {
        assert!(
            has(&t, &format!("PATCH {path}")),
            "{path} not applied: {t:?}"
        );
    }
    assert_eq!(h.worker_image().as_deref(), Some(IMAGE_A));
    assert_eq!(
        h.condition(ConditionType::Migrated),
        (true, Reason::MigrationSucceeded)
    );
    assert_eq!(
        h.condition(ConditionType::Ready),
        (false, Reason::ReplicasNotReady)
    );
    let status = cr.status.as_ref().unwrap();
    assert_eq!(status.schema_version.as_deref(), Some("12"));
    assert_eq!(
        status.last_migration.as_ref().unwrap().schema_version,
        Some(12)
    );

    h.set_worker_status(2, 2);
    h.reconcile(&mut cr).await;
    // Ready waits for the analytics pods too.
    assert_eq!(
        h.condition(ConditionType::Ready),
        (false, Reason::ReplicasNotReady)
    );
    h.set_deployment_status("indexer-analytics", 1, 1);
    h.reconcile(&mut cr).await;
    assert_eq!(
        h.condition(ConditionType::Ready),
        (true, Reason::AllReplicasReady)
    );
    assert_eq!(
        h.condition(ConditionType::Progressing),
        (false, Reason::RolloutComplete)
    );
    assert_eq!(
        (
            cr.status.as_ref().unwrap().replicas,
            cr.status.as_ref().unwrap().ready_replicas
        ),
        (2, 2)
    );
    let reasons: Vec<String> = h.api.events().into_iter().map(|e| e.1).collect();
    assert!(
        reasons.contains(&Reason::MigrationSucceeded.to_string())
            && reasons.contains(&Reason::Ready.to_string()),
        "{reasons:?}"
    );

    // Idempotent: nothing changed, so no status write and no new events.
    let events_before = h.api.events().len();
    let t = h.reconcile(&mut cr).await;
    assert!(!has(&t, &format!("PATCH {}/status", cr_path())), "{t:?}");
    assert_eq!(h.api.events().len(), events_before);
}

#[tokio::test]
async fn failed_job_degrades_and_keeps_the_running_image() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 1);
    h.reconcile(&mut cr).await;
    h.succeed_job_pod(&cr, "schema version 9");
    h.set_job_status(&cr, json!({"succeeded": 1}));
    h.reconcile(&mut cr).await;
    assert_eq!(h.worker_image().as_deref(), Some(IMAGE_A));

    cr.spec.image = IMAGE_B.into();
    cr.metadata.generation = Some(2);
    h.reconcile(&mut cr).await;
    h.set_job_status(&cr, json!({"failed": 5, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
    h.reconcile(&mut cr).await;
    assert_eq!(
        h.worker_image().as_deref(),
        Some(IMAGE_A),
        "workers must not move to an unmigrated image"
    );
    assert_eq!(
        h.condition(ConditionType::Degraded),
        (true, Reason::MigrationFailed)
    );
    assert_eq!(
        h.condition(ConditionType::Migrated),
        (false, Reason::MigrationFailed)
    );
    assert!(h
        .api
        .events()
        .contains(&("Warning".to_string(), Reason::MigrationFailed.to_string())));
    assert_eq!(
        cr.status.as_ref().unwrap().schema_version.as_deref(),
        Some("9"),
        "the applied version stays until a new migration reports one"
    );
}

#[test]
fn schema_reports_are_parsed_strictly() {
    assert_eq!(parse_schema_report("schema version 10"), Some(10));
    assert_eq!(parse_schema_report("schema version 10\n"), Some(10));
    for other in [
        "",
        "schema at the latest version",
        "schema version ten",
        "schema version 0",
        "error: migration 0007 failed",
    ] {
        assert_eq!(parse_schema_report(other), None, "{other:?}");
    }
}

fn failed_status(at: &str) -> Value {
    json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
        "message": "Container migrate for pod chain/x failed with exit code 1", "lastTransitionTime": at}]})
}

#[tokio::test]
async fn failed_migration_reports_why_and_is_retried_after_the_backoff() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 1);
    h.reconcile(&mut cr).await;
    let first = resources::migration_job_name(&cr, 0);
    // The pod the Job controller ran, as the kubelet left it.
    h.api.seed(
        &format!("/api/v1/namespaces/{NS}/pods/{first}-abcde"),
        json!({"metadata": {"name": format!("{first}-abcde"), "labels": {"batch.kubernetes.io/job-name": first}},
               "status": {"phase": "Failed", "containerStatuses": [{"name": "migrate", "state": {"terminated":
                   {"exitCode": 1, "reason": "Error", "message": "password authentication failed"}}}]}}),
    );
    let just_now = k8s_openapi::jiff::Timestamp::now().to_string();
    h.set_job_status(&cr, failed_status(&just_now));
    let t = h.reconcile(&mut cr).await;
    assert!(
        !t.iter().any(|r| r.starts_with("POST /apis/batch")),
        "no retry before the backoff: {t:?}"
    );
    assert_eq!(
        h.condition(ConditionType::Degraded),
        (true, Reason::MigrationFailed)
    );
    assert_eq!(
        h.condition(ConditionType::Progressing),
        (false, Reason::MigrationFailed)
    );
    let message = &cr
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Degraded.as_str())
        .unwrap()
        .message;
    assert!(
        message.contains("PodFailurePolicy")
            && message.contains("Error (exit code 1): password authentication failed")
            && message.contains("next attempt at"),
        "{message}"
    );
    // The backoff has passed: attempt 1, without anyone deleting the failed Job.
    h.set_job_status(&cr, failed_status("2020-01-01T00:00:00Z"));
    let t = h.reconcile(&mut cr).await;
    assert!(
        has(&t, &format!("POST /apis/batch/v1/namespaces/{NS}/jobs")),
        "{t:?}"
    );
    let retry = resources::migration_job_name(&cr, 1);
    assert!(h.api.object(&job_path(&retry)).is_some());
    assert!(
        h.api.object(&job_path(&first)).is_some(),
        "the failed Job stays for inspection"
    );
    assert_eq!(
        h.condition(ConditionType::Migrated),
        (false, Reason::MigrationRunning)
    );
    assert!(h
        .api
        .events()
        .contains(&("Normal".to_string(), Reason::MigrationRetried.to_string())));
    assert_eq!(
        retry_delay(Duration::from_secs(60), 1),
        Duration::from_secs(60)
    );
    assert_eq!(
        retry_delay(Duration::from_secs(60), 3),
        Duration::from_secs(240)
    );
    assert_eq!(
        retry_delay(Duration::from_secs(60), 30),
        Duration::from_secs(60 * 32)
    );
    // Attempt 1 succeeds: the Deployments appear and the failed attempt is removed.
    let path = job_path(&retry);
    let mut job = h.api.object(&path).unwrap();
    job["status"] = json!({"succeeded": 1});
    h.api.seed(&path, job);
    h.reconcile(&mut cr).await;
    assert_eq!(h.worker_image().as_deref(), Some(IMAGE_A));
    assert!(h.api.object(&job_path(&first)).is_none());
    assert_eq!(
        h.condition(ConditionType::Degraded),
        (false, Reason::AsExpected)
    );
}

#[tokio::test]
async fn a_new_job_template_with_the_same_image_gets_a_new_job_and_no_job_is_patched() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 1);
    h.reconcile(&mut cr).await;
    h.set_job_status(&cr, json!({"succeeded": 1}));
    h.reconcile(&mut cr).await;
    let old = resources::migration_job_name(&cr, 0);
    cr.spec.database.url_secret_ref.name = "pg-2".into();
    cr.spec.image_pull_policy = crate::crd::PullPolicy::Always;
    let t = h.reconcile(&mut cr).await;
    assert!(
        !t.iter().any(|r| r.starts_with("PATCH /apis/batch")),
        "a Job is never patched: {t:?}"
    );
    assert!(
        has(&t, &format!("POST /apis/batch/v1/namespaces/{NS}/jobs")),
        "{t:?}"
    );
    assert_ne!(resources::migration_job_name(&cr, 0), old);
    // The Deployment follows at once (same image, so nothing waits).
    let d = h.api.object(&deployment_path("indexer-worker")).unwrap();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "pg-2");
}

#[tokio::test]
async fn image_change_waits_for_its_migration_then_rolls_out() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 2);
    h.reconcile(&mut cr).await;
    h.set_job_status(&cr, json!({"succeeded": 1}));
    h.reconcile(&mut cr).await;
    let old_job = job_path(&resources::migration_job_name(&cr, 0));

    cr.spec.image = IMAGE_B.into();
    let t = h.reconcile(&mut cr).await;
    // Still running: a replica change would roll out, the image does not.
    assert!(has(
        &t,
        &format!("POST /apis/batch/v1/namespaces/{NS}/jobs")
    ));
    assert_eq!(h.worker_image().as_deref(), Some(IMAGE_A));
    assert_eq!(
        h.condition(ConditionType::Progressing),
        (true, Reason::MigrationRunning)
    );

    h.set_job_status(&cr, json!({"succeeded": 1}));
    let t = h.reconcile(&mut cr).await;
    println!(
        "transcript (image change, migration done):\n  {}",
        t.join("\n  ")
    );
    assert_eq!(h.worker_image().as_deref(), Some(IMAGE_B));
    let analytics = h.api.object(&deployment_path("indexer-analytics")).unwrap();
    assert_eq!(
        analytics["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE_B
    );
    assert!(
        has(&t, &format!("DELETE {old_job}")),
        "the previous image's Job is removed: {t:?}"
    );
    assert!(h.api.object(&old_job).is_none());
}

#[tokio::test]
async fn scale_and_settings_changes_are_applied() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 2);
    h.reconcile(&mut cr).await;
    h.set_job_status(&cr, json!({"succeeded": 1}));
    h.reconcile(&mut cr).await;
    // `kubectl scale pgw/indexer --replicas=5` edits spec.replicas through the scale subresource.
    cr.spec.replicas = 5;
    cr.spec.database.pool.max_connections = 33;
    cr.metadata.generation = Some(2);
    h.reconcile(&mut cr).await;
    let d = h.api.object(&deployment_path("indexer-worker")).unwrap();
    assert_eq!(d["spec"]["replicas"], 5);
    let cm = h
        .api
        .object(&format!(
            "/api/v1/namespaces/{NS}/configmaps/indexer-config"
        ))
        .unwrap();
    assert_eq!(cm["data"]["DB_POOL_MAX_CONNECTIONS"], "33");
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"][resources::CONFIG_HASH_ANNOTATION],
        json!(resources::config_hash(&cr))
    );
    assert_eq!(
        h.condition(ConditionType::Progressing),
        (true, Reason::RollingOut)
    );
    assert_eq!(cr.status.as_ref().unwrap().observed_generation, Some(2));

    // Turning analytics off removes its Deployment.
    cr.spec.analytics.enabled = false;
    let t = h.reconcile(&mut cr).await;
    assert!(has(
        &t,
        &format!("DELETE {}", deployment_path("indexer-analytics"))
    ));
}

#[tokio::test]
async fn deletion_leaves_cleanup_to_owner_references() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 1);
    cr.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let action = reconcile(Arc::new(cr.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert!(
        h.api.take_transcript().is_empty(),
        "a resource being deleted gets no writes"
    );
    // Every object the operator creates is owned by the resource, so the API server collects it.
    let job = resources::migration_job(&writer(IMAGE_A, 1), 0);
    assert_eq!(job.metadata.owner_references.unwrap()[0].uid, "uid-cr");
}

#[tokio::test]
async fn error_policy_backs_off_exponentially_and_resets_on_success() {
    let h = Harness::new();
    let cr = Arc::new(writer(IMAGE_A, 1));
    let error = Error::NoNamespace("x".into());
    let delays: Vec<Action> = (0..4)
        .map(|_| error_policy(cr.clone(), &error, h.ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        vec![
            Action::requeue(Duration::from_secs(5)),
            Action::requeue(Duration::from_secs(10)),
            Action::requeue(Duration::from_secs(20)),
            Action::requeue(Duration::from_secs(40)),
        ]
    );
    let mut ok = writer(IMAGE_A, 1);
    h.reconcile(&mut ok).await;
    assert_eq!(
        error_policy(cr, &error, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert!(h
        .ctx
        .metrics
        .encode()
        .contains("pgw_operator_reconciles_total{result=\"ok\"} 1"));
}

/// (group, resource, verb) of one recorded request.
fn permission(request: &str) -> Vec<(String, String, String)> {
    let (method, path) = request.split_once(' ').unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts[0] {
        "api" => ("".to_string(), &parts[2..]),
        _ => (parts[1].to_string(), &parts[3..]),
    };
    // rest: namespaces/{ns}/{resource}[/{name}[/{sub}]]
    let resource = rest[2].to_string();
    let (resource, is_object) = match rest.len() {
        3 => (resource, false),
        4 => (resource, true),
        _ => (format!("{resource}/{}", rest[4]), true),
    };
    let verbs: &[&str] = match (method, is_object) {
        ("GET", true) => &["get"],
        ("GET", false) => &["list"],
        ("DELETE", _) => &["delete"],
        ("POST", _) => &["create"],
        // Server-side apply creates the object when it is missing.
        ("PATCH", _) if !resource.ends_with("/status") => &["patch", "create"],
        ("PATCH", _) => &["patch"],
        other => panic!("unexpected request {other:?}"),
    };
    verbs
        .iter()
        .map(|v| (group.clone(), resource.clone(), v.to_string()))
        .collect()
}

fn helm() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = std::env::var("HELM")
        .map(Into::into)
        .unwrap_or_else(|_| root.join(".tools/bin/helm"));
    assert!(
        path.exists(),
        "helm not found at {}: run scripts/tools.sh (or set HELM)",
        path.display()
    );
    path
}

/// Rules of the chart's (Cluster)Role, rendered by the real helm.
fn chart_rules(values: &[&str]) -> std::collections::BTreeSet<(String, String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = std::process::Command::new(helm());
    cmd.args([
        "template",
        "pgw",
        "charts/postgres-writer-operator",
        "--namespace",
        "operators",
        "--set",
        "image.repository=registry.example/postgres-writer-operator",
    ])
    .current_dir(&root);
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rules = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        // The leader-election Role is checked against leader.rs in tests/chart.rs.
        let leases = doc["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-leader-election"));
        if (doc["kind"] == "ClusterRole" || doc["kind"] == "Role") && !leases {
            for rule in doc["rules"].as_array().unwrap() {
                for g in rule["apiGroups"].as_array().unwrap() {
                    for r in rule["resources"].as_array().unwrap() {
                        for v in rule["verbs"].as_array().unwrap() {
                            rules.insert((
                                g.as_str().unwrap().into(),
                                r.as_str().unwrap().into(),
                                v.as_str().unwrap().into(),
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(!rules.is_empty(), "no Role or ClusterRole rendered");
    rules
}

use serde::Deserialize as _;

#[tokio::test]
async fn chart_rbac_covers_exactly_what_the_controller_uses() {
    // Every request of every reconcile scenario, plus the watches.
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 2);
    let mut transcript = h.reconcile(&mut cr).await;
    h.set_job_status(&cr, json!({"succeeded": 1}));
    transcript.extend(h.reconcile(&mut cr).await);
    cr.spec.image = IMAGE_B.into();
    transcript.extend(h.reconcile(&mut cr).await);
    h.set_job_status(&cr, json!({"succeeded": 1}));
    transcript.extend(h.reconcile(&mut cr).await);
    cr.spec.analytics.enabled = false;
    transcript.extend(h.reconcile(&mut cr).await);
    // A failed migration: its pods are listed for their reason.
    cr.spec.image = IMAGE_A.into();
    transcript.extend(h.reconcile(&mut cr).await);
    h.set_job_status(
        &cr,
        failed_status(&k8s_openapi::jiff::Timestamp::now().to_string()),
    );
    transcript.extend(h.reconcile(&mut cr).await);

    let mut used: std::collections::BTreeSet<(String, String, String)> =
        transcript.iter().flat_map(|r| permission(r)).collect();
    for (group, resource) in WATCHED {
        for verb in ["list", "watch"] {
            used.insert((group.into(), resource.into(), verb.into()));
        }
    }
    // Granted without a recorded request, each for a stated reason (also commented in rbac.yaml).
    let justified = [(
        ("events.k8s.io", "events", "patch"),
        "the event recorder patches an existing Event when the same event repeats (a series)",
    )];
    for values in [&[][..], &["watchNamespace=chain"][..]] {
        let granted = chart_rules(values);
        let missing: Vec<_> = used.difference(&granted).collect();
        assert!(
            missing.is_empty(),
            "chart RBAC ({values:?}) lacks {missing:?}"
        );
        let extra: Vec<_> = granted
            .difference(&used)
            .filter(|(g, r, v)| {
                !justified
                    .iter()
                    .any(|((jg, jr, jv), _)| jg == g && jr == r && jv == v)
            })
            .collect();
        assert!(
            extra.is_empty(),
            "chart RBAC ({values:?}) grants more than the controller uses: {extra:?}"
        );
    }
    println!("controller uses: {used:#?}");
}

fn template_annotation(h: &Harness, deployment: &str, key: &str) -> Option<String> {
    h.api.object(&deployment_path(deployment)).and_then(|d| {
        d["spec"]["template"]["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    })
}

#[tokio::test]
async fn a_rotated_secret_rolls_the_pods_and_a_missing_one_is_reported() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 1);
    h.reconcile(&mut cr).await;
    h.set_job_status(&cr, json!({"succeeded": 1}));
    let t = h.reconcile(&mut cr).await;
    assert!(has(&t, &format!("GET {}", secret_path("pg"))), "{t:?}");
    let key = resources::SECRETS_HASH_ANNOTATION;
    let first = template_annotation(&h, "indexer-worker", key).expect("hash");
    let first_analytics = template_annotation(&h, "indexer-analytics", key).expect("hash");

    h.api.seed(&secret_path("pg"), secret("pg", "2"));
    h.reconcile(&mut cr).await;
    let second = template_annotation(&h, "indexer-worker", key).unwrap();
    assert_ne!(first, second, "a new resourceVersion rolls the workers");
    assert_ne!(
        template_annotation(&h, "indexer-analytics", key).unwrap(),
        first_analytics
    );

    // A reference to a Secret that does not exist: reported, hash kept.
    cr.spec.database.ca_secret_ref = Some(crate::crd::CaSecretRef {
        name: "pg-ca".into(),
        key: "ca.crt".into(),
    });
    h.reconcile(&mut cr).await;
    assert_eq!(
        h.condition(ConditionType::Degraded),
        (true, Reason::SecretMissing)
    );
    assert_eq!(
        template_annotation(&h, "indexer-worker", key).unwrap(),
        second
    );
    assert!(h
        .api
        .events()
        .contains(&("Warning".to_string(), Reason::SecretMissing.to_string())));
    let status = cr.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some(Phase::Degraded.as_str()));
    assert!(status
        .message
        .unwrap()
        .contains("Secret pg-ca (spec.database.caSecretRef) not found"),);
    h.api.seed(&secret_path("pg-ca"), secret("pg-ca", "7"));
    h.reconcile(&mut cr).await;
    assert_eq!(
        h.condition(ConditionType::Degraded),
        (false, Reason::AsExpected)
    );
    assert_ne!(
        template_annotation(&h, "indexer-worker", key).unwrap(),
        second
    );
}

#[tokio::test]
async fn suspend_scales_to_zero_reports_suspended_and_resume_restores() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 2);
    h.reconcile(&mut cr).await;
    h.set_job_status(
        &cr,
        json!({"succeeded": 1, "completionTime": "2026-01-01T00:00:00Z"}),
    );
    h.reconcile(&mut cr).await;
    h.set_worker_status(2, 2);
    h.set_deployment_status("indexer-analytics", 1, 1);
    h.reconcile(&mut cr).await;
    let status = cr.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some(Phase::Ready.as_str()));
    assert_eq!(status.current_image.as_deref(), Some(IMAGE_A));
    assert_eq!(status.target_image.as_deref(), Some(IMAGE_A));
    let last = status.last_migration.unwrap();
    assert_eq!(last.job_name, resources::migration_job_name(&cr, 0));
    assert_eq!(last.result, "Succeeded");
    assert!(last.completion_time.is_some());
    assert_eq!(
        h.condition(ConditionType::Suspended),
        (false, Reason::NotSuspended)
    );
    assert!(
        !h.api
            .events()
            .iter()
            .any(|e| e.1 == Reason::Resumed.as_str()),
        "no Resumed event on creation"
    );

    cr.spec.suspend = true;
    h.reconcile(&mut cr).await;
    for name in ["indexer-worker", "indexer-analytics"] {
        assert_eq!(
            h.api.object(&deployment_path(name)).unwrap()["spec"]["replicas"],
            0
        );
    }
    h.set_worker_status(0, 0);
    h.set_deployment_status("indexer-analytics", 0, 0);
    h.reconcile(&mut cr).await;
    assert_eq!(
        h.condition(ConditionType::Suspended),
        (true, Reason::Suspended)
    );
    assert_eq!(
        h.condition(ConditionType::Ready),
        (false, Reason::Suspended)
    );
    assert_eq!(
        cr.status.as_ref().unwrap().phase.as_deref(),
        Some(Phase::Suspended.as_str())
    );
    assert!(h
        .api
        .events()
        .contains(&("Normal".to_string(), Reason::Suspended.to_string())));

    cr.spec.suspend = false;
    h.reconcile(&mut cr).await;
    assert_eq!(
        h.api.object(&deployment_path("indexer-worker")).unwrap()["spec"]["replicas"],
        2
    );
    assert!(h
        .api
        .events()
        .contains(&("Normal".to_string(), Reason::Resumed.to_string())));
}

#[tokio::test]
async fn failing_pods_are_reported_with_the_kubelets_reason() {
    let h = Harness::new();
    let mut cr = writer(IMAGE_A, 1);
    h.reconcile(&mut cr).await;
    h.set_job_status(&cr, json!({"succeeded": 1}));
    h.reconcile(&mut cr).await;
    h.api.seed(
        &format!("/api/v1/namespaces/{NS}/pods/indexer-worker-abc"),
        json!({"metadata": {"name": "indexer-worker-abc", "labels": {
                  "app.kubernetes.io/instance": "indexer", "app.kubernetes.io/component": "worker"}},
               "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": IMAGE_A,
                  "imageID": "", "ready": false, "restartCount": 3,
                  "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                  "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}),
    );
    h.reconcile(&mut cr).await;
    assert_eq!(
        h.condition(ConditionType::Degraded),
        (true, Reason::PodsFailing)
    );
    let message = cr.status.as_ref().unwrap().message.clone().unwrap();
    assert!(
        message.contains("pod indexer-worker-abc: CrashLoopBackOff: back-off 40s (last exit: OOMKilled, exit code 137)"),
        "{message}"
    );
    assert!(h
        .api
        .events()
        .contains(&("Warning".to_string(), Reason::PodsFailing.to_string())));
}

#[test]
fn pod_problems_name_unschedulable_and_failed_pods_and_skip_healthy_ones() {
    let pods: Vec<Pod> = serde_json::from_value(json!([
        {"metadata": {"name": "a"}, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/3 nodes match the node selector"}]}},
        {"metadata": {"name": "b"}, "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}},
        {"metadata": {"name": "c"}, "status": {"phase": "Pending", "containerStatuses": [{"name": "worker",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}},
        {"metadata": {"name": "d"}, "status": {"phase": "Pending", "containerStatuses": [{"name": "worker",
            "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"pg\" not found"}}}]}}
    ]))
    .unwrap();
    assert_eq!(
        pod_problems(&pods),
        vec![
            "pod a: Unschedulable: 0/3 nodes match the node selector".to_string(),
            "pod b: Evicted: low on memory".to_string(),
            "pod d: CreateContainerConfigError: secret \"pg\" not found".to_string(),
        ]
    );
}

#[test]
fn a_secret_maps_to_the_writers_that_reference_it() {
    let mut a = writer(IMAGE_A, 1);
    a.spec.redis.url = None;
    a.spec.redis.url_secret_ref = Some(crate::crd::SecretKeyRef {
        name: "redis".into(),
        key: "url".into(),
    });
    let mut b = writer(IMAGE_A, 1);
    b.metadata.name = Some("other".into());
    let mut elsewhere = writer(IMAGE_A, 1);
    elsewhere.metadata.namespace = Some("elsewhere".into());
    let all: Vec<Arc<PostgresWriter>> = [a, b, elsewhere].into_iter().map(Arc::new).collect();
    let names = |refs: Vec<ObjectRef<PostgresWriter>>| -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    };
    assert_eq!(
        names(writers_referencing(&all, Some(NS), "pg")),
        ["indexer", "other"]
    );
    assert_eq!(
        names(writers_referencing(&all, Some(NS), "redis")),
        ["indexer"]
    );
    assert!(writers_referencing(&all, Some(NS), "unrelated").is_empty());
    assert_eq!(
        names(writers_referencing(&all, Some("elsewhere"), "pg")),
        ["indexer"]
    );
}

#[test]
fn the_status_patch_clears_fields_that_are_gone() {
    let status = PostgresWriterStatus {
        phase: Some("Ready".into()),
        last_migration: Some(crate::crd::MigrationRecord {
            job_name: "indexer-migrate-x".into(),
            image: IMAGE_B.into(),
            result: "Running".into(),
            completion_time: None,
            schema_version: None,
        }),
        ..Default::default()
    };
    let patch = status_patch(&status);
    // A merge patch keeps what it does not mention: a Ready phase must drop
    // the previous message, a running Job the previous completion time.
    assert_eq!(patch["message"], Value::Null);
    assert!(patch.as_object().unwrap().contains_key("message"));
    assert_eq!(patch["currentImage"], Value::Null);
    for key in ["completionTime", "schemaVersion"] {
        let last = patch["lastMigration"].as_object().unwrap();
        assert_eq!(last.get(key), Some(&Value::Null), "{key}");
    }
    assert_eq!(patch["phase"], "Ready");
}

#[test]
fn a_reconcile_for_a_deleted_object_is_logged_at_debug() {
    use kube::runtime::controller::Error as StreamErr;
    // What `kubectl delete pgw/indexer` produces while its children are
    // garbage-collected: their deletions schedule the gone object.
    let gone = || {
        ObjectRef::<PostgresWriter>::new("indexer")
            .within(NS)
            .erase()
    };
    let not_found: StreamError = StreamErr::ObjectNotFound(Box::new(gone()));
    assert!(
        telemetry::ErrorChain(&not_found)
            .to_string()
            .contains("not found in local store"),
        "the case this test is about"
    );
    assert_eq!(stream_error_level(&not_found), tracing::Level::DEBUG);
    // A real failure stays a warning.
    let failed: StreamError =
        StreamErr::ReconcilerFailed(Error::NoNamespace("indexer".into()), Box::new(gone()));
    assert_eq!(stream_error_level(&failed), tracing::Level::WARN);
    let queue: StreamError =
        StreamErr::QueueError(kube::runtime::watcher::Error::NoResourceVersion);
    assert_eq!(stream_error_level(&queue), tracing::Level::WARN);
}

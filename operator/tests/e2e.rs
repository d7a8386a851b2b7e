//! The user's story against a real API server (tests/control-plane, started
//! by scripts/test.sh): the real kubectl and helm, the chart's RBAC enforced
//! on the operator (a local process holding only a TokenRequest token of the
//! chart's ServiceAccount), the real Job, Deployment and garbage-collector
//! controllers. There is no kubelet: the test moves pods along through the
//! pod status subresource.
//!
//! `PGW_TEST_KUBECONFIG` names the admin kubeconfig. Without it the test
//! says why and passes, except under CI (`CI` set), where it fails.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE_A: &str = "registry.example/postgres-writer:1.0.0";
const IMAGE_B: &str = "registry.example/postgres-writer:1.1.0";
/// Longest wait for one expected state.
const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(var: &str, name: &str) -> PathBuf {
    std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".tools/bin").join(name))
}

/// The admin kubeconfig, or None (with the reason printed) outside CI.
fn admin_kubeconfig() -> Option<PathBuf> {
    match std::env::var("PGW_TEST_KUBECONFIG") {
        Ok(path) => Some(PathBuf::from(path)),
        Err(_) if std::env::var_os("CI").is_some() => panic!(
            "PGW_TEST_KUBECONFIG is not set: under CI the Kubernetes end-to-end suite must run \
             (scripts/test.sh starts the control plane and sets it)"
        ),
        Err(_) => {
            eprintln!(
                "SKIPPED: PGW_TEST_KUBECONFIG is not set (run scripts/test.sh, which starts \
                 tests/control-plane); this test fails instead under CI"
            );
            None
        }
    }
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// kubectl (or helm) with a kubeconfig.
#[derive(Clone)]
struct Kube {
    kubeconfig: PathBuf,
}

impl Kube {
    fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(root())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn kubectl_try(&self, args: &[&str]) -> Output {
        self.run(&tool("KUBECTL", "kubectl"), args, None)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_try(args);
        assert!(out.ok, "kubectl {args:?}: {}", out.stderr);
        out.stdout
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        self.run(&tool("KUBECTL", "kubectl"), args, Some(input))
    }

    fn helm(&self, args: &[&str]) -> String {
        let out = self.run(&tool("HELM", "helm"), args, None);
        assert!(out.ok, "helm {args:?}: {}", out.stderr);
        out.stdout
    }

    /// `kubectl get -o json`, or None when it does not exist.
    fn get(&self, ns: &str, what: &str) -> Option<Value> {
        let out = self.kubectl_try(&["-n", ns, "get", what, "-o", "json"]);
        if !out.ok {
            assert!(
                out.stderr.contains("NotFound"),
                "kubectl get {what}: {}",
                out.stderr
            );
            return None;
        }
        Some(serde_json::from_str(&out.stdout).unwrap())
    }

    fn list(&self, ns: &str, kind: &str, selector: &str) -> Vec<Value> {
        let text = self.kubectl(&["-n", ns, "get", kind, "-l", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&text).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    fn patch_status(&self, ns: &str, pod: &str, status: Value) {
        self.kubectl(&[
            "-n",
            ns,
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &json!({ "status": status }).to_string(),
        ]);
    }
}

/// Polls `probe` until it returns Some, or panics with `what` and the last
/// observation after [`WAIT`].
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if started.elapsed() > WAIT => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn condition(cr: &Value, type_: &str) -> Option<(String, String, String)> {
    cr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
}

fn container_image(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// The operator as a local process, stopped (and its log printed on failure) on drop.
struct Operator {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Operator {
    fn start(kubeconfig: &Path, dir: &Path, name: &str) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_postgres-writer-operator"))
            .args(["run", "--http-port", &port.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("MIGRATION_RETRY_SECONDS", "2")
            .env("RUST_LOG", "info,operator=debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator { child, log, port }
    }

    /// (HTTP status, body) of /readyz, None while the port is closed.
    fn readyz(&self) -> Option<(u16, String)> {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((code, body))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- operator log ({}), last lines:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A kubeconfig holding only `token` (no client certificate) for the admin's server and CA.
fn token_kubeconfig(admin: &Kube, token: &str, path: &Path) {
    let server = admin.kubectl(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = admin.kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "operator", "user": {"token": token.trim()}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "operator"}}],
        "current-context": "operator",
    });
    std::fs::write(path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn minimal_example() -> Value {
    let text = std::fs::read_to_string(root().join("crds/examples/minimal.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// One scenario's namespace, with the database Secret the example names.
fn namespace(kube: &Kube, name: &str) -> String {
    let ns = format!("e2e-{name}-{}", std::process::id());
    kube.kubectl(&["create", "namespace", &ns]);
    for secret in ["indexer-db", "indexer-db-2", "redis-credentials"] {
        kube.kubectl(&[
            "-n",
            &ns,
            "create",
            "secret",
            "generic",
            secret,
            "--from-literal=url=postgres://writer:secret@postgres:5432/intuition",
        ]);
    }
    ns
}

fn apply(kube: &Kube, ns: &str, cr: &Value) {
    let out = kube.kubectl_stdin(&["-n", ns, "apply", "-f", "-"], &cr.to_string());
    assert!(out.ok, "kubectl apply: {}", out.stderr);
}

fn merge_patch(kube: &Kube, ns: &str, what: &str, patch: Value) {
    kube.kubectl(&[
        "-n",
        ns,
        "patch",
        what,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
}

/// Waits for the migration Job of `image` whose attempt is `attempt`, and returns its name.
fn wait_for_job(kube: &Kube, ns: &str, cr: &str, image: &str, attempt: u32) -> String {
    wait_for(&format!("migration Job {attempt} for {image}"), || {
        let jobs = kube.list(
            ns,
            "jobs",
            &format!("app.kubernetes.io/instance={cr},app.kubernetes.io/component=migration"),
        );
        jobs.iter()
            .find(|j| {
                j["spec"]["template"]["spec"]["containers"][0]["image"] == image
                    && j["metadata"]["annotations"]["pgwriter.io/migration-attempt"].as_str()
                        == Some(attempt.to_string().as_str())
            })
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
            .ok_or_else(|| format!("{:?}", names(&jobs)))
    })
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Plays the kubelet for the Job's pod: it ends with `exit_code`.
fn finish_job_pod(kube: &Kube, ns: &str, job: &str, exit_code: i32) {
    let pod = wait_for(&format!("the pod of Job {job}"), || {
        kube.list(ns, "pods", &format!("batch.kubernetes.io/job-name={job}"))
            .into_iter()
            .find(|p| p["status"]["phase"] == "Pending" || p["status"]["phase"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .ok_or_else(|| "no pending pod".to_string())
    });
    let (phase, reason, message) = match exit_code {
        0 => ("Succeeded", "Completed", "schema at the latest version"),
        _ => (
            "Failed",
            "Error",
            "error: migration 0007 failed: permission denied for schema public",
        ),
    };
    let t = now();
    kube.patch_status(
        ns,
        &pod,
        json!({
            "phase": phase,
            "containerStatuses": [{
                "name": "migrate", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": reason, "message": message,
                                         "startedAt": t, "finishedAt": t}}
            }]
        }),
    );
}

/// Plays the kubelet for every pod of `component`: running and ready.
fn make_pods_ready(kube: &Kube, ns: &str, cr: &str, component: &str, count: usize) {
    let selector =
        format!("app.kubernetes.io/instance={cr},app.kubernetes.io/component={component}");
    let pods = wait_for(&format!("{count} {component} pods"), || {
        let pods = kube.list(ns, "pods", &selector);
        if pods.len() == count {
            Ok(pods)
        } else {
            Err(format!("{:?}", names(&pods)))
        }
    });
    let t = now();
    for pod in pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let image = container_image(&json!({"spec": {"template": pod.clone()}}));
        kube.patch_status(
            ns,
            name,
            json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": t},
                               {"type": "ContainersReady", "status": "True", "lastTransitionTime": t}],
                "containerStatuses": [{
                    "name": component, "image": image, "imageID": "", "ready": true,
                    "restartCount": 0, "started": true, "state": {"running": {"startedAt": t}}
                }]
            }),
        );
    }
}

fn wait_condition(
    kube: &Kube,
    ns: &str,
    cr: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Value {
    wait_for(&format!("{cr}: {type_}={status} ({reason})"), || {
        let obj = kube.get(ns, &format!("pgw/{cr}")).ok_or("no resource")?;
        match condition(&obj, type_) {
            Some((s, r, _)) if s == status && r == reason => Ok(obj),
            other => Err(format!("{other:?}")),
        }
    })
}

fn deployment_where(
    kube: &Kube,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("Deployment {name}: {what}"), || {
        let d = kube
            .get(ns, &format!("deployment/{name}"))
            .ok_or("absent")?;
        if check(&d) {
            Ok(d)
        } else {
            Err(d["spec"].to_string())
        }
    })
}

/// Events about `cr` with `reason` (events.k8s.io, as the operator records them).
fn events(kube: &Kube, ns: &str, cr: &str, reason: &str) -> Vec<Value> {
    let text = kube.kubectl(&["-n", ns, "get", "events.events.k8s.io", "-o", "json"]);
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == cr && e["reason"] == reason)
        .collect()
}

/// Steps 2, 3, 4 and 7: creation, scaling, image change with a failing and
/// retried migration, deletion.
fn story(kube: &Kube) {
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
        ["NAME", "REPLICAS", "READY", "MIGRATED", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["indexer", "1", "1", "True"], "{table}");
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
    wait_for("a MigrationFailed Warning event", || {
        let e = events(kube, &ns, "indexer", "MigrationFailed");
        match e.first() {
            Some(e) if e["type"] == "Warning" => Ok(()),
            _ => Err(format!("{e:?}")),
        }
    });
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
    assert_eq!(obj["status"]["schemaVersion"], IMAGE_B);
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
fn no_wedge(kube: &Kube) {
    let ns = namespace(kube, "wedge");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    apply(kube, &ns, &cr);
    let job = wait_for_job(kube, &ns, "indexer", IMAGE_A, 0);
    finish_job_pod(kube, &ns, &job, 0);
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
fn reconcile_error_is_reported(kube: &Kube) {
    let ns = namespace(kube, "error");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    cr["spec"]["resources"] = json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}});
    apply(kube, &ns, &cr);
    let job = wait_for_job(kube, &ns, "indexer", IMAGE_A, 0);
    finish_job_pod(kube, &ns, &job, 0);
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
    wait_for("a ReconcileFailedInvalid Warning event", || {
        let e = events(kube, &ns, "indexer", "ReconcileFailedInvalid");
        (!e.is_empty())
            .then_some(())
            .ok_or_else(|| "none".to_string())
    });
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
fn invalid_resources_are_refused(kube: &Kube) {
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

#[test]
fn user_story_against_a_real_api_server() {
    let Some(admin_config) = admin_kubeconfig() else {
        return;
    };
    let started = Instant::now();
    let admin = Kube {
        kubeconfig: admin_config,
    };
    let dir = std::env::temp_dir().join(format!("pgw-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Without the CRD the operator is not ready and says why.
    let crd_absent = !admin
        .kubectl_try(&["get", "crd", "postgreswriters.pgwriter.io"])
        .ok;
    let early = crd_absent.then(|| {
        let early = Operator::start(&admin.kubeconfig, &dir, "operator-before-crd");
        let (code, body) = wait_for("/readyz without the CRD", || match early.readyz() {
            Some((503, body)) if body.contains("CRD") => Ok((503, body)),
            other => Err(format!("{other:?}")),
        });
        assert_eq!(code, 503);
        assert!(
            body.contains("postgreswriters.pgwriter.io is not installed") || body.contains("CRD"),
            "{body}"
        );
        early
    });

    // 1. helm install; the CRD becomes Established.
    let release_ns = format!("pgw-operator-{}", std::process::id());
    let release = format!("e2e{}", std::process::id());
    admin.helm(&[
        "install",
        &release,
        "charts/postgres-writer-operator",
        "--namespace",
        &release_ns,
        "--create-namespace",
        "--set",
        "image.repository=registry.example/postgres-writer-operator",
        "--set",
        "image.tag=e2e",
    ]);
    admin.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/postgreswriters.pgwriter.io",
        "--timeout=60s",
    ]);
    if let Some(early) = early {
        wait_for("/readyz once the CRD exists", || match early.readyz() {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        });
        assert!(
            early.log().contains("is not installed"),
            "the log says the CRD is missing"
        );
    }
    // The operator holds only a TokenRequest token of the chart's ServiceAccount.
    let sa = admin.helm(&["get", "manifest", &release, "--namespace", &release_ns]);
    let sa_name = sa
        .split("---")
        .filter(|doc| doc.contains("kind: ServiceAccount"))
        .find_map(|doc| {
            let v: Value = serde_yaml::from_str(doc).ok()?;
            v["metadata"]["name"].as_str().map(str::to_string)
        })
        .expect("the chart creates a ServiceAccount");
    let token = admin.kubectl(&[
        "-n",
        &release_ns,
        "create",
        "token",
        &sa_name,
        "--duration=1h",
    ]);
    let operator_config = dir.join("operator-kubeconfig");
    token_kubeconfig(&admin, &token, &operator_config);
    let as_operator = Kube {
        kubeconfig: operator_config.clone(),
    };
    // RBAC is enforced: the token may not read Secrets.
    let denied = as_operator.kubectl_try(&["-n", &release_ns, "get", "secrets"]);
    assert!(
        !denied.ok && denied.stderr.contains("forbidden"),
        "{}",
        denied.stderr
    );
    let operator = Operator::start(&operator_config, &dir, "operator");
    wait_for("operator /readyz", || match operator.readyz() {
        Some((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    println!("setup took {:?}", started.elapsed());

    // The scenarios, each in its own namespace, in parallel.
    type Scenario = (&'static str, fn(&Kube));
    let scenarios: Vec<Scenario> = vec![
        ("story", story),
        ("no_wedge", no_wedge),
        ("reconcile_error_is_reported", reconcile_error_is_reported),
        (
            "invalid_resources_are_refused",
            invalid_resources_are_refused,
        ),
    ];
    let results: Vec<(&str, Result<Duration, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = scenarios
            .iter()
            .map(|(name, f)| {
                let kube = admin.clone();
                (
                    *name,
                    s.spawn(move || {
                        let t = Instant::now();
                        f(&kube);
                        t.elapsed()
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                (
                    name,
                    h.join().map_err(|e| {
                        e.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    }),
                )
            })
            .collect()
    });
    for (name, result) in &results {
        println!("scenario {name}: {result:?}");
    }
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    if !failed.is_empty() {
        let log = operator.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        eprintln!(
            "--- operator log, last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
    admin.helm(&["uninstall", &release, "--namespace", &release_ns]);
    println!("Kubernetes end-to-end suite: {:?}", started.elapsed());
}

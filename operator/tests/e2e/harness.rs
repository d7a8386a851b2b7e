//! The test harness: kubectl and helm, the operator as a local process, waits and pod moves.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE_A: &str = "registry.example/postgres-writer:1.0.0";
pub const IMAGE_B: &str = "registry.example/postgres-writer:1.1.0";
/// Longest wait for one expected state.
pub const WAIT: Duration = Duration::from_secs(90);
pub const POLL: Duration = Duration::from_millis(250);

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn tool(var: &str, name: &str) -> PathBuf {
    std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".tools/bin").join(name))
}

pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// kubectl (or helm) with a kubeconfig.
#[derive(Clone)]
pub struct Kube {
    pub kubeconfig: PathBuf,
}

impl Kube {
    pub fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
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

    pub fn kubectl_try(&self, args: &[&str]) -> Output {
        self.run(&tool("KUBECTL", "kubectl"), args, None)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_try(args);
        assert!(out.ok, "kubectl {args:?}: {}", out.stderr);
        out.stdout
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        self.run(&tool("KUBECTL", "kubectl"), args, Some(input))
    }

    pub fn helm(&self, args: &[&str]) -> String {
        let out = self.run(&tool("HELM", "helm"), args, None);
        assert!(out.ok, "helm {args:?}: {}", out.stderr);
        out.stdout
    }

    /// `kubectl get -o json`, or None when it does not exist.
    pub fn get(&self, ns: &str, what: &str) -> Option<Value> {
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

    pub fn list(&self, ns: &str, kind: &str, selector: &str) -> Vec<Value> {
        let text = self.kubectl(&["-n", ns, "get", kind, "-l", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&text).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn patch_status(&self, ns: &str, pod: &str, status: Value) {
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
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
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

pub fn condition(cr: &Value, type_: &str) -> Option<(String, String, String)> {
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

pub fn container_image(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// The operator as a local process, stopped (and its log printed on failure) on drop.
pub struct Operator {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Operator {
    pub fn start(kubeconfig: &Path, dir: &Path, name: &str) -> Operator {
        Self::start_with(kubeconfig, dir, name, &[])
    }

    /// With extra environment (watched namespaces, Lease settings).
    pub fn start_with(kubeconfig: &Path, dir: &Path, name: &str, env: &[(&str, &str)]) -> Operator {
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
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator { child, log, port }
    }

    /// (HTTP status, body) of /readyz, None while the port is closed.
    pub fn readyz(&self) -> Option<(u16, String)> {
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

    pub fn log(&self) -> String {
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
pub fn token_kubeconfig(admin: &Kube, token: &str, path: &Path) {
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

pub fn minimal_example() -> Value {
    let text = std::fs::read_to_string(root().join("crds/examples/minimal.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// `helm install` of the chart as a release in `ns` (created), with the
/// test image repository and each `--set` of `sets`.
pub fn install_chart(kube: &Kube, release: &str, ns: &str, sets: &[&str]) {
    let mut args = vec![
        "install",
        release,
        "charts/postgres-writer-operator",
        "--namespace",
        ns,
        "--create-namespace",
        "--set",
        "image.repository=registry.example/postgres-writer-operator",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    kube.helm(&args);
}

/// One scenario's namespace, with the database Secret the example names.
pub fn namespace(kube: &Kube, name: &str) -> String {
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

pub fn apply(kube: &Kube, ns: &str, cr: &Value) {
    let out = kube.kubectl_stdin(&["-n", ns, "apply", "-f", "-"], &cr.to_string());
    assert!(out.ok, "kubectl apply: {}", out.stderr);
}

pub fn merge_patch(kube: &Kube, ns: &str, what: &str, patch: Value) {
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
pub fn wait_for_job(kube: &Kube, ns: &str, cr: &str, image: &str, attempt: u32) -> String {
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

pub fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Plays the kubelet for the Job's pod: it ends with `exit_code`.
pub fn finish_job_pod(kube: &Kube, ns: &str, job: &str, exit_code: i32) {
    let pod = wait_for(&format!("the pod of Job {job}"), || {
        kube.list(ns, "pods", &format!("batch.kubernetes.io/job-name={job}"))
            .into_iter()
            .find(|p| p["status"]["phase"] == "Pending" || p["status"]["phase"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .ok_or_else(|| "no pending pod".to_string())
    });
    let (phase, reason, message) = match exit_code {
        0 => ("Succeeded", "Completed", "schema version 10"),
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

/// Applies `cr` (named "indexer", on IMAGE_A) and finishes its first
/// migration Job successfully: the starting point of most scenarios.
/// Returns the Job's name.
pub fn apply_and_migrate(kube: &Kube, ns: &str, cr: &Value) -> String {
    apply(kube, ns, cr);
    let job = wait_for_job(kube, ns, "indexer", IMAGE_A, 0);
    finish_job_pod(kube, ns, &job, 0);
    job
}

/// Plays the kubelet for every pod of `component`: running and ready.
pub fn make_pods_ready(kube: &Kube, ns: &str, cr: &str, component: &str, count: usize) {
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

pub fn wait_condition(
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

pub fn deployment_where(
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
pub fn events(kube: &Kube, ns: &str, cr: &str, reason: &str) -> Vec<Value> {
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

/// Waits for an Event of `type_` (Normal or Warning) and `reason` about `cr`.
pub fn wait_for_event(kube: &Kube, ns: &str, cr: &str, type_: &str, reason: &str) -> Value {
    wait_for(&format!("a {reason} {type_} event"), || {
        let found = events(kube, ns, cr, reason);
        found
            .iter()
            .find(|e| e["type"] == type_)
            .cloned()
            .ok_or_else(|| format!("{found:?}"))
    })
}

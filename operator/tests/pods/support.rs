//! What the story with running pods needs besides kubectl and helm: the
//! test's PostgreSQL (psql), Redis (consumer-group state), the load
//! generator and `verify` (the worker binary), an OTLP receiver on the pod
//! bridge's gateway, a pod watch and log followers, and the node's
//! containerd (`ctr`).

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls `probe` every half second until it returns Ok, or panics with
/// `what` and the last observation after `timeout`.
pub fn until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if started.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (scripts/test.sh sets it)"))
}

/// Runs a program, panicking with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's PostgreSQL, through psql as the superuser on loopback.
pub struct Postgres {
    psql: PathBuf,
    /// postgres://postgres@127.0.0.1:PORT/postgres
    admin_url: String,
}

impl Postgres {
    pub fn from_env() -> Postgres {
        Postgres {
            psql: PathBuf::from(env("PGW_PG_BIN")).join("psql"),
            admin_url: env("PGW_TEST_DATABASE_URL"),
        }
    }

    pub fn port(&self) -> u16 {
        let host_port = self
            .admin_url
            .split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        host_port.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The same server, database `db` (as the superuser).
    pub fn url(&self, db: &str) -> String {
        let (base, _) = self.admin_url.rsplit_once('/').unwrap();
        format!("{base}/{db}")
    }

    /// Runs `sql` in database `db`; rows as lines, columns separated by `|`.
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = Command::new(&self.psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(db),
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The entries of an XINFO reply: one field map per group or consumer
/// (flat key-value arrays in RESP2, maps in RESP3).
fn xinfo(redis: &mut redis::Connection, args: &[&str]) -> Vec<HashMap<String, redis::Value>> {
    let reply: redis::Value = match redis::cmd("XINFO").arg(args).query(redis) {
        Ok(reply) => reply,
        // The stream or the group does not exist yet.
        Err(e) if e.to_string().contains("no such key") || e.to_string().contains("NOGROUP") => {
            return Vec::new()
        }
        Err(e) => panic!("XINFO {args:?}: {e}"),
    };
    let redis::Value::Array(items) = reply else {
        panic!("XINFO {args:?}: {reply:?}")
    };
    items
        .into_iter()
        .map(|item| match item {
            redis::Value::Array(flat) => flat
                .chunks(2)
                .map(|kv| (text(&kv[0]), kv[1].clone()))
                .collect(),
            redis::Value::Map(pairs) => pairs.into_iter().map(|(k, v)| (text(&k), v)).collect(),
            other => panic!("XINFO {args:?}: {other:?}"),
        })
        .collect()
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn int(v: Option<&redis::Value>) -> Option<i64> {
    match v? {
        redis::Value::Int(i) => Some(*i),
        other => text(other).parse().ok(),
    }
}

/// (lag, pending) of `group` on `stream`: entries not yet delivered to the
/// group (None while Redis cannot tell) and delivered but unacknowledged.
pub fn backlog(redis: &mut redis::Connection, stream: &str, group: &str) -> (Option<i64>, i64) {
    let groups = xinfo(redis, &["GROUPS", stream]);
    let Some(info) = groups
        .iter()
        .find(|g| g.get("name").map(text).as_deref() == Some(group))
    else {
        return (None, 0);
    };
    (int(info.get("lag")), int(info.get("pending")).unwrap_or(0))
}

/// The consumers of `group` on `stream` and the entries pending on each.
pub fn consumers(
    redis: &mut redis::Connection,
    stream: &str,
    group: &str,
) -> BTreeMap<String, i64> {
    xinfo(redis, &["CONSUMERS", stream, group])
        .iter()
        .map(|c| {
            (
                c.get("name").map(text).unwrap_or_default(),
                int(c.get("pending")).unwrap_or(0),
            )
        })
        .collect()
}

/// The worker binary the suite runs on this machine: the load generator and `verify`.
pub struct Worker {
    bin: PathBuf,
}

impl Worker {
    pub fn from_env() -> Worker {
        Worker {
            bin: PathBuf::from(env("POSTGRES_WRITER_BIN")),
        }
    }

    /// `postgres-writer generate`: `events` events of seed `seed` into the
    /// streams of `prefix`. Returns what it printed.
    pub fn generate(&self, redis_url: &str, prefix: &str, events: u64, seed: u64) -> String {
        run(
            self.bin.to_str().unwrap(),
            &[
                "generate",
                "--redis-url",
                redis_url,
                "--stream-prefix",
                prefix,
                "--events",
                &events.to_string(),
                "--seed",
                &seed.to_string(),
            ],
        )
    }

    /// `postgres-writer verify`: (clean, report).
    pub fn verify(&self, database_url: &str) -> (bool, String) {
        let out = Command::new(&self.bin)
            .arg("verify")
            .env("DATABASE_URL", database_url)
            .output()
            .expect("postgres-writer verify");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), report)
    }
}

/// Spans an OTLP/HTTP receiver got, by the resource attributes they came with.
#[derive(Default)]
pub struct Traces {
    /// (service.name, k8s.pod.name, k8s.namespace.name) -> spans
    pub by_resource: BTreeMap<(String, String, String), u64>,
}

/// An OTLP/HTTP (protobuf) receiver on `address` (the pod bridge's
/// gateway): POST /v1/traces. Returns its port.
pub fn otlp_receiver(
    runtime: &tokio::runtime::Runtime,
    address: &str,
    traces: Arc<Mutex<Traces>>,
) -> u16 {
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let traces = traces.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
                let mut traces = traces.lock().unwrap();
                for resource in request.resource_spans {
                    let attribute = |key: &str| {
                        resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == key)
                            .and_then(|a| a.value.as_ref())
                            .and_then(|v| match &v.value {
                                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default()
                    };
                    let key = (
                        attribute("service.name"),
                        attribute("k8s.pod.name"),
                        attribute("k8s.namespace.name"),
                    );
                    let spans: usize = resource.scope_spans.iter().map(|s| s.spans.len()).sum();
                    *traces.by_resource.entry(key).or_default() += spans as u64;
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((address, 0)))
        .unwrap_or_else(|e| panic!("OTLP receiver on {address}: {e}"));
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move { axum::serve(listener, app).await });
    port
}

/// `GET http://ADDRESS:PORT/PATH` from this machine: (status, body).
pub fn http_get(address: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(
        &format!("{address}:{port}").parse().ok()?,
        Duration::from_secs(5),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// The sum of a Prometheus counter over its label sets, from a /metrics body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `kubectl get pods --watch` in the background: the last state seen of
/// every pod, deleted ones included.
pub struct PodWatch {
    child: Child,
    seen: Arc<Mutex<BTreeMap<String, Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PodWatch {
    pub fn start(
        kubectl: &std::path::Path,
        kubeconfig: &std::path::Path,
        ns: &str,
        selector: &str,
    ) -> PodWatch {
        let mut child = Command::new(kubectl)
            .args([
                "-n", ns, "get", "pods", "-l", selector, "--watch", "-o", "json",
            ])
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get pods --watch");
        let stdout = child.stdout.take().unwrap();
        let seen: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            for pod in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(pod) = pod else { break };
                let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
                sink.lock().unwrap().insert(name, pod);
            }
        });
        PodWatch {
            child,
            seen,
            reader: Some(reader),
        }
    }

    /// The last state seen of `pod`.
    pub fn last(&self, pod: &str) -> Option<Value> {
        self.seen.lock().unwrap().get(pod).cloned()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// How a pod's (first) container ended, from a pod object: (exit code,
/// finishedAt, the pod's deletionTimestamp), once it has terminated.
pub fn termination(pod: &Value) -> Option<(i64, String, String)> {
    let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    Some((
        state["exitCode"].as_i64()?,
        state["finishedAt"].as_str()?.to_string(),
        pod["metadata"]["deletionTimestamp"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    ))
}

/// `kubectl logs -f` of each pod in the background, until its container ends.
pub struct LogFollowers {
    logs: Vec<(String, Child, std::thread::JoinHandle<String>)>,
}

impl LogFollowers {
    pub fn start(
        kubectl: &std::path::Path,
        kubeconfig: &std::path::Path,
        ns: &str,
        pods: &[String],
    ) -> LogFollowers {
        let logs = pods
            .iter()
            .map(|pod| {
                let mut child = Command::new(kubectl)
                    .args(["-n", ns, "logs", "-f", pod])
                    .env("KUBECONFIG", kubeconfig)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("kubectl logs -f");
                let mut stdout = child.stdout.take().unwrap();
                let handle = std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = stdout.read_to_string(&mut text);
                    text
                });
                (pod.clone(), child, handle)
            })
            .collect();
        LogFollowers { logs }
    }

    /// The logs of the pods in `ended`, whose streams end with their
    /// containers; the others' followers are stopped.
    pub fn finish(self, ended: &[String]) -> BTreeMap<String, String> {
        self.logs
            .into_iter()
            .filter_map(|(pod, mut child, handle)| {
                if !ended.contains(&pod) {
                    let _ = child.kill();
                }
                let _ = child.wait();
                let text = handle.join().unwrap_or_default();
                ended.contains(&pod).then_some((pod, text))
            })
            .collect()
    }
}

/// `ctr` against the node's containerd, in the kubelet's namespace.
pub fn ctr(args: &[&str]) -> String {
    let socket = env("PGW_NODE_CONTAINERD");
    let mut all = vec!["--address", socket.as_str(), "-n", "k8s.io"];
    all.extend_from_slice(args);
    run("ctr", &all)
}

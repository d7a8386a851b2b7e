//! The steps of the user's story on the test node (issue 20, section 3),
//! in order, on one PostgresWriter: each returns what it checked.

use crate::harness::{install_chart, wait_for_job, Kube};
use crate::support::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CR: &str = "indexer";
const GROUP: &str = "postgres-writer";
/// Events of the first load (step 3) and of each later step's load.
const FIRST_LOAD: u64 = 100_000;
const STEP_LOAD: u64 = 20_000;
/// Longest wait for pods to start, roll or drain, and for a load to be consumed.
const ROLL: Duration = Duration::from_secs(240);
const CONSUME: Duration = Duration::from_secs(600);

pub struct Story {
    pub kube: Kube,
    kubectl: PathBuf,
    pub ns: String,
    pub release_ns: String,
    /// The chart's release (per run: its ClusterRole is cluster-wide).
    release: String,
    gateway: String,
    tag: String,
    pg: Postgres,
    db: String,
    role: String,
    redis_url: String,
    pod_redis_url: String,
    redis: redis::Connection,
    worker: Worker,
    prefix: String,
    streams: Vec<String>,
    /// Events published so far, as the generator's own code counts them.
    pub published: u64,
    seeds: Vec<u64>,
    /// The resource as a file the user edits and applies.
    manifest: PathBuf,
    pub traces: Arc<Mutex<Traces>>,
    otlp_port: u16,
    /// Every worker pod that ran, for the traces check.
    pub worker_pods: BTreeSet<String>,
    _runtime: tokio::runtime::Runtime,
}

/// Whether `consumer` is one of `pod`'s consumers (the worker names them POD-N, one per stream loop).
fn consumer_of(consumer: &str, pod: &str) -> bool {
    consumer == pod
        || consumer
            .strip_prefix(pod)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn selector(component: &str) -> String {
    format!("app.kubernetes.io/instance={CR},app.kubernetes.io/component={component}")
}

impl Story {
    pub fn new(kubeconfig: PathBuf) -> Story {
        let id = std::process::id();
        let gateway =
            std::env::var("PGW_NODE_ADDRESS").expect("PGW_NODE_ADDRESS (scripts/test.sh)");
        let tag =
            std::env::var("PGW_TEST_IMAGE_TAG").expect("PGW_TEST_IMAGE_TAG (scripts/test.sh)");
        let redis_url = std::env::var("PGW_TEST_REDIS_URL").expect("PGW_TEST_REDIS_URL");
        let redis_port = redis_url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let traces: Arc<Mutex<Traces>> = Arc::default();
        let otlp_port = otlp_receiver(&runtime, &gateway, traces.clone());
        let dir = std::env::temp_dir().join(format!("pgw-pods-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = format!("pods{id}");
        Story {
            kubectl: crate::harness::tool("KUBECTL", "kubectl"),
            kube: Kube { kubeconfig },
            ns: format!("pods-{id}"),
            release_ns: format!("pgw-system-{id}"),
            release: format!("pgw{id}"),
            pod_redis_url: format!("redis://{gateway}:{redis_port}"),
            redis: redis::Client::open(redis_url.as_str())
                .unwrap()
                .get_connection()
                .expect("Redis"),
            redis_url,
            gateway,
            tag,
            pg: Postgres::from_env(),
            db: format!("pods_{id}"),
            role: format!("writer_{id}"),
            worker: Worker::from_env(),
            streams: worker::generate::stream_names(&prefix),
            prefix,
            published: 0,
            seeds: Vec::new(),
            manifest: dir.join("indexer.yaml"),
            traces,
            otlp_port,
            worker_pods: BTreeSet::new(),
            _runtime: runtime,
        }
    }

    fn image(&self, tag: &str) -> String {
        format!("localhost/postgres-writer:{tag}")
    }

    fn k(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        self.kube.kubectl(&all)
    }

    fn pods(&self, component: &str) -> Vec<Value> {
        self.kube.list(&self.ns, "pods", &selector(component))
    }

    fn pg_version(&self) -> String {
        let cr = self
            .kube
            .get(&self.ns, &format!("pgw/{CR}"))
            .unwrap_or_default();
        cr["status"]["schemaVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The resource file with `edit` applied, written and `kubectl apply`-ed.
    fn apply_manifest(&self, edit: impl FnOnce(&mut Value)) {
        let mut cr: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.manifest).unwrap()).unwrap();
        edit(&mut cr);
        std::fs::write(&self.manifest, serde_yaml::to_string(&cr).unwrap()).unwrap();
        self.k(&["apply", "-f", self.manifest.to_str().unwrap()]);
    }

    fn patch(&self, patch: Value) {
        self.k(&[
            "patch",
            &format!("pgw/{CR}"),
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]);
    }

    /// Ready pods of `component`, exactly `count` of them, none terminating.
    fn ready_pods(&self, component: &str, count: usize) -> Vec<Value> {
        until(&format!("{count} ready {component} pods"), ROLL, || {
            let pods = self.pods(component);
            let ready: Vec<Value> = pods
                .iter()
                .filter(|p| {
                    p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .cloned()
                .collect();
            if ready.len() == count && pods.len() == count {
                Ok(ready)
            } else {
                Err(format!(
                    "{} pods, {} ready: {:?}",
                    pods.len(),
                    ready.len(),
                    pods.iter()
                        .map(|p| (&p["metadata"]["name"], &p["status"]["phase"]))
                        .collect::<Vec<_>>()
                ))
            }
        })
    }

    fn pod_names(pods: &[Value]) -> Vec<String> {
        pods.iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Each pod answers its own /readyz with 200 (checked from the node, on the pod's address).
    fn readyz_ok(pods: &[Value]) {
        for pod in pods {
            let ip = pod["status"]["podIP"].as_str().expect("pod address");
            let (code, body) = http_get(ip, 8080, "/readyz").unwrap_or((0, "no answer".into()));
            assert_eq!(code, 200, "{} /readyz: {body}", pod["metadata"]["name"]);
        }
    }

    /// Publishes `events` generated events of `seed` with `postgres-writer
    /// generate`; the expected event count comes from the generator's code.
    fn publish(&mut self, events: u64, seed: u64) -> String {
        let printed = self
            .worker
            .generate(&self.redis_url, &self.prefix, events, seed);
        let entries = worker::generate::generate(&worker::generate::GeneratorSpec {
            events,
            events_per_entry: 10,
            seed,
            accounts: 50,
            curves: 2,
            network: "intuition-testnet".to_string(),
            stream_prefix: self.prefix.clone(),
        });
        assert!(
            printed.starts_with(&format!("wrote {} entries", entries.len())),
            "the generator and this count disagree: {printed}"
        );
        let stored_events: u64 = entries
            .iter()
            .map(|e| {
                let payload: Value = serde_json::from_str(&e.payload).unwrap();
                payload["event_data"]
                    .as_array()
                    .map_or(1, |a| a.len() as u64)
            })
            .sum();
        self.published += stored_events;
        self.seeds.push(seed);
        printed.trim().to_string()
    }

    /// Entries of the group not yet acknowledged: undelivered plus pending.
    fn backlog(&mut self) -> i64 {
        let streams = self.streams.clone();
        streams
            .iter()
            .map(|s| {
                let (lag, pending) = backlog(&mut self.redis, s, GROUP);
                lag.unwrap_or(i64::MAX / 16) + pending
            })
            .sum()
    }

    /// Waits until the group has consumed everything, the derived tables are
    /// verified and every published event is stored exactly once.
    fn settled(&mut self) -> String {
        let started = Instant::now();
        until("the group to consume every entry", CONSUME, || {
            match self.backlog() {
                0 => Ok(()),
                n => Err(format!("{n} entries unacknowledged")),
            }
        });
        let consumed = started.elapsed();
        let url = self.pg.url(&self.db);
        until(
            "verify to be clean (folds and analytics done)",
            ROLL,
            || match self.worker.verify(&url) {
                (true, _) => Ok(()),
                (false, report) => Err(report),
            },
        );
        let counts = worker::catalog::EVENT_TABLES
            .iter()
            .map(|t| format!("(SELECT count(*) FROM {t})"))
            .collect::<Vec<_>>()
            .join(" + ");
        let stored: u64 = self
            .pg
            .query(&self.db, &format!("SELECT {counts}"))
            .parse()
            .unwrap();
        let dead: u64 = self
            .pg
            .query(&self.db, "SELECT count(*) FROM dead_letters")
            .parse()
            .unwrap();
        assert_eq!(dead, 0, "no dead letters");
        assert_eq!(stored, self.published, "every published event stored once");
        format!(
            "{stored} events stored once, verify clean (consumed in {:.0} s)",
            consumed.as_secs_f64()
        )
    }

    /// Nothing of the group is pending on a consumer that is not one of `live`.
    fn nothing_pending_on_gone(&mut self, live: &[String]) -> String {
        let streams = self.streams.clone();
        until("no entry pending on a gone consumer", ROLL, || {
            let mut stuck = Vec::new();
            for s in &streams {
                for (consumer, pending) in consumers(&mut self.redis, s, GROUP) {
                    if pending > 0 && !live.iter().any(|pod| consumer_of(&consumer, pod)) {
                        stuck.push(format!("{s}: {consumer} holds {pending}"));
                    }
                }
            }
            if stuck.is_empty() {
                Ok(())
            } else {
                Err(stuck.join("; "))
            }
        });
        "no entry pending on a gone consumer".to_string()
    }

    /// The pods in `gone` exited 0 after the preStop drain, before their deletion deadline.
    fn drained(
        watch: &PodWatch,
        logs: &std::collections::BTreeMap<String, String>,
        gone: &[String],
    ) -> String {
        for pod in gone {
            let last = until(&format!("{pod}'s final state"), ROLL, || {
                watch
                    .last(pod)
                    .filter(|p| termination(p).is_some())
                    .ok_or_else(|| format!("{:?}", watch.last(pod).map(|p| p["status"].clone())))
            });
            let (code, finished, deadline) = termination(&last).unwrap();
            assert_eq!(code, 0, "{pod} exit code: {}", last["status"]);
            assert!(
                !deadline.is_empty() && finished <= deadline,
                "{pod} finished at {finished}, after its grace period ended at {deadline}"
            );
            let log = logs.get(pod).map(String::as_str).unwrap_or("");
            assert!(
                log.contains("drain requested"),
                "{pod}: the preStop drain did not run:\n{log}"
            );
            assert!(
                log.contains("drained: in-flight work committed and acknowledged"),
                "{pod}: did not finish draining:\n{log}"
            );
        }
        format!(
            "{} pods drained by preStop and exited 0 within the grace period",
            gone.len()
        )
    }

    fn worker_watch(&self) -> PodWatch {
        PodWatch::start(
            &self.kubectl,
            &self.kube.kubeconfig,
            &self.ns,
            &selector("worker"),
        )
    }

    fn follow(&self, pods: &[String]) -> LogFollowers {
        LogFollowers::start(&self.kubectl, &self.kube.kubeconfig, &self.ns, pods)
    }

    fn note_workers(&mut self, pods: &[Value]) {
        self.worker_pods.extend(Self::pod_names(pods));
    }

    /// Publishes a step's load and checks that it is still being consumed.
    fn under_load(&mut self, seed: u64) -> i64 {
        self.publish(STEP_LOAD, seed);
        let backlog = self.backlog();
        assert!(backlog > 0, "the load was consumed before the step acted");
        backlog
    }

    /// After a failure: the pods, the namespace's warnings and the operators' log tails.
    pub fn dump_logs(&self) {
        for ns in [&self.ns, &self.release_ns] {
            let pods = self
                .kube
                .kubectl_try(&["-n", ns, "get", "pods", "-o", "wide"]);
            eprintln!("--- pods in {ns}:\n{}", pods.stdout);
            let events = self.kube.kubectl_try(&[
                "-n",
                ns,
                "get",
                "events",
                "--field-selector=type=Warning",
            ]);
            eprintln!("--- warnings in {ns}:\n{}", events.stdout);
        }
        for pod in Self::pod_names(&self.kube.list(
            &self.release_ns,
            "pods",
            "app.kubernetes.io/name=postgres-writer-operator",
        )) {
            let log = self
                .kube
                .kubectl_try(&["-n", &self.release_ns, "logs", &pod, "--tail=40"]);
            eprintln!("--- operator {pod}, last lines:\n{}", log.stdout);
        }
    }

    // ---- the steps ----

    /// 1. helm install; the operator runs in-cluster: 2 replicas, one leader.
    pub fn install(&mut self) -> String {
        install_chart(
            &self.kube,
            &self.release,
            &self.release_ns,
            &[
                "image.repository=localhost/postgres-writer-operator",
                &format!("image.tag={}", self.tag),
            ],
        );
        let fullname = format!("{}-postgres-writer-operator", self.release);
        self.kube.kubectl(&[
            "-n",
            &self.release_ns,
            "rollout",
            "status",
            &format!("deployment/{fullname}"),
            "--timeout=240s",
        ]);
        let pods = self.kube.list(
            &self.release_ns,
            "pods",
            "app.kubernetes.io/name=postgres-writer-operator",
        );
        let names = Self::pod_names(&pods);
        assert_eq!(names.len(), 2, "{names:?}");
        for pod in &pods {
            assert_eq!(pod["spec"]["serviceAccountName"], fullname.as_str());
            let env = pod["spec"]["containers"][0]["env"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                !env.iter().any(|e| e["name"] == "KUBECONFIG"),
                "in-cluster config: no kubeconfig in the pod"
            );
        }
        let holder = until("a leader", ROLL, || {
            let lease = self
                .kube
                .get(&self.release_ns, &format!("lease/{fullname}"))
                .ok_or("no Lease")?;
            let holder = lease["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if names.contains(&holder) {
                Ok(holder)
            } else {
                Err(format!("holder {holder:?}"))
            }
        });
        // Each replica says what it is on its own /readyz.
        let mut roles = Vec::new();
        for pod in &pods {
            let ip = pod["status"]["podIP"].as_str().unwrap();
            let (code, body) = http_get(ip, 8081, "/readyz").unwrap_or((0, String::new()));
            assert_eq!(code, 200, "{body}");
            roles.push(body.trim().to_string());
        }
        assert_eq!(
            roles
                .iter()
                .filter(|r| r.contains("ready (leader)"))
                .count(),
            1,
            "one leader: {roles:?}"
        );
        let log = self
            .kube
            .kubectl(&["-n", &self.release_ns, "logs", &holder]);
        assert!(log.contains("acquired the leader Lease"), "{log}");
        format!("2 operator pods Ready as {fullname}, one leader ({holder}), in-cluster config")
    }

    /// 2. Secret + resource: the migration Job's pod runs `migrate`; then the pods turn Ready.
    pub fn apply_resource(&mut self) -> String {
        let password = format!("first-{}", std::process::id());
        self.pg.query(
            "postgres",
            &format!("CREATE ROLE {} LOGIN PASSWORD '{password}'", self.role),
        );
        self.pg.query(
            "postgres",
            &format!("CREATE DATABASE {} OWNER {}", self.db, self.role),
        );
        self.kube.kubectl(&["create", "namespace", &self.ns]);
        self.secret(&password);
        let cr = json!({
            "apiVersion": "pgwriter.io/v1alpha1",
            "kind": "PostgresWriter",
            "metadata": {"name": CR},
            "spec": {
                "image": self.image(&self.tag),
                "imagePullPolicy": "IfNotPresent",
                "replicas": 1,
                "streams": self.streams,
                "redis": {"url": self.pod_redis_url},
                "database": {"urlSecretRef": {"name": "indexer-db"}},
                // A pod killed without a drain leaves entries pending: the
                // others claim them after 10 s and forget the consumer after 30 s.
                "claimIdleMs": 10_000,
                "consumerReapIdleMs": 30_000,
                "drain": {"timeoutSeconds": 30},
                "telemetry": {
                    "otlpEndpoint": format!("http://{}:{}", self.gateway, self.otlp_port),
                    // Every trace: step 10 looks for the worker pods' batch spans.
                    "samplingRatio": 1.0,
                },
                // Sized for the 2-core test machine.
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                "analytics": {"replicas": 1, "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}},
                "migration": {"resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}},
            }
        });
        std::fs::write(&self.manifest, serde_yaml::to_string(&cr).unwrap()).unwrap();
        self.k(&["apply", "-f", self.manifest.to_str().unwrap()]);

        let image = self.image(&self.tag);
        let job = wait_for_job(&self.kube, &self.ns, CR, &image, 0);
        let version = self.migration_ran(&job);
        let workers = self.ready_pods("worker", 1);
        let analytics = self.ready_pods("analytics", 1);
        Self::readyz_ok(&workers);
        Self::readyz_ok(&analytics);
        self.note_workers(&workers);
        format!(
            "Job {job}: its pod ran `migrate` (exit 0, schema version {version}); status.schemaVersion {version}; 1 worker + 1 analytics pod Ready, /readyz 200"
        )
    }

    fn secret(&self, password: &str) {
        let url = format!(
            "postgres://{}:{password}@{}:{}/{}",
            self.role,
            self.gateway,
            self.pg.port(),
            self.db
        );
        let manifest = self.k(&[
            "create",
            "secret",
            "generic",
            "indexer-db",
            &format!("--from-literal=url={url}"),
            "--dry-run=client",
            "-o",
            "json",
        ]);
        let out = self
            .kube
            .kubectl_stdin(&["-n", &self.ns, "apply", "-f", "-"], &manifest);
        assert!(out.ok, "{}", out.stderr);
    }

    /// The Job completed through its pod: `migrate` exited 0 reporting the
    /// database's schema version, which the resource's status then shows.
    fn migration_ran(&self, job: &str) -> String {
        self.k(&[
            "wait",
            "--for=condition=Complete",
            &format!("job/{job}"),
            "--timeout=240s",
        ]);
        let pods = self.kube.list(
            &self.ns,
            "pods",
            &format!("batch.kubernetes.io/job-name={job}"),
        );
        let pod = pods
            .iter()
            .find(|p| p["status"]["phase"] == "Succeeded")
            .unwrap_or_else(|| panic!("no Succeeded pod of {job}: {pods:?}"));
        let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(terminated["exitCode"], 0);
        let applied = self.pg.query(
            &self.db,
            "SELECT max(version) FROM _sqlx_migrations WHERE success",
        );
        assert_eq!(
            terminated["message"].as_str().unwrap_or(""),
            format!("schema version {applied}"),
            "the pod's termination message"
        );
        let log = self.k(&["logs", &format!("job/{job}")]);
        assert!(
            log.contains(&format!("migrations applied; schema version {applied}")),
            "{log}"
        );
        until("status.schemaVersion from the Job", ROLL, || {
            let v = self.pg_version();
            if v == applied {
                Ok(())
            } else {
                Err(v)
            }
        });
        applied
    }

    /// 3. ≥ 100,000 events consumed by the pods, verify clean, every event once.
    pub fn consume(&mut self) -> String {
        let printed = self.publish(FIRST_LOAD, 3);
        let settled = self.settled();
        format!("{printed}; {settled}")
    }

    /// 4. Under load, 1 → 3 replicas by `kubectl apply` of the edited file and `kubectl patch`.
    pub fn scale_up(&mut self) -> String {
        let backlog = self.under_load(4);
        self.apply_manifest(|cr| cr["spec"]["replicas"] = json!(2));
        self.ready_pods("worker", 2);
        self.patch(json!({"spec": {"replicas": 3}}));
        let pods = self.ready_pods("worker", 3);
        self.note_workers(&pods);
        let names = Self::pod_names(&pods);
        // More load once all three consume (the first pod may have caught
        // up with the step's load while the others started).
        self.publish(STEP_LOAD, 40);
        let settled = self.settled();
        // Three distinct consumers, each of which acknowledged entries.
        let streams = self.streams.clone();
        let mut known: BTreeSet<String> = BTreeSet::new();
        for s in &streams {
            known.extend(consumers(&mut self.redis, s, GROUP).into_keys());
        }
        for (pod, name) in pods.iter().zip(&names) {
            assert!(
                known.iter().any(|c| consumer_of(c, name)),
                "{name} is no consumer of the group: {known:?}"
            );
            let ip = pod["status"]["podIP"].as_str().unwrap();
            let (_, metrics) = http_get(ip, 8080, "/metrics").expect("/metrics");
            let processed = metric_sum(&metrics, "pgw_entries_processed_total");
            assert!(processed > 0.0, "{name} acknowledged no entry");
        }
        format!("backlog {backlog} at the edit; 3 pods consumed as distinct consumers {names:?}; {settled}")
    }

    /// 5. Under load, 3 → 1: preStop drains, exit 0 in the grace period, nothing pending on gone consumers.
    pub fn scale_down(&mut self) -> String {
        let before = Self::pod_names(&self.ready_pods("worker", 3));
        let watch = self.worker_watch();
        let logs = self.follow(&before);
        let backlog = self.under_load(5);
        self.apply_manifest(|cr| cr["spec"]["replicas"] = json!(1));
        let after = Self::pod_names(&self.ready_pods("worker", 1));
        let gone: Vec<String> = before
            .iter()
            .filter(|p| !after.contains(p))
            .cloned()
            .collect();
        assert_eq!(gone.len(), 2);
        let logs = logs.finish(&gone);
        let drained = Self::drained(&watch, &logs, &gone);
        let pending = self.nothing_pending_on_gone(&after);
        let settled = self.settled();
        format!("backlog {backlog} at the edit; {drained}; {pending}; {settled}")
    }

    /// 6. Under load, a new tag of the same build: a new migration Job, workers roll with drains.
    pub fn new_image(&mut self) -> String {
        let tag = format!("{}-b", self.tag);
        ctr(&["images", "tag", &self.image(&self.tag), &self.image(&tag)]);
        let before = Self::pod_names(&self.ready_pods("worker", 1));
        let watch = self.worker_watch();
        let logs = self.follow(&before);
        let backlog = self.under_load(6);
        let image = self.image(&tag);
        self.apply_manifest(|cr| cr["spec"]["image"] = json!(image));
        let job = wait_for_job(&self.kube, &self.ns, CR, &image, 0);
        let version = self.migration_ran(&job);
        let pods = until("the workers on the new image", ROLL, || {
            let pods = self.ready_pods("worker", 1);
            if pods[0]["spec"]["containers"][0]["image"] == image.as_str() {
                Ok(pods)
            } else {
                Err(pods[0]["spec"]["containers"][0]["image"].to_string())
            }
        });
        self.note_workers(&pods);
        let logs = logs.finish(&before);
        let drained = Self::drained(&watch, &logs, &before);
        let settled = self.settled();
        format!("backlog {backlog} at the edit; migration Job {job} (schema version {version}); {drained}; {settled}")
    }

    /// 7. Under load, a worker is force-deleted; the others reclaim its pending entries.
    pub fn force_delete(&mut self) -> String {
        self.patch(json!({"spec": {"replicas": 2}}));
        let pods = Self::pod_names(&self.ready_pods("worker", 2));
        self.worker_pods.extend(pods.iter().cloned());
        let backlog = self.under_load(7);
        // The pod holding pending entries right now.
        let streams = self.streams.clone();
        let victim = until("a worker with entries in flight", ROLL, || {
            for s in &streams {
                for (consumer, pending) in consumers(&mut self.redis, s, GROUP) {
                    if let Some(pod) = pods
                        .iter()
                        .find(|p| pending > 0 && consumer_of(&consumer, p))
                    {
                        return Ok(pod.clone());
                    }
                }
            }
            Err("nothing pending".to_string())
        });
        self.k(&["delete", "pod", &victim, "--grace-period=0", "--force"]);
        let after = Self::pod_names(&self.ready_pods("worker", 2));
        assert!(!after.contains(&victim));
        self.worker_pods.extend(after.iter().cloned());
        let pending = self.nothing_pending_on_gone(&after);
        let settled = self.settled();
        format!("backlog {backlog}; force-deleted {victim} with entries in flight; {pending}; {settled}")
    }

    /// 8. Under load, the database password is rotated (role, then Secret); the pods roll and reconnect.
    pub fn rotate_password(&mut self) -> String {
        let before = Self::pod_names(&self.ready_pods("worker", 2));
        let backlog = self.under_load(8);
        let password = format!("second-{}", std::process::id());
        self.pg.query(
            "postgres",
            &format!("ALTER ROLE {} PASSWORD '{password}'", self.role),
        );
        self.secret(&password);
        let pods = until("the workers rolled onto the new Secret", ROLL, || {
            let pods = self.ready_pods("worker", 2);
            let names = Self::pod_names(&pods);
            if names.iter().all(|n| !before.contains(n)) {
                Ok(pods)
            } else {
                Err(format!("{names:?}"))
            }
        });
        self.note_workers(&pods);
        let settled = self.settled();
        format!("backlog {backlog}; role password and Secret rotated; the workers rolled ({:?}); {settled}", Self::pod_names(&pods))
    }

    /// 9. The leading operator pod is killed; the standby leads and reconciles a change made meanwhile.
    pub fn failover(&mut self) -> String {
        let fullname = format!("{}-postgres-writer-operator", self.release);
        let lease = |kube: &Kube, ns: &str| kube.get(ns, &format!("lease/{fullname}")).unwrap();
        let before = lease(&self.kube, &self.release_ns);
        let leader = before["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .to_string();
        let duration = before["spec"]["leaseDurationSeconds"].as_i64().unwrap();
        let pod = self
            .kube
            .get(&self.release_ns, &format!("pod/{leader}"))
            .unwrap();
        let container = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap()
            .trim_start_matches("containerd://")
            .to_string();
        // SIGKILL: no release of the Lease; the pod object goes too, so the
        // kubelet does not restart it under the same identity.
        let killed = Instant::now();
        ctr(&["tasks", "kill", "--signal", "SIGKILL", &container]);
        self.kube.kubectl(&[
            "-n",
            &self.release_ns,
            "delete",
            "pod",
            &leader,
            "--grace-period=0",
            "--force",
        ]);
        // A change while nobody leads.
        self.patch(json!({"spec": {"replicas": 3}}));
        let holder = until("a new leader", ROLL, || {
            let l = lease(&self.kube, &self.release_ns);
            match l["spec"]["holderIdentity"].as_str() {
                Some(h) if !h.is_empty() && h != leader => Ok(h.to_string()),
                other => Err(format!("{other:?}")),
            }
        });
        let took = killed.elapsed();
        let pods = self.ready_pods("worker", 3);
        self.note_workers(&pods);
        let after = lease(&self.kube, &self.release_ns);
        assert_eq!(
            after["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
            before["spec"]["leaseTransitions"].as_i64().unwrap_or(0) + 1
        );
        let log = self
            .kube
            .kubectl(&["-n", &self.release_ns, "logs", &holder]);
        assert!(log.contains("acquired the leader Lease"), "{log}");
        format!(
            "killed leader {leader}; {holder} led after {:.1} s (lease {duration} s) and scaled to 3 as changed meanwhile",
            took.as_secs_f64()
        )
    }

    /// 10. The pods' traces reached the receiver, naming the pod and its namespace.
    pub fn traces(&mut self) -> String {
        let traces = self.traces.lock().unwrap();
        let from_workers: Vec<(&(String, String, String), &u64)> = traces
            .by_resource
            .iter()
            .filter(|((service, _, _), _)| service == "postgres-writer-worker")
            .collect();
        assert!(
            !from_workers.is_empty(),
            "no worker spans: {:?}",
            traces.by_resource
        );
        for ((_, pod, ns), _) in &from_workers {
            assert_eq!(ns, &self.ns, "k8s.namespace.name");
            assert!(
                self.worker_pods.contains(pod),
                "k8s.pod.name {pod} is no worker pod of the story"
            );
        }
        let spans: u64 = from_workers.iter().map(|(_, n)| **n).sum();
        let pods: BTreeSet<&String> = from_workers.iter().map(|((_, p, _), _)| p).collect();
        format!(
            "{spans} worker spans from {} pods, each with k8s.pod.name and k8s.namespace.name",
            pods.len()
        )
    }

    /// 11. Suspend drains the pods to 0; resume brings them back; the result is exact.
    pub fn suspend_resume(&mut self) -> String {
        let before = Self::pod_names(&self.ready_pods("worker", 3));
        let watch = self.worker_watch();
        let logs = self.follow(&before);
        let backlog = self.under_load(11);
        self.patch(json!({"spec": {"suspend": true}}));
        until("worker and analytics pods gone", ROLL, || {
            let left = self.pods("worker").len() + self.pods("analytics").len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} pods"))
            }
        });
        let logs = logs.finish(&before);
        let drained = Self::drained(&watch, &logs, &before);
        let left = self.backlog();
        self.patch(json!({"spec": {"suspend": false}}));
        let pods = self.ready_pods("worker", 3);
        self.ready_pods("analytics", 1);
        self.note_workers(&pods);
        let settled = self.settled();
        format!("backlog {backlog}; suspended with {left} entries left: {drained}; resumed to 3 pods; {settled}")
    }
}

//! Issue 16, cluster-level items against the real API server:
//! - [`scale_subresource_and_hpa`] (parallel): an autoscaling/v2 HPA on a
//!   PostgresWriter is accepted; writes to `/scale` reach the Deployment;
//! - [`crd_upgrade`] (sequential, with the suite's operator): resources
//!   created with the previous CRD stay served, valid and reconciled after
//!   the README's upgrade step;
//! - [`leader_election`] and [`watch_namespace_list`] (sequential, once the
//!   suite's operator is stopped): operators of their own.

use crate::harness::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

/// The README's CRD upgrade step (Helm never upgrades `crds/`).
pub const CRD_UPGRADE: [&str; 5] = [
    "apply",
    "--server-side",
    "--force-conflicts",
    "-f",
    "charts/postgres-writer-operator/crds/",
];

/// `crds/postgreswriter.yaml` at b08e561, the commit before issue 16.
const PREVIOUS_CRD: &str = "operator/tests/fixtures/crd-previous.yaml";
/// crds/examples/ at the same commit.
const PREVIOUS_EXAMPLES: &str = "operator/tests/fixtures/previous-examples.yaml";

/// (status, body) of GET `path` on a local operator's HTTP port.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// A sample's value from the operator's /metrics (summed over label sets).
fn metric(op: &Operator, name: &str) -> f64 {
    let (_, body) = http_get(op.port, "/metrics").expect("/metrics");
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn reconciles(op: &Operator) -> f64 {
    metric(op, "pgw_operator_reconciles_total")
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn scale_replicas(kube: &Kube, ns: &str, name: &str) -> Value {
    serde_json::from_str(&kube.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/pgwriter.io/v1alpha1/namespaces/{ns}/postgreswriters/{name}/scale"),
    ]))
    .unwrap()
}

/// Creates the minimal example with IMAGE_A and lets its migration succeed.
fn migrated_writer(kube: &Kube, ns: &str) {
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    apply_and_migrate(kube, ns, &cr);
    wait_condition(
        kube,
        ns,
        "indexer",
        "Migrated",
        "True",
        "MigrationSucceeded",
    );
}

/// Item 4: the scale subresource as autoscalers use it.
pub fn scale_subresource_and_hpa(kube: &Kube) {
    let ns = namespace(kube, "autoscale");
    migrated_writer(kube, &ns);
    deployment_where(kube, &ns, "indexer-worker", "1 replica", |d| {
        d["spec"]["replicas"] == 1
    });

    // A write to /scale (what the HPA controller and KEDA do).
    kube.kubectl(&[
        "-n",
        &ns,
        "patch",
        "pgw/indexer",
        "--subresource=scale",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ]);
    deployment_where(kube, &ns, "indexer-worker", "2 replicas from /scale", |d| {
        d["spec"]["replicas"] == 2
    });
    assert_eq!(
        kube.get(&ns, "pgw/indexer").unwrap()["spec"]["replicas"],
        2,
        "/scale writes spec.replicas"
    );

    // The documented HPA, created for real (not a dry run).
    let out = kube.kubectl_stdin(
        &["-n", &ns, "create", "-f", "-"],
        &read("docs/examples/autoscaling/hpa-stream-lag.yaml"),
    );
    assert!(out.ok, "kubectl create hpa: {}", out.stderr);
    let hpa = kube.get(&ns, "hpa/indexer").expect("the HPA is stored");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "pgwriter.io/v1alpha1", "kind": "PostgresWriter", "name": "indexer"})
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["external"]["metric"]["name"],
        "pgw_stream_lag"
    );
    let table = kube.kubectl(&["-n", &ns, "get", "hpa", "indexer"]);
    assert!(table.contains("PostgresWriter/indexer"), "{table}");

    // kubectl scale goes through /scale too, with the HPA in place.
    kube.kubectl(&["-n", &ns, "scale", "pgw/indexer", "--replicas=4"]);
    deployment_where(kube, &ns, "indexer-worker", "4 replicas", |d| {
        d["spec"]["replicas"] == 4
    });
    let scale = wait_for("/scale status.replicas = 4", || {
        let s = scale_replicas(kube, &ns, "indexer");
        if s["status"]["replicas"] == 4 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(
        scale["status"]["selector"],
        "app.kubernetes.io/component=worker,app.kubernetes.io/instance=indexer",
        "the HPA counts the worker pods"
    );
}

/// Numbers as f64: the API server stores `1` of a YAML file as `1.0`.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The served CRD's schema is the one in `file`.
fn served_schema_is(kube: &Kube, file: &str) {
    let want = numbers_as_floats(
        &yaml_docs(&read(file))[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
    );
    wait_for(&format!("the served CRD is {file}"), || {
        let crd: Value = serde_json::from_str(&kube.kubectl(&[
            "get",
            "crd",
            "postgreswriters.pgwriter.io",
            "-o",
            "json",
        ]))
        .unwrap();
        let served = numbers_as_floats(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
        if served == want {
            Ok(())
        } else {
            Err("schema differs".to_string())
        }
    });
    kube.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/postgreswriters.pgwriter.io",
        "--timeout=60s",
    ]);
}

/// Item 6: previous CRD, resources, the README's upgrade step, then the
/// resources are still served, valid under the new schema and reconciled.
/// Needs an operator watching every namespace (the suite's).
pub fn crd_upgrade(kube: &Kube) {
    // The cluster as the previous release left it.
    kube.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        PREVIOUS_CRD,
    ]);
    served_schema_is(kube, PREVIOUS_CRD);
    let ns = namespace(kube, "crd-upgrade");
    // The other Secrets the full example names.
    for (secret, key) in [
        ("mainnet-db", "url"),
        ("redis-ca", "ca.crt"),
        ("mainnet-db-ca", "ca.crt"),
    ] {
        kube.kubectl(&[
            "-n",
            &ns,
            "create",
            "secret",
            "generic",
            secret,
            &format!("--from-literal={key}=postgres://writer:secret@postgres:5432/mainnet"),
        ]);
    }
    let old = yaml_docs(&read(PREVIOUS_EXAMPLES));
    let names: Vec<String> = old
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for doc in &old {
        // Strict field validation (kubectl's default): the previous schema knows every field.
        apply(kube, &ns, doc);
    }

    // The upgrade step, with the current crds/ (read at run time).
    kube.kubectl(&CRD_UPGRADE);
    served_schema_is(
        kube,
        "charts/postgres-writer-operator/crds/postgreswriter.yaml",
    );
    assert_eq!(
        read("charts/postgres-writer-operator/crds/postgreswriter.yaml"),
        read("crds/postgreswriter.yaml"),
        "the step applies the current CRD"
    );

    for name in &names {
        // Still served.
        let obj = kube
            .get(&ns, &format!("pgw/{name}"))
            .unwrap_or_else(|| panic!("{name} is not served after the upgrade"));
        // Valid: an update passes the new schema (server-side dry run)…
        let out = kube.kubectl_stdin(
            &["-n", &ns, "replace", "--dry-run=server", "-f", "-"],
            &obj.to_string(),
        );
        assert!(out.ok, "{name}: dry-run update: {}", out.stderr);
        // …and so does the same spec as a new object (no ratcheting of old values).
        let copy = json!({
            "apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": format!("{name}-copy")},
            "spec": obj["spec"],
        });
        let out = kube.kubectl_stdin(
            &["-n", &ns, "create", "--dry-run=server", "-f", "-"],
            &copy.to_string(),
        );
        assert!(out.ok, "{name}: dry-run create: {}", out.stderr);
    }

    // Reconciled after the upgrade: a change after it is observed and rolled out.
    let minimal = &names[0];
    let job = wait_for_job(
        kube,
        &ns,
        minimal,
        "ghcr.io/example/postgres-writer:0.1.0",
        0,
    );
    finish_job_pod(kube, &ns, &job, 0);
    wait_condition(kube, &ns, minimal, "Migrated", "True", "MigrationSucceeded");
    for name in &names {
        kube.kubectl(&["-n", &ns, "scale", &format!("pgw/{name}"), "--replicas=2"]);
    }
    deployment_where(
        kube,
        &ns,
        &format!("{minimal}-worker"),
        "2 replicas after the upgrade",
        |d| d["spec"]["replicas"] == 2,
    );
    for name in &names {
        wait_for(
            &format!("{name}: observedGeneration after the upgrade"),
            || {
                let o = kube.get(&ns, &format!("pgw/{name}")).unwrap();
                if o["spec"]["replicas"] == 2
                    && o["status"]["observedGeneration"] == o["metadata"]["generation"]
                {
                    Ok(())
                } else {
                    Err(o["status"].to_string())
                }
            },
        );
    }
}

fn lease(kube: &Kube, ns: &str, name: &str) -> Option<Value> {
    kube.get(ns, &format!("lease/{name}"))
}

fn holder(kube: &Kube, ns: &str, name: &str) -> String {
    lease(kube, ns, name)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn readyz_says(op: &Operator, what: &str) -> String {
    wait_for(&format!("/readyz: {what}"), || match op.readyz() {
        Some((200, body)) if body.contains(what) => Ok(body),
        other => Err(format!("{other:?}")),
    })
}

fn leader_env<'a>(ns: &'a str, lease: &'a str, identity: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("WATCH_NAMESPACE", ns),
        ("POD_NAMESPACE", ns),
        ("LEASE_NAME", lease),
        ("POD_NAME", identity),
        // Short timings: a takeover after a kill takes about 4 s.
        ("LEASE_DURATION_SECONDS", "4"),
        ("LEASE_RENEW_DEADLINE_SECONDS", "3"),
        ("LEASE_RETRY_PERIOD_SECONDS", "1"),
    ]
}

/// Item 5: two operators, one Lease; only the leader reconciles; a graceful
/// stop hands over at once (the Lease is released), a kill after the expiry.
pub fn leader_election(kube: &Kube, dir: &Path) {
    let ns = namespace(kube, "leader");
    let name = "pgw-e2e-leader";
    let a = Operator::start_with(
        &kube.kubeconfig,
        dir,
        "leader-a",
        &leader_env(&ns, name, "leader-a"),
    );
    readyz_says(&a, "ready (leader)");
    assert_eq!(holder(kube, &ns, name), "leader-a");
    let b = Operator::start_with(
        &kube.kubeconfig,
        dir,
        "leader-b",
        &leader_env(&ns, name, "leader-b"),
    );
    readyz_says(&b, "standby; leader: leader-a");
    assert_eq!(metric(&a, "pgw_operator_leader"), 1.0);
    assert_eq!(metric(&b, "pgw_operator_leader"), 0.0);

    // A change is reconciled by the leader only.
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    apply_and_migrate(kube, &ns, &cr);
    wait_condition(
        kube,
        &ns,
        "indexer",
        "Migrated",
        "True",
        "MigrationSucceeded",
    );
    assert!(reconciles(&a) > 0.0, "the leader reconciled");
    assert_eq!(reconciles(&b), 0.0, "the standby never reconciles");

    // Graceful stop (SIGTERM): the leader releases the Lease and exits 0.
    let pid = a.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut a = a;
    let status = a.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", a.log());
    assert!(a.log().contains("released the leader Lease"), "{}", a.log());
    readyz_says(&b, "ready (leader)");
    assert_eq!(holder(kube, &ns, name), "leader-b");
    assert_eq!(metric(&b, "pgw_operator_leader"), 1.0);
    // The new leader reconciles the next change.
    merge_patch(kube, &ns, "pgw/indexer", json!({"spec": {"replicas": 2}}));
    deployment_where(kube, &ns, "indexer-worker", "2 replicas by b", |d| {
        d["spec"]["replicas"] == 2
    });
    assert!(reconciles(&b) > 0.0, "the new leader reconciles");

    // A killed leader (no release): a standby takes over once the Lease expires.
    let c = Operator::start_with(
        &kube.kubeconfig,
        dir,
        "leader-c",
        &leader_env(&ns, name, "leader-c"),
    );
    readyz_says(&c, "standby; leader: leader-b");
    let transitions = lease(kube, &ns, name).unwrap()["spec"]["leaseTransitions"]
        .as_i64()
        .unwrap();
    drop(b); // SIGKILL
    readyz_says(&c, "ready (leader)");
    let after = lease(kube, &ns, name).unwrap();
    assert_eq!(after["spec"]["holderIdentity"], "leader-c");
    assert_eq!(
        after["spec"]["leaseTransitions"].as_i64().unwrap(),
        transitions + 1
    );
    merge_patch(kube, &ns, "pgw/indexer", json!({"spec": {"replicas": 3}}));
    deployment_where(kube, &ns, "indexer-worker", "3 replicas by c", |d| {
        d["spec"]["replicas"] == 3
    });
    assert!(reconciles(&c) > 0.0);
}

/// Item 9: the chart installed with a namespace list; the operator, holding
/// only that release's Roles, reconciles in the listed namespaces and not
/// elsewhere.
pub fn watch_namespace_list(kube: &Kube, dir: &Path) {
    let listed = [namespace(kube, "listed-a"), namespace(kube, "listed-b")];
    let other = namespace(kube, "unlisted");
    let release = format!("wl{}", std::process::id());
    let release_ns = format!("pgw-wl-{}", std::process::id());
    install_chart(
        kube,
        &release,
        &release_ns,
        &[&format!("watchNamespace={{{},{}}}", listed[0], listed[1])],
    );
    let fullname = format!("{release}-postgres-writer-operator");
    // RBAC follows the list: a Role in each listed namespace, no ClusterRole.
    let cluster_role = kube.kubectl_try(&["get", "clusterrole", &fullname]);
    assert!(
        !cluster_role.ok && cluster_role.stderr.contains("NotFound"),
        "{}",
        cluster_role.stdout
    );
    for ns in &listed {
        assert!(kube.get(ns, &format!("role/{fullname}")).is_some(), "{ns}");
        assert!(
            kube.get(ns, &format!("rolebinding/{fullname}")).is_some(),
            "{ns}"
        );
    }
    assert!(kube.get(&other, &format!("role/{fullname}")).is_none());

    let token = kube.kubectl(&[
        "-n",
        &release_ns,
        "create",
        "token",
        &fullname,
        "--duration=1h",
    ]);
    let config = dir.join("watch-list-kubeconfig");
    token_kubeconfig(kube, &token, &config);
    let scoped = Kube {
        kubeconfig: config.clone(),
    };
    // The token holds the Roles' permissions only.
    assert!(scoped.kubectl_try(&["-n", &listed[0], "get", "pgw"]).ok);
    for denied in [
        scoped.kubectl_try(&["-n", &other, "get", "pgw"]),
        scoped.kubectl_try(&["get", "pgw", "--all-namespaces"]),
    ] {
        assert!(
            !denied.ok && denied.stderr.contains("forbidden"),
            "{}",
            denied.stderr
        );
    }

    let watch = format!("{},{}", listed[0], listed[1]);
    let op = Operator::start_with(
        &config,
        dir,
        "operator-watch-list",
        &[
            ("WATCH_NAMESPACE", watch.as_str()),
            ("POD_NAMESPACE", release_ns.as_str()),
            ("LEASE_NAME", fullname.as_str()),
            ("POD_NAME", "watch-list-0"),
        ],
    );
    readyz_says(&op, "ready (leader)");
    let mut cr = minimal_example();
    cr["spec"]["image"] = json!(IMAGE_A);
    apply(kube, &other, &cr);
    for ns in &listed {
        migrated_writer(kube, ns);
    }
    // Both listed namespaces are done; the unlisted one was never touched.
    let untouched = kube.get(&other, "pgw/indexer").unwrap();
    assert!(untouched["status"].is_null(), "{}", untouched["status"]);
    assert!(kube
        .list(&other, "jobs", "app.kubernetes.io/instance=indexer")
        .is_empty());
    let log = op.log();
    assert!(!log.contains("forbidden"), "{log}");
    drop(op);
    kube.helm(&["uninstall", &release, "--namespace", &release_ns]);
}

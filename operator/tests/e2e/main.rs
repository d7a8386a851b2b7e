//! The user's story against a real API server (tests/control-plane, started
//! by scripts/test.sh): the real kubectl and helm, the chart's RBAC enforced
//! on the operator (a local process holding only a TokenRequest token of the
//! chart's ServiceAccount), the real Job, Deployment and garbage-collector
//! controllers. There is no kubelet: the test moves pods along through the
//! pod status subresource.
//!
//! `PGW_TEST_KUBECONFIG` names the admin kubeconfig. Without it the test
//! says why and passes, except under CI (`CI` set), where it fails.

mod cluster;
mod harness;
mod pods;
mod scenarios;

use harness::*;
use scenarios::*;
use serde_json::Value;
use std::time::{Duration, Instant};

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
    install_chart(&admin, &release, &release_ns, &["image.tag=e2e"]);
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
    // RBAC is enforced: the token may read Secrets (get/list/watch: RBAC
    // cannot grant their metadata alone, see the chart's values.yaml) but
    // never write one, and may not get a pod (it only lists them).
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        let can = as_operator.kubectl_try(&["-n", &release_ns, "auth", "can-i", verb, "secrets"]);
        assert_eq!(can.stdout.trim(), "no", "{verb} secrets: {}", can.stderr);
    }
    let denied = as_operator.kubectl_try(&[
        "-n",
        &release_ns,
        "create",
        "secret",
        "generic",
        "probe",
        "--from-literal=k=v",
    ]);
    assert!(
        !denied.ok && denied.stderr.contains("forbidden"),
        "{}",
        denied.stderr
    );
    // The chart's Lease, in the release namespace (POD_NAMESPACE in the pod).
    let lease_name = format!("{release}-postgres-writer-operator");
    let operator = Operator::start_with(
        &operator_config,
        &dir,
        "operator",
        &[
            ("POD_NAMESPACE", release_ns.as_str()),
            ("LEASE_NAME", lease_name.as_str()),
            ("POD_NAME", "operator-0"),
        ],
    );
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
        ("placement_and_identity", pods::placement_and_identity),
        ("secret_rotation", pods::secret_rotation),
        ("suspend_and_status", pods::suspend_and_status),
        (
            "scale_subresource_and_hpa",
            cluster::scale_subresource_and_hpa,
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
    // Sequential: the CRD upgrade (with the operator above), then operators
    // of their own once it is stopped (cluster.rs).
    let t = Instant::now();
    cluster::crd_upgrade(&admin);
    println!("scenario crd_upgrade: {:?}", t.elapsed());
    drop(operator);
    let t = Instant::now();
    std::thread::scope(|s| {
        let leader = s.spawn(|| cluster::leader_election(&admin, &dir));
        let list = s.spawn(|| cluster::watch_namespace_list(&admin, &dir));
        let results = [
            ("leader_election", leader.join()),
            ("watch_namespace_list", list.join()),
        ];
        for (name, result) in results {
            if let Err(e) = result {
                std::panic::resume_unwind(e);
            }
            println!("scenario {name}: ok");
        }
    });
    println!("sequential operator scenarios: {:?}", t.elapsed());
    admin.helm(&["uninstall", &release, "--namespace", &release_ns]);
    println!("Kubernetes end-to-end suite: {:?}", started.elapsed());
}

//! The user's story against a real API server (tests/control-plane, started
//! by scripts/test.sh): the real kubectl and helm, the chart's RBAC enforced
//! on the operator (a local process holding only a TokenRequest token of the
//! chart's ServiceAccount), the real Job, Deployment and garbage-collector
//! controllers. There is no kubelet: the test moves pods along through the
//! pod status subresource.
//!
//! Each scenario is its own test result (a libtest-mimic harness, `harness =
//! false`): a failed scenario is reported as failed and the others still run
//! and report. One process sets the cluster up once (the chart, the
//! operator) for the scenarios it runs, then runs them in three phases:
//! 1. the [`PARALLEL`] scenarios at once, each in its own namespace, with
//!    the suite's operator;
//! 2. `crd_upgrade`, alone, with the suite's operator (it changes the CRD);
//! 3. with the suite's operator stopped, the scenarios that run operators of
//!    their own (`leader_election`, `watch_namespace_list`).
//!
//! `cargo test` runs every scenario in one process. cargo-nextest runs each
//! test in a process of its own: each then sets up for its one scenario, and
//! the `e2e-cluster` test group (.config/nextest.toml) runs them one at a
//! time, since two operators watching every namespace, or a CRD change,
//! would disturb the other processes' scenarios.
//!
//! `PGW_TEST_KUBECONFIG` names the admin kubeconfig. Without it every
//! scenario says why and passes, except under CI (`CI` set), where each fails.

mod cluster;
mod harness;
mod pods;
mod scenarios;

use harness::*;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// A scenario against the suite's cluster, by name.
type Scenario = (&'static str, fn(&Kube));
/// A scenario that starts operators of its own (in the suite's directory).
type OwnOperatorScenario = (&'static str, fn(&Kube, &Path));

/// Scenarios that run at once, each in its own namespace, with the suite's operator.
const PARALLEL: [Scenario; 8] = [
    ("story", scenarios::story),
    ("no_wedge", scenarios::no_wedge),
    (
        "reconcile_error_is_reported",
        scenarios::reconcile_error_is_reported,
    ),
    (
        "invalid_resources_are_refused",
        scenarios::invalid_resources_are_refused,
    ),
    ("placement_and_identity", pods::placement_and_identity),
    ("secret_rotation", pods::secret_rotation),
    ("suspend_and_status", pods::suspend_and_status),
    (
        "scale_subresource_and_hpa",
        cluster::scale_subresource_and_hpa,
    ),
];
/// After the parallel ones, alone, with the suite's operator: it replaces the CRD.
const CRD_UPGRADE_SCENARIO: Scenario = ("crd_upgrade", cluster::crd_upgrade);
/// Once the suite's operator is stopped: operators of their own.
const OWN_OPERATORS: [OwnOperatorScenario; 2] = [
    ("leader_election", cluster::leader_election),
    ("watch_namespace_list", cluster::watch_namespace_list),
];

/// Every scenario's name, in the order they run.
fn scenario_names() -> Vec<&'static str> {
    PARALLEL
        .iter()
        .map(|(name, _)| *name)
        .chain([CRD_UPGRADE_SCENARIO.0])
        .chain(OWN_OPERATORS.iter().map(|(name, _)| *name))
        .collect()
}

/// A scenario's outcome: Err with the panic's message.
type Outcome = Result<(), String>;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let names = scenario_names();
    let outcomes = if args.list {
        BTreeMap::new()
    } else {
        let selected: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| {
                let trial = Trial::test(*name, || Ok(()));
                !args.is_filtered_out(&trial) && !args.is_ignored(&trial)
            })
            .collect();
        run_selected(&selected)
    };
    let trials = names
        .iter()
        .map(|name| {
            let outcome = outcomes.get(name).cloned();
            Trial::test(*name, move || match outcome {
                Some(Ok(())) => Ok(()),
                Some(Err(message)) => Err(Failed::from(message)),
                None => Err(Failed::from("not run: not selected by the filter")),
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// Runs the `selected` scenarios (set-up once, then the three phases) and
/// returns each one's outcome.
fn run_selected(selected: &[&'static str]) -> BTreeMap<&'static str, Outcome> {
    if selected.is_empty() {
        return BTreeMap::new();
    }
    let all = |outcome: Outcome| selected.iter().map(|n| (*n, outcome.clone())).collect();
    let admin_config = match std::env::var("PGW_TEST_KUBECONFIG") {
        Ok(path) => PathBuf::from(path),
        Err(_) if std::env::var_os("CI").is_some() => {
            return all(Err(
                "PGW_TEST_KUBECONFIG is not set: under CI the Kubernetes end-to-end suite \
                 must run (scripts/test.sh starts the control plane and sets it)"
                    .into(),
            ))
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: PGW_TEST_KUBECONFIG is not set (run scripts/test.sh, which starts \
                 tests/control-plane); these tests fail instead under CI"
            );
            return all(Ok(()));
        }
    };
    let started = Instant::now();
    let admin = Kube {
        kubeconfig: admin_config,
    };
    let dir = std::env::temp_dir().join(format!("pgw-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let release_ns = format!("pgw-operator-{}", std::process::id());
    let release = format!("e2e{}", std::process::id());
    let is_selected = |name: &str| selected.contains(&name);
    let parallel: Vec<_> = PARALLEL.iter().filter(|(n, _)| is_selected(n)).collect();
    let crd_upgrade = is_selected(CRD_UPGRADE_SCENARIO.0);
    let own_operators: Vec<_> = OWN_OPERATORS
        .iter()
        .filter(|(n, _)| is_selected(n))
        .collect();

    let needs_operator = !parallel.is_empty() || crd_upgrade;
    let operator = match catch_unwind(AssertUnwindSafe(|| {
        set_up(&admin, &dir, &release, &release_ns, needs_operator)
    })) {
        Ok(operator) => operator,
        Err(panic) => {
            let outcomes = all(Err(format!("set-up failed: {}", message(panic))));
            uninstall(&admin, &release, &release_ns);
            return outcomes;
        }
    };
    println!("setup took {:?}", started.elapsed());

    let mut outcomes = BTreeMap::new();
    // 1. In parallel, each in its own namespace.
    std::thread::scope(|s| {
        let handles: Vec<_> = parallel
            .iter()
            .map(|(name, f)| {
                let kube = admin.clone();
                (*name, s.spawn(move || timed(name, || f(&kube))))
            })
            .collect();
        for (name, handle) in handles {
            let outcome = handle.join().unwrap_or_else(|panic| Err(message(panic)));
            outcomes.insert(name, outcome);
        }
    });
    // 2. The CRD upgrade, with the operator above.
    if crd_upgrade {
        let (name, f) = CRD_UPGRADE_SCENARIO;
        outcomes.insert(name, timed(name, || f(&admin)));
    }
    if let Some(operator) = &operator {
        if outcomes.values().any(Result::is_err) {
            let log = operator.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "--- operator log, last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    drop(operator);
    // 3. Operators of their own, once the suite's is stopped.
    if !own_operators.is_empty() {
        let t = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = own_operators
                .iter()
                .map(|(name, f)| {
                    let (admin, dir) = (&admin, &dir);
                    (*name, s.spawn(move || timed(name, || f(admin, dir))))
                })
                .collect();
            for (name, handle) in handles {
                let outcome = handle.join().unwrap_or_else(|panic| Err(message(panic)));
                outcomes.insert(name, outcome);
            }
        });
        println!("sequential operator scenarios: {:?}", t.elapsed());
    }
    uninstall(&admin, &release, &release_ns);
    println!("Kubernetes end-to-end suite: {:?}", started.elapsed());
    outcomes
}

/// Runs `scenario`, prints its time and outcome, and returns the outcome.
fn timed(name: &str, scenario: impl FnOnce()) -> Outcome {
    let t = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(scenario)).map_err(message);
    println!(
        "scenario {name}: {:?}",
        outcome.as_ref().map(|()| t.elapsed())
    );
    outcome
}

/// The message of a panic (an assertion's text).
fn message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Removes the suite's release (whatever the scenarios' outcomes; absent
/// when the set-up failed before installing it).
fn uninstall(admin: &Kube, release: &str, release_ns: &str) {
    let out = admin.run(
        &tool("HELM", "helm"),
        &["uninstall", release, "--namespace", release_ns],
        None,
    );
    if !out.ok && !out.stderr.contains("not found") {
        eprintln!("helm uninstall {release}: {}", out.stderr);
    }
}

/// The chart installed as `release` and its CRD Established; the operator
/// (when `with_operator`) running as the chart's ServiceAccount, ready.
/// Panics when a step or a check fails.
fn set_up(
    admin: &Kube,
    dir: &Path,
    release: &str,
    release_ns: &str,
    with_operator: bool,
) -> Option<Operator> {
    // Without the CRD the operator is not ready and says why.
    let crd_absent = !admin
        .kubectl_try(&["get", "crd", "postgreswriters.pgwriter.io"])
        .ok;
    let early = crd_absent.then(|| {
        let early = Operator::start(&admin.kubeconfig, dir, "operator-before-crd");
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

    // helm install; the CRD becomes Established.
    install_chart(admin, release, release_ns, &["image.tag=e2e"]);
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
    if !with_operator {
        return None;
    }
    // The operator holds only a TokenRequest token of the chart's ServiceAccount.
    let sa = admin.helm(&["get", "manifest", release, "--namespace", release_ns]);
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
        release_ns,
        "create",
        "token",
        &sa_name,
        "--duration=1h",
    ]);
    let operator_config = dir.join("operator-kubeconfig");
    token_kubeconfig(admin, &token, &operator_config);
    let as_operator = Kube {
        kubeconfig: operator_config.clone(),
    };
    // RBAC is enforced: the token may read Secrets (get/list/watch: RBAC
    // cannot grant their metadata alone, see the chart's values.yaml) but
    // never write one, and may not get a pod (it only lists them).
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        let can = as_operator.kubectl_try(&["-n", release_ns, "auth", "can-i", verb, "secrets"]);
        assert_eq!(can.stdout.trim(), "no", "{verb} secrets: {}", can.stderr);
    }
    let denied = as_operator.kubectl_try(&[
        "-n",
        release_ns,
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
        dir,
        "operator",
        &[
            ("POD_NAMESPACE", release_ns),
            ("LEASE_NAME", lease_name.as_str()),
            ("POD_NAME", "operator-0"),
        ],
    );
    wait_for("operator /readyz", || match operator.readyz() {
        Some((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    Some(operator)
}

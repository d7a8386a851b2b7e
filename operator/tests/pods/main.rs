//! The user's story with running pods (issue 20): the chart's operator
//! in-cluster, real migration Jobs, worker and analytics pods consuming a
//! generated load from the test's Redis into its PostgreSQL, scaling, image
//! changes, a forced pod deletion, a password rotation, an operator
//! failover, traces and suspend/resume, on the test node that
//! scripts/test.sh starts (scripts/control-plane.sh --with-node).
//!
//! One test: the steps build on each other (one resource, one growing
//! load). Each step is timed and its outcome recorded; a failed step is
//! reported and the later ones still run where they can. The table is
//! printed at the end. Without the node (`PGW_TEST_NODE_KUBECONFIG` unset)
//! the test says why and passes, except under CI (`CI` set), where it fails.

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;
mod story;
mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;
use story::Story;

type Step = (&'static str, fn(&mut Story) -> String);

#[test]
fn user_story_with_running_pods() {
    let kubeconfig = match std::env::var("PGW_TEST_NODE_KUBECONFIG") {
        Ok(path) => PathBuf::from(path),
        Err(_) if std::env::var_os("CI").is_some() => panic!(
            "PGW_TEST_NODE_KUBECONFIG is not set: under CI the suite with running pods must run \
             (scripts/test.sh starts the test node and sets it; see its output for why it did not)"
        ),
        Err(_) => {
            eprintln!(
                "SKIPPED: PGW_TEST_NODE_KUBECONFIG is not set (scripts/test.sh starts the test node \
                 when the machine allows it: root, containerd, the CNI plugins); this test fails instead under CI"
            );
            return;
        }
    };
    let mut story = Story::new(kubeconfig);
    let steps: Vec<Step> = vec![
        ("1 helm install", Story::install),
        ("2 resource + migration", Story::apply_resource),
        ("3 consume 100k events", Story::consume),
        ("4 scale 1 -> 3", Story::scale_up),
        ("5 scale 3 -> 1", Story::scale_down),
        ("6 new image tag", Story::new_image),
        ("7 force-delete a pod", Story::force_delete),
        ("8 rotate the password", Story::rotate_password),
        ("9 operator failover", Story::failover),
        ("10 traces", Story::traces),
        ("11 suspend + resume", Story::suspend_resume),
    ];
    // Steps 1-3 set up what the others work on: after a failure there, stop.
    let foundation = 3;
    let mut rows: Vec<(&str, Result<String, String>, f64)> = Vec::new();
    for (i, (name, step)) in steps.iter().enumerate() {
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| step(&mut story))).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        let failed = outcome.is_err();
        rows.push((name, outcome, started.elapsed().as_secs_f64()));
        if failed && i < foundation {
            break;
        }
    }
    println!("\n{:<24} {:>8}  what was checked", "step", "seconds");
    for (name, outcome, seconds) in &rows {
        match outcome {
            Ok(checked) => println!("{name:<24} {seconds:>8.1}  ok: {checked}"),
            Err(why) => println!(
                "{name:<24} {seconds:>8.1}  FAILED: {}",
                why.lines().next().unwrap_or("")
            ),
        }
    }
    let failed: Vec<_> = rows.iter().filter(|(_, o, _)| o.is_err()).collect();
    if !failed.is_empty() {
        story.dump_logs();
    }
    assert!(
        failed.is_empty() && rows.len() == steps.len(),
        "failed steps: {:#?}",
        failed.iter().map(|(n, o, _)| (n, o)).collect::<Vec<_>>()
    );
}

//! Why the worker and analytics pods fail, as the kubelet reports it: shown
//! in the Degraded condition (`PodsFailing`) while a Deployment is short of
//! ready pods.

use crate::crd::PostgresWriter;
use crate::resources::{self, Component};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

/// Container states that keep a pod from running, as the kubelet reports them.
const FAILING_WAITING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why pods are failing (pure): a container waiting for a failure reason
/// (with its last exit), an unschedulable pod, a failed pod.
pub fn pod_problems(pods: &[Pod]) -> Vec<String> {
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.name_any();
        let status = pod.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some("Failed") {
            out.push(format!(
                "pod {name}: {}{}",
                status.reason.clone().unwrap_or_else(|| "Failed".into()),
                status
                    .message
                    .clone()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
            continue;
        }
        if let Some(c) = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        }) {
            out.push(format!(
                "pod {name}: Unschedulable: {}",
                c.message.clone().unwrap_or_default()
            ));
            continue;
        }
        for c in status.container_statuses.iter().flatten() {
            let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.clone().unwrap_or_default();
            if !FAILING_WAITING_REASONS.contains(&reason.as_str()) {
                continue;
            }
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    format!(
                        " (last exit: {}, exit code {})",
                        t.reason.clone().unwrap_or_else(|| "Error".into()),
                        t.exit_code
                    )
                })
                .unwrap_or_default();
            out.push(format!(
                "pod {name}: {reason}{}{last}",
                waiting
                    .message
                    .clone()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// Pods of `component` that are not ready although they should be: their
/// problems, listed only while the Deployment is short of ready pods.
pub(super) async fn component_problems(
    cr: &PostgresWriter,
    pods: &Api<Pod>,
    deployment: Option<&Deployment>,
    component: Component,
) -> Result<Vec<String>, kube::Error> {
    let Some(d) = deployment else {
        return Ok(Vec::new());
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if want == 0 || ready >= want {
        return Ok(Vec::new());
    }
    let selector = resources::selector_labels(cr, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(pod_problems(&list.items))
}

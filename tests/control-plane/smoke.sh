#!/usr/bin/env bash
# Smoke test of the control plane started by scripts/control-plane.sh, with
# the real kubectl: readiness, a CRD, the deployment/replicaset/job/garbage-
# collector/namespace controllers, TokenRequest and RBAC.
#
#   eval "$(scripts/control-plane.sh start DIR)"   # sets KUBECONFIG
#   tests/control-plane/smoke.sh
#
# kubectl is taken from PATH, else from scripts/tools.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${KUBECONFIG:?KUBECONFIG must point at the control plane (eval scripts/control-plane.sh start DIR)}"
command -v kubectl >/dev/null 2>&1 || PATH="$("$root/scripts/tools.sh"):$PATH"

ns=smoke-$RANDOM$RANDOM
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'echo "smoke: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
k() { kubectl -n "$ns" "$@"; }
passed=0
step() {
  passed=$((passed + 1))
  echo "smoke: $*"
}
# until DESCRIPTION COMMAND...: retries COMMAND (quietly) for up to 90 s.
until_ok() {
  local what=$1
  shift
  for _ in $(seq 1 180); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "smoke: FAILED: $what" >&2
  "$@" >&2 || true
  exit 1
}
# count KIND SELECTOR: how many objects of KIND match the label selector.
count() { k get "$1" -l "$2" -o name | wc -l; }
has() { [ "$(count "$1" "$2")" -eq "$3" ]; }

step "readyz"
[ "$(kubectl get --raw /readyz)" = ok ]

step "CRD established"
kubectl apply -f "$root/crds/postgreswriter.yaml" >/dev/null
crd=$(kubectl get -f "$root/crds/postgreswriter.yaml" -o name)
kubectl wait --for=condition=Established "$crd" --timeout=60s >/dev/null

kubectl create namespace "$ns" >/dev/null
until_ok "default ServiceAccount in $ns" k get serviceaccount default

step "Deployment -> ReplicaSet -> Pods"
k create deployment web --image=registry.invalid/web:1 --replicas=2 >/dev/null
until_ok "ReplicaSet of web" has replicasets app=web 1
until_ok "2 pods of web" has pods app=web 2
rs=$(k get replicasets -l app=web -o jsonpath='{.items[0].metadata.name}')
owner=$(k get pods -l app=web -o jsonpath='{.items[0].metadata.ownerReferences[0].name}')
[ "$owner" = "$rs" ]

step "Deployment Available once its pods are marked Running and Ready"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# What a kubelet would report for a started, ready container (README.md).
for pod in $(k get pods -l app=web -o jsonpath='{.items[*].metadata.name}'); do
  k patch pod "$pod" --subresource=status --type=merge -p "{\"status\":{
    \"phase\":\"Running\",\"startTime\":\"$now\",
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"},
      {\"type\":\"ContainersReady\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}],
    \"containerStatuses\":[{\"name\":\"web\",\"image\":\"registry.invalid/web:1\",\"imageID\":\"\",
      \"ready\":true,\"started\":true,\"restartCount\":0,\"state\":{\"running\":{\"startedAt\":\"$now\"}}}]}}" >/dev/null
done
k wait --for=condition=Available deployment/web --timeout=90s >/dev/null
[ "$(k get deployment web -o jsonpath='{.status.availableReplicas}')" = 2 ]

step "Job completes once its pod is marked Succeeded"
k create job finish --image=registry.invalid/job:1 >/dev/null
until_ok "pod of job finish" has pods batch.kubernetes.io/job-name=finish 1
pod=$(k get pods -l batch.kubernetes.io/job-name=finish -o jsonpath='{.items[0].metadata.name}')
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# What a kubelet would report for a container that exited 0 (README.md).
k patch pod "$pod" --subresource=status --type=merge -p "{\"status\":{
  \"phase\":\"Succeeded\",
  \"containerStatuses\":[{\"name\":\"finish\",\"image\":\"registry.invalid/job:1\",\"imageID\":\"\",
    \"ready\":false,\"restartCount\":0,
    \"state\":{\"terminated\":{\"exitCode\":0,\"reason\":\"Completed\",\"startedAt\":\"$now\",\"finishedAt\":\"$now\"}}}]}}" >/dev/null
k wait --for=condition=Complete job/finish --timeout=90s >/dev/null
[ "$(k get job finish -o jsonpath='{.status.succeeded}')" = 1 ]

step "TokenRequest token: allowed what its Role grants, forbidden otherwise"
k create serviceaccount reader >/dev/null
k create role pod-reader --verb=get,list --resource=pods >/dev/null
k create rolebinding reader --role=pod-reader --serviceaccount="$ns:reader" >/dev/null
token=$(k create token reader --duration=10m)
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/ca.crt"
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
# Only the token: an empty kubeconfig, so the admin client certificate is not sent.
as_reader() { kubectl --kubeconfig=/dev/null --server="$server" --certificate-authority="$work/ca.crt" --token="$token" -n "$ns" "$@"; }
[ "$(as_reader auth whoami -o jsonpath='{.status.userInfo.username}')" = "system:serviceaccount:$ns:reader" ]
[ "$(as_reader auth can-i list pods)" = yes ]
[ "$(as_reader auth can-i list secrets || true)" = no ]
[ -n "$(as_reader get pods -l app=web -o name)" ]
if as_reader get secrets >"$work/out" 2>&1; then
  echo "smoke: FAILED: the reader token listed secrets" >&2
  exit 1
fi
grep -q Forbidden "$work/out"

step "garbage collector removes the Deployment's dependents"
k delete deployment web --wait=false >/dev/null
until_ok "ReplicaSet of web collected" has replicasets app=web 0
until_ok "pods of web collected" has pods app=web 0

step "namespace controller deletes the namespace"
kubectl delete namespace "$ns" --wait=false >/dev/null
until_ok "namespace $ns deleted" bash -c "! kubectl get namespace '$ns'"

echo "smoke: $passed passed, 0 failed"

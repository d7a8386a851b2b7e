#!/usr/bin/env bash
# shellcheck disable=SC2016 # wait_for conditions are single-quoted on purpose: eval expands them on every try
# End-to-end on a local kind cluster (needs Docker, kind, kubectl, helm):
# builds and loads both images, starts Redis and PostgreSQL in the cluster,
# installs the operator with Helm (two replicas, one Lease holder), applies a
# PostgresWriter, feeds sample events, checks rows appear, checks migration
# gating (workers keep their image while a new image's migration has not
# succeeded), scales to 3 workers
# and back to 1 (drain: nothing left pending, no failed preStop hook), deletes
# the resource and checks its objects are gone.
#
#   scripts/kind-e2e.sh            # KEEP_CLUSTER=1 keeps the cluster afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=postgres-writer
ns=pgw-e2e
tag=e2e
step() { printf '\n== %s\n' "$*"; }
wait_for() { # description, shell condition (evaluated again on every try)
  local what=$1 condition=$2
  for _ in $(seq 1 120); do
    if eval "$condition" >/dev/null 2>&1; then return 0; fi
    sleep 2
  done
  echo "timed out waiting for: $what" >&2
  kubectl -n "$ns" get all,pgw,jobs >&2 || true
  exit 1
}
created_cluster=0
cleanup() {
  # Only a cluster this script created is deleted.
  if [ "$created_cluster" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

step "creating kind cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  created_cluster=1
  kind create cluster --config kind-config.yaml
fi

step "building and loading images"
docker build -f docker/worker.Dockerfile -t "postgres-writer:$tag" .
docker build -f docker/operator.Dockerfile -t "postgres-writer-operator:$tag" .
kind load docker-image --name "$cluster" "postgres-writer:$tag" "postgres-writer-operator:$tag"

step "Redis and PostgreSQL in namespace $ns"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: redis}
spec:
  selector: {matchLabels: {app: redis}}
  template:
    metadata: {labels: {app: redis}}
    spec:
      containers:
        - {name: redis, image: "redis:7", args: ["--appendonly", "yes"], ports: [{containerPort: 6379}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis}
spec: {selector: {app: redis}, ports: [{port: 6379}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres}
spec:
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: "postgres:16"
          env: [{name: POSTGRES_PASSWORD, value: e2e}, {name: POSTGRES_DB, value: intuition}]
          ports: [{containerPort: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec: {selector: {app: postgres}, ports: [{port: 5432}]}
YAML
kubectl -n "$ns" create secret generic indexer-db \
  --from-literal=url=postgres://postgres:e2e@postgres:5432/intuition --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" rollout status deploy/redis deploy/postgres --timeout=180s

step "installing the operator with Helm"
helm upgrade --install pgw-operator charts/postgres-writer-operator --namespace "$ns" \
  --set image.repository=postgres-writer-operator --set image.tag="$tag" --set image.pullPolicy=Never --wait
lease=pgw-operator-postgres-writer-operator
wait_for "an operator replica holding Lease $lease" \
  'test -n "$(kubectl -n "$ns" get lease "$lease" -o jsonpath="{.spec.holderIdentity}")"'
echo "leader: $(kubectl -n "$ns" get lease "$lease" -o jsonpath='{.spec.holderIdentity}')"

step "applying a PostgresWriter"
kubectl -n "$ns" apply -f - <<YAML
apiVersion: pgwriter.io/v1alpha1
kind: PostgresWriter
metadata: {name: indexer}
spec:
  image: postgres-writer:$tag
  imagePullPolicy: Never
  replicas: 1
  streams: [e2e_atom_created, e2e_triple_created, e2e_deposited, e2e_redeemed, e2e_share_price_changed, e2e_protocol_fee_accrued]
  redis: {url: "redis://redis:6379"}
  database: {urlSecretRef: {name: indexer-db}}
YAML
wait_for "migration and a ready worker" 'kubectl -n "$ns" wait pgw/indexer --for=condition=Ready --timeout=5s'

step "feeding sample events"
kubectl -n "$ns" run generate --rm -i --restart=Never --image="postgres-writer:$tag" --image-pull-policy=Never -- \
  generate --redis-url redis://redis:6379 --stream-prefix e2e --events 5000
rows() {
  kubectl -n "$ns" exec deploy/postgres -- psql -U postgres -d intuition -tAc "SELECT count(*) FROM deposited_events"
}
wait_for "deposited_events rows" 'test "$(rows)" -gt 0'
echo "deposited_events rows: $(rows)"

step "migration gating: an image whose migration cannot run leaves the workers alone"
worker_image() { kubectl -n "$ns" get deploy indexer-worker -o jsonpath='{.spec.template.spec.containers[0].image}'; }
kubectl -n "$ns" patch pgw/indexer --type merge -p '{"spec":{"image":"postgres-writer:e2e-not-loaded"}}'
wait_for "a migration Job for the new image" \
  'kubectl -n "$ns" get jobs -l app.kubernetes.io/instance=indexer -o jsonpath="{.items[*].spec.template.spec.containers[0].image}" | grep -q e2e-not-loaded'
wait_for "Progressing=MigrationRunning" \
  'test "$(kubectl -n "$ns" get pgw indexer -o jsonpath="{.status.conditions[?(@.type==\"Progressing\")].reason}")" = MigrationRunning'
test "$(worker_image)" = "postgres-writer:$tag" || { echo "workers moved to an unmigrated image: $(worker_image)" >&2; exit 1; }
kubectl -n "$ns" patch pgw/indexer --type merge -p "{\"spec\":{\"image\":\"postgres-writer:$tag\"}}"
wait_for "Ready again on $tag" 'kubectl -n "$ns" wait pgw/indexer --for=condition=Ready --timeout=5s'

step "scaling to 3 workers"
kubectl -n "$ns" scale pgw/indexer --replicas=3
wait_for "3 ready worker pods" 'test "$(kubectl -n "$ns" get deploy indexer-worker -o jsonpath="{.status.readyReplicas}")" = 3'
kubectl -n "$ns" get pgw indexer

step "drain: scaling back to 1 while events arrive loses nothing"
kubectl -n "$ns" run generate2 --restart=Never --image="postgres-writer:$tag" --image-pull-policy=Never -- \
  generate --redis-url redis://redis:6379 --stream-prefix e2e --events 5000 --seed 2
kubectl -n "$ns" scale pgw/indexer --replicas=1
wait_for "1 worker pod" 'test "$(kubectl -n "$ns" get pods -l app.kubernetes.io/instance=indexer,app.kubernetes.io/component=worker -o name | wc -l)" -eq 1'
pending() { # entries delivered but not acknowledged, over every stream
  local total=0 s n
  for s in e2e_atom_created e2e_triple_created e2e_deposited e2e_redeemed e2e_share_price_changed e2e_protocol_fee_accrued; do
    n=$(kubectl -n "$ns" exec deploy/redis -- redis-cli XPENDING "$s" postgres-writer | head -1)
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
wait_for "generator done" 'test "$(kubectl -n "$ns" get pod generate2 -o jsonpath="{.status.phase}")" = Succeeded'
wait_for "nothing pending after the drain" 'test "$(pending)" = 0'
if kubectl -n "$ns" get events --field-selector reason=FailedPreStopHook -o name | grep -q .; then
  echo "a preStop drain failed:" >&2
  kubectl -n "$ns" get events --field-selector reason=FailedPreStopHook >&2
  exit 1
fi
kubectl -n "$ns" delete pod generate2 --wait=false

step "deleting the PostgresWriter"
kubectl -n "$ns" delete pgw/indexer --wait
wait_for "owned objects garbage-collected" 'test -z "$(kubectl -n "$ns" get deploy,job,configmap,service,pdb -l app.kubernetes.io/instance=indexer -o name)"'
echo "kind end-to-end: OK"

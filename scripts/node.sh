#!/usr/bin/env bash
# One real Kubernetes node for the test control plane (tests/node): a pod
# bridge with no route off the machine, containerd with runc and the CNI
# bridge, kube-scheduler, the kubelet and kube-proxy. Needs root. Called by
# scripts/control-plane.sh (`start DIR --with-node`, `stop DIR`); by hand:
#
#   scripts/node.sh network DIR   # the pod bridge; prints its gateway address
#   scripts/node.sh start DIR     # DIR: a control plane started with --node-address
#   scripts/node.sh stop DIR      # processes, pods, mounts, bridge and rules removed
#   scripts/node.sh check         # says what this machine lacks for a node
#
# Pods get addresses in PGW_NODE_SUBNET (default 10.199.0.0/24) on the
# bridge pgw0, whose gateway (.1) is the only address they reach: their one
# route is the Service range (10.96.0.0/16) through it, kube-proxy turns
# the `kubernetes` Service into the apiserver on the gateway, and an
# nftables table drops anything the host would forward for them. Whatever
# the pods should talk to (PostgreSQL, Redis, an OTLP receiver) listens on
# the gateway address. One node per machine: the bridge and kube-proxy's
# nftables table have fixed names.
#
# The binaries are built with the normal Go build cache into tests/node/bin
# (a no-op when nothing changed): `node` (kubelet, kube-proxy,
# kube-scheduler of the control plane's Kubernetes release), `pause` (the
# sandbox image's one file) and runc (from its Go module with seccomp; Debian's
# runc 1.1.5 fails here). containerd and the CNI plugins are Debian's
# (apt-get install containerd containernetworking-plugins). State and logs:
# DIR/node/.
set -euo pipefail

cmd=${1:?usage: node.sh network|start|stop DIR, or node.sh check}
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/tests/node
bin=${PGW_NODE_BIN:-$src/bin}
readonly runc_version=v1.5.3
readonly bridge=pgw0 node_name=pgw-node service_range=10.96.0.0/16
readonly sandbox_image=localhost/pgw-pause:1
readonly owner_file=/run/pgw-node.owner
subnet=${PGW_NODE_SUBNET:-10.199.0.0/24}
gateway=${subnet%.*/*}.1
cni_bin=${PGW_CNI_BIN:-/usr/lib/cni}

log() { echo "node: $*" >&2; }
die() {
  log "$*"
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# What this machine lacks for a node, one line each (nothing: it has all).
missing() {
  [ "$(id -u)" = 0 ] || echo "root (network, mounts and containers need it)"
  command -v go >/dev/null 2>&1 || echo "go (builds tests/node)"
  command -v containerd >/dev/null 2>&1 || echo "containerd (apt-get install containerd)"
  command -v containerd-shim-runc-v2 >/dev/null 2>&1 || echo "containerd-shim-runc-v2 (apt-get install containerd)"
  command -v ctr >/dev/null 2>&1 || echo "ctr (apt-get install containerd)"
  command -v nft >/dev/null 2>&1 || echo "nft (apt-get install nftables)"
  local plugin
  for plugin in bridge host-local loopback portmap; do
    [ -x "$cni_bin/$plugin" ] || echo "$cni_bin/$plugin (apt-get install containernetworking-plugins)"
  done
  [ -e /usr/include/seccomp.h ] || [ -x "$bin/runc" ] || echo "libseccomp-dev (runc is built with seccomp)"
}

check() {
  local lacks line
  lacks=$(missing)
  [ -z "$lacks" ] && return 0
  echo "node: this machine lacks:" >&2
  while IFS= read -r line; do echo "  $line" >&2; done <<<"$lacks"
  return 1
}

# Kills the process in PIDFILE if it still runs EXE (the number may have been
# reused), after GRACE tenths of a second of SIGTERM.
stop_process() { # PIDFILE EXE GRACE
  local pid exe
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  if [ -n "$exe" ] && [ "${exe% (deleted)}" = "$(readlink -f "$2")" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 "$3"); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$1"
}

build() {
  local version minor
  version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$src/go.mod")
  minor=${version#v1.}
  minor=${minor%%.*}
  mkdir -p "$bin"
  (cd "$src" && go build -buildvcs=false -o "$bin/node" -ldflags "\
-X k8s.io/component-base/version.gitVersion=$version \
-X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean" . &&
    CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags=-s -o "$bin/pause" ./pause) >&2
  local have
  have=$("$bin/runc" --version 2>/dev/null || true)
  if [[ $have != "runc version ${runc_version#v}"* ]]; then
    log "building runc $runc_version (with seccomp)"
    GOBIN=$bin go install -tags seccomp "github.com/opencontainers/runc@$runc_version" >&2
  fi
}

# The pod bridge with the gateway address, and the rule that keeps pod
# traffic on this machine. Idempotent for the same DIR.
network() {
  local owner routes
  if ip link show "$bridge" >/dev/null 2>&1; then
    owner=$(cat "$owner_file" 2>/dev/null || true)
    if [ "$owner" = "$dir" ]; then
      echo "$gateway"
      return 0
    fi
    die "bridge $bridge exists (a test node of ${owner:-an unknown run}); one node per machine: stop it first (scripts/control-plane.sh stop ${owner:-DIR})"
  fi
  routes=$(ip -4 route show to match "$gateway" | grep -v '^default' || true)
  [ -z "$routes" ] || die "the pod subnet $subnet overlaps a route of this machine ($routes); set PGW_NODE_SUBNET"
  echo "$dir" >"$owner_file"
  mkdir -p "$dir/node"
  # What the machine had before the node, so that stop removes only what the
  # node added: the kubelet makes iptables chains of its own.
  nft list tables >"$dir/node/host-tables"
  local tool
  for tool in iptables ip6tables; do
    command -v "$tool-save" >/dev/null 2>&1 || continue
    "$tool-save" 2>/dev/null | awk -v tool="$tool" '/^\*/ { table = substr($0, 2) } /^:KUBE-/ { print tool, table, substr($1, 2) }'
  done >"$dir/node/host-chains"
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name k8s.io >"$dir/node/host-cgroups"
  ip link add "$bridge" type bridge
  ip addr add "$gateway/${subnet#*/}" dev "$bridge"
  # IPv4 only: no link-local IPv6 chatter between the pods and the host.
  sysctl -qw "net.ipv6.conf.$bridge.disable_ipv6=1" 2>/dev/null || true
  ip link set "$bridge" up
  # Pods have no default route (see the CNI config); this also drops what
  # the host would forward for them should forwarding be on.
  nft -f - <<EOF
table inet pgw-node {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "$bridge" oifname != "$bridge" drop
    oifname "$bridge" iifname != "$bridge" drop
  }
}
EOF
  echo "$gateway"
}

write_configs() { # PORTS…
  local n=$dir/node
  mkdir -p "$n/containerd" "$n/cni/net.d" "$n/cni/ipam" "$n/kubelet" "$n/pod-logs" "$n/volume-plugins"
  cat >"$n/containerd/config.toml" <<EOF
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
# Only what the CRI plugin needs; the others want host paths (/opt/containerd).
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$n/containerd/containerd.sock"

[ttrpc]
  address = "$n/containerd/containerd.sock.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$sandbox_image"
  # CAP_SYS_RESOURCE is not granted here: lowering oom_score_adj is refused.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$bin/runc"
        Root = "$n/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$n/cni/net.d"
    max_conf_num = 1
EOF
  # The bridge plugin finds the bridge made by `network`; pods get one
  # route, the Service range through the gateway.
  cat >"$n/cni/net.d/10-pgw.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pgw",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$subnet", "gateway": "$gateway"}]],
        "routes": [{"dst": "$service_range"}],
        "dataDir": "$n/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  local pki=$dir/pki
  cat >"$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $gateway
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
# Production settings: the kubelet serves with a certificate of the cluster
# CA and asks the apiserver who may use its API (webhook authn/authz).
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$n/containerd/containerd.sock
podLogsDir: $n/pod-logs
volumePluginDir: $n/volume-plugins
# This machine: cgroup v1, no swap accounting, no QoS cgroup hierarchy.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
# A test node never evicts and never collects the imported images.
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No cluster DNS: pods use addresses.
resolvConf: ""
serializeImagePulls: false
maxPods: 50
EOF
  cat >"$n/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $dir/kube-proxy.kubeconfig
hostnameOverride: $node_name
bindAddress: $gateway
mode: nftables
clusterCIDR: $subnet
nodePortAddresses: ["$gateway/32"]
healthzBindAddress: 127.0.0.1:$proxy_healthz_port
metricsBindAddress: 127.0.0.1:$proxy_metrics_port
# Leave the machine's conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# Runs `bin/node COMPONENT ARGS…` in the background, logging to DIR/node/COMPONENT.log.
launch() { # COMPONENT ARGS…
  local component=$1
  shift
  "$bin/node" "$component" "$@" </dev/null >"$dir/node/$component.log" 2>&1 &
  echo $! >"$dir/node/$component.pid"
}

wait_until() { # DESCRIPTION SECONDS COMMAND…
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq 1 "$((seconds * 5))"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log "$what: not after ${seconds}s"
  return 1
}

node_ready() {
  [ "$("$kubectl" --kubeconfig "$dir/kubeconfig" get node "$node_name" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

start() {
  local n=$dir/node sock kubelet_port kubelet_healthz_port proxy_healthz_port proxy_metrics_port kubectl
  check || exit 1
  [ -f "$dir/kubelet.kubeconfig" ] || die "$dir has no kubelet.kubeconfig: start the control plane with --node-address (scripts/control-plane.sh start DIR --with-node)"
  [ "$(cat "$owner_file" 2>/dev/null)" = "$dir" ] || die "the pod bridge is not this run's: scripts/node.sh network $dir first"
  kubectl=${KUBECTL:-$("$root/scripts/tools.sh")/kubectl}
  log "building $bin (node, pause, runc)"
  build
  kubelet_port=$(free_port) kubelet_healthz_port=$(free_port)
  proxy_healthz_port=$(free_port) proxy_metrics_port=$(free_port)
  write_configs
  sock=$n/containerd/containerd.sock
  containerd --config "$n/containerd/config.toml" </dev/null >"$n/containerd.log" 2>&1 &
  echo $! >"$n/containerd.pid"
  wait_until "containerd" 60 ctr --address "$sock" version || {
    tail -n 20 "$n/containerd.log" >&2
    exit 1
  }
  "$bin/node" sandbox-image --pause "$bin/pause" --name "$sandbox_image" --out "$n/pause.oci.tar"
  ctr --address "$sock" -n k8s.io images import "$n/pause.oci.tar" >/dev/null

  launch kube-scheduler --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" --leader-elect=false
  launch kubelet --config "$n/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --root-dir "$n/kubelet" --hostname-override "$node_name" --node-ip "$gateway"
  launch kube-proxy --config "$n/kube-proxy.yaml"
  if ! wait_until "node $node_name Ready" "${PGW_NODE_TIMEOUT:-120}" node_ready; then
    tail -n 20 "$n/kubelet.log" >&2
    exit 1
  fi
  log "node $node_name Ready at $gateway (kubelet :$kubelet_port; logs in $n)"
}

# The kubelet's own iptables chains (KUBE-FIREWALL, canaries, the hint for
# kube-proxy) unless the machine had them before, and the tables iptables-nft
# made for them, once empty.
remove_kubelet_chains() {
  local n=$dir/node tool spec table chain family name
  [ -f "$n/host-chains" ] || return 0
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null 2>&1 || continue
    for spec in filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY \
      mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT; do
      table=${spec%%:*} chain=${spec#*:}
      grep -qx "$tool $table $chain" "$n/host-chains" && continue
      "$tool" -t "$table" -S "$chain" >/dev/null 2>&1 || continue
      while "$tool" -t "$table" -D INPUT -j "$chain" 2>/dev/null; do :; done
      while "$tool" -t "$table" -D OUTPUT -j "$chain" 2>/dev/null; do :; done
      "$tool" -t "$table" -F "$chain" && "$tool" -t "$table" -X "$chain"
    done
  done
  nft list tables | while read -r _ family name; do
    grep -qx "table $family $name" "$n/host-tables" && continue
    # Rules show a handle; chains and the table itself are the other lines.
    nft -a list table "$family" "$name" | grep -vE '^[[:space:]]*(table|chain) ' | grep -q '# handle' && continue
    nft delete table "$family" "$name"
  done
}

# Everything start and the pods made, in reverse: no process, mount, veth,
# network namespace, bridge or rule outlives it.
stop() {
  local n=$dir/node sock mounts
  sock=$n/containerd/containerd.sock
  if [ -d "$n" ]; then
    stop_process "$n/kubelet.pid" "$bin/node" 100
    stop_process "$n/kube-scheduler.pid" "$bin/node" 50
    # The runtime stops the pods and calls CNI DEL (veths, addresses).
    if [ -S "$sock" ]; then
      "$bin/node" cri-cleanup --endpoint "unix://$sock" || log "cri-cleanup failed; removing what is left by hand"
    fi
    stop_process "$n/kube-proxy.pid" "$bin/node" 50
    stop_process "$n/containerd.pid" "$(command -v containerd)" 100
    # Shims of this containerd that outlived it.
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    mounts=$(awk -v prefix="$n/" 'index($2, prefix) == 1 { print $2 }' /proc/self/mounts | sort -r)
    for mount in $mounts; do
      umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || log "could not unmount $mount"
    done
  fi
  # kube-proxy's tables (nftables mode) and ours.
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  if [ "$(cat "$owner_file" 2>/dev/null)" = "$dir" ]; then
    nft delete table inet pgw-node 2>/dev/null || true
    remove_kubelet_chains
    # containerd's parent cgroups of the pods (empty once they are gone).
    local cgroup
    if [ -f "$dir/node/host-cgroups" ]; then
      for cgroup in /sys/fs/cgroup/*/k8s.io; do
        grep -qx "$cgroup" "$dir/node/host-cgroups" || rmdir "$cgroup" 2>/dev/null || true
      done
    fi
    # Veths of pods whose network namespace is already gone go with it.
    ip link delete "$bridge" 2>/dev/null || true
    rm -f "$owner_file"
  fi
  [ -d "$n" ] && find "$n" -mindepth 1 -maxdepth 1 ! -name '*.log' -exec rm -rf {} +
  return 0
}

case "$cmd" in
  check)
    check
    exit
    ;;
  network | start | stop) ;;
  *)
    echo "usage: node.sh network|start|stop DIR, or node.sh check" >&2
    exit 2
    ;;
esac
dir=${2:?usage: node.sh $cmd DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
"$cmd"

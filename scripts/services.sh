#!/usr/bin/env bash
# Throw-away PostgreSQL and Redis on loopback, for the demo and the tests.
#
#   scripts/services.sh start DIR   # prints `export DATABASE_URL=… REDIS_URL=…`
#   scripts/services.sh stop DIR
#
# Uses the machine's binaries; installs postgresql and redis-server with
# apt-get when they are missing and we are root (set PGW_NO_INSTALL=1 to
# forbid that). PostgreSQL runs as an unprivileged user when started by root.
#
# PGW_POD_NETWORK=GATEWAY/PREFIX (scripts/test.sh sets it to the test node's
# pod bridge, scripts/node.sh): both also listen on GATEWAY, the only address
# the pods reach, and PostgreSQL admits clients from that network by
# password (scram-sha-256), never by trust. PGW_PG_OPTIONS adds server
# options (`-c name=value …`; scripts/bench-scale.sh loads pg_stat_statements).
set -euo pipefail

cmd=${1:?usage: services.sh start|stop DIR}
dir=${2:?usage: services.sh start|stop DIR}

# A free loopback port (the kernel picks it), unless the caller fixed one.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

log() { echo "services: $*" >&2; }

pg_bin() {
  local candidate
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  for candidate in /usr/lib/postgresql/*/bin; do
    if [ -x "$candidate/pg_ctl" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

install_missing() {
  local need=()
  pg_bin >/dev/null || need+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "${PGW_NO_INSTALL:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then
    log "missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root"
    exit 1
  fi
  log "installing ${need[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need[@]}" >&2
  # The Debian packages start their own services; we use private instances.
  service redis-server stop >/dev/null 2>&1 || true
}

as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown -R postgres "$dir/pg"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  install_missing
  local bin pg_port redis_port
  pg_port=${PGW_PG_PORT:-$(free_port)}
  redis_port=${PGW_REDIS_PORT:-$(free_port)}
  local listen=127.0.0.1 pod_gateway="" pod_subnet=""
  if [ -n "${PGW_POD_NETWORK:-}" ]; then
    pod_gateway=${PGW_POD_NETWORK%/*}
    pod_subnet=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$PGW_POD_NETWORK")
    listen="127.0.0.1,$pod_gateway"
  fi
  mkdir -p "$dir"
  echo "$redis_port" >"$dir/redis.port"
  bin=$(pg_bin)
  mkdir -p "$dir/pg"
  chmod 755 "$dir"
  if [ ! -f "$dir/pg/data/PG_VERSION" ]; then
    as_pg_user "$bin/initdb" -D "$dir/pg/data" -U postgres --auth=trust --no-sync >/dev/null
  fi
  if [ -n "$pod_subnet" ] && ! grep -q "^host all all $pod_subnet " "$dir/pg/data/pg_hba.conf"; then
    echo "host all all $pod_subnet scram-sha-256" >>"$dir/pg/data/pg_hba.conf"
  fi
  # Tests and the demo run without durability for speed (never do this in
  # production); PGW_DURABLE=1 (the benchmark) keeps PostgreSQL's defaults.
  local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [ "${PGW_DURABLE:-0}" = 1 ] && durability=""
  as_pg_user "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w -t 60 start \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=$listen $durability -c max_connections=400 -c shared_buffers=256MB ${PGW_PG_OPTIONS:-}" >/dev/null
  # Protected mode refuses every client but loopback ones while Redis has no
  # password; the pod gateway is reachable from this machine and its pods only.
  local protected=yes
  [ -n "$pod_gateway" ] && protected=no
  # shellcheck disable=SC2086 # the addresses are separate words
  redis-server --port "$redis_port" --bind ${listen//,/ } --protected-mode "$protected" --daemonize yes --dir "$dir" \
    --save "" --appendonly no --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 1 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  log "PostgreSQL on $listen port $pg_port, Redis on $listen port $redis_port (data in $dir)"
  echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/postgres"
  echo "export REDIS_URL=redis://127.0.0.1:$redis_port"
  echo "export PGW_PG_BIN=$bin"
}

stop() {
  local bin redis_port
  if bin=$(pg_bin) && [ -f "$dir/pg/data/postmaster.pid" ]; then
    as_pg_user "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/redis.port" ]; then
    redis_port=$(cat "$dir/redis.port")
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: services.sh start|stop DIR" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The main job on a local default: a throw-away PostgreSQL and Redis, sample
# rindexer events, the worker until the streams and the analytics queue are
# drained, then a summary of the tables and `verify`.
#
#   scripts/demo.sh            # 20,000 events
#   EVENTS=200000 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

events=${EVENTS:-20000}
http_port=${HTTP_PORT:-18080}
dir=$(mktemp -d /tmp/pgw-demo.XXXXXX)
worker_pid=
cleanup() {
  if [ -n "$worker_pid" ]; then kill "$worker_pid" 2>/dev/null || true; fi
  scripts/services.sh stop "$dir"
}
trap cleanup EXIT

services_env=$(scripts/services.sh start "$dir")
eval "$services_env"
echo "== building postgres-writer"
cargo build --quiet --release --bin postgres-writer
bin=target/release/postgres-writer

echo "== migrating $DATABASE_URL"
"$bin" migrate
echo "== generating $events sample events"
"$bin" generate --events "$events" --stream-prefix demo
export REDIS_STREAMS=demo_atom_created,demo_triple_created,demo_deposited,demo_redeemed,demo_share_price_changed,demo_protocol_fee_accrued
export HTTP_PORT=$http_port CONSUMER_NAME=demo-worker RUST_LOG=${RUST_LOG:-warn}

echo "== running the worker (HTTP on 127.0.0.1:$http_port)"
start=$(date +%s.%N)
"$bin" run &
worker_pid=$!

# Idle = every stream delivered and acknowledged, analytics queue empty.
idle() {
  python3 - "$http_port" <<'PY'
import json, sys, urllib.request
try:
    h = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2))
except Exception:
    sys.exit(1)
streams = h["streams"]
busy = not streams or any(s["lag"] != 0 or s["pending"] != 0 for s in streams)
busy = busy or h["analytics"]["queue_depth"] != 0 or h["last_commit_unix_ms"] is None
print(f"  lag={sum(s['lag'] or 0 for s in streams)} pending={sum(s['pending'] for s in streams)} analytics_queue={h['analytics']['queue_depth']}", file=sys.stderr)
sys.exit(1 if busy else 0)
PY
}
sleep 1
until idle; do sleep 1; done
end=$(date +%s.%N)
echo "== drained in $(python3 -c "print(f'{$end - $start:.1f}')") s; stopping the worker (SIGTERM)"
kill -TERM "$worker_pid"
wait "$worker_pid"
worker_pid=
echo "== summary"
"$bin" summary
echo "== verify (every derived table against its from-scratch definition)"
"$bin" verify

#!/usr/bin/env bash
# How fresh the base tables are (issue 15, ADR 0015), and CPU per event:
# WORKERS `run` processes consume one generated history on a fresh, durable
# PostgreSQL (scripts/services.sh); prints the time until every event is
# committed, the time until every delta is folded into `vault`/`term`, the
# fold delay (delta insert at batch commit -> fold commit) p50/p99 from
# pgw_fold_delay_seconds, CPU seconds per 1,000 events of the workers and of
# PostgreSQL (from /proc), and `verify`.
#
#   scripts/fold-freshness.sh                       # 200,000 events, 1 worker
#   EVENTS=50000 WORKERS=2 scripts/fold-freshness.sh
#   BIN=/path/to/postgres-writer scripts/fold-freshness.sh   # another build
#   FOLD_MAX_PARTITIONS=32 scripts/fold-freshness.sh          # worker settings pass through
set -euo pipefail
cd "$(dirname "$0")/.."
events=${EVENTS:-200000}
workers=${WORKERS:-1}
target=${CARGO_TARGET_DIR:-target}
bin=${BIN:-$target/release/postgres-writer}
[ -n "${BIN:-}" ] || cargo build --release -p worker --bin postgres-writer >&2

dir=$(mktemp -d /tmp/pgw-fresh.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/services.sh stop "$dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT
eval "$(PGW_DURABLE=1 scripts/services.sh start "$dir")"
export DATABASE_URL REDIS_URL
q() { psql "$DATABASE_URL" -XAtq -c "$1"; }

"$bin" migrate >/dev/null
# Experiments: SQL run after the migrations (e.g. a table setting).
[ -z "${SETUP_SQL:-}" ] || q "$SETUP_SQL"
prefix=fresh$$
"$bin" generate --events "$events" --accounts 500 --stream-prefix "$prefix" >/dev/null
streams=$(printf "${prefix}_%s," atom_created triple_created deposited redeemed share_price_changed protocol_fee_accrued)
streams=${streams%,}
has_fold=$(q "SELECT to_regclass('fold_delta') IS NOT NULL")

# pg_ticks, pg_settle, proc_ticks: CPU clock ticks from /proc.
# shellcheck source=scripts/lib/cpu.sh
. scripts/lib/cpu.sh
hz=$(getconf CLK_TCK)
pg_settle "$dir/pg/data"
pg_before=$(pg_ticks "$dir/pg/data")

ports=()
start=$(date +%s.%N)
for i in $(seq 1 "$workers"); do
  port=$((20000 + RANDOM % 20000))
  ports+=("$port")
  REDIS_STREAMS=$streams CONSUMER_GROUP=fresh CONSUMER_NAME=w$i HTTP_PORT=$port HTTP_BIND_ADDRESS=127.0.0.1 \
    RUST_LOG=warn "$bin" run >"$dir/worker$i.log" 2>&1 &
  pids+=("$!")
done

count_sql="SELECT (SELECT count(*) FROM atom_created_events) + (SELECT count(*) FROM triple_created_events)
  + (SELECT count(*) FROM deposited_events) + (SELECT count(*) FROM redeemed_events)
  + (SELECT count(*) FROM share_price_changed_events) + (SELECT count(*) FROM generic_events)"
while [ "$(q "$count_sql")" -lt "$events" ]; do sleep 0.05; done
committed=$(date +%s.%N)
if [ "$has_fold" = t ]; then
  while [ "$(q "SELECT count(*) FROM fold_delta")" -gt 0 ]; do sleep 0.02; done
fi
folded=$(date +%s.%N)
while [ "$(q "SELECT count(*) FROM analytics_queue WHERE parked_at IS NULL")" -gt 0 ]; do sleep 0.05; done
drained=$(date +%s.%N)

worker_ticks=$(proc_ticks "${pids[@]}")
pg_after=$(pg_ticks "$dir/pg/data")
metrics=""
for port in "${ports[@]}"; do metrics+=$(curl -s "http://127.0.0.1:$port/metrics")$'\n'; done

python3 - "$events" "$workers" "$start" "$committed" "$folded" "$worker_ticks" "$((pg_after - pg_before))" "$hz" "$drained" <<PY
import sys
events, workers = int(sys.argv[1]), int(sys.argv[2])
start, committed, folded = map(float, sys.argv[3:6])
wt, pt, hz = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
drained = float(sys.argv[9])
buckets = {}
for line in """$metrics""".splitlines():
    if line.startswith("pgw_fold_delay_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets[float("inf") if le == "+Inf" else float(le)] = buckets.get(float("inf") if le == "+Inf" else float(le), 0) + float(line.split()[-1])
def pct(q):
    if not buckets: return float("nan")
    total = max(buckets.values())
    for le in sorted(buckets):
        if buckets[le] >= q * total: return le
print(f"workers {workers}, events {events}")
print(f"all events committed after     {committed - start:8.2f} s  ({events / (committed - start):,.0f} events/s)")
print(f"all deltas folded after        {folded - start:8.2f} s  ({events / (folded - start):,.0f} events/s, {1000 * (folded - committed):.0f} ms after the last commit)")
print(f"analytics queue drained after {drained - start:8.2f} s")
print(f"fold delay (batch commit -> visible in vault/term): p50 <= {1000 * pct(0.5):.0f} ms, p99 <= {1000 * pct(0.99):.0f} ms")
print(f"CPU s per 1,000 events: workers {wt / hz / events * 1000:.3f}, PostgreSQL {pt / hz / events * 1000:.3f}")
PY
for p in "${pids[@]}"; do kill -TERM "$p"; done
wait "${pids[@]}" || true
pids=()
"$bin" verify > "$dir/verify.txt" || cat "$dir/verify.txt"
tail -1 "$dir/verify.txt"

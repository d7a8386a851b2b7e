#!/usr/bin/env bash
# verify on a live database (ADR 0019): starts WORKERS `run` workers on a
# generated history in a fresh database and runs `verify` ROUNDS times while
# they write, with this build and (when OLD_BIN is set) another build, e.g.
# the previous release (scripts/previous-release.sh). Prints each run's exit
# code, tables reported as drift, the pending work counted and the time.
#
#   DATABASE_URL=postgres://…/postgres REDIS_URL=redis://… \
#     [OLD_BIN=path] [EVENTS=100000] [WORKERS=2] [ROUNDS=3] scripts/verify-under-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?an admin URL of the server (a fresh database is created on it)}"
: "${REDIS_URL:?}"
events=${EVENTS:-100000} workers=${WORKERS:-2} rounds=${ROUNDS:-3}
cargo build --quiet --bin postgres-writer
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
NEW=$target_dir/debug/postgres-writer
db=verify_load_$$_$RANDOM
psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
url=${DATABASE_URL%/*}/$db
DATABASE_URL=$url "$NEW" migrate >/dev/null
prefix=vl$$
REDIS_URL=$REDIS_URL "$NEW" generate --stream-prefix "$prefix" --events "$events" --events-per-entry 5 --seed 3 >/dev/null
streams=$(for s in atom_created triple_created deposited redeemed share_price_changed protocol_fee_accrued; do printf "%s_%s," "$prefix" "$s"; done)
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' EXIT
for i in $(seq 1 "$workers"); do
  DATABASE_URL=$url REDIS_URL=$REDIS_URL REDIS_STREAMS=${streams%,} CONSUMER_NAME=pod-$i \
    HTTP_PORT=$((20000 + RANDOM % 20000)) HTTP_BIND_ADDRESS=127.0.0.1 RUST_LOG=error "$NEW" run >/dev/null 2>&1 &
  pids+=($!)
done
sleep 3
builds=(NEW)
[ -n "${OLD_BIN:-}" ] && builds=(OLD NEW)
for round in $(seq 1 "$rounds"); do
  for which in "${builds[@]}"; do
    bin=$NEW
    [ "$which" = OLD ] && bin=$OLD_BIN
    start=$(date +%s%N)
    rc=0
    out=$(DATABASE_URL=$url "$bin" verify --show 1 2>&1) || rc=$?
    end=$(date +%s%N)
    drift=$(grep -c "DRIFT$" <<<"$out" || true)
    summary=$(grep -E '^(verify:|pending:)' <<<"$out" | tr '\n' ' ')
    echo "$which verify #$round: exit $rc, tables reported as drift: $drift, $summary($(((end - start) / 1000000)) ms)"
  done
done
kill -TERM "${pids[@]}"
wait "${pids[@]}" || true
pids=()
echo "after the load: $(DATABASE_URL=$url "$NEW" verify | tail -1)"

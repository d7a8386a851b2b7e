#!/usr/bin/env bash
# Benchmark: throughput, latency, analytics drain and memory of the worker on
# this machine (PostgreSQL and Redis local, started by scripts/services.sh).
#
#   scripts/bench.sh                       # 200,000 events, 1 and 2 workers (3 runs each, median), 100,000-term analytics drain
#   BENCH_EVENTS=50000 BENCH_WORKERS=1 BENCH_REPEAT=1 BENCH_ANALYTICS_TERMS=0 scripts/bench.sh
#
# Scale-out table (issue 15): 1, 2, 4 and 8 worker processes from one
# generated history, events/s, CPU s per 1,000 events of the workers and of
# PostgreSQL, wait events of the active backends, verify. Settings
# (SCALE_EVENTS, SCALE_ACCOUNTS, SCALE_WORKERS, SCALE_SETTINGS, SCALE_RUNS,
# SCALE_REPEAT, SCALE_VERIFY, SCALE_METRIC, ...) are in scripts/bench-scale.sh.
#
#   scripts/bench.sh scale                 # 200,000 events, 2,000 accounts, 1 2 4 8 workers
#   SCALE_RUNS="w1:1:BATCH_SIZE=1000 w8:8:BATCH_SIZE=1000" SCALE_VERIFY=all scripts/bench.sh scale
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = scale ]; then
  exec scripts/bench-scale.sh
fi

dir=$(mktemp -d /tmp/pgw-bench.XXXXXX)
trap 'scripts/services.sh stop "$dir"' EXIT
services_env=$(PGW_DURABLE=1 scripts/services.sh start "$dir")
eval "$services_env"
export PGW_BENCH_DATABASE_URL=$DATABASE_URL PGW_BENCH_REDIS_URL=$REDIS_URL
cargo bench -p worker --bench pipeline

#!/usr/bin/env bash
# Benchmark: throughput, latency, analytics drain and memory of the worker on
# this machine (PostgreSQL and Redis local, started by scripts/services.sh).
#
#   scripts/bench.sh                       # 200,000 events, 1 and 2 workers (3 runs each, median), 100,000-term analytics drain
#   BENCH_EVENTS=50000 BENCH_WORKERS=1 BENCH_REPEAT=1 BENCH_ANALYTICS_TERMS=0 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$(mktemp -d /tmp/pgw-bench.XXXXXX)
trap 'scripts/services.sh stop "$dir"' EXIT
services_env=$(PGW_DURABLE=1 scripts/services.sh start "$dir")
eval "$services_env"
export PGW_BENCH_DATABASE_URL=$DATABASE_URL PGW_BENCH_REDIS_URL=$REDIS_URL
cargo bench -p worker --bench pipeline

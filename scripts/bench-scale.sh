#!/usr/bin/env bash
# Scale-out table (issue 15): 1, 2, 4 and 8 worker processes from ONE generated
# history, on this machine, with a local durable PostgreSQL (fsync and
# synchronous_commit on) and Redis started by scripts/services.sh.
# Run it as `scripts/bench.sh scale`.
#
# Each run gets a fresh database (migrate) and a fresh consumer group on the
# same streams, and is timed from the workers' start until lag and pending are
# both 0 on every stream ("seconds", "events/s"). The workers then keep running
# until the work that follows the commit is done too ("settled after": the
# analytics queue, parked terms aside, and fold deltas where the schema has
# them, are empty), so the CPU figures and `verify` cover all the work the
# events cause ("events/s to settled": events / (seconds + settled after);
# the drain is polled every 0.2 s, the settle every 0.1 s). It reports events/s, CPU seconds per
# 1,000 events of
# the worker processes and of PostgreSQL (all its processes), a sample of the
# wait events of the run database's active backends (pg_stat_activity every
# 0.2 s, counted per wait event: `running` = active and not waiting;
# `Lock:transactionid` = waiting for another transaction's row locks) and
# `verify`. The same columns as ../shared/scale-bench/run.sh (the many-core
# version) plus the CPU columns. On a shared machine the CPU columns are the
# steadier figures; wall time moves with the neighbours' load.
#
# Settings (environment):
#   SCALE_EVENTS    events in the generated history (default 200000)
#   SCALE_ACCOUNTS  distinct accounts (default 2000)
#   SCALE_SEED      generator seed (default 42)
#   SCALE_WORKERS   worker counts, space-separated (default "1 2 4 8")
#   SCALE_SETTINGS  settings of every run of SCALE_WORKERS, comma-separated
#                   VAR=value (worker environment) or pg.name=value (a
#                   PostgreSQL setting for that run, set by ALTER SYSTEM and
#                   reset afterwards); default none
#   SCALE_RUNS      explicit runs instead: space-separated label:workers:settings
#                   as in run.sh, e.g. "w1:1: w8:8:BATCH_SIZE=1000 s8:8:pg.synchronous_commit=off"
#   SCALE_REPEAT    times the whole list runs on the same history (default 1)
#   SCALE_VERIFY    last|all|none: runs followed by `verify` (default last)
#   SCALE_METRICS   optional worker metrics, space-separated, scraped from
#                   /metrics (HTTP_PORT of each worker) about once a second;
#                   each gets a column only when some worker exposed it
#                   (default "pgw_fold_lag_seconds pgw_fold_delay_seconds").
#                   A gauge shows its maximum over the run, a histogram its
#                   mean and p99 bucket over all workers once settled.
#   SCALE_SETTLE_SQL  query giving the work still to do after the drain
#                   (default: unparked analytics_queue rows + fold_delta rows)
#   SCALE_STATEMENTS  top statements printed per run (default 8; 0 = do not
#                   load pg_stat_statements): by total execution time and by
#                   WAL bytes, counted from the workers' start until settled,
#                   to the log and $SCALE_OUT/statements_<run>.md
#   SCALE_WARMUP    1 (default): a first run with 1 worker that is not in the
#                   table: the first run after start-up also creates
#                   PostgreSQL's WAL segment files (later runs recycle them),
#                   which would charge it more CPU than the others; 0 = none
#   SCALE_TIMEOUT   seconds a run may take to drain, and then to settle (default 600)
#   SCALE_OUT       folder of the table (scale.md) and the logs (default: a new /tmp/pgw-scale.*)
#   POSTGRES_WRITER_BIN  binary to use; default: cargo build --release --bin postgres-writer
#
# Progress goes to stderr; the markdown table goes to stdout and $SCALE_OUT/scale.md.
#
# CPU is read at the workers' start, when drained and once settled; the table
# gives the whole and, in brackets, the part spent settling. PostgreSQL CPU = utime+stime+cutime+cstime of the postmaster plus
# utime+stime+cutime+cstime of its live children, read before and after the
# run: a backend that exits is added to the postmaster's cutime/cstime when the
# postmaster reaps it (a zombie still shows its own times), so connections that
# come and go are counted once. The "before" snapshot waits until every client
# backend has exited and been reaped (an exiting backend shows 0 ticks and is
# not yet in cutime); the "after" one is taken while the workers still run.
# The sampler's own backend is counted (about 1 ms per sample). Worker CPU = utime+stime of each worker
# process (all threads) read just before it is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${SCALE_EVENTS:-200000}
ACCOUNTS=${SCALE_ACCOUNTS:-2000}
SEED=${SCALE_SEED:-42}
WORKERS=${SCALE_WORKERS:-"1 2 4 8"}
SETTINGS=${SCALE_SETTINGS:-}
REPEAT=${SCALE_REPEAT:-1}
VERIFY=${SCALE_VERIFY:-last}
METRICS=${SCALE_METRICS:-"pgw_fold_lag_seconds pgw_fold_delay_seconds"}
SETTLE_SQL=${SCALE_SETTLE_SQL:-"SELECT (SELECT count(*) FROM analytics_queue WHERE parked_at IS NULL) + CASE WHEN to_regclass('fold_delta') IS NULL THEN 0 ELSE (xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM fold_delta', false, true, '')))[1]::text::int8 END"}
TIMEOUT=${SCALE_TIMEOUT:-600}
STATEMENTS=${SCALE_STATEMENTS:-8}
WARMUP=${SCALE_WARMUP:-1}
OUT=${SCALE_OUT:-$(mktemp -d /tmp/pgw-scale.XXXXXX)}
mkdir -p "$OUT"
case $VERIFY in last | all | none) ;; *) echo "SCALE_VERIFY must be last, all or none" >&2; exit 2 ;; esac

if [ -n "${SCALE_RUNS:-}" ]; then
  RUNS=$SCALE_RUNS
else
  RUNS=""
  for n in $WORKERS; do RUNS+="w$n:$n:$SETTINGS "; done
fi
all_runs=()
[ "$WARMUP" = 0 ] || all_runs+=("warmup:1:")
for r in $(seq 1 "$REPEAT"); do
  for spec in $RUNS; do
    if [ "$REPEAT" -gt 1 ]; then all_runs+=("${spec%%:*}r$r:${spec#*:}"); else all_runs+=("$spec"); fi
  done
done

log() { echo "scale: $*" >&2; }
now() { date +%s.%N; }
# elapsed START END → seconds with 2 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

BIN=${POSTGRES_WRITER_BIN:-}
if [ -z "$BIN" ]; then
  log "building the release binary"
  cargo build --release --bin postgres-writer >&2
  BIN=${CARGO_TARGET_DIR:-target}/release/postgres-writer
fi
BIN=$(readlink -f "$BIN")

svc=$(mktemp -d /tmp/pgw-scale-svc.XXXXXX)
cleanup() {
  local p
  for p in $(jobs -p); do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/services.sh stop "$svc"
  rm -rf "$svc"
}
trap cleanup EXIT
pg_options=""
# pg_stat_statements costs PostgreSQL a little CPU; it is loaded only here.
[ "$STATEMENTS" = 0 ] || pg_options="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on -c pg_stat_statements.max=2000"
eval "$(PGW_DURABLE=1 PGW_PG_OPTIONS=$pg_options scripts/services.sh start "$svc")"
admin_url=$DATABASE_URL
base_url=${admin_url%/*}
redis_port=${REDIS_URL##*:}
pgdata=$svc/pg/data
psql_admin() { PGOPTIONS="-c client_min_messages=warning" psql "$admin_url" -Atq "$@"; }
tck=$(getconf CLK_TCK)

# pg_ticks, pg_settle, proc_ticks: CPU clock ticks from /proc.
# shellcheck source=scripts/lib/cpu.sh
. scripts/lib/cpu.sh

# Entries still to do (lag + pending) of group $1 on every stream, or -1 while
# the group is missing on a stream or Redis cannot tell the lag.
left_entries() {
  local s
  for s in ${streams//,/ }; do echo "XINFO GROUPS $s"; done |
    redis-cli -p "$redis_port" 2>/dev/null |
    awk -v g="$1" -v want="$nstreams" '
      /^name$/ {getline; cur = $0; if (cur == g) seen++; next}
      /^(pending|lag)$/ {k = $0; getline; if (cur == g) {if ($0 == "") unknown = 1; t += $0}}
      END {print (seen < want || unknown) ? -1 : t + 0}'
}

# One scrape of $METRICS from every worker port, appended to $1 as "port name value".
scrape_metrics() {
  local file=$1 port re
  shift
  re="^(${METRICS// /|})(_bucket|_sum|_count)?[{ ]"
  for port in "$@"; do
    curl -s -m 1 "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -E "$re" | sed "s/^/$port /" >>"$file" || true
  done
}

# Summary of metric $1 from the scrapes in $2 (the last scrape of each worker
# in $3): a histogram gives its mean and p99 bucket over all workers, a gauge
# its maximum over the run; nothing when no worker exposed it.
metric_summary() {
  local m=$1 file=$2 final=$3
  if grep -q "^[0-9]* ${m}_count" "$final" 2>/dev/null; then
    awk -v m="$m" '
      $2 ~ "^" m "_sum" {s += $NF}
      $2 ~ "^" m "_count" {n += $NF}
      $2 ~ "^" m "_bucket" {match($2, /le="[^"]*"/); le = substr($2, RSTART + 4, RLENGTH - 5); b[le] += $NF}
      END {
        if (n == 0) {print "no samples"; exit}
        best = "+Inf"
        for (le in b) if (le != "+Inf" && b[le] >= 0.99 * n && (best == "+Inf" || le + 0 < best + 0)) best = le
        printf "mean %.3f, p99 <= %s (%d)", s / n, (best == "+Inf" ? best : sprintf("%.3g", best)), n
      }' "$final"
  else
    awk -v m="$m" '$2 == m || index($2, m "{") == 1 {v = $NF + 0; if (!seen || v > max) max = v; seen = 1}
      END {if (seen) printf "max %.3f", max}' "$file"
  fi
}

# Work still to do after the drain (see SCALE_SETTLE_SQL); -1 when unknown.
settle_left() {
  psql "$1" -Atq -c "$SETTLE_SQL" 2>/dev/null || echo -1
}

[ "$STATEMENTS" = 0 ] || psql_admin -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

# Top $STATEMENTS statements of database $1 since the last reset, ordered by
# $2 (total_exec_time or wal_bytes), as a markdown table; $3 = events stored.
top_statements() {
  psql_admin -F '|' -c "
    SELECT '', calls, round(total_exec_time::numeric / 1000, 3), round(total_plan_time::numeric / 1000, 3), round((100 * total_exec_time / nullif(sum(total_exec_time) OVER (), 0))::numeric, 1),
           round(1000 * total_exec_time::numeric / $3, 1), round(wal_bytes::numeric / $3, 1), rows,
           '\`' || left(regexp_replace(regexp_replace(query, '^(\s*--[^\n]*\n)*', ''), '\s+', ' ', 'g'), 100) || '\`', ''
    FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
    WHERE d.datname = '$1' AND toplevel
    ORDER BY $2 DESC LIMIT $STATEMENTS"
}

log "PostgreSQL $(psql_admin -c 'show server_version'), fsync $(psql_admin -c 'show fsync'), synchronous_commit $(psql_admin -c 'show synchronous_commit'); $(nproc) cores"
log "generating $EVENTS events, $ACCOUNTS accounts (seed $SEED)"
t=$(now)
g=$(REDIS_URL=$REDIS_URL "$BIN" generate --stream-prefix scale --events "$EVENTS" --accounts "$ACCOUNTS" --seed "$SEED" | tail -1)
streams=${g##*streams: }
nstreams=$(echo "${streams//,/ }" | wc -w)
log "generated in $(elapsed "$t" "$(now)") s: $g"

rows=()
cells=()
declare -A metric_seen=()
last_run=${all_runs[${#all_runs[@]}-1]}
i_run=0
for spec in "${all_runs[@]}"; do
  i_run=$((i_run + 1))
  label=${spec%%:*}
  rest=${spec#*:}
  n=${rest%%:*}
  settings=${rest#*:}
  db=scale_${label//[^a-zA-Z0-9_]/_}
  group=g_$label
  log "run $i_run/${#all_runs[@]} ($label): $n worker process(es), settings: ${settings:-defaults}"
  psql_admin -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  url=$base_url/$db
  DATABASE_URL=$url "$BIN" migrate >"$OUT/migrate_$label.log" 2>&1 ||
    { log "migrate failed"; tail -3 "$OUT/migrate_$label.log" >&2; exit 1; }
  envs=()
  for kv in ${settings//,/ }; do
    case $kv in
      pg.*=*) k=${kv#pg.}; psql_admin -c "ALTER SYSTEM SET ${k%%=*} = '${k#*=}'" -c "SELECT pg_reload_conf()" >/dev/null ;;
      *=*) envs+=("$kv") ;;
      *) log "ignoring setting '$kv' (want VAR=value or pg.name=value)" ;;
    esac
  done
  psql_admin -c "CHECKPOINT"


  pg_settle "$pgdata"
  [ "$STATEMENTS" = 0 ] || psql_admin -c "SELECT pg_stat_statements_reset()" >/dev/null
  wal0=$(psql_admin -c "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
  pg0=$(pg_ticks "$pgdata")
  # Wait-event sampler: one psql session, one query every 0.2 s.
  flag=$OUT/.sampling_$label
  : >"$flag"
  (while [ -e "$flag" ]; do
    echo "SELECT extract(epoch FROM clock_timestamp()) || ' ' || coalesce(wait_event_type || ':' || wait_event, 'running') FROM pg_stat_activity WHERE datname = '$db' AND state = 'active';"
    sleep 0.2
  done | psql_admin >"$OUT/waits_$label") &
  sampler=$!
  pids=()
  ports=()
  t0=$(now)
  for i in $(seq 1 "$n"); do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    ports+=("$port")
    env "${envs[@]}" DATABASE_URL="$url" REDIS_URL="$REDIS_URL" REDIS_STREAMS="$streams" CONSUMER_GROUP="$group" \
      CONSUMER_NAME="w$i" HTTP_PORT="$port" HTTP_BIND_ADDRESS=127.0.0.1 RUST_LOG=warn \
      "$BIN" run >"$OUT/worker_${label}_$i.log" 2>&1 &
    pids+=($!)
  done
  mfile=$OUT/metric_$label
  : >"$mfile"
  drained=1
  last_scrape=0
  last_report=0
  while :; do
    left=$(left_entries "$group")
    t=$(now)
    if [ "$left" -eq 0 ]; then break; fi
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    if [ "$alive" = 0 ]; then
      log "run $label: every worker exited ($left entries left); see $OUT/worker_${label}_*.log"
      drained=0
      break
    fi
    if awk -v a="$t0" -v b="$t" -v l="$TIMEOUT" 'BEGIN{exit !(b-a>l)}'; then
      log "run $label did not drain in $TIMEOUT s ($left entries left)"
      drained=0
      break
    fi
    if awk -v a="$last_scrape" -v b="$t" 'BEGIN{exit !(b-a>=1)}'; then
      scrape_metrics "$mfile" "${ports[@]}"
      last_scrape=$t
    fi
    if awk -v a="$last_report" -v b="$t" 'BEGIN{exit !(b-a>=5)}'; then
      [ "$last_report" = 0 ] || log "  $label: $(elapsed "$t0" "$t") s, $left entries left (lag + pending)"
      last_report=$t
    fi
    sleep 0.2
  done
  t1=$(now)
  wk1=$(proc_ticks "${pids[@]}")
  pg1=$(pg_ticks "$pgdata")
  settled=-
  if [ "$drained" = 1 ]; then
    log "  $label: drained in $(elapsed "$t0" "$t1") s; waiting until settled"
    while :; do
      rest_work=$(settle_left "$url")
      t=$(now)
      if [ "$rest_work" = 0 ]; then settled=$(elapsed "$t1" "$t"); break; fi
      if awk -v a="$t1" -v b="$t" -v l="$TIMEOUT" 'BEGIN{exit !(b-a>l)}'; then
        log "run $label did not settle in $TIMEOUT s ($rest_work left)"
        settled="no ($rest_work left)"
        break
      fi
      if awk -v a="$last_scrape" -v b="$t" 'BEGIN{exit !(b-a>=1)}'; then
        scrape_metrics "$mfile" "${ports[@]}"
        last_scrape=$t
      fi
      sleep 0.1
    done
  fi
  wk2=$(proc_ticks "${pids[@]}")
  pg2=$(pg_ticks "$pgdata")
  wal2=$(psql_admin -c "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
  final=$OUT/metric_final_$label
  : >"$final"
  scrape_metrics "$final" "${ports[@]}"
  cat "$final" >>"$mfile"
  rm -f "$flag"
  wait "$sampler" || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for kv in ${settings//,/ }; do
    case $kv in pg.*=*) k=${kv#pg.}; psql_admin -c "ALTER SYSTEM RESET ${k%%=*}" -c "SELECT pg_reload_conf()" >/dev/null ;; esac
  done

  stored=$(psql "$url" -Atq -c "SELECT (SELECT count(*) FROM deposited_events) + (SELECT count(*) FROM redeemed_events) + (SELECT count(*) FROM share_price_changed_events) + (SELECT count(*) FROM atom_created_events) + (SELECT count(*) FROM triple_created_events) + (SELECT count(*) FROM generic_events)")
  # Taken before verify, whose statements are not the workers'.
  if [ "$STATEMENTS" != 0 ] && [ "${stored:-0}" -gt 0 ]; then
    {
      echo "Top $STATEMENTS statements of run $label ($n worker processes, ${settings:-defaults}), from the workers' start until settled, $stored events:"
      for order in total_exec_time wal_bytes; do
        echo
        echo "by $order:"
        echo
        echo "| calls | execution s | planning s | % of execution | execution ms / 1,000 events | WAL bytes / event | rows | statement |"
        echo "|---|---|---|---|---|---|---|---|"
        top_statements "$db" "$order" "$stored"
      done
    } >"$OUT/statements_$label.md"
    cat "$OUT/statements_$label.md" >&2
  fi
  v=skipped
  if [ "$label" != warmup ] && { [ "$VERIFY" = all ] || { [ "$VERIFY" = last ] && [ "$spec" = "$last_run" ]; }; }; then
    log "  $label: verify"
    if DATABASE_URL=$url timeout 600 "$BIN" verify >"$OUT/verify_$label.log" 2>&1; then v=OK; else v="drift (verify_$label.log)"; fi
  fi
  [ "$drained" = 1 ] || v="did not drain; $v"
  # Wait events until drained (the table, as run.sh) and while settling (the log).
  top_waits() { sort | uniq -c | sort -rn | head -4 | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}'; }
  waits=$(awk -v t="$t1" '$1 <= t {print $2}' "$OUT/waits_$label" | top_waits)
  settle_waits=$(awk -v t="$t1" '$1 > t {print $2}' "$OUT/waits_$label" | top_waits)
  [ "$settled" = - ] || log "  $label: settled after $settled s; wait events meanwhile: ${settle_waits:-none}"
  mcells=""
  for m in $METRICS; do
    ms=$(metric_summary "$m" "$mfile" "$final")
    [ -z "$ms" ] || metric_seen[$m]=1
    mcells+="${ms:--}|"
  done
  row=$(awk -v n="$n" -v s="${settings:-defaults}" -v e="$stored" -v a="$t0" -v b="$t1" -v st="$settled" \
    -v wk="$wk2" -v wks=$((wk2 - wk1)) -v pg=$((pg2 - pg0)) -v pgs=$((pg2 - pg1)) -v tck="$tck" -v wal=$((wal2 - wal0)) -v v="$v" -v w="${waits:-none}" '
    function c(x,  s, r) {s = sprintf("%d", x); while (length(s) > 3) {r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3)}; return s r}
    function cpu(t, after) {return sprintf("%.3f (%.3f settling)", t / tck / k, after / tck / k)}
    BEGIN {
      d = b - a; k = e / 1000
      settled_rate = (st ~ /^[0-9.]+$/) ? c(e / (d + st)) : "-"
      printf "| %d | %s | %s | %.2f | %s | %s | %s | %s | %s | %s | %s | %s |\n", n, s, c(e), d, c(e / d), st, settled_rate, cpu(wk, wks), cpu(pg, pgs), c(wal / e), w, v
    }')
  if [ "$label" != warmup ]; then
    rows+=("$row")
    cells+=("$mcells")
  fi
  log "  $label done: $row"
  [ -z "${mcells//[-|]/}" ] || log "  $label metrics ($METRICS): ${mcells//|/ }"
  log "  $label: transactions committed, rolled back, deadlocks: $(psql_admin -F ', ' -c "SELECT xact_commit, xact_rollback, deadlocks FROM pg_stat_database WHERE datname = '$db'")"
  psql_admin -c "DROP DATABASE IF EXISTS $db"
done

{
  echo "$(nproc) cores, PostgreSQL $(psql_admin -c 'show server_version') durable (fsync and synchronous_commit on), $EVENTS events, $ACCOUNTS accounts, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  h="| worker processes | settings | events stored | seconds | events/s | settled after (s) | events/s to settled | worker CPU s / 1,000 events (settling) | PostgreSQL CPU s / 1,000 events (settling) | WAL bytes / event | wait events of active backends until drained (samples every 0.2 s) | verify |"
  sep="|---|---|---|---|---|---|---|---|---|---|---|---|"
  for m in $METRICS; do
    [ -z "${metric_seen[$m]:-}" ] || { h+=" $m |"; sep+="---|"; }
  done
  echo "$h"
  echo "$sep"
  for i in "${!rows[@]}"; do
    line=${rows[$i]}
    IFS='|' read -r -a mc <<<"${cells[$i]}"
    j=0
    for m in $METRICS; do
      [ -z "${metric_seen[$m]:-}" ] || line+=" ${mc[$j]} |"
      j=$((j + 1))
    done
    echo "$line"
  done
} | tee "$OUT/scale.md"
log "table in $OUT/scale.md"

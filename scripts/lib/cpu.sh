# shellcheck shell=bash
# CPU clock ticks from /proc, shared by the benchmarks (scripts/bench-scale.sh,
# scripts/fold-freshness.sh). Divide by `getconf CLK_TCK` for seconds.
# Source it; the functions take PostgreSQL's data directory or process ids.

# Ticks of PostgreSQL so far: the postmaster's own and its reaped children's
# (utime, stime, cutime, cstime), plus its live children's. A backend that
# exits is added to the postmaster's cutime/cstime once reaped.
pg_ticks() {
  local pm c
  pm=$(head -1 "$1/postmaster.pid")
  {
    cat "/proc/$pm/stat"
    for c in $(pgrep -P "$pm"); do cat "/proc/$c/stat" 2>/dev/null || true; done
  } | sed 's/.*) //' | awk '{t += $12 + $13 + $14 + $15} END {print t + 0}'
}

# Waits (up to 5 s) until no client backend of PostgreSQL is left and every
# exited child is reaped: a backend that is exiting, or a zombie, shows 0 ticks
# of its own and is not yet in the postmaster's cutime, so a reading taken
# then would miss it and the next would count it. Take the "before" reading
# after this.
pg_settle() {
  local pm c busy
  pm=$(head -1 "$1/postmaster.pid")
  for _ in $(seq 1 50); do
    busy=0
    for c in $(pgrep -P "$pm"); do
      case "$(sed 's/.*) //' "/proc/$c/stat" 2>/dev/null | cut -d' ' -f1) $(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null)" in
        Z* | *"postgres: postgres "*) busy=1 ;;
      esac
    done
    [ "$busy" = 1 ] || return 0
    sleep 0.1
  done
  echo "PostgreSQL still has client backends; the CPU figure may be off by theirs" >&2
}

# Ticks of the given processes (all threads, own time: utime + stime).
proc_ticks() {
  local p
  for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
    sed 's/.*) //' | awk '{t += $12 + $13} END {print t + 0}'
}

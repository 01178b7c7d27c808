#!/usr/bin/env bash
# Failover drill: a client writes one row every 50 ms through the endpoint,
# the primary is killed (pg_ctl stop -m immediate) after 5 s, and
# pgwarden-drill reports the seconds until the first write acknowledged by a
# new primary and the acknowledged rows the new primary lacks. Runs against
# pgwarden (proxy + monitor) and, when installed, pgpool-II with the same
# health-check settings (period 1 s, timeout 1 s, 2 retries 1 s apart).
#
#   bench/failover.sh [--record]
set -euo pipefail
cd "$(dirname "$0")/.."
record=0
[ "${1:-}" = "--record" ] && record=1

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_start drill

wait_env() { for _ in $(seq 1 120); do [ -f "$1" ] && return 0; sleep 0.5; done; echo "timed out waiting for $1" >&2; return 1; }
stop() { kill -INT "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

declare -a rows

# --- pgwarden -------------------------------------------------------------
port=$((20000 + RANDOM % 20000))
target/release/pgwarden-demo --nodes 1 --standbys 2 --port "$port" --dir "$work/pgwarden" --user drill --password drill \
    --env-file "$work/pgwarden.env" --set health_check.retry_delay=1s >"$work/pgwarden.out" 2>&1 &
demo=$!; pids+=("$demo")
wait_env "$work/pgwarden.env"
# shellcheck disable=SC1091
( . "$work/pgwarden.env"
  target/release/pgwarden-drill --conninfo "host=127.0.0.1 port=$port user=drill password=drill dbname=drill" \
      --kill-cmd "${as_pg[*]} $PG_BIN_DIR/pg_ctl stop -m immediate -D $PG0_DATA_DIR >/dev/null" ) | tee "$work/pgwarden.result" >&2
rows+=("| pgwarden (proxy + monitor, builtin failover) | $(cat "$work/pgwarden.result") |")
stop "$demo"

# --- pgpool-II --------------------------------------------------------------
if command -v pgpool >/dev/null; then
    for on_error in on off; do
        dir="$work/pgpool-$on_error"
        mkdir -p "$dir"
        target/release/pgwarden-cluster --standbys 2 --dir "$dir/postgres" --env-file "$dir/env" >"$dir/cluster.out" 2>&1 &
        cl=$!; pids+=("$cl")
        wait_env "$dir/env"
        # shellcheck disable=SC1091
        . "$dir/env"
        pport=$((20000 + RANDOM % 20000))
        cat >"$dir/failover.sh" <<SH
#!/bin/sh
# %d %h %p %D %m %H %M %P %r %R %N %S: promote the new main node when the failed node was the primary.
[ "\$1" = "\$8" ] || exit 0
exec psql -X -h "\$6" -p "\$9" -U postgres -d postgres -Atc 'SELECT pg_promote()'
SH
        chmod 755 "$dir/failover.sh"
        {
            pgpool_base_conf "$dir" "$pport" ALLOW_TO_FAILOVER
            echo "num_init_children = 32"
            echo "load_balance_mode = off"
            echo "health_check_period = 1"
            echo "health_check_timeout = 1"
            echo "health_check_user = 'postgres'"
            echo "health_check_max_retries = 2"
            echo "health_check_retry_delay = 1"
            echo "failover_command = '$dir/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S'"
            echo "failover_on_backend_error = $on_error"
            echo "search_primary_node_timeout = 30"
        } >"$dir/pgpool.conf"
        echo "postgres:$(echo -n x | md5sum | cut -d' ' -f1)" >"$dir/pcp.conf"
        [ "$(id -u)" = 0 ] && chown -R postgres "$dir/pgpool.conf" "$dir/pcp.conf" "$dir/failover.sh" && chown postgres "$dir"
        "${as_pg[@]}" pgpool -n -f "$dir/pgpool.conf" -F "$dir/pcp.conf" >"$dir/pgpool.log" 2>&1 &
        pp=$!; pids+=("$pp")
        for _ in $(seq 1 60); do psql -X -h 127.0.0.1 -p "$pport" -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
        target/release/pgwarden-drill --conninfo "host=127.0.0.1 port=$pport user=postgres dbname=postgres" \
            --kill-cmd "${as_pg[*]} $PG_BIN_DIR/pg_ctl stop -m immediate -D $PG0_DATA_DIR >/dev/null" \
            | tee "$dir/result" >&2 || echo "drill failed" >"$dir/result"
        rows+=("| pgpool-II $(pgpool --version 2>&1 | awk '{print $3}') (failover_on_backend_error = $on_error) | $(cat "$dir/result") |")
        "${as_pg[@]}" pgpool -f "$dir/pgpool.conf" -m immediate stop >/dev/null 2>&1 || kill "$pp" 2>/dev/null || true
        wait "$pp" 2>/dev/null || true
        stop "$cl"
    done
fi

{
    echo "## Failover drill, $(date -u +%Y-%m-%d) — $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo
    echo "One row written every 50 ms through the endpoint; the primary killed with \`pg_ctl stop -m immediate\` after 5 s;"
    echo "health checks every 1 s, 1 s timeout, 2 retries 1 s apart; asynchronous streaming replication, 2 standbys."
    echo "failover_seconds: from the kill to the first write acknowledged by another server. lost: acknowledged rows missing"
    echo "on the new primary. failed_attempts: writes (or connects) that failed meanwhile."
    echo
    echo "| endpoint | result |"
    echo "|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
} | tee "$work/section.md"

if [ "$record" = 1 ]; then record_section; fi

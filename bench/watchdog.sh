#!/usr/bin/env bash
# Watchdog drills on three hosts in network namespaces (root needed), each
# host running PostgreSQL and the three pgwarden daemons, a client reaching
# them through the delegate IP 10.213.0.100:
#   - the leader's watchdog is killed (kill -9): seconds until the delegate IP
#     answers from another host;
#   - the primary is killed: seconds until the first write through the
#     delegate IP is acknowledged by the new primary;
#   - the leader's monitor is killed (and not restarted): seconds until
#     another node leads (its monitor then decides failovers).
# Runs the multi-host e2e tests that measure these, RUNS times each.
#
#   bench/watchdog.sh [--record] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
record=0 runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --record) record=1 ;;
        --runs) runs=$2; shift ;;
        *) echo "usage: bench/watchdog.sh [--record] [--runs N]" >&2; exit 2 ;;
    esac
    shift
done
cargo build -j2 --workspace --bins >&2
vip=() primary=() handover=()
for _ in $(seq 1 "$runs"); do
    out=$(cargo nextest run -j1 -p pgwarden-e2e --test watchdog --no-capture \
        -E 'test(killing_the_leaders_watchdog_moves_the_delegate_ip) | test(killing_the_primary_fails_over_once_and_every_proxy_follows) | test(a_leader_without_its_monitor_hands_over_and_failover_still_happens)' 2>&1) \
        || { echo "$out" >&2; exit 1; }
    vip+=("$(echo "$out" | sed -n 's/^delegate IP answering from host [0-9]* \([0-9.]*\)\(m\?s\) after.*/\1 \2/p' | awk '{ if ($2 == "ms") printf "%.2f", $1/1000; else printf "%.2f", $1 }')")
    primary+=("$(echo "$out" | sed -n 's/^first write through the delegate IP \([0-9.]*\)\(m\?s\) after the primary died; new primary.*/\1 \2/p' | awk '{ if ($2 == "ms") printf "%.2f", $1/1000; else printf "%.2f", $1 }')")
    handover+=("$(echo "$out" | sed -n 's/^lead moved from host [0-9]* to host [0-9]* \([0-9.]*\)\(m\?s\) after.*/\1 \2/p' | awk '{ if ($2 == "ms") printf "%.2f", $1/1000; else printf "%.2f", $1 }')")
done
{
    echo "## Watchdog drills, $(date -u +%Y-%m-%d) — $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo
    echo "Three hosts in network namespaces, each with PostgreSQL 15 and pgwarden's watchdog, monitor and proxy;"
    echo "Raft tick 100 ms, election timeout 10 ticks; health checks every 500 ms, 1 s timeout, 2 retries 250 ms apart;"
    echo "a client namespace reaching the proxies through the delegate IP. $runs runs each."
    echo
    echo "| drill | seconds (each run) |"
    echo "|---|---|"
    echo "| leader's watchdog killed (kill -9) → delegate IP answers from another host | ${vip[*]} |"
    echo "| primary killed (pg_ctl stop -m immediate) → first write through the delegate IP acknowledged | ${primary[*]} |"
    echo "| leader's monitor killed (kill -9, not restarted) → another node leads (5 s grace included) | ${handover[*]} |"
    echo
} | tee /tmp/pgwarden-watchdog-bench.md
if [ "$record" = 1 ]; then
    tmp=$(mktemp)
    { head -4 bench/RESULTS.md; cat /tmp/pgwarden-watchdog-bench.md; tail -n +5 bench/RESULTS.md; } >"$tmp"
    cp "$tmp" bench/RESULTS.md
fi

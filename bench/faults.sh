#!/usr/bin/env bash
# The randomized fault suite (issue 14, item 3): on the three-host
# network-namespace lab (root), writers of unique keys and a reader go
# through the delegate IP while a seeded schedule of faults comes and goes,
# one at a time: a host cut off (the watchdog leader's, the primary's, a
# standby's), a one-way drop (a blackhole route inside a host), kill -9 of
# each daemon and of PostgreSQL, SIGSTOP/SIGCONT of a daemon or of a whole
# host, daemon restarts, and a planned switchover. After each fault the
# cluster must settle (one leader holding the delegate IP, one primary,
# every standby streaming, former primaries rejoined with pgwardenctl
# rejoin) within 120 s. At the end of a schedule every acknowledged write
# must be on the final primary (with --sync or --strict; counted otherwise),
# no write may have been taken by a stale or second primary, and no two
# hosts that can run code may have held the delegate IP (sampled every
# 50 ms; a frozen host is also cut off, like a paused machine, until it let
# go of the IP). One line per schedule, then
#   faults: schedules=N lost_acked=X dual_primary=Y dual_vip=Z max_unavailable_s=T
# A failing schedule prints its seed (replay: --seed S --schedules 1) and
# leaves the daemons' logs in --log-dir (default /tmp).
#
#   bench/faults.sh --schedules N [--seed S] [--sync | --strict] [--faults K]
#                   [--log-dir DIR] [--record] [--plan]
#
# --sync runs failover.synchronous_mode = "on", --strict "strict"
# (synchronous_count = 1); without either, asynchronous replication.
# --record puts the summary at the top of bench/RESULTS.md; --plan only
# lists each schedule's faults.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

record=0 plan=0 args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --record) record=1 ;;
        --sync | --strict) args+=("$1") ;;
        --plan) plan=1 ;;
        --schedules | --seed | --faults | --log-dir) args+=("$1" "${2:?$1 needs a value}"); shift ;;
        *) echo "usage: bench/faults.sh --schedules N [--seed S] [--sync | --strict] [--faults K] [--log-dir DIR] [--record] [--plan]" >&2; exit 2 ;;
    esac
    shift
done
if [ "$plan" = 1 ]; then
    cargo build -j2 -p pgwarden-e2e --bin faults >&2
    exec "${CARGO_TARGET_DIR:-target}/debug/faults" --plan "${args[@]}"
fi
[ "$(id -u)" = 0 ] || { echo "bench/faults.sh: the lab's hosts are network namespaces: run as root" >&2; exit 1; }
command -v arping >/dev/null || { echo "bench/faults.sh: arping is missing: apt-get install iputils-arping" >&2; exit 1; }

cargo build -j2 --workspace --bins >&2
work=$(mktemp -d /tmp/pgwarden-faults-XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
status=0
"${CARGO_TARGET_DIR:-target}/debug/faults" "${args[@]}" 2>&1 | grep --line-buffered -v '^pgwarden-testkit: ' | tee "$work/out" || status=$?
summary=$(grep '^faults: schedules=' "$work/out" || true)
[ -n "$summary" ] || { echo "bench/faults.sh: the run ended without its summary line" >&2; exit 1; }
echo "faults: the run took $(($(date +%s) - started)) s"

{
    echo "## Fault schedules, $(date -u +%Y-%m-%d) — $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo
    echo "bench/faults.sh ${args[*]} (debug builds; each schedule a fresh three-host lab). One line per schedule:"
    echo
    echo '```'
    grep -E '^(faults|schedule|  )' "$work/out"
    echo '```'
    echo
} >"$work/section.md"
if [ "$record" = 1 ]; then record_section; fi
exit "$status"

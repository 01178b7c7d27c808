#!/usr/bin/env bash
# Read load balancing: one primary and two streaming standbys (the demo
# cluster), pgbench -S with 16 clients directly on the primary, through
# pgwarden with every read on the primary (load_balance = "off"), through
# pgwarden with load_balance = "statement" (weights 1:1:1), and through
# pgpool-II with load_balance_mode and statement_level_load_balance (if
# installed), in one run, targets taking turns. Then read-your-writes: a
# write-then-read loop (each client inserts a row and at once counts it,
# two autocommit statements) through pgwarden balanced with
# proxy.read_your_writes on and off, and unbalanced; the reads that missed
# their own row are counted (the staleness a balancer without
# read-your-writes shows). Prints a markdown section; --record appends it
# to bench/RESULTS.md.
#
#   bench/load_balance.sh [--record] [--seconds N] [--rounds N] [--clients N]
set -euo pipefail
cd "$(dirname "$0")/.."

record=0 seconds=10 rounds=3 clients=16 scale=10
# shellcheck source=bench/lib.sh
. bench/lib.sh
while [ $# -gt 0 ]; do
    bench_option "$@" || { echo "usage: bench/load_balance.sh [--record] [--seconds N] [--rounds N] [--clients N]" >&2; exit 2; }
    shift "$taken"
done
bench_start lb

port=$((20000 + RANDOM % 20000))
target/release/pgwarden-demo --nodes 1 --standbys 2 --port "$port" --dir "$work/demo" \
    --user bench --password bench --env-file "$work/env" \
    --set proxy.pool_size=20 --set proxy.pool_mode=transaction --set proxy.load_balance=statement \
    --set replication_check.period=1s --pg-set max_connections=300 >"$work/demo.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do [ -f "$work/env" ] && break; sleep 0.5; done
[ -f "$work/env" ] || { cat "$work/demo.out" >&2; echo "demo did not start" >&2; exit 1; }
# shellcheck disable=SC1091
. "$work/env"
export PGPASSWORD=bench PGUSER=bench PGDATABASE=bench

# More proxies on the same monitor, with other settings: their own runtime
# directory (admin socket), the monitor's socket linked in.
more_proxy() { # name port KEY=VALUE...
    local name=$1 p=$2; shift 2
    mkdir -p "$work/$name"
    ln -s "$(dirname "$CONFIG")/run/monitor.sock" "$work/$name/monitor.sock"
    env PGWARDEN_NODE__RUNTIME_DIR="$work/$name" PGWARDEN_PROXY__LISTEN="127.0.0.1:$p" \
        PGWARDEN_PROXY__METRICS_LISTEN="127.0.0.1:$((p + 1000))" PGWARDEN_PROXY__POOL_SIZE=20 \
        PGWARDEN_PROXY__POOL_MODE=transaction PGWARDEN_REPLICATION_CHECK__PERIOD=1s "$@" \
        target/release/pgwarden-proxy --config "$CONFIG" >"$work/$name.log" 2>&1 &
    pids+=($!)
}
more_proxy primary-only $((port + 1)) PGWARDEN_PROXY__LOAD_BALANCE=off
more_proxy no-ryw $((port + 2)) PGWARDEN_PROXY__LOAD_BALANCE=statement PGWARDEN_PROXY__READ_YOUR_WRITES=false

pgbench -h 127.0.0.1 -p "$PG0_PORT" -i -q -s "$scale" >/dev/null 2>&1
psql -X -q -h 127.0.0.1 -p "$PG0_PORT" -c "CREATE TABLE ryw_bench (id bigint PRIMARY KEY); CREATE TABLE ryw_miss (id bigint)"
# Every standby has the tables before anything reads them.
for _ in $(seq 1 60); do
    ok=1
    for i in 1 2; do
        p="PG${i}_PORT"
        psql -X -h 127.0.0.1 -p "${!p}" -Atc "SELECT 1 FROM ryw_miss LIMIT 0" >/dev/null 2>&1 || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.5
done
for p in $((port + 1)) $((port + 2)); do
    for _ in $(seq 1 60); do psql -X -h 127.0.0.1 -p "$p" -Atc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
done

targets=("direct:$PG0_PORT" "pgwarden-off:$((port + 1))" "pgwarden-statement:$port")
pgpool_version=""
if command -v pgpool >/dev/null; then
    dir="$work/pgpool"
    mkdir -p "$dir"
    pport=$((port + 3))
    {
        pgpool_base_conf "$dir" "$pport" DISALLOW_TO_FAILOVER
        echo "num_init_children = $((clients + 8))"
        echo "load_balance_mode = on"
        echo "statement_level_load_balance = on"
        echo "delay_threshold = 1048576"
        echo "health_check_period = 0"
    } >"$dir/pgpool.conf"
    echo "postgres:$(echo -n x | md5sum | cut -d' ' -f1)" >"$dir/pcp.conf"
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
    "${as_pg[@]}" pgpool -n -f "$dir/pgpool.conf" -F "$dir/pcp.conf" >"$dir/pgpool.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 60); do psql -X -h 127.0.0.1 -p "$pport" -U postgres -d bench -Atc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
    # pgpool-II gets the superuser, trusted on loopback (no pool_passwd to keep).
    targets+=("pgpool:$pport")
    pgpool_version=$(pgpool --version 2>&1 | awk '{print $3}')
fi
user_of() { [ "$1" = pgpool ] && echo postgres || echo bench; }

# Transactions each server ran so far (xact_commit of the bench database).
commits() {
    local out="" i p
    for i in 0 1 2; do
        p="PG${i}_PORT"
        out+="$(psql -X -h 127.0.0.1 -p "${!p}" -U postgres -d postgres -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'") "
    done
    echo "$out"
}

cat >"$work/ryw.sql" <<'SQL'
\set id random(1, 9000000000000)
INSERT INTO ryw_bench (id) VALUES (:id) ON CONFLICT DO NOTHING;
SELECT count(*) AS seen FROM ryw_bench WHERE id = :id \gset
\if :seen = 0
INSERT INTO ryw_miss (id) VALUES (:id);
\endif
SQL

declare -A runs share
tests=("select:-S" "select-prepared:-S -M prepared")
ulimit -n 65536 2>/dev/null || true
for t in "${targets[@]}"; do
    pgbench -h 127.0.0.1 -p "${t##*:}" -U "$(user_of "${t%%:*}")" -c "$clients" -j 2 -T 3 -S >/dev/null 2>&1 || true
done
for round in $(seq 1 "$rounds"); do
    for spec in "${tests[@]}"; do
        test=${spec%%:*} flags=${spec#*:}
        for t in "${targets[@]}"; do
            name=${t%%:*} p=${t##*:}
            sleep 1.5
            before=$(commits)
            # shellcheck disable=SC2086
            out=$(pgbench -h 127.0.0.1 -p "$p" -U "$(user_of "$name")" -c "$clients" -j 2 -T "$seconds" $flags 2>&1) || {
                echo "$out" | tail -5 >&2; echo "pgbench failed: $name $test" >&2; exit 1; }
            # Backends report their counts to the statistics within a second.
            sleep 1.5
            after=$(commits)
            tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1 | xargs printf '%.0f')
            runs[$name,$test]+="$tps
"
            # The share of the run's transactions each server ran.
            read -r b0 b1 b2 <<<"$before"; read -r a0 a1 a2 <<<"$after"
            d0=$((a0 - b0)) d1=$((a1 - b1)) d2=$((a2 - b2)); sum=$((d0 + d1 + d2))
            [ "$sum" -gt 0 ] && share[$name,$test]="$((100 * d0 / sum))/$((100 * d1 / sum))/$((100 * d2 / sum))"
            echo "round $round $name $test: $tps tps, primary/pg1/pg2 ${share[$name,$test]:-?} %" >&2
        done
    done
done
median() { printf '%s' "$1" | sort -n | sed -n "$(( (rounds + 1) / 2 ))p"; }

# Read-your-writes: the same loop through each proxy, misses counted.
ryw_targets=("pgwarden-statement:$port" "pgwarden-statement-no-ryw:$((port + 2))" "pgwarden-off:$((port + 1))")
declare -A ryw_tps ryw_miss ryw_total
for t in "${ryw_targets[@]}"; do
    name=${t%%:*} p=${t##*:}
    psql -X -q -h 127.0.0.1 -p "$PG0_PORT" -c "TRUNCATE ryw_miss"
    out=$(pgbench -h 127.0.0.1 -p "$p" -c "$clients" -j 2 -T "$seconds" -n -f "$work/ryw.sql" 2>&1) || {
        echo "$out" | tail -5 >&2; echo "pgbench failed: $name ryw" >&2; exit 1; }
    ryw_tps[$name]=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1 | xargs printf '%.0f')
    ryw_total[$name]=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1)
    ryw_miss[$name]=$(psql -X -h 127.0.0.1 -p "$PG0_PORT" -Atc "SELECT count(*) FROM ryw_miss")
    echo "$name ryw: ${ryw_tps[$name]} tps, ${ryw_miss[$name]} of ${ryw_total[$name]} reads missed their write" >&2
done
probes=$(curl -s "http://127.0.0.1:9930/metrics" 2>/dev/null | sed -n 's/^pgwarden_proxy_reads_behind_writes_total \([0-9]*\).*/\1/p' | head -1)

{
    echo "## Read load balancing, $(date -u +%Y-%m-%d) — $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo
    echo "PostgreSQL $(psql -X -h 127.0.0.1 -p "$PG0_PORT" -Atc 'SHOW server_version'), one primary and two streaming standbys on the same machine, pgbench scale $scale, $clients clients, -j 2, ${seconds}s per run, median of $rounds rounds (targets taking turns); pgwarden in transaction pooling, pool size 20 per server, SCRAM; weights 1:1:1.${pgpool_version:+ pgpool-II $pgpool_version with load_balance_mode and statement_level_load_balance, num_init_children $((clients + 8)), the superuser trusted on loopback.}"
    echo "The share column is each server's part of the run's commits (primary/pg1/pg2, from pg_stat_database)."
    echo
    echo "| test | target | tps | × direct | share % |"
    echo "|---|---|---|---|---|"
    for spec in "${tests[@]}"; do
        test=${spec%%:*}
        d=$(median "${runs[direct,$test]}")
        for t in "${targets[@]}"; do
            name=${t%%:*}
            m=$(median "${runs[$name,$test]}")
            echo "| \`pgbench ${spec#*:}\` | $name | $m | $(awk -v a="$m" -v b="$d" 'BEGIN { printf "%.2f", a / b }') | ${share[$name,$test]:-?} |"
        done
    done
    echo
    echo "Write-then-read loop (\`INSERT\` a row, then \`SELECT count(*)\` of it, two autocommit statements per transaction), ${seconds}s, $clients clients:"
    echo
    echo "| target | tps | reads that missed their own write |"
    echo "|---|---|---|"
    for t in "${ryw_targets[@]}"; do
        name=${t%%:*}
        echo "| $name | ${ryw_tps[$name]} | ${ryw_miss[$name]} of ${ryw_total[$name]} |"
    done
    echo
    echo "With read_your_writes on, reads kept on the primary because the chosen standby had not replayed the write (pgwarden_proxy_reads_behind_writes over the whole run): ${probes:-?}."
} >"$work/section.md"
cat "$work/section.md"
if [ "$record" = 1 ]; then
    { echo; cat "$work/section.md"; } >>bench/RESULTS.md
fi

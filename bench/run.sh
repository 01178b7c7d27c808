#!/usr/bin/env bash
# Throughput and memory: pgbench against one PostgreSQL server directly,
# through pgwarden-proxy, and through PgBouncer (if installed), with the same
# client count, auth (SCRAM-SHA-256) and pool size. Prints a markdown section
# and, with --record, appends it to bench/RESULTS.md.
#
#   bench/run.sh [--record] [--seconds N] [--rounds N] [--clients N] [--mode session|transaction] [--idle N] [--tls] [--pgbouncer BIN]
#
# --mode transaction runs pgwarden and PgBouncer with transaction pooling
# (pool size 20 either way) and the servers with max_connections = 400, so
# the direct runs can have as many clients. --idle N then opens N logged-in
# idle clients (bench/idle_clients.py) to pgwarden and to PgBouncer in turn
# and reports the memory each gained per client. --tls runs every target
# over TLS (sslmode=require): PostgreSQL with a certificate, pgwarden with
# client_tls_mode = "require" and server_tls.mode = "require", PgBouncer
# with client_tls_sslmode and server_tls_sslmode = require. --pgbouncer BIN
# runs that PgBouncer instead of the one on PATH (the Debian package); from
# 1.21 on it gets max_prepared_statements = 200, as pgwarden, so that
# `-M prepared` runs through it in transaction mode.
set -euo pipefail
cd "$(dirname "$0")/.."

record=0 seconds=10 rounds=3 clients=16 scale=10 mode=session idle=0 tls=0 pgbouncer=pgbouncer
# shellcheck source=bench/lib.sh
. bench/lib.sh
while [ $# -gt 0 ]; do
    if bench_option "$@"; then shift "$taken"; continue; fi
    case "$1" in
        --mode) mode=$2; shift ;;
        --idle) idle=$2; shift ;;
        --tls) tls=1 ;;
        --pgbouncer) pgbouncer=$2; shift ;;
        *) echo "usage: bench/run.sh [--record] [--seconds N] [--rounds N] [--clients N] [--mode session|transaction] [--idle N] [--tls] [--pgbouncer BIN]" >&2; exit 2 ;;
    esac
    shift
done
bench_start bench

proxy_port=$((20000 + RANDOM % 20000))
bouncer_port=$((proxy_port + 1))
tls_args=()
if [ "$tls" = 1 ]; then
    # One self-signed certificate for localhost, served by PostgreSQL, the
    # proxy and PgBouncer alike; every client asks for TLS and checks nothing.
    mkdir -p "$work/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" >/dev/null 2>&1
    chmod 644 "$work/tls/cert.pem"; chmod 600 "$work/tls/key.pem"
    [ "$(id -u)" = 0 ] && chown postgres "$work/tls" "$work/tls/key.pem" "$work/tls/cert.pem"
    tls_args=(--pg-set ssl=on --pg-set "ssl_cert_file=$work/tls/cert.pem" --pg-set "ssl_key_file=$work/tls/key.pem"
        --set proxy.client_tls_mode=require --set "proxy.client_tls_cert_file=$work/tls/cert.pem"
        --set "proxy.client_tls_key_file=$work/tls/key.pem" --set server_tls.mode=require)
fi
target/release/pgwarden-demo --nodes 1 --standbys 0 --port "$proxy_port" --dir "$work/demo" \
    --user bench --password bench --env-file "$work/env" --set proxy.pool_size=20 \
    --set proxy.pool_mode="$mode" --set proxy.max_client_connections=$((idle + 2000)) \
    --pg-set max_connections=400 "${tls_args[@]}" >"$work/demo.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do [ -f "$work/env" ] && break; sleep 0.5; done
[ -f "$work/env" ] || { cat "$work/demo.out" >&2; echo "demo did not start" >&2; exit 1; }
# shellcheck disable=SC1091
. "$work/env"
export PGPASSWORD=bench PGUSER=bench PGDATABASE=bench
[ "$tls" = 1 ] && export PGSSLMODE=require

pgbench -h 127.0.0.1 -p "$PG0_PORT" -i -q -s "$scale" >/dev/null 2>&1

targets=("direct:$PG0_PORT" "pgwarden:$proxy_port")
if command -v "$pgbouncer" >/dev/null; then
    pgbouncer=$(command -v "$pgbouncer")
    mkdir -p "$work/bouncer"
    cp "$work/demo/users.txt" "$work/bouncer/users.txt"
    cat >"$work/bouncer/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PG0_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/bouncer/users.txt
pool_mode = $mode
default_pool_size = 20
max_client_conn = $((idle + 2000))
server_reset_query = DISCARD ALL
logfile = $work/bouncer/pgbouncer.log
INI
    # Protocol-level prepared statements in transaction mode (1.21+).
    bouncer_version=$("$pgbouncer" --version | sed -n '1s/^PgBouncer \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    if [ "${bouncer_version% *}" -gt 1 ] || [ "${bouncer_version#* }" -ge 21 ]; then
        echo "max_prepared_statements = 200" >>"$work/bouncer/pgbouncer.ini"
    fi
    if [ "$tls" = 1 ]; then
        cat >>"$work/bouncer/pgbouncer.ini" <<INI
client_tls_sslmode = require
client_tls_cert_file = $work/tls/cert.pem
client_tls_key_file = $work/tls/key.pem
server_tls_sslmode = require
INI
    fi
    as_user=()
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$work/bouncer"
        as_user=(runuser -u postgres --)
    fi
    # runuser resets the open files limit; PgBouncer needs one per client.
    "${as_user[@]}" sh -c "ulimit -n $(ulimit -Hn); exec $pgbouncer $work/bouncer/pgbouncer.ini" >/dev/null 2>&1 &
    pids+=($!)
    sleep 1
    targets+=("pgbouncer:$bouncer_port")
fi

proxy_pid=$(pgrep -f "pgwarden-proxy --config $work/demo/node0/pgwarden.toml" | head -1 || true)
# The pgbouncer process itself, not the runuser / sh that started it.
bouncer_pid=$(pgrep -f "^$pgbouncer $work/bouncer/pgbouncer.ini" | head -1 || true)
declare -A pid_of=([pgwarden]=$proxy_pid [pgbouncer]=$bouncer_pid)
# CPU time (user + system, in clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)

declare -A tps lat runs cpu
tests=("select:-S" "select-prepared:-S -M prepared" "tpcb-like:" "select-connect:-S -C")
ulimit -n 65536 2>/dev/null || true
for t in "${targets[@]}"; do
    # Warm up (caches, connection pools) so the first measured run is not penalised.
    pgbench -h 127.0.0.1 -p "${t##*:}" -c "$clients" -j 2 -T 5 -S >/dev/null 2>&1
done
# Targets take turns test by test, round after round, so a slow spell of
# this shared machine hits them alike; each cell is the median round.
for round in $(seq 1 "$rounds"); do
    for spec in "${tests[@]}"; do
        test=${spec%%:*} flags=${spec#*:}
        for t in "${targets[@]}"; do
            name=${t%%:*} port=${t##*:}
            [ "${tps[$name,$test]:-}" = fails ] && continue
            # shellcheck disable=SC2086
            pid=${pid_of[$name]:-}
            before=$([ -n "$pid" ] && ticks "$pid" || echo 0)
            out=$(pgbench -h 127.0.0.1 -p "$port" -c "$clients" -j 2 -T "$seconds" $flags 2>&1) || {
                echo "$out" | tail -5 >&2; echo "pgbench failed: $name $test" >&2
                # PgBouncer before 1.21 has no prepared statements in transaction mode.
                [ "$name" = pgbouncer ] || exit 1
                tps[$name,$test]=fails lat[$name,$test]=-
                continue; }
            t_=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1 | xargs printf '%.0f')
            l_=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -1)
            runs[$name,$test]+="$t_ $l_
"
            if [ -n "$pid" ]; then
                # The pooler's CPU per transaction (µs): unlike tps, it hardly
                # moves with what else this shared machine runs.
                done_=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' | head -1)
                used=$(( $(ticks "$pid") - before ))
                [ "${done_:-0}" -gt 0 ] && cpu[$name,$test]+="$(( used * 1000000 / hz / done_ ))
"
            fi
            echo "round $round $name $test: $t_ tps, $l_ ms" >&2
        done
    done
done
for spec in "${tests[@]}"; do
    test=${spec%%:*}
    for t in "${targets[@]}"; do
        name=${t%%:*}
        [ "${tps[$name,$test]:-}" = fails ] && continue
        median=$(printf '%s' "${runs[$name,$test]}" | sort -n | sed -n "$(( (rounds + 1) / 2 ))p")
        tps[$name,$test]=${median%% *} lat[$name,$test]=${median##* }
        if [ -n "${cpu[$name,$test]:-}" ]; then
            cpu[$name,$test]=$(printf '%s' "${cpu[$name,$test]}" | sort -n | sed -n "$(( ($(printf '%s' "${cpu[$name,$test]}" | wc -l) + 1) / 2 ))p")
        fi
    done
done

rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo "?"; }
peak="pgwarden-proxy $(rss "$proxy_pid") kB${bouncer_pid:+, pgbouncer $(rss "$bouncer_pid") kB}"

idle_line=""
if [ "$idle" -gt 0 ]; then
    ulimit -n "$(ulimit -Hn)"
    idle_one() { python3 bench/idle_clients.py --port "$1" --user bench --password bench --db bench --pid "$2" -n "$idle" | tail -1; }
    p=$(idle_one "$proxy_port" "$proxy_pid") || p="failed"
    echo "pgwarden idle: $p" >&2
    idle_line="$idle idle logged-in clients: pgwarden-proxy gained $(echo "$p" | sed -n 's/.*per_client_bytes=\([0-9]*\).*/\1/p') bytes per client"
    if [ -n "$bouncer_pid" ]; then
        b=$(idle_one "$bouncer_port" "$bouncer_pid") || b="failed"
        echo "pgbouncer idle: $b" >&2
        idle_line+=", PgBouncer $(echo "$b" | sed -n 's/.*per_client_bytes=\([0-9]*\).*/\1/p')"
    fi
    idle_line+=" (VmRSS after all were up, less before, over the clients; SCRAM logins, \`SELECT 1\` once each)."
fi

{
    echo "## $(date -u +%Y-%m-%d) — $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo
    echo "PostgreSQL $(postgres_ver=$(psql -h 127.0.0.1 -p "$PG0_PORT" -Atc 'SHOW server_version'); echo "$postgres_ver"), pgbench scale $scale, $clients clients, -j 2, ${seconds}s per run, median of $rounds rounds (targets taking turns), SCRAM-SHA-256 everywhere, pool size 20, $mode pooling,$([ "$tls" = 1 ] && echo " TLS everywhere (sslmode=require, ECDSA P-256 certificate),") everything on one machine (pgbench, proxy and server share the cores)."
    command -v "$pgbouncer" >/dev/null && echo "PgBouncer: $("$pgbouncer" --version | head -1)."
    echo
    header="| test |" sep="|---|"
    for t in "${targets[@]}"; do header+=" ${t%%:*} tps (latency ms) |"; sep+="---|"; done
    echo "$header"; echo "$sep"
    for spec in "${tests[@]}"; do
        test=${spec%%:*}
        row="| \`pgbench ${spec#*:}\` ($test) |"
        for t in "${targets[@]}"; do n=${t%%:*}; row+=" ${tps[$n,$test]} (${lat[$n,$test]}) |"; done
        echo "$row"
    done
    echo
    # Each round's two runs of a test are minutes apart at most: their
    # ratio moves less with this shared machine's slow spells than the
    # ratio of the medians above does.
    row="pgwarden/PgBouncer tps, median of the rounds' ratios (each round's runs side by side):"
    for spec in "${tests[@]}"; do
        test=${spec%%:*}
        [ -n "${runs[pgwarden,$test]:-}" ] && [ -n "${runs[pgbouncer,$test]:-}" ] || continue
        ratios=$(paste -d' ' <(printf '%s' "${runs[pgwarden,$test]}" | cut -d' ' -f1) \
            <(printf '%s' "${runs[pgbouncer,$test]}" | cut -d' ' -f1) \
            | awk '$2 > 0 { printf "%.2f\n", $1 / $2 }' | sort -n)
        row+=" $test $(echo "$ratios" | sed -n "$(( ($(echo "$ratios" | wc -l) + 1) / 2 ))p") ($(echo "$ratios" | head -1)–$(echo "$ratios" | tail -1));"
    done
    [ "$row" != "${row%;}" ] && { echo "${row%;}."; echo; }
    row="Pooler CPU per transaction (µs, user + system, median round):"
    for spec in "${tests[@]}"; do
        test=${spec%%:*}
        row+=" $test"
        for n in pgwarden pgbouncer; do
            [ -n "${cpu[$n,$test]:-}" ] && row+=" $n ${cpu[$n,$test]}"
        done
        row+=";"
    done
    echo "${row%;}."
    echo
    echo "Peak RSS after the pgbench runs: $peak."
    echo
    if [ -n "$idle_line" ]; then echo "$idle_line"; echo; fi
} | tee "$work/section.md"

if [ "$record" = 1 ]; then record_section; fi

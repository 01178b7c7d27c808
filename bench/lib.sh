# Shared by the bench scripts: `. bench/lib.sh` from the repository root.
# shellcheck shell=bash

# Builds the release binaries, makes the run's work directory ($work, under
# /tmp/pgwarden-NAME-*) and arranges for every process in $pids to be killed
# and the directory removed on exit. $as_pg runs a command as postgres when
# this shell is root.
bench_start() { # NAME
    cargo build --release -j2 --bins >&2
    work=$(mktemp -d "/tmp/pgwarden-$1-XXXXXX")
    chmod 755 "$work"
    pids=()
    trap bench_cleanup EXIT
    as_pg=()
    [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
    return 0
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

# The pgpool.conf lines every bench shares: streaming replication over the
# three servers of the sourced env file (PG0..PG2), listening on loopback
# at PORT with its sockets, pid and logs in DIR, no pool_hba, a connection
# cache of 4 per child.
pgpool_base_conf() { # DIR PORT BACKEND_FLAG
    local dir=$1 port=$2 flag=$3 i p d
    echo "backend_clustering_mode = 'streaming_replication'"
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '$dir'"
    echo "pcp_listen_addresses = ''"
    echo "pcp_port = $((port + 1))"
    echo "pcp_socket_dir = '$dir'"
    echo "pid_file_name = '$dir/pgpool.pid'"
    echo "logdir = '$dir'"
    for i in 0 1 2; do
        p="PG${i}_PORT"; d="PG${i}_DATA_DIR"
        echo "backend_hostname$i = '127.0.0.1'"
        echo "backend_port$i = ${!p}"
        echo "backend_weight$i = 1"
        echo "backend_data_directory$i = '${!d}'"
        echo "backend_flag$i = '$flag'"
    done
    echo "enable_pool_hba = off"
    echo "pool_passwd = ''"
    echo "max_pool = 4"
    echo "connection_cache = on"
    echo "sr_check_period = 1"
    echo "sr_check_user = 'postgres'"
    echo "use_watchdog = off"
}

# Puts the section in $work/section.md at the top of bench/RESULTS.md (newest
# first, under its four-line heading).
record_section() {
    [ -f bench/RESULTS.md ] || printf '# Benchmark results\n\nNewest first. Produced by `bench/run.sh --record`.\n\n' >bench/RESULTS.md
    { head -4 bench/RESULTS.md; cat "$work/section.md"; tail -n +5 bench/RESULTS.md; } >"$work/results.md"
    cp "$work/results.md" bench/RESULTS.md
}

# The options every bench takes: --record, --seconds N, --rounds N,
# --clients N set record, seconds, rounds and clients; $taken says how many
# arguments the option used. Fails for any other option.
bench_option() { # ARG [VALUE]
    case "$1" in
        --record) record=1 taken=1 ;;
        --seconds) seconds=${2:?--seconds needs a value} taken=2 ;;
        --rounds) rounds=${2:?--rounds needs a value} taken=2 ;;
        --clients) clients=${2:?--clients needs a value} taken=2 ;;
        *) return 1 ;;
    esac
}

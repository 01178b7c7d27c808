#!/usr/bin/env bash
# Fuzzing the decoders of untrusted input (issue 14, item 4) with cargo-fuzz
# (libFuzzer, AddressSanitizer) on the nightly toolchain: each target in
# fuzz/fuzz_targets runs for --runs executions (10 million by default), from
# fuzz/seeds/<target> plus the corpus it grew in earlier runs
# (fuzz/corpus/<target>, not committed). Prints one line per target and,
# with --record, puts a section at the top of bench/RESULTS.md. A crash stops
# the run: libFuzzer saves the input under fuzz/artifacts/<target>/; make it a
# regression test of the crate it crashed.
#
#   bench/fuzz.sh [--record] [--runs N] [TARGET...]
#
# Targets: startup (the startup packet), scanner (the message scanner),
# scram (SCRAM-SHA-256 messages, both sides), auth_file, hba, peer (the
# watchdog's peer messages, their MACs, the Raft messages and commands).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

record=0 runs=10000000 targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --record) record=1 ;;
        --runs) runs=${2:?--runs needs a value}; shift ;;
        -*) echo "usage: bench/fuzz.sh [--record] [--runs N] [TARGET...]" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
command -v cargo-fuzz >/dev/null || { echo "bench/fuzz.sh: cargo-fuzz is missing: cargo +nightly install cargo-fuzz" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 || { echo "bench/fuzz.sh: the nightly toolchain is missing" >&2; exit 1; }
[ ${#targets[@]} -gt 0 ] || targets=(startup scanner scram auth_file hba peer)

work=$(mktemp -d /tmp/pgwarden-fuzz-XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd fuzz && CARGO_BUILD_JOBS=2 cargo +nightly fuzz build >&2)
rows=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    started=$(date +%s)
    # One process (the machine has two cores: the build and the rest of
    # the bench share them); rss and input length bounded.
    if ! (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -runs="$runs" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1) >"$work/$t.log" 2>&1; then
        tail -30 "$work/$t.log" >&2
        echo "fuzz: $t crashed; the input is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
    took=$(($(date +%s) - started))
    done_runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$work/$t.log" | tail -1)
    cov=$(sed -n 's/^stat::.*//;s/.*cov: \([0-9]*\).*/\1/p' "$work/$t.log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    echo "fuzz: target=$t runs=${done_runs:-?} seconds=$took cov=${cov:-?} corpus=$corpus crashes=0"
    rows+=("| $t | ${done_runs:-?} | $took | ${cov:-?} | $corpus | 0 |")
done

{
    echo "## Fuzzing, $(date -u +%Y-%m-%d) — $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo
    echo "bench/fuzz.sh: cargo-fuzz $(cargo fuzz --version 2>/dev/null | awk '{print $2}'), $(rustup run nightly rustc --version), libFuzzer with AddressSanitizer,"
    echo "one process per target, inputs up to 4 KiB. cov: the coverage counters libFuzzer reached."
    echo
    echo "| target | executions | seconds | cov | corpus | crashes |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
} | tee "$work/section.md"
if [ "$record" = 1 ]; then record_section; fi

#!/bin/sh
# Runs every fuzz target of mesh-proto for a given time, then minimises each
# corpus and prints one line per target: executions, coverage, corpus size and
# whether it found anything. Usage (from anywhere):
#
#   mesh-proto/fuzz/run.sh [SECONDS_PER_TARGET] [PARALLEL_TARGETS]
#
# defaults: 600 s per target, one target at a time. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks
# the sanitizer flags cargo-fuzz passes. Logs go to fuzz/logs/TARGET.log, crashes
# to fuzz/artifacts/TARGET/ (see README.md for replaying them).
set -eu
seconds=${1:-600}
jobs=${2:-1}
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/logs
(cd fuzz && cargo run --quiet --example seeds >/dev/null)
cargo fuzz build --release
targets=$(cargo fuzz list)
# Documents and their bodies may be 32 KiB: give every target room for them.
echo "$targets" | xargs -P "$jobs" -I{} sh -c \
    "cargo fuzz run --release {} -- -max_total_time=$seconds -max_len=40000 \
        -print_final_stats=1 > fuzz/logs/{}.log 2>&1 || echo '{}: FOUND A CRASH (fuzz/artifacts/{})'"
for t in $targets; do
    cargo fuzz cmin --release "$t" -- -max_len=40000 > "fuzz/logs/$t.cmin.log" 2>&1 || true
done
printf '%-24s %14s %8s %8s %s\n' target executions cov corpus findings
for t in $targets; do
    log="fuzz/logs/$t.log"
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo '?')
    corpus=$(ls "fuzz/corpus/$t" 2>/dev/null | wc -l)
    found=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    printf '%-24s %14s %8s %8s %s\n' "$t" "$runs" "$cov" "$corpus" "$found"
done

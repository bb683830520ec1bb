#!/usr/bin/env bash
# run.sh - build every libFuzzer harness in tests/fuzz (fuzz_*.c) with clang
# and run each one for a short while.
#
#   tests/fuzz/run.sh [SECONDS]      # SECONDS per harness, default 30
#
# The build goes to build-fuzz/ at the top of the repository (override with
# QFS_FUZZ_BUILD_DIR). Each harness fuzzes a working corpus in
# <build>/fuzz-corpus/<harness>/, seeded from tests/fuzz/corpus/<harness>/
# (checked-in inputs, read only) and from the harness itself when it knows
# how to write seeds (QFS_FUZZ_WRITE_SEEDS=<dir>, see fuzz_raft_decode.c).
# Crash inputs land in <build>/fuzz-artifacts/<harness>/.
#
# Exit status: 0 if every harness built and ran without a crash, leak,
# timeout or out-of-memory; 1 otherwise; 2 on a usage error. Harnesses run
# one after the other (the machines this runs on are small).
set -euo pipefail

secs=${1:-30}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [seconds-per-harness]" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${QFS_FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${QFS_FUZZ_JOBS:-2}

shopt -s nullglob
harnesses=("$here"/fuzz_*.c)
if [ ${#harnesses[@]} -eq 0 ]; then
    echo "run.sh: no fuzz_*.c harnesses in $here"
    exit 0
fi

mkdir -p "$build"
if ! CC=clang cmake -S "$root" -B "$build" -DQFS_FUZZ=ON >"$build/fuzz-configure.log" 2>&1; then
    echo "run.sh: cmake configure failed:" >&2
    tail -n 30 "$build/fuzz-configure.log" >&2
    exit 1
fi

failed=()
passed=()
for src in "${harnesses[@]}"; do
    name=$(basename "$src" .c)
    log="$build/fuzz-$name.log"
    blog="$build/fuzz-$name.build.log"
    echo "== $name: build"
    if ! cmake --build "$build" --target "$name" -j "$jobs" >"$blog" 2>&1; then
        echo "run.sh: $name did not build:" >&2
        tail -n 30 "$blog" >&2
        failed+=("$name (build)")
        continue
    fi
    bin="$build/tests/fuzz/$name"
    if [ ! -x "$bin" ]; then
        echo "run.sh: $name built but $bin is missing" >&2
        failed+=("$name (no binary)")
        continue
    fi

    work="$build/fuzz-corpus/$name"
    artifacts="$build/fuzz-artifacts/$name"
    mkdir -p "$work" "$artifacts"
    # Harnesses that know how write their seeds and exit; the others run
    # zero inputs and exit, so this never starts a fuzzing session.
    QFS_FUZZ_WRITE_SEEDS="$work" "$bin" -runs=0 >/dev/null 2>&1 || true
    corpora=("$work")
    if [ -d "$here/corpus/$name" ]; then
        corpora+=("$here/corpus/$name")
    fi

    echo "== $name: fuzz for ${secs}s ($(find "${corpora[@]}" -type f | wc -l) seed files)"
    if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${corpora[@]}" >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done ' "$log" | sed 's/^/   /' || true
        echo "fuzz ok $name"
        passed+=("$name")
    else
        echo "run.sh: $name FAILED (log: $log, artifacts: $artifacts/)" >&2
        grep -E 'ERROR|SUMMARY|check failed|Test unit written' "$log" | head -n 20 >&2 || true
        failed+=("$name")
    fi
done

echo "== fuzz summary: ${#passed[@]} clean, ${#failed[@]} failed"
for f in "${failed[@]+"${failed[@]}"}"; do
    echo "   FAILED: $f"
done
[ ${#failed[@]} -eq 0 ]

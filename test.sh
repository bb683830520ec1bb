#!/usr/bin/env bash
# Sets up and runs every quorumfs test (Debian 12, as root):
#   1. installs dependencies (apt-get), builds ./build with warnings as errors, checks
#      that the C sources are formatted as .clang-format says (scripts/check-format.sh)
#   2. unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (./build-asan)
#   3. the fs/, net/, server/ and client/ unit tests under ThreadSanitizer (./build-tsan;
#      races inside third-party libraries are suppressed in scripts/tsan.supp, each with why)
#   4. the deterministic Raft simulation (10,000 seeded runs) and its negative control
#   5. short libFuzzer runs of every decoder harness (./build-fuzz)
#   6. end-to-end bats tests through real mounts and real clients
# Closes with "N passed, N failed" over every test of every stage.
# Environment: QFS_FUZZ_SECONDS (default 20) per fuzz harness; README.md (Tests) lists
# every variable the tests read.
set -uo pipefail
cd "$(dirname "$0")"
log=$(mktemp -d /tmp/qfs-test.XXXXXX)
passed=0
failed=0
fail_stage() { echo "!! stage failed: $1"; failed=$((failed + 1)); }

count_ctest() { # $1 = ctest output file
  local line total nfail
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -1)
  if [ -z "$line" ]; then fail_stage "ctest ($1) printed no summary"; return; fi
  nfail=$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
  total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
  passed=$((passed + total - nfail))
  failed=$((failed + nfail))
}

echo "== dependencies"
bash scripts/deps.sh || { echo "dependency install failed"; exit 1; }

echo "== build (release, -Werror)"
if ! bash scripts/build.sh >"$log/build.txt" 2>&1; then
  tail -50 "$log/build.txt"; echo "0 passed, 1 failed"; exit 1
fi

echo "== formatting (clang-format, .clang-format)"
if bash scripts/check-format.sh 2>&1 | tee "$log/format.txt"; then
  passed=$((passed + 1))
else
  fail_stage "formatting (fix with: bash scripts/check-format.sh --fix)"
fi

echo "== build (ASan + UBSan)"
if ! { cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQFS_WERROR=ON -DQFS_SANITIZE=ON >/dev/null &&
       cmake --build build-asan -j"$(nproc)"; } >"$log/build-asan.txt" 2>&1; then
  tail -50 "$log/build-asan.txt"; echo "0 passed, 1 failed"; exit 1
fi

echo "== unit tests under sanitizers"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -R '^test_' --output-on-failure -j"$(nproc)" 2>&1 | tee "$log/unit.txt"
count_ctest "$log/unit.txt"

echo "== unit tests under ThreadSanitizer (fs, net, server, client)"
tsan_start=$SECONDS
tsan_re='^test_(fs|net|etcd|client)'
if cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQFS_WERROR=ON -DQFS_TSAN=ON \
     >"$log/build-tsan.txt" 2>&1; then
  # Build only the executables of the tests this stage runs (ctest names them).
  mapfile -t tsan_targets < <(ctest --test-dir build-tsan -N -R "$tsan_re" |
                              sed -nE 's/^ *Test +#[0-9]+: +([A-Za-z0-9_]+)$/\1/p')
  if [ "${#tsan_targets[@]}" -eq 0 ]; then
    fail_stage "tsan: no test matches $tsan_re"
  elif cmake --build build-tsan -j"$(nproc)" --target "${tsan_targets[@]}" >>"$log/build-tsan.txt" 2>&1; then
    # One test at a time: TSan slows code 5-15x, and the fs/ tests' timing (inotify
    # quiet periods, replay) is not made for that on top of a second loaded core.
    TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp second_deadlock_stack=1" \
      ctest --test-dir build-tsan -R "$tsan_re" --output-on-failure 2>&1 | tee "$log/tsan.txt"
    count_ctest "$log/tsan.txt"
  else
    tail -50 "$log/build-tsan.txt"; fail_stage "tsan build"
  fi
else
  tail -50 "$log/build-tsan.txt"; fail_stage "tsan configure"
fi
echo "ThreadSanitizer stage: $((SECONDS - tsan_start)) s"

echo "== Raft simulation (raft/ alone, and the node driver over the in-memory store)"
ctest --test-dir build -R 'raft_sim|node_sim' --output-on-failure -j"$(nproc)" 2>&1 | tee "$log/sim.txt"
count_ctest "$log/sim.txt"

echo "== fuzzing (${QFS_FUZZ_SECONDS:-20}s per harness)"
if bash tests/fuzz/run.sh "${QFS_FUZZ_SECONDS:-20}" 2>&1 | tee "$log/fuzz.txt"; then
  passed=$((passed + $(grep -c '^fuzz ok' "$log/fuzz.txt")))
else
  fail_stage fuzz
fi

echo "== end-to-end (bats)"
if ls tests/bats/*.bats >/dev/null 2>&1; then
  QFS_BIN="$PWD/build/server/quorumfs" bats --tap tests/bats 2>&1 | tee "$log/bats.txt"
  passed=$((passed + $(grep -c '^ok ' "$log/bats.txt")))
  failed=$((failed + $(grep -c '^not ok ' "$log/bats.txt")))
fi

echo "logs: $log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

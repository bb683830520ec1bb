#!/usr/bin/env bash
# Builds quorumfs into ./build (release, warnings as errors).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQFS_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"

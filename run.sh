#!/usr/bin/env bash
# Sets up and starts one quorumfs node (Debian 12, as root): installs the
# dependencies, builds, and runs a single-member cluster with its data in
# ./data and the key space mounted at ./mnt. Ctrl-C unmounts and stops.
# Extra arguments are passed to quorumfs (see ./build/server/quorumfs --help).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/deps.sh
bash scripts/build.sh
exec ./build/server/quorumfs "$@"

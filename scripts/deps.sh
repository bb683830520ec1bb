#!/usr/bin/env bash
# Installs what quorumfs needs to build, run and test on Debian 12 (as root).
# Idempotent: packages already present are skipped quickly.
set -euo pipefail
PKGS=(build-essential cmake pkg-config clang libclang-rt-14-dev
      librocksdb-dev libfuse3-dev fuse3 libuv1-dev libssl-dev
      libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
      bats inotify-tools attr iproute2 iptables procps psmisc
      etcd-server etcd-client python3-grpcio
      prometheus rsync vim clang-format)
# prometheus for promtool (a bats test checks /metrics with it when present);
# rsync and vim: bats tests write whole values through the mount with them;
# clang-format: test.sh checks the formatting of the tree.
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

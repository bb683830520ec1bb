#!/usr/bin/env bash
# fs_vs_tmpfs.sh - the same file operations through a quorumfs mount (one
# node) and on a tmpfs directory, printed as figures and quorumfs/tmpfs
# ratios. A benchmark: it prints, it does not pass or fail.
#
#   hot stat+read of small files   (N_HOT files, read ROUNDS times each)
#   create+write+close of 1 KiB files (N_CREATE files)
#   ls of a 10,000-entry directory  (N_LS entries)
#   find over 100,000 keys          (N_FIND keys, written by 16 parallel writers)
#
# Environment: QFS_BIN, N_HOT (1000), ROUNDS (10), N_CREATE (2000),
# N_LS (10000), N_FIND (100000).
set -euo pipefail
cd "$(dirname "$0")/../.."
QFS_BIN=${QFS_BIN:-$PWD/build/server/quorumfs}
N_HOT=${N_HOT:-1000}
ROUNDS=${ROUNDS:-10}
N_CREATE=${N_CREATE:-2000}
N_LS=${N_LS:-10000}
N_FIND=${N_FIND:-100000}

tmp=$(mktemp -d /tmp/qfs-bench.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  mountpoint -q "$tmp/mnt" && fusermount3 -uz "$tmp/mnt"
  mountpoint -q "$tmp/tmpfs" && umount "$tmp/tmpfs"
  rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/mnt" "$tmp/tmpfs"
mount -t tmpfs -o size=2g tmpfs "$tmp/tmpfs"
"$QFS_BIN" --data-dir "$tmp/data" --mount "$tmp/mnt" \
  --listen-client-urls http://127.0.0.1:0 --listen-peer-urls http://127.0.0.1:0 \
  --snapshot-count 1000000 >"$tmp/log" 2>&1 &
pid=$!
end=$((SECONDS + 30))
until echo ok >"$tmp/mnt/.ready" 2>/dev/null; do
  [ "$SECONDS" -lt "$end" ] || { cat "$tmp/log"; exit 1; }
  sleep 0.05
done
rm -f "$tmp/mnt/.ready"

now() { date +%s.%N; }
# secs CMD...: wall time of CMD in seconds.
secs() { local t0; t0=$(now); "$@" >/dev/null; echo "$(now) - $t0" | bc -l; }

hot() {
  local d=$1 r i
  for r in $(seq 1 "$ROUNDS"); do
    for i in $(seq 1 "$N_HOT"); do
      stat -c %s "$d/hot/f$i" >/dev/null
      read -r _ <"$d/hot/f$i"
    done
  done
}
create() {
  local d=$1 i
  mkdir -p "$d/create"
  for i in $(seq 1 "$N_CREATE"); do head -c 1024 /dev/zero >"$d/create/f$i"; done
}
fill() { # dir count: count files, 16 writers
  local d=$1 n=$2
  mkdir -p "$d"
  seq 1 "$n" | xargs -P 16 -n 500 sh -c 'for i; do : > "'"$d"'/k$i"; done' sh
}

declare -A T
for where in tmpfs mnt; do
  d=$tmp/$where
  mkdir -p "$d/hot"
  for i in $(seq 1 "$N_HOT"); do echo "v$i" >"$d/hot/f$i"; done
  hot "$d" # warm the caches
  T[$where.hot]=$(secs hot "$d")
  T[$where.create]=$(secs create "$d")
  fill "$d/ls" "$N_LS"
  T[$where.ls]=$(secs ls -f "$d/ls")
  fill "$d/find" "$N_FIND"
  T[$where.find]=$(secs find "$d/find")
done

printf '%-34s %12s %12s %10s\n' operation "tmpfs (s)" "quorumfs (s)" ratio
row() {
  printf '%-34s %12.4f %12.4f %9.1fx\n' "$1" "${T[tmpfs.$2]}" "${T[mnt.$2]}" \
    "$(echo "${T[mnt.$2]} / ${T[tmpfs.$2]}" | bc -l)"
}
row "hot stat+read ($((N_HOT * ROUNDS)) files)" hot
row "create+write+close 1 KiB ($N_CREATE)" create
row "ls of $N_LS entries" ls
row "find over $N_FIND keys" find

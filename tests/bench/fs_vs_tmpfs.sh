#!/usr/bin/env bash
# fs_vs_tmpfs.sh - the same file operations through a quorumfs mount (one
# node) and on a tmpfs directory, printed as figures and quorumfs/tmpfs
# ratios. A benchmark: it prints, it does not pass or fail.
#
#   hot stat+read of small files   (N_HOT files, read ROUNDS times each)
#   create+write+close of 1 KiB files (N_CREATE files)
#   ls of a 10,000-entry directory  (N_LS entries)
#   find over 100,000 keys          (N_FIND keys, written by 16 parallel writers)
#   create+write+close on one host, read back on a second host: the median
#   time per file (N_XHOST files), on 1 node (the second host is a client
#   mount) and on 3 nodes (the mounts of members 1 and 3, in a private
#   network namespace)
#
# Environment: QFS_BIN, N_HOT (1000), ROUNDS (10), N_CREATE (2000),
# N_LS (10000), N_FIND (100000), N_XHOST (200). Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
QFS_BIN=${QFS_BIN:-$PWD/build/server/quorumfs}
N_HOT=${N_HOT:-1000}
ROUNDS=${ROUNDS:-10}
N_CREATE=${N_CREATE:-2000}
N_LS=${N_LS:-10000}
N_FIND=${N_FIND:-100000}
N_XHOST=${N_XHOST:-200}

tmp=$(mktemp -d /tmp/qfs-bench.XXXXXX)
pid=""
pids=()
ns=qfs-bench-$$
cleanup() {
  local p m
  set +e
  for p in $pid "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  for m in "$tmp"/mnt "$tmp"/x*/mnt; do fusermount3 -uz "$m" 2>/dev/null; done
  mountpoint -q "$tmp/tmpfs" && umount "$tmp/tmpfs"
  ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
  return 0
}
trap cleanup EXIT

mkdir -p "$tmp/mnt" "$tmp/tmpfs"
mount -t tmpfs -o size=2g tmpfs "$tmp/tmpfs"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(free_port)
"$QFS_BIN" --data-dir "$tmp/data" --mount "$tmp/mnt" \
  --listen-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$(free_port)" \
  --snapshot-count 1000000 >"$tmp/log" 2>&1 &
pid=$!
end=$((SECONDS + 30))
until mountpoint -q "$tmp/mnt" && echo ok >"$tmp/mnt/.ready" 2>/dev/null; do
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

# xhost A B: N_XHOST files, each created, written and closed under A, then
# polled under B until it reads back whole; prints the median in ms.
xhost() {
  local a=$1 b=$2 i t0 t1
  mkdir -p "$a/xh"
  : >"$tmp/xh.times"
  for i in $(seq 1 "$N_XHOST"); do
    t0=$(date +%s%N)
    printf 'value-%s\n' "$i" | dd of="$a/xh/f$i" status=none
    local polls=0
    until [ "$(cat "$b/xh/f$i" 2>/dev/null)" = "value-$i" ]; do
      polls=$((polls + 1))
      if [ "$polls" -gt 20000 ]; then
        echo "xhost: $b/xh/f$i never read back: $(cat "$b/xh/f$i" 2>&1)" >&2
        return 1
      fi
    done
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000)) >>"$tmp/xh.times"
  done
  sort -n "$tmp/xh.times" | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] / 1000 }'
}

# 1 node: the second host is a client mount of it.
mkdir -p "$tmp/x1/mnt"
"$QFS_BIN" mount --foreground --endpoints "http://127.0.0.1:$cport" --cache-dir "$tmp/x1/cache" \
  "$tmp/x1/mnt" >"$tmp/x1/log" 2>&1 &
pids+=($!)
end=$((SECONDS + 30))
until [ "$(getfattr --only-values -n user.quorumfs.connected "$tmp/x1/mnt" 2>/dev/null)" = 1 ]; do
  [ "$SECONDS" -lt "$end" ] || { cat "$tmp/x1/log"; exit 1; }
  sleep 0.05
done
x1=$(xhost "$tmp/mnt" "$tmp/x1/mnt")

# 3 nodes in a private network namespace: write on member 1, read on member 3.
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
cluster=n1=http://127.0.0.11:2380,n2=http://127.0.0.12:2380,n3=http://127.0.0.13:2380
for i in 1 2 3; do
  mkdir -p "$tmp/x3n$i/mnt"
  nsenter --net="/run/netns/$ns" "$QFS_BIN" --name "n$i" --data-dir "$tmp/x3n$i/data" \
    --mount "$tmp/x3n$i/mnt" --listen-client-urls "http://127.0.0.1$i:2379" \
    --listen-peer-urls "http://127.0.0.1$i:2380" --initial-cluster "$cluster" \
    --initial-cluster-token bench >"$tmp/x3n$i/log" 2>&1 &
  pids+=($!)
done
end=$((SECONDS + 60))
until mountpoint -q "$tmp/x3n1/mnt" && mountpoint -q "$tmp/x3n3/mnt" &&
  printf r | dd of="$tmp/x3n1/mnt/.ready" status=none 2>/dev/null &&
  [ -e "$tmp/x3n3/mnt/.ready" ]; do
  [ "$SECONDS" -lt "$end" ] || { tail "$tmp"/x3n*/log; exit 1; }
  sleep 0.1
done
x3=$(xhost "$tmp/x3n1/mnt" "$tmp/x3n3/mnt")

printf '\n%-46s %10s\n' "create+write+close, read back on a second host" "median ms"
printf '%-46s %10s\n' "1 node (second host: a client mount)" "$x1"
printf '%-46s %10s\n' "3 nodes (member 1 writes, member 3 reads)" "$x3"

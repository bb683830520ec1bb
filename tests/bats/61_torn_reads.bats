#!/usr/bin/env bats
# Whole reads: while a key changes between values of different lengths
# (through the etcd API, or through another host's mount), every read of the
# file through a mount returns exactly one of the values written, never the
# new value cut to the old length or old bytes past the new end. On one
# node and on three, in both --mount-consistency modes, and through a
# client mount.

load helpers

setup() {
  cluster_setup
}

teardown() {
  [ -f "$QFS_TMP/writer.pid" ] && kill "$(cat "$QFS_TMP/writer.pid")" 2>/dev/null
  cluster_teardown
}

export ETCDCTL_API=3
READS=${QFS_TORN_READS:-500}

# value I: distinct per write, lengths cycling through 7 sizes.
value() { printf 'w%d-%s' "$1" "$(head -c $(( ($1 % 7) * 23 )) /dev/zero | tr '\0' x)"; }

# writer_api EP: puts value 1, 2, ... through etcdctl until killed; each
# value is logged before it is sent.
writer_api() {
  local i=1
  while :; do
    value "$i" >>"$QFS_TMP/written"; echo >>"$QFS_TMP/written"
    in_ns etcdctl --endpoints="$1" put /t "$(value "$i")" >/dev/null 2>&1
    i=$((i + 1))
  done
}

# writer_mount DIR: writes value 1, 2, ... to DIR/t (one put per close).
writer_mount() {
  local i=1
  while :; do
    value "$i" >>"$QFS_TMP/written"; echo >>"$QFS_TMP/written"
    value "$i" | dd of="$1/t" status=none 2>/dev/null
    i=$((i + 1))
  done
}

# reads_are_whole FILE...: reads each FILE $READS times in turn; fails,
# printing the first torn read, if any read is not a value written.
reads_are_whole() {
  local n=0 f v
  : >"$QFS_TMP/reads"
  while [ "$n" -lt "$READS" ]; do
    for f in "$@"; do
      v=$(cat "$f" 2>/dev/null) || continue
      printf '%s\n' "$v" >>"$QFS_TMP/reads"
    done
    n=$((n + 1))
  done
  local distinct
  distinct=$(sort -u "$QFS_TMP/reads" | wc -l)
  echo "# $(wc -l <"$QFS_TMP/reads") reads, $distinct distinct values" >&3
  [ "$distinct" -ge 3 ] # the key did change under the readers
  local bad
  bad=$(awk 'NR == FNR { ok[$0] = 1; next } !($0 in ok)' "$QFS_TMP/written" "$QFS_TMP/reads" | head -1)
  [ -z "$bad" ] || { echo "torn read: '$bad'" >&2; false; }
}

start_writer() { # FUNCTION ARG
  : >"$QFS_TMP/written"
  "$1" "$2" &
  echo $! >"$QFS_TMP/writer.pid"
  wait_until 20 sh -c "[ \$(wc -l <'$QFS_TMP/written') -ge 3 ]"
  wait_until 20 test -e "$3"
}

one_node() { # CONSISTENCY
  node_start 1 1 --mount-consistency "$1"
  wait_until 30 cluster_has_leader 1
  start_writer writer_api "http://$(node_ip 1):2379" "$(mnt 1)/t"
  reads_are_whole "$(mnt 1)/t"
}

@test "whole reads on one node under etcdctl puts of changing lengths (local consistency)" {
  one_node local
}

@test "whole reads on one node under etcdctl puts of changing lengths (linearizable)" {
  one_node linearizable
}

three_nodes() { # CONSISTENCY
  cluster_start 3 --mount-consistency "$1"
  start_writer writer_mount "$(mnt 2)" "$(mnt 1)/t"
  reads_are_whole "$(mnt 1)/t" "$(mnt 3)/t"
}

@test "whole reads on hosts 1 and 3 while host 2 writes through its mount (local consistency)" {
  three_nodes local
}

@test "whole reads on hosts 1 and 3 while host 2 writes through its mount (linearizable)" {
  three_nodes linearizable
}

@test "whole reads through a client mount under etcdctl puts" {
  node_start 1 1
  wait_until 30 cluster_has_leader 1
  mkdir -p "$QFS_TMP/c1/mnt"
  nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" mount --foreground \
    --endpoints "http://$(node_ip 1):2379" --cache-dir "$QFS_TMP/c1/cache" "$QFS_TMP/c1/mnt" \
    >>"$QFS_TMP/c1/log" 2>&1 &
  echo $! >"$QFS_TMP/c1/pid"
  wait_until 20 mountpoint -q "$QFS_TMP/c1/mnt"
  start_writer writer_api "http://$(node_ip 1):2379" "$QFS_TMP/c1/mnt/t"
  reads_are_whole "$QFS_TMP/c1/mnt/t"
}

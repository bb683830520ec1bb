#!/usr/bin/env bats
# --mount-consistency=linearizable: open(2) is a read point (ReadIndex), so a
# host reads every write committed anywhere before the open, and an open
# without a quorum fails instead of serving possibly stale data.

load helpers
load etcd_helpers

setup() {
  cluster_setup
}

teardown() {
  cluster_teardown
}

@test "with --mount-consistency=linearizable a read on node 2 sees a write acknowledged on node 1, and fails without quorum" {
  cluster_start 3 --mount-consistency=linearizable
  mkdir "$(mnt 1)/c"
  for i in $(seq 1 20); do
    ectl 1 put /c/k "v$i" >/dev/null
    # no waiting: the open itself waits until node 2 applied the write
    [ "$(cat "$(mnt 2)/c/k")" = "v$i" ] || { echo "read $(cat "$(mnt 2)/c/k"), want v$i" >&2; false; }
  done
  # Without a quorum the read point cannot be had: open fails in bounded time.
  qfs_kill n1 KILL
  qfs_kill n3 KILL
  run timeout 30 cat "$(mnt 2)/c/k"
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ]
  [[ "$output" == *"timed out"* || "$output" == *"Input/output error"* ]] || { echo "$output" >&2; false; }
  # A stat does not need the quorum: the file is still listed.
  [ -f "$(mnt 2)/c/k" ]
}

#!/usr/bin/env bats
# Three-member clusters in a private network namespace: replication, inotify
# events for remote changes, leader failure, partitions, snapshots, restarts.

load helpers

setup() {
  cluster_setup
}

teardown() {
  cluster_teardown
}

# acked_at_least N: the writer has had N writes acknowledged.
acked_at_least() { [ "$(wc -l <"$QFS_TMP/acked")" -ge "$1" ]; }

# has_value MNT PATH VALUE: the file at MNT/PATH holds exactly VALUE.
has_value() { [ "$(cat "$1/$2" 2>/dev/null)" = "$3" ]; }

@test "a write on one node is read on the others" {
  cluster_start 3
  mkdir -p "$(mnt 1)/app"
  echo v1 >"$(mnt 1)/app/x"
  wait_until 10 has_value "$(mnt 2)" app/x v1
  wait_until 10 has_value "$(mnt 3)" app/x v1
  echo v2 >"$(mnt 3)/app/x"
  [ "$(cat "$(mnt 3)/app/x")" = "v2" ] # a host reads its own write at once
  wait_until 10 has_value "$(mnt 1)" app/x v2
  wait_until 10 has_value "$(mnt 2)" app/x v2
  # Every node reports the same revisions.
  r1=$(getfattr --only-values -n user.quorumfs.mod_revision "$(mnt 1)/app/x")
  r2=$(getfattr --only-values -n user.quorumfs.mod_revision "$(mnt 2)/app/x")
  [ "$r1" = "$r2" ]
}

@test "inotifywait on nodes 2 and 3 sees writes, deletes, renames, mkdir and rm -r made on node 1" {
  cluster_start 3
  mkdir "$(mnt 1)/app"
  wait_until 10 test -d "$(mnt 2)/app"
  wait_until 10 test -d "$(mnt 3)/app"
  for i in 2 3; do
    inotifywait -m -r --format '%e %w%f' -o "$QFS_TMP/ev$i" "$(mnt "$i")/app" \
      2>"$QFS_TMP/iw$i.err" &
    echo $! >"$QFS_TMP/iw$i.pid"
    wait_until 10 grep -q "Watches established" "$QFS_TMP/iw$i.err"
  done
  echo v >"$(mnt 1)/app/x"
  mv "$(mnt 1)/app/x" "$(mnt 1)/app/y"
  mkdir "$(mnt 1)/app/sub"
  echo w >"$(mnt 1)/app/sub/z"
  rm "$(mnt 1)/app/y"
  rm -r "$(mnt 1)/app/sub"
  for i in 2 3; do
    ev=$QFS_TMP/ev$i
    m=$(mnt "$i")
    wait_until 15 grep -q "^DELETE,ISDIR $m/app/sub" "$ev" || { cat "$ev" >&2; false; }
    kill "$(cat "$QFS_TMP/iw$i.pid")"
    grep -q "^CREATE $m/app/x" "$ev"
    grep -q "^MODIFY $m/app/x" "$ev"
    grep -q "^CLOSE_WRITE,CLOSE $m/app/x" "$ev"
    grep -q "^MOVED_FROM $m/app/x" "$ev"
    grep -q "^MOVED_TO $m/app/y" "$ev"
    grep -q "^CREATE,ISDIR $m/app/sub" "$ev"
    grep -q "^DELETE $m/app/y" "$ev"
    # Events arrive in revision order.
    [ "$(grep -n "^CREATE $m/app/x" "$ev" | cut -d: -f1)" -lt \
      "$(grep -n "^MOVED_TO $m/app/y" "$ev" | cut -d: -f1)" ]
  done
}

@test "kill -9 of the leader under writes: a new leader, no acknowledged write lost" {
  cluster_start 3
  old=$(cluster_leader 3)
  writer=$(( old % 3 + 1 ))
  m=$(mnt "$writer")
  : >"$QFS_TMP/acked"
  # A write is acknowledged when close(2) succeeds: the mount puts the value
  # at flush. dd reports a failed close; `echo v >f` does not (bash's last
  # close of f is the dup2 that restores stdout, whose error the kernel
  # drops), so a put that timed out at flush - typically one forwarded to
  # the leader just killed - would count as acknowledged.
  (
    for i in $(seq 1 400); do
      if printf 'v%s\n' "$i" | dd of="$m/k$i" status=none 2>>"$QFS_TMP/write_errors"; then
        echo "$i" >>"$QFS_TMP/acked"
      fi
    done
  ) &
  wpid=$!
  wait_until 20 acked_at_least 50
  qfs_kill "n$old" KILL
  wait "$wpid"
  wait_until 10 cluster_has_leader 3
  new=$(cluster_leader 3)
  [ "$new" != "$old" ]
  node_start "$old" 3
  # Every member applies in log order: once it shows the last acknowledged
  # write, it must show every earlier one.
  last=$(tail -1 "$QFS_TMP/acked")
  for n in 1 2 3; do
    wait_until 15 has_value "$(mnt "$n")" "k$last" "v$last" || {
      echo "k$last missing on n$n (old leader n$old, new leader n$new, writer n$writer)" >&2
      cluster_key_report 3 "/k$last"
      false
    }
    for i in $(cat "$QFS_TMP/acked"); do
      has_value "$(mnt "$n")" "k$i" "v$i" || {
        echo "k$i missing on n$n (old leader n$old, new leader n$new, writer n$writer)" >&2
        cat "$QFS_TMP/write_errors" >&2
        cluster_key_report 3 "/k$i"
        false
      }
    done
  done
  [ "$(wc -l <"$QFS_TMP/acked")" -ge 100 ]
}

@test "a partitioned leader's writes fail at close; the majority goes on; after healing all agree" {
  cluster_start 3
  old=$(cluster_leader 3)
  ip_old=$(node_ip "$old")
  in_ns iptables -A INPUT -s "$ip_old" -j DROP
  in_ns iptables -A INPUT -d "$ip_old" -j DROP
  # dd reports the error of close(2) (bash's builtin echo would not).
  run bash -c "printf lost | dd of='$(mnt "$old")/minority' status=none"
  [ "$status" -ne 0 ]
  [[ "$output" == *"timed out"* || "$output" == *"Input/output error"* ]]
  other=$(( old % 3 + 1 ))
  wait_until 15 bash -c "echo majority > '$(mnt "$other")/majority'"
  in_ns iptables -F INPUT
  for n in 1 2 3; do
    wait_until 15 has_value "$(mnt "$n")" majority majority
  done
  [ ! -e "$(mnt 1)/minority" ] && [ ! -e "$(mnt 2)/minority" ] && [ ! -e "$(mnt 3)/minority" ]
  echo after >"$(mnt "$old")/after"
  for n in 1 2 3; do wait_until 15 has_value "$(mnt "$n")" after after; done
  listing "$(mnt 1)" >"$QFS_TMP/l1"
  listing "$(mnt 2)" >"$QFS_TMP/l2"
  listing "$(mnt 3)" >"$QFS_TMP/l3"
  diff "$QFS_TMP/l1" "$QFS_TMP/l2"
  diff "$QFS_TMP/l1" "$QFS_TMP/l3"
}

@test "a node restarted after more than --snapshot-count writes catches up by snapshot" {
  cluster_start 3 --snapshot-count 50
  qfs_kill n3 TERM
  mkdir "$(mnt 1)/s"
  for i in $(seq 1 200); do echo "v$i" >"$(mnt 1)/s/k$i"; done
  node_start 3 3 --snapshot-count 50
  wait_until 30 has_value "$(mnt 3)" s/k200 v200
  grep -q "installed snapshot" "$QFS_TMP/n3/log"
  for i in 1 77 150 199; do has_value "$(mnt 3)" "s/k$i" "v$i"; done
}

@test "whole-cluster kill -9 and restart loses no acknowledged write" {
  cluster_start 3
  for i in $(seq 1 60); do echo "v$i" >"$(mnt $(( i % 3 + 1 )))/k$i"; done
  for n in 1 2 3; do qfs_kill "n$n" KILL; done
  for n in 1 2 3; do node_start "$n" 3; done
  wait_until 30 cluster_has_leader 3
  for i in $(seq 1 60); do
    for n in 1 2 3; do wait_until 15 has_value "$(mnt "$n")" "k$i" "v$i"; done
  done
}

@test "a member with another cluster token is refused with a clear message" {
  cluster_start 2
  CLUSTER_TOKEN=other node_start 3 3 || true
  pid=$(cat "$QFS_TMP/n3/pid")
  # Member ids derive from the token, so the peers answer as other members
  # (or with another token): either way the handshake names the mismatch.
  wait_until 20 grep -q "refusing to join" "$QFS_TMP/n3/log"
  wait_until 20 sh -c "! kill -0 $pid 2>/dev/null"
  grep -qE "(cluster token|member id|member list) mismatch" "$QFS_TMP/n3/log"
  # The cluster it tried to join is unaffected.
  echo still >"$(mnt 1)/ok"
  wait_until 10 has_value "$(mnt 2)" ok still
}

# etcdctl against member I, inside the cluster's namespace.
ec() { in_ns timeout 20 etcdctl --command-timeout 3s --endpoints "http://$(node_ip "$1"):2379" "${@:2}"; }

@test "a learner serves serializable reads only and its mount is read-only until promoted" {
  cluster_start 2
  echo pre >"$(mnt 1)/pre"
  ec 1 member add n3 --learner --peer-urls=http://127.0.0.13:2380
  node_start 3 3 --initial-cluster-state existing
  wait_until 15 has_value "$(mnt 3)" pre pre
  ec 3 endpoint status -w json | grep -q '"isLearner":true'
  # etcd 3.4 on a learner: Status and serializable Range only.
  [ "$(ec 3 get /pre --consistency=s --print-value-only)" = "pre" ]
  run ec 3 put /a b
  [ "$status" -ne 0 ]
  [[ "$output" == *"rpc not supported for learner"* ]]
  run ec 3 get /pre
  [ "$status" -ne 0 ]
  [[ "$output" == *"rpc not supported for learner"* ]]
  run bash -c "printf 'v\n' | dd of='$(mnt 3)/learner' status=none"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Read-only file system"* ]]
  [ ! -e "$(mnt 1)/learner" ]
  id=$(ec 1 member list | awk -F', ' '$3 == "n3" { print $1 }')
  # etcd promotes a learner only once it is in sync with the leader
  # ("can only promote a learner member which is in sync with leader").
  # quorumfs checks the learner's progress where the request lands, so it
  # must land on the leader (etcd forwards it there itself).
  promote_on_any() { ec 1 member promote "$1" >/dev/null 2>&1 || ec 2 member promote "$1" >/dev/null 2>&1; }
  wait_until 30 promote_on_any "$id" || ec "$(cluster_leader 3)" member promote "$id"
  wait_until 10 bash -c "printf 'v\n' | dd of='$(mnt 3)/learner' status=none 2>/dev/null"
  wait_until 10 has_value "$(mnt 1)" learner v
  ! ec 3 endpoint status -w json | grep -q '"isLearner":true'
}

#!/usr/bin/env bats
# Runtime membership and TLS, driven with etcdctl 3.4 the way an operator
# runs etcd:
#  - a cluster grown one member at a time: node 1 starts alone, `etcdctl
#    member add` (as a voter, or as a learner then `member promote`) prints
#    the --initial-cluster line the new member starts with, together with
#    --initial-cluster-state existing; writes then reach every member,
#    the grown cluster survives the loss of its first member, and `member
#    remove` leaves the others working (the removed member stops itself);
#    every member shows the same members (names, peer and client URLs) and
#    the founding cluster's cluster_id, also after a restart;
#  - a node serving clients over TLS only (--cert-file/--key-file, a
#    self-signed certificate made here): etcdctl with --cacert puts, gets
#    and watches, a plain-text client gets nothing.
# Clusters run in a private network namespace (nodes on 127.0.0.11-13),
# without mounts (the etcd API only); the TLS node runs a mount on
# 127.0.0.1.

load helpers
load etcd_helpers

setup() {
  cluster_setup
  : >"$QFS_TMP/bg.pids"
}

teardown() {
  bg_stop_all
  cluster_teardown
}

# ------------------------------------------------------------------ helpers

# m_start I [flags...]: starts member nI in the namespace, without a mount.
# nsenter runs quorumfs itself (no shell function in between), so the PID
# saved is the server's and teardown's qfs_kill stops the server.
m_start() {
  local i=$1; shift
  local dir=$QFS_TMP/n$i
  mkdir -p "$dir"
  nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" --name "n$i" --data-dir "$dir/data" --mount '' \
    --listen-client-urls "http://$(node_ip "$i"):2379" \
    --listen-peer-urls "http://$(node_ip "$i"):2380" \
    --initial-cluster-token "$CLUSTER_TOKEN" "${CLUSTER_FLAGS[@]}" "$@" \
    >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  echo "$*" >"$dir/flags"
}

# m_restart I: starts nI again with the flags of its last start.
m_restart() {
  local i=$1 flags
  flags=$(cat "$QFS_TMP/n$i/flags")
  # shellcheck disable=SC2086 # the flags hold no spaces
  m_start "$i" $flags
}

# healthy I: member I answers a linearizable read (it has a leader and its
# log is caught up with it).
healthy() { ectl "$1" endpoint health >/dev/null 2>&1; }

wait_healthy() {
  wait_until 30 healthy "$1" || { echo "n$1 is not healthy; log:" >&2; tail -30 "$QFS_TMP/n$1/log" >&2; return 1; }
}

# local_value_is I KEY VALUE: member I's local state (serializable read)
# holds KEY = VALUE.
local_value_is() {
  [ "$(ectl "$1" get "$2" --print-value-only --consistency=s 2>/dev/null)" = "$3" ]
}

# replicated KEY VALUE I...: every listed member reads KEY = VALUE from its
# local state within 10 s.
replicated() {
  local key=$1 val=$2 i; shift 2
  for i in "$@"; do
    wait_until 10 local_value_is "$i" "$key" "$val" ||
      { echo "n$i: $key is '$(ectl "$i" get "$key" --print-value-only --consistency=s 2>&1)', not '$val'" >&2; return 1; }
  done
}

# member_add I NAME J [--learner]: `etcdctl member add` through member I for
# member nJ; checks what etcdctl prints for the new member and leaves its id
# in $QFS_TMP/NAME.id and the --initial-cluster value in $QFS_TMP/NAME.ic.
member_add() {
  local i=$1 name=$2 j=$3; shift 3
  local out=$QFS_TMP/$name.add
  ectl "$i" member add "$name" --peer-urls="http://$(node_ip "$j"):2380" "$@" >"$out" 2>&1 ||
    { cat "$out" >&2; return 1; }
  grep -q "^Member [0-9a-f]* added to cluster [0-9a-f]*" "$out"
  awk '/^Member / { print $2 }' "$out" >"$QFS_TMP/$name.id"
  grep -qx "ETCD_NAME=\"$name\"" "$out"
  grep -qx "ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://$(node_ip "$j"):2380\"" "$out"
  grep -qx 'ETCD_INITIAL_CLUSTER_STATE="existing"' "$out"
  sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' "$out" >"$QFS_TMP/$name.ic"
  grep -q "$name=http://$(node_ip "$j"):2380" "$QFS_TMP/$name.ic"
}

# member_id I NAME: NAME's id in member I's member list.
member_id() {
  ectl "$1" member list | awk -F', ' -v n="$2" '$3 == n { print $1 }'
}

# members I: member I's member list, one "id name peer-urls client-urls
# is-learner" line per member, sorted.
members() {
  local out
  out=$(ectl "$1" member list 2>&1) || { echo "$out"; return 1; }
  printf '%s\n' "$out" | awk -F', ' '{ print $1, $3, $4, $5, $6 }' | LC_ALL=C sort
}

# cluster_view I: member I's `member list -w json` reduced to what every
# member must agree on: the header's cluster_id, then one line per member
# (id, name, peer URLs, client URLs, learner), sorted. Checks that every
# named member nJ publishes http://IP(J):2379 as its client URL, and that
# `endpoint status -w json` shows the same cluster_id.
cluster_view() {
  local i=$1 list status
  list=$(ectl "$i" member list -w json 2>&1) || { echo "$list"; return 1; }
  status=$(ectl "$i" endpoint status -w json 2>&1) || { echo "$status"; return 1; }
  LIST=$list STATUS=$status python3 -c '
import json, os, sys
lst = json.loads(os.environ["LIST"])
st = json.loads(os.environ["STATUS"])
cid = lst["header"]["cluster_id"]
scid = st[0]["Status"]["header"]["cluster_id"]
if scid != cid:
    sys.exit("endpoint status cluster_id %x != member list cluster_id %x" % (scid, cid))
print("cluster_id %x" % cid)
rows = []
for m in lst["members"]:
    name = m.get("name", "")
    client = ",".join(m.get("clientURLs", []))
    if name.startswith("n") and name[1:].isdigit():
        want = "http://127.0.0.1%s:2379" % name[1:]
        if client != want:
            sys.exit("member %s shows client URLs %r, not %r" % (name, client, want))
    rows.append("%x %s %s %s %s" % (m["ID"], name, ",".join(m.get("peerURLs", [])), client,
                                   bool(m.get("isLearner", False))))
print("\n".join(sorted(rows)))
'
}

# same_members WANT_LINES I...: every listed member shows the same member
# list of WANT_LINES members, all "started", with their names, peer and
# client URLs, and the same cluster_id, within 10 s (a member's own
# publication reaches the others through the log).
same_members() {
  wait_until 10 same_members_now "$@" 2>/dev/null || same_members_now "$@"
}

same_members_now() {
  local want=$1 i ref="" view_ref=""; shift
  for i in "$@"; do
    local got view
    got=$(members "$i") || { echo "n$i: member list failed: $got" >&2; return 1; }
    [ "$(printf '%s\n' "$got" | wc -l)" = "$want" ] || { echo "n$i lists: $got" >&2; return 1; }
    ectl "$i" member list | grep -q unstarted && { echo "n$i: a member is unstarted" >&2; return 1; }
    view=$(cluster_view "$i") || { echo "n$i: $view" >&2; return 1; }
    if [ -z "$ref" ]; then
      ref=$got
      view_ref=$view
    elif [ "$got" != "$ref" ]; then
      printf 'member lists differ:\n%s\n--- n%s:\n%s\n' "$ref" "$i" "$got" >&2
      return 1
    elif [ "$view" != "$view_ref" ]; then
      printf 'member list -w json differs:\n%s\n--- n%s:\n%s\n' "$view_ref" "$i" "$view" >&2
      return 1
    fi
  done
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# grow: node 1 alone, n2 added as a voter, n3 added as a learner and
# promoted once caught up; each new member started with what etcdctl
# printed. Leaves a three-voter cluster.
grow() {
  m_start 1 --initial-cluster "n1=http://$(node_ip 1):2380"
  wait_healthy 1
  ectl 1 put /grow/before-n2 1 >/dev/null

  member_add 1 n2 2
  m_start 2 --initial-cluster "$(cat "$QFS_TMP/n2.ic")" --initial-cluster-state existing
  wait_healthy 2
  replicated /grow/before-n2 1 2

  member_add 1 n3 3 --learner
  # Not started yet: etcd lists it unstarted, without a name, as a learner.
  ectl 1 member list | grep -q "^[0-9a-f]*, unstarted, , http://$(node_ip 3):2380, , true$"
  m_start 3 --initial-cluster "$(cat "$QFS_TMP/n3.ic")" --initial-cluster-state existing
  local id3
  id3=$(cat "$QFS_TMP/n3.id")
  [ -n "$id3" ]
  # etcd promotes a learner only once it is in sync with the leader.
  # quorumfs checks the learner's progress where the request lands, so it
  # must land on the leader (etcd forwards it there itself).
  promote_on_any() { ectl 1 member promote "$1" >/dev/null 2>&1 || ectl 2 member promote "$1" >/dev/null 2>&1; }
  wait_until 30 promote_on_any "$id3" ||
    { ectl 1 member promote "$id3" >&2; tail -20 "$QFS_TMP/n3/log" >&2; return 1; }
  wait_healthy 3
  same_members 3 1 2 3
  # Every member reports the founding cluster's id: the one n1 answered
  # `member add` with (n2 and n3 started with longer --initial-cluster lists).
  local cid
  cid=$(cluster_view 3 | awk '$1 == "cluster_id" { print $2 }')
  [ -n "$cid" ]
  grep -q "added to cluster $cid\$" "$QFS_TMP/n2.add"
  grep -q "added to cluster $cid\$" "$QFS_TMP/n3.add"
  run ectl 1 member list
  [ "$status" -eq 0 ]
  [[ "$output" != *", true"* ]] # no learner left
}

# ------------------------------------------------------------------ tests

@test "a cluster grown with member add (a voter; a learner, then promoted) replicates writes to every member" {
  grow
  ectl 1 put /grow/k1 v1
  ectl 2 put /grow/k2 v2
  ectl 3 put /grow/k3 v3
  replicated /grow/k1 v1 1 2 3
  replicated /grow/k2 v2 1 2 3
  replicated /grow/k3 v3 1 2 3
  replicated /grow/before-n2 1 3
  # The same revision everywhere.
  local r1 r2 r3
  r1=$(ectl 1 get /grow/k3 -w json --consistency=s | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])')
  r2=$(ectl 2 get /grow/k3 -w json --consistency=s | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])')
  r3=$(ectl 3 get /grow/k3 -w json --consistency=s | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])')
  [ "$r1" = "$r2" ] && [ "$r2" = "$r3" ]
}

@test "a grown cluster survives the loss of its first member, which catches up when restarted" {
  grow
  qfs_kill n1 KILL
  # n2 and n3 joined by member add: they must hold the configuration to
  # elect a leader between them.
  wait_until 30 ectl 2 put /after/n1-lost yes >/dev/null 2>&1 ||
    { cluster_logs 3; false; }
  replicated /after/n1-lost yes 2 3
  ectl 3 put /after/second ok
  m_restart 1
  wait_healthy 1
  replicated /after/n1-lost yes 1
  replicated /after/second ok 1
  same_members 3 1 2 3
  # A member that joined by snapshot keeps the table and cluster id it
  # learned across a restart.
  qfs_kill n3 KILL
  m_restart 3
  wait_healthy 3
  same_members 3 1 2 3
}

@test "member remove: the removed member stops, the others keep serving reads and writes" {
  grow
  local id2 pid2
  id2=$(member_id 3 n2)
  pid2=$(cat "$QFS_TMP/n2/pid")
  run ectl 1 member remove "$id2"
  [ "$status" -eq 0 ]
  [[ "$output" == "Member $id2 removed from cluster "* ]]
  # Like an etcd member, a removed member stops by itself.
  wait_until 15 pid_gone "$pid2" || { tail -20 "$QFS_TMP/n2/log" >&2; false; }
  grep -q "removed from the cluster" "$QFS_TMP/n2/log"
  same_members 2 1 3
  run members 1
  [[ "$output" != *" n2 "* ]]
  ectl 3 put /rm/a 1
  ectl 1 put /rm/b 2
  replicated /rm/a 1 1 3
  replicated /rm/b 2 1 3
  [ "$(ectl 3 get /rm/b --print-value-only)" = 2 ] # linearizable
  healthy 1
  healthy 3
  # Removing it again: etcd's answer for an unknown member.
  run ectl 1 member remove "$id2"
  [ "$status" -ne 0 ]
  [[ "$output" == *"member not found"* ]]
}

# ------------------------------------------------------------------ TLS

# tls_ectl ARGS...: etcdctl over TLS to the TLS node, trusting its cert.
tls_ectl() {
  timeout 30 "$ETCDCTL_BIN" --endpoints="https://127.0.0.1:$(cat "$QFS_TMP/tls/client_port")" \
    --cacert="$QFS_TMP/tls/cert.pem" --dial-timeout=2s --command-timeout=5s "$@"
}

tls_healthy() { tls_ectl endpoint health >/dev/null 2>&1; }

# probe_seen: a put over TLS shows up in the running watch's output.
probe_seen() {
  tls_ectl put /tls/probe p >/dev/null 2>&1 && grep -qx /tls/probe "$QFS_TMP/tls/watch.out"
}

file_is() { [ "$(cat "$1" 2>/dev/null)" = "$2" ]; }

@test "TLS: etcdctl --cacert puts, gets and watches over https; a plain-text client is refused" {
  local dir=$QFS_TMP/tls cport pport
  mkdir -p "$dir/mnt"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=quorumfs-test \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  cport=$(free_port)
  pport=$(free_port)
  echo "$cport" >"$dir/client_port"
  "$QFS_BIN" --name tls --data-dir "$dir/data" --mount "$dir/mnt" \
    --listen-client-urls "https://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport" \
    --cert-file "$dir/cert.pem" --key-file "$dir/key.pem" \
    "${CLUSTER_FLAGS[@]}" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  wait_until 30 tls_healthy || { cat "$dir/log" >&2; false; }

  # A watch over TLS, started before the writes.
  tls_ectl watch /tls/ --prefix >"$dir/watch.out" 2>&1 &
  bg_add $!
  # The watch is registered once a write it must see is seen.
  wait_until 10 probe_seen || { cat "$dir/watch.out" >&2; false; }

  run tls_ectl put /tls/a 1
  [ "$status" -eq 0 ]
  [ "$output" = OK ]
  run tls_ectl get /tls/a --print-value-only
  [ "$status" -eq 0 ]
  [ "$output" = 1 ]
  tls_ectl del /tls/a
  wait_until 10 grep -qx DELETE "$dir/watch.out"
  grep -A2 -x PUT "$dir/watch.out" | grep -qx 1
  # The same server's mount sees the write made over TLS.
  tls_ectl put /tls/file f
  wait_until 10 file_is "$dir/mnt/tls/file" f

  # Plain text on the TLS port: no answer, nothing written.
  run timeout 30 "$ETCDCTL_BIN" --endpoints="http://127.0.0.1:$cport" \
    --dial-timeout=2s --command-timeout=3s put /tls/plain x
  [ "$status" -ne 0 ]
  [[ "$output" != *OK* ]]
  # An HTTP/2 client without TLS: the server closes the connection.
  run curl -sS --max-time 5 --http2-prior-knowledge -o /dev/null -w '%{http_code}' \
    "http://127.0.0.1:$cport/etcdserverpb.KV/Range"
  [ "$status" -ne 0 ]
  [ "$output" != 200 ] # curl prints 000 when nothing came back
  # TLS without trusting the certificate fails too.
  run timeout 30 "$ETCDCTL_BIN" --endpoints="https://127.0.0.1:$cport" --insecure-transport=false \
    --dial-timeout=2s --command-timeout=3s put /tls/untrusted x
  [ "$status" -ne 0 ]
  run tls_ectl get /tls/ --prefix --keys-only
  [ "$status" -eq 0 ]
  [[ "$output" != *plain* ]]
  [[ "$output" != *untrusted* ]]
  [[ "$output" == *"/tls/probe"* ]]
}

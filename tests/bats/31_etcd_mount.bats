#!/usr/bin/env bats
# etcdctl and the mounts of a three-member cluster (private network
# namespace, nodes on 127.0.0.11-13, clients on port 2379): a change made
# through the etcd API shows up in every node's mount, with etcd's
# revisions as xattrs and the inotify events a local writer would cause;
# a file written through a mount is the key etcdctl reads, with the
# revisions and version the xattrs show; etcdctl watch sees mount writes.

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

has_value() { [ "$(cat "$1/$2" 2>/dev/null)" = "$3" ]; }
xattr() { getfattr --only-values -n "user.quorumfs.$2" "$1" 2>/dev/null; }

# kv_json I KEY: "create mod version value" of KEY as node I's etcd API
# reports it (linearizable get; -w json carries keys and values base64).
kv_json() {
  ectl "$1" get "$2" -w json | python3 -c '
import base64, json, sys
o = json.load(sys.stdin)
kv = (o.get("kvs") or [None])[0]
if kv is None:
    print("absent")
else:
    print(kv.get("create_revision", 0), kv.get("mod_revision", 0), kv.get("version", 0),
          base64.b64decode(kv.get("value", "")).decode())
'
}

# xattr_kv MNT PATH VALUE: "create mod version VALUE" from the file's xattrs.
xattr_kv() {
  printf '%s %s %s %s\n' "$(xattr "$1/$2" create_revision)" "$(xattr "$1/$2" mod_revision)" \
    "$(xattr "$1/$2" version)" "$3"
}

# watch_events I DIR: inotifywait -m -r on node I's DIR into $QFS_TMP/evI,
# returning once its watches are established.
watch_events() {
  local i=$1 dir=$2
  inotifywait -m -r --format '%e %w%f' -o "$QFS_TMP/ev$i" "$dir" 2>"$QFS_TMP/iw$i.err" &
  echo $! >"$QFS_TMP/iw$i.pid"
  bg_add "$(cat "$QFS_TMP/iw$i.pid")"
  wait_until 10 grep -q "Watches established" "$QFS_TMP/iw$i.err"
}

# wait_gone I PATH: PATH disappears from node I's mount (deadline 10 s).
wait_gone() {
  wait_until 10 sh -c "! test -e '$(mnt "$1")/$2'" || { echo "$2 still on n$1" >&2; return 1; }
}

# same_xattrs_everywhere PATH VALUE WANT: on every node the file holds
# VALUE and its xattrs read "create mod version" as in WANT.
same_xattrs_everywhere() {
  local n
  for n in 1 2 3; do
    wait_until 10 has_value "$(mnt "$n")" "$1" "$2" || { echo "$1 is not $2 on n$n" >&2; return 1; }
    wait_until 10 sh -c "[ \"\$(getfattr --only-values -n user.quorumfs.mod_revision '$(mnt "$n")/$1')\" = '$(echo "$3" | cut -d' ' -f2)' ]"
    [ "$(xattr_kv "$(mnt "$n")" "$1" "$2")" = "$3" ] ||
      { echo "n$n xattrs: $(xattr_kv "$(mnt "$n")" "$1" "$2"), etcdctl: $3" >&2; return 1; }
  done
}

@test "etcdctl put, update and del on node 1 show up in every mount, with etcd's revisions as xattrs" {
  cluster_start 3
  run ectl 1 put /app/k v1
  [ "$status" -eq 0 ] && [ "$output" = OK ]
  want=$(kv_json 1 /app/k)
  [ "$(echo "$want" | cut -d' ' -f3-)" = "1 v1" ]
  same_xattrs_everywhere app/k v1 "$want"

  ectl 1 put /app/k v2 >/dev/null
  want2=$(kv_json 2 /app/k)
  [ "$(echo "$want2" | cut -d' ' -f3-)" = "2 v2" ]
  # Same key, same create revision, a later mod revision.
  [ "$(echo "$want2" | cut -d' ' -f1)" = "$(echo "$want" | cut -d' ' -f1)" ]
  [ "$(echo "$want2" | cut -d' ' -f2)" -gt "$(echo "$want" | cut -d' ' -f2)" ]
  same_xattrs_everywhere app/k v2 "$want2"

  run ectl 1 del /app/k
  [ "$status" -eq 0 ] && [ "$output" = 1 ]
  for n in 1 2 3; do wait_gone "$n" app/k; done
  [ "$(kv_json 3 /app/k)" = absent ]
}

@test "etcdctl del --prefix on node 3 removes a subtree from every mount" {
  cluster_start 3
  ectl 3 put /tree/a 1 >/dev/null
  ectl 3 put /tree/sub/b 2 >/dev/null
  for n in 1 2 3; do
    wait_until 10 has_value "$(mnt "$n")" tree/a 1
    wait_until 10 has_value "$(mnt "$n")" tree/sub/b 2
  done
  run ectl 3 del /tree/ --prefix
  [ "$status" -eq 0 ] && [ "$output" = 2 ]
  for n in 1 2 3; do
    wait_gone "$n" tree/a
    wait_gone "$n" tree/sub/b
  done
}

@test "a key put with a lease through etcdctl disappears from every mount when the lease expires" {
  cluster_start 3
  lease=$(ectl 1 lease grant 2 | awk '/granted/{print $2}')
  [ -n "$lease" ]
  ectl 1 put /ttl/k v --lease="$lease" >/dev/null
  for n in 1 2 3; do wait_until 10 has_value "$(mnt "$n")" ttl/k v; done
  # The mount shows the lease the key is attached to.
  [ "$(printf '%016x' "$(xattr "$(mnt 2)/ttl/k" lease)")" = "$lease" ] ||
    { echo "lease xattr $(xattr "$(mnt 2)/ttl/k" lease), etcdctl $lease" >&2; false; }
  for n in 1 2 3; do
    wait_until 15 sh -c "! test -e '$(mnt "$n")/ttl/k'" || { echo "ttl/k still on n$n" >&2; false; }
  done
  [ "$(kv_json 2 /ttl/k)" = absent ]
}

@test "inotifywait on node 2 sees CREATE, MODIFY, CLOSE_WRITE and DELETE for etcdctl put, del, del --prefix and lease expiry on node 1" {
  cluster_start 3
  mkdir "$(mnt 1)/app"
  wait_until 10 test -d "$(mnt 2)/app"
  watch_events 2 "$(mnt 2)/app"
  ev=$QFS_TMP/ev2
  m=$(mnt 2)

  ectl 1 put /app/k v1 >/dev/null
  wait_until 10 grep -q "^CLOSE_WRITE,CLOSE $m/app/k$" "$ev" || { cat "$ev" >&2; false; }
  grep -q "^CREATE $m/app/k$" "$ev"
  grep -q "^MODIFY $m/app/k$" "$ev"
  # An update is a modification of the same file, not a new one.
  ectl 1 put /app/k v2 >/dev/null
  wait_until 10 sh -c "[ \$(grep -c '^CLOSE_WRITE,CLOSE $m/app/k$' '$ev') -ge 2 ]" || { cat "$ev" >&2; false; }
  [ "$(grep -c "^CREATE $m/app/k$" "$ev")" -eq 1 ]
  ectl 1 del /app/k >/dev/null
  wait_until 10 grep -q "^DELETE $m/app/k$" "$ev" || { cat "$ev" >&2; false; }
  # Events come in the order of the changes.
  [ "$(grep -n "^CREATE $m/app/k$" "$ev" | cut -d: -f1)" -lt \
    "$(grep -n "^DELETE $m/app/k$" "$ev" | cut -d: -f1)" ]

  ectl 1 put /app/t/a 1 >/dev/null
  ectl 1 put /app/t/b 2 >/dev/null
  wait_until 10 grep -q "^CLOSE_WRITE,CLOSE $m/app/t/b$" "$ev" || { cat "$ev" >&2; false; }
  ectl 1 del /app/t/ --prefix >/dev/null
  wait_until 10 sh -c "grep -q '^DELETE $m/app/t/a$' '$ev' && grep -q '^DELETE $m/app/t/b$' '$ev'" ||
    { cat "$ev" >&2; false; }

  lease=$(ectl 1 lease grant 2 | awk '/granted/{print $2}')
  ectl 1 put /app/ttl v --lease="$lease" >/dev/null
  wait_until 10 grep -q "^CREATE $m/app/ttl$" "$ev" || { cat "$ev" >&2; false; }
  wait_until 15 grep -q "^DELETE $m/app/ttl$" "$ev" || { cat "$ev" >&2; false; }
}

@test "a file written through a mount is the key etcdctl reads, with the xattrs' revisions and version" {
  cluster_start 3
  mkdir "$(mnt 2)/cfg"
  echo hello >"$(mnt 2)/cfg/f"
  echo again >"$(mnt 2)/cfg/f"
  # A host reads its own write at once; the others catch up.
  own=$(xattr_kv "$(mnt 2)" cfg/f again)
  for n in 1 2 3; do
    got=$(kv_json "$n" /cfg/f)
    # etcdctl's value is the file's content, newline included.
    [ "$got" = "$(echo "$own" | cut -d' ' -f1-3) again" ] ||
      { echo "node $n: etcdctl says '$got', node 2's xattrs say '$own'" >&2; false; }
    wait_until 10 has_value "$(mnt "$n")" cfg/f again
    wait_until 10 sh -c "[ \"\$(getfattr --only-values -n user.quorumfs.mod_revision '$(mnt "$n")/cfg/f')\" = '$(echo "$own" | cut -d' ' -f2)' ]"
    [ "$(xattr_kv "$(mnt "$n")" cfg/f again)" = "$own" ]
  done
  # Written twice: modified after it was created, and more than once.
  [ "$(echo "$own" | cut -d' ' -f1)" -lt "$(echo "$own" | cut -d' ' -f2)" ]
  [ "$(echo "$own" | cut -d' ' -f3)" -ge 2 ]
  # The raw value, byte for byte.
  [ "$(ectl 1 get /cfg/f --print-value-only)" = again ]
  # rm through a mount is a delete that etcdctl sees.
  rm "$(mnt 3)/cfg/f"
  [ "$(kv_json 1 /cfg/f)" = absent ]
}

@test "etcdctl watch on node 3 sees the values written and the delete made through node 1's mount" {
  cluster_start 3
  mkdir "$(mnt 1)/v"
  rev=$(ectl 3 get / --prefix -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
  in_ns timeout 30 "$ETCDCTL_BIN" --endpoints=http://127.0.0.13:2379 watch --prefix /v/ \
    --rev=$((rev + 1)) -w json >"$QFS_TMP/watch" 2>&1 &
  bg_add $!
  echo one >"$(mnt 1)/v/x"
  printf 'more' >>"$(mnt 1)/v/x"
  rm "$(mnt 1)/v/x"
  wait_until 15 grep -q '"type":1' "$QFS_TMP/watch" || { cat "$QFS_TMP/watch" >&2; false; }
  # Non-empty PUT values in order, then the DELETE; revisions increase and
  # the last PUT's revision is the mod_revision etcdctl read before rm.
  got=$(python3 -c '
import base64, json, sys
revs, out = [], []
for line in open(sys.argv[1]):
    for ev in json.loads(line)["Events"]:
        kv = ev["kv"]
        revs.append(kv["mod_revision"])
        if ev.get("type", 0) == 1:
            out.append("DELETE " + base64.b64decode(kv["key"]).decode())
        elif kv.get("value"):
            out.append("PUT %s %r" % (base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]).decode()))
assert revs == sorted(revs) and len(set(revs)) == len(revs), revs
print("; ".join(out))
' "$QFS_TMP/watch")
  [ "$got" = "PUT /v/x 'one\n'; PUT /v/x 'one\nmore'; DELETE /v/x" ] ||
    { echo "watch saw: $got" >&2; cat "$QFS_TMP/watch" >&2; false; }
}

# Also the contract "one put at close": `echo v > f` must not show an empty
# value to watchers first (neither at create nor at O_TRUNC).
@test "etcdctl watch on node 3 sees writes and deletes made through node 1's mount, one PUT per close" {
  cluster_start 3
  mkdir "$(mnt 1)/w"
  rev=$(ectl 3 get / --prefix -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
  # Watching from the next revision: no race with the watch's creation.
  in_ns timeout 30 "$ETCDCTL_BIN" --endpoints=http://127.0.0.13:2379 watch --prefix /w/ \
    --rev=$((rev + 1)) >"$QFS_TMP/watch" 2>&1 &
  bg_add $!
  echo one >"$(mnt 1)/w/x"
  echo two >"$(mnt 1)/w/x"
  rm "$(mnt 1)/w/x"
  wait_until 15 grep -q '^DELETE' "$QFS_TMP/watch" || { cat "$QFS_TMP/watch" >&2; false; }
  # Whole values only: one PUT per close, never an empty or partial value.
  want=$(printf 'PUT\n/w/x\none\n\nPUT\n/w/x\ntwo\n\nDELETE\n/w/x\n') # the value's newline, then etcdctl's
  got=$(cat "$QFS_TMP/watch")
  [ "$got" = "$want" ] || { printf 'etcdctl watch printed:\n%s\nexpected:\n%s\n' "$got" "$want" >&2; false; }
}

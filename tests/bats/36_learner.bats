#!/usr/bin/env bats
# A learner refuses what etcd 3.4's learner refuses (v3rpc/interceptor.go):
# every unary RPC but Status and a serializable Range, and every stream -
# Watch, LeaseKeepAlive and, in etcd 3.4.23, Snapshot too - with UNAVAILABLE
# "etcdserver: rpc not supported for learner". The same etcdctl and
# gateway calls run against a learner of a real etcd 3.4 and of quorumfs;
# the verdicts must match. Both 2-member clusters run in a private network
# namespace on 127.0.0.1 (etcd on 2379-2480, quorumfs on 12379-12480).

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

# lstart DIR KIND NAME CPORT PPORT [flags]: one member, in the namespace.
lstart() {
  local dir=$QFS_TMP/$1 kind=$2 name=$3 c=$4 p=$5; shift 5
  local bin=$QFS_BIN extra=()
  [ "$kind" = etcd ] && bin=$ETCD_BIN
  [ "$kind" = quorumfs ] && extra=(--mount '')
  mkdir -p "$dir"
  nsenter --net="/run/netns/$QFS_NS" "$bin" --name "$name" --data-dir "$dir/data" "${extra[@]}" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    "${SIDE_TIMING[@]}" "$@" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
}

lctl() {
  local c=$1; shift
  in_ns timeout 10 "$ETCDCTL_BIN" --endpoints="127.0.0.1:$c" --dial-timeout=2s \
    --command-timeout=3s "$@"
}

# learner_cluster KIND BASE: a voter a (ports BASE+2379/2380) and a learner b
# (BASE+2479/2480), b started once a added it.
learner_cluster() {
  local kind=$1 base=$2 ca cb pa pb
  ca=$((base + 2379)) pa=$((base + 2380)) cb=$((base + 2479)) pb=$((base + 2480))
  lstart "$kind-a" "$kind" a "$ca" "$pa" --initial-cluster "a=http://127.0.0.1:$pa" \
    --initial-cluster-token learner
  wait_until 30 lctl "$ca" endpoint health >/dev/null 2>&1 || { cat "$QFS_TMP/$kind-a/log" >&2; false; }
  lctl "$ca" member add b --learner --peer-urls="http://127.0.0.1:$pb" >"$QFS_TMP/$kind.add"
  local ic
  ic=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' "$QFS_TMP/$kind.add")
  lstart "$kind-b" "$kind" b "$cb" "$pb" --initial-cluster "$ic" --initial-cluster-state existing \
    --initial-cluster-token learner
  lctl "$ca" put /k v >/dev/null
  # The learner has caught up once its serializable read sees the write.
  wait_until 30 sh -c "[ \"\$(nsenter --net=/run/netns/$QFS_NS timeout 5 $ETCDCTL_BIN \
    --endpoints=127.0.0.1:$cb get /k --consistency=s --print-value-only 2>/dev/null)\" = v ]" ||
    { cat "$QFS_TMP/$kind-b/log" >&2; false; }
}

# verdicts PORT: one line per call against the learner: the call and
# "ok" or the error text.
verdicts() {
  local c=$1 cmd out
  while IFS= read -r cmd; do
    # shellcheck disable=SC2086 # the command words are plain
    out=$(lctl "$c" $cmd 2>&1 </dev/null)
    if [ $? -eq 0 ]; then echo "$cmd: ok"; continue; fi
    echo "$cmd: $(printf '%s\n' "$out" | grep -o 'etcdserver: [a-z ]*' | tail -1)"
  done <<'CMDS'
put /k w
get /k
get /k --consistency=s
del /k
compaction 1
lease grant 10
lease list
lease timetolive 1234
lease revoke 1234
member list
endpoint status
endpoint hashkv
alarm list
defrag
CMDS
  # Streams, through the gateway (etcdctl retries a refused watch silently).
  echo "gateway watch: $(in_ns curl -sS --max-time 3 -XPOST "http://127.0.0.1:$c/v3/watch" \
    -d '{"create_request":{"key":"L2s="}}' 2>/dev/null | grep -o 'etcdserver: [a-z ]*' | head -1)"
  echo "gateway keepalive: $(in_ns curl -sS --max-time 3 -XPOST "http://127.0.0.1:$c/v3/lease/keepalive" \
    -d '{"ID":1234}' 2>/dev/null | grep -o 'etcdserver: [a-z ]*' | head -1)"
  echo "gateway serializable range: $(in_ns curl -sS --max-time 3 -XPOST "http://127.0.0.1:$c/v3/kv/range" \
    -d '{"key":"L2s=","serializable":true}' 2>/dev/null | grep -o '"value":"[^"]*"')"
  if in_ns timeout 30 "$ETCDCTL_BIN" --endpoints="127.0.0.1:$c" snapshot save "$QFS_TMP/snap-$c.db" \
    >"$QFS_TMP/snap-$c.out" 2>&1; then
    echo "snapshot: ok"
  else
    # etcdctl retries the refused stream until it gives up.
    echo "snapshot: failed"
  fi
}

@test "a learner refuses every RPC but Status and serializable Range, streams included, as etcd 3.4's does" {
  learner_cluster etcd 0
  learner_cluster quorumfs 10000
  run verdicts 2479
  local etcd_out=$output
  run verdicts 12479
  echo "--- etcd"; echo "$etcd_out"; echo "--- quorumfs"; echo "$output"
  [ "$output" = "$etcd_out" ]
  [[ "$output" == *"gateway watch: etcdserver: rpc not supported for learner"* ]]
  [[ "$output" == *"member list: etcdserver: rpc not supported for learner"* ]]
  [[ "$output" == *"get /k --consistency=s: ok"* ]]
  [[ "$output" == *"snapshot: failed"* ]]
}

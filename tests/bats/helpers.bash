# helpers.bash - shared setup for the end-to-end tests: start quorumfs nodes
# on loopback, wait for their mounts, and always clean up (by PID, and every
# mount) in teardown, also when a test fails.

QFS_BIN=${QFS_BIN:-$BATS_TEST_DIRNAME/../../build/server/quorumfs}

# Polls "$@" until it succeeds or $1 seconds pass (deadline, not a sleep).
wait_until() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

# A free-ish TCP port on 127.0.0.1, different per test and per process.
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# qfs_start NAME [extra flags...]: starts a single node with data in
# $QFS_TMP/NAME/data and its mount at $QFS_TMP/NAME/mnt. Sets MNT and PID_NAME.
qfs_start() {
  local name=$1; shift
  local dir=$QFS_TMP/$name
  # A disconnected mount left by kill -9 fails mkdir's stat: the node
  # detaches it itself.
  mkdir -p "$dir/mnt" 2>/dev/null || true
  local cport pport
  # A restart keeps its ports: the member id derives from the peer URL.
  if [ -f "$dir/ports" ]; then
    read -r cport pport <"$dir/ports"
  else
    cport=$(free_port); pport=$(free_port)
    echo "$cport $pport" >"$dir/ports"
  fi
  "$QFS_BIN" --name "$name" --data-dir "$dir/data" --mount "$dir/mnt" \
    --listen-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" "$@" \
    >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  echo "$cport" >"$dir/client_port"
  MNT=$dir/mnt
  if ! wait_until 20 mountpoint -q "$dir/mnt"; then
    echo "quorumfs $name did not mount; log:" >&2
    cat "$dir/log" >&2
    return 1
  fi
  # The node is ready once a write goes through (a leader exists).
  wait_until 20 sh -c "echo ready > '$dir/mnt/.qfs-ready' 2>/dev/null && rm -f '$dir/mnt/.qfs-ready'"
}

# qfs_restart NAME [flags]: start again on the same data dir and mount.
qfs_restart() {
  qfs_start "$@"
}

# qfs_kill NAME [SIGNAL]: stops the node by PID and waits for it to exit.
qfs_kill() {
  local dir=$QFS_TMP/$1 sig=${2:-TERM}
  [ -f "$dir/pid" ] || return 0
  local pid
  pid=$(cat "$dir/pid")
  kill "-$sig" "$pid" 2>/dev/null || true
  wait_until 20 sh -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
  # A member's mount is a process of its own (data/mount.pid): after SIGKILL
  # of the member it goes on serving, and the next start keeps it.
}

# mount_kill NAME: kills the mount process of member NAME (SIGKILL) and
# detaches its mount.
mount_kill() {
  local dir=$QFS_TMP/$1 mpid
  if [ -f "$dir/data/mount.pid" ]; then
    mpid=$(cat "$dir/data/mount.pid")
    kill -KILL "$mpid" 2>/dev/null || true
    wait_until 20 sh -c "! kill -0 $mpid 2>/dev/null" || true
  fi
  fusermount3 -uz "$dir/mnt" 2>/dev/null || umount -l "$dir/mnt" 2>/dev/null || true
}

qfs_setup() {
  QFS_TMP=$(mktemp -d /tmp/qfs-bats.XXXXXX)
  export QFS_TMP
}

qfs_teardown() {
  qfs_teardown_keep_ns
  [ -n "${QFS_TMP:-}" ] && rm -rf "$QFS_TMP"
  return 0
}

qfs_teardown_keep_ns() {
  [ -n "${QFS_TMP:-}" ] || return 0
  local d
  for d in "$QFS_TMP"/*/; do
    [ -d "$d" ] && qfs_kill "$(basename "$d")" KILL
  done
  # Every node's mount process and mount, also a disconnected one (which a
  # */mnt glob would not match: stat fails on it).
  for d in "$QFS_TMP"/*/; do
    mount_kill "$(basename "$d")"
  done
  return 0
}

# ---------------------------------------------------------------- clusters
# A cluster runs in a network namespace the test makes itself; nodes listen
# on 127.0.0.11, .12, .13. Processes enter only the namespace's network
# (nsenter --net), so their FUSE mounts stay visible to the test.

CLUSTER_TOKEN=qfs-test
# Timing for tests: a tick of 50 ms, an election timeout of 500 ms.
CLUSTER_FLAGS=(--heartbeat-interval 50 --election-timeout 500 --request-timeout 3000)

cluster_setup() {
  qfs_setup
  QFS_NS=qfs-$$-${BATS_TEST_NUMBER:-0}
  ip netns add "$QFS_NS"
  ip netns exec "$QFS_NS" ip link set lo up
  echo "$QFS_NS" >"$QFS_TMP/netns"
}

cluster_teardown() {
  qfs_teardown_keep_ns
  [ -n "${QFS_NS:-}" ] && ip netns del "$QFS_NS" 2>/dev/null
  [ -n "${QFS_TMP:-}" ] && rm -rf "$QFS_TMP"
  return 0
}

# Runs a command inside the test's network namespace.
in_ns() { nsenter --net="/run/netns/$QFS_NS" "$@"; }

node_ip() { echo "127.0.0.1$1"; }

initial_cluster() { # N
  local i s=""
  for i in $(seq 1 "$1"); do s="$s${s:+,}n$i=http://$(node_ip "$i"):2380"; done
  echo "$s"
}

# node_start I N [extra flags]: starts member nI of an N-member cluster.
node_start() {
  local i=$1 n=$2; shift 2
  local dir=$QFS_TMP/n$i
  mkdir -p "$dir/mnt"
  # nsenter itself (not the in_ns function, which would run in a forked
  # subshell) so that $! is the server's own pid: qfs_kill must signal the
  # server, not a subshell around it.
  nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" --name "n$i" --data-dir "$dir/data" --mount "$dir/mnt" \
    --listen-client-urls "http://$(node_ip "$i"):2379" \
    --listen-peer-urls "http://$(node_ip "$i"):2380" \
    --initial-cluster "$(initial_cluster "$n")" \
    --initial-cluster-token "$CLUSTER_TOKEN" "${CLUSTER_FLAGS[@]}" "$@" \
    >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  wait_until 20 mountpoint -q "$dir/mnt" || { cat "$dir/log" >&2; return 1; }
}

# cluster_start N [extra flags]: starts N members and waits for a leader.
cluster_start() {
  local n=$1; shift
  local i
  for i in $(seq 1 "$n"); do node_start "$i" "$n" "$@"; done
  wait_until 30 cluster_has_leader "$n" || { cluster_logs "$n"; return 1; }
}

mnt() { echo "$QFS_TMP/n$1/mnt"; }

# The member a node last reported as leader ("" if none).
node_sees_leader() {
  grep -E 'leader is|no leader' "$QFS_TMP/n$1/log" 2>/dev/null | tail -1 |
    sed -n 's/.*leader is \([0-9a-f]*\).*/\1/p'
}

# The index i of the node that currently believes it leads.
cluster_leader() { # N
  local i
  for i in $(seq 1 "$1"); do
    [ -f "$QFS_TMP/n$i/pid" ] || continue
    if grep -E 'leader is|no leader' "$QFS_TMP/n$i/log" | tail -1 | grep -q 'this member'; then
      echo "$i"; return 0
    fi
  done
  return 1
}

cluster_has_leader() { cluster_leader "$1" >/dev/null; }

cluster_logs() {
  local i
  for i in $(seq 1 "$1"); do echo "--- n$i" >&2; tail -30 "$QFS_TMP/n$i/log" >&2; done
}

# cluster_key_report N KEY: what every running member holds for KEY (a
# serializable etcd read, so it works on any member), then every member's
# full log. For failure messages; the logs are also copied to
# $BATS_TEST_TMPDIR (kept with bats --no-tempdir-cleanup).
cluster_key_report() {
  local n=$1 key=$2 i
  for i in $(seq 1 "$n"); do
    echo "--- n$i holds $key:" >&2
    in_ns timeout 10 etcdctl --endpoints "http://$(node_ip "$i"):2379" \
      --command-timeout 5s get "$key" --consistency=s -w json >&2 2>&1 || true
    echo >&2
  done
  for i in $(seq 1 "$n"); do
    echo "--- n$i log" >&2
    cat "$QFS_TMP/n$i/log" >&2
    [ -n "${BATS_TEST_TMPDIR:-}" ] && cp "$QFS_TMP/n$i/log" "$BATS_TEST_TMPDIR/n$i.log"
  done
  return 0
}

# A full listing of a mount: path, value and revisions, one line per file.
listing() {
  (cd "$1" && find . -type f | LC_ALL=C sort | while read -r f; do
    printf '%s %s %s %s\n' "$f" "$(sha1sum <"$f" | cut -c1-12)" \
      "$(getfattr --only-values -n user.quorumfs.mod_revision "$f")" \
      "$(getfattr --only-values -n user.quorumfs.version "$f")"
  done)
}

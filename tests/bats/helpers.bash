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
  mkdir -p "$dir/mnt"
  local cport pport
  cport=$(free_port); pport=$(free_port)
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
  # After SIGKILL the mount stays behind, disconnected: detach it.
  if mountpoint -q "$dir/mnt" 2>/dev/null; then
    fusermount3 -uz "$dir/mnt" 2>/dev/null || umount -l "$dir/mnt" 2>/dev/null || true
  fi
}

qfs_setup() {
  QFS_TMP=$(mktemp -d /tmp/qfs-bats.XXXXXX)
  export QFS_TMP
}

qfs_teardown() {
  [ -n "${QFS_TMP:-}" ] || return 0
  local d
  for d in "$QFS_TMP"/*/; do
    [ -d "$d" ] && qfs_kill "$(basename "$d")" KILL
  done
  for d in "$QFS_TMP"/*/mnt; do
    mountpoint -q "$d" 2>/dev/null && { fusermount3 -uz "$d" 2>/dev/null || umount -l "$d"; }
  done
  rm -rf "$QFS_TMP"
}

#!/usr/bin/env bats
# Signals and dying peers: a quorumfs node must survive whatever its clients
# and peers do to their ends of a connection, and stop cleanly when asked.
#  - Clients killed mid-stream, over plain text and over TLS: a single node
#    (no mount) with puts streaming in, then round after round one client is
#    started, waits until it has received data and is killed with SIGKILL:
#    `etcdctl watch --prefix /` (events flowing), `etcdctl snapshot save`
#    (a ~24 MB store, so the kill lands mid-transfer), `etcdctl lease
#    keep-alive`. After every round the server's PID is alive and it answers
#    `endpoint health` and a put. The server writes to sockets with uv_write,
#    which cannot pass MSG_NOSIGNAL: without SIG_IGN for SIGPIPE the write to
#    the dead client's connection kills the server (exit status 141).
#  - Peers killed mid-append: a 3-member cluster in a network namespace under
#    heavy puts (256 KB values); a follower is killed with SIGKILL and
#    restarted, six times, every other time after stopping it (SIGSTOP) until
#    the leader has over 1 MB of appends queued towards it; the other two
#    stay up and accept puts.
#  - The signals audit: SIGUSR1, SIGUSR2, SIGXFSZ and SIGPIPE leave a node
#    serving; SIGHUP, SIGTERM and SIGINT stop it with status 0, its mount
#    detached; after SIGKILL the next start detaches the stale mount.
# Rounds of the first tests: QFS_SIGNAL_ROUNDS (100 by default).

load helpers
load etcd_helpers

ROUNDS=${QFS_SIGNAL_ROUNDS:-100}

setup() {
  cluster_setup
  : >"$QFS_TMP/bg.pids"
}

teardown() {
  client_stop
  bg_stop_all
  # A mount a SIGKILL left disconnected: stat fails on it, so the
  # "$QFS_TMP"/*/mnt glob of helpers.bash does not match it.
  if [ -n "${QFS_TMP:-}" ]; then
    fusermount3 -uz "$QFS_TMP/sig/mnt" 2>/dev/null || umount -l "$QFS_TMP/sig/mnt" 2>/dev/null || true
  fi
  cluster_teardown
}

# ------------------------------------------------------------------ helpers

# The client a round killed or is about to kill; teardown stops it by PID if
# a failed round left it running (a PID is forgotten once reaped).
client_stop() {
  local f=$QFS_TMP/client.pid pid
  [ -n "${QFS_TMP:-}" ] && [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$f"
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# died_how PID LOG: why server PID (a child of this shell) is gone.
died_how() {
  local st=0
  wait "$1" 2>/dev/null || st=$?
  if [ "$st" -gt 128 ]; then
    echo "server exited with status $st (SIG$(kill -l $((st - 128))))"
  else
    echo "server exited with status $st"
  fi
  echo "--- server log:"
  tail -20 "$2"
}

# sig_node_start http|https: a single node "sn" on 127.0.0.1 without a mount,
# clients over SCHEME (https: a self-signed certificate made here, as in
# 32_etcd_members.bats). Sets SPID (the server's PID, a child of this shell).
sig_node_start() {
  local scheme=$1 dir=$QFS_TMP/sn cport pport
  mkdir -p "$dir"
  TLS_ARGS=()
  SERVER_TLS=()
  if [ "$scheme" = https ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=quorumfs-test \
      -addext "subjectAltName=IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    TLS_ARGS=(--cacert="$dir/cert.pem")
    SERVER_TLS=(--cert-file "$dir/cert.pem" --key-file "$dir/key.pem")
  fi
  { read -r cport; read -r pport; } < <(two_free_ports)
  echo "$cport" >"$dir/client_port"
  EP=$scheme://127.0.0.1:$cport
  "$QFS_BIN" --name sn --data-dir "$dir/data" --mount '' \
    --listen-client-urls "$EP" --listen-peer-urls "http://127.0.0.1:$pport" \
    "${SERVER_TLS[@]}" "${CLUSTER_FLAGS[@]}" >>"$dir/log" 2>&1 &
  SPID=$!
  echo "$SPID" >"$dir/pid"
  wait_until 30 sctl_ok endpoint health || { cat "$dir/log" >&2; return 1; }
}

# sctl ARGS...: etcdctl against the single node, over its scheme.
sctl() {
  timeout 30 "$ETCDCTL_BIN" --endpoints="$EP" "${TLS_ARGS[@]}" \
    --dial-timeout=2s --command-timeout=5s "$@"
}

sctl_ok() { sctl "$@" >/dev/null 2>&1; }

# fill_store: eight values of 1 MB of random text (~24 MB of snapshot with
# the store's log), so that a snapshot transfer lasts long enough (~0.2 s on
# loopback) to be cut in the middle.
fill_store() {
  local i
  for i in 1 2 3 4 5 6 7 8; do
    head -c 750000 /dev/urandom | base64 -w0 >"$QFS_TMP/big"
    sctl put "/big/$i" <"$QFS_TMP/big" >/dev/null || return 1
  done
}

# stream_start: puts of 1 KB values in a loop, for as long as the test runs
# (bg_stop_all ends it), so that watches always have events on the way.
stream_start() {
  local pad
  pad=$(head -c 768 /dev/urandom | base64 -w0)
  (
    i=0
    while :; do
      i=$((i + 1))
      sctl put /stream/k "$i-$pad" >/dev/null 2>&1
    done
  ) &
  bg_add $!
}

# client_start ARGS...: etcdctl ARGS in the background, its output in
# $QFS_TMP/round/out; CPID is etcdctl's own PID.
client_start() {
  "$ETCDCTL_BIN" --endpoints="$EP" "${TLS_ARGS[@]}" --dial-timeout=2s "$@" \
    >"$QFS_TMP/round/out" 2>&1 &
  CPID=$!
  echo "$CPID" >"$QFS_TMP/client.pid"
}

# Conditions for "the client has received data".
# The output file appears once the background client has started.
got_event() { grep -qx PUT "$QFS_TMP/round/out" 2>/dev/null; }
got_keepalive() { grep -q "keepalived with TTL" "$QFS_TMP/round/out" 2>/dev/null; }
# Snapshot bytes on disk (etcdctl writes FILE.part, renamed when complete).
got_snapshot_bytes() { [ -s "$QFS_TMP/round/snap.db.part" ] || [ -e "$QFS_TMP/round/snap.db" ]; }

# client_round KIND R: one client of KIND (watch, snapshot, keepalive)
# killed with SIGKILL once it has received data; then the server must be
# alive and serve a health check and a put. A snapshot killed before it
# completed is counted in MID_TRANSFER.
client_round() {
  local kind=$1 r=$2 d=$QFS_TMP/round cond
  rm -rf "$d"
  mkdir -p "$d"
  case $kind in
    watch)
      client_start watch --prefix /
      cond=got_event ;;
    snapshot)
      client_start snapshot save "$d/snap.db"
      cond=got_snapshot_bytes ;;
    keepalive)
      client_start lease keep-alive "$LEASE"
      cond=got_keepalive ;;
  esac
  if ! wait_until 15 "$cond"; then
    echo "round $r: $kind received nothing within 15 s:" >&2
    cat "$d/out" >&2
    return 1
  fi
  kill -KILL "$CPID"
  wait "$CPID" 2>/dev/null || true
  rm -f "$QFS_TMP/client.pid"
  if [ "$kind" = snapshot ] && [ ! -e "$d/snap.db" ]; then
    MID_TRANSFER=$((MID_TRANSFER + 1))
  fi
  # Health and a put first: the server meets the dead connection when it
  # next writes to it, which may be just after the kill.
  local fail=""
  sctl_ok endpoint health || fail="endpoint health failed"
  if [ -z "$fail" ] && [ "$(sctl put /round/last "$r" 2>&1)" != OK ]; then
    fail="a put failed"
  fi
  pid_gone "$SPID" && fail="the server died"
  if [ -n "$fail" ]; then
    echo "round $r: $fail after a $kind client was killed" >&2
    if pid_gone "$SPID"; then
      died_how "$SPID" "$QFS_TMP/sn/log" >&2
    else
      tail -20 "$QFS_TMP/sn/log" >&2
    fi
    return 1
  fi
}

# clients_killed_mid_stream http|https: the whole scenario.
clients_killed_mid_stream() {
  sig_node_start "$1"
  fill_store
  LEASE=$(sctl lease grant 600 | awk '/granted/ { print $2 }')
  [ -n "$LEASE" ]
  stream_start
  local kinds=(watch snapshot keepalive) r snaps=0
  MID_TRANSFER=0
  for r in $(seq 1 "$ROUNDS"); do
    local kind=${kinds[$(((r - 1) % 3))]}
    [ "$kind" = snapshot ] && snaps=$((snaps + 1))
    client_round "$kind" "$r" || return 1
  done
  echo "# $1: $ROUNDS rounds, $MID_TRANSFER of $snaps snapshots cut mid-transfer" >&3
  # Most snapshot clients must have died mid-transfer, or the test did not
  # test what it says.
  [ "$MID_TRANSFER" -ge $(((snaps + 1) / 2)) ] ||
    { echo "only $MID_TRANSFER of $snaps snapshot transfers were cut" >&2; return 1; }
  # The stream went on throughout.
  [ "$(sctl get /stream/k --print-value-only | cut -d- -f1)" -gt 0 ]
  # And the node still stops cleanly.
  kill -TERM "$SPID"
  wait_until 20 pid_gone "$SPID"
  local st=0
  wait "$SPID" || st=$?
  [ "$st" -eq 0 ] || { echo "exit status $st after SIGTERM" >&2; tail -20 "$QFS_TMP/sn/log" >&2; return 1; }
  rm -f "$QFS_TMP/sn/pid"
}

# ------------------------------------------------------------------ tests

@test "clients killed with SIGKILL mid-stream (watch, snapshot, keep-alive), plain text: the server lives on" {
  clients_killed_mid_stream http
}

@test "clients killed with SIGKILL mid-stream (watch, snapshot, keep-alive), TLS: the server lives on" {
  clients_killed_mid_stream https
}

# ---------------------------------------------------------- peers killed

# heavy_writer I: puts of 256 KB values to member I in a loop; each
# acknowledged put adds a line to $QFS_TMP/acked.
heavy_writer() {
  local i=$1 w=$2
  (
    k=0
    while :; do
      k=$((k + 1))
      ectl "$i" put "/heavy/w$w-$((k % 16))" <"$QFS_TMP/heavy" >/dev/null 2>&1 &&
        echo "$w $k" >>"$QFS_TMP/acked"
    done
  ) &
  bg_add $!
}

acked() { wc -l <"$QFS_TMP/acked"; }
acked_at_least() { [ "$(acked)" -ge "$1" ]; }

local_value_is() {
  [ "$(ectl "$1" get "$2" --print-value-only --consistency=s 2>/dev/null)" = "$3" ]
}

# queued_to I J: bytes member I has written towards member J that J has not
# read yet (the Send-Q of I's connections to J, from inside the namespace).
queued_to() {
  in_ns ss -tnH state established src "$(node_ip "$1")" dst "$(node_ip "$2")" |
    awk '{ q += $2 } END { print q + 0 }'
}

# How much a stopped follower leaves unread before it is killed (bytes).
STALL_QUEUE_BYTES=1048576

queue_to_over() { [ "$(queued_to "$1" "$2")" -gt "$3" ]; }

@test "followers killed with SIGKILL mid-append, six times: the leader and the other follower live on" {
  cluster_start 3
  local leader f other r i base fpid
  leader=$(cluster_leader 3)
  head -c 196608 /dev/urandom | base64 -w0 >"$QFS_TMP/heavy"
  : >"$QFS_TMP/acked"
  heavy_writer "$leader" 1
  heavy_writer "$leader" 2
  for r in 1 2 3 4 5 6; do
    leader=$(cluster_leader 3)
    # The followers take turns.
    f=$(((leader + r % 2) % 3 + 1))
    other=$((6 - leader - f))
    fpid=$(cat "$QFS_TMP/n$f/pid")
    # Appends are flowing to the follower: more puts were acknowledged
    # since it (re)joined.
    base=$(acked)
    wait_until 20 acked_at_least $((base + 4)) ||
      { echo "round $r: the writers are stuck at $base puts" >&2; cluster_logs 3; false; }
    if [ $((r % 2)) -eq 0 ]; then
      # A follower that stalls, then dies: the leader has appends queued
      # in the socket (over STALL_QUEUE_BYTES unread) when the kill resets it.
      kill -STOP "$fpid"
      wait_until 60 queue_to_over "$leader" "$f" "$STALL_QUEUE_BYTES" ||
        { echo "round $r: n$leader queued only $(queued_to "$leader" "$f") bytes to stopped n$f" >&2; false; }
    fi
    qfs_kill "n$f" KILL
    for i in "$leader" "$other"; do
      kill -0 "$(cat "$QFS_TMP/n$i/pid")" ||
        { echo "round $r: n$i died after follower n$f was killed (leader n$leader)" >&2; cluster_logs 3; false; }
    done
    ectl "$leader" put "/after/$r" ok
    ectl "$other" put "/after/$r/other" ok
    for i in "$leader" "$other"; do
      kill -0 "$(cat "$QFS_TMP/n$i/pid")" ||
        { echo "round $r: n$i died after follower n$f was killed (leader n$leader)" >&2; cluster_logs 3; false; }
    done
    node_start "$f" 3
    # Caught up again before the next round.
    wait_until 30 local_value_is "$f" "/after/$r/other" ok ||
      { echo "round $r: n$f did not catch up" >&2; cluster_logs 3; false; }
  done
  echo "# $(acked) heavy puts acknowledged" >&3
  for i in 1 2 3; do kill -0 "$(cat "$QFS_TMP/n$i/pid")"; done
}

# ---------------------------------------------------------- signals audit

# serves NAME VALUE: node NAME takes a put over etcdctl and a write through
# its mount.
serves() {
  local dir=$QFS_TMP/$1
  [ "$(timeout 30 "$ETCDCTL_BIN" --endpoints="127.0.0.1:$(cat "$dir/client_port")" \
    --dial-timeout=2s --command-timeout=5s put /audit "$2" 2>&1)" = OK ] &&
    printf '%s\n' "$2" | dd of="$dir/mnt/audit" status=none
}

# stops_cleanly SIG: SIG stops node "sig" with status 0, its mount detached,
# and a "received SIG, stopping" line in its log.
stops_cleanly() {
  local sig=$1 dir=$QFS_TMP/sig pid st=0
  pid=$(cat "$dir/pid")
  kill "-$sig" "$pid"
  wait_until 20 pid_gone "$pid" || { echo "SIG$sig did not stop the node" >&2; tail -20 "$dir/log" >&2; return 1; }
  wait "$pid" || st=$?
  rm -f "$dir/pid"
  [ "$st" -eq 0 ] || { echo "exit status $st after SIG$sig" >&2; tail -20 "$dir/log" >&2; return 1; }
  ! mountpoint -q "$dir/mnt" || { echo "the mount is still there after SIG$sig" >&2; return 1; }
  grep -q "received SIG$sig, stopping" "$dir/log" ||
    { echo "no 'received SIG$sig, stopping' in the log" >&2; tail -20 "$dir/log" >&2; return 1; }
}

# start_over_stale_mount: node "sig" started again on its ports, data and
# mount, as qfs_start does, but without its `mkdir -p` of the mount, which
# fails on a disconnected mount.
start_over_stale_mount() {
  local dir=$QFS_TMP/sig cport pport
  read -r cport pport <"$dir/ports"
  "$QFS_BIN" --name sig --data-dir "$dir/data" --mount "$dir/mnt" \
    --listen-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport" \
    "${CLUSTER_FLAGS[@]}" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  wait_until 20 mountpoint -q "$dir/mnt" || { tail -20 "$dir/log" >&2; return 1; }
}

@test "SIGUSR1, SIGUSR2, SIGXFSZ, SIGPIPE are ignored; SIGHUP, SIGTERM, SIGINT stop cleanly; the mount outlives a SIGKILL; a killed mount is detached at the next start" {
  local pid sig
  qfs_start sig "${CLUSTER_FLAGS[@]}"
  pid=$(cat "$QFS_TMP/sig/pid")
  serves sig v0
  for sig in USR1 USR2 XFSZ PIPE; do
    kill "-$sig" "$pid"
    serves sig "after-$sig" || { echo "no put after SIG$sig" >&2; died_how "$pid" "$QFS_TMP/sig/log" >&2; false; }
    kill -0 "$pid"
  done
  [ "$(cat "$QFS_TMP/sig/mnt/audit")" = after-PIPE ]

  for sig in HUP TERM INT; do
    [ -f "$QFS_TMP/sig/pid" ] || qfs_restart sig "${CLUSTER_FLAGS[@]}"
    serves sig "before-$sig"
    stops_cleanly "$sig"
  done

  # SIGKILL of the member: its mount is a process of its own and lives on,
  # serving the last state read-only; the next start keeps it.
  qfs_restart sig "${CLUSTER_FLAGS[@]}"
  pid=$(cat "$QFS_TMP/sig/pid")
  kill -KILL "$pid"
  wait_until 20 pid_gone "$pid"
  wait "$pid" || true
  rm -f "$QFS_TMP/sig/pid"
  [ "$(cat "$QFS_TMP/sig/mnt/audit")" = before-INT ]
  wait_until 10 sh -c "[ \"\$(getfattr --only-values -n user.quorumfs.connected '$QFS_TMP/sig/mnt')\" = 0 ]"
  start_over_stale_mount # returns at once: the mount is up
  wait_until 20 grep -q "outlived the previous run: kept" "$QFS_TMP/sig/log"
  wait_until 20 serves sig after-kill
  [ "$(cat "$QFS_TMP/sig/mnt/audit")" = after-kill ]

  # SIGKILL of the mount process itself leaves the mount disconnected; the
  # next start of the member detaches it and mounts again.
  local mpid
  mpid=$(cat "$QFS_TMP/sig/data/mount.pid")
  qfs_kill sig TERM
  qfs_restart sig "${CLUSTER_FLAGS[@]}"
  mpid=$(cat "$QFS_TMP/sig/data/mount.pid")
  pid=$(cat "$QFS_TMP/sig/pid")
  kill -KILL "$pid" "$mpid"
  wait_until 20 pid_gone "$pid"
  wait_until 20 pid_gone "$mpid"
  wait "$pid" || true
  rm -f "$QFS_TMP/sig/pid"
  run stat "$QFS_TMP/sig/mnt/audit"
  [ "$status" -ne 0 ]
  [[ "$output" == *"not connected"* ]]
  start_over_stale_mount
  grep -q "detached a stale mount" "$QFS_TMP/sig/log"
  serves sig after-mount-kill
  [ "$(cat "$QFS_TMP/sig/mnt/audit")" = after-mount-kill ]
}

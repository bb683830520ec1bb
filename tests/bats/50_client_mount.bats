#!/usr/bin/env bats
# Client mounts (`quorumfs mount`) of a three-member cluster, quorumfs or a
# real etcd 3.4, on three more "hosts": separate mount processes, mountpoints
# and caches, all in a private network namespace. Host 3 reaches the members
# on a client port of its own (2479), so iptables can cut it off alone.

load helpers

setup() {
  cluster_setup
}

teardown() {
  cluster_teardown
}

export ETCDCTL_API=3
EPS="http://127.0.0.11:2379,http://127.0.0.12:2379,http://127.0.0.13:2379"

# srv_start KIND I: starts member nI (KIND quorumfs or etcd) of a 3-member
# cluster, without a mount; a restart reuses its data.
srv_start() {
  local kind=$1 i=$2 ip dir=$QFS_TMP/n$2
  ip=$(node_ip "$i")
  mkdir -p "$dir"
  if [ "$kind" = etcd ]; then
    nsenter --net="/run/netns/$QFS_NS" etcd --name "n$i" --data-dir "$dir/data" \
      --listen-client-urls "http://$ip:2379,http://$ip:2479" \
      --advertise-client-urls "http://$ip:2379" \
      --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
      --initial-cluster "$(initial_cluster 3)" --initial-cluster-token "$CLUSTER_TOKEN" \
      --heartbeat-interval 50 --election-timeout 500 >>"$dir/log" 2>&1 &
  else
    nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" --name "n$i" --data-dir "$dir/data" \
      --mount '' --listen-client-urls "http://$ip:2379,http://$ip:2479" \
      --listen-peer-urls "http://$ip:2380" --initial-cluster "$(initial_cluster 3)" \
      --initial-cluster-token "$CLUSTER_TOKEN" "${CLUSTER_FLAGS[@]}" >>"$dir/log" 2>&1 &
  fi
  echo $! >"$dir/pid"
  echo "$kind" >"$QFS_TMP/kind"
}

ectl() { in_ns timeout 20 etcdctl --endpoints="$EPS" "$@"; }
healthy() { ectl endpoint health --cluster >/dev/null 2>&1 && ectl put /.ready 1 >/dev/null 2>&1; }

srv_cluster() { # KIND
  local i
  for i in 1 2 3; do srv_start "$1" "$i"; done
  wait_until 30 healthy || { for i in 1 2 3; do tail -20 "$QFS_TMP/n$i/log" >&2; done; false; }
  ectl del /.ready >/dev/null
}

srv_kill_all() {
  local i
  for i in 1 2 3; do qfs_kill "n$i" KILL; done
}

srv_restart_all() {
  local i
  for i in 1 2 3; do srv_start "$(cat "$QFS_TMP/kind")" "$i"; done
  wait_until 30 healthy
  ectl del /.ready >/dev/null
}

cmnt() { echo "$QFS_TMP/c$1/mnt"; }
connected() { [ "$(getfattr --only-values -n user.quorumfs.connected "$(cmnt "$1")" 2>/dev/null)" = 1 ]; }
disconnected() { [ "$(getfattr --only-values -n user.quorumfs.connected "$(cmnt "$1")" 2>/dev/null)" = 0 ]; }

# client_start H [flags]: client mount of host H in $QFS_TMP/cH (pid, log,
# cache, mnt); host 3 uses port 2479. Waits until mounted.
client_start() {
  local h=$1 port=2379; shift
  local dir=$QFS_TMP/c$h
  [ "$h" = 3 ] && port=2479
  mkdir -p "$dir/mnt"
  nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" mount --foreground \
    --endpoints "http://127.0.0.11:$port,http://127.0.0.12:$port,http://127.0.0.13:$port" \
    --cache-dir "$dir/cache" --dial-timeout 1s --command-timeout 3s "$@" "$dir/mnt" \
    >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  wait_until 20 mountpoint -q "$dir/mnt" || { cat "$dir/log" >&2; return 1; }
}

# iw_start NAME DIR: inotifywait -m -r on DIR, events in $QFS_TMP/NAME/ev.
iw_start() {
  local d=$QFS_TMP/$1
  mkdir -p "$d"
  inotifywait -m -r --format '%e %w%f' -o "$d/ev" "$2" 2>"$d/err" &
  echo $! >"$d/pid"
  wait_until 10 grep -q "Watches established" "$d/err"
}
ev() { cat "$QFS_TMP/$1/ev" 2>/dev/null; }
# count NAME LINE: how many times the watcher NAME printed exactly LINE.
count() { ev "$1" | grep -cxF "$2" || true; }
has_value() { [ "$(cat "$1" 2>/dev/null)" = "$2" ]; }

# ---------------------------------------------------------------- basics

mounts_read_write_and_see_events() { # KIND
  srv_cluster "$1"
  ectl put /app/a 1 >/dev/null
  local h
  for h in 1 2 3; do client_start "$h"; done
  for h in 1 2 3; do
    wait_until 10 connected "$h"
    [ "$(cat "$(cmnt "$h")/app/a")" = 1 ]
  done
  for h in 1 2 3; do iw_start "iw$h" "$(cmnt "$h")/app"; done

  # A write on a member: read and seen by inotifywait on every client.
  ectl put /app/b 2 >/dev/null
  for h in 1 2 3; do
    local m
    m=$(cmnt "$h")
    wait_until 10 has_value "$m/app/b" 2
    wait_until 10 grep -qxF "CLOSE_WRITE,CLOSE $m/app/b" "$QFS_TMP/iw$h/ev" || { ev "iw$h" >&2; false; }
    [ "$(count "iw$h" "CREATE $m/app/b")" = 1 ]
  done

  # A write through client 1: etcdctl sees it, client 2 reads it, and
  # client 1's own watcher sees it once (the watch echo is not replayed).
  echo 3 >"$(cmnt 1)/app/c"
  [ "$(cat "$(cmnt 1)/app/c")" = 3 ] # read your own write at once
  [ "$(ectl get --print-value-only /app/c)" = 3 ]
  wait_until 10 has_value "$(cmnt 2)/app/c" 3
  wait_until 10 grep -qxF "CLOSE_WRITE,CLOSE $(cmnt 2)/app/c" "$QFS_TMP/iw2/ev"
  # The events of c on client 2 arrived after client 1's put; a replay of
  # client 1's own write would have arrived by now as well.
  [ "$(count iw1 "CREATE $(cmnt 1)/app/c")" = 1 ]
  [ "$(count iw1 "CLOSE_WRITE,CLOSE $(cmnt 1)/app/c")" = 1 ]

  # rm and O_EXCL through the client mount.
  rm "$(cmnt 1)/app/a"
  [ -z "$(ectl get /app/a)" ]
  set -o noclobber
  ! { echo x >"$(cmnt 1)/app/b"; } 2>/dev/null
  set +o noclobber
  [ "$(ectl get --print-value-only /app/b)" = 2 ]
  wait_until 10 test ! -e "$(cmnt 3)/app/a"
  wait_until 10 grep -qxF "DELETE $(cmnt 3)/app/a" "$QFS_TMP/iw3/ev"
  # Revisions as xattrs, the same as etcd's.
  local rev
  rev=$(ectl get /app/b -w json | sed -n 's/.*"mod_revision":\([0-9]*\).*/\1/p')
  [ "$(getfattr --only-values -n user.quorumfs.mod_revision "$(cmnt 2)/app/b")" = "$rev" ]
}

@test "client mounts of a quorumfs cluster: read, write, inotify on every host" {
  mounts_read_write_and_see_events quorumfs
}

@test "client mounts of an etcd 3.4 cluster: read, write, inotify on every host" {
  mounts_read_write_and_see_events etcd
}

# ---------------------------------------------------------------- resume

cut_off_and_compact() { # KIND
  srv_cluster "$1"
  ectl put /app/keep k >/dev/null
  ectl put /app/mod old >/dev/null
  ectl put /app/gone g >/dev/null
  client_start 3
  wait_until 10 connected 3
  iw_start iw3 "$(cmnt 3)/app"
  local m
  m=$(cmnt 3)

  # Cut host 3 off (its port, both directions) until it notices.
  in_ns iptables -A INPUT -p tcp --dport 2479 -j DROP
  in_ns iptables -A INPUT -p tcp --sport 2479 -j DROP
  wait_until 20 disconnected 3
  ectl put /app/new n >/dev/null
  ectl put /app/mod new >/dev/null
  ectl del /app/gone >/dev/null
  local rev
  rev=$(ectl get /app/new -w json | sed -n 's/.*"revision":\([0-9]*\).*/\1/p' | head -1)
  ectl compact "$rev" >/dev/null
  # Offline: the last state seen is served, writes fail at once.
  [ "$(cat "$m/app/mod")" = old ]
  run sh -c "printf x | dd of='$m/app/w' status=none 2>&1"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Read-only file system"* ]]

  in_ns iptables -F INPUT
  wait_until 20 connected 3 || { cat "$QFS_TMP/c3/log" >&2; false; }
  wait_until 10 has_value "$m/app/mod" new
  wait_until 10 test -e "$m/app/new"
  wait_until 10 test ! -e "$m/app/gone"
  wait_until 10 grep -qxF "DELETE $m/app/gone" "$QFS_TMP/iw3/ev" || { ev iw3 >&2; false; }
  wait_until 10 grep -qxF "CLOSE_WRITE,CLOSE $m/app/new" "$QFS_TMP/iw3/ev" || { ev iw3 >&2; false; }
  wait_until 10 grep -qxF "CLOSE_WRITE,CLOSE $m/app/mod" "$QFS_TMP/iw3/ev" || { ev iw3 >&2; false; }
  grep -q "compacted" "$QFS_TMP/c3/log"
  # Exactly the missed changes, once each, and nothing about keep.
  [ "$(count iw3 "CREATE $m/app/new")" = 1 ]
  [ "$(count iw3 "CLOSE_WRITE,CLOSE $m/app/new")" = 1 ]
  [ "$(count iw3 "CLOSE_WRITE,CLOSE $m/app/mod")" = 1 ]
  [ "$(count iw3 "DELETE $m/app/gone")" = 1 ]
  ! ev iw3 | grep -q "/app/keep"
}

@test "a client cut off while keys change and are compacted sees exactly the missed changes (quorumfs)" {
  cut_off_and_compact quorumfs
}

@test "a client cut off while keys change and are compacted sees exactly the missed changes (etcd)" {
  cut_off_and_compact etcd
}

@test "kill -9 of every member: client mounts serve the last state, then catch up by themselves" {
  srv_cluster quorumfs
  ectl put /app/x 1 >/dev/null
  client_start 1
  client_start 2
  wait_until 10 connected 1
  wait_until 10 connected 2
  iw_start iw1 "$(cmnt 1)/app"
  srv_kill_all
  wait_until 20 disconnected 1
  [ "$(cat "$(cmnt 1)/app/x")" = 1 ]
  [ "$(cat "$(cmnt 2)/app/x")" = 1 ]
  [ "$(getfattr --only-values -n user.quorumfs.revision "$(cmnt 1)")" -ge 2 ]
  srv_restart_all
  wait_until 20 connected 1
  wait_until 20 connected 2
  ectl put /app/y 2 >/dev/null
  wait_until 10 has_value "$(cmnt 1)/app/y" 2
  wait_until 10 has_value "$(cmnt 2)/app/y" 2
  wait_until 10 grep -qxF "CLOSE_WRITE,CLOSE $(cmnt 1)/app/y" "$QFS_TMP/iw1/ev"
}

@test "a client restarted while the cluster is down serves its cached state" {
  srv_cluster quorumfs
  ectl put /app/x cached >/dev/null
  client_start 1
  wait_until 10 has_value "$(cmnt 1)/app/x" cached
  qfs_kill c1 TERM
  ! mountpoint -q "$(cmnt 1)"
  srv_kill_all
  client_start 1
  disconnected 1
  [ "$(cat "$(cmnt 1)/app/x")" = cached ]
  # Unreachable endpoints: a clear log line, retried.
  wait_until 10 grep -q "next try" "$QFS_TMP/c1/log" || { cat "$QFS_TMP/c1/log" >&2; false; }
  srv_restart_all
  wait_until 20 connected 1
}

# ---------------------------------------------------------------- bad input

@test "quorumfs mount refuses a live mount, a non-empty directory and unreadable certificates" {
  srv_cluster quorumfs
  client_start 1
  run "$QFS_BIN" mount --foreground --endpoints "$EPS" --cache-dir "$QFS_TMP/other" "$(cmnt 1)"
  [ "$status" -ne 0 ]
  [[ "$output" == *"already a mount point"* ]]
  mkdir -p "$QFS_TMP/full"
  touch "$QFS_TMP/full/f"
  run "$QFS_BIN" mount --foreground --endpoints "$EPS" --cache-dir "$QFS_TMP/other" "$QFS_TMP/full"
  [ "$status" -ne 0 ]
  [[ "$output" == *"not empty"* ]]
  mkdir -p "$QFS_TMP/c4/mnt"
  run "$QFS_BIN" mount --foreground --endpoints "https://127.0.0.11:2379" \
    --cacert "$QFS_TMP/missing.pem" --cache-dir "$QFS_TMP/other" "$QFS_TMP/c4/mnt"
  [ "$status" -ne 0 ]
  [[ "$output" == *"missing.pem"* ]]
  ! mountpoint -q "$QFS_TMP/c4/mnt"
  run "$QFS_BIN" mount --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--endpoints"* && "$output" == *"--cache-dir"* && "$output" == *"--read-only"* ]]
}

@test "a key too long for a file name is listed and read through a client mount; --read-only refuses writes" {
  srv_cluster quorumfs
  local long
  long=$(printf 'k%.0s' $(seq 1 300))
  ectl put "/app/$long" longvalue >/dev/null
  client_start 1 --read-only
  wait_until 10 connected 1
  local name
  name=$(ls "$(cmnt 1)/app")
  [ -n "$name" ]
  [ "${#name}" -le 255 ]
  [ "$(cat "$(cmnt 1)/app/$name")" = longvalue ]
  run sh -c "printf x | dd of='$(cmnt 1)/app/w' status=none 2>&1"
  [ "$status" -ne 0 ]
  [ -z "$(ectl get /app/w)" ]
}

# ---------------------------------------------------------------- member mounts

@test "a member's mount outlives kill -9 of the member: a watcher started before sees what changed while it was down (by snapshot) and after its restart" {
  cluster_start 3 --snapshot-count 50
  mkdir "$(mnt 1)/s"
  wait_until 10 test -d "$(mnt 3)/s"
  iw_start iw3 "$(mnt 3)/s"
  local pid
  pid=$(cat "$QFS_TMP/n3/pid")
  qfs_kill n3 KILL
  # The mount lives on and serves the last state, read-only.
  test -d "$(mnt 3)/s"
  wait_until 20 sh -c "[ \"\$(getfattr --only-values -n user.quorumfs.connected '$(mnt 3)')\" = 0 ]"
  local i
  for i in $(seq 1 120); do printf 'v%s' "$i" | dd of="$(mnt 1)/s/k$i" status=none; done
  node_start 3 3 --snapshot-count 50
  wait_until 20 grep -q "outlived the previous run: kept" "$QFS_TMP/n3/log"
  wait_until 30 grep -qxF "CLOSE_WRITE,CLOSE $(mnt 3)/s/k120" "$QFS_TMP/iw3/ev" ||
    { tail -20 "$QFS_TMP/n3/log" >&2; false; }
  grep -q "installed snapshot" "$QFS_TMP/n3/log"
  # Every missed change once.
  for i in 1 60 120; do
    [ "$(count iw3 "CLOSE_WRITE,CLOSE $(mnt 3)/s/k$i")" = 1 ]
  done
  printf after | dd of="$(mnt 1)/s/after" status=none
  wait_until 10 grep -qxF "CLOSE_WRITE,CLOSE $(mnt 3)/s/after" "$QFS_TMP/iw3/ev"
  [ "$(cat "$(mnt 3)/s/after")" = after ]
  kill -0 "$(cat "$QFS_TMP/iw3/pid")" # the same inotifywait, alive throughout
}

@test "quorumfs mount over TLS: the right CA mounts, a wrong CA fails at once with a clear message" {
  local dir=$QFS_TMP/n1
  mkdir -p "$dir" "$QFS_TMP/wrong"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=quorumfs-test \
    -addext "subjectAltName=IP:127.0.0.11" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other-ca \
    -addext "subjectAltName=IP:127.0.0.11" -keyout "$QFS_TMP/wrong/key.pem" \
    -out "$QFS_TMP/wrong/cert.pem" 2>/dev/null
  nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" --name n1 --data-dir "$dir/data" --mount '' \
    --listen-client-urls "https://127.0.0.11:2379" --listen-peer-urls "http://127.0.0.11:2380" \
    --cert-file "$dir/cert.pem" --key-file "$dir/key.pem" "${CLUSTER_FLAGS[@]}" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  wait_until 20 in_ns etcdctl --endpoints=https://127.0.0.11:2379 --cacert "$dir/cert.pem" put /app/t tls
  mkdir -p "$QFS_TMP/c1/mnt" "$QFS_TMP/c2/mnt"
  run in_ns timeout 20 "$QFS_BIN" mount --foreground --endpoints https://127.0.0.11:2379 \
    --cacert "$QFS_TMP/wrong/cert.pem" --cache-dir "$QFS_TMP/c2/cache" "$QFS_TMP/c2/mnt"
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ]
  [[ "$output" == *"TLS"* ]]
  ! mountpoint -q "$QFS_TMP/c2/mnt"
  client_start 1 --endpoints https://127.0.0.11:2379 --cacert "$dir/cert.pem"
  wait_until 10 connected 1
  [ "$(cat "$(cmnt 1)/app/t")" = tls ]
}

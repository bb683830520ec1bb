#!/usr/bin/env bats
# Whole values through the mount: what ordinary programs write is put once,
# whole, when they finish (etcdctl watch sees exactly those puts), every
# host's inotify watchers see the same events as a local filesystem would
# give, other users read but do not write, a live mount is not mounted over,
# and names with '%', spaces, UTF-8, 255+ bytes and keys that are also
# prefixes work.

load helpers
load etcd_helpers

setup() {
  qfs_setup
}

teardown() {
  local f
  for f in "$QFS_TMP"/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  bg_stop_all 2>/dev/null
  [ -n "${QFS_NS:-}" ] && { cluster_teardown; return 0; }
  qfs_teardown
}

# The programs, one per line: each runs in the directory given to run_programs.
# $SRC is a local file holding "src-content\n".
PROGRAMS=(
  "echo v1 > echo"
  "printf p1 > printf"
  "{ echo '[main]'; echo host; echo b=2; } > gen.conf"
  "(printf a; sleep 0.3; printf b) > slow"
  "cat \"\$SRC\" > cat"
  "cp \"\$SRC\" cp"
  "dd if=\"\$SRC\" of=dd conv=fsync status=none"
  "echo t | tee tee >/dev/null"
  "sed -i s/v1/v2/ echo"
  "ex -n -s -c '%s/p1/p2/' -c wq printf"
  "install -m 0600 \"\$SRC\" install"
  "mv cp moved"
)

# run_programs DIR [MARK_CMD]: runs every program in DIR; after each one runs
# MARK_CMD N (a function that waits until the step's events are in).
run_programs() {
  local dir=$1 mark=${2:-} i=0 cmd
  for cmd in "${PROGRAMS[@]}"; do
    i=$((i + 1))
    (cd "$dir" && eval "$cmd") || { echo "program failed: $cmd" >&2; return 1; }
    if [ -n "$mark" ]; then "$mark" "$i" || { echo "after '$cmd'" >&2; return 1; }; fi
  done
  if command -v rsync >/dev/null; then
    (cd "$dir" && rsync "$SRC" rsync) || return 1
    [ -n "$mark" ] && "$mark" rsync
  fi
  return 0
}

# etcd watch events of a json watch log as lines "PUT key 'value'" /
# "DELETE key", sed's temporary names written as sedTMP.
watch_lines() {
  python3 - "$1" <<'PY'
import base64, json, re, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    for ev in json.loads(line).get("Events") or []:
        kv = ev["kv"]
        k = base64.b64decode(kv["key"]).decode()
        k = re.sub(r"/sed[A-Za-z0-9]{6}$", "/sedTMP", k)
        k = re.sub(r"/\.rsync\.[A-Za-z0-9]{6}$", "/.rsync.TMP", k)
        if ev.get("type", 0) == 1:
            print("DELETE", k)
        else:
            print("PUT", k, repr(base64.b64decode(kv.get("value", "")).decode()))
PY
}

store_rev() {
  ectl_local get / --prefix -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])'
}

ectl_local() {
  timeout 30 "$ETCDCTL_BIN" --endpoints="127.0.0.1:$(cat "$QFS_TMP/n1/client_port")" \
    --command-timeout=5s "$@"
}

@test "each program is one put per value, whole, as etcdctl watch sees it" {
  qfs_start n1
  export SRC=$QFS_TMP/src
  echo src-content >"$SRC"
  mkdir "$MNT/w"
  rev=$(store_rev)
  timeout 120 "$ETCDCTL_BIN" --endpoints="127.0.0.1:$(cat "$QFS_TMP/n1/client_port")" \
    watch --prefix /w/ --rev=$((rev + 1)) -w json >"$QFS_TMP/watch" 2>&1 &
  bg_add $!
  run_programs "$MNT/w"
  echo end >"$MNT/w/zz-end"
  wait_until 15 grep -q "$(printf /w/zz-end | base64)" "$QFS_TMP/watch" ||
    { cat "$QFS_TMP/watch" >&2; false; }
  watch_lines "$QFS_TMP/watch" >"$QFS_TMP/got"
  {
    echo "PUT /w/echo 'v1\\n'"
    echo "PUT /w/printf 'p1'"
    echo "PUT /w/gen.conf '[main]\\nhost\\nb=2\\n'"
    echo "PUT /w/slow 'ab'"
    echo "PUT /w/cat 'src-content\\n'"
    echo "PUT /w/cp 'src-content\\n'"
    echo "PUT /w/dd 'src-content\\n'"
    echo "PUT /w/tee 't\\n'"
    # sed -i: its temporary file is closed (put), then renamed over echo
    echo "PUT /w/sedTMP 'v2\\n'"
    echo "PUT /w/echo 'v2\\n'"
    echo "DELETE /w/sedTMP"
    echo "PUT /w/printf 'p2\\n'" # vim ends the last line
    # install: created 0600 and written, then chmod-ed by name to the mode
    # it has (no change: no put)
    echo "PUT /w/install 'src-content\\n'"
    echo "PUT /w/moved 'src-content\\n'"
    echo "DELETE /w/cp"
    if command -v rsync >/dev/null; then
      echo "PUT /w/.rsync.TMP 'src-content\\n'"
      # rsync sets the temp file's mode after closing it: a metadata put.
      echo "PUT /w/.rsync.TMP 'src-content\\n'"
      echo "PUT /w/rsync 'src-content\\n'"
      echo "DELETE /w/.rsync.TMP"
    fi
    echo "PUT /w/zz-end 'end\\n'"
  } >"$QFS_TMP/want"
  diff -u "$QFS_TMP/want" "$QFS_TMP/got" >&2
  # whole values through the mount too
  [ "$(cat "$MNT/w/gen.conf")" = "$(printf '[main]\nhost\nb=2')" ]
  [ "$(stat -c %a "$MNT/w/install")" = 600 ]
}

# ---------------------------------------------------------------- inotify

# watch NAME DIR: inotifywait -m -r on DIR, lines in $QFS_TMP/NAME.raw.
iwatch() {
  local name=$1 dir=$2
  inotifywait -m -r --format '%e %w%f' -o "$QFS_TMP/$name.raw" "$dir" \
    2>"$QFS_TMP/$name.err" &
  echo $! >"$QFS_TMP/iw-$name.pid"
  wait_until 10 grep -q "Watches established" "$QFS_TMP/$name.err"
}

# The changes among a watcher's lines, paths relative to DIR: reads (OPEN,
# ACCESS, CLOSE_NOWRITE) change nothing and are not replayed; ATTRIB made
# on a file before its first put travels with that put. Repeats merged, as
# the kernel merges an event identical to the unread one before it.
changes() {
  grep -vE '^(OPEN|ACCESS|CLOSE_NOWRITE|ATTRIB)[A-Z_,]* ' "$QFS_TMP/$1.raw" |
    sed -e "s|$2/||" -e 's/sed[A-Za-z0-9]\{6\}$/sedTMP/' \
      -e 's/\.rsync\.[A-Za-z0-9]\{6\}$/.rsync.TMP/' | uniq
}

# mark_in WATCHER DIR N: writes DIR/mark-N and waits for its CLOSE_WRITE in
# WATCHER's lines (events come in revision order).
mark_in() {
  echo m >"$MARK_DIR/mark-$1"
  wait_until 15 grep -qxF "CLOSE_WRITE,CLOSE $MARK_SEEN/mark-$1" "$QFS_TMP/$MARK_W.raw"
}

@test "inotifywait on node 2 prints for each program on node 1 the lines a local filesystem prints" {
  cluster_setup
  cluster_start 3
  export SRC=$QFS_TMP/src
  echo src-content >"$SRC"
  mkdir "$(mnt 1)/p"
  wait_until 10 test -d "$(mnt 2)/p"
  mkdir -p "$QFS_TMP/local/p"
  iwatch local "$QFS_TMP/local/p"
  iwatch remote "$(mnt 2)/p"
  MARK_DIR=$QFS_TMP/local/p MARK_SEEN=$QFS_TMP/local/p MARK_W=local \
    run_programs "$QFS_TMP/local/p" mark_in
  MARK_DIR=$(mnt 1)/p MARK_SEEN=$(mnt 2)/p MARK_W=remote \
    run_programs "$(mnt 1)/p" mark_in
  changes local "$QFS_TMP/local/p" >"$QFS_TMP/local.ev"
  changes remote "$(mnt 2)/p" >"$QFS_TMP/remote.ev"
  diff -u "$QFS_TMP/local.ev" "$QFS_TMP/remote.ev" >&2
  grep -qxF "MOVED_TO echo" "$QFS_TMP/remote.ev"
  grep -qxF "CLOSE_WRITE,CLOSE install" "$QFS_TMP/remote.ev"
  # each change once: one CLOSE_WRITE per written file on node 2
  [ "$(grep -c '^CLOSE_WRITE,CLOSE .*/slow$' "$QFS_TMP/remote.raw")" -eq 1 ]
  [ "$(grep -c '^CREATE .*/gen.conf$' "$QFS_TMP/remote.raw")" -eq 1 ]
  [ "$(cat "$(mnt 2)/p/slow")" = ab ]
}

# ---------------------------------------------------------------- users, mounts, names

@test "other users read the mount; only the owner writes" {
  qfs_start n1
  echo v >"$MNT/conf"
  mkdir "$MNT/d"
  # the mountpoint's parents must let nobody through
  chmod 755 "$QFS_TMP" "$QFS_TMP/n1"
  run su nobody -s /bin/sh -c "cat '$MNT/conf'"
  [ "$status" -eq 0 ] && [ "$output" = v ]
  run su nobody -s /bin/sh -c "ls '$MNT'"
  [ "$status" -eq 0 ] && [[ "$output" == *conf* ]]
  run su nobody -s /bin/sh -c "echo x > '$MNT/conf'"
  [ "$status" -ne 0 ] && [[ "$output" == *"Permission denied"* ]]
  run su nobody -s /bin/sh -c "echo x > '$MNT/d/new'"
  [ "$status" -ne 0 ] && [[ "$output" == *"Permission denied"* ]]
  [ "$(cat "$MNT/conf")" = v ]
  [ "$(stat -c '%a %U' "$MNT/conf")" = "644 root" ]
  [ "$(stat -c '%a %U' "$MNT/d")" = "755 root" ]
}

@test "a second node refuses to mount over a live mount, with a message" {
  qfs_start n1
  echo keep >"$MNT/k"
  mkdir -p "$QFS_TMP/n2"
  cport=$(free_port); pport=$(free_port)
  run timeout 20 "$QFS_BIN" --name n2 --data-dir "$QFS_TMP/n2/data" --mount "$MNT" \
    --listen-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport"
  [ "$status" -ne 0 ]
  [[ "$output" == *"already a mount point"* ]] || { echo "$output" >&2; false; }
  [ "$(cat "$MNT/k")" = keep ]
}

@test "names: %, spaces, UTF-8, 255+ bytes, and a key that is also a prefix" {
  qfs_start n1
  echo pct >"$MNT/%"
  echo half >"$MNT/50% off"
  echo sp >"$MNT/a b"
  echo utf >"$MNT/café ☕"
  long=$(printf 'x%.0s' $(seq 300))
  ectl_local put "/$long" long >/dev/null
  [ "$(ectl_local get /% --print-value-only)" = pct ]
  [ "$(ectl_local get '/50% off' --print-value-only)" = half ]
  [ "$(ectl_local get '/a b' --print-value-only)" = sp ]
  [ "$(ectl_local get '/café ☕' --print-value-only)" = utf ]
  # a 300-byte key: a hashed name under 255 bytes that cat reads
  f=$(cd "$MNT" && ls | grep '^x\{200\}%~')
  [ "${#f}" -le 255 ]
  [ "$(cat "$MNT/$f")" = long ]
  # /k and /k/child: the directory k, and the value of /k at k/%value
  ectl_local put /k top >/dev/null
  ectl_local put /k/child c >/dev/null
  wait_until 10 test -d "$MNT/k"
  [ "$(ls "$MNT/k" | tr '\n' ' ')" = "%value child " ]
  [ "$(cat "$MNT/k/%value")" = top ]
  [ "$(cd "$MNT" && find k | LC_ALL=C sort | tr '\n' ' ')" = "k k/%value k/child " ]
  echo top2 >"$MNT/k/%value"
  [ "$(ectl_local get /k --print-value-only)" = top2 ]
}

@test "cp -a and rsync -a of a real directory tree" {
  qfs_start n1
  src=$QFS_TMP/tree
  mkdir -p "$src"
  cp -a /etc/default "$src/"
  ln -s default/useradd "$src/link"
  ln -s /etc/hostname "$src/abs-link"
  cp -a "$src" "$MNT/cp"
  diff -r --no-dereference "$src" "$MNT/cp" >&2
  [ "$(readlink "$MNT/cp/link")" = default/useradd ]
  [ "$(ectl_local get /cp/default/useradd --print-value-only)" = "$(cat /etc/default/useradd)" ]
  if ! command -v rsync >/dev/null; then
    skip "rsync is not installed"
  fi
  rsync -a "$src/" "$MNT/rs/"
  diff -r --no-dereference "$src" "$MNT/rs" >&2
}

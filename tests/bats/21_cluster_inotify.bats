#!/usr/bin/env bats
# Remote changes as inotify events: what one host does through its mount is
# replayed on every other host's mount, so `inotifywait` there prints the
# same lines as for the same commands run locally.

load helpers

setup() {
  cluster_setup
}

teardown() {
  local f
  for f in "$QFS_TMP"/iw*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  cluster_teardown
}

# watch NAME DIR: starts `inotifywait -m -r` on DIR, its lines (event
# names, then the path below DIR) in $QFS_TMP/NAME.ev.
watch() {
  local name=$1 dir=$2
  inotifywait -m -r --format '%e %w%f' -o "$QFS_TMP/$name.raw" "$dir" \
    2>"$QFS_TMP/$name.err" &
  echo $! >"$QFS_TMP/iw-$name.pid"
  wait_until 10 grep -q "Watches established" "$QFS_TMP/$name.err"
}

# events NAME DIR: the lines seen so far, paths relative to DIR, with
# repeats merged (the kernel merges an event identical to the unread one
# before it, so whether a repeat shows depends on when the reader reads).
# A command's reads of directories (rm -r lists what it removes) change
# nothing and are not replayed elsewhere: those lines are left out.
events() {
  grep -vE '^(OPEN|ACCESS|CLOSE_NOWRITE)[A-Z_,]*ISDIR ' "$QFS_TMP/$1.raw" |
    sed "s|$2/||" | uniq
}

# saw NAME LINE: the watcher NAME printed LINE (a fixed string).
saw() { grep -qxF "$2" "$QFS_TMP/$1.raw"; }

# steps ROOT WATCHER: the operator's commands, run in directory ROOT. After
# each one a marker file is written and awaited in WATCHER's output: events
# come in revision order, so the step's own events are all in by then.
steps() {
  local root=$1 w=$2 i=0 cmd
  local -a cmds=(
    "echo v > x"
    "echo v2 > x"
    "mv x y"
    "mkdir sub"
    "echo w > sub/z"
    "rm y"
    "rm -r sub"
  )
  for cmd in "${cmds[@]}"; do
    i=$((i + 1))
    (cd "$root" && eval "$cmd")
    echo m >"$root/mark$i"
    wait_until 15 saw "$w" "CLOSE_WRITE,CLOSE $WATCHED/mark$i" ||
      { echo "step '$cmd': no marker event" >&2; cat "$QFS_TMP/$w.raw" >&2; return 1; }
  done
}

@test "inotifywait on node 2 prints for commands on node 1 the same lines as for the same commands on node 2" {
  cluster_start 3
  mkdir "$(mnt 1)/app" "$(mnt 1)/local"
  wait_until 10 test -d "$(mnt 2)/app"
  wait_until 10 test -d "$(mnt 2)/local"
  wait_until 10 test -d "$(mnt 3)/app"

  watch remote "$(mnt 2)/app"
  watch third "$(mnt 3)/app"
  watch local "$(mnt 2)/local"

  WATCHED=$(mnt 2)/app steps "$(mnt 1)/app" remote
  WATCHED=$(mnt 2)/local steps "$(mnt 2)/local" local

  events local "$(mnt 2)/local" >"$QFS_TMP/local.ev"
  events remote "$(mnt 2)/app" >"$QFS_TMP/remote.ev"
  diff -u "$QFS_TMP/local.ev" "$QFS_TMP/remote.ev" >&2
  # and node 3 saw them too
  wait_until 15 saw third "DELETE,ISDIR $(mnt 3)/app/sub"
  events third "$(mnt 3)/app" >"$QFS_TMP/third.ev"
  diff -u "$QFS_TMP/local.ev" "$QFS_TMP/third.ev" >&2
  # the values behind the events are there to read
  [ ! -e "$(mnt 2)/app/y" ]
  [ "$(cat "$(mnt 2)/app/mark7")" = m ]
}

@test "a watched directory on node 2 gets every file written on node 1, in order" {
  cluster_start 3
  mkdir -p "$(mnt 1)/w"
  wait_until 10 test -d "$(mnt 2)/w"
  watch w "$(mnt 2)/w"
  for i in $(seq 1 20); do echo "$i" >"$(mnt 1)/w/f$i"; done
  wait_until 15 saw w "CLOSE_WRITE,CLOSE $(mnt 2)/w/f20"
  # every file's CREATE, in the order written
  [ "$(grep '^CREATE ' "$QFS_TMP/w.raw" | sed "s|.*/||" | tr '\n' ' ')" = \
    "$(for i in $(seq 1 20); do printf 'f%s ' "$i"; done)" ]
  [ "$(cat "$(mnt 2)/w/f20")" = 20 ]
}

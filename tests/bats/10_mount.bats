#!/usr/bin/env bats
# One node, mounted: the key space through ordinary programs.

load helpers

setup() {
  qfs_setup
  qfs_start n1
}

teardown() {
  qfs_teardown
}

@test "echo > creates a file that cat reads back" {
  echo hello >"$MNT/greeting"
  run cat "$MNT/greeting"
  [ "$status" -eq 0 ]
  [ "$output" = "hello" ]
}

@test "printf >> appends" {
  printf 'a' >"$MNT/f"
  printf 'b' >>"$MNT/f"
  printf 'c' >>"$MNT/f"
  [ "$(cat "$MNT/f")" = "abc" ]
}

@test "mkdir -p, ls and nested files" {
  mkdir -p "$MNT/registry/pods/ns"
  echo one >"$MNT/registry/pods/ns/a"
  echo two >"$MNT/registry/pods/ns/b"
  run ls "$MNT/registry/pods/ns"
  [ "$status" -eq 0 ]
  [ "$output" = "a
b" ]
  run ls "$MNT/registry"
  [ "$output" = "pods" ]
  [ -d "$MNT/registry/pods" ]
  [ -f "$MNT/registry/pods/ns/a" ]
}

@test "an empty directory made by mkdir persists and rmdir removes it" {
  mkdir "$MNT/empty"
  [ -d "$MNT/empty" ]
  run ls -A "$MNT/empty"
  [ -z "$output" ]
  rmdir "$MNT/empty"
  [ ! -e "$MNT/empty" ]
}

@test "rmdir of a non-empty directory fails with ENOTEMPTY" {
  mkdir "$MNT/d"
  echo x >"$MNT/d/x"
  run rmdir "$MNT/d"
  [ "$status" -ne 0 ]
  [[ "$output" == *"not empty"* ]]
  [ "$(cat "$MNT/d/x")" = "x" ]
}

@test "rm -r removes a whole subtree" {
  mkdir -p "$MNT/t/a/b"
  echo 1 >"$MNT/t/a/b/c"
  echo 2 >"$MNT/t/a/d"
  rm -r "$MNT/t"
  [ ! -e "$MNT/t" ]
  run ls "$MNT"
  [[ "$output" != *t* ]]
}

@test "mv renames a file and replaces an existing target" {
  echo old >"$MNT/target"
  echo new >"$MNT/src"
  mv "$MNT/src" "$MNT/target"
  [ ! -e "$MNT/src" ]
  [ "$(cat "$MNT/target")" = "new" ]
}

@test "mv renames a directory with its contents" {
  mkdir -p "$MNT/app/conf"
  echo v >"$MNT/app/conf/k"
  mv "$MNT/app" "$MNT/app2"
  [ ! -e "$MNT/app" ]
  [ "$(cat "$MNT/app2/conf/k")" = "v" ]
}

@test "cp -r copies a tree into the mount and back out" {
  src=$QFS_TMP/src
  mkdir -p "$src/x/y"
  echo alpha >"$src/x/a"
  echo beta >"$src/x/y/b"
  cp -r "$src/x" "$MNT/x"
  [ "$(cat "$MNT/x/a")" = "alpha" ]
  [ "$(cat "$MNT/x/y/b")" = "beta" ]
  cp -r "$MNT/x" "$QFS_TMP/back"
  diff -r "$src/x" "$QFS_TMP/back"
}

@test "sed -i edits a file in place (rename over the original)" {
  printf 'port=80\nhost=a\n' >"$MNT/conf"
  sed -i 's/port=80/port=8080/' "$MNT/conf"
  [ "$(cat "$MNT/conf")" = "port=8080
host=a" ]
  run ls -A "$MNT"
  [ "$output" = "conf" ]
}

@test "getfattr shows revisions and version; setfattr is refused" {
  echo one >"$MNT/k"
  v1=$(getfattr --only-values -n user.quorumfs.version "$MNT/k")
  c1=$(getfattr --only-values -n user.quorumfs.create_revision "$MNT/k")
  m1=$(getfattr --only-values -n user.quorumfs.mod_revision "$MNT/k")
  echo two >"$MNT/k" # one put at close: version +1, one new revision
  run getfattr -d -m 'user.quorumfs' "$MNT/k"
  [ "$status" -eq 0 ]
  [[ "$output" == *"user.quorumfs.version=\"$((v1 + 1))\""* ]]
  [[ "$output" == *"user.quorumfs.create_revision=\"$c1\""* ]]
  [[ "$output" == *"user.quorumfs.mod_revision=\"$((m1 + 1))\""* ]]
  [[ "$output" == *'user.quorumfs.lease="0"'* ]]
  dirrev=$(getfattr --only-values -n user.quorumfs.revision "$MNT")
  [ "$dirrev" -ge "$((m1 + 1))" ]
  run setfattr -n user.quorumfs.version -v 9 "$MNT/k"
  [ "$status" -ne 0 ]
  [ "$(getfattr --only-values -n user.quorumfs.version "$MNT/k")" = "$((v1 + 1))" ]
}

@test "find, du and stat see the tree" {
  mkdir -p "$MNT/f/g"
  printf '12345' >"$MNT/f/g/h"
  echo z >"$MNT/f/i"
  run find "$MNT/f" -type f
  [ "$(printf '%s\n' "$output" | sort)" = "$MNT/f/g/h
$MNT/f/i" ]
  [ "$(stat -c %s "$MNT/f/g/h")" = "5" ]
  [ "$(stat -c %F "$MNT/f/g")" = "directory" ]
  run du -s "$MNT/f"
  [ "$status" -eq 0 ]
  chmod 600 "$MNT/f/i"
  [ "$(stat -c %a "$MNT/f/i")" = "600" ]
}

@test "inotifywait sees CREATE, MODIFY, CLOSE_WRITE, MOVED and DELETE of local changes" {
  mkdir "$MNT/w"
  inotifywait -m -r -e create,modify,close_write,moved_from,moved_to,delete \
    --format '%e %f' -o "$QFS_TMP/events" "$MNT/w" 2>"$QFS_TMP/iw.err" &
  iw=$!
  wait_until 10 grep -q "Watches established" "$QFS_TMP/iw.err"
  echo v >"$MNT/w/x"
  mv "$MNT/w/x" "$MNT/w/y"
  rm "$MNT/w/y"
  wait_until 10 grep -q "^DELETE y" "$QFS_TMP/events"
  kill "$iw"; wait "$iw" 2>/dev/null || true
  grep -q "^CREATE x" "$QFS_TMP/events"
  grep -q "^MODIFY x" "$QFS_TMP/events"
  grep -q "^CLOSE_WRITE,CLOSE x" "$QFS_TMP/events"
  grep -q "^MOVED_FROM x" "$QFS_TMP/events"
  grep -q "^MOVED_TO y" "$QFS_TMP/events"
}

@test "acknowledged writes survive kill -9 and restart" {
  for i in $(seq 1 50); do echo "value $i" >"$MNT/k$i"; done
  mkdir "$MNT/dir"
  qfs_kill n1 KILL
  qfs_restart n1
  for i in $(seq 1 50); do [ "$(cat "$MNT/k$i")" = "value $i" ]; done
  [ -d "$MNT/dir" ]
}

@test "a too-long name fails with ENAMETOOLONG and changes nothing" {
  long=$(head -c 300 /dev/zero | tr '\0' a)
  rev=$(getfattr --only-values -n user.quorumfs.revision "$MNT")
  run bash -c "echo x > '$MNT/$long'"
  [ "$status" -ne 0 ]
  [[ "$output" == *"File name too long"* ]]
  [ "$(getfattr --only-values -n user.quorumfs.revision "$MNT")" = "$rev" ]
}

@test "a value over --max-request-bytes fails at close with EFBIG and changes nothing" {
  echo small >"$MNT/big"
  rev=$(getfattr --only-values -n user.quorumfs.revision "$MNT")
  run bash -c "head -c 2000000 /dev/zero > '$MNT/big'"
  [ "$status" -ne 0 ]
  [[ "$output" == *"too large"* ]]
  [ "$(cat "$MNT/big")" = "small" ]
  [ "$(getfattr --only-values -n user.quorumfs.revision "$MNT")" = "$rev" ]
}

@test "writing into a file as if it were a directory fails with ENOTDIR" {
  echo x >"$MNT/file"
  run bash -c "echo y > '$MNT/file/child'"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Not a directory"* ]]
  [ "$(cat "$MNT/file")" = "x" ]
}

@test "O_EXCL create fails with EEXIST on an existing file" {
  echo a >"$MNT/lock"
  run python3 -c "import os, sys; os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)" "$MNT/lock"
  [ "$status" -ne 0 ]
  [[ "$output" == *"File exists"* ]]
  [ "$(cat "$MNT/lock")" = "a" ]
  python3 -c "import os, sys; os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))" "$MNT/fresh"
  [ -f "$MNT/fresh" ]
}

@test "a directory of 2,000 files lists completely" {
  mkdir "$MNT/many"
  for i in $(seq 1 2000); do : >"$MNT/many/f$i"; done
  [ "$(ls "$MNT/many" | wc -l)" = "2000" ]
  [ "$(find "$MNT/many" -type f | wc -l)" = "2000" ]
}

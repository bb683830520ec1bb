#!/usr/bin/env bats
# Differential tests: the same etcdctl 3.4 commands against a real etcd 3.4
# member and against a quorumfs node, both fresh single-member clusters on
# 127.0.0.1; outputs must be equal once ids, terms, sizes, timings and ports
# are masked (etcd_helpers.bash says what the mask hides and what it keeps:
# revisions, versions, values, errors and exit statuses are compared as is).
#
# QFS_DIFF_SELFTEST=1 runs every test with a second etcd in place of
# quorumfs: all must pass, which shows the mask hides nothing but what two
# correct servers legitimately differ in. QFS_DIFF_OUT=DIR keeps the raw and
# masked outputs of each scenario.

load helpers
load etcd_helpers

setup() {
  # The mask self-test needs no server.
  [[ "$BATS_TEST_DESCRIPTION" == mask:* ]] && { qfs_setup; return 0; }
  diff_setup
}

teardown() {
  diff_teardown
}

# A peer URL nobody listens on, for learners that never start.
FAKE_PEER=http://127.0.0.1:9

# ------------------------------------------------------------------ scenarios

sc_kv() {
  ec put /k/a 1
  ec put /k/b 2
  ec put /k/c 3
  ec put /k/a 11 --prev-kv
  ec put /k/d 4 -w json
  ec put /k/e "" # an empty value
  ec get /k/a
  ec get /k/ --prefix
  ec get /k/ --prefix --keys-only
  ec get /k/ --prefix --limit=2
  ec get /k/ --prefix --limit=2 -w json
  ec get /k/ --prefix --limit=2 -w fields
  ec get /k/a --rev=2
  ec get /k/a --rev=4 -w json
  ec get /k/ --prefix --rev=3
  ec get /k/ --prefix -w json
  ec get /k/a -w fields
  ec get /k/ --prefix --sort-by=MODIFY --order=DESCEND --keys-only
  ec get /k/ --prefix --sort-by=VALUE --order=ASCEND
  ec get /k/b --from-key --keys-only
  ec get /k/b /k/d # [b, d)
  ec get /k/a --print-value-only
  ec get /k/a --consistency=s -w json
  ec get /missing
  ec get /missing -w json
  ec get /k/a --rev=1000
  ec put /k/a --ignore-value
  ec put /nokey --ignore-value
  ec get /k/a -w json
  ec put /bin $'\x01\xff'
  ec get /bin -w json
}

sc_del() {
  ecq put /d/a 1
  ecq put /d/b 2
  ecq put /d/c 3
  ecq put /d2 x
  ecq put /e 5
  ecq put /f 6
  ec del /d/a
  ec del /d/zzz
  ec del /d/ --prefix --prev-kv
  ec del /d2 --prev-kv -w json
  ec del /e --from-key
  ec get "" --prefix
  ec get "" --from-key -w json
  ec del /nothing --prefix -w json
}

sc_txn() {
  ecq put /t/a 1
  ecq put /t/b 2
  ec txn <<'EOF'
value("/t/a") = "1"
version("/t/a") = "1"

put /t/res ok
get /t/a

put /t/res fail

EOF
  ec txn <<'EOF'
value("/t/a") = "2"

put /t/res ok

put /t/res fail
get /t/res

EOF
  ec txn -w json <<'EOF'
create("/t/a") = "2"
mod("/t/b") = "3"
version("/t/b") > "0"

del /t/b
get /t/ --prefix

get /t/a

EOF
  # Create-if-absent: true for a missing key, false for an existing one.
  ec txn <<'EOF'
create("/t/new") = "0"

put /t/new first


EOF
  ec txn <<'EOF'
create("/t/new") = "0"

put /t/new second

get /t/new

EOF
  ec txn <<'EOF'
mod("/t/new") < "100"
value("/t/res") != "x"

del /t/ --prefix


EOF
  # Interactive mode reads the same sections with prompts.
  ec txn -i <<'EOF'
version("/t/new") = "0"

put /t/i yes

put /t/i no

EOF
  # Two puts of one key in one txn are refused.
  ec txn <<'EOF'


put /t/x 1
put /t/x 2

EOF
  ec get /t/ --prefix -w json
}

sc_watch() {
  ecq put /w/a 1  # rev 2
  ecq put /w/a 2  # rev 3
  ecq del /w/a    # rev 4
  ecq put /w/b 3  # rev 5
  ecq put /x 0    # rev 6, outside the prefix
  ewatch 12 --prefix /w --rev=2
  ewatch 9 /w/a --rev=2 # 3 events, the delete with an empty value line
  ewatch 16 --prefix /w --rev=2 --prev-kv
  ewatch 3 --prefix /w --rev=5
  ewatch 3 /w/a /w/b --rev=1 # a range [/w/a, /w/b)
  # JSON, one event per line: servers may batch catch-up events freely.
  ewatch re:L3cvYg== --prefix /w --rev=3 --prev-kv -w json | flatten_watch_json
  # A live watch (no --rev) sees changes made after it is created. Until it
  # is known to be registered, a marker key is written; its events are
  # dropped from the output, and the test ends here because revisions of
  # later writes now depend on how many markers were needed.
  live_watch
}

# Prints each watch response's events one per line, without the response
# header (its revision depends on how the server batched the events).
flatten_watch_json() {
  python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        print(line)
        continue
    o = json.loads(line)
    for ev in o.get("Events") or []:
        print(json.dumps({"event": ev, "compact": o.get("CompactRevision"),
                          "canceled": o.get("Canceled")}, separators=(",", ":")))
'
}

live_watch() {
  local f pid
  f=$(mktemp -p . live.XXXXXX)
  timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" watch --prefix /lw >"$f" 2>&1 &
  pid=$!
  bg_add "$pid"
  wait_until 10 sh -c "'$ETCDCTL_BIN' --endpoints='$EP' put /lw/marker m >/dev/null 2>&1; grep -q /lw/marker '$f'" ||
    echo "[live watch: no marker event within 10 s]"
  ecq put /lw/k v1
  ecq put /other z
  ecq put /lw/k v2
  ecq del /lw/k
  wait_until 10 grep -q '^DELETE' "$f" || echo "[live watch: no DELETE within 10 s]"
  bg_stop "$pid"
  echo "\$ etcdctl watch --prefix /lw (markers dropped)"
  awk 'BEGIN{skip=0} /^PUT$/{getline k; getline v; if (k != "/lw/marker") print "PUT\n" k "\n" v; next} {print}' "$f"
}

sc_lease() {
  local l1 l2 l3
  l1=$(ecraw lease grant 100 | awk '/granted/{print $2}')
  l2=$(ecraw lease grant 200 | awk '/granted/{print $2}')
  local j l0
  j=$(ecraw lease grant 300 -w json 2>&1)
  echo "\$ etcdctl lease grant 300 -w json"
  echo "$j"
  l0=$(printf '%s' "$j" | python3 -c 'import json, sys; print("%016x" % json.load(sys.stdin)["ID"])')
  ec put /l/x 1 --lease="$l1"
  ec put /l/y 2 --lease="$l1"
  ec put /l/z 3 --lease="$l2"
  ec get /l/ --prefix -w json
  ec lease timetolive "$l1"
  ec lease timetolive "$l1" --keys
  ec lease timetolive "$l1" --keys -w json
  ec lease keep-alive --once "$l1"
  ec lease keep-alive --once "$l2" -w json
  echo "\$ etcdctl lease list (ids named, sorted)"
  ecraw lease list 2>&1 | sed "s/$l0/L0/; s/$l1/L1/; s/$l2/L2/" | LC_ALL=C sort
  ec lease revoke "$l1"
  ec get /l/ --prefix --keys-only
  ec lease timetolive "$l1"
  ec lease revoke "$l1"
  ec lease keep-alive --once "$l1"
  ec put /l/w 4 --lease="$l1"
  ec put /l/w 4 --lease=1234abcd
  # A short lease expires by itself and takes its key along.
  l3=$(ecraw lease grant 1 | awk '/granted/{print $2}')
  ec put /l/short s --lease="$l3"
  if wait_until 15 sh -c "[ -z \"\$('$ETCDCTL_BIN' --endpoints='$EP' get /l/short --keys-only 2>/dev/null)\" ]"; then
    echo "short lease expired, key gone"
  else
    echo "[short lease key still there after 15 s]"
  fi
  ec lease timetolive "$l3"
  ec get /l/ --prefix --keys-only
}

sc_member() {
  local id
  ec member list
  ec member list -w json
  id=$(ecraw member add fake --learner --peer-urls="$FAKE_PEER" 2>/dev/null |
    awk '/^Member/{print $2}')
  echo "learner added: ${id:+yes}"
  ecs member list
  ec member list -w json
  ec member promote "$id"
  ec member remove "$id"
  ecs member list
  ec member remove "$id"
  ec member promote 1234
  # quorumfs derives a member's id from its first peer URL and the cluster
  # token (a joining member computes its own id), so re-adding a removed
  # member's URL gives the same id, where etcd draws a new one: re-add under
  # another URL, which both number alike.
  ec member add again --learner --peer-urls="${FAKE_PEER%:*}:10" -w json
}

sc_maint() {
  ecq put /m/a 1 # rev 2
  ecq put /m/a 2 # rev 3
  ecq put /m/a 3 # rev 4
  ecq put /m/b 4 # rev 5
  ec endpoint status
  ec endpoint status -w json
  ec endpoint health
  ec alarm list
  ec alarm disarm
  ec snapshot save snap.db
  [ -s snap.db ] && echo "snapshot file is not empty"
  ec get /m/a --rev=2
  ec compaction 3
  ec get /m/a --rev=2
  ec get /m/a --rev=3
  ec get /m/ --prefix --rev=2 -w json
  ec compaction 3
  ec compaction 2
  ec compaction 100
  ewatch 2 /m/a --rev=2
  ewatch 6 /m/a --rev=3
  ec compaction --physical 4
  ec get /m/a --rev=3
  ec get /m/ --prefix -w json
  ec defrag
  ec get /m/ --prefix
  ec endpoint status -w json
}

sc_lock() {
  local a b
  timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" lock lock1 >lockA 2>&1 &
  a=$!
  bg_add "$a"
  wait_until 10 lines_ge lockA 1 || echo "[lock A not acquired within 10 s]"
  echo "A acquired:"
  cat lockA
  ec get lock1 --prefix --keys-only
  timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" lock lock1 >lockB 2>&1 &
  b=$!
  bg_add "$b"
  # B's key is queued behind A's: two keys under the prefix, B silent.
  wait_until 10 sh -c "[ \"\$('$ETCDCTL_BIN' --endpoints='$EP' get lock1 --prefix --keys-only | grep -c .)\" -ge 2 ]" ||
    echo "[B did not queue within 10 s]"
  echo "B acquired while A holds: $([ -s lockB ] && echo yes || echo no)"
  ec get lock1 --prefix -w json
  bg_stop "$a" # SIGTERM: etcdctl unlocks
  echo "A released"
  wait_until 10 lines_ge lockB 1 || echo "[B not acquired within 10 s of A's release]"
  echo "B acquired:"
  cat lockB
  ec get lock1 --prefix --keys-only
  bg_stop "$b"
  wait_until 10 sh -c "[ -z \"\$('$ETCDCTL_BIN' --endpoints='$EP' get lock1 --prefix --keys-only)\" ]" ||
    echo "[lock key left after B's release]"
  ec get lock1 --prefix --keys-only
  # shellcheck disable=SC2016 # expanded by the locked command's shell
  ec lock lock2 -- sh -c 'echo "held $ETCD_LOCK_KEY at revision $ETCD_LOCK_REV"'
  ec get lock2 --prefix --keys-only
}

sc_elect() {
  local a b o
  timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" elect election1 p1 >elA 2>&1 &
  a=$!
  bg_add "$a"
  wait_until 10 lines_ge elA 2 || echo "[p1 not elected within 10 s]"
  echo "p1 campaign:"
  cat elA
  timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" elect -l election1 >obs 2>&1 &
  o=$!
  bg_add "$o"
  wait_until 10 lines_ge obs 2 || echo "[observer saw no leader within 10 s]"
  timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" elect election1 p2 >elB 2>&1 &
  b=$!
  bg_add "$b"
  wait_until 10 sh -c "[ \"\$('$ETCDCTL_BIN' --endpoints='$EP' get election1 --prefix --keys-only | grep -c .)\" -ge 2 ]" ||
    echo "[p2 did not queue within 10 s]"
  echo "p2 elected while p1 leads: $([ -s elB ] && echo yes || echo no)"
  ec get election1 --prefix
  bg_stop "$a" # p1 resigns
  wait_until 10 lines_ge elB 2 || echo "[p2 not elected within 10 s]"
  echo "p2 campaign:"
  cat elB
  wait_until 10 lines_ge obs 4 || echo "[observer did not see p2 within 10 s]"
  bg_stop "$o"
  echo "observer:"
  cat obs
  bg_stop "$b"
  ec get election1 --prefix --keys-only
}

# ---------------------------------------------------------------------- tests

differs() { ! cmp -s "$1" "$2"; }

@test "mask: renames ids consistently, hides timing and sizes, keeps revisions and values" {
  printf '%s\n' \
    'lease 694d7b5b2b1c1a0b granted with TTL(60s)' \
    'lease 694d7b5b2b1c1a0b keepalived with TTL(60)' \
    '{"header":{"cluster_id":15118495548433857066,"member_id":13668033151171901709,"revision":7,"raft_term":2},"kvs":[{"key":"L2E=","create_revision":2,"mod_revision":7,"version":3,"value":"MQ==","lease":7587856578684656139}]}' \
    '127.0.0.1:2379, bdae9bbc11dd390d, 3.4.23, 20 kB, true, false, 2, 6, 6, ' \
    '127.0.0.1:2379 is healthy: successfully committed proposal: took = 3.789665ms' \
    'lock1/694d7b5b2b1c1a0b' >"$QFS_TMP/a"
  printf '%s\n' \
    'lease 0000000000000007 granted with TTL(60s)' \
    'lease 0000000000000007 keepalived with TTL(60)' \
    '{"header":{"cluster_id":1,"member_id":2,"revision":7,"raft_term":5},"kvs":[{"key":"L2E=","create_revision":2,"mod_revision":7,"version":3,"value":"MQ==","lease":7}]}' \
    '127.0.0.1:2379, 2, 3.4.23+quorumfs, 1.2 MB, true, false, 5, 99, 98, ' \
    '127.0.0.1:2379 is healthy: successfully committed proposal: took = 120µs' \
    'lock1/7' >"$QFS_TMP/b"
  mask_stream <"$QFS_TMP/a" >"$QFS_TMP/a.m"
  mask_stream <"$QFS_TMP/b" >"$QFS_TMP/b.m"
  diff -u "$QFS_TMP/a.m" "$QFS_TMP/b.m"
  grep -q '"revision":7' "$QFS_TMP/a.m"
  grep -q 'b64:/a' "$QFS_TMP/a.m"
  # A different revision, value, or id structure still shows.
  sed 's/"revision":7/"revision":8/' "$QFS_TMP/b" | mask_stream >"$QFS_TMP/c.m"
  differs "$QFS_TMP/a.m" "$QFS_TMP/c.m"
  sed 's/"MQ=="/"Mg=="/' "$QFS_TMP/b" | mask_stream >"$QFS_TMP/c.m"
  differs "$QFS_TMP/a.m" "$QFS_TMP/c.m"
  sed 's/keepalived/revoked/' "$QFS_TMP/b" | mask_stream >"$QFS_TMP/c.m"
  differs "$QFS_TMP/a.m" "$QFS_TMP/c.m"
  # Lease 7 in the kv must be the lease granted above, not another id.
  sed 's/"lease":7}/"lease":8}/' "$QFS_TMP/b" | mask_stream >"$QFS_TMP/c.m"
  differs "$QFS_TMP/a.m" "$QFS_TMP/c.m"
  # Bytes that are not UTF-8 pass through.
  printf 'put /bin \x01\xff\n' | mask_stream | grep -q '^put /bin'
}

@test "kv: put and get (--prefix, --keys-only, --rev, --limit, sort, ranges, -w json, -w fields)" {
  diff_run sc_kv
}

@test "kv: del (--prefix, --prev-kv, --from-key)" {
  diff_run sc_del
}

@test "txn: compares on value, version, create and mod revisions; success and failure branches; -i" {
  diff_run sc_txn
}

@test "watch: --prefix, --rev, --prev-kv, ranges, json, and a live watch" {
  diff_run sc_watch
}

@test "lease: grant, put --lease, timetolive --keys, keep-alive --once, list, revoke, expiry" {
  diff_run sc_lease
}

@test "member: list, add a learner, promote an unstarted learner fails, remove" {
  diff_run sc_member
}

@test "maintenance: endpoint status and health, alarms, snapshot save, compaction, defrag" {
  diff_run sc_maint
}

@test "concurrency: lock (held, queued, released, with a command)" {
  diff_run sc_lock
}

@test "concurrency: elect (campaign, observe, resign hands over)" {
  diff_run sc_elect
}

# check perf --load=s: 60 s of 150 writes/s from 50 clients. Both servers
# run it at the same time; both must pass; the figures are printed, and
# the PASS/FAIL lines compared with their numbers masked.
@test "check perf --load=s passes on both" {
  local s
  for s in A B; do
    (cd "$QFS_TMP/work-$s" &&
      timeout 150 "$ETCDCTL_BIN" --endpoints="$(side_ep "$s")" check perf --load=s \
        >"$QFS_TMP/perf.$s" 2>&1
      echo "$?" >"$QFS_TMP/perf.$s.rc") &
    bg_add $!
  done
  wait_until 170 sh -c "[ -f '$QFS_TMP/perf.A.rc' ] && [ -f '$QFS_TMP/perf.B.rc' ]"
  # The figures are shown whether the test passes or not (fd 3).
  for s in A B; do
    echo "# check perf --load=s, $(cat "$QFS_TMP/$s/kind") (side $s), exit $(cat "$QFS_TMP/perf.$s.rc"):"
    tr '\r' '\n' <"$QFS_TMP/perf.$s" | grep -E '^(PASS|FAIL)|too (low|long|high)' | sed 's/^/#   /' ||
      tail -5 "$QFS_TMP/perf.$s" | sed 's/^/#   /'
  done >&3
  for s in A B; do
    # The progress bar ends in \r, not \n: the line after it may share its line.
    tr '\r' '\n' <"$QFS_TMP/perf.$s" | grep -E '^(PASS|FAIL)|too (low|long|high)' |
      sed -E 's/[0-9]+(\.[0-9]+)?/N/g' >"$QFS_TMP/perf.$s.m"
  done
  [ "$(cat "$QFS_TMP/perf.A.rc")" = 0 ]
  [ "$(cat "$QFS_TMP/perf.B.rc")" = 0 ] || { tail -20 "$QFS_TMP/perf.B" >&2; false; }
  diff -u "$QFS_TMP/perf.A.m" "$QFS_TMP/perf.B.m"
  grep -qx PASS "$QFS_TMP/perf.B.m"
}

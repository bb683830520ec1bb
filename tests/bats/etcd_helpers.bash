# etcd_helpers.bash - differential testing of quorumfs against a real etcd:
# start one etcd 3.4 member and one quorumfs node side by side on loopback,
# run the same etcdctl script against each, mask what legitimately differs
# between two servers (ids, terms, Raft indexes, sizes, timings, ports,
# temporary paths, the server's version suffix) and diff the rest.
#
# Sides: side A is always a real etcd (the reference); side B is a quorumfs
# node, or a second etcd when QFS_DIFF_SELFTEST=1, which proves the masking
# hides only what differs between two correct servers. Each side lives in
# $QFS_TMP/A and $QFS_TMP/B (pid, client_port, peer_port, log, data), the
# layout qfs_teardown() of helpers.bash cleans up by PID.
#
# What the mask keeps on purpose: revisions, versions of keys, counts, keys,
# values, error strings, gRPC codes (in etcdctl's retry warnings), exit
# statuses. Ids are not erased but renamed by value in order of first
# appearance (ID1, ID2, ...), so "the same lease id in two places" and "two
# different ids" stay distinguishable.
#
# Needs helpers.bash loaded first (wait_until, free_port, qfs_teardown).

export ETCDCTL_API=3
ETCD_BIN=${ETCD_BIN:-etcd}
ETCDCTL_BIN=${ETCDCTL_BIN:-etcdctl}
# One etcdctl call never runs longer than this (seconds); etcdctl's own
# command timeout is 5 s, this only guards against a hung stream.
ETCDCTL_DEADLINE=${ETCDCTL_DEADLINE:-30}
# How long a node may take to answer its first health check (seconds).
SIDE_START_DEADLINE=${SIDE_START_DEADLINE:-30}
# Timing for both servers: a 50 ms tick and a 500 ms election timeout.
SIDE_TIMING=(--heartbeat-interval 50 --election-timeout 500)

# Two distinct free ports on 127.0.0.1, one per line.
two_free_ports() {
  local a b
  a=$(free_port)
  b=$(free_port)
  while [ "$a" = "$b" ]; do b=$(free_port); done
  printf '%s\n%s\n' "$a" "$b"
}

# ep_healthy HOST:PORT: one health check through etcdctl (linearizable get).
ep_healthy() {
  "$ETCDCTL_BIN" --endpoints="$1" --dial-timeout=1s --command-timeout=2s \
    endpoint health >/dev/null 2>&1
}

# side_dir SIDE: the side's directory.
side_dir() { echo "$QFS_TMP/$1"; }
side_ep() { echo "127.0.0.1:$(cat "$QFS_TMP/$1/client_port")"; }

# etcd_side_start SIDE [extra etcd flags]: a single-member etcd named n1.
etcd_side_start() {
  local side=$1; shift
  local dir=$QFS_TMP/$side c p
  mkdir -p "$dir"
  { read -r c; read -r p; } < <(two_free_ports)
  "$ETCD_BIN" --name n1 --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "n1=http://127.0.0.1:$p" --initial-cluster-token qfs-diff \
    "${SIDE_TIMING[@]}" "$@" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  echo "$c" >"$dir/client_port"
  echo "$p" >"$dir/peer_port"
  echo etcd >"$dir/kind"
  side_wait "$side"
}

# qfs_side_start SIDE [extra quorumfs flags]: a single quorumfs node named
# n1, without a mount (the etcd API only).
qfs_side_start() {
  local side=$1; shift
  local dir=$QFS_TMP/$side c p
  mkdir -p "$dir"
  { read -r c; read -r p; } < <(two_free_ports)
  "$QFS_BIN" --name n1 --data-dir "$dir/data" --mount '' \
    --listen-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster-token qfs-diff "${SIDE_TIMING[@]}" "$@" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
  echo "$c" >"$dir/client_port"
  echo "$p" >"$dir/peer_port"
  echo quorumfs >"$dir/kind"
  side_wait "$side"
}

side_wait() {
  local dir=$QFS_TMP/$1
  if ! wait_until "$SIDE_START_DEADLINE" ep_healthy "$(side_ep "$1")"; then
    echo "$(cat "$dir/kind") side $1 did not become healthy; log:" >&2
    tail -40 "$dir/log" >&2
    return 1
  fi
}

# diff_setup: temp dir, side A = etcd, side B = quorumfs (or etcd in the
# self-test), and a work directory per side (relative paths in output).
diff_setup() {
  qfs_setup
  : >"$QFS_TMP/bg.pids"
  mkdir -p "$QFS_TMP/work-A" "$QFS_TMP/work-B"
  etcd_side_start A "$@" || return 1
  if [ "${QFS_DIFF_SELFTEST:-0}" = 1 ]; then
    etcd_side_start B "$@"
  else
    [ -x "$QFS_BIN" ] || { echo "QFS_BIN=$QFS_BIN is not executable" >&2; return 1; }
    qfs_side_start B
  fi
}

# bg_add PID: remembers a background process of a test for teardown.
bg_add() { echo "$1" >>"$QFS_TMP/bg.pids"; }

# descendants PID: the PIDs of PID's children, grandchildren, ...
descendants() {
  local k
  for k in $(pgrep -P "$1" 2>/dev/null); do
    echo "$k"
    descendants "$k"
  done
}

# bg_stop PID: SIGTERM to PID and its descendants (a function run in the
# background is a subshell whose child is the real program; timeout(1)
# passes SIGTERM on as well), a deadline, then SIGKILL, all by PID.
bg_stop() {
  local pid=$1 all p
  kill -0 "$pid" 2>/dev/null || return 0
  all="$pid $(descendants "$pid")"
  # shellcheck disable=SC2086
  kill -TERM $all 2>/dev/null || true
  for p in $all; do
    wait_until 10 sh -c "! kill -0 $p 2>/dev/null" || kill -KILL "$p" 2>/dev/null || true
  done
  wait "$pid" 2>/dev/null || true
  return 0
}

# bg_stop_all: bg_stop for every process bg_add remembered.
bg_stop_all() {
  local pid
  if [ -n "${QFS_TMP:-}" ] && [ -f "$QFS_TMP/bg.pids" ]; then
    while read -r pid; do [ -n "$pid" ] && bg_stop "$pid"; done <"$QFS_TMP/bg.pids"
  fi
  return 0
}

# ectl I ARGS...: etcdctl against cluster member I (helpers.bash's
# namespace and addresses), from inside the namespace.
ectl() {
  local i=$1; shift
  in_ns timeout 30 "$ETCDCTL_BIN" --endpoints="http://$(node_ip "$i"):2379" \
    --dial-timeout=2s --command-timeout=5s "$@"
}

diff_teardown() {
  local s
  bg_stop_all
  if [ -n "${QFS_DIFF_OUT:-}" ] && [ -n "${QFS_TMP:-}" ]; then
    mkdir -p "$QFS_DIFF_OUT"
    cp "$QFS_TMP"/out.* "$QFS_DIFF_OUT"/ 2>/dev/null || true
    cp "$QFS_TMP/B/log" "$QFS_DIFF_OUT/B.log.${BATS_TEST_NUMBER:-0}" 2>/dev/null || true
  fi
  # Servers get SIGTERM first (qfs_kill falls back to SIGKILL by PID).
  for s in A B; do qfs_kill "$s" TERM; done
  qfs_teardown
}

# ------------------------------------------------------------ scenario verbs
# Scenario functions run once per side in a subshell with EP set to the
# side's endpoint and the side's work directory as the current directory.
# They print; diff_run compares what they printed.

# ec ARGS...: runs etcdctl against the side, prints the command line, its
# merged output (stdout and stderr in the order written), and its status.
ec() {
  local out rc
  echo "\$ etcdctl $*"
  out=$(timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" "$@" 2>&1)
  rc=$?
  [ -n "$out" ] && printf '%s\n' "$out"
  echo "[rc=$rc]"
}

# ecs ARGS...: as ec, for lists whose order the server does not define
# (members, which etcd orders by id): the mask sorts the masked lines.
ecs() {
  local out rc
  echo "\$ etcdctl $* (sorted)"
  out=$(timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" "$@" 2>&1)
  rc=$?
  [ -n "$out" ] && printf '%s\n' "$out" # mask_stream sorts it
  echo "[rc=$rc]"
}

# ecq ARGS...: etcdctl against the side, output not shown (setup steps).
ecq() { timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" "$@" >/dev/null 2>&1; }

# ecraw ARGS...: etcdctl against the side, output passed through as is.
ecraw() { timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" "$@"; }

lines_ge() { [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; }

# ewatch LINES|re:REGEX ARGS...: runs `etcdctl watch ARGS` in the
# background under timeout(1), polls its output file until it holds LINES
# lines or a line matching REGEX (deadline 10 s), stops it and prints what
# it wrote. The output notes a timeout, so a missing event fails the diff.
ewatch() {
  local want=$1; shift
  local f pid
  f=$(mktemp -p . watch.XXXXXX)
  timeout "$ETCDCTL_DEADLINE" "$ETCDCTL_BIN" --endpoints="$EP" watch "$@" >"$f" 2>&1 &
  pid=$!
  bg_add "$pid"
  echo "\$ etcdctl watch $*"
  if [[ "$want" == re:* ]]; then
    wait_until 10 grep -q -- "${want#re:}" "$f" ||
      echo "[watch: no line matching ${want#re:} within 10 s]"
  elif ! wait_until 10 lines_ge "$f" "$want"; then
    # A watch the server cancels exits by itself: that is an answer too.
    kill -0 "$pid" 2>/dev/null && echo "[watch: fewer than $want lines within 10 s]"
  fi
  bg_stop "$pid"
  cat "$f"
  echo "[lines=$(wc -l <"$f")]"
}

# ------------------------------------------------------------------ masking
# mask_output SIDE <raw >masked. See the file header for what is masked.
mask_output() {
  local side=$1
  QFS_MASK_PORTS="$(cat "$QFS_TMP/$side/client_port")=CPORT $(cat "$QFS_TMP/$side/peer_port")=PPORT" \
    QFS_MASK_TMP="$QFS_TMP" mask_stream
}

# mask_stream <raw >masked, with QFS_MASK_PORTS="port=NAME ..." and
# QFS_MASK_TMP (a path shown as TMP).
mask_stream() {
  "$MASK_PYTHON" -c "$MASK_PY"
}
# The mask needs only Python's standard library; a system interpreter
# starts faster than a version-manager shim.
MASK_PYTHON=${MASK_PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}

# The mask, in Python. Ids are renamed by numeric value, so a hex id that
# etcdctl prints in text and the same id in decimal in JSON get one name.
# shellcheck disable=SC2016
MASK_PY='
import base64, json, os, re, sys

ports = {}
for kv in os.environ.get("QFS_MASK_PORTS", "").split():
    k, v = kv.split("=", 1)
    ports[k] = v
tmp = os.environ.get("QFS_MASK_TMP", "")
ids = {}

def idn(v):
    v = int(v)
    if v == 0:
        return 0
    if v not in ids:
        ids[v] = "ID%d" % (len(ids) + 1)
    return ids[v]

def hexid(m, g=1):
    return idn(int(m.group(g), 16))

HEX16 = re.compile(r"\b[0-9a-f]{16}\b")
# etcdctl prints member ids with %16x (space padded) or %x, lease ids with
# %016x. An id in context holds a digit or is long, so that words such as
# "a" or "added" after "promote" or "Member" stay words.
CTX_HEX = re.compile(r"\b(Member|cluster|lease|promote|remove|update) +((?=[0-9a-f]*[0-9])[0-9a-f]+|[0-9a-f]{12,16})\b")
MEMBER_LINE = re.compile(r"^([0-9a-f]+)(, (?:started|unstarted),)")
LOCK_KEY = re.compile(r"\b((?:lock|elect)[\w.-]*)/([0-9a-f]+)\b")
STATUS_LINE = re.compile(r"^([^,]+, )([0-9a-f]+), ([^,]+), ([^,]+), (true|false), (true|false), \d+, \d+, \d+, ")
FIELDS_ID = re.compile(r"^(\"(?:ClusterID|MemberID|Lease|ID)\" : )(\d+)")
FIELDS_TERM = re.compile(r"^(\"RaftTerm\" : )\d+")
VERSION = re.compile(r"\b3\.4\.\d+(\+[\w.-]+)?")
SIZE = re.compile(r"\b\d+(\.\d+)? ?[kMGT]?B\b")
PORT = re.compile(r":(\d+)\b")
REMAINING = re.compile(r"remaining\(-?\d+s\)")
TOOK = re.compile(r"took = [0-9.]+[a-zµ]*s")
ATTACHED = re.compile(r"attached keys\(\[([^\]]*)\]\)")

def text(s):
    if tmp:
        s = s.replace(tmp, "TMP")
    s = PORT.sub(lambda m: ":" + ports.get(m.group(1), m.group(1)), s)
    m = STATUS_LINE.match(s)
    if m:
        s = "%s%s, %s, SIZE, %s, %s, TERM, IDX, IDX, %s" % (
            m.group(1), idn(int(m.group(2), 16)), VERSION.sub("3.4.x", m.group(3)),
            m.group(5), m.group(6), s[m.end():])
    s = MEMBER_LINE.sub(lambda m: "%s%s" % (hexid(m), m.group(2)), s)
    s = CTX_HEX.sub(lambda m: "%s %s" % (m.group(1), hexid(m, 2)), s)
    s = LOCK_KEY.sub(lambda m: "%s/%s" % (m.group(1), hexid(m, 2)), s)
    s = FIELDS_ID.sub(lambda m: m.group(1) + str(idn(m.group(2))), s)
    s = FIELDS_TERM.sub(lambda m: m.group(1) + "TERM", s)
    s = HEX16.sub(lambda m: str(idn(int(m.group(0), 16))), s)
    s = VERSION.sub("3.4.x", s)
    s = SIZE.sub("SIZE", s)
    s = REMAINING.sub("remaining(Ns)", s)
    s = TOOK.sub("took = T", s)
    s = ATTACHED.sub(lambda m: "attached keys([%s])" % " ".join(sorted(m.group(1).split())), s)
    return s

ID_KEYS = {"cluster_id", "member_id", "ID", "id", "lease", "leader", "Lease", "memberID"}
TERM_KEYS = {"raft_term", "raftTerm", "RaftTerm"}
INDEX_KEYS = {"raftIndex", "raftAppliedIndex", "raft_index"}
SIZE_KEYS = {"dbSize", "dbSizeInUse"}
# Fields of etcdctl log lines that differ between any two runs.
LOG_DROP = {"ts", "target", "took", "size"}

def b64(s):
    try:
        raw = base64.b64decode(s, validate=True)
        t = raw.decode("utf-8")
    except Exception:
        return s
    if all(c.isprintable() for c in t):
        return "b64:" + text(t)
    return s

def walk(o, k=None):
    if k == "members" and isinstance(o, list):  # etcd orders them by id
        return sorted((walk(x) for x in o), key=lambda m: json.dumps(m, sort_keys=True))
    if k == "keys" and isinstance(o, list):  # keys of a lease: in no order
        return sorted(b64(x) for x in o)
    if isinstance(o, dict):
        if "level" in o and "msg" in o:
            o = {a: b for a, b in o.items() if a not in LOG_DROP}
        return {a: walk(b, a) for a, b in o.items()}
    if isinstance(o, list):
        return [walk(x, k) for x in o]
    if isinstance(o, bool) or o is None:
        return o
    if k in ID_KEYS and isinstance(o, (int, str)) and str(o).isdigit():
        return idn(o)
    if k in TERM_KEYS:
        return "TERM"
    if k in INDEX_KEYS:
        return "IDX"
    if k in SIZE_KEYS:
        return "SIZE"
    if k == "ttl":
        return "TTL"
    if k in ("key", "value", "range_end") and isinstance(o, str):
        return b64(o)
    if isinstance(o, str):
        return text(o)
    return o

def mask(line):
    st = line.lstrip()
    if st.startswith(("{", "[")):
        try:
            o = json.loads(st)
        except ValueError:
            o = None
        if o is not None:
            return json.dumps(walk(o), separators=(",", ":"))
    return text(line)

# The output of a command shown as "$ etcdctl ... (sorted)" is sorted after
# masking, up to its "[rc=" line: ids then sort the same on both sides.
sys.stdin.reconfigure(errors="backslashreplace")
block = None
for line in sys.stdin:
    m = mask(line.rstrip("\n"))
    if block is not None and m.startswith("[rc="):
        print("\n".join(sorted(block)))
        block = None
    if block is not None:
        block.append(m)
        continue
    print(m)
    if m.startswith("$ etcdctl ") and m.endswith(" (sorted)"):
        block = []
if block:
    print("\n".join(sorted(block)))
'

# diff_run FUNC: runs scenario FUNC on side A then side B, masks both
# outputs and diffs them; prints the diff (etcd is "-") and fails on any
# difference. Raw and masked outputs stay in $QFS_TMP/out.FUNC.*.
diff_run() {
  local fn=$1 s
  for s in A B; do
    # Scenarios print failures instead of stopping at them: no errexit.
    (set +e; cd "$QFS_TMP/work-$s" && EP=$(side_ep "$s") "$fn") >"$QFS_TMP/out.$fn.$s.raw" 2>&1 || true
    mask_output "$s" <"$QFS_TMP/out.$fn.$s.raw" >"$QFS_TMP/out.$fn.$s"
  done
  if ! diff -u --label "etcd ($fn)" --label "$(cat "$QFS_TMP/B/kind") ($fn)" \
    "$QFS_TMP/out.$fn.A" "$QFS_TMP/out.$fn.B" >"$QFS_TMP/out.$fn.diff"; then
    echo "=== $fn: masked output of etcd (-) and $(cat "$QFS_TMP/B/kind") (+) differ:" >&2
    cat "$QFS_TMP/out.$fn.diff" >&2
    return 1
  fi
  # A scenario that printed nothing compared nothing.
  [ -s "$QFS_TMP/out.$fn.A" ]
}

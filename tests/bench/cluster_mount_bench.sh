#!/usr/bin/env bash
# cluster_mount_bench.sh - writes through the FUSE mount of a 3-node quorumfs
# cluster, and how fast a change made on one node shows up as an inotify event
# on another node's mount. A benchmark: it prints figures, nothing is asserted
# on timing; it exits non-zero only when a server did not start or a run
# failed outright.
#
# Run (as root: it makes a network namespace and mounts a tmpfs; build first
# with scripts/build.sh):
#   tests/bench/cluster_mount_bench.sh                     # about 1 minute on 2 cores
#   QFS_BENCH_QUICK=1 tests/bench/cluster_mount_bench.sh   # about 10 seconds
#
# What it does and prints:
#  1. Writes: each write is open(O_CREAT|O_TRUNC)/write/close of a new small
#     file DIR/wJ/kI (so two revisions on quorumfs: create, then the value),
#     by forked Python writers timed around open..close (no process start-up
#     in the figures), with 1 writer and with WRITERS concurrent writers.
#     Printed per target: writes, ops/s (writes / wall time of the run),
#     p50/p99 latency in ms, errors. Targets: a tmpfs directory, a one-node
#     quorumfs mount, and node WRITE_NODE's mount of a 3-node cluster; then
#     the ratios 3-node/tmpfs and 3-node/1-node. The role of the node written
#     through is printed (a follower forwards its proposals to the leader).
#  2. Watch propagation: N_PROP files are created on node WRITE_NODE and left
#     to reach node WATCH_NODE; a ctypes inotify watch (IN_MODIFY |
#     IN_CLOSE_WRITE) goes on that directory in WATCH_NODE's mount; then the
#     files are rewritten one at a time, each write waiting for its events
#     (or PROP_DEADLINE_MS) before the next, so each latency is measured
#     alone. One process writes and watches (time.monotonic_ns, one clock).
#     Printed: events received; how many were already queued when close(2)
#     returned (latency ~0); lost writes (no event within the deadline); p50,
#     p99 and max in ms from close(2) returning on WRITE_NODE to reading the
#     file's first IN_MODIFY|IN_CLOSE_WRITE, and to its IN_CLOSE_WRITE (the
#     new value complete) on WATCH_NODE. If the first PROP_GIVE_UP writes are
#     all lost it stops and says so (remote changes not replayed into the
#     mount). WATCH_NODE=WRITE_NODE measures the local path for reference.
#
# Sample (default sizes, 2 cores, a shared machine; n1 was the leader):
#   target             writers  writes     ops/s    p50 ms    p99 ms  errors
#   tmpfs                    1    3000     64769     0.010     0.056  0
#   quorumfs, 1 node         1    3000       493     1.549     8.849  0
#   quorumfs, 3 nodes        1    3000       290     3.002    11.205  0
#   tmpfs                   16   20000     91010     0.010     0.077  0
#   quorumfs, 1 node        16   20000      3400     3.603    16.181  0
#   quorumfs, 3 nodes       16   20000      1322    11.775    20.415  0
#   3 nodes / tmpfs:  1 writer(s): ops/s x0.00448, p50 x303; 16 writer(s): ...
#   3 nodes / single: 1 writer(s): ops/s x0.588, p50 x1.94; 16 writer(s): ...
#   watch propagation: close(2) on n1 -> inotify IN_MODIFY|IN_CLOSE_WRITE on n2
#     writes 1000, events 1000 (43 already queued when close returned), lost 0
#     first event     ms: p50   0.500  p99   4.198  max   7.444
#     IN_CLOSE_WRITE  ms: p50   0.698  p99   4.462  max   7.603
#
# The cluster: members n1..n3 in a private network namespace on
# 127.0.0.11-13 (ports 2379/2380), flags as in tests/bats/helpers.bash; the
# one-node reference on 127.0.0.21 in the same namespace, stopped before the
# cluster starts. Nodes enter only the namespace's network (nsenter --net),
# so their mounts are visible here, where the writers run. The binary is
# copied first (a rebuild during the run does no harm). On exit, also on
# failure or ^C, every server is stopped by its PID, every mount detached,
# the namespace deleted and the temporary directory removed.
#
# Environment: QFS_BIN (build/server/quorumfs), WRITERS (16), N_WRITE1
# (writes with 1 writer, 3000), N_WRITEN (writes in all with WRITERS writers,
# 20000), MAX_SECONDS (bound of one write run, 20), VAL_SIZE (bytes per
# write, 1), N_PROP (1000), PROP_DEADLINE_MS (2000), PROP_GIVE_UP (20),
# WRITE_NODE (1, 2, 3, leader or follower; default 1), WATCH_NODE (default
# the next node: 2), SINGLE (1; 0 skips the one-node run), TMPFS (1; 0 skips
# tmpfs), QFS_BENCH_QUICK=1 (100/400 writes, N_PROP 50, MAX_SECONDS 10).
set -euo pipefail
cd "$(dirname "$0")/../.."
QFS_BIN=${QFS_BIN:-$PWD/build/server/quorumfs}
if [ "${QFS_BENCH_QUICK:-0}" = 1 ]; then
  d_w1=100 d_wn=400 d_prop=50 d_max=10
else
  d_w1=3000 d_wn=20000 d_prop=1000 d_max=20
fi
WRITERS=${WRITERS:-16}
N_WRITE1=${N_WRITE1:-$d_w1}
N_WRITEN=${N_WRITEN:-$d_wn}
MAX_SECONDS=${MAX_SECONDS:-$d_max}
VAL_SIZE=${VAL_SIZE:-1}
N_PROP=${N_PROP:-$d_prop}
PROP_DEADLINE_MS=${PROP_DEADLINE_MS:-2000}
PROP_GIVE_UP=${PROP_GIVE_UP:-20}
WRITE_NODE=${WRITE_NODE:-1}
WATCH_NODE=${WATCH_NODE:-}
SINGLE=${SINGLE:-1}
TMPFS=${TMPFS:-1}
# As tests/bats/helpers.bash: a tick of 50 ms, an election timeout of 500 ms.
CLUSTER_FLAGS=(--heartbeat-interval 50 --election-timeout 500 --request-timeout 3000)
START_DEADLINE=30

die() { echo "cluster_mount_bench.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (network namespace, tmpfs)"
[ -x "$QFS_BIN" ] || die "QFS_BIN=$QFS_BIN is not executable (scripts/build.sh)"
command -v python3 >/dev/null || die "python3 not found"
case $WRITE_NODE in [123] | leader | follower) ;; *) die "WRITE_NODE: 1..3, leader or follower" ;; esac
case $WATCH_NODE in [123] | "") ;; *) die "WATCH_NODE: 1..3" ;; esac

tmp=$(mktemp -d /tmp/qfs-cmbench.XXXXXX)
ns=""
loadpid=""
: >"$tmp/pids"
# A private copy: a rebuild during the run does not pull the binary away.
cp "$QFS_BIN" "$tmp/quorumfs"

# ------------------------------------------------------------------ cleanup
stop_pid() { # SIGTERM, a deadline, SIGKILL
  local pid=$1 end=$((SECONDS + 10))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
unmount_all() {
  local m
  for m in "$tmp"/*/mnt; do
    [ -d "$m" ] || continue
    fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
stop_all() {
  local pid
  while read -r pid; do [ -n "$pid" ] && stop_pid "$pid"; done <"$tmp/pids"
  : >"$tmp/pids"
  unmount_all
}
cleanup() {
  set +e
  [ -n "$loadpid" ] && { kill -TERM "$loadpid" 2>/dev/null; wait "$loadpid" 2>/dev/null; }
  [ -f "$tmp/pids" ] && stop_all
  mountpoint -q "$tmp/tmpfs" 2>/dev/null && umount -l "$tmp/tmpfs"
  [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ------------------------------------------------------------------ python
cat >"$tmp/load.py" <<'PY'
"""writers / prop: the two workloads; one JSON line on stdout."""
import ctypes, json, os, select, signal, struct, sys, time

def pct(v, p):  # nearest rank, v sorted, in ms
    if not v:
        return None
    k = max(0, min(len(v) - 1, -(-len(v) * p // 100) - 1))
    return v[k] / 1e6

def write_file(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)

def writers(root, nw, total, max_s, val_size):
    nw = int(nw); total = int(total); max_s = float(max_s); val = b"v" * int(val_size)
    per = [total // nw + (1 if j < total % nw else 0) for j in range(nw)]
    for j in range(nw):
        os.makedirs(os.path.join(root, "w%d" % j), exist_ok=True)
    go_r, go_w = os.pipe()
    kids = []
    for j in range(nw):
        res = os.path.join(root, ".res%d" % j)
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            lat, errs, d = [], 0, os.path.join(root, "w%d" % j)
            os.read(go_r, 1)
            deadline = time.monotonic() + max_s
            for i in range(per[j]):
                t0 = time.monotonic_ns()
                try:
                    write_file("%s/k%d" % (d, i), val)
                except OSError:
                    errs += 1
                lat.append(time.monotonic_ns() - t0)
                if time.monotonic() > deadline:
                    break
            with open(res, "w") as f:
                json.dump({"lat": lat, "errors": errs}, f)
            os._exit(0)
        kids.append((pid, res))
    os.close(go_r)

    def stop(sig, frame):  # stopped by the script: stop the writers too
        for pid, _ in kids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        os._exit(1)
    signal.signal(signal.SIGTERM, stop)
    time.sleep(0.2)  # every child is waiting on the pipe
    t0 = time.monotonic_ns()
    os.write(go_w, b"x" * nw)
    lat, errs, bad = [], 0, 0
    for pid, res in kids:
        _, st = os.waitpid(pid, 0)
        if st != 0:
            bad += 1
            continue
        with open(res) as f:
            r = json.load(f)
        os.unlink(res)
        lat += r["lat"]; errs += r["errors"]
    secs = (time.monotonic_ns() - t0) / 1e9
    lat.sort()
    out = {"writers": nw, "writes": len(lat), "seconds": secs,
           "ops_s": len(lat) / secs if secs else 0,
           "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "errors": errs}
    if bad:
        out["error"] = "%d writer(s) died" % bad
    print(json.dumps(out))

IN_MODIFY, IN_CLOSE_WRITE, IN_Q_OVERFLOW = 0x2, 0x8, 0x4000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

def prop(src, dst, n, deadline_ms, give_up, val_size):
    n = int(n); deadline = int(deadline_ms) * 1000000; give_up = int(give_up)
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs(src, exist_ok=True)
    names = ["k%d" % i for i in range(n)]
    for nm in names:  # create (empty) on the writing node
        os.close(os.open(os.path.join(src, nm), os.O_WRONLY | os.O_CREAT, 0o644))
    end = time.monotonic() + 60
    while True:  # ... and wait until the watching node has them all
        try:
            if len(os.listdir(dst)) >= n:
                break
        except OSError:
            pass
        if time.monotonic() > end:
            print(json.dumps({"error": "created files did not reach the watching node in 60 s"}))
            return
        time.sleep(0.05)
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    if libc.inotify_add_watch(fd, os.fsencode(dst), IN_MODIFY | IN_CLOSE_WRITE) < 0:
        raise OSError(ctypes.get_errno(), "inotify_add_watch " + dst)
    pending = b""
    overflow = 0

    def events(timeout_ns):
        """Events read within timeout_ns: [(name, mask, t_read_ns)]."""
        nonlocal pending, overflow
        r, _, _ = select.select([fd], [], [], max(0, timeout_ns) / 1e9)
        if not r:
            return []
        try:
            buf = os.read(fd, 65536)
        except BlockingIOError:
            return []
        t = time.monotonic_ns()
        out, off = [], 0
        while off + 16 <= len(buf):
            _, mask, _, ln = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16: off + 16 + ln].split(b"\0", 1)[0].decode(errors="replace")
            off += 16 + ln
            if mask & IN_Q_OVERFLOW:
                overflow += 1
            out.append((name, mask, t))
        return out

    quiet_end = time.monotonic_ns() + 500000000  # drain what creation left
    while time.monotonic_ns() < quiet_end:
        if events(100000000):
            quiet_end = time.monotonic_ns() + 500000000
    val = b"u" * max(1, int(val_size))
    lat, lat_cw, lost, early, errs, stale, no_cw = [], [], 0, 0, 0, 0, 0
    t_start = time.monotonic()
    done = 0
    for i, nm in enumerate(names):
        path = os.path.join(src, nm)
        try:
            fdw = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fdw, val)
            finally:
                os.close(fdw)
        except OSError:
            errs += 1
            continue
        t_close = time.monotonic_ns()
        done += 1
        # Wait for this file's first IN_MODIFY|IN_CLOSE_WRITE, then for its
        # IN_CLOSE_WRITE (the new value complete), within the deadline.
        got, got_cw, first = None, None, True
        while got_cw is None:
            left = t_close + deadline - time.monotonic_ns()
            if left <= 0:
                break
            # The first look does not wait: an event already queued came
            # before close(2) returned (its latency is then ~0).
            for name, mask, t in events(0 if first else left):
                if name != nm or not mask & (IN_MODIFY | IN_CLOSE_WRITE):
                    stale += 1
                    continue
                if got is None:
                    got = t
                    early += first
                if mask & IN_CLOSE_WRITE and got_cw is None:
                    got_cw = t
            first = False
        if got is None:
            lost += 1
            if lost == done and done >= give_up:
                break
            continue
        lat.append(got - t_close)
        if got_cw is None:
            no_cw += 1
        else:
            lat_cw.append(got_cw - t_close)
    lat.sort(); lat_cw.sort()
    out = {"writes": done, "events": len(lat), "lost": lost, "errors": errs, "early": early,
           "no_close_write": no_cw, "cw_p50_ms": pct(lat_cw, 50), "cw_p99_ms": pct(lat_cw, 99),
           "cw_max_ms": lat_cw[-1] / 1e6 if lat_cw else None,
           "stale_events": stale, "overflow": overflow,
           "seconds": time.monotonic() - t_start,
           "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
           "max_ms": lat[-1] / 1e6 if lat else None}
    if lost == done and done:
        out["gave_up"] = done < n
    print(json.dumps(out))

if __name__ == "__main__":
    {"writers": writers, "prop": prop}[sys.argv[1]](*sys.argv[2:])
PY

# ------------------------------------------------------------------ servers
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }

wait_until() { # SECS CMD...: polls CMD until it succeeds (deadline)
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

# node NAME IP INITIAL_CLUSTER: starts a member, mount at $tmp/NAME/mnt.
node() {
  local name=$1 ip=$2 cl=$3 dir=$tmp/$1
  mkdir -p "$dir/mnt"
  # exec: the PID recorded is the server's (nsenter --net execs it).
  (exec nsenter --net="/run/netns/$ns" "$tmp/quorumfs" --name "$name" --data-dir "$dir/data" \
    --mount "$dir/mnt" --listen-client-urls "http://$ip:2379" \
    --listen-peer-urls "http://$ip:2380" --initial-cluster "$cl" \
    --initial-cluster-token "bench-$$" "${CLUSTER_FLAGS[@]}" >"$dir/log" 2>&1) &
  echo $! >>"$tmp/pids"
  echo $! >"$dir/pid"
}

ready() { # NAME: a write through the mount went through
  { echo ready >"$tmp/$1/mnt/.bench-ready"; } 2>/dev/null && rm -f "$tmp/$1/mnt/.bench-ready"
}

wait_ready() { # NAME...
  local n
  for n in "$@"; do
    if ! wait_until "$START_DEADLINE" mountpoint -q "$tmp/$n/mnt" ||
      ! wait_until "$START_DEADLINE" ready "$n"; then
      echo "!! $n did not mount or take a write within ${START_DEADLINE}s; log tail:" >&2
      tail -n 20 "$tmp/$n/log" >&2 || true
      return 1
    fi
  done
}

role() { # NAME: leader / follower, from the node's last leader line
  if grep -E 'leader is|no leader' "$tmp/$1/log" | tail -1 | grep -q 'this member'; then
    echo leader
  else
    echo follower
  fi
}

ns=qfs-cmbench-$$
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up

# err_json RES: a failed run's result, the last line of RES.err as its error.
err_json() {
  python3 -c 'import json, sys; print(json.dumps({"error": sys.argv[1]}))' \
    "$(tail -n 1 "$1.err" 2>/dev/null)" >"$1"
}

# load RES ARGS...: runs load.py ARGS, its JSON line to RES. In the
# background with wait, so that a signal runs the trap at once (which stops
# it by PID; load.py then stops its writers).
load() {
  local res=$1; shift
  python3 "$tmp/load.py" "$@" >"$res" 2>"$res.err" &
  loadpid=$!
  wait "$loadpid" || err_json "$res"
  loadpid=""
}

# writes TARGET DIR: the 1-writer and WRITERS-writer runs; JSON in $tmp/res.*.
writes() {
  local target=$1 dir=$2 w n
  for w in 1 "$WRITERS"; do
    n=$N_WRITEN; [ "$w" = 1 ] && n=$N_WRITE1
    echo "  $target: $w writer(s), up to $n writes ..." >&2
    mkdir -p "$dir/bench$w"
    load "$tmp/res.$target.$w" writers "$dir/bench$w" "$w" "$n" "$MAX_SECONDS" "$VAL_SIZE"
  done
}

if [ "$TMPFS" = 1 ]; then
  mkdir -p "$tmp/tmpfs"
  mount -t tmpfs -o size=1g tmpfs "$tmp/tmpfs"
  writes tmpfs "$tmp/tmpfs"
  umount "$tmp/tmpfs"
fi

if [ "$SINGLE" = 1 ]; then
  echo "  starting a one-node quorumfs ..." >&2
  node s1 127.0.0.21 "s1=http://127.0.0.21:2380"
  wait_ready s1
  writes single "$tmp/s1/mnt"
  stop_all
fi

echo "  starting a 3-node quorumfs cluster ..." >&2
cl="n1=http://127.0.0.11:2380,n2=http://127.0.0.12:2380,n3=http://127.0.0.13:2380"
for i in 1 2 3; do node "n$i" "127.0.0.1$i" "$cl"; done
wait_ready n1 n2 n3
case $WRITE_NODE in
  leader | follower)
    for i in 1 2 3; do [ "$(role "n$i")" = "$WRITE_NODE" ] && break; done
    WRITE_NODE=$i ;;
esac
[ -n "$WATCH_NODE" ] || WATCH_NODE=$((WRITE_NODE % 3 + 1))
wrole=$(role "n$WRITE_NODE")
writes cluster "$tmp/n$WRITE_NODE/mnt"
echo "  watch propagation: $N_PROP sequential writes on n$WRITE_NODE, inotify on n$WATCH_NODE ..." >&2
load "$tmp/res.prop" prop "$tmp/n$WRITE_NODE/mnt/prop" "$tmp/n$WATCH_NODE/mnt/prop" \
  "$N_PROP" "$PROP_DEADLINE_MS" "$PROP_GIVE_UP" "$VAL_SIZE"
stop_all

# ------------------------------------------------------------------ report
echo
echo "quorumfs mount writes ($QFS_BIN), $(nproc) cores; $VAL_SIZE-byte values, a new file per write"
echo "3-node cluster written through n$WRITE_NODE ($wrole)"
python3 - "$tmp" "$WRITERS" "$WRITE_NODE" "$WATCH_NODE" "$PROP_DEADLINE_MS" <<'PY'
import json, sys
tmp, nw, wn, xn, dl = sys.argv[1:]
def res(name):
    try:
        with open("%s/res.%s" % (tmp, name)) as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None
def fmt(x):
    return "%.0f" % x if x >= 100 else "%.3g" % x
names = {"tmpfs": "tmpfs", "single": "quorumfs, 1 node", "cluster": "quorumfs, 3 nodes"}
failed = False
hdr = "%-18s %7s %7s %9s %9s %9s  %s" % ("target", "writers", "writes", "ops/s", "p50 ms", "p99 ms", "errors")
print(hdr); print("-" * len(hdr))
for w in ("1", nw):
    for t in ("tmpfs", "single", "cluster"):
        r = res("%s.%s" % (t, w))
        if r is None:
            continue
        if "ops_s" not in r:
            print("%-18s %7s  n/a: %s" % (names[t], w, r.get("error", "?"))); failed = True
            continue
        e = "%d" % r["errors"] + ("  " + r["error"] if "error" in r else "")
        if r["errors"] or "error" in r:
            failed = True
        print("%-18s %7s %7d %9.0f %9.3f %9.3f  %s" % (names[t], w, r["writes"], r["ops_s"],
              r["p50_ms"] or 0, r["p99_ms"] or 0, e))
for ref in ("tmpfs", "single"):
    parts = []
    for w in ("1", nw):
        c, b = res("cluster." + w), res("%s.%s" % (ref, w))
        try:
            parts.append("%s writer(s): ops/s x%s, p50 x%s" % (w, fmt(c["ops_s"] / b["ops_s"]), fmt(c["p50_ms"] / b["p50_ms"])))
        except (TypeError, KeyError, ZeroDivisionError):
            pass
    if parts:
        print("3 nodes / %-7s %s" % (ref + ":", "; ".join(parts)))
print()
r = res("prop")
print("watch propagation: close(2) on n%s -> inotify IN_MODIFY|IN_CLOSE_WRITE on n%s (deadline %s ms)" % (wn, xn, dl))
if r is None or "writes" not in r:
    print("  n/a: %s" % ((r or {}).get("error", "no result"))); failed = True
else:
    print("  writes %d, events %d (%d already queued when close returned), lost %d, write errors %d%s" % (
        r["writes"], r["events"], r["early"], r["lost"], r["errors"],
        ", queue overflows %d" % r["overflow"] if r["overflow"] else ""))
    if r["events"]:
        print("  first event     ms: p50 %7.3f  p99 %7.3f  max %7.3f" % (r["p50_ms"], r["p99_ms"], r["max_ms"]))
    if r["cw_p50_ms"] is not None:
        print("  IN_CLOSE_WRITE  ms: p50 %7.3f  p99 %7.3f  max %7.3f" % (r["cw_p50_ms"], r["cw_p99_ms"], r["cw_max_ms"]))
    if r["no_close_write"] or r["stale_events"]:
        print("  %d write(s) with IN_MODIFY but no IN_CLOSE_WRITE in time; %d unmatched event(s)" % (
            r["no_close_write"], r["stale_events"]))
    if r.get("gave_up") is not None:
        print("  NO EVENTS: every write was lost%s; are remote changes replayed into the mount?" % (
            " (stopped after the first %d)" % r["writes"] if r["gave_up"] else ""))
        failed = True
    if r["errors"]:
        failed = True
sys.exit(1 if failed else 0)
PY

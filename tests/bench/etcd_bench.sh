#!/usr/bin/env bash
# etcd_bench.sh - the same etcd v3 workload against etcd 3.4 and against
# quorumfs, one-node and three-node, in one run; prints ops/s and p50/p99
# latency of each and the quorumfs/etcd ratios, then `etcdctl check perf`
# figures for both. A benchmark: it prints figures; it exits non-zero only
# when a server did not start or a run failed (errors, wrong answers).
#
# Workloads (tests/bench/etcd_load.py, closed-loop gRPC clients):
#   put      1 client            N_PUT1 requests
#   put      CLIENTS clients     N_PUT requests
#   range    CLIENTS clients     N_RANGE linearizable gets of one key
#   range-s  CLIENTS clients     N_RANGE serializable gets of one key
# each bounded by MAX_SECONDS. Both servers of a topology run side by side
# and the workloads alternate between them, so that load from elsewhere on
# the machine hits both alike.
#
# Topologies: one node on 127.0.0.1 (ports picked free), and three members
# in a private network namespace on 127.0.0.11-13 (etcd on ports 2379/2380,
# quorumfs on 3379/3380); the load generator runs inside the namespace and
# spreads its connections over the three members. Servers run with
# --mount '' (the etcd API only) and the same heartbeat and election timing.
#
# Environment: QFS_BIN (build/server/quorumfs), TOPOLOGIES ("1 3"),
# CLIENTS (100), N_PUT1 (1000), N_PUT (20000), N_RANGE (20000),
# MAX_SECONDS (30 per run), PERF_LOAD (s; empty to skip check perf),
# PERF_TOPOLOGIES (1), VAL_SIZE (256).
set -euo pipefail
cd "$(dirname "$0")/../.."
QFS_BIN=${QFS_BIN:-$PWD/build/server/quorumfs}
LOAD=$PWD/tests/bench/etcd_load.py
TOPOLOGIES=${TOPOLOGIES:-"1 3"}
CLIENTS=${CLIENTS:-100}
N_PUT1=${N_PUT1:-1000}
N_PUT=${N_PUT:-20000}
N_RANGE=${N_RANGE:-20000}
MAX_SECONDS=${MAX_SECONDS:-30}
PERF_LOAD=${PERF_LOAD-s}
PERF_TOPOLOGIES=${PERF_TOPOLOGIES:-1}
VAL_SIZE=${VAL_SIZE:-256}
export ETCDCTL_API=3
TIMING=(--heartbeat-interval 100 --election-timeout 1000)
# How long a server may take to answer its first health check (seconds).
START_DEADLINE=30
# check perf runs 60 s; this bounds a hung one.
PERF_DEADLINE=150

die() { echo "etcd_bench.sh: $*" >&2; exit 1; }

# A Python that has grpcio (a version manager's python3 may not).
PY=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import grpc, grpc.aio' 2>/dev/null; then PY=$p; break; fi
done
[ -n "$PY" ] || die "no python3 with grpcio (install python3-grpcio)"
command -v etcd >/dev/null || die "etcd not found (install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl not found (install etcd-client)"
[ -x "$QFS_BIN" ] || die "QFS_BIN=$QFS_BIN is not executable (build first)"

tmp=$(mktemp -d /tmp/qfs-etcd-bench.XXXXXX)
ns=""
failed=0
: >"$tmp/pids"

# Every server started is stopped by its PID: SIGTERM, a deadline, SIGKILL.
stop_pid() {
  local pid=$1 end=$((SECONDS + 10))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_all() {
  local pid
  while read -r pid; do [ -n "$pid" ] && stop_pid "$pid"; done <"$tmp/pids"
  : >"$tmp/pids"
}
cleanup() {
  stop_all
  [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# in_topo CMD...: runs CMD where the current topology's servers listen.
in_topo() {
  if [ "$TOPO" = 3 ]; then ip netns exec "$ns" "$@"; else "$@"; fi
}

# bg NAME CMD...: starts a server in the topology, logging to $tmp/NAME.log.
bg() {
  local name=$1; shift
  # exec: the PID recorded is the server's own (ip netns exec execs too).
  if [ "$TOPO" = 3 ]; then
    (exec ip netns exec "$ns" "$@" >"$tmp/$name.log" 2>&1) &
  else
    (exec "$@" >"$tmp/$name.log" 2>&1) &
  fi
  echo $! >>"$tmp/pids"
}

healthy() { in_topo etcdctl --endpoints="$1" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; }

wait_healthy() { # NAME ENDPOINTS
  local end=$((SECONDS + START_DEADLINE))
  until healthy "$2"; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "!! $1 did not become healthy within ${START_DEADLINE}s; log tail:" >&2
      tail -n 15 "$tmp/$1"*.log >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

# Per target (etcd, qfs): comma-separated host:port, and 1 if healthy.
declare -A EP UP

# start_servers: etcd and quorumfs of topology $TOPO; fills EP and UP.
start_servers() {
  local i c p cl_e="" cl_q=""
  EP=([etcd]="" [qfs]="")
  if [ "$TOPO" = 1 ]; then
    c=$(free_port); p=$(free_port)
    bg etcd1 etcd --name e1 --data-dir "$tmp/etcd1" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "e1=http://127.0.0.1:$p" "${TIMING[@]}"
    EP[etcd]=127.0.0.1:$c
    c=$(free_port); p=$(free_port)
    bg qfs1 "$QFS_BIN" --name q1 --data-dir "$tmp/qfs1" --mount '' \
      --listen-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" "${TIMING[@]}"
    EP[qfs]=127.0.0.1:$c
  else
    ns=qfs-bench-$$
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    for i in 1 2 3; do
      cl_e="$cl_e${cl_e:+,}e$i=http://127.0.0.1$i:2380"
      cl_q="$cl_q${cl_q:+,}q$i=http://127.0.0.1$i:3380"
    done
    for i in 1 2 3; do
      bg "etcd3-$i" etcd --name "e$i" --data-dir "$tmp/etcd3-$i" \
        --listen-client-urls "http://127.0.0.1$i:2379" --advertise-client-urls "http://127.0.0.1$i:2379" \
        --listen-peer-urls "http://127.0.0.1$i:2380" --initial-advertise-peer-urls "http://127.0.0.1$i:2380" \
        --initial-cluster "$cl_e" --initial-cluster-token bench-etcd "${TIMING[@]}"
      bg "qfs3-$i" "$QFS_BIN" --name "q$i" --data-dir "$tmp/qfs3-$i" --mount '' \
        --listen-client-urls "http://127.0.0.1$i:3379" --listen-peer-urls "http://127.0.0.1$i:3380" \
        --initial-cluster "$cl_q" --initial-cluster-token bench-qfs "${TIMING[@]}"
      EP[etcd]="${EP[etcd]}${EP[etcd]:+,}127.0.0.1$i:2379"
      EP[qfs]="${EP[qfs]}${EP[qfs]:+,}127.0.0.1$i:3379"
    done
  fi
  UP=([etcd]=1 [qfs]=1)
  wait_healthy "etcd$TOPO" "${EP[etcd]}" || { UP[etcd]=0; failed=1; }
  wait_healthy "qfs$TOPO" "${EP[qfs]}" || { UP[qfs]=0; failed=1; }
}

stop_servers() {
  stop_all
  if [ -n "$ns" ]; then ip netns del "$ns" 2>/dev/null || true; ns=""; fi
}

# load TARGET OP CLIENTS REQUESTS: one run; its JSON line goes to
# $tmp/res.TOPO.OP.CLIENTS.TARGET.
load() {
  local target=$1 op=$2 clients=$3 n=$4 out
  out=$tmp/res.$TOPO.$op.$clients.$target
  if [ "${UP[$target]}" != 1 ]; then echo '{"error": "server not up"}' >"$out"; return 0; fi
  if ! in_topo "$PY" "$LOAD" --endpoints "${EP[$target]}" --op "$op" --clients "$clients" \
    --requests "$n" --max-seconds "$MAX_SECONDS" --val-size "$VAL_SIZE" >"$out" 2>"$out.err"; then
    failed=1
    [ -s "$out" ] || "$PY" -c 'import json, sys; print(json.dumps({"error": sys.argv[1]}))' \
      "$(tail -n 1 "$out.err")" >"$out"
  fi
}

WORKLOADS=("put 1 $N_PUT1" "put $CLIENTS $N_PUT" "range $CLIENTS $N_RANGE" "range-s $CLIENTS $N_RANGE")

run_topology() {
  local w
  start_servers
  for w in "${WORKLOADS[@]}"; do
    # shellcheck disable=SC2086
    set -- $w
    echo "  topology $TOPO: $1, $2 clients, up to $3 requests ..." >&2
    load etcd "$1" "$2" "$3"
    load qfs "$1" "$2" "$3"
  done
  if [[ " $PERF_TOPOLOGIES " == *" $TOPO "* ]] && [ -n "$PERF_LOAD" ]; then
    for target in etcd qfs; do
      [ "${UP[$target]}" = 1 ] || { echo "server not up" >"$tmp/perf.$TOPO.$target"; continue; }
      echo "  topology $TOPO: etcdctl check perf --load=$PERF_LOAD against $target (60 s) ..." >&2
      if ! in_topo timeout "$PERF_DEADLINE" etcdctl --endpoints="${EP[$target]}" check perf \
        --load="$PERF_LOAD" >"$tmp/perf.$TOPO.$target" 2>&1; then
        echo "(exit status $?)" >>"$tmp/perf.$TOPO.$target"
        failed=1
      fi
    done
  fi
  stop_servers
}

for TOPO in $TOPOLOGIES; do
  case $TOPO in 1 | 3) ;; *) die "TOPOLOGIES: 1 and/or 3" ;; esac
  run_topology
done

# ------------------------------------------------------------------ report
echo
echo "etcd $(etcd --version | sed -n 's/^etcd Version: //p') vs quorumfs ($QFS_BIN), $(nproc) cores; values of $VAL_SIZE bytes"
"$PY" - "$tmp" "$TOPOLOGIES" <<'PY'
import glob, json, os, sys
tmp, topos = sys.argv[1], sys.argv[2].split()
def res(path):
    try:
        with open(path) as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return {"error": "no result"}
def cell(r):
    if "ops_s" not in r:
        return "%-28s" % ("n/a: " + str(r.get("error", "?"))[:23])
    s = "%9.0f %8.2f %8.2f" % (r["ops_s"], r["p50_ms"], r["p99_ms"])
    if r.get("errors") or r.get("bad_answers"):
        s += " !%d err %d bad" % (r.get("errors", 0), r.get("bad_answers", 0))
    return "%-28s" % s
def ratio(q, e, k):
    try:
        return "%6.2f" % (q[k] / e[k])
    except (KeyError, ZeroDivisionError, TypeError):
        return "%6s" % "-"
hdr = "%-5s %-8s %7s | %-28s | %-28s | %s" % ("nodes", "op", "clients",
      "etcd: ops/s  p50ms  p99ms", "quorumfs: ops/s  p50ms  p99ms", "q/e ops/s  q/e p99")
print(hdr)
print("-" * len(hdr))
for t in topos:
    for path in sorted(glob.glob(os.path.join(tmp, "res.%s.*.etcd" % t)),
                       key=lambda p: (p.split(".")[-3] != "put", int(p.split(".")[-2]), p.split(".")[-3])):
        op, clients = path.split(".")[-3], path.split(".")[-2]
        e, q = res(path), res(path[:-4] + "qfs")
        print("%-5s %-8s %7s | %s | %s | %9s  %8s" % (t, op, clients, cell(e), cell(q),
              ratio(q, e, "ops_s"), ratio(q, e, "p99_ms")))
PY
for TOPO in $PERF_TOPOLOGIES; do
  if [ -z "$PERF_LOAD" ] || [[ " $TOPOLOGIES " != *" $TOPO "* ]]; then continue; fi
  echo
  echo "etcdctl check perf --load=$PERF_LOAD, $TOPO node(s):"
  for target in etcd qfs; do
    name=$target; [ "$target" = qfs ] && name=quorumfs
    echo "  $name:"
    grep -E '^(PASS|FAIL)|too (low|long|high)|exit status|not up|Error' "$tmp/perf.$TOPO.$target" 2>/dev/null |
      sed 's/^/    /' || echo "    (no output)"
  done
done
[ "$failed" = 0 ] || { echo; echo "some runs FAILED (see n/a and ! above)"; exit 1; }

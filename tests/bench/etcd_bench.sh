#!/usr/bin/env bash
# etcd_bench.sh - the same etcd v3 workloads against etcd 3.4 and against
# quorumfs, one node and three, in one run; prints requests/s and p50/p99
# latency of each and the quorumfs/etcd ratios, then (optionally)
# `etcdctl check perf` for both. A benchmark: it prints figures; it exits
# non-zero only when a server did not start or a run failed (errors, wrong
# answers, lost events).
#
# The load generator is tests/bench/qfs_load (C, on client/; closed-loop
# clients spread over HTTP/2 connections, like etcd's `benchmark`):
#   put 1              1 client, 1 connection          N_PUT1 puts
#   put CLIENTS        CLIENTS clients, CONNS conns     N_PUT puts
#   put CLIENTS_BIG    CLIENTS_BIG, CONNS_BIG conns     N_PUT puts ("" skips)
#   range-l            CLIENTS clients                  N_RANGE linearizable gets of one key
#   range-s            CLIENTS clients                  N_RANGE serializable gets
#   txn-put            CLIENTS clients                  N_TXN txns of one put
#   lease-keepalive    CLIENTS clients, a lease each    N_LEASE keep-alives
#   watch              W_STREAMS streams x W_WATCHERS watchers of one key,
#                      W_PUTS puts by 1 client; events/s and delivery latency
# Puts go to random keys of KEY_SIZE bytes out of KEY_SPACE, values of
# VAL_SIZE bytes; each run is bounded by MAX_SECONDS. Both servers of a
# topology run side by side, and each workload runs on etcd and then at once
# on quorumfs (back to back), so that load from elsewhere on the machine hits
# both alike.
#
# Everything runs in one private network namespace (root needed): one node
# on 127.0.0.21, three members on 127.0.0.11-13; etcd on ports 2379/2380,
# quorumfs on 3379/3380; the load generator spreads its connections over the
# members. Servers run with --mount '' (the etcd API only) and the same
# heartbeat and election timing. Every server is stopped by its PID and the
# namespace deleted on exit, also on failure or ^C.
#
# Environment: QFS_BIN (build/server/quorumfs), QFS_LOAD (qfs_load of the
# same build), TOPOLOGIES ("1 3"), CLIENTS (100), CONNS (10), CLIENTS_BIG
# (1000), CONNS_BIG (100), N_PUT1 (1000), N_PUT (20000), N_RANGE (20000),
# N_TXN (20000), N_LEASE (20000), W_STREAMS (10), W_WATCHERS (100), W_PUTS
# (1000), KEY_SIZE (8), KEY_SPACE (100000), VAL_SIZE (256), MAX_SECONDS (30
# per run), WORKLOADS (all: put1 put putbig range-l range-s txn-put
# lease-keepalive watch), PERF_LOAD (s; empty skips check perf),
# PERF_TOPOLOGIES (1).
set -euo pipefail
cd "$(dirname "$0")/../.."
QFS_BIN=${QFS_BIN:-$PWD/build/server/quorumfs}
QFS_LOAD=${QFS_LOAD:-$(dirname "$QFS_BIN")/../tests/bench/qfs_load}
TOPOLOGIES=${TOPOLOGIES:-"1 3"}
CLIENTS=${CLIENTS:-100}
CONNS=${CONNS:-10}
CLIENTS_BIG=${CLIENTS_BIG-1000}
CONNS_BIG=${CONNS_BIG:-100}
N_PUT1=${N_PUT1:-1000}
N_PUT=${N_PUT:-20000}
N_RANGE=${N_RANGE:-20000}
N_TXN=${N_TXN:-20000}
N_LEASE=${N_LEASE:-20000}
W_STREAMS=${W_STREAMS:-10}
W_WATCHERS=${W_WATCHERS:-100}
W_PUTS=${W_PUTS:-1000}
KEY_SIZE=${KEY_SIZE:-8}
KEY_SPACE=${KEY_SPACE:-100000}
VAL_SIZE=${VAL_SIZE:-256}
MAX_SECONDS=${MAX_SECONDS:-30}
WORKLOADS=${WORKLOADS:-"put1 put putbig range-l range-s txn-put lease-keepalive watch"}
PERF_LOAD=${PERF_LOAD-s}
PERF_TOPOLOGIES=${PERF_TOPOLOGIES:-1}
export ETCDCTL_API=3
TIMING=(--heartbeat-interval 100 --election-timeout 1000)
# How long a server may take to answer its first health check (seconds).
START_DEADLINE=30
# check perf runs 60 s; this bounds a hung one.
PERF_DEADLINE=150
# A qfs_load run that outlives its own bounds by this much is killed.
LOAD_GRACE=60

die() { echo "etcd_bench.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (private network namespace)"
command -v etcd >/dev/null || die "etcd not found (install etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl not found (install etcd-client)"
[ -x "$QFS_BIN" ] || die "QFS_BIN=$QFS_BIN is not executable (build first)"
[ -x "$QFS_LOAD" ] || die "QFS_LOAD=$QFS_LOAD is not executable (cmake --build ... --target qfs_load)"

tmp=$(mktemp -d /tmp/qfs-etcd-bench.XXXXXX)
ns=""
failed=0
: >"$tmp/pids"
# Private copies: a rebuild during the run does not pull the binaries away.
cp "$QFS_BIN" "$tmp/quorumfs"
cp "$QFS_LOAD" "$tmp/qfs_load"

# Every process started is stopped by its PID: SIGTERM, a deadline, SIGKILL.
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
  set +e
  [ -n "${loadpid:-}" ] && stop_pid "$loadpid"
  stop_all
  [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

ns=qfs-bench-$$
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
in_ns() { ip netns exec "$ns" "$@"; }

# bg NAME CMD...: starts a server in the namespace, logging to $tmp/NAME.log.
bg() {
  local name=$1; shift
  # exec: the PID recorded is the server's own (ip netns exec execs too).
  (exec ip netns exec "$ns" "$@" >"$tmp/$name.log" 2>&1) &
  echo $! >>"$tmp/pids"
}

healthy() { in_ns etcdctl --endpoints="$1" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; }

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
  local i ips cl_e="" cl_q=""
  EP=([etcd]="" [qfs]="")
  if [ "$TOPO" = 1 ]; then ips="21"; else ips="11 12 13"; fi
  for i in $ips; do
    cl_e="$cl_e${cl_e:+,}e$i=http://127.0.0.$i:2380"
    cl_q="$cl_q${cl_q:+,}q$i=http://127.0.0.$i:3380"
  done
  for i in $ips; do
    bg "etcd$TOPO-$i" etcd --name "e$i" --data-dir "$tmp/etcd$TOPO-$i" \
      --listen-client-urls "http://127.0.0.$i:2379" --advertise-client-urls "http://127.0.0.$i:2379" \
      --listen-peer-urls "http://127.0.0.$i:2380" --initial-advertise-peer-urls "http://127.0.0.$i:2380" \
      --initial-cluster "$cl_e" --initial-cluster-token bench-etcd "${TIMING[@]}"
    bg "qfs$TOPO-$i" "$tmp/quorumfs" --name "q$i" --data-dir "$tmp/qfs$TOPO-$i" --mount '' \
      --listen-client-urls "http://127.0.0.$i:3379" --listen-peer-urls "http://127.0.0.$i:3380" \
      --initial-cluster "$cl_q" --initial-cluster-token bench-qfs "${TIMING[@]}"
    EP[etcd]="${EP[etcd]}${EP[etcd]:+,}127.0.0.$i:2379"
    EP[qfs]="${EP[qfs]}${EP[qfs]:+,}127.0.0.$i:3379"
  done
  UP=([etcd]=1 [qfs]=1)
  wait_healthy "etcd$TOPO" "${EP[etcd]}" || { UP[etcd]=0; failed=1; }
  wait_healthy "qfs$TOPO" "${EP[qfs]}" || { UP[qfs]=0; failed=1; }
}

# args WORKLOAD: the qfs_load arguments of a workload ("" if skipped).
args() {
  local common=(--key-size "$KEY_SIZE" --key-space-size "$KEY_SPACE" --val-size "$VAL_SIZE"
    --max-seconds "$MAX_SECONDS")
  case $1 in
    put1) echo put --clients 1 --conns 1 --total "$N_PUT1" "${common[@]}" ;;
    put) echo put --clients "$CLIENTS" --conns "$CONNS" --total "$N_PUT" "${common[@]}" ;;
    putbig) [ -z "$CLIENTS_BIG" ] ||
      echo put --clients "$CLIENTS_BIG" --conns "$CONNS_BIG" --total "$N_PUT" "${common[@]}" ;;
    range-l | range-s)
      echo range --consistency "${1#range-}" --clients "$CLIENTS" --conns "$CONNS" \
        --total "$N_RANGE" "${common[@]}" ;;
    txn-put) echo txn-put --clients "$CLIENTS" --conns "$CONNS" --total "$N_TXN" "${common[@]}" ;;
    lease-keepalive)
      echo lease-keepalive --clients "$CLIENTS" --conns "$CONNS" --total "$N_LEASE" \
        --max-seconds "$MAX_SECONDS" ;;
    watch)
      echo watch --streams "$W_STREAMS" --watchers "$W_WATCHERS" --puts "$W_PUTS" --clients 1 \
        --conns "$W_STREAMS" --val-size "$VAL_SIZE" --max-seconds "$MAX_SECONDS" ;;
    *) die "unknown workload $1" ;;
  esac
}

# label WORKLOAD: how the report names it.
label() {
  case $1 in
    put1) echo "put, 1 client" ;;
    put) echo "put, $CLIENTS clients" ;;
    putbig) echo "put, $CLIENTS_BIG clients" ;;
    range-l) echo "range l, $CLIENTS cl." ;;
    range-s) echo "range s, $CLIENTS cl." ;;
    txn-put) echo "txn-put, $CLIENTS cl." ;;
    lease-keepalive) echo "keepalive, $CLIENTS cl." ;;
    watch) echo "watch ${W_STREAMS}x${W_WATCHERS}, $W_PUTS puts" ;;
  esac
}

# load TARGET WORKLOAD: one run; its RESULT line (or "ERROR ...") goes to
# $tmp/res.TOPO.WORKLOAD.TARGET. In the background with wait, so that a
# signal runs the trap at once, which stops it by PID.
load() {
  local target=$1 w=$2 out a
  out=$tmp/res.$TOPO.$w.$target
  if [ "${UP[$target]}" != 1 ]; then echo "ERROR server not up" >"$out"; return 0; fi
  a=$(args "$w")
  # shellcheck disable=SC2086
  timeout $((MAX_SECONDS + LOAD_GRACE)) ip netns exec "$ns" "$tmp/qfs_load" $a \
    --endpoints "${EP[$target]}" >"$out.txt" 2>"$out.err" &
  loadpid=$!
  if ! wait "$loadpid"; then failed=1; fi
  loadpid=""
  if ! grep '^RESULT ' "$out.txt" >"$out"; then
    echo "ERROR $(tail -n 1 "$out.err")" >"$out"
  fi
}

run_topology() {
  local w target
  start_servers
  for w in $WORKLOADS; do
    [ -n "$(args "$w")" ] || continue
    echo "  $TOPO node(s): $(label "$w") ..." >&2
    load etcd "$w"
    load qfs "$w"
  done
  if [[ " $PERF_TOPOLOGIES " == *" $TOPO "* ]] && [ -n "$PERF_LOAD" ]; then
    for target in etcd qfs; do
      [ "${UP[$target]}" = 1 ] || { echo "server not up" >"$tmp/perf.$TOPO.$target"; continue; }
      echo "  $TOPO node(s): etcdctl check perf --load=$PERF_LOAD against $target (60 s) ..." >&2
      if ! in_ns timeout "$PERF_DEADLINE" etcdctl --endpoints="${EP[$target]}" check perf \
        --load="$PERF_LOAD" >"$tmp/perf.$TOPO.$target" 2>&1; then
        echo "(exit status $?)" >>"$tmp/perf.$TOPO.$target"
        failed=1
      fi
    done
  fi
  stop_all
}

for TOPO in $TOPOLOGIES; do
  case $TOPO in 1 | 3) ;; *) die "TOPOLOGIES: 1 and/or 3" ;; esac
  run_topology
done

# ------------------------------------------------------------------ report
# field FILE KEY: the value of KEY= in FILE's RESULT line.
field() { sed -n "s/^RESULT .*\\b$2=\\([^ ]*\\).*/\\1/p" "$1" 2>/dev/null | head -n 1; }
ratio() { awk -v q="$1" -v e="$2" 'BEGIN { if (q == "" || e == "" || e + 0 == 0) print "-"; else printf "%.2f", q / e }'; }
cell() { # FILE: "req/s p50 p99" or the error
  local f=$1
  if grep -q '^RESULT ' "$f" 2>/dev/null; then
    local s e b
    s=$(printf "%9.0f %8.2f %8.2f" "$(field "$f" rps)" "$(field "$f" p50_ms)" "$(field "$f" p99_ms)")
    e=$(field "$f" errors); b=$(field "$f" bad)
    if [ "$e" != 0 ] || [ "$b" != 0 ]; then s="$s !${e}err ${b}bad"; fi
    if [ "$(field "$f" workload)" = watch ] && [ "$(field "$f" events)" != "$(field "$f" expected)" ]; then
      s="$s !$(field "$f" events)/$(field "$f" expected) events"
    fi
    printf "%-27s" "$s"
  else
    printf "%-27s" "n/a: $(cut -c 7-26 "$f" 2>/dev/null)"
  fi
}

echo
echo "etcd $(etcd --version | sed -n 's/^etcd Version: //p') vs quorumfs ($QFS_BIN), $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "keys of $KEY_SIZE bytes out of $KEY_SPACE, values of $VAL_SIZE bytes; watch: req/s is events/s, latency from put to event"
hdr=$(printf "%-5s %-26s | %-27s | %-27s | %s" nodes workload "etcd: req/s  p50ms  p99ms" \
  "quorumfs: req/s p50ms p99ms" "q/e req/s  q/e p99")
echo "$hdr"
printf '%*s\n' "${#hdr}" '' | tr ' ' -
for TOPO in $TOPOLOGIES; do
  for w in $WORKLOADS; do
    e=$tmp/res.$TOPO.$w.etcd q=$tmp/res.$TOPO.$w.qfs
    [ -f "$e" ] || continue
    printf "%-5s %-26s | %s | %s | %9s  %8s\n" "$TOPO" "$(label "$w")" "$(cell "$e")" "$(cell "$q")" \
      "$(ratio "$(field "$q" rps)" "$(field "$e" rps)")" \
      "$(ratio "$(field "$q" p99_ms)" "$(field "$e" p99_ms)")"
  done
done
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

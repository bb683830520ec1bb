#!/usr/bin/env bash
# qfs_load_smoke.sh QFS_LOAD - ctest smoke check of the load generator: one
# etcd 3.4 on 127.0.0.1 (free ports), `qfs_load put --total 100` must report
# 100 successes, then a short run of every other workload must succeed.
# etcd is stopped by its PID and its directory removed, also on failure.
# Exit 77 (skipped) without etcd.
set -euo pipefail
LOAD=$1
command -v etcd >/dev/null || { echo "etcd not found: skipped"; exit 77; }
tmp=$(mktemp -d /tmp/qfs-load-smoke.XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two free ports in 20000..59999 (no listener now; a race with another
# program is possible and would show as etcd failing to start).
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return; fi
  done
  return 1
}
c=$(free_port); p=$(free_port)
[ "$c" != "$p" ] || p=$((p + 1))
etcd --name s --data-dir "$tmp/data" --listen-client-urls "http://127.0.0.1:$c" \
  --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
  --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "s=http://127.0.0.1:$p" \
  >"$tmp/log" 2>&1 &
pid=$!
EP=--endpoints=127.0.0.1:$c
# qfs_load waits for the connection itself (its setup has a deadline), but
# etcd must be listening first: poll for up to 8 s.
for _ in $(seq 1 80); do ss -Htln "sport = :$c" | grep -q . && break; sleep 0.1; done
out=$("$LOAD" put "$EP" --total 100 --max-seconds 5)
echo "$out"
grep -q '^RESULT workload=put .* ok=100 errors=0 bad=0 ' <<<"$out"
for w in "range --consistency s" "range" "txn-put" "lease-keepalive"; do
  # shellcheck disable=SC2086
  "$LOAD" $w "$EP" --total 50 --clients 4 --conns 2 --max-seconds 5 | grep '^RESULT'
done
"$LOAD" watch "$EP" --streams 2 --watchers 3 --puts 20 --max-seconds 5 | grep '^RESULT.* events=120 expected=120 '
echo "qfs_load smoke: ok"

#!/usr/bin/env bash
# mount_fanout.sh - watch fan-out through client mounts: one 3-member
# cluster (quorumfs members without mounts, then real etcd 3.4 members) and
# N `quorumfs mount` client mounts on this machine, each with an
# `inotifywait -m` on the same directory. Puts are made on member 1, spaced
# so that each is measured alone; printed per server kind and N: p50/p99/max
# from a put's send to its first inotify event, and to its CLOSE_WRITE (the
# value complete), over every (put, mount) pair and for the slowest mount of
# each put; events missing; the RSS of one client mount (and the mean and
# largest). A benchmark: it prints figures; it exits non-zero only when a
# server or a mount did not start or events were lost.
#
# Run as root (network namespace, FUSE mounts, an inotify limit):
#   tests/bench/mount_fanout.sh                    # N = 10, 50, 200; about 3 minutes
#   MOUNTS="10" PUTS=20 tests/bench/mount_fanout.sh  # about 30 seconds
#
# How: members on 127.0.0.11-13 (ports 2379/2380) in a private network
# namespace; mounts run in that namespace's network (nsenter --net), so
# their mountpoints are visible here, where the watchers run. Mount i lists
# the members starting at member i mod 3, so connections spread over the
# three. For each N the mounts already started are kept and more are added.
# Each watcher's lines get a CLOCK_REALTIME stamp (perl's Time::HiRes, or
# bash's $EPOCHREALTIME) the moment they are read; the putter (qfs_load put --rate, one client)
# logs each put's send time on the same clock, so a latency includes the
# mount's replay, the kernel's inotify queue and inotifywait's output.
#
# Limits: each inotifywait needs an inotify instance, and
# fs.inotify.max_user_instances is 128 by default (all are root's here):
# the script raises it by the largest N for the run and restores it on
# exit. FUSE: root is not bound by fuse.conf's mount_max. Memory: one client
# mount is a few MB of RSS (printed).
#
# Cleanup: on exit, also on failure or ^C, every process started (readers,
# watchers, mounts, putter, members) is stopped by its PID (SIGTERM, a
# deadline, SIGKILL), every mountpoint detached, the namespace deleted, the
# inotify limit restored and the temporary directory removed.
#
# Environment: QFS_BIN (build/server/quorumfs), QFS_LOAD (qfs_load of the
# same build), MOUNTS ("10 50 200"), SERVERS ("quorumfs etcd"), PUTS (per N,
# 100), PUT_RATE (puts/s, 5), SETTLE (seconds between the mounts' start and
# the first put, 3), VAL_SIZE (16), EVENT_DEADLINE (seconds after
# the last put, 15), START_DEADLINE (seconds for members, and for all
# mounts of a step, 60).
set -euo pipefail
cd "$(dirname "$0")/../.."
QFS_BIN=${QFS_BIN:-$PWD/build/server/quorumfs}
QFS_LOAD=${QFS_LOAD:-$(dirname "$QFS_BIN")/../tests/bench/qfs_load}
MOUNTS=${MOUNTS:-"10 50 200"}
SERVERS=${SERVERS:-"quorumfs etcd"}
PUTS=${PUTS:-100}
PUT_RATE=${PUT_RATE:-5}
SETTLE=${SETTLE:-3}
VAL_SIZE=${VAL_SIZE:-16}
EVENT_DEADLINE=${EVENT_DEADLINE:-15}
START_DEADLINE=${START_DEADLINE:-60}
# Bounds of what the environment can ask for.
MOUNTS_MAX=1000
PUTS_MAX=100000
TIMING=(--heartbeat-interval 100 --election-timeout 1000)
INOTIFY=/proc/sys/fs/inotify/max_user_instances
# Stamps by perl (buffered reads) where Time::HiRes is there, else by bash
# (one read(2) per byte, more CPU taken from what is measured).
PERL_STAMP=0
perl -MTime::HiRes=time -e 1 2>/dev/null && PERL_STAMP=1

die() { echo "mount_fanout.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (network namespace, FUSE mounts, inotify limit)"
[ -x "$QFS_BIN" ] || die "QFS_BIN=$QFS_BIN is not executable (build first)"
[ -x "$QFS_LOAD" ] || die "QFS_LOAD=$QFS_LOAD is not executable (cmake --build ... --target qfs_load)"
for t in inotifywait fusermount3 nsenter etcdctl; do command -v $t >/dev/null || die "$t not found"; done
[[ " $SERVERS " != *" etcd "* ]] || command -v etcd >/dev/null || die "etcd not found (etcd-server)"
[ -c /dev/fuse ] || die "no /dev/fuse"
n_max=0
for n in $MOUNTS; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$MOUNTS_MAX" ] || die "MOUNTS: 1..$MOUNTS_MAX each"
  [ "$n" -gt "$n_max" ] && n_max=$n
done
[[ "$PUTS" =~ ^[0-9]+$ ]] && [ "$PUTS" -ge 1 ] && [ "$PUTS" -le "$PUTS_MAX" ] || die "PUTS: 1..$PUTS_MAX"
for kind in $SERVERS; do case $kind in quorumfs | etcd) ;; *) die "SERVERS: quorumfs and/or etcd" ;; esac; done

tmp=$(mktemp -d /tmp/qfs-fanout.XXXXXX)
ns=""
inotify_old=""
loadpid=""
# PIDs by group, stopped in this order: readers and watchers, mounts, members.
: >"$tmp/pids.watch"; : >"$tmp/pids.mount"; : >"$tmp/pids.srv"
# Private copies: a rebuild during the run does not pull the binaries away.
cp "$QFS_BIN" "$tmp/quorumfs"
cp "$QFS_LOAD" "$tmp/qfs_load"

# ------------------------------------------------------------------ cleanup
# stop_group FILE: SIGTERM to every PID in FILE, up to 10 s for all of them
# to end, then SIGKILL to the rest; FILE is emptied.
stop_group() {
  local pid end=$((SECONDS + 10)) alive
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$1"
  while :; do
    alive=0
    while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1 && break; done <"$1"
    [ "$alive" = 1 ] && [ "$SECONDS" -lt "$end" ] || break
    sleep 0.05
  done
  while read -r pid; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done <"$1"
  : >"$1"
}
unmount_all() {
  local m
  for m in "$tmp"/*/m*/mnt; do
    [ -d "$m" ] || continue
    if mountpoint -q "$m"; then fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; fi
  done
}
stop_all() {
  stop_group "$tmp/pids.watch"
  stop_group "$tmp/pids.mount"
  unmount_all
  stop_group "$tmp/pids.srv"
}
cleanup() {
  set +e
  if [ -n "$loadpid" ]; then kill -TERM "$loadpid" 2>/dev/null; wait "$loadpid" 2>/dev/null; fi
  stop_all
  [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
  [ -n "$inotify_old" ] && echo "$inotify_old" >"$INOTIFY"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ------------------------------------------------------------------ limits
cur=$(cat "$INOTIFY")
need=$((cur + n_max))
if [ "$cur" -lt "$need" ]; then
  inotify_old=$cur
  echo "$need" >"$INOTIFY" || die "cannot raise $INOTIFY to $need (it is $cur)"
  echo "  fs.inotify.max_user_instances raised from $cur to $need for the run" >&2
fi

ns=qfs-fanout-$$
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
EPS=(127.0.0.11:2379 127.0.0.12:2379 127.0.0.13:2379)
ectl() { ip netns exec "$ns" timeout 20 etcdctl --endpoints="$(IFS=,; echo "${EPS[*]}")" "$@"; }

wait_until() { # SECS CMD...: polls CMD until it succeeds (deadline)
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

# ------------------------------------------------------------------ members
start_members() { # KIND
  local kind=$1 i ip cl=""
  for i in 1 2 3; do cl="$cl${cl:+,}n$i=http://127.0.0.1$i:2380"; done
  for i in 1 2 3; do
    ip=127.0.0.1$i
    mkdir -p "$tmp/$kind$i"
    # exec: the PID recorded is the server's own (nsenter execs it).
    if [ "$kind" = etcd ]; then
      (exec nsenter --net="/run/netns/$ns" etcd --name "n$i" --data-dir "$tmp/$kind$i/data" \
        --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
        --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
        --initial-cluster "$cl" --initial-cluster-token "fanout-$$" "${TIMING[@]}" \
        >"$tmp/$kind$i/log" 2>&1) &
    else
      (exec nsenter --net="/run/netns/$ns" "$tmp/quorumfs" --name "n$i" --data-dir "$tmp/$kind$i/data" \
        --mount '' --listen-client-urls "http://$ip:2379" --listen-peer-urls "http://$ip:2380" \
        --initial-cluster "$cl" --initial-cluster-token "fanout-$$" "${TIMING[@]}" \
        >"$tmp/$kind$i/log" 2>&1) &
    fi
    echo $! >>"$tmp/pids.srv"
  done
  healthy() { ectl endpoint health >/dev/null 2>&1 && ectl put /fan/seed 1 >/dev/null 2>&1; }
  if ! wait_until "$START_DEADLINE" healthy; then
    for i in 1 2 3; do tail -n 15 "$tmp/$kind$i/log" >&2; done
    die "$kind members not healthy within ${START_DEADLINE}s"
  fi
}

# ------------------------------------------------------------------ mounts
mounted=0 # mounts started for the current kind: $mdir/m1..m$mounted
mdir=""   # $tmp/mounts-KIND

# add_mounts N: starts mounts mounted+1..N, waits for them, then starts
# their watchers and waits until each has its watch.
add_mounts() {
  local n=$1 i first=$((mounted + 1)) d eps j
  for ((i = first; i <= n; i++)); do
    d=$mdir/m$i
    mkdir -p "$d/mnt"
    eps=""
    for j in 0 1 2; do eps="$eps${eps:+,}http://${EPS[$(((i + j) % 3))]}"; done
    (exec nsenter --net="/run/netns/$ns" "$tmp/quorumfs" mount --foreground --endpoints "$eps" \
      --cache-dir "$d/cache" "$d/mnt" >"$d/log" 2>&1) &
    echo $! >>"$tmp/pids.mount"
    echo $! >"$d/pid"
  done
  mounted=$n
  local end=$((SECONDS + START_DEADLINE))
  for ((i = first; i <= n; i++)); do
    d=$mdir/m$i
    until [ -d "$d/mnt/fan" ] && mountpoint -q "$d/mnt"; do
      if [ "$SECONDS" -ge "$end" ] || ! kill -0 "$(cat "$d/pid")" 2>/dev/null; then
        tail -n 20 "$d/log" >&2
        die "mount $i did not mount and show /fan within ${START_DEADLINE}s"
      fi
      sleep 0.05
    done
  done
  for ((i = first; i <= n; i++)); do
    d=$mdir/m$i
    mkfifo "$d/fifo"
    inotifywait -m --format '%e %f' "$d/mnt/fan" >"$d/fifo" 2>"$d/iw.err" &
    echo $! >>"$tmp/pids.watch"
    # Each line stamped as it is read (microseconds since the epoch).
    if [ "$PERL_STAMP" = 1 ]; then
      perl -MTime::HiRes=time -ne 'BEGIN { $| = 1 } printf "%.0f %s", time() * 1e6, $_' \
        <"$d/fifo" >"$d/ev" &
    else
      (while IFS= read -r l; do echo "${EPOCHREALTIME/./} $l"; done) <"$d/fifo" >"$d/ev" &
    fi
    echo $! >>"$tmp/pids.watch"
  done
  for ((i = first; i <= n; i++)); do
    wait_until "$START_DEADLINE" grep -q "Watches established" "$mdir/m$i/iw.err" ||
      die "inotifywait on mount $i: $(cat "$mdir/m$i/iw.err")"
  done
  # Let the new mounts finish their start (initial load, cache writes).
  sleep "$SETTLE"
}

# all_events N TAG COUNT: mounts 1..N printed COUNT CLOSE_WRITE lines of round TAG.
all_events() {
  local i files=()
  for ((i = 1; i <= $1; i++)); do files+=("$mdir/m$i/ev"); done
  [ "$(grep -h "CLOSE_WRITE.* $2" "${files[@]}" 2>/dev/null | wc -l)" -ge "$3" ]
}

rss_kb() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status" 2>/dev/null || echo 0; }

# round KIND N: N mounts, PUTS puts; figures to $tmp/res.KIND.N.
round() {
  local kind=$1 n=$2 tag="r$2-" i
  echo "  $kind: $n mounts ..." >&2
  add_mounts "$n"
  local sends=$tmp/sends.$kind.$n
  ip netns exec "$ns" "$tmp/qfs_load" put --endpoints "${EPS[0]}" --clients 1 --conns 1 \
    --total "$PUTS" --rate "$PUT_RATE" --sequential-keys --key-prefix "/fan/$tag" --key-size 6 \
    --key-space-size "$PUTS" --val-size "$VAL_SIZE" --sends "$sends" \
    --max-seconds $((PUTS / PUT_RATE + 30)) >"$tmp/put.$kind.$n" 2>&1 &
  loadpid=$!
  wait "$loadpid" || { cat "$tmp/put.$kind.$n" >&2; loadpid=""; die "the putter failed"; }
  loadpid=""
  # Polled slowly: the stragglers' events are still being measured.
  local end=$((SECONDS + EVENT_DEADLINE))
  until all_events "$n" "$tag" $((n * PUTS)) || [ "$SECONDS" -ge "$end" ]; do sleep 0.5; done
  # RSS of mount 1, and the mean and largest over the N mounts.
  local r1 sum=0 mx=0 r
  r1=$(rss_kb "$(cat "$mdir/m1/pid")")
  for ((i = 1; i <= n; i++)); do
    r=$(rss_kb "$(cat "$mdir/m$i/pid")")
    sum=$((sum + r)); [ "$r" -gt "$mx" ] && mx=$r
  done
  # One line per (mount, put): first-event and CLOSE_WRITE latencies, us
  # ("-" if missing); the put's send time from the putter's log.
  for ((i = 1; i <= n; i++)); do
    awk -v m="$i" -v tag="$tag" '
      FNR == NR { k = $1; sub(/^\/fan\//, "", k); sent[k] = int($2 / 1000); next }
      index($3, tag) == 1 && ($3 in sent) {
        if (!($3 in first)) first[$3] = $1
        if ($2 ~ /CLOSE_WRITE/ && !($3 in cw)) cw[$3] = $1
      }
      END {
        for (k in sent)
          printf "%s %s %s %s\n", m, k, (k in first) ? first[k] - sent[k] : "-", (k in cw) ? cw[k] - sent[k] : "-"
      }' "$sends" "$mdir/m$i/ev"
  done >"$tmp/lat.$kind.$n"
  {
    echo "$r1 $((sum / n)) $mx"
    echo "puts=$(wc -l <"$sends")"
  } >"$tmp/res.$kind.$n"
}

# pct FILE COLUMN: "p50 p99 max count" in ms of the numeric values of COLUMN.
pct() {
  awk -v c="$2" '$c != "-" { print $c }' "$1" | sort -n | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "- - - 0"; exit }
      i50 = int((NR * 50 + 99) / 100); i99 = int((NR * 99 + 99) / 100)
      printf "%.2f %.2f %.2f %d\n", v[i50] / 1000, v[i99] / 1000, v[NR] / 1000, NR
    }'
}

# slowest FILE COLUMN: per put, the largest latency over the mounts ("-" if
# any mount missed it), as "put value" lines.
slowest() {
  awk -v c="$2" '
    { if ($c == "-") miss[$2] = 1; else if (!($2 in mx) || $c > mx[$2]) mx[$2] = $c; seen[$2] = 1 }
    END { for (k in seen) print k, (k in miss) ? "-" : mx[k] }' "$1"
}

for kind in $SERVERS; do
  start_members "$kind"
  mounted=0
  mdir=$tmp/mounts-$kind
  for n in $MOUNTS; do
    if [ "$n" -lt "$mounted" ]; then
      echo "  MOUNTS must grow; skipping $n after $mounted" >&2
      continue
    fi
    round "$kind" "$n"
  done
  stop_all
done

# ------------------------------------------------------------------ report
echo
echo "watch fan-out through client mounts: $PUTS puts per step on member 1 at $PUT_RATE/s, $VAL_SIZE-byte values;"
echo "latency from the put's send to inotifywait's line on each mount; $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
hdr=$(printf "%-8s %6s | %-29s | %-29s | %-25s | %s" server mounts \
  "first event ms: p50  p99  max" "CLOSE_WRITE ms: p50  p99  max" "slowest mount: p50  p99" \
  "missing  RSS of one mount (mean, max)")
echo "$hdr"
printf '%*s\n' "${#hdr}" '' | tr ' ' -
failed=0
for kind in $SERVERS; do
  for n in $MOUNTS; do
    f=$tmp/lat.$kind.$n
    [ -f "$f" ] || continue
    read -r f50 f99 fmx _ < <(pct "$f" 3)
    read -r c50 c99 cmx ccnt < <(pct "$f" 4)
    read -r s50 s99 _ _ < <(slowest "$f" 4 | pct /dev/stdin 2)
    expected=$((n * $(sed -n 's/^puts=//p' "$tmp/res.$kind.$n")))
    missing=$((expected - ccnt))
    [ "$missing" = 0 ] || failed=1
    read -r rss_one rss_mean rss_max <"$tmp/res.$kind.$n"
    printf "%-8s %6s | %8s %8s %9s  | %8s %8s %9s  | %10s %10s  | %7s  %5.1f MB (%.1f, %.1f)\n" \
      "$kind" "$n" "$f50" "$f99" "$fmx" "$c50" "$c99" "$cmx" "$s50" "$s99" "$missing" \
      "$(awk -v k="$rss_one" 'BEGIN { print k / 1024 }')" \
      "$(awk -v k="$rss_mean" 'BEGIN { print k / 1024 }')" \
      "$(awk -v k="$rss_max" 'BEGIN { print k / 1024 }')"
  done
done
[ "$failed" = 0 ] || { echo; echo "events were MISSING (CLOSE_WRITE not seen within ${EVENT_DEADLINE}s of the last put)"; exit 1; }

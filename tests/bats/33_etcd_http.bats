#!/usr/bin/env bats
# Differential tests of HTTP/1.1 on the client port: the same curl commands
# against a real etcd 3.4 member and a quorumfs node (etcd_helpers.bash
# starts one of each on 127.0.0.1), comparing status codes and bodies once
# ids, terms, sizes, ports and versions are masked (headers are not
# compared: Go adds Date, CORS and grpc-gateway's Grpc-Metadata ones).
# Covers /version, /health, the JSON gateway (kv, watch streaming, lease,
# cluster, maintenance), its errors, and /metrics' text format; plus
# --listen-metrics-urls, TLS with ALPN http/1.1, keep-alive and pipelining
# on quorumfs alone.
#
# QFS_DIFF_SELFTEST=1 runs side B as a second etcd (see 30_etcd_diff.bats).

load helpers
load etcd_helpers

setup() {
  diff_setup
}

teardown() {
  qfs_kill C TERM 2>/dev/null || true
  diff_teardown
}

# One curl call never runs longer than this (seconds).
CURL_DEADLINE=10

# hp PATH [JSON]: POSTs JSON (or GETs when no body is given) to the side;
# prints the request, the body and the status code.
hp() {
  local path=$1 out code
  if [ $# -ge 2 ]; then echo "\$ POST $path $2"; else echo "\$ GET $path"; fi
  if [ $# -ge 2 ]; then
    out=$(curl -s -m "$CURL_DEADLINE" -w '\n[http=%{http_code}]' -X POST -d "$2" "http://$EP$path")
  else
    out=$(curl -s -m "$CURL_DEADLINE" -w '\n[http=%{http_code}]' "http://$EP$path")
  fi
  printf '%s\n' "$out"
}

# hmask KEY...: hp's output with the JSON fields KEY, wherever they are,
# shown as "X" (values that differ between any two servers: hashes,
# remaining TTLs), and fields -KEY dropped (absent when zero on one side).
hmask() {
  local keys=$*
  python3 -c '
import json, sys
keys = set(sys.argv[1:])
def walk(o):
    if isinstance(o, dict):
        return {k: ("X" if k in keys else walk(v)) for k, v in o.items() if "-" + k not in keys}
    if isinstance(o, list):
        return [walk(x) for x in o]
    return o
for line in sys.stdin:
    line = line.rstrip("\n")
    try:
        print(json.dumps(walk(json.loads(line)), separators=(",", ":")))
    except ValueError:
        print(line)
' $keys
}

# hstream LINES PATH JSON: a streaming POST (watch, keepalive, snapshot)
# under timeout(1); polls its output until it holds LINES lines or the
# stream ends (deadline 10 s), stops it and prints what it wrote.
hstream() {
  local want=$1 path=$2 body=$3 f pid
  f=$(mktemp -p . stream.XXXXXX)
  curl -s -N -m 30 -X POST -d "$body" "http://$EP$path" >"$f" 2>&1 &
  pid=$!
  bg_add "$pid"
  echo "\$ STREAM $path $body"
  wait_until 10 sh -c "[ \"\$(wc -l <'$f')\" -ge $want ] || ! kill -0 $pid 2>/dev/null" ||
    echo "[stream: fewer than $want lines within 10 s]"
  bg_stop "$pid"
  if [ -n "${HSTREAM_SORT:-}" ]; then sort "$f"; else cat "$f"; fi
  echo
  echo "[lines=$(wc -l <"$f")]"
}

# b64 TEXT: base64 of TEXT.
b64() { printf '%s' "$1" | base64 -w0; }

# ------------------------------------------------------------------ scenarios

sc_basic() {
  hp /version
  hp /health
  hp /nothing
  hp /v3/nothing '{}'
  hp /v3/kv/range # GET on a gateway path
}

sc_kv() {
  local a b c
  a=$(b64 /k/a) b=$(b64 /k/b) c=$(b64 /k/c)
  hp /v3/kv/put "{\"key\":\"$a\",\"value\":\"$(b64 1)\"}"
  hp /v3/kv/put "{\"key\":\"$b\",\"value\":\"$(b64 2)\",\"lease\":\"0\"}"
  hp /v3/kv/put "{\"key\":\"$a\",\"value\":\"$(b64 11)\",\"prev_kv\":true}"
  hp /v3/kv/put "{\"key\":\"$c\",\"value\":\"$(b64 '<&>')\",\"prevKv\":true}"
  hp /v3/kv/range "{\"key\":\"$a\"}"
  hp /v3/kv/range "{\"key\":\"$a\",\"range_end\":\"$(b64 /k/z)\"}"
  hp /v3/kv/range "{\"key\":\"$a\",\"range_end\":\"$(b64 /k/z)\",\"limit\":1}"
  hp /v3/kv/range "{\"key\":\"$a\",\"range_end\":\"$(b64 /k/z)\",\"keys_only\":true}"
  hp /v3/kv/range "{\"key\":\"$a\",\"range_end\":\"$(b64 /k/z)\",\"count_only\":true}"
  hp /v3/kv/range "{\"key\":\"$a\",\"range_end\":\"$(b64 /k/z)\",\"sort_order\":\"DESCEND\",\"sort_target\":\"MOD\"}"
  hp /v3/kv/range "{\"key\":\"$a\",\"revision\":\"2\"}"
  hp /v3/kv/range "{\"key\":\"$a\",\"serializable\":true}"
  hp /v3beta/kv/range "{\"key\":\"$b\"}"
  hp /v3/kv/range "{\"key\":\"$a\",\"unknown_field\":[1,2]}"
  hp /v3/kv/range "{\"key\":\"$(b64 /missing)\"}"
  hp /v3/kv/txn "{\"compare\":[{\"key\":\"$a\",\"result\":\"EQUAL\",\"target\":\"VALUE\",\"value\":\"$(b64 11)\"}],\"success\":[{\"request_put\":{\"key\":\"$b\",\"value\":\"$(b64 t)\"}},{\"request_range\":{\"key\":\"$b\"}}],\"failure\":[{\"request_delete_range\":{\"key\":\"$b\"}}]}"
  hp /v3/kv/txn "{\"compare\":[{\"key\":\"$a\",\"target\":\"VERSION\",\"result\":\"GREATER\",\"version\":\"10\"}],\"failure\":[{\"requestRange\":{\"key\":\"$a\",\"range_end\":\"$(b64 /k/z)\"}}]}"
  hp /v3/kv/txn "{\"success\":[{\"request_put\":{\"key\":\"$b\"}},{\"request_put\":{\"key\":\"$b\"}}]}"
  hp /v3/kv/deleterange "{\"key\":\"$c\",\"prev_kv\":true}"
  hp /v3/kv/deleterange "{\"key\":\"$(b64 /nothing)\"}"
  hp /v3/kv/compaction '{"revision":"3"}'
  hp /v3/kv/range "{\"key\":\"$a\",\"revision\":\"2\"}"
  hp /v3/kv/compaction '{"revision":"1000"}'
  # Errors: from the server, and from the gateway's JSON decoding.
  hp /v3/kv/range "{\"key\":\"$a\",\"revision\":1000}"
  hp /v3/kv/range '{"key":""}'
  hp /v3/kv/range ''
  hp /v3/kv/put "{\"key\":\"$a\",\"value\":\"x\",\"lease\":\"99\"}"
  hp /v3/kv/put "{\"key\":\"$a\",\"lease\":\"99\"}"
  hp /v3/kv/range '{"key":"Zm9"}'
  hp /v3/kv/range '{"key":"Zm9v=="}'
  hp /v3/kv/range '{"key":'
  hp /v3/kv/range '{"key":x}'
  hp /v3/kv/range '{"key":1}'
  hp /v3/kv/range '{"key":"YQ==","limit":"abc"}'
  hp /v3/kv/range '{"key":"YQ==","limit":1.5}'
  hp /v3/kv/range '{"key":"YQ==","sort_order":"NOPE"}'
  hp /v3/kv/range '[1]'
  hp /v3/kv/range '{"key":"YQ==","keys_only":"yes"}'
}

sc_watch() {
  local w
  w=$(b64 /w/)
  hp /v3/kv/put "{\"key\":\"$(b64 /w/a)\",\"value\":\"$(b64 1)\"}" >/dev/null
  hp /v3/kv/put "{\"key\":\"$(b64 /w/a)\",\"value\":\"$(b64 2)\"}" >/dev/null
  hp /v3/kv/deleterange "{\"key\":\"$(b64 /w/a)\"}" >/dev/null
  hstream 2 /v3/watch "{\"create_request\":{\"key\":\"$(b64 /w/a)\",\"start_revision\":\"2\"}}"
  hstream 2 /v3/watch "{\"create_request\":{\"key\":\"$w\",\"range_end\":\"$(b64 /w0)\",\"start_revision\":\"3\",\"prev_kv\":true}}"
  hstream 2 /v3/watch "{\"create_request\":{\"key\":\"$w\",\"range_end\":\"$(b64 /w0)\",\"start_revision\":\"2\",\"filters\":[\"NOPUT\"]}}"
  # Two create requests in one body: two watchers on one stream. Neither
  # etcd nor quorumfs orders the messages of different watchers: sorted.
  HSTREAM_SORT=1 hstream 4 /v3/watch "{\"create_request\":{\"key\":\"$(b64 /w/a)\",\"start_revision\":\"4\"}}{\"create_request\":{\"key\":\"$(b64 /w/a)\",\"start_revision\":\"2\",\"watch_id\":\"7\"}}"
  hstream 1 /v3/watch '{"create_request":{"key":"Zm9"}}'
}

sc_lease() {
  hp /v3/lease/grant '{"TTL":"60","ID":"1000"}'
  hp /v3/lease/grant '{"TTL":60,"ID":1000}'
  hp /v3/lease/grant '{"TTL":"30","ID":"2000"}'
  hp /v3/kv/put "{\"key\":\"$(b64 /l/a)\",\"value\":\"$(b64 v)\",\"lease\":\"1000\"}"
  hp /v3/lease/timetolive '{"ID":"1000","keys":true}' | hmask TTL
  hp /v3/kv/lease/timetolive '{"ID":"12345"}'
  hp /v3/lease/leases '{}' | python3 -c '
import json, sys
for l in sys.stdin:
    try:
        o = json.loads(l); o["leases"] = sorted(o.get("leases", []), key=lambda x: x["ID"]); print(json.dumps(o))
    except ValueError: print(l.rstrip())'
  hstream 1 /v3/lease/keepalive '{"ID":"1000"}' | hmask TTL
  hstream 1 /v3/lease/keepalive '{"ID":"5"}'
  hp /v3/lease/revoke '{"ID":"2000"}'
  hp /v3/kv/lease/revoke '{"ID":"2000"}'
  hp /v3/lease/revoke '{"ID":"1000"}'
  hp /v3/kv/range "{\"key\":\"$(b64 /l/a)\"}"
}

sc_cluster() {
  hp /v3/cluster/member/list '{}'
  hp /v3/cluster/member/add '{"peerURLs":["http://127.0.0.1:9"],"isLearner":true}' | hmask ID members
  hp /v3/cluster/member/promote '{"ID":"1"}'
  hp /v3/cluster/member/remove '{"ID":"1"}'
  hp /v3/cluster/member/update '{"ID":"1","peerURLs":["http://127.0.0.1:10"]}'
  hp /v3/cluster/member/add '{"peerURLs":["not a url"]}'
}

sc_maint() {
  hp /v3/maintenance/status '{}' | hmask -dbSizeInUse
  hp /v3/maintenance/alarm '{"action":"GET"}'
  hp /v3/maintenance/alarm '{"action":"DEACTIVATE","memberID":"0","alarm":"NOSPACE"}'
  hp /v3/maintenance/defragment '{}'
  hp /v3/maintenance/hash '{}' | hmask -hash
  hp /v3/maintenance/transfer-leadership '{"targetID":"12345"}'
  # The snapshot's bytes differ by design: compare its shape.
  hstream 1000000 /v3/maintenance/snapshot '{}' | python3 -c '
import json, sys
n = blobs = 0
for l in sys.stdin:
    l = l.strip()
    if l.startswith("{"):
        o = json.loads(l)["result"]
        n += 1
        blobs += "blob" in o
    elif l.startswith("[lines="):
        continue
    else:
        print(l)
print("snapshot messages with a blob:", "all" if n and n == blobs else "%d of %d" % (blobs, n))'
}

@test "http: /version, /health and unknown paths as etcd" {
  diff_run sc_basic
}

@test "http gateway: kv range/put/deleterange/txn/compaction and JSON errors as etcd" {
  diff_run sc_kv
}

@test "http gateway: watch streams one JSON object per line as etcd" {
  diff_run sc_watch
}

@test "http gateway: lease grant/revoke/keepalive/timetolive/leases as etcd" {
  diff_run sc_lease
}

@test "http gateway: cluster members as etcd" {
  diff_run sc_cluster
}

@test "http gateway: maintenance status/alarm/defragment/hash/snapshot as etcd" {
  diff_run sc_maint
}

# ------------------------------------------------------------------ metrics

# A strict reader of the Prometheus text format (0.0.4): every line is a
# comment, a HELP/TYPE line or a sample; a family's TYPE comes once and
# before its samples; names and labels match the grammar; values parse;
# histograms have _bucket/_sum/_count with a +Inf bucket. promtool (Debian
# package prometheus) runs too when it is installed.
PROM_CHECK='
import re, sys
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$")
LABEL = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)=\"((?:[^\"\\\\\n]|\\\\[\\\\\"n])*)\"\s*(,|$)")
types, seen, bad = {}, set(), []
text = sys.stdin.read()
if not text.endswith("\n"):
    bad.append("no final newline")
for i, line in enumerate(text.splitlines(), 1):
    if line.startswith("# TYPE "):
        parts = line.split(" ")
        if len(parts) != 4 or not NAME.match(parts[2]) or parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
            bad.append("%d: bad TYPE" % i); continue
        if parts[2] in types or parts[2] in seen:
            bad.append("%d: TYPE after samples or twice: %s" % (i, parts[2]))
        types[parts[2]] = parts[3]
        continue
    if line.startswith("#") or line == "":
        continue
    m = SAMPLE.match(line)
    if not m:
        bad.append("%d: not a sample: %s" % (i, line)); continue
    name, labels, value = m.group(1), m.group(3) or "", m.group(4)
    rest = labels
    while rest:
        lm = LABEL.match(rest)
        if not lm:
            bad.append("%d: bad labels: %s" % (i, labels)); break
        rest = rest[lm.end():]
    try:
        float(value.replace("Inf", "inf"))
    except ValueError:
        bad.append("%d: bad value %s" % (i, value))
    family = re.sub(r"_(bucket|sum|count)$", "", name) if re.sub(r"_(bucket|sum|count)$", "", name) in types else name
    if family not in types:
        bad.append("%d: sample without TYPE: %s" % (i, name))
    seen.add(family)
print("\n".join(bad) if bad else "ok")
sys.exit(1 if bad else 0)
'

@test "http: /metrics is valid Prometheus text with etcd's names, also on --listen-metrics-urls" {
  local ep m
  ep=$(side_ep B)
  curl -s -m 10 "http://$ep/v3/kv/put" -d '{"key":"YQ==","value":"YQ=="}' >/dev/null
  curl -s -m 10 "http://$ep/metrics" >"$QFS_TMP/metrics"
  run python3 -c "$PROM_CHECK" <"$QFS_TMP/metrics"
  echo "$output"
  [ "$status" -eq 0 ]
  # The same check passes on etcd's own output (the checker is not too strict).
  curl -s -m 10 "http://$(side_ep A)/metrics" | python3 -c "$PROM_CHECK"
  for m in etcd_server_has_leader etcd_server_leader_changes_seen_total \
    etcd_server_proposals_committed_total etcd_server_proposals_applied_total \
    etcd_server_proposals_pending etcd_server_proposals_failed_total \
    etcd_mvcc_db_total_size_in_bytes etcd_debugging_mvcc_keys_total grpc_server_handled_total; do
    grep -q "^$m[{ ]" "$QFS_TMP/metrics" || { echo "missing $m"; return 1; }
  done
  grep -q '^etcd_server_has_leader 1$' "$QFS_TMP/metrics"
  grep -q 'grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1' "$QFS_TMP/metrics"
  if command -v promtool >/dev/null; then
    # promtool parses (status 1 on a parse error) and lints names (status 3).
    # etcd's own names draw lint remarks (counters without _total, gauges
    # with it): ours may draw only remarks etcd's output draws too.
    local st=0 est=0
    promtool check metrics <"$QFS_TMP/metrics" >"$QFS_TMP/lint.q" 2>&1 || st=$?
    curl -s -m 10 "http://$(side_ep A)/metrics" | promtool check metrics >"$QFS_TMP/lint.e" 2>&1 || est=$?
    [ "$st" -eq 0 ] || [ "$st" -eq 3 ] || { cat "$QFS_TMP/lint.q"; return 1; }
    [ "$est" -eq 0 ] || [ "$est" -eq 3 ]
    local extra
    extra=$(grep -vxF -f "$QFS_TMP/lint.e" "$QFS_TMP/lint.q" || true)
    [ -z "$extra" ] || { echo "lint remarks etcd does not draw: $extra"; return 1; }
  fi
  # A metrics listener serves /metrics and /health only.
  local mport
  mport=$(free_port)
  qfs_side_start C --listen-metrics-urls "http://127.0.0.1:$mport"
  wait_until 10 curl -sf -o /dev/null "http://127.0.0.1:$mport/health"
  curl -s -m 10 "http://127.0.0.1:$mport/metrics" | python3 -c "$PROM_CHECK"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$mport/version")" = 404 ]
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "http://127.0.0.1:$mport/v3/kv/range")" = 404 ]
}

@test "http: keep-alive, pipelining and HTTP/1.0 on one connection (quorumfs)" {
  local ep port out
  ep=$(side_ep B)
  port=${ep##*:}
  # curl reuses the connection for URLs given together.
  out=$(curl -s -v -m 10 "http://$ep/version" "http://$ep/health" 2>&1)
  echo "$out" | grep -q 'Re-using existing connection'
  # Three pipelined requests in one write; answers come in order.
  out=$(python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
body = b'{"key":"YQ=="}'
req = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
s.sendall(req + b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /health HTTP/1.0\r\n\r\n")
data = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    data += d
print(data.count(b"HTTP/1.1 200 OK"), data.index(b"etcdserver") < data.index(b'"health"'))
PY
)
  [ "$out" = "3 True" ]
}

@test "http: TLS listener negotiates http/1.1 by ALPN beside h2 (quorumfs)" {
  local dir=$QFS_TMP/tls c
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=quorumfs-test \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  c=$(free_port)
  mkdir -p "$QFS_TMP/C"
  "$QFS_BIN" --name n1 --data-dir "$QFS_TMP/C/data" --mount '' \
    --listen-client-urls "https://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$(free_port)" \
    --cert-file "$dir/cert.pem" --key-file "$dir/key.pem" "${SIDE_TIMING[@]}" \
    >>"$QFS_TMP/C/log" 2>&1 &
  echo $! >"$QFS_TMP/C/pid"
  wait_until 30 curl -sf --cacert "$dir/cert.pem" -o /dev/null "https://127.0.0.1:$c/health"
  run curl -s --http1.1 --cacert "$dir/cert.pem" "https://127.0.0.1:$c/version"
  [ "$output" = '{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}' ]
  run curl -s --cacert "$dir/cert.pem" -X POST -d '{"key":"YQ==","value":"Yg=="}' "https://127.0.0.1:$c/v3/kv/put"
  [[ "$output" == '{"header":'* ]]
  # gRPC (h2 by ALPN) on the same listener.
  run "$ETCDCTL_BIN" --endpoints="https://127.0.0.1:$c" --cacert "$dir/cert.pem" get a --print-value-only
  [ "$output" = b ]
}

@test "http: a taken client port says why" {
  local ep
  ep=$(side_ep B)
  mkdir -p "$QFS_TMP/C"
  run timeout 20 "$QFS_BIN" --name n1 --data-dir "$QFS_TMP/C/data" --mount '' \
    --listen-client-urls "http://$ep" --listen-peer-urls "http://127.0.0.1:$(free_port)"
  echo "$output"
  [ "$status" -ne 0 ]
  [[ "$output" == *"bind: address already in use"* ]]
}

#!/usr/bin/env bats
# TLS as etcd 3.4 has it, driven with etcdctl, curl and openssl:
#  - client certificates (--client-cert-auth, --trusted-ca-file,
#    --client-crl-file): no certificate, another CA's and a revoked one are
#    refused, a valid one is accepted - the same answers as a real etcd
#    started with the same flags;
#  - --auto-tls: a self-signed certificate in DATA-DIR/fixtures/client, as
#    etcd makes it; --cipher-suites: etcd's names accepted, an unknown one
#    refused at start with etcd's sentence; localhost URLs;
#  - peers over https (--peer-cert-file, --peer-key-file,
#    --peer-trusted-ca-file, --peer-client-cert-auth): a 3-node cluster
#    replicates; a member whose certificate comes from another CA is
#    refused, cannot join, and the members' logs say why; --peer-auto-tls.
# Certificates are made here with the openssl command. Clusters run in a
# private network namespace (127.0.0.11-13) without mounts.

load helpers
load etcd_helpers

setup() {
  cluster_setup
  : >"$QFS_TMP/bg.pids"
  CERTS=$QFS_TMP/certs
  mkdir -p "$CERTS"
  tls_ca ca
  tls_ca other
  tls_cert ca server server
  tls_cert ca alice alice
  tls_cert ca bob bob
  tls_cert other mallory mallory
  tls_revoke ca bob
}

teardown() {
  bg_stop_all
  cluster_teardown
}

# ------------------------------------------------------------ certificates

# tls_ca NAME: a CA key and self-signed certificate $CERTS/NAME.{key,pem}.
tls_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$1" -keyout "$CERTS/$1.key" -out "$CERTS/$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}

# tls_cert CA NAME CN: a key and a certificate signed by CA, for server and
# client use, naming every loopback address the tests use and localhost.
tls_cert() {
  local ca=$1 name=$2 cn=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$cn" \
    -keyout "$CERTS/$name.key" -out "$CERTS/$name.csr" 2>/dev/null
  printf '%s\n' basicConstraints=CA:FALSE keyUsage=digitalSignature,keyEncipherment \
    extendedKeyUsage=serverAuth,clientAuth \
    subjectAltName=IP:127.0.0.1,IP:127.0.0.11,IP:127.0.0.12,IP:127.0.0.13,DNS:localhost \
    >"$CERTS/$name.ext"
  openssl x509 -req -in "$CERTS/$name.csr" -CA "$CERTS/$ca.pem" -CAkey "$CERTS/$ca.key" \
    -CAcreateserial -days 2 -extfile "$CERTS/$name.ext" -out "$CERTS/$name.pem" 2>/dev/null
}

# tls_revoke CA NAME: $CERTS/CA.crl, signed by CA, revoking NAME's certificate.
tls_revoke() {
  local ca=$1 name=$2 d=$CERTS/db-$1
  mkdir -p "$d"
  : >"$d/index.txt"
  echo 1000 >"$d/crlnumber"
  printf '%s\n' '[ca]' 'default_ca = c' '[c]' "database = $d/index.txt" \
    "crlnumber = $d/crlnumber" 'default_md = sha256' 'default_crl_days = 2' >"$d/ca.cnf"
  openssl ca -config "$d/ca.cnf" -keyfile "$CERTS/$ca.key" -cert "$CERTS/$ca.pem" \
    -revoke "$CERTS/$name.pem" 2>/dev/null
  openssl ca -config "$d/ca.cnf" -keyfile "$CERTS/$ca.key" -cert "$CERTS/$ca.pem" \
    -gencrl -out "$CERTS/$ca.crl" 2>/dev/null
}

# ------------------------------------------------------------ single servers

# srv_start SIDE KIND [flags...]: a single-member etcd or quorumfs (KIND)
# on 127.0.0.1 in the namespace, its client URL https unless the flags
# give one. Ports are fixed per side (the namespace is the test's own).
srv_start() {
  local side=$1 kind=$2; shift 2
  local dir=$QFS_TMP/$side c p bin=$QFS_BIN extra=()
  mkdir -p "$dir"
  case $side in A) c=2379 p=2380 ;; *) c=22379 p=22380 ;; esac
  [ "$kind" = etcd ] && bin=$ETCD_BIN
  [ "$kind" = quorumfs ] && extra=(--mount '')
  echo "$c" >"$dir/client_port"
  nsenter --net="/run/netns/$QFS_NS" "$bin" --name n1 --data-dir "$dir/data" "${extra[@]}" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "n1=http://127.0.0.1:$p" --initial-cluster-token qfs-tls \
    "${SIDE_TIMING[@]}" "$@" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
}

# https_flags SIDE: the client URL flags for an https side.
https_flags() {
  local c
  case $1 in A) c=2379 ;; *) c=22379 ;; esac
  echo "--listen-client-urls https://127.0.0.1:$c --advertise-client-urls https://127.0.0.1:$c"
}

# sctl SIDE ARGS...: etcdctl to the side's https endpoint.
sctl() {
  local side=$1; shift
  in_ns timeout 20 "$ETCDCTL_BIN" --endpoints="https://127.0.0.1:$(cat "$QFS_TMP/$side/client_port")" \
    --dial-timeout=2s --command-timeout=4s "$@"
}

# as_user SIDE WHO ARGS...: etcdctl trusting ca, with WHO's certificate ("-": none).
as_user() {
  local side=$1 who=$2; shift 2
  if [ "$who" = - ]; then
    sctl "$side" --cacert "$CERTS/ca.pem" "$@"
  else
    sctl "$side" --cacert "$CERTS/ca.pem" --cert "$CERTS/$who.pem" --key "$CERTS/$who.key" "$@"
  fi
}

side_up() { as_user "$1" alice endpoint health >/dev/null 2>&1; }

# client_auth_answers SIDE: one line per client: who, and put's status and output.
client_auth_answers() {
  local side=$1 who out rc
  for who in alice - mallory bob; do
    out=$(as_user "$side" "$who" put /k "$who" 2>&1 | tail -1)
    rc=$?
    # etcdctl's error names the endpoint, which differs: keep the verdict.
    case $out in OK) ;; *) out=refused ;; esac
    echo "$who $out"
  done
}

@test "client-cert auth: only a valid, unrevoked certificate of the trusted CA gets in, as in etcd" {
  local flags side
  for side in A B; do
    flags="$(https_flags "$side") --cert-file $CERTS/server.pem --key-file $CERTS/server.key"
    flags="$flags --client-cert-auth --trusted-ca-file $CERTS/ca.pem --client-crl-file $CERTS/ca.crl"
    # shellcheck disable=SC2086 # paths without spaces
    if [ "$side" = A ]; then srv_start A etcd $flags; else srv_start B quorumfs $flags; fi
    wait_until 30 side_up "$side" || { cat "$QFS_TMP/$side/log" >&2; false; }
  done
  run client_auth_answers A
  local etcd_out=$output
  run client_auth_answers B
  echo "etcd: $etcd_out"
  echo "quorumfs: $output"
  [ "$output" = "$etcd_out" ]
  [ "$output" = "$(printf 'alice OK\n- refused\nmallory refused\nbob refused')" ]
  # alice's write is there; reading needs a certificate too.
  run as_user B alice get /k --print-value-only
  [ "$output" = alice ]
  # The gateway over HTTP/1.1 is guarded the same way.
  run in_ns curl -sS --max-time 5 --cacert "$CERTS/ca.pem" -XPOST \
    https://127.0.0.1:22379/v3/kv/range -d '{"key":"L2s="}'
  [ "$status" -ne 0 ]
  run in_ns curl -sS --max-time 5 --cacert "$CERTS/ca.pem" --cert "$CERTS/alice.pem" \
    --key "$CERTS/alice.key" -XPOST https://127.0.0.1:22379/v3/kv/range -d '{"key":"L2s="}'
  [ "$status" -eq 0 ]
  [[ "$output" == *'"value":"YWxpY2U="'* ]]
}

@test "--trusted-ca-file alone requires client certificates, as in etcd" {
  local side
  for side in A B; do
    local flags
    flags="$(https_flags "$side") --cert-file $CERTS/server.pem --key-file $CERTS/server.key"
    flags="$flags --trusted-ca-file $CERTS/ca.pem"
    # shellcheck disable=SC2086
    if [ "$side" = A ]; then srv_start A etcd $flags; else srv_start B quorumfs $flags; fi
    wait_until 30 side_up "$side" || { cat "$QFS_TMP/$side/log" >&2; false; }
    run as_user "$side" - put /k v
    [ "$status" -ne 0 ]
    run as_user "$side" alice put /k v
    [ "$output" = OK ]
  done
}

@test "--auto-tls: a self-signed certificate in DATA-DIR/fixtures/client serves https, as in etcd" {
  local side
  for side in A B; do
    # shellcheck disable=SC2046
    if [ "$side" = A ]; then srv_start A etcd $(https_flags A) --auto-tls
    else srv_start B quorumfs $(https_flags B) --auto-tls; fi
    wait_until 30 sh -c "[ -f '$QFS_TMP/$side/data/fixtures/client/cert.pem' ]"
    insecure() { sctl "$1" --insecure-skip-tls-verify --insecure-transport=false "${@:2}"; }
    wait_until 30 insecure "$side" endpoint health || { cat "$QFS_TMP/$side/log" >&2; false; }
    run insecure "$side" put /auto yes
    [ "$output" = OK ]
    [ -f "$QFS_TMP/$side/data/fixtures/client/key.pem" ]
    # Verifying it against nothing fails: it is self-signed.
    run sctl "$side" --cacert "$CERTS/ca.pem" put /auto no
    [ "$status" -ne 0 ]
    # It names the listen address and is etcd's kind of certificate.
    run openssl x509 -in "$QFS_TMP/$side/data/fixtures/client/cert.pem" -noout -subject -ext subjectAltName
    [[ "$output" == *"O = etcd"* ]]
    [[ "$output" == *"IP Address:127.0.0.1"* ]]
  done
  # A restart keeps the certificate.
  local before
  before=$(sha1sum <"$QFS_TMP/B/data/fixtures/client/cert.pem")
  qfs_kill B TERM
  # shellcheck disable=SC2046
  srv_start B quorumfs $(https_flags B) --auto-tls
  wait_until 30 insecure B endpoint health
  [ "$(sha1sum <"$QFS_TMP/B/data/fixtures/client/cert.pem")" = "$before" ]
}

@test "--cipher-suites: etcd's names limit TLS 1.2; an unknown name stops the start with etcd's sentence" {
  local side kind
  for side in A B; do
    kind=quorumfs; [ "$side" = A ] && kind=etcd
    # shellcheck disable=SC2046
    srv_start "$side" "$kind" $(https_flags "$side") --cert-file "$CERTS/server.pem" \
      --key-file "$CERTS/server.key" --cipher-suites TLS_FOO,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    wait_until 20 sh -c "! kill -0 $(cat "$QFS_TMP/$side/pid") 2>/dev/null"
    grep -q 'unexpected TLS cipher suite "TLS_FOO"' "$QFS_TMP/$side/log" ||
      { cat "$QFS_TMP/$side/log" >&2; false; }
    rm -rf "$QFS_TMP/$side"
  done
  for side in A B; do
    kind=quorumfs; [ "$side" = A ] && kind=etcd
    # shellcheck disable=SC2046
    srv_start "$side" "$kind" $(https_flags "$side") --cert-file "$CERTS/server.pem" \
      --key-file "$CERTS/server.key" --cipher-suites TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    wait_until 30 as_user "$side" - endpoint health || { cat "$QFS_TMP/$side/log" >&2; false; }
    local port
    port=$(cat "$QFS_TMP/$side/client_port")
    run in_ns timeout 10 openssl s_client -connect "127.0.0.1:$port" -tls1_2 \
      -cipher ECDHE-ECDSA-AES128-GCM-SHA256 </dev/null
    [[ "$output" == *"Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"* ]]
    run in_ns timeout 10 openssl s_client -connect "127.0.0.1:$port" -tls1_2 \
      -cipher ECDHE-ECDSA-AES256-GCM-SHA384 </dev/null
    [[ "$output" == *"Cipher is (NONE)"* ]]
  done
}

@test "localhost in every URL, listen and advertise, client and peer, as etcd accepts it" {
  local side kind
  for side in A B; do
    kind=quorumfs; [ "$side" = A ] && kind=etcd
    local c=2379 p=2380 dir=$QFS_TMP/$side bin=$QFS_BIN extra=()
    [ "$side" = B ] && c=22379 p=22380
    [ "$kind" = etcd ] && bin=$ETCD_BIN
    [ "$kind" = quorumfs ] && extra=(--mount '')
    mkdir -p "$dir"
    nsenter --net="/run/netns/$QFS_NS" "$bin" --name n1 --data-dir "$dir/data" "${extra[@]}" \
      --listen-client-urls "http://localhost:$c" --advertise-client-urls "http://localhost:$c" \
      --listen-peer-urls "http://localhost:$p" --initial-advertise-peer-urls "http://localhost:$p" \
      --initial-cluster "n1=http://localhost:$p" "${SIDE_TIMING[@]}" >>"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    lh() { in_ns timeout 10 "$ETCDCTL_BIN" --endpoints="localhost:$1" --dial-timeout=2s "${@:2}"; }
    wait_until 30 lh "$c" endpoint health || { cat "$dir/log" >&2; false; }
    run lh "$c" put /lh v
    [ "$output" = OK ]
    run lh "$c" member list -w simple
    [[ "$output" == *"http://localhost:$p, http://localhost:$c"* ]]
  done
}

# ------------------------------------------------------------ peer TLS clusters

# tm_start I N CERT [flags...]: member nI of an N-member cluster over https
# peers, presenting $CERTS/CERT ("" for none), without a mount.
tm_start() {
  local i=$1 n=$2 cert=$3; shift 3
  local dir=$QFS_TMP/n$i j s=""
  mkdir -p "$dir"
  for j in $(seq 1 "$n"); do s="$s${s:+,}n$j=https://$(node_ip "$j"):2380"; done
  local tls=()
  [ -n "$cert" ] && tls=(--peer-cert-file "$CERTS/$cert.pem" --peer-key-file "$CERTS/$cert.key")
  nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" --name "n$i" --data-dir "$dir/data" --mount '' \
    --listen-client-urls "http://$(node_ip "$i"):2379" \
    --listen-peer-urls "https://$(node_ip "$i"):2380" \
    --initial-cluster "$s" --initial-cluster-token "$CLUSTER_TOKEN" "${CLUSTER_FLAGS[@]}" \
    "${tls[@]}" "$@" >>"$dir/log" 2>&1 &
  echo $! >"$dir/pid"
}

healthy() { ectl "$1" endpoint health >/dev/null 2>&1; }
local_value_is() {
  [ "$(ectl "$1" get "$2" --print-value-only --consistency=s 2>/dev/null)" = "$3" ]
}

@test "peer TLS: a 3-node cluster over https peers with client-cert auth replicates" {
  local i
  for i in 1 2 3; do
    tm_start "$i" 3 server --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth
  done
  for i in 1 2 3; do wait_until 30 healthy "$i" || { cluster_logs 3; false; }; done
  run ectl 1 put /tls/peer yes
  [ "$output" = OK ]
  for i in 2 3; do wait_until 10 local_value_is "$i" /tls/peer yes; done
  run ectl 2 member list
  [[ "$output" == *"https://127.0.0.11:2380"* ]]
  # Nothing was refused.
  ! grep -q "TLS handshake failed" "$QFS_TMP"/n*/log
  # The peer port serves the CA-issued certificate over TLS.
  run in_ns timeout 5 openssl s_client -connect 127.0.0.11:2380 -verify_return_error \
    -CAfile "$CERTS/ca.pem" </dev/null
  [[ "$output" == *"Verification: OK"* ]]
}

@test "peer TLS: a member whose certificate comes from another CA is refused, cannot join, and the logs say why" {
  local i
  for i in 1 2; do
    tm_start "$i" 3 server --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth
  done
  # mallory trusts the cluster's CA; its own certificate is another CA's.
  tm_start 3 3 mallory --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth
  for i in 1 2; do wait_until 30 healthy "$i" || { cluster_logs 3; false; }; done
  run ectl 1 put /tls/bad x
  [ "$output" = OK ]
  # The members refuse mallory's certificate when it dials them, and say so.
  local why="TLS handshake failed: certificate verify failed: unable to get local issuer certificate, certificate subject /CN=mallory"
  for i in 1 2; do
    wait_until 20 grep -q "peer 0000000000000000 at 127.0.0.13:[0-9]*: $why" "$QFS_TMP/n$i/log" ||
      { cluster_logs 3; false; }
  done
  # mallory learns it was refused, and gives up: it cannot join.
  wait_until 30 grep -q "refusing to join" "$QFS_TMP/n3/log" || { cluster_logs 3; false; }
  grep -q "TLS handshake failed: tlsv1 alert unknown ca" "$QFS_TMP/n3/log"
  run ectl 3 get /tls/bad --consistency=s --print-value-only
  [ "$output" != x ]
  # The two good members still serve writes.
  run ectl 2 put /tls/after y
  [ "$output" = OK ]
}

@test "peer TLS: a member with a self-signed certificate (--peer-auto-tls) is refused by members that verify" {
  local i
  for i in 1 2; do
    tm_start "$i" 3 server --peer-trusted-ca-file "$CERTS/ca.pem"
  done
  tm_start 3 3 "" --peer-auto-tls
  for i in 1 2; do wait_until 30 healthy "$i" || { cluster_logs 3; false; }; done
  wait_until 20 grep -q "TLS handshake failed: certificate verify failed: self-signed certificate, certificate subject /O=etcd" "$QFS_TMP/n1/log" ||
    { cluster_logs 3; false; }
  run ectl 1 put /tls/auto x
  [ "$output" = OK ]
  # Once the write has reached the other verifying member, the refused one
  # would have it too if anything had reached it.
  has_auto() { [ "$(ectl 2 get /tls/auto --consistency=s --print-value-only)" = x ]; }
  wait_until 10 has_auto
  run ectl 3 get /tls/auto --consistency=s --print-value-only
  [ "$output" != x ]
}

@test "--peer-auto-tls and --auto-tls: a 3-node cluster on self-signed certificates" {
  local i
  for i in 1 2 3; do
    local dir=$QFS_TMP/n$i j s=""
    mkdir -p "$dir"
    for j in 1 2 3; do s="$s${s:+,}n$j=https://$(node_ip "$j"):2380"; done
    nsenter --net="/run/netns/$QFS_NS" "$QFS_BIN" --name "n$i" --data-dir "$dir/data" --mount '' \
      --listen-client-urls "https://$(node_ip "$i"):2379" --auto-tls \
      --listen-peer-urls "https://$(node_ip "$i"):2380" --peer-auto-tls \
      --initial-cluster "$s" --initial-cluster-token "$CLUSTER_TOKEN" "${CLUSTER_FLAGS[@]}" \
      >>"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
  done
  actl() {
    in_ns timeout 20 "$ETCDCTL_BIN" --endpoints="https://$(node_ip "$1"):2379" \
      --insecure-skip-tls-verify --insecure-transport=false --dial-timeout=2s \
      --command-timeout=4s "${@:2}"
  }
  for i in 1 2 3; do wait_until 30 actl "$i" endpoint health || { cluster_logs 3; false; }; done
  run actl 1 put /auto/peer yes
  [ "$output" = OK ]
  auto_value_is() { [ "$(actl "$1" get "$2" --consistency=s --print-value-only 2>/dev/null)" = "$3" ]; }
  for i in 2 3; do wait_until 10 auto_value_is "$i" /auto/peer yes; done
  for i in 1 2 3; do
    [ -f "$QFS_TMP/n$i/data/fixtures/peer/cert.pem" ]
    [ -f "$QFS_TMP/n$i/data/fixtures/client/cert.pem" ]
  done
}

@test "https peer URLs without a peer certificate are refused at start, with etcd's sentence" {
  local dir=$QFS_TMP/n1
  mkdir -p "$dir"
  run in_ns timeout 20 "$QFS_BIN" --name n1 --data-dir "$dir/data" --mount '' \
    --listen-client-urls "http://127.0.0.11:2379" --listen-peer-urls "https://127.0.0.11:2380"
  [ "$status" -ne 0 ]
  [[ "$output" == *"TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url https://127.0.0.11:2380 with HTTPS scheme"* ]]
  run in_ns timeout 20 "$QFS_BIN" --name n1 --data-dir "$dir/data" --mount '' \
    --listen-client-urls "https://127.0.0.11:2379" --listen-peer-urls "http://127.0.0.11:2380"
  [ "$status" -ne 0 ]
  [[ "$output" == *"TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.11:2379 with HTTPS scheme"* ]]
}

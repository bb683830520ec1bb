#!/usr/bin/env python3
"""etcd_load.py - a small etcd v3 load generator over gRPC, for comparing
quorumfs with etcd on the same workload (tests/bench/etcd_bench.sh).

It speaks the etcd v3 KV service with hand-encoded protobuf (PutRequest and
RangeRequest are a few fields), through grpcio's generic unary calls, so it
needs python3-grpcio and nothing generated. Clients are asyncio tasks that
each issue one request at a time (a closed loop, like etcd's `benchmark`),
spread round-robin over a number of HTTP/2 connections and over the given
endpoints. The run stops after --requests requests or --max-seconds,
whichever comes first, and prints one JSON line of figures:

  {"op": "put", "clients": 100, "requests": 20000, "errors": 0,
   "seconds": 4.2, "ops_s": 4761.9, "p50_ms": 19.8, "p99_ms": 41.0, ...}

Ops: put (a new value each time, keys spread over --keyspace keys),
range (linearizable get of one key), range-s (serializable get).
Every answer is decoded far enough to check it is a real answer: a put's
header revision grows, a range returns the key that was written.
"""

import argparse
import asyncio
import json
import os
import sys
import time

try:
    import grpc
    import grpc.aio
except ImportError:  # pragma: no cover - reported to the caller
    sys.stderr.write("etcd_load.py: python3-grpcio is needed (import grpc failed)\n")
    sys.exit(2)

# Bounds of a run, whatever the flags say.
MAX_CLIENTS = 1000
MAX_REQUESTS = 1_000_000
REQUEST_TIMEOUT_S = 5.0
# A run with more failed requests than this share is reported as failed.
MAX_ERROR_SHARE = 0.01

PUT = "/etcdserverpb.KV/Put"
RANGE = "/etcdserverpb.KV/Range"


# ----------------------------------------------------------------- protobuf
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def put_request(key, value):
    # PutRequest{1: key, 2: value}
    return field_bytes(1, key) + field_bytes(2, value)


def range_request(key, serializable):
    # RangeRequest{1: key, 7: serializable}
    msg = field_bytes(1, key)
    if serializable:
        msg += field_varint(7, 1)
    return msg


def read_varint(buf, i):
    shift = n = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf):
    """Yields (number, wire type, value) of a message; value is an int for
    varints and bytes for length-delimited fields."""
    i = 0
    while i < len(buf):
        tag, i = read_varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            ln, i = read_varint(buf, i)
            if i + ln > len(buf):
                raise ValueError("truncated field")
            v, i = buf[i:i + ln], i + ln
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        yield num, wt, v


def header_revision(resp):
    # XxxResponse{1: ResponseHeader{3: revision}}
    for num, wt, v in fields(resp):
        if num == 1 and wt == 2:
            for hnum, hwt, hv in fields(v):
                if hnum == 3 and hwt == 0:
                    return hv
            return 0
    return 0


def range_kvs(resp):
    # RangeResponse{2: repeated KeyValue{1: key, 5: value}}
    kvs = []
    for num, wt, v in fields(resp):
        if num == 2 and wt == 2:
            kv = {}
            for knum, kwt, kv_v in fields(v):
                if knum == 1 and kwt == 2:
                    kv["key"] = kv_v
                elif knum == 5 and kwt == 2:
                    kv["value"] = kv_v
            kvs.append(kv)
    return kvs


# -------------------------------------------------------------------- load
class Run:
    def __init__(self, args):
        self.args = args
        self.lat = []
        self.errors = 0
        self.error_kinds = {}
        self.issued = 0
        self.max_rev = 0
        self.bad_answers = 0
        self.deadline = 0.0
        self.value = os.urandom(args.val_size // 2 + 1).hex()[: args.val_size].encode()

    def next_request(self):
        if self.issued >= self.args.requests or time.monotonic() >= self.deadline:
            return None
        i = self.issued
        self.issued += 1
        return i

    def key(self, i):
        return ("bench/%0*d" % (self.args.key_size, i % self.args.keyspace)).encode()


async def client(run, call, op):
    args = run.args
    rkey = run.key(0)
    while True:
        i = run.next_request()
        if i is None:
            return
        if op == "put":
            req = put_request(run.key(i), run.value)
        else:
            req = range_request(rkey, op == "range-s")
        t0 = time.perf_counter()
        try:
            resp = await call(req, timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            run.errors += 1
            k = "%s: %s" % (e.code().name, e.details())
            run.error_kinds[k] = run.error_kinds.get(k, 0) + 1
            continue
        run.lat.append(time.perf_counter() - t0)
        try:
            if op == "put":
                rev = header_revision(resp)
                if rev <= 1:
                    run.bad_answers += 1
                run.max_rev = max(run.max_rev, rev)
            else:
                kvs = range_kvs(resp)
                if len(kvs) != 1 or kvs[0].get("key") != rkey or kvs[0].get("value") != run.value:
                    run.bad_answers += 1
        except ValueError:
            run.bad_answers += 1


def pct(sorted_lat, p):
    if not sorted_lat:
        return float("nan")
    i = min(len(sorted_lat) - 1, int(round(p / 100.0 * (len(sorted_lat) - 1))))
    return sorted_lat[i] * 1000.0


async def main_async(args):
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    for e in endpoints:
        host = e.rsplit(":", 1)[0].strip("[]")
        if not host.startswith("127."):
            raise SystemExit("etcd_load.py: loopback endpoints only (got %s)" % e)
    conns = max(1, min(args.conns, args.clients))
    channels = [grpc.aio.insecure_channel(endpoints[i % len(endpoints)]) for i in range(conns)]
    try:
        # The key ranges read; it also checks the endpoints answer at all.
        run = Run(args)
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), timeout=REQUEST_TIMEOUT_S)
        put0 = channels[0].unary_unary(PUT)
        await put0(put_request(run.key(0), run.value), timeout=REQUEST_TIMEOUT_S)

        op = args.op
        method = PUT if op == "put" else RANGE
        calls = [ch.unary_unary(method) for ch in channels]
        run.deadline = time.monotonic() + args.max_seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client(run, calls[i % conns], op) for i in range(args.clients)))
        secs = time.perf_counter() - t0
    finally:
        for ch in channels:
            await ch.close()

    lat = sorted(run.lat)
    done = len(lat)
    out = {
        "op": op,
        "endpoints": len(endpoints),
        "clients": args.clients,
        "conns": conns,
        "requests": done,
        "errors": run.errors,
        "bad_answers": run.bad_answers,
        "seconds": round(secs, 3),
        "ops_s": round(done / secs, 1) if secs > 0 else 0.0,
        "p50_ms": round(pct(lat, 50), 3),
        "p99_ms": round(pct(lat, 99), 3),
        "max_ms": round(lat[-1] * 1000.0, 3) if lat else float("nan"),
        "stopped_by_time": run.issued < args.requests,
    }
    if run.error_kinds:
        out["error_kinds"] = run.error_kinds
    print(json.dumps(out))
    total = done + run.errors
    if done == 0 or run.bad_answers or (total and run.errors / total > MAX_ERROR_SHARE):
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoints", required=True, help="host:port[,host:port...] (loopback only)")
    ap.add_argument("--op", choices=["put", "range", "range-s"], required=True)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--conns", type=int, default=10, help="HTTP/2 connections (at most --clients)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--key-size", type=int, default=8, help="digits of the key's number")
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument("--keyspace", type=int, default=10000)
    args = ap.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS:
        ap.error("--clients must be 1..%d" % MAX_CLIENTS)
    if not 1 <= args.requests <= MAX_REQUESTS:
        ap.error("--requests must be 1..%d" % MAX_REQUESTS)
    if args.max_seconds <= 0 or args.keyspace < 1 or args.val_size < 1:
        ap.error("--max-seconds, --keyspace and --val-size must be positive")
    try:
        return asyncio.run(main_async(args))
    except (asyncio.TimeoutError, grpc.aio.AioRpcError) as e:
        print(json.dumps({"op": args.op, "clients": args.clients, "error": str(e).splitlines()[0] if str(e) else type(e).__name__}))
        return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Issue #12 benchmarks for `vipvisor serve` on a real store (release build, loopback):
#  1. listing 10,000 allocations over HTTP: a page of 100 and the whole list (limit 10000),
#     p50/p99 over N requests each, against `vipvisor -o json alloc list` (the CLI, whole
#     list, process start included) in the same run;
#  2. one allocation (+ its release) through HTTP vs through the CLI (`alloc request`), N each;
#  3. time from a CLI allocation to its event on a connected /api/v1/events/stream client.
# The 10,000 allocations are made through the API first (IPv6 pool 2001:db8:a::/112).
# Usage: bench/api.sh [N]   (default 20; no root needed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
runs=${1:-20}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
V=${VIPVISOR_BIN:-$CARGO_TARGET_DIR/release/vipvisor}
[ -n "${VIPVISOR_BIN:-}" ] || cargo build -q --release -p vipvisor
work=$(mktemp -d)
spid=
cleanup() { [ -n "$spid" ] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export VIPVISOR_STORE="sqlite://$work/v.db"
source "$(dirname "${BASH_SOURCE[0]}")/header.sh"
bench_header
token=$("$V" -o json token create bench --role admin | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$V" pool add big --addresses 2001:db8:a::/112 >/dev/null
"$V" pool add small --addresses 198.51.100.0/24 >/dev/null
"$V" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
spid=$!
for i in $(seq 1 100); do grep -q "serving the API on" "$work/serve.log" && break; sleep 0.1; done
addr=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
python3 - "$addr" "$token" "$runs" "$work" "$V" <<'PY'
import http.client, json, os, statistics, subprocess, sys, threading, time, urllib.parse
addr, token, runs, work, V = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
host = urllib.parse.urlparse(addr).netloc
H = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
conn = http.client.HTTPConnection(host, timeout=60)
def call(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
    r = conn.getresponse(); data = r.read()
    if r.status >= 300: sys.exit(f"{method} {path}: {r.status} {data[:200]!r}")
    return data
t0 = time.monotonic()
for i in range(10000):
    call("POST", "/api/v1/allocations", {"service": f"bench/s{i:05d}", "pool": "big", "family": "ipv6"})
print(f"setup: 10,000 allocations through the API in {time.monotonic() - t0:.1f} s")
def pct(xs):
    xs = sorted(xs); n = len(xs)
    return xs[max(0, (n + 1) // 2 - 1)], xs[min(n - 1, max(0, int(round(0.99 * n + 0.5)) - 1))]
def timed(f, n):
    out = []
    for _ in range(n):
        t = time.monotonic(); f(); out.append((time.monotonic() - t) * 1000)
    return pct(out)
rows = []
page = timed(lambda: call("GET", "/api/v1/allocations?limit=100&offset=5000"), runs)
whole = timed(lambda: call("GET", "/api/v1/allocations?limit=10000"), runs)
assert json.loads(call("GET", "/api/v1/allocations?limit=10000"))["total"] == 10000
env = dict(os.environ)
cli_list = timed(lambda: subprocess.run([V, "-o", "json", "alloc", "list"], check=True, capture_output=True, env=env), runs)
n = [0]
def http_one():
    n[0] += 1
    call("POST", "/api/v1/allocations", {"service": f"one/h{n[0]}", "pool": "small"})
def cli_one():
    n[0] += 1
    subprocess.run([V, "alloc", "request", f"one/c{n[0]}", "--pool", "small"], check=True, capture_output=True, env=env)
http_alloc = timed(http_one, runs)
cli_alloc = timed(cli_one, runs)
# The change feed: a CLI allocation, until the client reads its event.
lat = []
for i in range(runs):
    s = http.client.HTTPConnection(host, timeout=10)
    s.request("GET", "/api/v1/events/stream", headers=H)
    r = s.getresponse()
    t = time.monotonic()
    subprocess.run([V, "alloc", "request", f"feed/f{i}", "--pool", "small"], check=True, capture_output=True, env=env)
    buf = b""
    while b"address.allocated" not in buf:
        buf += r.fp.read1(4096)
    lat.append((time.monotonic() - t) * 1000)
    s.close()
feed = pct(lat)
def line(what, p):
    print(f"{what:<58} p50 {p[0]:8.1f} ms  p99 {p[1]:8.1f} ms")
print(f"\n== {runs} runs each")
line("HTTP: a page of 100 of 10,000 allocations", page)
line("HTTP: all 10,000 allocations (limit=10000)", whole)
line("CLI:  alloc list -o json, 10,000 (process start included)", cli_list)
print(f"   ratio whole list HTTP / CLI: {whole[0] / cli_list[0]:.2f}x (p50)")
line("HTTP: one allocation", http_alloc)
line("CLI:  one allocation (process start included)", cli_alloc)
print(f"   ratio one allocation HTTP / CLI: {http_alloc[0] / cli_alloc[0]:.2f}x (p50)")
line("CLI allocation -> event at an SSE client (CLI process included)", feed)
PY

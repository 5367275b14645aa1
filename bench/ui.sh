#!/usr/bin/env bash
# Issue #12 UI benchmarks: the web UI (release build, embedded in the binary) in Debian's
# Chromium (headless, playwright-core) against `vipvisor serve` on a real store.
#  1. the allocations page on a store with 10,000 allocations: first contentful paint and
#     time to data (navigation start → "10000 of 10000" rendered), against the same page
#     on a store with 100 allocations in the same run (the ratio);
#  2. scroll frame time of the virtualised table: 300 frames scrolling 10,000 rows
#     (requestAnimationFrame intervals: p50, p99, max, frames over 16.7 ms);
#  3. the bundle, gzipped (target < 250 kB).
# Usage: bench/ui.sh [RUNS]   (default 5 page loads per store; no root needed)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
V=${VIPVISOR_BIN:-$CARGO_TARGET_DIR/release/vipvisor}
[ -d ui/node_modules ] || (cd ui && npm ci --no-audit --no-fund --loglevel=error)
(cd ui && npm run --silent build >/dev/null)
[ -n "${VIPVISOR_BIN:-}" ] || cargo build -q --release -p vipvisor
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
source "$(dirname "${BASH_SOURCE[0]}")/header.sh"
bench_header
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1)"

# Two stores: 10,000 allocations and 100, made through the API of a serve on each.
start_store() { # name count -> prints login URL
  local s="sqlite://$work/$1.db"
  VIPVISOR_STORE=$s "$V" pool add big --addresses 2001:db8:a::/112 >/dev/null
  VIPVISOR_STORE=$s "$V" -o json token create bench --role admin >"$work/$1.token"
  VIPVISOR_STORE=$s "$V" serve --listen 127.0.0.1:0 >"$work/$1.out" 2>"$work/$1.log" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q "log in at" "$work/$1.out" && break; sleep 0.1; done
  python3 - "$(grep -o 'http://[^ ]*' "$work/$1.out")" "$work/$1.token" "$2" <<'PY'
import http.client, json, sys, urllib.parse
url, tokfile, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
token = json.load(open(tokfile))["token"]
c = http.client.HTTPConnection(urllib.parse.urlparse(url).netloc, timeout=60)
for i in range(n):
    c.request("POST", "/api/v1/allocations", json.dumps({"service": f"bench/s{i:05d}", "pool": "big", "family": "ipv6"}), {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
start_store big 10000
start_store small 100
tok() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$work/$1.token"; }
url() { grep -o 'http://[0-9.:]*' "$work/$1.out" | head -1; }

BIG_URL=$(url big) BIG_TOKEN=$(tok big) SMALL_URL=$(url small) SMALL_TOKEN=$(tok small) RUNS=$runs \
  node ui/e2e/perf.mjs

python3 - <<'PY'
import gzip, pathlib
files = [p for p in pathlib.Path("ui/dist").rglob("*") if p.suffix in (".js", ".css", ".html")]
for p in sorted(files):
    print(f"  {p.relative_to('ui/dist')}: {p.stat().st_size / 1000:.1f} kB, {len(gzip.compress(p.read_bytes(), 9)) / 1000:.1f} kB gzipped")
total = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
print(f"bundle: {total / 1000:.1f} kB gzipped in all (target < 250 kB)")
PY

#!/usr/bin/env bash
# Issue #10 benchmarks: the worst input the limits allow stays cheap, and work is linear in
# the change. Runs the release binary (and, with VIPVISOR_PREVIOUS, an older build on the
# same inputs, for ratios measured in one run). Every store and file is in a temporary
# directory, removed on exit. No network.
#  1. apply a file of N pools, then re-apply it unchanged (N = 25,000, 50,000, 100,000):
#     the re-apply must be linear (time per pool flat) and not slower than the first apply;
#  2. refuse a 200 kB file of `[` nested 100,000 deep (bound: 0.1 s);
#  3. a pool at the block limit (1,024 blocks): `pool list` and `alloc request` (bound 0.5 s);
#  4. `alloc request` with the most ports allowed (1,024) and with 8,000 ports (refused; a
#     command line cannot carry the 196,605 ports of the original report).
# Usage: bench/limits.sh [MAX_POOLS]   (default 100000)
#        VIPVISOR_PREVIOUS=/path/to/old/vipvisor bench/limits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
max=${1:-100000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
V=${VIPVISOR_BIN:-$CARGO_TARGET_DIR/release/vipvisor}
[ -x "$V" ] || cargo build -q --release -p vipvisor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

source "$(dirname "${BASH_SOURCE[0]}")/header.sh"
bench_header

# seconds and peak RSS (MiB) of one command: "secs rss"
timed() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || true; tail -n 1 "$work/t" | awk '{printf "%s %.0f", $1, $2/1024}'; }

pools_file() { # n file
  python3 - "$1" "$2" <<'EOF'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("pools:\n")
    for i in range(n):
        f.write(f"- {{name: p{i}, addresses: ['2001:db8:{i >> 16:x}:{i & 0xffff:x}::/120']}}\n")
EOF
}

bins=("new=$V")
[ -n "${VIPVISOR_PREVIOUS:-}" ] && bins+=("previous=$VIPVISOR_PREVIOUS")

echo; echo "== 1. apply N pools, then re-apply the same file (seconds, peak MiB)"
printf '%-9s %8s %16s %16s %14s\n' build pools first re-apply "µs/pool re-apply"
for n in $(printf '%s\n' 25000 50000 "$max" | sort -un); do
  pools_file "$n" "$work/p$n.yaml"
  for b in "${bins[@]}"; do
    name=${b%%=*}; bin=${b#*=}
    store="sqlite://$work/$name-$n.db"
    first=$(VIPVISOR_STORE=$store timed "$bin" apply -f "$work/p$n.yaml")
    again=$(VIPVISOR_STORE=$store timed "$bin" apply -f "$work/p$n.yaml")
    per=$(awk -v t="${again%% *}" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / n}')
    printf '%-9s %8d %9s s %3s MiB %9s s %3s MiB %14s\n' "$name" "$n" ${first} ${again} "$per"
  done
done

echo; echo "== 2. refuse a file of '[' nested 100,000 deep (bound 0.1 s)"
python3 -c 'import sys; open(sys.argv[1], "w").write("[" * 100000)' "$work/deep.yaml"
for b in "${bins[@]}"; do
  name=${b%%=*}; bin=${b#*=}
  r=$(VIPVISOR_STORE="sqlite://$work/$name-deep.db" timed "$bin" apply -f "$work/deep.yaml")
  echo "$name: ${r% *} s, $(head -c 120 "$work/err")"
done

echo; echo "== 3. a pool of 1,024 single-address blocks: pool list, alloc request (bound 0.5 s each)"
python3 - "$work/blocks.yaml" <<'EOF'
import sys
blocks = ", ".join(f"'2001:db8:1:{i:x}::1'" for i in range(1024))
open(sys.argv[1], "w").write(f"pools:\n- name: big\n  addresses: [{blocks}]\n")
EOF
for b in "${bins[@]}"; do
  name=${b%%=*}; bin=${b#*=}
  export VIPVISOR_STORE="sqlite://$work/$name-blocks.db"
  "$bin" apply -f "$work/blocks.yaml" >/dev/null
  l=$(timed "$bin" pool list); a=$(timed "$bin" alloc request default/a --family ipv6)
  echo "$name: pool list ${l% *} s, alloc request ${a% *} s"
done
unset VIPVISOR_STORE

echo; echo "== 4. alloc request with 1,024 ports (the limit) and with 8,000 (refused)"
ports() { python3 -c 'import sys; n=int(sys.argv[1]); print(",".join(f"{p}/{i % 65535 + 1}" for i, p in ((i, ("tcp","udp","sctp")[i // 65535]) for i in range(n))))' "$1"; }
p1024=$(ports 1024); pmax=$(ports 8000)
for b in "${bins[@]}"; do
  name=${b%%=*}; bin=${b#*=}
  export VIPVISOR_STORE="sqlite://$work/$name-ports.db"
  "$bin" pool add web --addresses 192.0.2.0/28 >/dev/null
  ok=$(timed "$bin" alloc request default/a --sharing-key k --ports "$p1024")
  big=$(timed "$bin" alloc request default/b --sharing-key k --ports "$pmax")
  echo "$name: 1,024 ports ${ok% *} s ($(cut -d' ' -f2 <<<"$ok") MiB); 8,000 ports ${big% *} s ($(cut -d' ' -f2 <<<"$big") MiB): $(head -c 100 "$work/err")"
done

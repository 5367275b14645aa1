#!/usr/bin/env bash
# Issue #3 benchmarks, in a network-namespace lab (tests/lab/l2.sh), release build:
#  1. ARP reply latency: the speaker (VIP on node 1) vs the kernel's own reply (node 2's
#     address), measured by the client's arping, interleaved in one run: median, p99, ratio;
#  2. time to send the first gratuitous round for 1,000 VIPs on one interface (from the
#     speaker's own log and from a capture);
#  3. speaker RSS with 1,000 VIPs, and CPU while idle.
# Usage: bench/speaker.sh [SAMPLES]   (default 1000 arping samples per target). Needs root.
#        VIPVISOR_PREVIOUS=/path/to/old/vipvisor bench/speaker.sh   (also the previous build,
#          interleaved: ratios against it)
set -euo pipefail
samples=${1:-1000}
LAB_TAG=vb
source "$(dirname "$0")/lab.sh"
"$root/tests/lab/l2.sh" up "$P" 2
ns() { local h=$1; shift; ip netns exec "$P$h" "$@"; }
wait_log() { # file pattern count
  for _ in $(seq 1 500); do [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0; sleep 0.02; done
  echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; return 1
}

echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

echo; echo "== 1. ARP reply latency, $samples samples each, interleaved (client arping -c 1)"
# Background processes are started with `ip netns exec` directly (it execs, so $! is the
# process itself), never through the shell function.
ip netns exec "${P}n1" "$V" speaker --interface eth0 --vip 192.0.2.100 --node-name n1 2>"$work/sp1.log" &
sp=$!
wait_log "$work/sp1.log" announced 1
# VIPVISOR_PREVIOUS=path: the previous build answers for 192.0.2.101 from node 2 (whose
# kernel answers for its own 192.0.2.12), sampled in the same interleaved loop.
prev=""
if [ -n "${VIPVISOR_PREVIOUS:-}" ]; then
  ip netns exec "${P}n2" "$VIPVISOR_PREVIOUS" speaker --interface eth0 --vip 192.0.2.101 --node-name n2 2>"$work/sp2.log" &
  prev=$!
  wait_log "$work/sp2.log" announced 1
fi
: >"$work/speaker"; : >"$work/kernel"; : >"$work/previous"
for i in $(seq 1 "$samples"); do
  ns c arping -c 1 -w 1 -I eth0 192.0.2.100 | grep -o '[0-9.]*ms' | tr -d ms >>"$work/speaker" || true
  ns c arping -c 1 -w 1 -I eth0 192.0.2.12 | grep -o '[0-9.]*ms' | tr -d ms >>"$work/kernel" || true
  if [ -n "$prev" ]; then
    ns c arping -c 1 -w 1 -I eth0 192.0.2.101 | grep -o '[0-9.]*ms' | tr -d ms >>"$work/previous" || true
  fi
done
files=("$work/speaker" "$work/kernel")
[ -n "$prev" ] && files+=("$work/previous")
# arping prints milliseconds.
"$root/bench/stats.py" --unit us --scale 0.001 --base kernel --target "(target <= 1.5x)" "${files[@]}"
if [ -n "$prev" ]; then
  "$root/bench/stats.py" --unit us --scale 0.001 --base previous "$work/speaker" "$work/previous" | grep ratio
  kill -TERM "$prev"; wait "$prev" || true
fi
kill -TERM "$sp"; wait "$sp" || true

echo; echo "== 2./3. 1,000 VIPs on one interface (748 IPv4 in three /24s + 252 IPv6)"
ns n1 ip addr add 198.51.100.11/24 dev eth0
ns n1 ip addr add 203.0.113.11/24 dev eth0
mapfile -t vips < <(python3 -c '
v = [f"192.0.2.{i}" for i in range(13, 255)]
v += [f"198.51.100.{i}" for i in range(1, 255) if i != 11]
v += [f"203.0.113.{i}" for i in range(1, 255) if i != 11]
v += [f"2001:db8::1:{i:x}" for i in range(1, 1001 - len(v))]
print("\n".join(v))')
args=(); for v in "${vips[@]}"; do args+=(--vip "$v"); done
echo "VIPs: ${#vips[@]}"
ip netns exec "${P}n1" tcpdump -i eth0 -U -n -w "$work/burst.pcap" 'arp or icmp6' 2>/dev/null &
tcpdump_pid=$!
sleep 1
ip netns exec "${P}n1" "$V" speaker --interface eth0 --node-name n1 "${args[@]}" 2>"$work/sp1k.log" &
sp=$!
wait_log "$work/sp1k.log" announced "${#vips[@]}"
sleep 5.5   # the burst lasts 5 s
kill -INT "$tcpdump_pid"; wait "$tcpdump_pid" 2>/dev/null || true
echo "speaker's own timing of each large round (probe, probe, first gratuitous round, ...):"
grep 'sent a round' "$work/sp1k.log" | sed 's/.*frames=/  frames=/' | head -4
tshark -n -r "$work/burst.pcap" -Y 'eth.src == 02:00:00:00:00:11 && (arp.isgratuitous == 1 || arp.isannouncement == 1 || icmpv6.type == 136)' \
  -T fields -e frame.time_epoch >"$work/garp.txt" 2>/dev/null
python3 - "$work/garp.txt" <<'PY'
import sys
t = [float(x) for x in open(sys.argv[1]) if x.strip()]
first = [x for x in t if x - t[0] < 0.5]
print(f"capture: first gratuitous round = {len(first)} frames in {(first[-1]-first[0])*1000:.1f} ms (target < 50 ms)")
PY
rss=$(awk '/VmRSS/ {print $2}' "/proc/$sp/status")
echo "RSS with ${#vips[@]} VIPs: $((rss / 1024)) MiB ($rss kB) (target < 20 MB)"
hz=$(getconf CLK_TCK)
t0=$(awk '{print $14 + $15}' "/proc/$sp/stat"); sleep 10; t1=$(awk '{print $14 + $15}' "/proc/$sp/stat")
python3 -c "print(f'CPU while idle over 10 s: {($t1-$t0)/$hz:.3f} s = {($t1-$t0)/$hz/10*100:.2f} % of one core')"
kill -TERM "$sp"; wait "$sp" || true

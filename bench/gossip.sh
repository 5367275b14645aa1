#!/usr/bin/env bash
# Issue #5 benchmark: gossip traffic per member (packets/s and bytes/s sent, as frames on
# the wire) for a vipvisor group of 3 and of 20 members, default timings. 3 members: one
# speaker per node namespace; 20 members: 4 node namespaces with 5 speakers each (ports
# 7946-7950). tcpdump on the lab switch's bridge counts every gossip datagram for SECONDS
# after the group has settled.
# Usage: bench/gossip.sh [SECONDS] [SIZES...]   (default 30 s, sizes 3 20; needs root)
set -euo pipefail
secs=${1:-30}
shift || true
sizes=("${@:-3 20}")
[[ $secs =~ ^[0-9]+$ && $secs -ge 5 && $secs -le 600 ]] || { echo "SECONDS must be 5..600" >&2; exit 2; }
LAB_TAG=vgo
source "$(dirname "$0")/lab.sh"
head -c 32 /dev/urandom | base64 >"$work/key"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(nproc) cores, kernel $(uname -r)  capture: ${secs} s"
for size in ${sizes[*]}; do
  case $size in 3) nodes=3 per=1 ;; 20) nodes=4 per=5 ;; *) echo "sizes are 3 or 20" >&2; exit 2 ;; esac
  "$root/tests/lab/l2.sh" up "$P" "$nodes"
  peers=()
  for n in $(seq 1 "$nodes"); do for k in $(seq 0 $((per - 1))); do peers+=("192.0.2.1$n:$((7946 + k))"); done; done
  for n in $(seq 1 "$nodes"); do
    for k in $(seq 0 $((per - 1))); do
      joins=(); for p in "${peers[@]}"; do [ "$p" = "192.0.2.1$n:$((7946 + k))" ] || joins+=(--join "$p"); done
      # (in a subshell, so the shell does not report each kill at cleanup)
      (ip netns exec "${P}n$n" "$V" speaker --interface eth0 --vip 192.0.2.100 --node-name "n$n-$k" \
        --gossip-key-file "$work/key" --gossip-port $((7946 + k)) "${joins[@]}" 2>"$work/sp$n-$k.log" &)
    done
  done
  sleep 15
  # The smallest group any member sees (its last membership line), to show the group is whole.
  members=$(for f in "$work"/sp*.log; do grep "membership changed" "$f" | tail -1 | grep -o '"[^"]*"' | wc -l; done | sort -n | head -1)
  ip netns exec "${P}sw" timeout "$secs" tcpdump -i br0 -nn -U -w "$work/g.pcap" "udp and portrange 7946-7950" 2>/dev/null || true
  python3 - "$work/g.pcap" "$secs" "$size" "$members" <<'PY'
import struct, sys
path, secs, size, members = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = open(path, 'rb').read()
off, per = 24, {}
while off + 16 <= len(data):
    _, _, incl, orig = struct.unpack('<IIII', data[off:off + 16]); frame = data[off + 16: off + 16 + incl]; off += 16 + incl
    if len(frame) < 42 or frame[12:14] != b'\x08\x00': continue
    ihl = (frame[14] & 15) * 4
    src = '.'.join(map(str, frame[26:30])) + ':' + str(struct.unpack('>H', frame[14 + ihl:16 + ihl])[0])
    p, b = per.get(src, (0, 0)); per[src] = (p + 1, b + orig)
pk = sorted(v[0] / secs for v in per.values()); by = sorted(v[1] / secs for v in per.values())
print(f"{size:2d} members (smallest member view: {members}): {len(per)} senders; per member sent "
      f"packets/s mean {sum(pk)/len(pk):.1f} max {pk[-1]:.1f}; bytes/s mean {sum(by)/len(by):.0f} max {by[-1]:.0f}")
PY
  "$root/tests/lab/l2.sh" down "$P"
  sleep 1
done

#!/usr/bin/env bash
# Issue #11 benchmark: failover with two real guests under libvirt whose NICs have
# clean-traffic, granted before anything announces (`vipvisor hypervisor apply` while the
# domains are stopped), each running the static `vipvisor speaker` in a 2-node group. The
# owner's domain is destroyed (`virsh destroy`, a node death); failover time = the longest
# gap in the client's 10 ms ping stream to the VIP (the guests hold the VIP on lo with
# arp_ignore=1, so only the speaker answers ARP for it), as bench/failover.sh measures it.
# Every trial checks that no grant was made and no domain changed on the failover path.
# Then, in the same run and with the same binary, the netns lab's failover
# (SYSTEMS=vipvisor bench/failover.sh TRIALS), for the ratio.
# Usage: bench/guest-failover.sh [TRIALS]   (default 20; root; libvirtd and QEMU installed:
#        tests/testbed/libvirt.sh install install-qemu)
#        VIPVISOR_STATIC=/path/to/static/vipvisor (default: tests/run's cached static build)
#        VIPVISOR_CLI=/path/to/vipvisor-with-libvirt (default: the debug build; only sets up)
#        LAB=0 skips the netns lab part.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
trials=${1:-20}
[ "$(id -u)" = 0 ] || { echo "bench/guest-failover.sh needs root" >&2; exit 2; }
S=${VIPVISOR_STATIC:-/var/tmp/vipvisor-static-target/x86_64-unknown-linux-gnu/release/vipvisor}
V=${VIPVISOR_CLI:-${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}/debug/vipvisor}
[ -x "$S" ] || { echo "no static vipvisor at $S (tests/run builds it)" >&2; exit 2; }
[ -x "$V" ] || { echo "no vipvisor with libvirt at $V (cargo build -p vipvisor --features libvirt)" >&2; exit 2; }
VIP=192.0.2.100
CLIENT=vv-client-gf
work=$(mktemp -d)
cleanup() {
  [ -n "${pp:-}" ] && kill "$pp" 2>/dev/null || true
  ip netns del "$CLIENT" 2>/dev/null || true
  "$root/tests/testbed/libvirt.sh" stop "$work/tb" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
vs() { virsh -q -c qemu:///system "$@"; }

source "$(dirname "${BASH_SOURCE[0]}")/header.sh"
bench_header

mkdir -p "$work/tb"
"$root/tests/testbed/guest.sh" build "$work/tb" "$S" >/dev/null 2>&1
"$root/tests/testbed/libvirt.sh" start "$work/tb" >/dev/null
cat >"$work/net.xml" <<'EOF'
<network><name>vv-gf</name><forward mode='bridge'/><bridge name='vvbr0'/></network>
EOF
vs net-define "$work/net.xml" >/dev/null
vs net-start vv-gf >/dev/null
ip netns add "$CLIENT"
ip -n "$CLIENT" link set lo up
ip -n vv-libvirt link add vvgf0 type veth peer name vvc0 netns "$CLIENT"
ip -n vv-libvirt link set vvgf0 master vvbr0 up
ip -n "$CLIENT" addr add 192.0.2.1/24 dev vvc0
ip -n "$CLIENT" link set vvc0 up

declare -A MAC=([g1]=52:54:00:00:04:21 [g2]=52:54:00:00:04:22) IP=([g1]=192.0.2.21 [g2]=192.0.2.22) PEER=([g1]=192.0.2.22 [g2]=192.0.2.21)
for g in g1 g2; do
  VV_GUEST_CMDLINE="vv.lo=$VIP vv.key=vipvisor-lab-gossip-key-0123456789 vv.run=vipvisor,speaker,--interface,eth0,--vip,$VIP,--node-name,$g,--join,${PEER[$g]}:7946,--gossip-key-file,/run/vv.key,--hold-time,0s" \
    "$root/tests/testbed/guest.sh" domain-xml "$g" "${MAC[$g]}" "${IP[$g]}" "" vv-gf "$work/tb" >"$work/$g.xml"
  vs define "$work/$g.xml" >/dev/null
done
printf 'providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n' >"$work/p.yaml"
export VIPVISOR_STORE="sqlite://$work/store.db"
"$V" hypervisor apply --providers "$work/p.yaml" --vip "$VIP" --node g1 --node g2 >/dev/null
echo "granted on both stopped domains before either announces"
grants() { "$V" events -o json | grep -o '"hypervisor\.[a-z]*"' | wc -l; }
xmls() { vs dumpxml --inactive g1; vs dumpxml --inactive g2; }
boot() { # boot NAME: start the domain and wait for its init's ready line
  : >"$work/tb/$1.serial.log" 2>/dev/null || true
  vs start "$1" >/dev/null
  "$root/tests/testbed/guest.sh" wait-ready "$work/tb/$1.serial.log" 120 >/dev/null
}
owner() { ip netns exec "$CLIENT" arping -c 1 -w 2 -I vvc0 "$VIP" | grep -o '\[[0-9a-fA-F:]*\]' | tr -d '[]' | tr A-F a-f | head -1; }
settled() { # one owner answers, 3 times in a row
  local i n=0 o
  for i in $(seq 1 60); do
    o=$(owner || true)
    if [ -n "$o" ]; then n=$((n + 1)); else n=0; fi
    [ "$n" -ge 3 ] && return 0
    sleep 0.5
  done
  return 1
}
boot g1; boot g2
settled || { echo "no owner after boot" >&2; exit 1; }
g0=$(grants); x0=$(xmls | sha256sum)

: >"$work/guest.txt"
for i in $(seq 1 "$trials"); do
  o=$(owner)
  name=$([ "$o" = "${MAC[g1]}" ] && echo g1 || echo g2)
  ip netns exec "$CLIENT" ping -D -i 0.01 -c 400 -W 0.5 "$VIP" >"$work/ping" 2>&1 &
  pp=$!
  sleep 1
  vs destroy "$name" >/dev/null
  wait "$pp" || true
  pp=
  python3 - "$work/ping" >>"$work/guest.txt" <<'PY'
import re, sys
t = [float(m.group(1)) for l in open(sys.argv[1]) for m in [re.match(r'\[(\d+\.\d+)\]', l)] if m and 'bytes from' in l]
print(f"{max(b - a for a, b in zip(t, t[1:])):.3f}" if len(t) > 1 else "9.999")
PY
  [ "$(grants)" = "$g0" ] || { echo "trial $i: a grant was made on the failover path" >&2; exit 1; }
  [ "$(xmls | sha256sum)" = "$x0" ] || { echo "trial $i: a domain changed on the failover path" >&2; exit 1; }
  echo "trial $i: $name destroyed, gap $(tail -1 "$work/guest.txt") s" >&2
  boot "$name"
  settled || { echo "no owner after $name came back" >&2; exit 1; }
done
echo; echo "== two guests under clean-traffic, owner's domain destroyed, $trials trials (gap, ms)"
python3 "$root/bench/stats.py" --unit ms "$work/guest.txt"
echo "no grant and no domain change on any failover path ($trials of $trials)"
g50=$(sort -n "$work/guest.txt" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
if [ "${LAB:-1}" != 0 ]; then
  echo; echo "== the netns lab, same binary, same run (bench/failover.sh $trials)"
  VIPVISOR_BIN="$S" SYSTEMS=vipvisor "$root/bench/failover.sh" "$trials" | tee "$work/lab.out"
fi
echo; echo "guest p50: $g50 s"

#!/usr/bin/env bash
# Issue #11 benchmarks against a real libvirtd (tests/testbed/libvirt.sh, its own network
# namespace), release build, stopped guests (CONFIG-only updates):
#  1. one VIP granted on one node (`vipvisor hypervisor apply`, the whole command): p50/p99
#     over N runs, each followed by a revert;
#  2. 100 VIPs × 3 candidate nodes in one apply: time until all grants are applied, and the
#     number of device updates (one per NIC per change, not one per VIP);
#  3. one VIP on a running guest (tests/testbed/guest.sh, TCG): LIVE|CONFIG apply, p50/p99
#     over N runs, each followed by a revert.
# Usage: bench/libvirt.sh [N]   (default 20). Needs root, libvirtd and QEMU installed
#        (tests/testbed/libvirt.sh install install-qemu).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
runs=${1:-20}
[ "$(id -u)" = 0 ] || { echo "bench/libvirt.sh needs root (libvirtd in a network namespace)" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
V=${VIPVISOR_BIN:-$CARGO_TARGET_DIR/release/vipvisor}
[ -x "$V" ] || cargo build -q --release -p vipvisor --features libvirt
work=$(mktemp -d)
cleanup() { "$root/tests/testbed/libvirt.sh" stop "$work/tb" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/tb"
"$root/tests/testbed/libvirt.sh" start "$work/tb" >/dev/null
vs() { virsh -q -c qemu:///system "$@"; }
# apply_runs NODE NAME: `hypervisor apply` of one VIP on NODE, then a revert, $runs times;
# p50/p99 of the applies (the whole command), kept in $work/NAME.txt.
apply_runs() {
  : >"$work/$2.txt"
  for _ in $(seq 1 "$runs"); do
    local t0 t1
    t0=$(date +%s.%N)
    "$V" hypervisor apply --providers "$work/p.yaml" --vip 192.0.2.100 --node "$1" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }' >>"$work/$2.txt"
    "$V" hypervisor revert --providers "$work/p.yaml" >/dev/null
  done
  python3 "$root/bench/stats.py" --unit ms "$work/$2.txt"
}

source "$(dirname "${BASH_SOURCE[0]}")/header.sh"
bench_header
echo "libvirt: $(vs version --daemon | awk '/daemon/ {print $NF}' | head -1)"

cat >"$work/net.xml" <<'EOF'
<network><name>vv-bench</name><forward mode='bridge'/><bridge name='vvbr0'/></network>
EOF
vs net-define "$work/net.xml" >/dev/null
for n in 1 2 3; do
  cat >"$work/n$n.xml" <<EOF
<domain type='qemu'><name>n$n</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<interface type='network'><mac address='52:54:00:00:01:0$n'/><source network='vv-bench'/><model type='virtio'/>
<filterref filter='clean-traffic'><parameter name='IP' value='192.0.2.2$n'/></filterref></interface>
</devices></domain>
EOF
  vs define "$work/n$n.xml" >/dev/null
done
printf 'providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n' >"$work/p.yaml"
export VIPVISOR_STORE="sqlite://$work/store.db"

echo; echo "== 1. one VIP on one node, apply (then revert), $runs runs"
apply_runs n1 apply

echo; echo "== 2. 100 VIPs x 3 candidate nodes in one apply"
vips=$(python3 -c 'print(",".join(f"198.51.100.{i}" for i in range(1, 101)))')
t0=$(date +%s.%N)
VIPVISOR_LOG=info "$V" hypervisor apply --providers "$work/p.yaml" --vip "$vips" --node n1 --node n2 --node n3 >"$work/out.txt" 2>"$work/log.txt"
t1=$(date +%s.%N)
updates=$(grep -c "updated the NIC's filter" "$work/log.txt" || true)
ips=$(vs dumpxml --inactive n2 | grep -c "name='IP'")
awk -v a="$t0" -v b="$t1" -v u="$updates" -v ips="$ips" 'BEGIN {
  printf "all grants applied in %.2f s; device updates: %d (3 NICs); n2 lists %d IP values (its own + 100)\n", b - a, u, ips }'
t0=$(date +%s.%N)
"$V" hypervisor revert --providers "$work/p.yaml" >/dev/null
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "revert of all of them: %.2f s\n", b - a }'

echo; echo "== 3. one VIP on a running guest (LIVE|CONFIG), apply (then revert), $runs runs"
"$root/tests/testbed/guest.sh" build "$work/g" >/dev/null 2>&1
"$root/tests/testbed/guest.sh" domain-xml g1 52:54:00:00:02:21 192.0.2.21 192.0.2.100 vv-bench "$work/g" >"$work/g1.xml"
vs net-start vv-bench >/dev/null
vs define "$work/g1.xml" >/dev/null
vs start g1 >/dev/null
echo "guest ready after $("$root/tests/testbed/guest.sh" wait-ready "$work/g/g1.serial.log" 120) s"
apply_runs g1 live

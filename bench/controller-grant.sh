#!/usr/bin/env bash
# Issue #11 benchmark: allocation → grant applied on a running guest, through the
# controller (`vipvisor controller --providers`) against a real kube-apiserver
# (tests/testbed/kube.sh) and a real libvirtd with a booted TCG guest
# (tests/testbed/guest.sh) whose NIC has clean-traffic. The guest's node has a speaker
# report (its ServiceL2Status, written here as its speaker writes it, with the guest's
# MAC). Each run creates a LoadBalancer Service and measures, from `kubectl create`
# returning, until (a) the Service's status has the address and (b) the guest's live
# domain XML lists it in the NIC's IP parameters (a LIVE|CONFIG device update); then the
# Service is deleted and the revoke awaited. p50/p99 over N runs.
# Usage: bench/controller-grant.sh [N]   (default 20; root; libvirtd, QEMU and the kube
#        testbed installed: tests/testbed/libvirt.sh install install-qemu; tests/testbed/kube.sh build)
#        VIPVISOR_BIN=/path/to/vipvisor (built with --features libvirt; default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
runs=${1:-20}
[ "$(id -u)" = 0 ] || { echo "bench/controller-grant.sh needs root" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
V=${VIPVISOR_BIN:-$CARGO_TARGET_DIR/release/vipvisor}
[ -n "${VIPVISOR_BIN:-}" ] || cargo build -q --release -p vipvisor --features libvirt
work=$(mktemp -d)
cpid=
cleanup() {
  [ -n "$cpid" ] && kill "$cpid" 2>/dev/null && wait "$cpid" 2>/dev/null || true
  "$root/tests/testbed/kube.sh" stop "$work/k" >/dev/null 2>&1 || true
  "$root/tests/testbed/libvirt.sh" stop "$work/tb" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
vs() { virsh -q -c qemu:///system "$@"; }

source "$(dirname "${BASH_SOURCE[0]}")/header.sh"
bench_header

mkdir -p "$work/tb" "$work/k"
"$root/tests/testbed/guest.sh" build "$work/tb" >/dev/null 2>&1
"$root/tests/testbed/libvirt.sh" start "$work/tb" >/dev/null
"$root/tests/testbed/kube.sh" start "$work/k" >/dev/null 2>&1
kc="$work/k/kubeconfig"
k() { kubectl --kubeconfig "$kc" "$@"; }
cat >"$work/net.xml" <<'EOF'
<network><name>vv-cg</name><forward mode='bridge'/><bridge name='vvbr0'/></network>
EOF
vs net-define "$work/net.xml" >/dev/null
vs net-start vv-cg >/dev/null
MAC=52:54:00:00:05:21
"$root/tests/testbed/guest.sh" domain-xml g1 "$MAC" 192.0.2.21 "" vv-cg "$work/tb" >"$work/g1.xml"
vs define "$work/g1.xml" >/dev/null
vs start g1 >/dev/null
echo "guest ready after $("$root/tests/testbed/guest.sh" wait-ready "$work/tb/g1.serial.log" 120) s"

for f in namespace.yaml crd.yaml rbac.yaml; do k apply -f "$root/deploy/$f" >/dev/null; done
k wait --for condition=established crd/servicel2statuses.vipvisor.io --timeout=30s >/dev/null
printf '{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}' | k apply -f - >/dev/null
printf '{"apiVersion":"vipvisor.io/v1alpha1","kind":"ServiceL2Status","metadata":{"name":"n1","namespace":"vipvisor-speaker"},"status":{"node":"n1","macs":["%s"],"announcing":[]}}' "$MAC" | k apply -f - >/dev/null
printf 'providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n' >"$work/p.yaml"
printf 'pools:\n  - name: web\n    addresses: [198.51.100.0/28]\n' >"$work/pools.yaml"
VIPVISOR_LOG=info "$V" --store "sqlite://$work/c.db" controller --kubeconfig "$kc" --pools "$work/pools.yaml" --providers "$work/p.yaml" \
  --identity bench --lease-duration 3s --lease-renew 500ms 2>"$work/controller.log" &
cpid=$!
for i in $(seq 1 300); do grep -q "initial pass done" "$work/controller.log" && break; sleep 0.1; done
grep -q "initial pass done" "$work/controller.log" || { echo "the controller did not lead" >&2; tail "$work/controller.log" >&2; exit 1; }

python3 - "$kc" "$runs" "$work/status.txt" "$work/grant.txt" <<'PY'
import json, subprocess, sys, time
kc, runs, status_f, grant_f = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def k(*a, stdin=None):
    return subprocess.run(["kubectl", "--kubeconfig", kc, *a], input=stdin, capture_output=True, text=True, check=True).stdout
def live_ips():
    x = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "dumpxml", "g1"], capture_output=True, text=True, check=True).stdout
    return [l.split("value='")[1].split("'")[0] for l in x.splitlines() if "name='IP'" in l]
svc = json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                  "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
with open(status_f, "w") as sf, open(grant_f, "w") as gf:
    for i in range(runs):
        k("create", "-f", "-", stdin=svc)
        t0 = time.monotonic()
        ip, t_status = "", None
        while time.monotonic() - t0 < 60:
            if not ip:
                ip = k("get", "service", "web", "-n", "default", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}")
                if ip:
                    t_status = time.monotonic() - t0
            if ip and ip in live_ips():
                break
            time.sleep(0.02)
        else:
            sys.exit(f"run {i}: no grant within 60 s (status ip {ip!r})")
        t_grant = time.monotonic() - t0
        sf.write(f"{t_status:.4f}\n"); gf.write(f"{t_grant:.4f}\n")
        print(f"run {i + 1}: status {t_status * 1000:.0f} ms, live grant {t_grant * 1000:.0f} ms", file=sys.stderr)
        k("delete", "service", "web", "-n", "default")
        t1 = time.monotonic()
        while ip in live_ips():
            if time.monotonic() - t1 > 60:
                sys.exit(f"run {i}: not revoked within 60 s")
            time.sleep(0.05)
PY
echo; echo "== Service created → status has the address, $runs runs"
python3 "$root/bench/stats.py" --unit ms "$work/status.txt"
echo; echo "== Service created → the running guest's live XML lists it (controller, LIVE|CONFIG), $runs runs"
python3 "$root/bench/stats.py" --unit ms "$work/grant.txt"
echo "device updates: $(grep -c "updated the NIC's filter" "$work/controller.log" || true) (one grant and one revoke per run: $((2 * runs)) expected)"

#!/usr/bin/env bash
# Issue #5 benchmark: failover time as the client sees it — the longest gap in a 10 ms ping
# stream to the VIP when the owner's switch port is unplugged (a node death as the LAN sees
# it) — for a 3-node vipvisor group and, in the same lab, keepalived VRRPv3 with a 1 s and
# a 0.1 s advert interval. Prints p50/p99 per system and the ratios.
# Usage: bench/failover.sh [TRIALS]   (default 20; needs root; installs keepalived)
#        SYSTEMS=vipvisor bench/failover.sh 10   (only some of: vipvisor keepalived)
#        VIPVISOR_ARGS="--gossip-suspicion 100ms" bench/failover.sh   (non-default speaker flags)
#        VIPVISOR_PREVIOUS=/path/to/old/vipvisor SYSTEMS=vipvisor bench/failover.sh 20
#          (also the previous build, in the same lab run: ratios against it)
set -euo pipefail
trials=${1:-20}
command -v keepalived >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends keepalived >/dev/null
LAB_TAG=vf
source "$(dirname "$0")/lab.sh"
VIP=192.0.2.100
"$root/tests/lab/l2.sh" up "$P" 3
for n in 1 2 3; do
  ip netns exec "${P}n$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1
done
head -c 32 /dev/urandom | base64 >"$work/key"

owner() { ip netns exec "${P}c" arping -c 1 -w 2 -I eth0 "$VIP" | grep -o '\[[0-9a-fA-F:]*\]' | tail -c 3 | head -c 1; }

# One trial: ping for 4 s, unplug the owner after 1 s, report the longest gap (s).
trial() {
  local o; o=$(owner)
  [ -n "$o" ] || { echo "no owner" >&2; return 1; }
  ip netns exec "${P}c" ping -D -i 0.01 -c 400 -W 0.5 "$VIP" >"$work/ping" 2>&1 &
  local pp=$!
  sleep 1
  "$root/tests/lab/l2.sh" detach "$P" "$o"
  wait "$pp" || true
  "$root/tests/lab/l2.sh" attach "$P" "$o"
  python3 - "$work/ping" <<'PY'
import re, sys
t = [float(m.group(1)) for l in open(sys.argv[1]) for m in [re.match(r'\[(\d+\.\d+)\]', l)] if m and 'bytes from' in l]
print(f"{max(b - a for a, b in zip(t, t[1:])):.3f}" if len(t) > 1 else "9.999")
PY
}

run_trials() { # label settle_seconds
  : >"$work/$1"
  for i in $(seq 1 "$trials"); do
    trial >>"$work/$1"
    sleep "$2"
  done
}

stats() {
  local base=()
  for f in "$@"; do [ "$(basename "$f")" = vipvisor ] && base=(--base vipvisor); done
  "$root/bench/stats.py" "${base[@]}" "$@"
}

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(nproc) cores, kernel $(uname -r)  trials: $trials"

systems=" ${SYSTEMS:-vipvisor keepalived} "
# vipvisor: 3 speakers in one gossip group; the node's kernel accepts VIP traffic through
# a local route (as kube-proxy would), without the VIP on the NIC.
group_trials() { # label binary
  for n in 1 2 3; do
    ip netns exec "${P}n$n" ip route add local "$VIP/32" dev lo
    joins=(); for m in 1 2 3; do [ "$m" = "$n" ] || joins+=(--join "192.0.2.1$m:7946"); done
    ip netns exec "${P}n$n" "$2" speaker --interface eth0 --vip "$VIP" --node-name "n$n" \
      --gossip-key-file "$work/key" "${joins[@]}" ${VIPVISOR_ARGS:-} 2>"$work/sp$n-$1.log" &
  done
  sleep 3
  run_trials "$1" 4
  for n in 1 2 3; do for pid in $(ip netns pids "${P}n$n"); do kill "$pid" 2>/dev/null || true; done; done
  sleep 1
  for n in 1 2 3; do ip netns exec "${P}n$n" ip route del local "$VIP/32" dev lo; done
}
if [[ $systems == *" vipvisor "* ]]; then
  group_trials vipvisor "$V"
  # VIPVISOR_PREVIOUS=path: the same trials with another build (the previous commit's).
  if [ -n "${VIPVISOR_PREVIOUS:-}" ]; then group_trials vipvisor-previous "$VIPVISOR_PREVIOUS"; fi
fi

# keepalived VRRPv3, advert 1 s and 0.1 s.
adverts=(1 0.1)
[[ $systems == *" keepalived "* ]] || adverts=()
for advert in "${adverts[@]}"; do
  for n in 1 2 3; do
    cat >"$work/ka$n.conf" <<KA
global_defs { vrrp_version 3
  enable_script_security }
vrrp_instance vi { state BACKUP
  interface eth0
  virtual_router_id 51
  priority $((100 + n))
  advert_int $advert
  virtual_ipaddress { $VIP/32 dev eth0 } }
KA
    ip netns exec "${P}n$n" keepalived --dont-fork --vrrp --use-file "$work/ka$n.conf" \
      --pid "$work/ka$n.pid" --vrrp_pid "$work/kav$n.pid" --no-syslog 2>/dev/null >/dev/null &
  done
  sleep $(python3 -c "print(max(4, 5 * $advert))")
  run_trials "keepalived-advert-$advert" "$(python3 -c "print(max(4, 6 * $advert))")"
  for n in 1 2 3; do for pid in $(ip netns pids "${P}n$n"); do kill "$pid" 2>/dev/null || true; done; done
  sleep 2
done
results=()
for f in vipvisor vipvisor-previous keepalived-advert-1 keepalived-advert-0.1; do [ -s "$work/$f" ] && results+=("$work/$f"); done
stats "${results[@]}"

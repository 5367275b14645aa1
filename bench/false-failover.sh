#!/usr/bin/env bash
# Issue #5 benchmark: false failovers on a healthy LAN under CPU load. A 3-node vipvisor
# group (default timings) shares 12 VIPs while stress-ng keeps CPUs busy; the client pings
# one VIP of each node every 100 ms. A false failover is any membership change or owner
# change after the group settled: counted from every speaker's metrics
# (vipvisor_speaker_owner_changes, vipvisor_speaker_group_members) and logs.
# Usage: bench/false-failover.sh [SECONDS] [CPU_HOGS]   (default 600 s, 1 hog = "the other
#        core busy" on 2 cores; needs root; installs stress-ng)
set -euo pipefail
secs=${1:-600}
hogs=${2:-1}
[[ $secs =~ ^[0-9]+$ && $secs -ge 10 && $secs -le 7200 ]] || { echo "SECONDS must be 10..7200" >&2; exit 2; }
[[ $hogs =~ ^[0-9]+$ && $hogs -le 16 ]] || { echo "CPU_HOGS must be 0..16" >&2; exit 2; }
command -v stress-ng >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stress-ng >/dev/null
hog=""
before_cleanup() { [ -z "$hog" ] || kill "$hog" 2>/dev/null; }
LAB_TAG=vff
source "$(dirname "$0")/lab.sh"
"$root/tests/lab/l2.sh" up "$P" 3
head -c 32 /dev/urandom | base64 >"$work/key"
vips=(); for i in $(seq 100 111); do vips+=(--vip "192.0.2.$i"); done
for n in 1 2 3; do
  ip netns exec "${P}n$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1
  for i in $(seq 100 111); do ip netns exec "${P}n$n" ip route add local "192.0.2.$i/32" dev lo; done
  joins=(); for m in 1 2 3; do [ "$m" = "$n" ] || joins+=(--join "192.0.2.1$m:7946"); done
  # (in a subshell, so the shell does not report each kill at cleanup)
  (ip netns exec "${P}n$n" "$V" speaker --interface eth0 "${vips[@]}" --node-name "n$n" \
    --gossip-key-file "$work/key" --metrics-addr 127.0.0.1:9472 "${joins[@]}" 2>"$work/sp$n.log" &)
done
metric() { # node name -> value
  ip netns exec "${P}n$1" curl -s --max-time 2 http://127.0.0.1:9472/metrics | awk -v m="$2" '$1 == m {print $2}'
}
# Settle: past the hold time (10 s), every member sees 3.
sleep 15
for n in 1 2 3; do
  [ "$(metric "$n" vipvisor_speaker_group_members)" = 3 ] || { echo "n$n does not see 3 members" >&2; exit 1; }
done
declare -A before
for n in 1 2 3; do before[$n]=$(metric "$n" vipvisor_speaker_owner_changes_total); done
lines_before=$(cat "$work"/sp*.log | grep -c "membership changed" || true)
# One VIP owned by each node, pinged by the client at 100 ms.
targets=()
for i in $(seq 100 111); do
  mac=$(ip netns exec "${P}c" arping -c 1 -w 2 -I eth0 "192.0.2.$i" | grep -o '\[[0-9a-fA-F:]*\]' || true)
  case " ${targets[*]-} " in *" $mac="*) ;; *) targets+=("$mac=192.0.2.$i") ;; esac
done
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  machine: $(nproc) cores, kernel $(uname -r)  run: ${secs} s, stress-ng --cpu $hogs"
echo "pinging one VIP per owner: ${targets[*]}"
if [ "$hogs" -gt 0 ]; then stress-ng --cpu "$hogs" --cpu-method all --timeout "$((secs + 5))s" --quiet & hog=$!; fi
pids=()
for t in "${targets[@]}"; do
  ip netns exec "${P}c" ping -q -i 0.1 -w "$secs" -W 1 "${t#*=}" >"$work/ping-${t#*=}" 2>&1 & pids+=($!)
done
wait "${pids[@]}" || true
changes=0
for n in 1 2 3; do
  after=$(metric "$n" vipvisor_speaker_owner_changes_total)
  changes=$((changes + ${after%.*} - ${before[$n]%.*}))
  echo "n$n: members $(metric "$n" vipvisor_speaker_group_members), owner changes during the run: $((${after%.*} - ${before[$n]%.*}))"
done
lines_after=$(cat "$work"/sp*.log | grep -c "membership changed" || true)
for t in "${targets[@]}"; do echo "ping ${t#*=}: $(grep -o '[0-9]* packets transmitted.*loss' "$work/ping-${t#*=}")"; done
echo "false failovers: owner changes $changes, membership changes $((lines_after - lines_before))"

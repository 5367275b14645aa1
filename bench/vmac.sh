#!/usr/bin/env bash
# Issue #13 benchmark: virtual-MAC mode against node-MAC mode, in one lab run.
#
# 1. Failover as the client sees it (the longest gap in a 10 ms ping stream when the
#    owner's switch port is unplugged), TRIALS each, for a 3-node static group:
#      node-normal        node-MAC mode, a normal client (learns the new MAC from the GARP)
#      virtual-normal     virtual-MAC mode, a normal client
#      virtual-permanent  virtual-MAC mode, a client whose entry for the VIP is permanent
#                         (`ip neigh replace VIP lladdr VMAC nud permanent`: it never updates)
#      node-permanent     node-MAC mode, the same never-updating client: expected to stay cut
#                         off (a gap of 10 s or more means no recovery within 10 s)
# 2. Takeover cost for 100 VIPs (device creation included, in virtual-MAC mode): one member
#    owns all 100, the other has just joined; the owner's port is unplugged, and the time
#    from the unplug until the client has had an answer from every VIP is measured
#    (TAKEOVER_TRIALS each, node-MAC and virtual-MAC mode).
#
# Usage: bench/vmac.sh [TRIALS] [TAKEOVER_TRIALS]     (default 20 and 5; needs root)
#        PARTS="failover" bench/vmac.sh 5              (only some of: failover takeover)
set -euo pipefail
trials=${1:-20}
takeover_trials=${2:-5}
LAB_TAG=vm
source "$(dirname "$0")/lab.sh"
source "$root/bench/header.sh"
VIP=192.0.2.100
VMAC=42:00:c0:00:02:64 # vmac::derive(192.0.2.100, 0)
"$root/tests/lab/l2.sh" up "$P" 3
for n in 1 2 3; do
  ip netns exec "${P}n$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1
done
head -c 32 /dev/urandom | base64 >"$work/key"

speakers_down() {
  local n pid
  for n in 1 2 3; do for pid in $(ip netns pids "${P}n$n"); do kill "$pid" 2>/dev/null || true; done; done
  sleep 1
}
before_cleanup() { speakers_down; }

# start_group MODE VIP...: a speaker on each of n1..n3, each joining the others.
start_group() {
  local mode=$1 n m joins extra=()
  shift
  [ "$mode" = virtual ] && extra=(--virtual-mac)
  local vips=(); for v in "$@"; do vips+=(--vip "$v"); done
  for n in 1 2 3; do
    joins=(); for m in 1 2 3; do [ "$m" = "$n" ] || joins+=(--join "192.0.2.1$m:7946"); done
    ip netns exec "${P}n$n" "$V" speaker --interface eth0 "${vips[@]}" --node-name "n$n" \
      --gossip-key-file "$work/key" "${joins[@]}" "${extra[@]}" 2>"$work/sp$n-$mode.log" &
  done
}

# The node (1-3) that answers for the VIP: by its MAC in node-MAC mode; in virtual-MAC
# mode the one node that carries the virtual MAC, once only one does (a member plugged back
# in still holds its device until the group has merged: up to 10 s).
owner() {
  local mode=$1 n i carriers
  if [ "$mode" = node ]; then
    ip netns exec "${P}c" arping -c 1 -w 2 -I eth0 "$VIP" | grep -o '\[[0-9a-fA-F:]*\]' | tail -c 3 | head -c 1
  else
    for i in $(seq 1 100); do
      carriers=()
      for n in 1 2 3; do
        if ip -n "${P}n$n" -o link show type macvlan | grep -q vvm; then carriers+=("$n"); fi
      done
      if [ ${#carriers[@]} = 1 ]; then echo "${carriers[0]}"; return; fi
      sleep 0.1
    done
  fi
}

# One trial: ping for SECONDS, unplug the owner after 1 s; prints the longest gap (s), or the
# time to the end of the run when no reply came back.
trial() {
  local mode=$1 seconds=$2 o
  o=$(owner "$mode")
  [ -n "$o" ] || { echo "no owner" >&2; return 1; }
  ip netns exec "${P}c" ping -D -i 0.01 -c $((seconds * 100)) -W 0.5 "$VIP" >"$work/ping" 2>&1 &
  local pp=$!
  sleep 1
  local at; at=$(date +%s.%N)
  "$root/tests/lab/l2.sh" detach "$P" "$o"
  wait "$pp" || true
  "$root/tests/lab/l2.sh" attach "$P" "$o"
  python3 - "$work/ping" "$at" "$seconds" <<'PY'
import re, sys
t = [float(m.group(1)) for l in open(sys.argv[1]) for m in [re.match(r'\[(\d+\.\d+)\]', l)] if m and 'bytes from' in l]
at, seconds = float(sys.argv[2]), float(sys.argv[3])
t.append(max(t[-1] if t else at, at + seconds - 1))  # no reply after the unplug: a gap to the end
print(f"{max(b - a for a, b in zip(t, t[1:])):.3f}")
PY
}

# failover_trials LABEL MODE CLIENT SECONDS
failover_trials() {
  local label=$1 mode=$2 client=$3 seconds=$4 i o mac
  : >"$work/$label"
  for i in $(seq 1 "$trials"); do
    ip -n "${P}c" neigh flush dev eth0
    if [ "$client" = permanent ]; then
      o=$(owner "$mode")
      if [ "$mode" = virtual ]; then mac=$VMAC; else mac="02:00:00:00:00:1$o"; fi
      ip -n "${P}c" neigh replace "$VIP" lladdr "$mac" nud permanent dev eth0
    fi
    trial "$mode" "$seconds" >>"$work/$label"
    ip -n "${P}c" neigh flush dev eth0 nud permanent 2>/dev/null || ip -n "${P}c" neigh del "$VIP" dev eth0 2>/dev/null || true
    sleep 4
  done
}

bench_header
echo "trials: $trials failovers per configuration, $takeover_trials takeovers of 100 VIPs per mode"
parts=" ${PARTS:-failover takeover} "

if [[ $parts == *" failover "* ]]; then
  for n in 1 2 3; do ip -n "${P}n$n" route add local "$VIP/32" dev lo; done
  for mode in node virtual; do
    start_group "$mode" "$VIP"
    sleep 3
    failover_trials "$mode-normal" "$mode" normal 4
    # 11 s: long enough to show that node-MAC mode's never-updating client stays cut off.
    if [ "$mode" = node ]; then seconds=11; else seconds=4; fi
    failover_trials "$mode-permanent" "$mode" permanent "$seconds"
    speakers_down
  done
  for n in 1 2 3; do ip -n "${P}n$n" route del local "$VIP/32" dev lo; done
  echo "failover (longest client-side gap; node-permanent: >= 10 s means never within 10 s):"
  "$root/bench/stats.py" --base virtual-normal "$work/node-normal" "$work/virtual-normal" "$work/virtual-permanent" "$work/node-permanent"
fi

if [[ $parts == *" takeover "* ]]; then
  # 100 VIPs: 192.0.2.100 .. 192.0.2.199, each taken by the nodes' kernels via a local route.
  vips=(); for i in $(seq 100 199); do vips+=("192.0.2.$i"); done
  for n in 1 2; do for v in "${vips[@]}"; do ip -n "${P}n$n" route add local "$v/32" dev lo; done; done
  vip_args=(); for v in "${vips[@]}"; do vip_args+=(--vip "$v"); done
  for mode in node virtual; do
    extra=(); [ "$mode" = virtual ] && extra=(--virtual-mac)
    : >"$work/takeover-$mode"
    for i in $(seq 1 "$takeover_trials"); do
      # n1 alone announces all 100; n2 joins with a hold time, so n1 keeps them all until
      # it dies, and n2 (no settled member left) takes them all over at once.
      ip netns exec "${P}n1" "$V" speaker --interface eth0 "${vip_args[@]}" --node-name n1 \
        --gossip-key-file "$work/key" --join 192.0.2.12:7946 "${extra[@]}" 2>"$work/t1-$mode-$i.log" &
      for _ in $(seq 1 100); do [ "$(grep -c ' announced ' "$work/t1-$mode-$i.log" || true)" -ge 100 ] && break; sleep 0.1; done
      ip netns exec "${P}n2" "$V" speaker --interface eth0 "${vip_args[@]}" --node-name n2 \
        --gossip-key-file "$work/key" --join 192.0.2.11:7946 --hold-time 30s "${extra[@]}" 2>"$work/t2-$mode-$i.log" &
      sleep 2
      # The client asks every VIP every 20 ms, unplugs n1 after 1 s, and reports when the
      # last VIP answered again (bounded: 10 s).
      ip netns exec "${P}c" python3 - "$root/tests/lab/l2.sh" "$P" "${vips[@]}" >>"$work/takeover-$mode" <<'PY'
import os, select, socket, struct, subprocess, sys, time
lab, prefix, vips = sys.argv[1], sys.argv[2], sys.argv[3:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setblocking(False)
def csum(b):
    if len(b) % 2: b += b"\0"
    x = sum(struct.unpack(f"!{len(b)//2}H", b)); x = (x >> 16) + (x & 0xffff); x += x >> 16
    return ~x & 0xffff
ident = os.getpid() & 0xffff
def echo(seq):
    h = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xffff)
    return struct.pack("!BBHHH", 8, 0, csum(h), ident, seq & 0xffff)
start = time.time(); unplug = None; first = {}; seq = 0; nxt = start
while time.time() - start < 11:
    now = time.time()
    if unplug is None and now - start >= 1:
        subprocess.run([lab, "detach", prefix, "1"], check=True); unplug = time.time()
    if unplug is not None and len(first) == len(vips): break
    if now >= nxt:
        for v in vips: s.sendto(echo(seq), (v, 0))
        seq += 1; nxt = now + 0.02
    r, _, _ = select.select([s], [], [], max(0, nxt - time.time()))
    while r:
        try: pkt, addr = s.recvfrom(2048)
        except BlockingIOError: break
        ihl = (pkt[0] & 15) * 4
        if pkt[ihl] == 0 and unplug is not None and addr[0] not in first and time.time() > unplug + 0.05:
            first[addr[0]] = time.time()
        r, _, _ = select.select([s], [], [], 0)
print(f"{(max(first.values()) - unplug) if len(first) == len(vips) else 10.0:.3f}")
PY
      "$root/tests/lab/l2.sh" attach "$P" 1
      speakers_down
    done
  done
  for n in 1 2; do for v in "${vips[@]}"; do ip -n "${P}n$n" route del local "$v/32" dev lo; done; done
  echo "takeover of 100 VIPs (unplug to the last VIP answering; 10 s = not all within 10 s):"
  "$root/bench/stats.py" --base takeover-node "$work/takeover-node" "$work/takeover-virtual"
fi

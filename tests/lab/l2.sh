#!/usr/bin/env bash
# A small L2 lab in network namespaces: a "switch" namespace with a bridge, a client and
# N nodes, each with one veth port on the bridge. Addresses are documentation ranges.
#
#   tests/lab/l2.sh up PREFIX [NODES]    create PREFIXsw, PREFIXc, PREFIXn1..PREFIXnN
#   tests/lab/l2.sh down PREFIX          delete them (idempotent; also kills their processes)
#   tests/lab/l2.sh detach PREFIX N      unplug node N's switch port (a crash as the LAN sees it)
#   tests/lab/l2.sh attach PREFIX N      plug it back
#   tests/lab/l2.sh host PREFIX NET      plug the host (root namespace) into the switch, e.g.
#                                        for an apiserver the nodes can reach: NET is a /24
#                                        such as 203.0.113; the host gets NET.254, the client
#                                        NET.1 and node N NET.1N. Refused if the host already
#                                        routes NET.0/24. (The veth goes away with the lab.)
#
# Client:  eth0 02:00:00:00:00:01  192.0.2.1/24   2001:db8::1/64
# Node N:  eth0 02:00:00:00:00:1N  192.0.2.1N/24  2001:db8::1N/64
set -euo pipefail
cmd=${1:?usage: l2.sh up|down|detach|attach PREFIX [N]}
p=${2:?prefix}
[[ $p =~ ^[a-z0-9]{1,8}$ ]] || { echo "prefix must be 1-8 lowercase letters/digits" >&2; exit 2; }

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${p}(sw|c|n[0-9]+)$" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del "${p}h" 2>/dev/null || true
}

case $cmd in
  up)
    n=${3:-2}
    down
    trap 'down' ERR
    ip netns add "${p}sw"
    ip -n "${p}sw" link add br0 type bridge
    ip -n "${p}sw" link set br0 type bridge stp_state 0 forward_delay 0 ageing_time 30000
    ip -n "${p}sw" link set br0 up
    ip -n "${p}sw" link set lo up
    add_host() { # ns port mac v4 v6
      ip netns add "$1"
      ip -n "${p}sw" link add "$2" type veth peer name eth0 netns "$1"
      ip -n "$1" link set eth0 address "$3"
      ip -n "${p}sw" link set "$2" master br0 up
      ip -n "$1" link set lo up
      ip -n "$1" addr add "$4" dev eth0
      ip -n "$1" addr add "$5" dev eth0 nodad
      ip -n "$1" link set eth0 up
    }
    add_host "${p}c" pc 02:00:00:00:00:01 192.0.2.1/24 2001:db8::1/64
    for i in $(seq 1 "$n"); do
      add_host "${p}n$i" "p$i" "02:00:00:00:00:$(printf '%02d' $((10 + i)))" "192.0.2.$((10 + i))/24" "2001:db8::$((10 + i))/64"
    done
    ;;
  down) down ;;
  host)
    net=${3:?NET, e.g. 203.0.113}
    [[ $net =~ ^(192\.0\.2|198\.51\.100|203\.0\.113)$ ]] || { echo "NET must be a documentation /24 (192.0.2, 198.51.100 or 203.0.113)" >&2; exit 2; }
    if [ -n "$(ip route show to match "$net.254" | grep -v '^default')" ]; then
      echo "the host already routes $net.0/24; pick another documentation range" >&2; exit 3
    fi
    ip link add "${p}h" type veth peer name ph netns "${p}sw"
    ip -n "${p}sw" link set ph master br0 up
    ip addr add "$net.254/24" dev "${p}h"
    ip link set "${p}h" up
    ip -n "${p}c" addr add "$net.1/24" dev eth0
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${p}n[0-9]+$"); do
      ip -n "$ns" addr add "$net.1${ns#"${p}n"}/24" dev eth0
    done
    ;;
  detach) ip -n "${p}sw" link set "p${3:?node}" nomaster ;;
  attach) ip -n "${p}sw" link set "p${3:?node}" master br0 ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac

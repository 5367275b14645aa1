#!/usr/bin/env bash
# vipvisor demo: pools and allocations on a fresh, throw-away store.
# Usage: examples/demo.sh      (builds the CLI first; the store is deleted on exit)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
cargo build -q -p vipvisor --bin vipvisor
vv="$CARGO_TARGET_DIR/debug/vipvisor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export VIPVISOR_STORE="sqlite://$work/demo.db" VIPVISOR_ACTOR=demo

step() { printf '\n\033[1m$ vipvisor %s\033[0m\n' "$*"; "$vv" "$@"; }

step apply -f examples/pools.yaml
step apply -f examples/pools.yaml                       # idempotent: no changes
step pool add edge --addresses 203.0.113.0/29 --priority 1 --namespaces edge
step reserve add 203.0.113.1 --note "edge router"
step alloc request default/web                            # lowest free address of the best pool
step alloc request default/web -o json                    # asking again: same answer
step alloc request edge/ingress                           # priority 1 pool, for namespace edge only
step alloc request default/dual --family dual             # one IPv4 + one IPv6 from one pool
step alloc request default/dns-udp --sharing-key dns --ports udp/53
step alloc request default/dns-tcp --sharing-key dns --ports tcp/53   # shares the address
step alloc request lab/test --pool lab --namespace-labels team=lab --labels expose=lab
if ! "$vv" alloc request default/thief --ip 192.0.2.2 2>"$work/err"; then
  printf '\n\033[1m$ vipvisor alloc request default/thief --ip 192.0.2.2\033[0m  (refused)\n'; cat "$work/err"
fi
step alloc release default/web                            # quarantined for 60 s
step alloc request default/web                            # ... but its owner gets it back
step alloc list
step pool show web
step pool list
step events --limit 8

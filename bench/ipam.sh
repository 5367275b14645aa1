#!/usr/bin/env bash
# Issue #2 benchmarks: pure pick (criterion), durable store allocations and CLI latency.
# Prints the machine and the numbers; copy them into docs/benchmarks.md.
# Usage: bench/ipam.sh            (BENCH_CLI_RUNS=200 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "rustc:   $(rustc --version)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo
echo "== pure pick of a free address (criterion; 1,000 vs 100,000 used, fragmented pool)"
cargo bench -q -p vipvisor-ipam --bench ipam -- --warm-up-time 2 --measurement-time 5 2>/dev/null \
  | grep -E '^ipam_pick|time:' | paste - - | awk '{print $1, $3, $4, $5, $6, $7, $8}' | tee /tmp/vipvisor-bench-ipam.txt
awk 'NR==1 {a=$4; ua=$5} NR==2 {b=$4; ub=$5} END {
  f = (ua=="µs"||ua=="us") ? 1000 : 1; g = (ub=="µs"||ub=="us") ? 1000 : 1;
  printf "ratio 100,000 / 1,000 used (medians): %.2f (target <= 2)\n", (b*g)/(a*f) }' /tmp/vipvisor-bench-ipam.txt
echo
echo "== durable store allocations (one process) and CLI alloc request on 10,000 allocations"
cargo bench -q -p vipvisor --bench store 2>/dev/null | grep -E '^(store_|cli_)'

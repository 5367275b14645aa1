# Sourced by the benchmarks that run in the netns lab, after they have read their
# arguments: builds the release binary ($V; or takes $VIPVISOR_BIN), names the caller's lab ($P = $LAB_TAG + part of
# the pid), makes a work directory ($work), and on exit — also on failure — calls the
# caller's `before_cleanup` if it defines one, deletes the lab and the work directory.
# $root is the repository; the working directory becomes it.
if [ "$(id -u)" != 0 ]; then
  echo "$(basename "$0"): needs root (network namespaces and raw sockets); run it as root" >&2
  exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vipvisor-target}"
# VIPVISOR_BIN=path runs another build (e.g. the previous commit's, for ratios in one run).
if [ -n "${VIPVISOR_BIN:-}" ]; then
  V="$VIPVISOR_BIN"
else
  cargo build -q --release -p vipvisor --bin vipvisor
  V="$CARGO_TARGET_DIR/release/vipvisor"
fi
P="${LAB_TAG:?set LAB_TAG before sourcing bench/lab.sh}$(( $$ % 1000 ))"
work=$(mktemp -d)
cleanup() {
  if declare -F before_cleanup >/dev/null; then before_cleanup || true; fi
  "$root/tests/lab/l2.sh" down "$P" || true
  rm -rf "$work"
}
trap cleanup EXIT

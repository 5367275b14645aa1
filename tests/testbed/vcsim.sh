#!/usr/bin/env bash
# vcsim for the vSphere provider's tests (issue #14): govmomi's simulator from Debian's
# golang-github-vmware-govmomi-dev (0.24.2) with our own main and the calls stock vcsim
# lacks (tests/vcsim: HostNetworkSystem.UpdatePortGroup), built offline in GOPATH mode.
#
#   tests/testbed/vcsim.sh build                  build once per machine (cached under $VCSIM_CACHE,
#                                                 keyed by a hash of tests/vcsim/*.go); prints the binary
#   tests/testbed/vcsim.sh start DIR [FLAG...]    start it on 127.0.0.1 (a free port); DIR/url holds
#                                                 its SDK URL, DIR/pid its PID; FLAGs go to vcsim (-tls,
#                                                 -username U -password-file F, -host N, -cluster-host N,
#                                                 -vm N). With -tls the script makes a P-256 certificate
#                                                 for 127.0.0.1 (DIR/cert, DIR/key; its own CA): httptest's
#                                                 default is 1024-bit RSA, which rustls and OpenSSL refuse
#   tests/testbed/vcsim.sh stop DIR               stop what start started (by its PID); idempotent
set -euo pipefail
cd "$(dirname "$0")/../.."
VCSIM_CACHE=${VCSIM_CACHE:-/var/tmp/vipvisor-vcsim}

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

build() {
  local hash bin
  hash=$(cat tests/vcsim/*.go | sha256sum | cut -c1-12)
  bin="$VCSIM_CACHE/vcsim-$hash"
  if [ -x "$bin" ]; then echo "$bin"; return; fi
  if ! dpkg -s golang-go golang-github-vmware-govmomi-dev >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "golang-go and golang-github-vmware-govmomi-dev are missing (run as root to install them)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go golang-github-vmware-govmomi-dev >/dev/null
  fi
  mkdir -p "$VCSIM_CACHE"
  local t0; t0=$(date +%s.%N)
  # GOPATH mode against Debian's tree; no -trimpath (it rebuilds std: twice as slow).
  (cd tests/vcsim && env -u GOFLAGS GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$VCSIM_CACHE/gocache" \
    CGO_ENABLED=0 go build -o "$bin.tmp" .) || die "building vcsim failed"
  mv "$bin.tmp" "$bin"
  log "built $bin in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
  echo "$bin"
}

start() {
  local dir=${1:?state dir}; shift
  local bin; bin=$(build)
  mkdir -p "$dir"
  local tls=()
  if [[ " $* " == *" -tls "* ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=vcsim \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$dir/key" -out "$dir/cert" 2>/dev/null \
      || die "openssl could not make a certificate"
    tls=(-tlscert "$dir/cert" -tlskey "$dir/key")
  fi
  "$bin" -l 127.0.0.1:0 "$@" "${tls[@]}" >"$dir/out" 2>"$dir/log" &
  echo $! >"$dir/pid"
  local i
  for i in $(seq 1 100); do
    if grep -q '^url=' "$dir/out" 2>/dev/null && { [[ " $* " != *" -tls "* ]] || grep -q '^cert=' "$dir/out"; }; then
      sed -n 's/^url=//p' "$dir/out" >"$dir/url"
      log "vcsim at $(cat "$dir/url") (pid $(cat "$dir/pid"))"
      return
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { tail -5 "$dir/log" >&2; die "vcsim exited"; }
    sleep 0.05
  done
  stop "$dir"
  die "vcsim did not start within 5 s"
}

stop() {
  local dir=${1:?state dir} pid
  [ -s "$dir/pid" ] || return 0
  pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case ${1:-} in
  build) build ;;
  start) shift; start "$@" ;;
  stop) stop "${2:?state dir}" ;;
  *) echo "usage: tests/testbed/vcsim.sh build | start DIR [FLAG...] | stop DIR" >&2; exit 2 ;;
esac

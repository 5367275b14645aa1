#!/usr/bin/env bash
# A real libvirtd (Debian bookworm's 9.0, monolithic daemon) for tests, with no systemd.
#
#   tests/testbed/libvirt.sh install        apt: libvirtd, virsh, libvirt-dev, dnsmasq, iptables...
#                                           (skips what is installed; no QEMU)
#   tests/testbed/libvirt.sh install-qemu   apt: qemu-system-x86 + busybox-static, to define and
#                                           boot guests (pairs qemu-utils with it, see below)
#   tests/testbed/libvirt.sh start DIR      netns + virtlogd + libvirtd; prints the URI
#   tests/testbed/libvirt.sh stop DIR       stop what start started; idempotent
#
# Both daemons run as root inside a network namespace of their own ($VV_LIBVIRT_NETNS, default
# vv-libvirt), so the bridges, taps, dnsmasq and ebtables/iptables rules that libvirt makes stay
# there; the host's networking is never touched. Clients in any namespace reach
# qemu:///system through the filesystem socket /run/libvirt/libvirt-sock.
#
# Where state lives. DIR holds what this script owns: PID files, the daemons' config files
# (libvirtd -f, virtlogd -f), their logs, the netns name, the names of the objects that existed
# at start, and /dev/kvm's original owner and mode. libvirtd has no switch to move a privileged
# daemon's own state, so the rest is at the system defaults: sockets and runtime state in
# /run/libvirt, persistent definitions in /etc/libvirt, the QEMU capabilities cache in
# /var/cache/libvirt, guest logs in /var/log/libvirt. `stop` undefines every domain, network
# and nwfilter that was not there at `start`, so those paths are left as they were found.
#
# Bridges for <forward mode='bridge'/> networks: libvirt does not create them, and net-start
# does not check that they exist (only a domain start fails). `start` creates the bridges
# named in $VV_LIBVIRT_BRIDGES (default: vvbr0) inside the namespace, up, with no address.
#
# Speed: without udev, /dev/kvm is root:root 0600. libvirt then finds KVM "usable when probed
# but not for uid libvirt-qemu" and re-probes QEMU on every API call (a define took 44 s).
# `start` sets Debian's udev permissions (root:kvm 0660) and `stop` restores the originals.
# libvirt-daemon-config-network's `default` NAT network (192.168.122.0/24, dnsmasq) is not
# autostarted: `start` removes its autostart link.
set -euo pipefail
NS=${VV_LIBVIRT_NETNS:-vv-libvirt}
BRIDGES=${VV_LIBVIRT_BRIDGES-vvbr0}
URI=qemu:///system
READY_TIMEOUT=${VV_LIBVIRT_READY_TIMEOUT:-20}

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
virsh_() { timeout 30 virsh -q -c "$URI" "$@"; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

apt_install() { # apt_install [extra apt-get options --] PKG...
  export DEBIAN_FRONTEND=noninteractive
  local opts=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  log "installing: $*"
  local before; before=$(dpkg-query -W -f='${db:Status-Abbrev}\n' | grep -c '^ii')
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${opts[@]}" "$@" >/dev/null
  log "$(( $(dpkg-query -W -f='${db:Status-Abbrev}\n' | grep -c '^ii') - before )) packages more installed (with dependencies)"
}

ensure_lists() { apt-get update -qq; } # apt-cache knows nothing (or something old) before it

install() {
  local t0; t0=$(now)
  # libvirt-daemon-system-sysv on purpose: the default -systemd alternative pulls in systemd.
  # iptables provides ebtables-nft (priority 20); the ebtables package only adds the legacy
  # binary (priority 10), so the alternative stays on nft.
  local want=(libvirt-dev libvirt-daemon libvirt-daemon-system libvirt-daemon-system-sysv
    libvirt-clients dnsmasq-base iptables ebtables iproute2 pkg-config) missing=() p
  for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then log "libvirt packages already installed"; return 0; fi
  ensure_lists
  apt_install -- "${missing[@]}"
  log "installed in $(since "$t0") s: libvirt $(dpkg-query -W -f='${Version}' libvirt-daemon)"
}

install_qemu() {
  local t0; t0=$(now)
  local missing=() p opts=()
  for p in qemu-system-x86 busybox-static; do installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then log "qemu-system-x86 and busybox-static already installed"; return 0; fi
  ensure_lists
  if ! installed qemu-system-x86 && installed qemu-utils; then
    # A newer qemu-utils (the image's is from bookworm-backports) Breaks qemu-system-common
    # << 8.0, and apt would silently remove it (and qemu-img with it). Pair it with the
    # qemu-system-x86 being installed instead; this replaces qemu-img by that version.
    local qv have
    qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    have=$(dpkg-query -W -f='${Version}' qemu-utils)
    if [ "$qv" != "$have" ]; then
      log "qemu-utils $have -> $qv, to match qemu-system-x86 (qemu-img changes version)"
      missing+=("qemu-utils=$qv"); opts+=(--allow-downgrades)
    fi
  fi
  apt_install "${opts[@]}" -- "${missing[@]}"
  log "installed in $(since "$t0") s: $(qemu-system-x86_64 --version | head -1)"
}

running() { # running PID COMM: PID runs (not a zombie) and is COMM, so a reused PID is not ours
  local st
  [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_alive() { [ -s "$1" ] && running "$(cat "$1")" "$2"; } # pid_alive FILE COMM

start() {
  local dir=${1:?usage: start DIR}
  command -v libvirtd >/dev/null && command -v virsh >/dev/null || die "libvirtd/virsh missing: run '$0 install' first"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if pid_alive "$dir/libvirtd.pid" libvirtd; then die "libvirtd of $dir already runs (pid $(cat "$dir/libvirtd.pid"))"; fi
  if virsh -q -c "$URI" uri >/dev/null 2>&1; then die "another libvirtd already answers on $URI"; fi
  if ip netns list | awk '{print $1}' | grep -qx "$NS"; then
    [ -z "$(ip netns pids "$NS")" ] || die "netns $NS exists and has processes: run '$0 stop DIR' with its DIR"
    log "removing stale empty netns $NS"; ip netns del "$NS"
  fi
  local t0; t0=$(now)
  trap 'start_failed "'"$dir"'"' EXIT
  trap 'exit 130' INT TERM
  rm -f "$dir/baseline" "$dir/baseline.tmp"
  echo "$NS" >"$dir/netns"

  if [ -c /dev/kvm ]; then
    [ -s "$dir/kvm.orig" ] || stat -c '%g %a' /dev/kvm >"$dir/kvm.orig"
    if getent group kvm >/dev/null; then
      chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    else
      log "warning: no group kvm; /dev/kvm stays $(stat -c '%G %a' /dev/kvm): every API call may re-probe QEMU"
    fi
  fi
  local auto=/etc/libvirt/qemu/networks/autostart/default.xml
  if [ -L "$auto" ] || [ -e "$auto" ]; then log "not autostarting libvirt's 'default' NAT network (removing $auto)"; rm -f "$auto"; fi

  ip netns add "$NS"
  ip -n "$NS" link set lo up
  local br
  for br in $BRIDGES; do
    ip -n "$NS" link add "$br" type bridge
    ip -n "$NS" link set "$br" up
  done

  # Level 3 = warnings and errors. auth none: the socket is root-only (0770 root:root), and
  # Debian's polkit default would need a polkitd for non-root clients.
  cat >"$dir/libvirtd.conf" <<EOF
# written by tests/testbed/libvirt.sh
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:$dir/libvirtd.log"
EOF
  printf '# written by tests/testbed/libvirt.sh\nlog_outputs = "3:file:%s/virtlogd.log"\n' "$dir" >"$dir/virtlogd.conf"
  ip netns exec "$NS" /usr/sbin/virtlogd -d -f "$dir/virtlogd.conf" -p "$dir/virtlogd.pid"
  ip netns exec "$NS" /usr/sbin/libvirtd -d -f "$dir/libvirtd.conf" -p "$dir/libvirtd.pid"

  local i ok=
  for i in $(seq 1 $((READY_TIMEOUT * 10))); do
    if virsh -q -c "$URI" uri >/dev/null 2>&1; then ok=1; break; fi
    if [ "$i" -gt 20 ] && ! pid_alive "$dir/libvirtd.pid" libvirtd; then break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || die "libvirtd did not answer on $URI within ${READY_TIMEOUT} s"
  log "libvirtd answers after $(since "$t0") s (pid $(cat "$dir/libvirtd.pid"), netns $NS)"

  # What exists now is not ours to undefine at stop.
  { virsh_ list --all --name | sed '/^$/d; s/^/domain /'
    virsh_ net-list --all --name | sed '/^$/d; s/^/network /'
    virsh_ nwfilter-list | awk 'NF >= 2 {print "nwfilter " $2}'
  } >"$dir/baseline.tmp"
  grep -qx 'nwfilter clean-traffic' "$dir/baseline.tmp" || die "nwfilter driver has no clean-traffic filter"
  mv "$dir/baseline.tmp" "$dir/baseline" # only a complete list: stop undefines what is not in it

  if command -v qemu-system-x86_64 >/dev/null; then
    # `virsh version` needs an emulator; the first QEMU capabilities probe costs a few
    # seconds on a fresh machine (cached in /var/cache/libvirt afterwards), so it is done
    # here, not inside a test's timeout.
    local deadline=$(( $(date +%s) + READY_TIMEOUT ))
    until virsh -q -c "$URI" version >"$dir/version" 2>/dev/null; do
      [ "$(date +%s)" -lt "$deadline" ] || die "virsh version did not answer within ${READY_TIMEOUT} s"
      sleep 0.2
    done
    virsh_ domcapabilities --virttype qemu --arch x86_64 >/dev/null
  else
    log "no qemu-system-x86_64 ('$0 install-qemu'): networks and nwfilters work; domains cannot be defined"
    virsh -q -c "$URI" version --daemon >"$dir/version" 2>/dev/null || true
  fi
  trap - EXIT INT TERM
  log "ready after $(since "$t0") s"
  echo "$URI"
}

start_failed() {
  local rc=$? dir=$1
  trap - EXIT INT TERM
  [ "$rc" -ne 0 ] || return 0
  log "start failed (exit $rc); libvirtd.log tail:"
  tail -20 "$dir/libvirtd.log" 2>/dev/null >&2 || true
  stop "$dir" || true
  exit "$rc"
}

kill_pidfile() { # kill_pidfile FILE COMM: TERM, wait up to 5 s, then KILL; only if FILE's PID is COMM
  local f=$1 comm=$2 p i
  p=$(cat "$f" 2>/dev/null || true)
  # the daemons delete their PID file while exiting: wait on the PID, not on the file
  if running "$p" "$comm"; then
    kill "$p" 2>/dev/null || true
    for i in $(seq 50); do running "$p" "$comm" || break; sleep 0.1; done
    if running "$p" "$comm"; then log "$comm (pid $p) ignored TERM; killing"; kill -9 "$p" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

# kill-libvirtd DIR: SIGKILL the testbed's libvirtd (by its pid file), as a crash would;
# revive-libvirtd DIR starts it again with the same configuration and waits for it.
kill_libvirtd() {
  local dir=${1:?usage: kill-libvirtd DIR}
  pid_alive "$dir/libvirtd.pid" libvirtd || die "libvirtd of $dir does not run"
  kill -9 "$(cat "$dir/libvirtd.pid")"
  local i; for i in $(seq 1 50); do pid_alive "$dir/libvirtd.pid" libvirtd || return 0; sleep 0.1; done
  die "libvirtd of $dir survived SIGKILL"
}

revive_libvirtd() {
  local dir=${1:?usage: revive-libvirtd DIR} ns=$NS
  [ -s "$dir/netns" ] && ns=$(cat "$dir/netns")
  pid_alive "$dir/libvirtd.pid" libvirtd && die "libvirtd of $dir still runs"
  rm -f "$dir/libvirtd.pid"
  ip netns exec "$ns" /usr/sbin/libvirtd -d -f "$dir/libvirtd.conf" -p "$dir/libvirtd.pid"
  local i; for i in $(seq 1 $((READY_TIMEOUT * 10))); do
    virsh -q -c "$URI" uri >/dev/null 2>&1 && { log "libvirtd revived (pid $(cat "$dir/libvirtd.pid"))"; return 0; }
    sleep 0.1
  done
  die "libvirtd did not answer again within ${READY_TIMEOUT} s"
}

stop() {
  local dir=${1:?usage: stop DIR}
  local ns=$NS
  [ -s "$dir/netns" ] && ns=$(cat "$dir/netns")
  local t0 d n f; t0=$(now)
  if pid_alive "$dir/libvirtd.pid" libvirtd && virsh -q -c "$URI" uri >/dev/null 2>&1; then
    # Guests and networks live in our netns: stop them all, so QEMU and dnsmasq exit and the
    # taps and firewall rules go with them.
    for d in $(virsh_ list --name 2>/dev/null); do virsh_ destroy "$d" >/dev/null 2>&1 || true; done
    for n in $(virsh_ net-list --name 2>/dev/null); do virsh_ net-destroy "$n" >/dev/null 2>&1 || true; done
  fi
  # Undefine what was defined after start (domains first: a filter in use can't go). Only
  # with the list of what existed at start: without it (start failed before writing it)
  # nothing is undefined, since it cannot tell the stock filters from a test's.
  if [ -s "$dir/baseline" ] && pid_alive "$dir/libvirtd.pid" libvirtd && virsh -q -c "$URI" uri >/dev/null 2>&1; then
    for d in $(virsh_ list --all --name 2>/dev/null); do
      grep -qxF "domain $d" "$dir/baseline" || virsh_ undefine --nvram "$d" >/dev/null 2>&1 || virsh_ undefine "$d" >/dev/null 2>&1 || true
    done
    for n in $(virsh_ net-list --all --name 2>/dev/null); do
      grep -qxF "network $n" "$dir/baseline" || virsh_ net-undefine "$n" >/dev/null 2>&1 || true
    done
    for f in $(virsh_ nwfilter-list 2>/dev/null | awk 'NF >= 2 {print $2}'); do
      grep -qxF "nwfilter $f" "$dir/baseline" || virsh_ nwfilter-undefine "$f" >/dev/null 2>&1 || true
    done
  elif [ -s "$dir/baseline" ]; then
    log "warning: libvirtd is gone; what tests defined stays in /etc/libvirt"
  fi
  kill_pidfile "$dir/libvirtd.pid" libvirtd
  kill_pidfile "$dir/virtlogd.pid" virtlogd
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    # Anything still in our namespace was started by our daemons (QEMU, dnsmasq).
    local p left
    left=$(ip netns pids "$ns" || true)
    if [ -n "$left" ]; then
      log "killing leftovers in netns $ns: $(echo $left)"
      for p in $left; do kill "$p" 2>/dev/null || true; done
      sleep 0.5
      for p in $(ip netns pids "$ns" || true); do kill -9 "$p" 2>/dev/null || true; done
    fi
    ip netns del "$ns" || log "warning: could not delete netns $ns"
  fi
  if [ -s "$dir/kvm.orig" ] && [ -c /dev/kvm ]; then
    local gid mode
    read -r gid mode <"$dir/kvm.orig"
    chgrp "$gid" /dev/kvm && chmod "$mode" /dev/kvm || log "warning: could not restore /dev/kvm"
  fi
  # Logs stay in DIR for a look after a failure; the rest of our state goes.
  rm -f "$dir/kvm.orig" "$dir/baseline" "$dir/baseline.tmp" "$dir/netns" "$dir/version" "$dir/libvirtd.conf" "$dir/virtlogd.conf"
  log "stopped in $(since "$t0") s"
}

case ${1:-} in
  install) install ;;
  install-qemu) install_qemu ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kill-libvirtd) shift; kill_libvirtd "$@" ;;
  revive-libvirtd) shift; revive_libvirtd "$@" ;;
  *) echo "usage: $0 install | install-qemu | start DIR | stop DIR | kill-libvirtd DIR | revive-libvirtd DIR" >&2; exit 2 ;;
esac

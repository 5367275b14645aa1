#!/usr/bin/env bash
# A real, disk-less libvirt test guest from Debian packages only (no image download, nothing
# installed): Debian's own kernel plus a busybox-static initramfs, booted directly (no disk,
# no firmware boot loader). It exists for the libvirt suite's ARP proof: the guest holds its
# node IP and a VIP on eth0, so its kernel answers ARP for both, and nwfilter's clean-traffic
# decides which replies leave the tap. Recipe and evidence: research/libvirt-guest.md.
#
#   tests/testbed/guest.sh build DIR [EXTRA]   DIR/vmlinuz + DIR/initrd.gz (EXTRA, e.g. a static
#                                              binary, lands in the guest as /bin/$(basename EXTRA))
#   tests/testbed/guest.sh domain-xml NAME MAC IP VIP NETWORK [DIR]
#                                              print a domain XML booting DIR's kernel (DIR
#                                              defaults to $VV_GUEST_DIR); serial log DIR/NAME.serial.log
#   tests/testbed/guest.sh wait-ready LOGFILE [TIMEOUT]
#                                              poll a serial log for the ready line (default 90 s);
#                                              prints the seconds waited; exit 1 on timeout/failure
#   tests/testbed/guest.sh nic-xml DOMAIN MAC [IP...]
#                                              print DOMAIN's <interface> with that MAC from
#                                              `virsh dumpxml --inactive`, its filterref IP
#                                              parameters replaced by IP... (none: no IP at all),
#                                              for `virsh update-device DOMAIN FILE --live --config`
#
# build. `apt-get download` fetches the package linux-image-amd64 points to (today
# linux-image-6.1.0-57-amd64, 70 MB); only boot/vmlinuz-* and 10 modules (virtio_ring, virtio,
# virtio_pci_modern_dev, virtio_pci_legacy_dev, virtio_pci, failover, net_failover, virtio_net,
# e1000, and macvlan for virtual-MAC mode's devices; the .deb has no modules.dep, so the load
# order is fixed here) are extracted. They are
# cached in $VV_GUEST_CACHE (default /var/tmp/vipvisor-guest)/<kernel ABI>_<package version>/, so a
# machine downloads each kernel once; the initramfs (/init below + /bin/busybox + the modules) is
# cached there too, named after a hash of its inputs. EXTRA goes into a second cpio.gz appended to
# DIR/initrd.gz (the kernel unpacks concatenated archives), so the cached part is never rebuilt
# for it. Concurrent builds serialise on $VV_GUEST_CACHE/.lock (bounded, 10 min). Offline (no
# apt lists, no mirror), the newest cached kernel is used. Needs root, busybox-static, apt access.
#
# The guest's /init reads the kernel command line:
#   vv.ip=ADDR/PREFIX        eth0's address (required)
#   vv.vip=ADDR[/P][,ADDR..] extra addresses on eth0 (default /32): the kernel answers ARP for them
#   vv.lo=ADDR[,ADDR..]      addresses on lo, with arp_ignore=1: the kernel takes traffic for
#                            them (a ping is answered) but leaves their ARP to vv.run's speaker
#   vv.garp=SECONDS          also send a gratuitous ARP for each VIP every SECONDS (off by default)
#   vv.run=NAME[,ARG...]     start /bin/NAME ARG... (an EXTRA) in the background once eth0 is up
#   vv.key=TEXT              written to /run/vv.key (0600) first: a test secret for vv.run
#   vv.name=NAME             only printed
# and prints, on ttyS0, "vv-guest: ready name=... ip=... vip=... mac=... uptime=..." once the
# addresses are set and eth0's operstate is up; then it sleeps forever. On an error it prints
# "vv-guest: error: ..." and reboots, which ends the domain (on_reboot destroy).
#
# domain-xml. type='qemu' (TCG) unless /proc/cpuinfo has vmx/svm and /dev/kvm opens read-write
# (VV_GUEST_VIRT=auto, the default); VV_GUEST_VIRT=qemu or kvm forces one. This kind of machine
# exposes a /dev/kvm (PVM) with no vmx/svm flag that cannot boot a stock kernel (TESTBED.md), so
# it gets TCG; kvm on a real VT-x/AMD-V host is untested. 256 MiB (the initramfs with a static vipvisor unpacks into RAM), 1 vCPU,
# machine 'pc', no ACPI, on_poweroff/reboot/crash destroy, panic=-1 (a panic ends the domain).
# CPU qemu64 plus RDRAND (<cpu check='none'>; TCG emulates it): the kernel trusts RDRAND
# (Debian's default), so its CRNG is ready 0.1 s into boot. Without it this idle, disk-less
# guest gathers ~0.5 bit/s and the CRNG was still not ready after ~10 min, so whatever
# waits for it hangs silently: a static-glibc vipvisor with --join blocked in
# poll(/dev/random) (getrandom 0.4's fallback: its dlsym("getrandom") is NULL when static).
# random.trust_cpu=on alone does not help (qemu64 has no RDRAND); no virtio-rng needed.
# One NIC: type='network' on NETWORK, that MAC, model $VV_GUEST_NIC_MODEL (virtio; e1000 works
# too), no option ROM, <filterref filter='$VV_GUEST_FILTER'> (clean-traffic; empty: no filter)
# with <parameter name='IP' value='IP'/>. VIP may be "" (none). IP and VIP must be in the
# documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) unless VV_GUEST_ANY_ADDR=1.
# QEMU runs as root with no DAC relabelling (<seclabel type='static' model='dac' relabel='no'>):
# DIR may then be any root-only temporary directory (libvirt-qemu could not read a kernel in a
# 0700 tempdir), and libvirt never chowns the files. The guest is our own busybox, TCG, in the
# testbed's network namespace.
#
# This script starts no daemons and defines nothing: the caller defines, starts, destroys and
# undefines the domain (and tests/testbed/libvirt.sh stop undefines whatever is left).
#
# Environment: VV_GUEST_CACHE (build cache), VV_GUEST_DIR (domain-xml's DIR), VV_GUEST_VIRT,
# VV_GUEST_NIC_MODEL, VV_GUEST_FILTER, VV_GUEST_CMDLINE (extra vv.* words for /init, e.g.
# "vv.run=agent,--flag" or "vv.garp=2"), VV_GUEST_ANY_ADDR, VV_GUEST_URI (nic-xml; qemu:///system).
#
# Proven end to end by hand on this machine (2 cores, TCG, load 0.5-2; two runs from a clean
# state, one with an empty cache; tests/testbed/libvirt.sh install + install-qemu done before):
#   L=$(mktemp -d); G=$(mktemp -d); V="virsh -q -c qemu:///system"; C="ip netns exec vv-client"
#   tests/testbed/guest.sh build "$G"        # empty cache 3.9-7.4 s (70 MB .deb); cached 0.8-1.2 s
#                                            # (of that ~0.9 s is apt-cache: this image keeps no pkgcache.bin)
#   tests/testbed/libvirt.sh start "$L"      # 0.3-0.7 s (QEMU capabilities already cached)
#   echo "<network><name>vv-guest-net</name><forward mode='bridge'/><bridge name='vvbr0'/></network>" >"$G/net.xml"
#   $V net-define "$G/net.xml"; $V net-start vv-guest-net
#   ip netns add vv-client; ip -n vv-client link set lo up
#   ip -n vv-libvirt link add vvcbr0 type veth peer name vvc0 netns vv-client
#   ip -n vv-libvirt link set vvcbr0 master vvbr0 up
#   ip -n vv-client addr add 192.0.2.1/24 dev vvc0; ip -n vv-client link set vvc0 up
#   tests/testbed/guest.sh domain-xml vvg1 52:54:00:00:02:21 192.0.2.21 192.0.2.100 vv-guest-net "$G" >"$G/dom.xml"
#   $V define "$G/dom.xml"; $V start vvg1    # start returns after 1.7-2.1 s
#   tests/testbed/guest.sh wait-ready "$G/vvg1.serial.log"   # 6.6-7.3 s more: ready 8.4-9.0 s after
#                                            # start (the guest's own uptime then: 2.6-3.3 s)
#   $C arping -c 3 -w 4 -I vvc0 192.0.2.21   # "Received 3 response(s)", [52:54:00:00:02:21]
#   $C arping -c 3 -w 4 -I vvc0 192.0.2.100  # "Received 0 response(s)", exit 1 (clean-traffic drops)
#   tests/testbed/guest.sh nic-xml vvg1 52:54:00:00:02:21 192.0.2.21 192.0.2.100 >"$G/nic.xml"
#   $V update-device vvg1 "$G/nic.xml" --live --config       # 2.0-2.4 s
#   $C arping -c 3 -w 4 -I vvc0 192.0.2.100  # 3 replies from [52:54:00:00:02:21]; the first 1-probe
#                                            # arping right after the call already answers (2.2-2.4 s
#                                            # after update-device began)
#   tests/testbed/guest.sh nic-xml vvg1 52:54:00:00:02:21 192.0.2.21 >"$G/nic.xml"
#   $V update-device vvg1 "$G/nic.xml" --live --config       # 2.0-2.2 s
#   $C arping -c 3 -w 4 -I vvc0 192.0.2.100  # 0 replies again; 192.0.2.21 still 3
#   $V destroy vvg1; $V undefine vvg1        # 2.1-2.5 s (filter teardown)
#   $V net-destroy vv-guest-net; $V net-undefine vv-guest-net
#   ip netns del vv-client                   # the veth pair goes with it (vvcbr0 leaves vvbr0)
#   tests/testbed/libvirt.sh stop "$L"; rm -rf "$G" "$L"     # 0.4-0.5 s
#   # then: no qemu-system/libvirtd/virtlogd/dnsmasq process, no netns, nothing in /etc/libvirt/qemu
# Also checked: build DIR EXTRA (a copy of busybox as /bin/busyboxvv) with
# VV_GUEST_CMDLINE=vv.run=busyboxvv,echo,hello-from-extra and VV_GUEST_FILTER= prints
# "hello-from-extra" before the ready line; vv.run of a missing binary makes wait-ready fail as
# soon as the guest prints its error (8.9 s after start), and the domain is shut off 3 s later.
# RDRAND (two runs, VV_GUEST_FILTER=, EXTRA the static vipvisor, no VIP on eth0, VV_GUEST_CMDLINE=
# "vv.key=<34-byte key> vv.run=vipvisor,speaker,--interface,eth0,--vip,192.0.2.100,--node-name,g1,
# --join,192.0.2.22:7946,--gossip-key-file,/run/vv.key,--hold-time,0s"): "random: crng init done"
# at 0.09 s uptime, "announced" 9.6 s after start, the client's arping gets 3 replies for the VIP
# from [52:54:00:00:02:21]. The same XML without <cpu>: no log line from vipvisor, 0 replies.
set -euo pipefail
CACHE=${VV_GUEST_CACHE:-/var/tmp/vipvisor-guest}
URI=${VV_GUEST_URI:-qemu:///system}
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net e1000 macvlan"
READY='vv-guest: ready'

log() { printf '[guest] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# What the script created and must remove if it fails: temporary directories and files.
CLEAN=()
cleanup() { local p; for p in "${CLEAN[@]}"; do rm -rf -- "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

init_script() { # becomes /init; no bashisms: busybox ash
  cat <<'EOF'
#!/bin/busybox sh
# /init of the vipvisor test guest (tests/testbed/guest.sh build): busybox only.
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /tmp /run
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
up() { cut -d' ' -f1 /proc/uptime; }
# reboot, not poweroff: without ACPI a power-off only halts the CPU and the domain keeps
# "running"; a reboot ends it (on_reboot destroy)
fail() { echo "vv-guest: error: $*"; sleep 1; reboot -f; while :; do sleep 60; done; }
arg() { for kv in $(cat /proc/cmdline); do case $kv in "$1"=*) echo "${kv#*=}";; esac; done; }
echo "vv-guest: init at uptime $(up)"
for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m.ko" || echo "vv-guest: warning: insmod $m failed"
done
NAME=$(arg vv.name); IP=$(arg vv.ip); VIP=$(arg vv.vip); GARP=$(arg vv.garp); RUN=$(arg vv.run)
[ -n "$IP" ] || fail "no vv.ip= on the kernel command line"
i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1)); [ $i -le 100 ] || fail "no eth0 after 10 s"; sleep 0.1
done
ip link set lo up
echo 0 >/proc/sys/net/ipv6/conf/eth0/accept_dad   # busybox ip has no nodad
ip link set eth0 up || fail "ip link set eth0 up"
ip addr add "$IP" dev eth0 || fail "ip addr add $IP dev eth0"
VIPS=
for v in $(echo "$VIP" | tr , ' '); do
  case $v in */*) ;; *) v=$v/32 ;; esac
  ip addr add "$v" dev eth0 || fail "ip addr add $v dev eth0"
  VIPS="$VIPS ${v%/*}"
done
for v in $(arg vv.lo | tr , ' '); do
  echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore; echo 1 >/proc/sys/net/ipv4/conf/eth0/arp_ignore
  ip addr add "$v/32" dev lo || fail "ip addr add $v/32 dev lo"
done
i=0
# carrier is 1 at once; operstate turns "up" ~1 s later (linkwatch): wait for it, up to 5 s
while [ "$(cat /sys/class/net/eth0/operstate 2>/dev/null)" != up ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
KEY=$(arg vv.key)
if [ -n "$KEY" ]; then   # a test secret for the program vv.run starts (e.g. a gossip key)
  umask 077; echo "$KEY" >/run/vv.key; umask 022
fi
if [ -n "$RUN" ]; then
  set -- $(echo "$RUN" | tr , ' ')
  p=$1; shift
  [ -x "/bin/$p" ] || fail "vv.run: no /bin/$p in the initramfs"
  "/bin/$p" "$@" </dev/null >/dev/console 2>&1 &
  echo "vv-guest: started /bin/$p (pid $!)"
fi
ip addr show dev eth0
echo "vv-guest: ready name=${NAME:-?} ip=$IP vip=${VIP:-none} mac=$(cat /sys/class/net/eth0/address) uptime=$(up)"
if [ -n "$GARP" ] && [ -n "$VIPS" ]; then
  while :; do
    for v in $VIPS; do arping -U -c 1 -I eth0 -s "$v" "$v" >/dev/null 2>&1; done
    sleep "$GARP"
  done
fi
while :; do sleep 3600; done
EOF
}

# Sets KPKG (linux-image-6.1.0-57-amd64), KVER (6.1.0-57-amd64), KDEB (6.1.192-3), KEY (cache dir).
resolve_kernel() {
  local arch; arch=$(dpkg --print-architecture)
  [ "$arch" = amd64 ] || die "only amd64 is supported (this is $arch)"
  # One apt-cache call (~1 s where apt keeps no pkgcache.bin): the metapackage's candidate
  # depends on exactly one kernel package, with its version: "Depends: linux-image-X (= V)".
  local dep
  dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | sed -n 's/^Depends: \(linux-image-[0-9][^ ,]*\)\( (= \([^)]*\))\)\{0,1\}.*/\1 \3/p' | head -1 || true)
  if [ -z "$dep" ]; then
    log "apt knows no linux-image-amd64: apt-get update"
    apt-get update -qq || log "warning: apt-get update failed"
    dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | sed -n 's/^Depends: \(linux-image-[0-9][^ ,]*\)\( (= \([^)]*\))\)\{0,1\}.*/\1 \3/p' | head -1 || true)
  fi
  KPKG=${dep%% *}; KDEB=${dep#* }
  if [ -n "$KPKG" ]; then
    if [ -z "$KDEB" ]; then KDEB=$(apt-cache policy "$KPKG" | awk '/Candidate:/ {print $2}'); fi
    [ -n "$KDEB" ] && [ "$KDEB" != "(none)" ] || die "no candidate version for $KPKG"
    KVER=${KPKG#linux-image-}
    KEY="$CACHE/${KVER}_$KDEB"
    return
  fi
  KEY=$(ls -1d "$CACHE"/*_*/ 2>/dev/null | sed 's:/$::' | sort -V | tail -1 || true)
  [ -n "$KEY" ] && [ -s "$KEY/vmlinuz" ] || die "cannot resolve linux-image-amd64 (no apt lists?) and nothing is cached in $CACHE"
  KVER=$(basename "$KEY"); KDEB=${KVER#*_}; KVER=${KVER%%_*}; KPKG=linux-image-$KVER
  log "offline: using the cached kernel $KPKG $KDEB"
}

fetch_kernel() { # into $KEY: vmlinuz, modules/*.ko, package
  local work; work=$(mktemp -d "$CACHE/.work.XXXXXX"); CLEAN+=("$work")
  chmod 0755 "$work"; chown _apt "$work" 2>/dev/null || true   # apt's sandbox user writes the .deb
  log "downloading $KPKG $KDEB"
  (cd "$work" && apt-get download -qq "$KPKG=$KDEB") || die "apt-get download $KPKG=$KDEB failed"
  local deb; deb=$(ls "$work"/*.deb)
  local pats=("./boot/vmlinuz-$KVER") m
  for m in $MODS; do pats+=("*/modules/$KVER/kernel/*/$m.ko*"); done
  mkdir "$work/x"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" --wildcards "${pats[@]}" \
    || die "extracting vmlinuz and modules from $deb failed (module renamed or moved?)"
  local tmp="$KEY.tmp.$$"; CLEAN+=("$tmp")
  rm -rf "$tmp"; mkdir -p "$tmp/modules"
  cp "$work/x/boot/vmlinuz-$KVER" "$tmp/vmlinuz"
  local f
  while IFS= read -r f; do
    case $f in
      *.ko) cp "$f" "$tmp/modules/" ;;
      *.ko.xz) xz -dc "$f" >"$tmp/modules/$(basename "$f" .xz)" ;;
      *.ko.zst) zstd -qdc "$f" >"$tmp/modules/$(basename "$f" .zst)" ;;
      *) die "unknown module format: $f" ;;
    esac
  done < <(find "$work/x" -name '*.ko*' -type f)
  for m in $MODS; do [ -s "$tmp/modules/$m.ko" ] || die "module $m missing from $deb"; done
  printf '%s %s\n' "$KPKG" "$KDEB" >"$tmp/package"
  chmod -R a+rX "$tmp"
  rm -rf "$KEY"; mv "$tmp" "$KEY"
  rm -rf "$work"
  local old   # kernels linux-image-amd64 no longer points to (we hold the lock: nobody copies them)
  for old in "$CACHE"/*_*; do [ "$old" = "$KEY" ] || [ ! -d "$old" ] || { log "pruning $old"; rm -rf "$old"; }; done
}

elf_dynamic() { # elf_dynamic FILE: true if FILE is a 64-bit ELF with a PT_INTERP (needs ld.so)
  local f=$1 off ent num i
  [ "$(od -An -c -N 4 "$f" | tr -d ' ')" = '177ELF' ] && [ "$(od -An -t u1 -j 4 -N 1 "$f" | tr -d ' ')" = 2 ] || return 1
  off=$(od -An -t u8 -j 32 -N 8 "$f" | tr -d ' ')
  ent=$(od -An -t u2 -j 54 -N 2 "$f" | tr -d ' ')
  num=$(od -An -t u2 -j 56 -N 2 "$f" | tr -d ' ')
  for ((i = 0; i < num; i++)); do
    [ "$(od -An -t u4 -j $((off + i * ent)) -N 4 "$f" | tr -d ' ')" = 3 ] && return 0
  done
  return 1
}

base_initrd() { # sets INITRD: the cached initramfs for $KEY, built if needed (no subshell: CLEAN)
  local bb=/bin/busybox
  [ -x "$bb" ] || die "$bb missing: tests/testbed/libvirt.sh install-qemu (busybox-static)"
  elf_dynamic "$bb" && die "$bb is dynamically linked: install busybox-static, not busybox"
  local h; h=$( { init_script; echo "$MODS"; sha256sum "$bb" "$KEY/modules/"*.ko; } | sha256sum | cut -c1-12)
  local out="$KEY/initrd-$h.gz"
  if [ ! -s "$out" ]; then
    local r; r=$(mktemp -d "$CACHE/.root.XXXXXX"); CLEAN+=("$r" "$out.tmp.$$")
    mkdir -p "$r/bin" "$r/lib/modules"
    cp "$bb" "$r/bin/busybox"
    cp "$KEY/modules/"*.ko "$r/lib/modules/"
    echo "$MODS" | tr ' ' '\n' >"$r/lib/modules/order"
    init_script >"$r/init"; chmod 0755 "$r/init"
    (cd "$r" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$out.tmp.$$")
    chmod 0644 "$out.tmp.$$"; mv "$out.tmp.$$" "$out"
    rm -rf "$r"
    log "built initramfs $out"
  fi
  find "$KEY" -maxdepth 1 -name 'initrd-*.gz' ! -name "$(basename "$out")" -delete # older /init versions
  INITRD=$out
}

build() {
  local dir=${1:?usage: build DIR [EXTRA]} extra=${2:-}
  [ "$(id -u)" = 0 ] || die "build needs root (apt-get download, root-owned cache)"
  if [ -n "$extra" ]; then
    [ -f "$extra" ] && [ -r "$extra" ] || die "EXTRA $extra is not a readable file"
    case $(basename "$extra") in busybox | init | *[!A-Za-z0-9._-]*) die "EXTRA's name $(basename "$extra") is reserved or unsafe" ;; esac
    if elf_dynamic "$extra"; then log "warning: $extra is dynamically linked; the guest has no libc, it will not run there"; fi
  fi
  local t0; t0=$(now)
  mkdir -p "$CACHE" "$dir"; chmod 0755 "$CACHE"
  dir=$(cd "$dir" && pwd)
  exec 9>"$CACHE/.lock"
  flock -w 600 9 || die "another build holds $CACHE/.lock for more than 10 min"
  resolve_kernel
  local how=cached
  local m missing=
  for m in $MODS; do [ -s "$KEY/modules/$m.ko" ] || missing=$m; done
  if [ ! -s "$KEY/vmlinuz" ] || [ ! -s "$KEY/package" ] || [ -n "$missing" ]; then fetch_kernel; how=downloaded; fi
  base_initrd
  CLEAN+=("$dir/vmlinuz.tmp" "$dir/initrd.gz.tmp")
  cp "$KEY/vmlinuz" "$dir/vmlinuz.tmp"
  cp "$INITRD" "$dir/initrd.gz.tmp"
  if [ -n "$extra" ]; then
    local r; r=$(mktemp -d "$CACHE/.extra.XXXXXX"); CLEAN+=("$r")
    mkdir "$r/bin"; cp "$extra" "$r/bin/"; chmod 0755 "$r/bin/$(basename "$extra")"
    # Symbols only take the guest's RAM (the initramfs unpacks into it).
    if command -v strip >/dev/null; then strip "$r/bin/$(basename "$extra")" 2>/dev/null || true; fi
    (cd "$r" && echo "bin/$(basename "$extra")" | busybox cpio -o -H newc 2>/dev/null | gzip -1 >>"$dir/initrd.gz.tmp")
    rm -rf "$r"
  fi
  flock -u 9
  chmod 0644 "$dir/vmlinuz.tmp" "$dir/initrd.gz.tmp"
  mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"; mv "$dir/initrd.gz.tmp" "$dir/initrd.gz"
  log "$KPKG $KDEB ($how): $dir/vmlinuz $(stat -c %s "$dir/vmlinuz") B, $dir/initrd.gz $(stat -c %s "$dir/initrd.gz") B${extra:+ (with /bin/$(basename "$extra"))} in $(since "$t0") s"
}

is_doc_addr() { # is_doc_addr ADDR: 192.0.2.0/24, 198.51.100.0/24 or 203.0.113.0/24
  [ "${VV_GUEST_ANY_ADDR:-}" = 1 ] && return 0
  case $1 in 192.0.2.* | 198.51.100.* | 203.0.113.*) return 0 ;; *) return 1 ;; esac
}
check_ipv4() { # check_ipv4 WHAT ADDR[/PREFIX]
  local a=${2%/*} o
  [[ $2 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}(/[0-9]{1,2})?$ ]] || die "$1 $2 is not an IPv4 address"
  for o in ${a//./ }; do [ "$o" -le 255 ] || die "$1 $2 is not an IPv4 address"; done
  is_doc_addr "$a" || die "$1 $2 is outside the documentation ranges (VV_GUEST_ANY_ADDR=1 to allow)"
}

virt_type() {
  case ${VV_GUEST_VIRT:-auto} in
    qemu | tcg) echo qemu ;;
    kvm) echo kvm ;;
    auto)
      if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -c /dev/kvm ] && { : <>/dev/kvm; } 2>/dev/null; then echo kvm; else echo qemu; fi ;;
    *) die "VV_GUEST_VIRT=${VV_GUEST_VIRT} (want qemu, kvm or auto)" ;;
  esac
}

domain_xml() {
  [ $# -ge 5 ] || die "usage: domain-xml NAME MAC IP VIP NETWORK [DIR]"
  local name=$1 mac=$2 ip=$3 vip=$4 net=$5 dir=${6:-${VV_GUEST_DIR:-}}
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad domain name $name"
  [[ $net =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad network name $net"
  [[ $mac =~ ^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$ ]] || die "bad MAC $mac"
  check_ipv4 IP "$ip"
  local v
  for v in ${vip//,/ }; do check_ipv4 VIP "$v"; done
  [ -n "$dir" ] || die "no DIR (argument 6 or VV_GUEST_DIR)"
  dir=$(cd "$dir" && pwd)
  [[ $dir =~ ^[A-Za-z0-9/_.+-]+$ ]] || die "DIR $dir has characters this script does not put into XML"
  [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.gz" ] || die "$dir has no vmlinuz/initrd.gz: run build $dir first"
  local vt model=${VV_GUEST_NIC_MODEL:-virtio} filter=${VV_GUEST_FILTER-clean-traffic}
  vt=$(virt_type)
  [[ $model =~ ^[a-z0-9_-]+$ ]] || die "bad VV_GUEST_NIC_MODEL $model"
  [[ $filter =~ ^[A-Za-z0-9_.-]*$ ]] || die "bad VV_GUEST_FILTER $filter"
  [[ ${VV_GUEST_CMDLINE:-} =~ ^[A-Za-z0-9=.,/:_\ -]*$ ]] || die "bad VV_GUEST_CMDLINE ${VV_GUEST_CMDLINE}"
  local cidr=$ip; [[ $cidr == */* ]] || cidr=$ip/24
  local fref=
  if [ -n "$filter" ]; then
    fref="
      <filterref filter='$filter'>
        <parameter name='IP' value='${ip%/*}'/>
      </filterref>"
  fi
  cat <<EOF
<domain type='$vt'>
  <name>$name</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
    <feature policy='require' name='rdrand'/>
  </cpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$dir/vmlinuz</kernel>
    <initrd>$dir/initrd.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 vv.name=$name vv.ip=$cidr${vip:+ vv.vip=$vip}${VV_GUEST_CMDLINE:+ $VV_GUEST_CMDLINE}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'>
    <label>+0:+0</label>
  </seclabel>
  <devices>
    <interface type='network'>
      <mac address='$mac'/>
      <source network='$net'/>
      <model type='$model'/>
      <rom enabled='no'/>$fref
    </interface>
    <serial type='file'>
      <source path='$dir/$name.serial.log' append='off'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

wait_ready() {
  local logf=${1:?usage: wait-ready LOGFILE [TIMEOUT]} timeout=${2:-90}
  [[ $timeout =~ ^[0-9]+$ ]] || die "TIMEOUT $timeout is not a number of seconds"
  local t0 deadline; t0=$(now); deadline=$(( $(date +%s) + timeout ))
  while :; do
    if [ -f "$logf" ]; then
      if grep -q "^$READY" "$logf" 2>/dev/null; then
        log "$(grep -m1 "^$READY" "$logf" | tr -d '\r')"
        since "$t0"; echo
        return 0
      fi
      if grep -qE '^vv-guest: error|Kernel panic' "$logf" 2>/dev/null; then
        log "guest failed; $logf tail:"; tail -15 "$logf" | tr -d '\r' >&2
        exit 1
      fi
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "no '$READY' in $logf after $timeout s; tail:"
      tail -15 "$logf" 2>/dev/null | tr -d '\r' >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

nic_xml() {
  [ $# -ge 2 ] || die "usage: nic-xml DOMAIN MAC [IP...]"
  local dom=$1 mac=$2; shift 2
  local ip
  for ip in "$@"; do [[ $ip =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "IP $ip is not an IPv4 address"; done
  # The inactive XML: the live one says type='bridge', and fed back with --config it would
  # rewrite the saved NIC from type='network' to type='bridge' (research/libvirt-guest.md).
  local xml; xml=$(timeout 30 virsh -q -c "$URI" dumpxml --inactive "$dom") || die "virsh dumpxml --inactive $dom failed"
  # libvirt formats its XML one element per line, single-quoted: an <interface> block is
  # copied with its IP parameters dropped and the given ones put right after <filterref>.
  awk -v mac="$(echo "$mac" | tr A-F a-f)" -v ips="$*" -v q="'" '
    function params(   n, a, i, s) { n = split(ips, a, " "); s = ""
      for (i = 1; i <= n; i++) s = s ind "  <parameter name=" q "IP" q " value=" q a[i] q "/>\n"; return s }
    /^ *<interface[ >]/ { inif = 1; buf = ""; has = 0; fr = 0 }
    inif {
      line = $0
      if (line ~ ("<parameter name=" q "IP" q " ")) next
      if (line ~ /<filterref .*\/>/) { fr = 1; ind = line; sub(/<.*/, "", ind); sub(/\/>$/, ">", line)
        buf = buf line "\n" params() ind "</filterref>\n"; next }
      if (line ~ /<filterref /) { fr = 1; ind = line; sub(/<.*/, "", ind); buf = buf line "\n" params(); next }
      if (tolower(line) ~ ("<mac address=" q mac q)) has = 1
      buf = buf line "\n"
      if (line ~ /<\/interface>/) { inif = 0; if (has) { found = 1; exit } }
    }
    END { if (!found) exit 3; if (!fr) exit 4; printf "%s", buf }' <<<"$xml" || {
    case $? in 3) die "$dom has no interface with MAC $mac" ;; 4) die "$dom's NIC $mac has no filterref" ;; *) die "nic-xml failed" ;; esac
  }
}

case ${1:-} in
  build) shift; build "$@" ;;
  domain-xml) shift; domain_xml "$@" ;;
  wait-ready) shift; wait_ready "$@" ;;
  nic-xml) shift; nic_xml "$@" ;;
  *) echo "usage: $0 build DIR [EXTRA] | domain-xml NAME MAC IP VIP NETWORK [DIR] | wait-ready LOGFILE [TIMEOUT] | nic-xml DOMAIN MAC [IP...]" >&2; exit 2 ;;
esac

//! The raw socket layer: one AF_PACKET socket per interface, with a classic BPF filter so
//! that only ARP and ICMPv6 NS/NA frames reach user space, integrated with tokio through
//! `AsyncFd`. This is the only module of the workspace with `unsafe`; every block says why
//! it is sound. Multicast membership (solicited-node groups) goes through socket2's safe API.
//!
//! [`Link`] is the small interface the runner needs; [`MemLink`] implements it in memory
//! for tests.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Sending and receiving whole Ethernet frames on one interface.
pub trait Link: Send + Sync + 'static {
    /// Sends one frame, waiting while the socket buffer is full.
    fn send(&self, frame: &[u8]) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Receives one frame into `buf`, returning its length.
    fn recv(&self, buf: &mut [u8]) -> impl std::future::Future<Output = io::Result<usize>> + Send;
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Classic BPF: accept ARP (0x0806), and IPv6 (0x86dd) whose next header is ICMPv6 (58)
/// with type 135 (NS) or 136 (NA); drop everything else in the kernel.
const FILTER: [libc::sock_filter; 10] = [
    bpf(0x28, 0, 0, 12),      // 0: ldh [12]            ethertype
    bpf(0x15, 6, 0, 0x0806),  // 1: jeq ARP → accept
    bpf(0x15, 0, 6, 0x86dd),  // 2: jeq IPv6, else drop
    bpf(0x30, 0, 0, 20),      // 3: ldb [20]            IPv6 next header
    bpf(0x15, 0, 4, 58),      // 4: jeq ICMPv6, else drop
    bpf(0x30, 0, 0, 54),      // 5: ldb [54]            ICMPv6 type
    bpf(0x15, 1, 0, 135),     // 6: jeq NS → accept
    bpf(0x15, 0, 1, 136),     // 7: jeq NA → accept, else drop
    bpf(0x06, 0, 0, 0x40000), // 8: accept (up to 256 KiB)
    bpf(0x06, 0, 0, 0),       // 9: drop
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `value` points to a live `T` of `len` bytes for the duration of the call, and
    // `fd` is an open socket owned by the caller.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), len) })
}

/// An AF_PACKET socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
}

impl PacketSocket {
    /// Opens the socket for interface `ifindex`. Needs CAP_NET_RAW (EPERM otherwise).
    pub fn open(ifindex: u32) -> io::Result<PacketSocket> {
        let proto = libc::c_int::from(ETH_P_ALL.to_be());
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
        check(raw)?;
        // SAFETY: `raw` is a freshly created, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Attach the filter before binding, so no unfiltered frame is queued after bind.
        let prog = libc::sock_fprog { len: FILTER.len() as u16, filter: FILTER.as_ptr().cast_mut() };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
        // Our own frames are not input (Linux ≥ 4.20; older kernels: OwnFrame drops).
        let _ = setsockopt(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1 as &libc::c_int);
        let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &(4 << 20) as &libc::c_int);
        // The kernel strips VLAN tags before packet sockets see a frame; the auxiliary data
        // tells us, so a tagged request is dropped instead of answered untagged.
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1 as &libc::c_int)?;
        let index = libc::c_int::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value before we set fields.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = index;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is a valid sockaddr_ll of `len` bytes that outlives the call.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) })?;
        // Frames that arrived between socket() and the filter: discard.
        let mut buf = [0u8; 2048];
        while recv_now(&fd, &mut buf).is_ok() {}
        // SAFETY: `fd` is an open descriptor owned by the OwnedFd we hand over; OwnedFd
        // returns the same descriptor from as_raw_fd until it is dropped with the AsyncFd.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(PacketSocket { fd })
    }

    /// Sends without waiting (`WouldBlock` when the socket buffer is full).
    pub fn try_send(&self, frame: &[u8]) -> io::Result<()> {
        send_now(self.fd.get_ref(), frame)
    }
}

fn send_now(fd: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: `frame` is a valid readable slice of `frame.len()` bytes; `fd` is open.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if usize::try_from(n).ok() != Some(frame.len()) {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send on a packet socket"));
    }
    Ok(())
}

/// Receives one frame. A frame whose VLAN tag the kernel stripped gets it back (as
/// libpcap does), so the parser sees, and drops, a tagged frame.
fn recv_now(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    const TAG: usize = 4;
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for one cmsghdr with a tpacket_auxdata, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain old data; all-zero is a valid value before we set fields.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (the writable `buf`) and `control`, both alive for the
    // call; `fd` is open.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    let mut n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // cmsgs; CMSG_FIRSTHDR/NXTHDR stay within them, and the auxdata is read unaligned.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points into `control` (see above).
        let h = unsafe { &*cmsg };
        if h.cmsg_level == libc::SOL_PACKET && h.cmsg_type == libc::PACKET_AUXDATA {
            // SAFETY: a PACKET_AUXDATA cmsg carries one tpacket_auxdata.
            let aux: libc::tpacket_auxdata = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && n >= 12 && n + TAG <= buf.len() {
                let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { aux.tp_vlan_tpid } else { 0x8100 };
                buf.copy_within(12..n, 12 + TAG);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                n += TAG;
            }
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(n)
}

impl Link for PacketSocket {
    async fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.try_send(frame) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self.fd.writable().await?;
                    guard.clear_ready();
                }
                other => return other,
            }
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_now(fd.get_ref(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Membership of IPv6 multicast groups on one interface (MLD reports are sent by the
/// kernel, so MLD-snooping switches forward solicitations for our VIPs to us). A socket's
/// memberships are bounded by `net.core.optmem_max`, so groups are spread over as many
/// sockets as needed, [`GROUPS_PER_SOCKET`] each.
#[derive(Debug)]
pub struct Multicast {
    ifindex: u32,
    sockets: Vec<(socket2::Socket, std::collections::BTreeSet<Ipv6Addr>)>,
}

pub const GROUPS_PER_SOCKET: usize = 100;

impl Multicast {
    pub fn new(ifindex: u32) -> io::Result<Self> {
        Ok(Multicast { ifindex, sockets: Vec::new() })
    }
    pub fn join(&mut self, group: Ipv6Addr) -> io::Result<()> {
        if self.sockets.iter().any(|(_, g)| g.contains(&group)) {
            return Ok(());
        }
        if !self.sockets.iter().any(|(_, g)| g.len() < GROUPS_PER_SOCKET) {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
            self.sockets.push((s, std::collections::BTreeSet::new()));
        }
        let ifindex = self.ifindex;
        if let Some((s, g)) = self.sockets.iter_mut().find(|(_, g)| g.len() < GROUPS_PER_SOCKET) {
            s.join_multicast_v6(&group, ifindex)?;
            g.insert(group);
        }
        Ok(())
    }
    pub fn leave(&mut self, group: Ipv6Addr) -> io::Result<()> {
        let ifindex = self.ifindex;
        if let Some((s, g)) = self.sockets.iter_mut().find(|(_, g)| g.contains(&group)) {
            g.remove(&group);
            s.leave_multicast_v6(&group, ifindex)?;
        }
        Ok(())
    }
    /// Number of groups joined.
    pub fn len(&self) -> usize {
        self.sockets.iter().map(|(_, g)| g.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An in-memory link for tests: frames pushed with [`MemLink::inject`] are received;
/// sent frames are kept in order.
#[derive(Debug, Default)]
pub struct MemLink {
    inbox: Mutex<VecDeque<Vec<u8>>>,
    sent: Mutex<Vec<Vec<u8>>>,
    ready: Notify,
}

impl MemLink {
    pub fn inject(&self, frame: Vec<u8>) {
        if let Ok(mut q) = self.inbox.lock() {
            q.push_back(frame);
        }
        self.ready.notify_one();
    }
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Link for MemLink {
    async fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.sent.lock().map_err(|_| io::Error::other("poisoned"))?.push(frame.to_vec());
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let next = self.inbox.lock().map_err(|_| io::Error::other("poisoned"))?.pop_front();
            if let Some(f) = next {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                return Ok(n);
            }
            self.ready.notified().await;
        }
    }
}

//! Which interface a new locally originated TCP flow actually leaves by.
//!
//! Field notes, "Hazard 1": for IPv6 the member a flow uses *now* cannot be
//! predicted by a route lookup (the socket's first lookup ran with source
//! port 0); it has to be observed. The SYN is the cheapest packet to watch.
//! This module opens one `AF_PACKET`/`SOCK_RAW` socket on every interface of
//! the namespace with a classic BPF filter that keeps only **outgoing**
//! (`PACKET_OUTGOING`) TCP SYN-without-ACK frames and truncates them to
//! [`SNAP_LEN`] bytes, so everything else (incoming and forwarded-in traffic,
//! data segments, SYN-ACKs) is dropped in the kernel and never copied out.
//! Forwarded SYNs leave by the same interfaces and are outgoing there too:
//! they pass the filter, and the consumer tells them apart by their source
//! address (not local) or by matching them against its sockets.
//!
//! The filter, in order:
//! 1. `SKF_AD_PKTTYPE == PACKET_OUTGOING` (ancillary load: incoming frames
//!    are rejected in the kernel, before any copy);
//! 2. `SKF_AD_HATYPE == ARPHRD_ETHER`: only Ethernet-framed devices (veth,
//!    physical NICs, bridges, VLAN devices). Devices without an Ethernet
//!    header (tunnels, WireGuard, PPP) and `lo` are **not observed**;
//! 3. no out-of-band VLAN tag (`SKF_AD_VLAN_TAG_PRESENT == 0`) and an
//!    ethertype of IPv4 or IPv6 directly after the MAC addresses (so no
//!    in-band 802.1Q/802.1ad tag). A SYN routed out of a VLAN device should
//!    so be seen once, untagged, on the VLAN device itself (the route's
//!    output interface), its copy on the parent device carrying the tag
//!    (out of band with tx VLAN offload, in band without) and being dropped.
//!    That is from the kernel's design, **untested**: this project's kernel
//!    has no 8021q. **Limit**: a flow whose route points at a device whose
//!    frames get a tag from something else (e.g. tc vlan push) is not
//!    observed;
//! 4. IPv4: protocol TCP, fragment offset 0, header length from IHL
//!    (options allowed); IPv6: next header TCP directly after the fixed
//!    header. **Limit**: IPv6 SYNs with extension headers (hop-by-hop,
//!    routing, destination options, fragment) are not observed;
//! 5. TCP flags: SYN set, ACK clear.
//!
//! Other things to know:
//! - A SYN leaving through a bridge is seen on the bridge (the route's
//!   output interface) and again on the bridge port it leaves by; both are
//!   reported, the bridge first (checked on this kernel). A retransmitted SYN is reported again.
//!   Consumers should match `ifindex` against the candidate members'
//!   interfaces, keeping the first match.
//! - `at` is when the observer thread received the frame, not a kernel
//!   timestamp.
//! - The socket belongs to the network namespace of the thread that calls
//!   [`spawn`].

#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{error::TrySendError, Sender};

/// One outgoing TCP SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedSyn {
    /// Source address and port: the local end of the new flow.
    pub local: SocketAddr,
    /// Destination address and port.
    pub remote: SocketAddr,
    /// The interface the frame left by.
    pub ifindex: u32,
    /// The frame's destination MAC: the neighbour (gateway) it was sent to.
    pub dst_mac: [u8; 6],
    /// When the observer received it.
    pub at: Instant,
}

/// Bytes of each frame copied to user space: Ethernet (14) + the largest
/// IPv4 header (60) + the TCP header up to and including its flags (14),
/// rounded up. IPv6 needs 14 + 40 + 14.
pub const SNAP_LEN: u32 = 96;
/// How often the thread wakes without traffic to notice a closed channel
/// or a stop request.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// Receive buffer asked for (forced past rmem_max with CAP_NET_ADMIN).
const RCVBUF: usize = 2 << 20;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PACKET_OUTGOING: u8 = 4;
const ARPHRD_ETHER: u32 = 1;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Counters of an observer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObserverStats {
    /// SYNs handed to the channel.
    pub sent: u64,
    /// SYNs dropped because the channel was full.
    pub channel_full: u64,
    /// Frames that passed the kernel filter but did not parse (should stay 0).
    pub unparsed: u64,
    /// Frames the kernel dropped because the socket's buffer was full
    /// (`PACKET_STATISTICS`), summed since the start.
    pub kernel_drops: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    channel_full: AtomicU64,
    unparsed: AtomicU64,
    kernel_drops: AtomicU64,
}

/// The running observer. Dropping it asks the thread to stop (it notices
/// within [`RECV_TIMEOUT`]); so does closing the channel's receiver.
pub struct ObserverHandle {
    thread: Option<JoinHandle<io::Result<()>>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl ObserverHandle {
    /// Counters so far.
    pub fn stats(&self) -> ObserverStats {
        let c = &self.counters;
        ObserverStats {
            sent: c.sent.load(Ordering::Relaxed),
            channel_full: c.channel_full.load(Ordering::Relaxed),
            unparsed: c.unparsed.load(Ordering::Relaxed),
            kernel_drops: c.kernel_drops.load(Ordering::Relaxed),
        }
    }

    /// Asks the thread to stop; it does within [`RECV_TIMEOUT`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// True while the thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and waits for it; returns the socket error that
    /// ended it, if one did.
    pub fn join(mut self) -> io::Result<()> {
        self.stop();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("SYN observer thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ObserverHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens the packet socket (in the calling thread's network namespace) and
/// attaches the filter before the socket is bound, so no unfiltered frame is
/// ever queued; when this returns the observer is armed. A dedicated OS
/// thread then receives SYNs and sends them to `tx` with `try_send` (a full
/// channel drops the SYN and counts it). The thread ends when `tx` is
/// closed, when the handle is stopped or dropped, or on a socket error.
pub fn spawn(tx: Sender<ObservedSyn>) -> io::Result<ObserverHandle> {
    let fd = open_socket()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let (stop2, counters2) = (stop.clone(), counters.clone());
    let thread =
        std::thread::Builder::new().name("syn-observer".into()).spawn(move || run(fd, tx, stop2, counters2))?;
    Ok(ObserverHandle { thread: Some(thread), stop, counters })
}

fn run(fd: OwnedFd, tx: Sender<ObservedSyn>, stop: Arc<AtomicBool>, counters: Arc<Counters>) -> io::Result<()> {
    let mut buf = [0u8; 128];
    let result = loop {
        if stop.load(Ordering::Relaxed) || tx.is_closed() {
            break Ok(());
        }
        match recv_frame(fd.as_raw_fd(), &mut buf) {
            Ok((n, ifindex, pkttype)) => {
                let at = Instant::now();
                let frame = &buf[..n];
                let parsed = (pkttype == PACKET_OUTGOING).then(|| parse_frame(frame)).flatten();
                let Some((local, remote)) = parsed else {
                    counters.unparsed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut dst_mac = [0u8; 6];
                dst_mac.copy_from_slice(&frame[..6]);
                let syn = ObservedSyn { local, remote, ifindex, dst_mac, at };
                match tx.try_send(syn) {
                    Ok(()) => counters.sent.fetch_add(1, Ordering::Relaxed),
                    Err(TrySendError::Full(_)) => counters.channel_full.fetch_add(1, Ordering::Relaxed),
                    Err(TrySendError::Closed(_)) => break Ok(()),
                };
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                add_kernel_drops(fd.as_raw_fd(), &counters);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    add_kernel_drops(fd.as_raw_fd(), &counters);
    result
}

fn add_kernel_drops(fd: RawFd, counters: &Counters) {
    if let Ok(d) = packet_drops(fd) {
        counters.kernel_drops.fetch_add(u64::from(d), Ordering::Relaxed);
    }
}

/// Parses an Ethernet frame (possibly cut at [`SNAP_LEN`]) holding an IPv4
/// or IPv6 TCP SYN without ACK; returns (source, destination). Everything
/// else, including truncated headers, VLAN tags, IPv4 fragments and IPv6
/// extension headers, is `None`. Mirrors the kernel filter.
pub fn parse_frame(frame: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let ip = frame.get(14..)?;
    let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match ethertype {
        ETH_P_IP => {
            let first = *ip.first()?;
            let ihl = usize::from(first & 0x0f) * 4;
            if first >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                return None;
            }
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            if ip[9] != IPPROTO_TCP || frag != 0 {
                return None;
            }
            let s: [u8; 4] = ip[12..16].try_into().ok()?;
            let d: [u8; 4] = ip[16..20].try_into().ok()?;
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into(), &ip[ihl..])
        }
        ETH_P_IPV6 => {
            if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP {
                return None;
            }
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into(), &ip[40..])
        }
        _ => return None,
    };
    let flags = *tcp.get(13)?;
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

// ---- the classic BPF program ----

const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_AND: u16 = 0x50;
const BPF_K: u16 = 0x00;
/// SKF_AD_OFF (-0x1000) as the unsigned `k` of a load.
const SKF_AD_OFF: u32 = 0xffff_f000;
const SKF_AD_PKTTYPE: u32 = 4;
const SKF_AD_HATYPE: u32 = 28;
const SKF_AD_VLAN_TAG_PRESENT: u32 = 48;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

/// A conditional jump at `pc` to absolute targets (the encoding is
/// relative to the next instruction).
const fn jump(pc: usize, code: u16, k: u32, t: usize, f: usize) -> Insn {
    Insn { code: BPF_JMP | code | BPF_K, jt: (t - pc - 1) as u8, jf: (f - pc - 1) as u8, k }
}

/// The filter described in the module docs.
fn filter() -> [Insn; 24] {
    const V4: usize = 9;
    const V6: usize = 17;
    const ACCEPT: usize = 22;
    const DROP: usize = 23;
    [
        /* 0 */ stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
        /* 1 */ jump(1, BPF_JEQ, PACKET_OUTGOING as u32, 2, DROP),
        /* 2 */ stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_HATYPE),
        /* 3 */ jump(3, BPF_JEQ, ARPHRD_ETHER, 4, DROP),
        /* 4 */ stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT),
        /* 5 */ jump(5, BPF_JEQ, 0, 6, DROP),
        /* 6 */ stmt(BPF_LD | BPF_H | BPF_ABS, 12),
        /* 7 */ jump(7, BPF_JEQ, ETH_P_IP as u32, V4, 8),
        /* 8 */ jump(8, BPF_JEQ, ETH_P_IPV6 as u32, V6, DROP),
        // IPv4
        /* 9 */ stmt(BPF_LD | BPF_B | BPF_ABS, 14 + 9),
        /* 10 */ jump(10, BPF_JEQ, IPPROTO_TCP as u32, 11, DROP),
        /* 11 */ stmt(BPF_LD | BPF_H | BPF_ABS, 14 + 6),
        /* 12 */ jump(12, BPF_JSET, 0x1fff, DROP, 13),
        /* 13 */ stmt(BPF_LDX | BPF_B | BPF_MSH, 14),
        /* 14 */ stmt(BPF_LD | BPF_B | BPF_IND, 14 + 13),
        /* 15 */ stmt(BPF_ALU | BPF_AND | BPF_K, (TCP_SYN | TCP_ACK) as u32),
        /* 16 */ jump(16, BPF_JEQ, TCP_SYN as u32, ACCEPT, DROP),
        // IPv6
        /* 17 */ stmt(BPF_LD | BPF_B | BPF_ABS, 14 + 6),
        /* 18 */ jump(18, BPF_JEQ, IPPROTO_TCP as u32, 19, DROP),
        /* 19 */ stmt(BPF_LD | BPF_B | BPF_ABS, 14 + 40 + 13),
        /* 20 */ stmt(BPF_ALU | BPF_AND | BPF_K, (TCP_SYN | TCP_ACK) as u32),
        /* 21 */ jump(21, BPF_JEQ, TCP_SYN as u32, ACCEPT, DROP),
        /* 22 */ stmt(BPF_RET | BPF_K, SNAP_LEN),
        /* 23 */ stmt(BPF_RET | BPF_K, 0),
    ]
}

// ---- the socket ----

/// socket(AF_PACKET, SOCK_RAW, 0), filter, buffer, timeout, then bind to
/// ETH_P_ALL on all interfaces (ifindex 0). A packet socket with protocol 0
/// receives nothing until it is bound, so the filter is in place first.
fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) with constant arguments; the result is checked
    // before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a descriptor we just opened and own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let prog: Vec<libc::sock_filter> =
        filter().iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: fd is open; fprog points at `prog`, which outlives the call
    // (the kernel copies the program); the option length is the struct's.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }

    let _ = super::sockopt::set_rcvbuf_force(fd.as_raw_fd(), RCVBUF);

    let tv = libc::timeval { tv_sec: 0, tv_usec: RECV_TIMEOUT.as_micros() as libc::suseconds_t };
    // SAFETY: fd is open; the value points at a live timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }

    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = 0;
    // SAFETY: fd is open; the address points at a live sockaddr_ll of the
    // size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One recvfrom(2): (bytes copied, ifindex, pkttype).
fn recv_frame(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u32, u8)> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: fd is open for the duration of the call; buf is a live,
    // writable buffer of the length given; the address buffer is a live
    // sockaddr_ll and `len` holds its size, which the kernel does not
    // exceed.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
            &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(((n as usize).min(buf.len()), sll.sll_ifindex as u32, sll.sll_pkttype))
}

/// PACKET_STATISTICS: frames dropped since the last call (reading resets).
fn packet_drops(fd: RawFd) -> io::Result<u32> {
    let mut st = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: fd is open; the value points at a live tpacket_stats and
    // `len` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.tp_drops)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = DST_MAC.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0xa0, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(&[2, 4, 5, 0xb4]); // MSS option, as a real SYN has
        t.resize(40, 1);
        t
    }

    fn v4(options: usize, proto: u8, frag: u16, t: &[u8]) -> Vec<u8> {
        let ihl = 20 + options;
        let mut f = eth(ETH_P_IP);
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((ihl + t.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&[10, 200, 1, 1, 10, 99, 0, 1]);
        f.extend(std::iter::repeat_n(1u8, options)); // NOPs
        f.extend_from_slice(t);
        f
    }

    fn v6(next: u8, t: &[u8]) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV6);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(t.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&"fd00:fe::1".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&"fd00:ecec:f::1".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(t);
        f
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_v4_syn_with_and_without_options() {
        let f = v4(0, 6, 0x4000, &tcp(40000, 7, TCP_SYN));
        assert_eq!(parse_frame(&f), Some((sa("10.200.1.1:40000"), sa("10.99.0.1:7"))));
        let f = v4(8, 6, 0, &tcp(40001, 7, TCP_SYN | 0x40 | 0x80)); // ECE|CWR too
        assert_eq!(parse_frame(&f), Some((sa("10.200.1.1:40001"), sa("10.99.0.1:7"))));
        // With data (TCP Fast Open) and cut at the snap length: still parses.
        let mut t = tcp(40002, 7, TCP_SYN);
        t.extend_from_slice(&[0xee; 100]);
        let f = v4(40, 6, 0, &t);
        assert_eq!(parse_frame(&f[..SNAP_LEN as usize]), Some((sa("10.200.1.1:40002"), sa("10.99.0.1:7"))));
    }

    #[test]
    fn parses_v6_syn() {
        let f = v6(6, &tcp(51000, 443, TCP_SYN));
        assert_eq!(parse_frame(&f), Some((sa("[fd00:fe::1]:51000"), sa("[fd00:ecec:f::1]:443"))));
        let mut t = tcp(51000, 443, TCP_SYN);
        t.extend_from_slice(&[0xee; 100]);
        assert!(parse_frame(&v6(6, &t)[..SNAP_LEN as usize]).is_some());
    }

    #[test]
    fn rejects_syn_ack_ack_and_others() {
        assert_eq!(parse_frame(&v4(0, 6, 0, &tcp(1, 2, TCP_SYN | TCP_ACK))), None);
        assert_eq!(parse_frame(&v6(6, &tcp(1, 2, TCP_SYN | TCP_ACK))), None);
        assert_eq!(parse_frame(&v6(6, &tcp(1, 2, TCP_ACK))), None);
        assert_eq!(parse_frame(&v4(0, 17, 0, &tcp(1, 2, TCP_SYN))), None, "UDP");
        assert_eq!(parse_frame(&v6(17, &tcp(1, 2, TCP_SYN))), None, "UDP");
        assert_eq!(parse_frame(&v6(0, &tcp(1, 2, TCP_SYN))), None, "hop-by-hop ext header");
        assert_eq!(parse_frame(&v4(0, 6, 0x0010, &tcp(1, 2, TCP_SYN))), None, "non-first fragment");
        let mut tagged = eth(0x8100);
        tagged.extend_from_slice(&v6(6, &tcp(1, 2, TCP_SYN))[12..]);
        assert_eq!(parse_frame(&tagged), None, "802.1Q tag");
        let mut arp = eth(0x0806);
        arp.resize(60, 0);
        assert_eq!(parse_frame(&arp), None);
        let mut bad_ihl = v4(0, 6, 0, &tcp(1, 2, TCP_SYN));
        bad_ihl[14] = 0x44;
        assert_eq!(parse_frame(&bad_ihl), None, "IHL below 5");
        let mut bad_ver = v6(6, &tcp(1, 2, TCP_SYN));
        bad_ver[14] = 0x40;
        assert_eq!(parse_frame(&bad_ver), None);
    }

    #[test]
    fn truncated_frames_are_none_never_panic() {
        for f in [v4(0, 6, 0, &tcp(1, 2, TCP_SYN)), v4(40, 6, 0, &tcp(1, 2, TCP_SYN)), v6(6, &tcp(1, 2, TCP_SYN))] {
            let need = f.len() - 40 + 14; // through the TCP flags byte
            for cut in 0..f.len() {
                assert_eq!(parse_frame(&f[..cut]).is_some(), cut >= need, "cut {cut} of {}", f.len());
            }
        }
    }

    /// A classic BPF interpreter for the instructions the filter uses, with
    /// the three ancillary loads supplied by the caller. Returns the snap
    /// length the kernel would keep (0 = drop).
    fn run_filter(frame: &[u8], pkttype: u32, hatype: u32, vlan: u32) -> u32 {
        let prog = filter();
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |off: usize, size: usize| -> Option<u32> {
            let b = frame.get(off..off + size)?;
            Some(b.iter().fold(0u32, |acc, &v| (acc << 8) | u32::from(v)))
        };
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                c if c == BPF_LD | BPF_W | BPF_ABS && i.k >= SKF_AD_OFF => {
                    a = match i.k - SKF_AD_OFF {
                        SKF_AD_PKTTYPE => pkttype,
                        SKF_AD_HATYPE => hatype,
                        SKF_AD_VLAN_TAG_PRESENT => vlan,
                        other => panic!("ancillary {other}"),
                    }
                }
                c if c == BPF_LD | BPF_H | BPF_ABS => match load(i.k as usize, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_B | BPF_ABS => match load(i.k as usize, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_B | BPF_IND => match load(x as usize + i.k as usize, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LDX | BPF_B | BPF_MSH => match load(i.k as usize, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                c if c == BPF_ALU | BPF_AND | BPF_K => a &= i.k,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                c if c == BPF_JMP | BPF_JSET | BPF_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                c if c == BPF_RET | BPF_K => return i.k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn filter_agrees_with_parse_frame() {
        let out = PACKET_OUTGOING as u32;
        let frames = [
            v4(0, 6, 0, &tcp(1, 2, TCP_SYN)),
            v4(40, 6, 0, &tcp(1, 2, TCP_SYN)),
            v4(0, 6, 0x4000, &tcp(1, 2, TCP_SYN)),
            v4(0, 6, 0, &tcp(1, 2, TCP_SYN | TCP_ACK)),
            v4(0, 6, 0x2000 | 3, &tcp(1, 2, TCP_SYN)),
            v4(0, 17, 0, &tcp(1, 2, TCP_SYN)),
            v6(6, &tcp(1, 2, TCP_SYN)),
            v6(6, &tcp(1, 2, TCP_SYN | TCP_ACK)),
            v6(6, &tcp(1, 2, TCP_ACK | 0x08)),
            v6(0, &tcp(1, 2, TCP_SYN)),
            v6(58, &tcp(1, 2, TCP_SYN)),
        ];
        let mut accepted = 0;
        for f in &frames {
            let keep = run_filter(f, out, ARPHRD_ETHER, 0);
            assert_eq!(keep != 0, parse_frame(f).is_some(), "frame {f:02x?}");
            if keep != 0 {
                accepted += 1;
                assert_eq!(keep, SNAP_LEN);
                assert!(parse_frame(&f[..(keep as usize).min(f.len())]).is_some(), "snap keeps enough");
            }
            // Incoming, non-Ethernet and tagged frames never pass.
            for pkttype in [0, 1, 2, 3] {
                assert_eq!(run_filter(f, pkttype, ARPHRD_ETHER, 0), 0);
            }
            assert_eq!(run_filter(f, out, 772, 0), 0, "loopback");
            assert_eq!(run_filter(f, out, 65534, 0), 0, "ARPHRD_NONE (tunnels)");
            assert_eq!(run_filter(f, out, ARPHRD_ETHER, 1), 0, "out-of-band VLAN tag");
        }
        assert_eq!(accepted, 4);
        // Truncated frames are dropped, not misread.
        let f = v6(6, &tcp(1, 2, TCP_SYN));
        assert_eq!(run_filter(&f[..60], out, ARPHRD_ETHER, 0), 0);
    }

    #[test]
    fn jump_offsets_stay_in_the_program() {
        let prog = filter();
        for (pc, i) in prog.iter().enumerate() {
            if i.code & 0x07 == BPF_JMP {
                assert!(pc + 1 + usize::from(i.jt) < prog.len() && pc + 1 + usize::from(i.jf) < prog.len());
            }
        }
        assert_eq!(prog.last().unwrap(), &stmt(BPF_RET | BPF_K, 0));
    }
}

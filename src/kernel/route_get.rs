//! Batched `RTM_GETROUTE` with a TCP flow's real keys: which nexthop the
//! kernel will pick for an established flow the next time the flow's cached
//! route is invalidated (field notes, "Hazard 1: ECMP re-hash").
//!
//! Each request is an output lookup (no `RTA_IIF`) carrying `RTA_SRC` (/32 or
//! /128), `RTA_DST`, `RTA_IP_PROTO` = TCP, `RTA_SPORT`, `RTA_DPORT`, and
//! `RTA_MARK`/`RTA_OIF` when the socket has a mark or is bound to a device.
//! `RTM_F_FIB_MATCH` is *not* set: the answer then describes the route the
//! lookup produced, whose `RTA_GATEWAY` (or `RTA_VIA`) and `RTA_OIF` are the
//! multipath member the hash selected. Policy routing is the kernel's: no
//! table is named in the request, and the answer says which table matched.
//!
//! The lookup is read-only: it takes a route from the FIB (or a per-CPU
//! copy) and never bumps a FIB node's serial number, so it cannot invalidate
//! the cached routes of established sockets. The lab test
//! `integration/flowprobe.rs` checks that (many lookups for live flows, then
//! every flow still echoes).
//!
//! Requests are pipelined on one unsubscribed `NETLINK_ROUTE` socket: they
//! are written many to a `send`, each with its own sequence number, and the
//! answers (one datagram each) are matched back by sequence number. The
//! kernel handles a netlink request inside the sender's `sendmsg`, so every
//! answer is queued by the time `send` returns; when the receive buffer is
//! full the kernel drops answers and flags the socket (`ENOBUFS`). Such
//! requests are sent again with a smaller window, so an overrun costs time,
//! not answers.
//!
//! # Where a lookup cannot mirror the socket's own
//! - **IPv6 sockets bound to a device** (`SO_BINDTODEVICE`): the socket's
//!   lookups are *strict* about the device (`RT6_LOOKUP_F_IFACE`, because
//!   it has `sk_bound_dev_if`), while a netlink lookup with `RTA_OIF` and a
//!   source address is not: the kernel treats the device as a preference and
//!   the hash may still pick a member on another device. When that happens
//!   the key is asked again without `RTA_SRC`, which makes the kernel's
//!   lookup strict; if that answer is on the bound device it replaces the
//!   first. This is exact when the bound device carries one member of the
//!   multipath route (the lab checks it); with several members on the bound
//!   device the follow-up is hashed with source `::` and may name a
//!   different one of them. A socket bound to a VRF device is not strict in
//!   the kernel either; its follow-up answer lands on a VRF slave, not on the
//!   VRF, and is ignored (untested here: this kernel has no `vrf`).
//! - **The socket's uid** (uid-range fib rules): the kernel uses the
//!   daemon's uid for a netlink lookup unless `RTA_UID` says otherwise; the
//!   key carries none.
//! - **An explicit IPv6 flow label** (`IPV6_FLOWINFO_SEND`, flow label
//!   manager): sockets route with it, and hash policies 0 and 3 (with the
//!   flow-label field) hash it; there is no attribute to pass it, so keys
//!   are looked up with label 0, which is what sockets without one use
//!   (automatic flow labels are made per packet, after routing).
//! - **The IPv4 TOS** of a socket (`IP_TOS`, tos routes and rules): not in
//!   the key, looked up as 0.
//! - IPv4-mapped IPv6 flows (`::ffff:a.b.c.d`, from an AF_INET6 socket
//!   talking to IPv4) are looked up as IPv4, as the kernel routes them.

use std::fmt;
use std::io;
use std::net::IpAddr;

use netlink_sys::Socket;

use super::decode::{self, DecodeError};
use super::nl;

/// The keys of one TCP flow, as the local socket sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Local address (the socket's source).
    pub src: IpAddr,
    /// Remote address.
    pub dst: IpAddr,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// The socket's `SO_MARK`, when set.
    pub mark: Option<u32>,
    /// The device the socket is bound to (`SO_BINDTODEVICE`), when bound.
    pub oif: Option<u32>,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, d) = (std::net::SocketAddr::new(self.src, self.sport), std::net::SocketAddr::new(self.dst, self.dport));
        write!(f, "tcp {s} -> {d}")?;
        if let Some(m) = self.mark {
            write!(f, " mark {m:#x}")?;
        }
        if let Some(o) = self.oif {
            write!(f, " oif {o}")?;
        }
        Ok(())
    }
}

/// The nexthop the kernel selected for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Selected {
    /// The gateway, or `None` for a directly connected or local destination.
    /// An IPv4 route may have an IPv6 gateway (`RTA_VIA`).
    pub gateway: Option<IpAddr>,
    /// The outgoing interface.
    pub oif: u32,
    /// The table the route came from (`RTA_TABLE`, else `rtm_table`).
    pub table: u32,
}

/// Why one key has no answer. Every variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel answered with an error, e.g. `ENETUNREACH` when no route
    /// matches, `EHOSTUNREACH`/`EACCES`/`EINVAL` for unreachable, prohibit
    /// and blackhole routes.
    #[error("route lookup for {key} failed: {source}")]
    Kernel {
        /// The flow.
        key: FlowKey,
        /// The errno the kernel returned.
        source: io::Error,
    },
    /// The answer could not be decoded or lacks what every answer has.
    #[error("malformed route answer for {key}: {reason}")]
    Malformed {
        /// The flow.
        key: FlowKey,
        /// What was wrong.
        reason: String,
    },
    /// The key cannot be asked (e.g. mixed address families).
    #[error("cannot look up {key}: {reason}")]
    InvalidKey {
        /// The flow.
        key: FlowKey,
        /// Why.
        reason: &'static str,
    },
    /// The kernel dropped every attempt's answer (receive buffer overruns).
    #[error("no answer from the kernel for {key} after {attempts} attempts")]
    NoAnswer {
        /// The flow.
        key: FlowKey,
        /// How many times it was sent.
        attempts: u32,
    },
    /// The socket failed while this key was outstanding.
    #[error("netlink socket failed while looking up {key}: {source}")]
    Socket {
        /// The flow.
        key: FlowKey,
        /// The socket error.
        source: io::Error,
    },
}

/// Requests in flight by default. Each answer is one datagram of about
/// 200 bytes (some 1 KiB of receive buffer accounting), so the default
/// window fits the default receive buffer many times over.
pub const DEFAULT_WINDOW: usize = 256;
/// Receive buffer asked for by default.
pub const DEFAULT_RCVBUF: usize = 4 << 20;
/// Lost answers per key, once the window is at its floor, before the key is
/// reported as [`ProbeError::NoAnswer`].
const MAX_ATTEMPTS: u32 = 5;
/// The window never shrinks below this after overruns.
const MIN_WINDOW: usize = 8;
/// Requests written per `send` at most.
const PER_SEND: usize = 64;

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const RTMSG_LEN: usize = 12;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RTA_MARK: u16 = 16;
const RTA_VIA: u16 = 18;
const RTA_IP_PROTO: u16 = 27;
const RTA_SPORT: u16 = 28;
const RTA_DPORT: u16 = 29;

/// Asks the kernel which nexthop flows select. One `NETLINK_ROUTE` socket,
/// joined to no multicast group; not shared, so `&mut self`.
pub struct RouteProber {
    sock: Socket,
    seq: u32,
    window: usize,
    max_window: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    overruns: u64,
}

/// One request: which key, and whether to leave out `RTA_SRC` (the strict
/// follow-up for device-bound IPv6 sockets).
#[derive(Clone, Copy)]
struct Req {
    key: usize,
    no_src: bool,
}

/// State of one request during an exchange.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Unsent,
    InFlight,
    Done,
}

impl RouteProber {
    /// Opens the socket with [`DEFAULT_WINDOW`] and [`DEFAULT_RCVBUF`].
    pub fn new() -> io::Result<Self> {
        Self::with_limits(DEFAULT_WINDOW, DEFAULT_RCVBUF)
    }

    /// Opens the socket with at most `window` requests in flight and a
    /// receive buffer of `rcvbuf` bytes (forced past `rmem_max` when the
    /// process has CAP_NET_ADMIN). Strict request checking is turned on, so
    /// the kernel rejects a request it would otherwise half-understand.
    pub fn with_limits(window: usize, rcvbuf: usize) -> io::Result<Self> {
        let (sock, _) = nl::open_route_socket(&[], rcvbuf)?;
        sock.set_netlink_get_strict_chk(true)?;
        // Errors need not echo the request back.
        let _ = sock.set_cap_ack(true);
        Ok(RouteProber {
            sock,
            seq: 1,
            window: window.max(1),
            max_window: window.max(1),
            rx: Vec::with_capacity(64 << 10),
            tx: Vec::with_capacity(PER_SEND * 128),
            overruns: 0,
        })
    }

    /// Receive-buffer overruns seen so far (each one cost a resend of the
    /// answers the kernel dropped).
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// One answer per key, in order. Requests are pipelined (up to the
    /// window in flight on the one socket, matched by sequence number).
    pub fn select_many(&mut self, keys: &[FlowKey]) -> Vec<Result<Selected, ProbeError>> {
        let mut out: Vec<Option<Result<Selected, ProbeError>>> = (0..keys.len()).map(|_| None).collect();
        let mut reqs = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            match family(k) {
                Some(_) => reqs.push(Req { key: i, no_src: false }),
                None => {
                    out[i] = Some(Err(ProbeError::InvalidKey {
                        key: *k,
                        reason: "source and destination differ in address family",
                    }))
                }
            }
        }
        self.exchange(keys, &reqs, &mut out);

        // Device-bound IPv6 sockets look up strictly; see the module docs.
        let follow: Vec<Req> = reqs
            .iter()
            .filter(|r| {
                let k = &keys[r.key];
                matches!((family(k), k.oif, &out[r.key]), (Some(AF_INET6), Some(oif), Some(Ok(s))) if s.oif != oif)
            })
            .map(|r| Req { key: r.key, no_src: true })
            .collect();
        if !follow.is_empty() {
            let mut second: Vec<Option<Result<Selected, ProbeError>>> = (0..keys.len()).map(|_| None).collect();
            self.exchange(keys, &follow, &mut second);
            for r in &follow {
                if let Some(Ok(s)) = second[r.key].take() {
                    if Some(s.oif) == keys[r.key].oif {
                        out[r.key] = Some(Ok(s));
                    }
                }
            }
        }

        out.into_iter()
            .zip(keys)
            .map(|(r, k)| r.unwrap_or(Err(ProbeError::NoAnswer { key: *k, attempts: 0 })))
            .collect()
    }

    /// Sends `reqs` pipelined and stores each answer in `out[req.key]`.
    fn exchange(&mut self, keys: &[FlowKey], reqs: &[Req], out: &mut [Option<Result<Selected, ProbeError>>]) {
        if reqs.is_empty() {
            return;
        }
        let base = self.seq;
        self.seq = self.seq.wrapping_add(reqs.len() as u32);
        let mut slot = vec![Slot::Unsent; reqs.len()];
        // Answers lost that counted against the key (see [`Requeue`]).
        let mut lost = vec![0u32; reqs.len()];
        let mut next_unsent = 0usize; // lowest index that may be Unsent
        let mut in_flight = 0usize;
        let mut done = 0usize;
        let mut idle_rounds = 0u32;

        while done < reqs.len() {
            // Send while the window allows.
            let mut sent_any = false;
            while in_flight < self.window {
                self.tx.clear();
                let mut batch = 0;
                while batch < PER_SEND && in_flight < self.window && next_unsent < reqs.len() {
                    let i = next_unsent;
                    next_unsent += 1;
                    if slot[i] != Slot::Unsent {
                        continue;
                    }
                    encode_request(&mut self.tx, &keys[reqs[i].key], reqs[i].no_src, base.wrapping_add(i as u32));
                    slot[i] = Slot::InFlight;
                    in_flight += 1;
                    batch += 1;
                }
                if batch == 0 {
                    break;
                }
                if let Err(e) = nl::send(&self.sock, &self.tx) {
                    self.fail_all(keys, reqs, &slot, out, &e);
                    return;
                }
                sent_any = true;
            }
            if done == reqs.len() {
                break;
            }

            // Drain whatever is queued, without blocking.
            let mut answered = 0usize;
            let mut overrun = false;
            loop {
                self.rx.clear();
                match self.sock.recv(&mut self.rx, libc::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if nl::is_overrun(&e) => {
                        overrun = true;
                        continue;
                    }
                    Err(e) => {
                        self.fail_all(keys, reqs, &slot, out, &e);
                        return;
                    }
                }
                for msg in decode::split_messages(&self.rx) {
                    let Ok((hdr, payload)) = msg else { break };
                    let i = hdr.seq.wrapping_sub(base) as usize;
                    if i >= reqs.len() || slot[i] != Slot::InFlight {
                        continue; // stale, duplicate or foreign
                    }
                    let key = keys[reqs[i].key];
                    let answer = match hdr.msg_type {
                        nl::NLMSG_ERROR => match nl::error_code(payload) {
                            Some(0) => continue, // an ACK: not an answer
                            Some(e) if -e == libc::EAGAIN || -e == libc::ENOBUFS => {
                                // The kernel could not queue the answer.
                                overrun = true;
                                continue;
                            }
                            Some(e) => Err(ProbeError::Kernel { key, source: io::Error::from_raw_os_error(-e) }),
                            None => Err(ProbeError::Malformed { key, reason: "truncated NLMSG_ERROR".into() }),
                        },
                        RTM_NEWROUTE => parse_answer(payload, family(&key).unwrap_or(0))
                            .map_err(|reason| ProbeError::Malformed { key, reason }),
                        nl::NLMSG_NOOP | nl::NLMSG_DONE => continue,
                        t => Err(ProbeError::Malformed { key, reason: format!("unexpected message type {t}") }),
                    };
                    out[reqs[i].key] = Some(answer);
                    slot[i] = Slot::Done;
                    in_flight -= 1;
                    done += 1;
                    answered += 1;
                }
            }

            let mut rq = Requeue { keys, reqs, out: &mut *out, slot: &mut slot, lost: &mut lost, charge: false };
            if overrun {
                // Answers were dropped. Everything still in flight has either
                // been answered by now (it was queued before the drain) or
                // lost: send those again, with a window that fits what the
                // buffer held this round. Losses count against a key only
                // once the window is at its floor.
                self.overruns += 1;
                rq.charge = self.window <= MIN_WINDOW;
                self.window = (answered / 2).clamp(MIN_WINDOW, (self.window / 2).max(MIN_WINDOW));
                let (n, failed, first) = rq.run();
                in_flight -= n;
                done += failed;
                next_unsent = next_unsent.min(first);
                idle_rounds = 0;
            } else if answered == 0 && !sent_any && in_flight > 0 {
                // Nothing moved. The kernel answers inside send(), so this
                // should not happen; wait a little, then resend.
                idle_rounds += 1;
                if idle_rounds <= 4 {
                    std::thread::sleep(std::time::Duration::from_micros(100 << (2 * idle_rounds)));
                } else {
                    rq.charge = true;
                    let (n, failed, first) = rq.run();
                    in_flight -= n;
                    done += failed;
                    next_unsent = next_unsent.min(first);
                    idle_rounds = 0;
                }
            } else {
                idle_rounds = 0;
                // A clean round: let the window grow back towards its limit.
                self.window = (self.window + self.window / 8 + 1).min(self.max_window);
            }
        }
    }

    fn fail_all(
        &self,
        keys: &[FlowKey],
        reqs: &[Req],
        slot: &[Slot],
        out: &mut [Option<Result<Selected, ProbeError>>],
        e: &io::Error,
    ) {
        for (i, r) in reqs.iter().enumerate() {
            if slot[i] != Slot::Done {
                let source = io::Error::new(e.kind(), e.to_string());
                out[r.key] = Some(Err(ProbeError::Socket { key: keys[r.key], source }));
            }
        }
    }
}

/// Puts requests whose answers were lost back to be sent again.
struct Requeue<'a> {
    keys: &'a [FlowKey],
    reqs: &'a [Req],
    out: &'a mut [Option<Result<Selected, ProbeError>>],
    slot: &'a mut [Slot],
    lost: &'a mut [u32],
    /// Whether this loss counts towards [`MAX_ATTEMPTS`].
    charge: bool,
}

impl Requeue<'_> {
    /// Returns (requests taken out of flight, keys given up as NoAnswer,
    /// lowest index put back).
    fn run(self) -> (usize, usize, usize) {
        let (mut n, mut failed, mut first) = (0, 0, usize::MAX);
        for (i, s) in self.slot.iter_mut().enumerate() {
            if *s != Slot::InFlight {
                continue;
            }
            n += 1;
            *s = Slot::Unsent;
            first = first.min(i);
            if self.charge {
                self.lost[i] += 1;
                if self.lost[i] >= MAX_ATTEMPTS {
                    *s = Slot::Done;
                    failed += 1;
                    let key = self.keys[self.reqs[i].key];
                    self.out[self.reqs[i].key] = Some(Err(ProbeError::NoAnswer { key, attempts: self.lost[i] }));
                }
            }
        }
        (n, failed, first)
    }
}

/// The address family a key is looked up in: IPv4 for IPv4 and
/// IPv4-mapped IPv6 pairs, IPv6 for IPv6 pairs, `None` for a mix.
fn family(k: &FlowKey) -> Option<u8> {
    match (k.src.to_canonical(), k.dst.to_canonical()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(AF_INET),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(AF_INET6),
        _ => None,
    }
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(decode::align4(buf.len()), 0);
}

fn addr_bytes(a: IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match a.to_canonical() {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// Appends one RTM_GETROUTE request for `k` to `buf`. The caller has
/// checked that the key has one family.
fn encode_request(buf: &mut Vec<u8>, k: &FlowKey, no_src: bool, seq: u32) {
    let start = buf.len();
    let fam = family(k).unwrap_or(AF_INET6);
    let bits: u8 = if fam == AF_INET { 32 } else { 128 };
    // nlmsghdr; the length is patched in below.
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags (no RTM_F_FIB_MATCH).
    buf.extend_from_slice(&[fam, bits, if no_src { 0 } else { bits }, 0, 0, 0, 0, 0]);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    let (dst, n) = addr_bytes(k.dst);
    push_attr(buf, RTA_DST, &dst[..n]);
    if !no_src {
        let (src, n) = addr_bytes(k.src);
        push_attr(buf, RTA_SRC, &src[..n]);
    }
    push_attr(buf, RTA_IP_PROTO, &[IPPROTO_TCP]);
    // Ports are network byte order (nla_get_be16).
    push_attr(buf, RTA_SPORT, &k.sport.to_be_bytes());
    push_attr(buf, RTA_DPORT, &k.dport.to_be_bytes());
    if let Some(m) = k.mark {
        push_attr(buf, RTA_MARK, &m.to_ne_bytes());
    }
    if let Some(o) = k.oif {
        push_attr(buf, RTA_OIF, &o.to_ne_bytes());
    }
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Decodes an RTM_NEWROUTE answer (payload after the nlmsghdr).
fn parse_answer(payload: &[u8], want_family: u8) -> Result<Selected, String> {
    decode::check_header(payload, RTMSG_LEN, "struct rtmsg").map_err(|e| e.to_string())?;
    let fam = payload[0];
    if fam != want_family {
        return Err(format!("answer has address family {fam}, asked {want_family}"));
    }
    let mut table = u32::from(payload[4]);
    let mut oif = None;
    let mut gateway = None;
    for a in decode::attrs_at(&payload[RTMSG_LEN..], RTMSG_LEN, "route attribute") {
        let a = a.map_err(|e| e.to_string())?;
        match a.kind {
            RTA_TABLE => table = decode::attr_u32(&a, "RTA_TABLE").map_err(|e| e.to_string())?,
            RTA_OIF => oif = Some(decode::attr_u32(&a, "RTA_OIF").map_err(|e| e.to_string())?),
            RTA_GATEWAY => gateway = Some(ip_from(a.payload, "RTA_GATEWAY", a.offset)?),
            RTA_VIA => {
                // struct rtvia { __kernel_sa_family_t rtvia_family (u16); addr }
                if a.payload.len() < 2 {
                    return Err(DecodeError::PayloadSize {
                        what: "RTA_VIA",
                        offset: a.offset,
                        got: a.payload.len(),
                        expected: "2 + 4 or 16",
                    }
                    .to_string());
                }
                gateway = Some(ip_from(&a.payload[2..], "RTA_VIA", a.offset + 2)?);
            }
            _ => {}
        }
    }
    let oif = oif.ok_or_else(|| DecodeError::MissingAttribute { what: "RTA_OIF" }.to_string())?;
    Ok(Selected { gateway, oif, table })
}

fn ip_from(b: &[u8], what: &'static str, offset: usize) -> Result<IpAddr, String> {
    match b.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default())),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default())),
        got => Err(DecodeError::PayloadSize { what, offset, got, expected: "4 or 16" }.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::testutil::nla;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key6(sport: u16) -> FlowKey {
        FlowKey {
            src: "fd00:fe::1".parse().unwrap(),
            dst: "fd00:ecec:f::1".parse().unwrap(),
            sport,
            dport: 7,
            mark: None,
            oif: None,
        }
    }

    #[test]
    fn request_layout_v6() {
        let mut buf = Vec::new();
        let k = FlowKey { mark: Some(0x77), oif: Some(5), ..key6(0x1234) };
        encode_request(&mut buf, &k, false, 42);
        let msgs: Vec<_> = decode::split_messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let (h, p) = msgs[0];
        assert_eq!((h.len as usize, h.msg_type, h.flags, h.seq), (buf.len(), RTM_GETROUTE, NLM_F_REQUEST, 42));
        assert_eq!(&p[..8], &[AF_INET6, 128, 128, 0, 0, 0, 0, 0]);
        assert_eq!(&p[8..12], &[0; 4], "no RTM_F_FIB_MATCH");
        let attrs: Vec<_> = decode::attrs(&p[RTMSG_LEN..]).collect::<Result<_, _>>().unwrap();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.0).collect();
        assert_eq!(kinds, [RTA_DST, RTA_SRC, RTA_IP_PROTO, RTA_SPORT, RTA_DPORT, RTA_MARK, RTA_OIF]);
        assert_eq!(attrs[0].1, "fd00:ecec:f::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(attrs[2].1, [6]);
        assert_eq!(attrs[3].1, [0x12, 0x34], "ports are big-endian");
        assert_eq!(attrs[5].1, 0x77u32.to_ne_bytes());
        assert_eq!(attrs[6].1, 5u32.to_ne_bytes());
    }

    #[test]
    fn request_layout_v4_mapped_and_strict_followup() {
        let mut buf = Vec::new();
        let k =
            FlowKey { src: "::ffff:10.0.0.1".parse().unwrap(), dst: "::ffff:10.0.0.2".parse().unwrap(), ..key6(80) };
        encode_request(&mut buf, &k, true, 1);
        let (_, p) = decode::split_messages(&buf).next().unwrap().unwrap();
        assert_eq!(&p[..3], &[AF_INET, 32, 0]);
        let attrs: Vec<_> = decode::attrs(&p[RTMSG_LEN..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs[0], (RTA_DST, &[10, 0, 0, 2][..]));
        assert!(attrs.iter().all(|a| a.0 != RTA_SRC));
    }

    fn answer(family: u8, table: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![family, 128, 128, 0, table, 0, 0, 1, 0, 0, 0, 0];
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    #[test]
    fn parses_gateway_oif_table() {
        let gw: Ipv6Addr = "fd00:f2::2".parse().unwrap();
        let p = answer(
            AF_INET6,
            254,
            &[
                nla(RTA_TABLE, &1000u32.to_ne_bytes()),
                nla(RTA_GATEWAY, &gw.octets()),
                nla(RTA_OIF, &7u32.to_ne_bytes()),
            ],
        );
        assert_eq!(parse_answer(&p, AF_INET6), Ok(Selected { gateway: Some(gw.into()), oif: 7, table: 1000 }));
        // No RTA_TABLE: rtm_table; no gateway: connected.
        let p = answer(AF_INET6, 254, &[nla(RTA_OIF, &3u32.to_ne_bytes())]);
        assert_eq!(parse_answer(&p, AF_INET6), Ok(Selected { gateway: None, oif: 3, table: 254 }));
    }

    #[test]
    fn parses_rta_via_v6_gateway_for_v4_route() {
        let gw: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut via = 10u16.to_ne_bytes().to_vec();
        via.extend_from_slice(&gw.octets());
        let p = answer(AF_INET, 254, &[nla(RTA_VIA, &via), nla(RTA_OIF, &4u32.to_ne_bytes())]);
        assert_eq!(parse_answer(&p, AF_INET), Ok(Selected { gateway: Some(gw.into()), oif: 4, table: 254 }));
        let p = answer(AF_INET, 254, &[nla(RTA_GATEWAY, &[10, 0, 0, 1]), nla(RTA_OIF, &4u32.to_ne_bytes())]);
        assert_eq!(parse_answer(&p, AF_INET).unwrap().gateway, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(parse_answer(&[10, 0, 0], AF_INET6).unwrap_err().contains("struct rtmsg"));
        let p = answer(AF_INET6, 254, &[nla(RTA_GATEWAY, &[1, 2, 3])]);
        assert!(parse_answer(&p, AF_INET6).unwrap_err().contains("RTA_GATEWAY"));
        let p = answer(AF_INET6, 254, &[]);
        assert!(parse_answer(&p, AF_INET6).unwrap_err().contains("RTA_OIF"));
        let p = answer(AF_INET, 254, &[nla(RTA_OIF, &1u32.to_ne_bytes())]);
        assert!(parse_answer(&p, AF_INET6).unwrap_err().contains("family"));
        let mut p = answer(AF_INET6, 254, &[nla(RTA_OIF, &1u32.to_ne_bytes())]);
        p.extend_from_slice(&[40, 0, 1, 0]);
        assert!(parse_answer(&p, AF_INET6).is_err());
        for cut in 0..p.len() {
            let _ = parse_answer(&p[..cut], AF_INET6);
        }
    }

    #[test]
    fn mixed_family_key_is_rejected_without_a_socket_round_trip() {
        let k = FlowKey { src: "10.0.0.1".parse().unwrap(), ..key6(1) };
        assert_eq!(family(&k), None);
        let e = ProbeError::InvalidKey { key: k, reason: "x" };
        assert!(e.to_string().contains("tcp 10.0.0.1:1 -> [fd00:ecec:f::1]:7"), "{e}");
    }
}

//! Raw rtnetlink sockets: open, subscribe, size the receive buffer, and send
//! dump requests. Messages are split with [`super::decode::split_messages`].

use std::io;
use std::os::fd::AsRawFd;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// rtnetlink multicast groups the monitor joins (numbers from
/// `enum rtnetlink_groups`): link 1, ipv4 ifaddr 5, ipv4 route 7, ipv4 rule 8,
/// ipv6 ifaddr 9, ipv6 route 11, ipv6 rule 19, ipv4 netconf 24,
/// ipv6 netconf 25, nexthop 32, ipv6 anycast 39.
pub const MONITOR_GROUPS: [u32; 11] = [1, 5, 7, 8, 9, 11, 19, 24, 25, 32, 39];

/// NLMSG_NOOP.
pub const NLMSG_NOOP: u16 = 1;
/// NLMSG_ERROR.
pub const NLMSG_ERROR: u16 = 2;
/// NLMSG_DONE.
pub const NLMSG_DONE: u16 = 3;
/// NLMSG_OVERRUN.
pub const NLMSG_OVERRUN: u16 = 4;
/// NLM_F_REQUEST | NLM_F_DUMP.
const DUMP_FLAGS: u16 = 0x1 | 0x300;
/// NLM_F_DUMP_INTR: the dump was interrupted by a concurrent change and may
/// be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;

/// Groups a kernel may not have: joining them fails with EINVAL there, and
/// the model then learns that kind from dumps and the objects' other
/// traces (anycast also shows up as `anycast` routes in the local table).
/// RTNLGRP_NEXTHOP arrived in 5.3, RTNLGRP_IPV6_ACADDR notifications in 6.14.
pub const OPTIONAL_GROUPS: [u32; 2] = [32, 39];

/// Opens an rtnetlink socket, sets its receive buffer and joins `groups`.
/// Returns the socket and the optional groups the kernel refused.
///
/// The buffer is set with SO_RCVBUFFORCE (the daemon runs with
/// CAP_NET_ADMIN) so it may exceed `net.core.rmem_max`; without the
/// capability it falls back to SO_RCVBUF, which the kernel caps.
pub fn open_route_socket(groups: &[u32], rcvbuf: usize) -> io::Result<(Socket, Vec<u32>)> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind(&SocketAddr::new(0, 0))?;
    set_rcvbuf(&sock, rcvbuf)?;
    let mut refused = Vec::new();
    for &g in groups {
        match sock.add_membership(g) {
            Ok(()) => {}
            Err(e) if OPTIONAL_GROUPS.contains(&g) && e.raw_os_error() == Some(libc::EINVAL) => refused.push(g),
            Err(e) => return Err(io::Error::new(e.kind(), format!("joining rtnetlink group {g}: {e}"))),
        }
    }
    Ok((sock, refused))
}

/// Sets the receive buffer, forcing past rmem_max when permitted.
pub fn set_rcvbuf(sock: &Socket, bytes: usize) -> io::Result<()> {
    if super::sockopt::set_rcvbuf_force(sock.as_raw_fd(), bytes).is_err() {
        sock.set_rx_buf_sz(bytes)?;
    }
    Ok(())
}

/// Builds one dump request: header plus a zeroed family header of `hdr_len`
/// bytes whose first byte is `family`.
pub fn dump_request(msg_type: u16, family: u8, hdr_len: usize, seq: u32) -> Vec<u8> {
    let payload = (hdr_len + 3) & !3;
    let len = 16 + payload;
    let mut b = vec![0u8; len];
    b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&msg_type.to_ne_bytes());
    b[6..8].copy_from_slice(&DUMP_FLAGS.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    b[16] = family;
    b
}

/// Sends a request to the kernel.
pub fn send(sock: &Socket, buf: &[u8]) -> io::Result<()> {
    let kernel = SocketAddr::new(0, 0);
    let n = sock.send_to(buf, &kernel, 0)?;
    if n != buf.len() {
        return Err(io::Error::other(format!("short netlink send: {n} of {} bytes", buf.len())));
    }
    Ok(())
}

/// Receives one datagram into `buf` (which must be large enough for a
/// netlink datagram; 1 MiB is plenty), returning its length. ENOBUFS comes
/// back as an error of kind `io::ErrorKind::Other` with raw os error ENOBUFS;
/// see [`is_overrun`].
pub fn recv(sock: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    sock.recv(buf, 0)
}

/// True when a receive error means the socket's buffer overflowed and
/// notifications were lost.
pub fn is_overrun(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOBUFS)
}

/// Decodes the errno of an NLMSG_ERROR payload (0 means ACK).
pub fn error_code(payload: &[u8]) -> Option<i32> {
    payload.get(0..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_request_layout() {
        let b = dump_request(26, 10, 12, 7);
        assert_eq!(b.len(), 28);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 26);
        assert_eq!(u16::from_ne_bytes(b[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        assert_eq!(b[16], 10);
        // A one-byte family header (netconfmsg) is padded to four.
        assert_eq!(dump_request(82, 10, 1, 1).len(), 20);
    }
}

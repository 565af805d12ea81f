//! Established TCP sockets through sock_diag (NETLINK_SOCK_DIAG), IPv4 and
//! IPv6. Polled: the kernel has no notification for socket state changes.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

use crate::model::TcpSocket;

/// TCP_LISTEN in `enum tcp_state`.
const TCP_LISTEN: u8 = 10;

/// One poll: established sockets and the local ports that have a listener
/// (sockets on those ports were accepted, not originated here).
#[derive(Debug, Default)]
pub struct TcpPoll {
    /// Established sockets.
    pub established: Vec<TcpSocket>,
    /// Local ports of listening sockets.
    pub listening: BTreeSet<u16>,
}

/// Lists every established and listening TCP socket of the namespace.
pub fn poll_tcp() -> io::Result<TcpPoll> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&NlAddr::new(0, 0))?;
    let mut out = TcpPoll::default();
    for (family, id) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
        dump_family(&sock, family, id, &mut out)?;
    }
    Ok(out)
}

fn dump_family(sock: &Socket, family: u8, id: SocketId, out: &mut TcpPoll) -> io::Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::ESTABLISHED | StateFlags::LISTEN,
            socket_id: id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut rx = Vec::with_capacity(1 << 16);
    loop {
        rx.clear();
        let n = sock.recv(&mut rx, 0)?;
        let mut offset = 0;
        while offset < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {e}")))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "sock_diag: zero-length message"));
            }
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("sock_diag dump failed: {e:?}")));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    if r.header.state == TCP_LISTEN {
                        out.listening.insert(id.source_port);
                        offset += (len + 3) & !3;
                        continue;
                    }
                    let mark = r.nlas.iter().find_map(|n| match n {
                        Nla::Mark(m) => Some(*m),
                        _ => None,
                    });
                    out.established.push(TcpSocket {
                        local: SocketAddr::new(id.source_address, id.source_port),
                        remote: SocketAddr::new(id.destination_address, id.destination_port),
                        bound_ifindex: id.interface_id,
                        mark,
                        inode: r.header.inode,
                        uid: r.header.uid,
                    });
                }
                _ => {}
            }
            offset += (len + 3) & !3;
        }
    }
}

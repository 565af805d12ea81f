//! Decoder for IPv6 anycast address messages: `RTM_NEWANYCAST` (60),
//! `RTM_DELANYCAST` (61) and the replies to an `RTM_GETANYCAST` (62) dump.
//!
//! The kernel joins an interface to the Subnet-Router anycast address
//! (`prefix::`, RFC 4291 2.6.1) of each of its non-tentative addresses when
//! IPv6 forwarding is on for it, and leaves when forwarding goes off; an
//! application can also join with `IPV6_JOIN_ANYCAST`. That address then
//! answers locally, which matters when routing to the prefix.
//!
//! Two ways to learn about them, with a kernel-version caveat:
//! - Dump: `RTM_GETANYCAST` with an `ifaddrmsg` of family `AF_INET6` has
//!   been supported for a very long time. The replies carry
//!   `nlmsg_type == RTM_GETANYCAST` (62), not `RTM_NEWANYCAST`: the kernel
//!   fills them with the request's type. Callers must accept 62 here.
//! - Notifications: `RTM_NEWANYCAST` / `RTM_DELANYCAST` on multicast group
//!   `RTNLGRP_IPV6_ACADDR` (39) exist only since Linux 6.14 (commit
//!   "netlink: add IPv6 anycast join/leave notifications", net-next,
//!   January 2025, which also gave the numbers 60/61 their names). This
//!   6.18 kernel sends them (captured in testdata/). They are sent on the
//!   first join and the last leave of an address per interface, with
//!   `nlmsg_seq`/`nlmsg_pid` 0. On older kernels joining group 39 fails
//!   with `EINVAL`, so the daemon must fall back to periodic dumps there.
//!
//! Layout: `struct ifaddrmsg` (family, prefixlen, flags, scope: one byte
//! each; index: u32) then `IFA_ANYCAST` (5, the 16-byte address) and
//! `IFA_CACHEINFO` (6). The kernel always sends prefixlen 128 and flags
//! `IFA_F_PERMANENT`; the scope is `RT_SCOPE_SITE` (200) for site-local
//! addresses and `RT_SCOPE_UNIVERSE` (0) otherwise, *including* link-local
//! ones such as `fe80::`, so scope says little.

use std::net::Ipv6Addr;

use super::{attrs_at, check_header, fixed, read_u32, DecodeError};

/// `RTM_NEWANYCAST`: the interface joined an anycast address (6.14+).
pub const RTM_NEWANYCAST: u16 = 60;
/// `RTM_DELANYCAST`: the interface left an anycast address (6.14+).
pub const RTM_DELANYCAST: u16 = 61;
/// `RTM_GETANYCAST`: dump request type, and the type of its replies.
pub const RTM_GETANYCAST: u16 = 62;
/// `RTNLGRP_IPV6_ACADDR`: multicast group of anycast notifications (6.14+).
pub const RTNLGRP_IPV6_ACADDR: u32 = 39;

const IFADDRMSG_LEN: usize = 8;
const AF_INET6: u8 = 10;
const IFA_ANYCAST: u16 = 5;

/// One decoded anycast message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnycastMsg {
    /// `ifa_index`: the interface that joined or left the address.
    pub ifindex: u32,
    /// `IFA_ANYCAST`: the anycast address.
    pub address: Ipv6Addr,
    /// `ifa_scope`: `RT_SCOPE_*`, see the module docs for its limits.
    pub scope: u8,
}

/// Decodes the payload (after the `nlmsghdr`) of an `RTM_NEWANYCAST`,
/// `RTM_DELANYCAST` or `RTM_GETANYCAST` reply. Unknown attributes are
/// skipped; a family other than `AF_INET6` is an error because anycast
/// addresses exist only for IPv6.
pub fn parse_anycast(payload: &[u8]) -> Result<AnycastMsg, DecodeError> {
    check_header(payload, IFADDRMSG_LEN, "struct ifaddrmsg")?;
    if payload[0] != AF_INET6 {
        return Err(DecodeError::InvalidValue {
            what: "ifaddrmsg.ifa_family",
            offset: 0,
            detail: format!("{} is not AF_INET6", payload[0]),
        });
    }
    let mut address = None;
    for attr in attrs_at(&payload[IFADDRMSG_LEN..], IFADDRMSG_LEN, "anycast attribute") {
        let attr = attr?;
        if attr.kind == IFA_ANYCAST {
            address = Some(Ipv6Addr::from(fixed::<16>(&attr, "IFA_ANYCAST", "16")?));
        }
    }
    Ok(AnycastMsg {
        ifindex: read_u32(payload, 4),
        address: address.ok_or(DecodeError::MissingAttribute { what: "IFA_ANYCAST" })?,
        scope: payload[3],
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{nla, no_panic_on_truncation, single_payload};
    use super::*;

    // Captured on Linux 6.18 by integration/captures/capture.sh; see
    // testdata/README.md. rgA (ifindex 3) has fd00:ecec:1::1/64.
    const NEW_NOTIFY: &[u8] = include_bytes!("testdata/anycast_new_notify_subnet_router.bin");
    const DEL_NOTIFY: &[u8] = include_bytes!("testdata/anycast_del_notify_subnet_router.bin");
    const DUMP: &[u8] = include_bytes!("testdata/anycast_dump_subnet_router.bin");

    fn subnet_router() -> AnycastMsg {
        AnycastMsg { ifindex: 3, address: "fd00:ecec:1::".parse().unwrap(), scope: 0 }
    }

    #[test]
    fn notifications_on_forwarding_toggle() {
        // sysctl -w net.ipv6.conf.rgA.forwarding=1, then =0
        assert_eq!(parse_anycast(single_payload(NEW_NOTIFY, RTM_NEWANYCAST)).unwrap(), subnet_router());
        assert_eq!(parse_anycast(single_payload(DEL_NOTIFY, RTM_DELANYCAST)).unwrap(), subnet_router());
    }

    #[test]
    fn dump_reply_has_get_type() {
        assert_eq!(parse_anycast(single_payload(DUMP, RTM_GETANYCAST)).unwrap(), subnet_router());
    }

    fn ifaddrmsg() -> Vec<u8> {
        let mut v = vec![AF_INET6, 128, 0x80, 0];
        v.extend(3u32.to_ne_bytes());
        v
    }

    #[test]
    fn unknown_attributes_are_skipped() {
        let mut m = ifaddrmsg();
        m.extend(nla(99, &[1, 2, 3]));
        m.extend(nla(IFA_ANYCAST, &Ipv6Addr::LOCALHOST.octets()));
        assert_eq!(parse_anycast(&m).unwrap().address, Ipv6Addr::LOCALHOST);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(matches!(parse_anycast(&[]), Err(DecodeError::Truncated { need: 8, have: 0, .. })));
        assert!(matches!(parse_anycast(&ifaddrmsg()[..5]), Err(DecodeError::Truncated { .. })));
        assert_eq!(parse_anycast(&ifaddrmsg()), Err(DecodeError::MissingAttribute { what: "IFA_ANYCAST" }));

        let mut v4 = ifaddrmsg();
        v4[0] = 2;
        v4.extend(nla(IFA_ANYCAST, &[0; 16]));
        assert!(matches!(parse_anycast(&v4), Err(DecodeError::InvalidValue { .. })));

        let mut past_end = ifaddrmsg();
        past_end.extend([20, 0, IFA_ANYCAST as u8, 0, 0xfd, 0]);
        assert!(matches!(parse_anycast(&past_end), Err(DecodeError::LengthOverrun { offset: 8, len: 20, .. })));

        let mut too_short = ifaddrmsg();
        too_short.extend([1, 0, IFA_ANYCAST as u8, 0]);
        assert!(matches!(parse_anycast(&too_short), Err(DecodeError::LengthTooShort { len: 1, .. })));

        let mut wrong_size = ifaddrmsg();
        wrong_size.extend(nla(IFA_ANYCAST, &[0xfd, 0, 0, 0]));
        assert!(matches!(
            parse_anycast(&wrong_size),
            Err(DecodeError::PayloadSize { what: "IFA_ANYCAST", offset: 12, got: 4, .. })
        ));
    }

    #[test]
    fn every_truncation_is_handled() {
        for fixture in [NEW_NOTIFY, DEL_NOTIFY, DUMP] {
            no_panic_on_truncation(fixture, parse_anycast);
        }
    }
}

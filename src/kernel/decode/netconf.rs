//! Decoder for netconf messages: `RTM_NEWNETCONF` (80) and `RTM_DELNETCONF`
//! (81), the kernel's view of per-interface IP settings such as forwarding.
//! They arrive as replies to an `RTM_GETNETCONF` dump (one per interface
//! plus the `all` and `default` entries) and as notifications on
//! `RTNLGRP_IPV4_NETCONF` (24) / `RTNLGRP_IPV6_NETCONF` (25).
//!
//! Layout (include/uapi/linux/netconf.h): `struct netconfmsg` is a single
//! family byte, padded to 4, then `NETCONFA_*` attributes, all u32 except
//! `NETCONFA_IFINDEX`, which is an s32 where -1 means `all` and -2 means
//! `default`.
//!
//! Which attributes appear depends on the message: a dump entry carries
//! every setting of its family (IPv4: forwarding, rp_filter, mc_forwarding,
//! bc_forwarding, proxy_neigh, ignore_routes_with_linkdown; IPv6: the same
//! without rp_filter and bc_forwarding), while a notification carries only
//! the setting that changed, and `RTM_DELNETCONF` (interface gone) only the
//! ifindex. Hence every setting is an `Option`: `None` means "not in this
//! message", never "off".

use super::{attr_u32, attrs_at, check_header, DecodeError};

/// `RTM_NEWNETCONF`: a setting changed, or a dump entry.
pub const RTM_NEWNETCONF: u16 = 80;
/// `RTM_DELNETCONF`: the interface's configuration is gone.
pub const RTM_DELNETCONF: u16 = 81;
/// `RTM_GETNETCONF`: the request type for a netconf dump.
pub const RTM_GETNETCONF: u16 = 82;
/// `RTNLGRP_IPV4_NETCONF`: multicast group of IPv4 netconf notifications.
pub const RTNLGRP_IPV4_NETCONF: u32 = 24;
/// `RTNLGRP_IPV6_NETCONF`: multicast group of IPv6 netconf notifications.
pub const RTNLGRP_IPV6_NETCONF: u32 = 25;

/// `sizeof(struct netconfmsg)` (1) rounded up to the netlink alignment.
const NETCONFMSG_LEN: usize = 4;

// NETCONFA_* attribute numbers, include/uapi/linux/netconf.h.
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
const NETCONFA_RP_FILTER: u16 = 3;
const NETCONFA_MC_FORWARDING: u16 = 4;
const NETCONFA_PROXY_NEIGH: u16 = 5;
const NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN: u16 = 6;
const NETCONFA_INPUT: u16 = 7;
const NETCONFA_BC_FORWARDING: u16 = 8;

const NETCONFA_IFINDEX_ALL: i32 = -1;
const NETCONFA_IFINDEX_DEFAULT: i32 = -2;

/// Which configuration a netconf message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetconfScope {
    /// `NETCONFA_IFINDEX_ALL` (-1): `net.ipv{4,6}.conf.all`. Writing the
    /// IPv4 or IPv6 `all.forwarding` also rewrites every interface.
    All,
    /// `NETCONFA_IFINDEX_DEFAULT` (-2): `net.ipv{4,6}.conf.default`, the
    /// template for interfaces created later.
    Default,
    /// One interface, by ifindex.
    Index(u32),
}

/// One decoded `RTM_NEWNETCONF`/`RTM_DELNETCONF` message. Each setting is
/// `None` when the message does not carry it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetconfMsg {
    /// `ncm_family`: `AF_INET` (2), `AF_INET6` (10) or `AF_MPLS` (28).
    pub family: u8,
    /// `NETCONFA_IFINDEX`: which interface (or all/default) this is about.
    pub ifindex: NetconfScope,
    /// `NETCONFA_FORWARDING`: 1 if the interface forwards.
    pub forwarding: Option<u32>,
    /// `NETCONFA_RP_FILTER` (IPv4): 0 off, 1 strict, 2 loose.
    pub rp_filter: Option<u32>,
    /// `NETCONFA_MC_FORWARDING`: multicast forwarding (read-only sysctl).
    pub mc_forwarding: Option<u32>,
    /// `NETCONFA_PROXY_NEIGH`: proxy ARP / proxy NDP.
    pub proxy_neigh: Option<u32>,
    /// `NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN`.
    pub ignore_routes_with_linkdown: Option<u32>,
    /// `NETCONFA_INPUT` (MPLS): the interface accepts labelled packets.
    pub input: Option<u32>,
    /// `NETCONFA_BC_FORWARDING` (IPv4): directed-broadcast forwarding.
    pub bc_forwarding: Option<u32>,
}

/// Decodes the payload (after the `nlmsghdr`) of an `RTM_NEWNETCONF` or
/// `RTM_DELNETCONF` message. Unknown attributes are skipped.
pub fn parse_netconf(payload: &[u8]) -> Result<NetconfMsg, DecodeError> {
    check_header(payload, NETCONFMSG_LEN, "struct netconfmsg")?;
    let mut ifindex = None;
    let mut msg = NetconfMsg {
        family: payload[0],
        ifindex: NetconfScope::All,
        forwarding: None,
        rp_filter: None,
        mc_forwarding: None,
        proxy_neigh: None,
        ignore_routes_with_linkdown: None,
        input: None,
        bc_forwarding: None,
    };
    for attr in attrs_at(&payload[NETCONFMSG_LEN..], NETCONFMSG_LEN, "netconf attribute") {
        let attr = attr?;
        match attr.kind {
            NETCONFA_IFINDEX => {
                // s32 on the wire: reinterpret the bits, do not convert.
                let raw = attr_u32(&attr, "NETCONFA_IFINDEX")? as i32;
                ifindex = Some(match raw {
                    NETCONFA_IFINDEX_ALL => NetconfScope::All,
                    NETCONFA_IFINDEX_DEFAULT => NetconfScope::Default,
                    i if i >= 0 => NetconfScope::Index(i as u32),
                    i => {
                        return Err(DecodeError::InvalidValue {
                            what: "NETCONFA_IFINDEX",
                            offset: attr.offset,
                            detail: format!("{i} is neither an ifindex nor all (-1) / default (-2)"),
                        })
                    }
                });
            }
            NETCONFA_FORWARDING => msg.forwarding = Some(attr_u32(&attr, "NETCONFA_FORWARDING")?),
            NETCONFA_RP_FILTER => msg.rp_filter = Some(attr_u32(&attr, "NETCONFA_RP_FILTER")?),
            NETCONFA_MC_FORWARDING => msg.mc_forwarding = Some(attr_u32(&attr, "NETCONFA_MC_FORWARDING")?),
            NETCONFA_PROXY_NEIGH => msg.proxy_neigh = Some(attr_u32(&attr, "NETCONFA_PROXY_NEIGH")?),
            NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN => {
                msg.ignore_routes_with_linkdown = Some(attr_u32(&attr, "NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN")?)
            }
            NETCONFA_INPUT => msg.input = Some(attr_u32(&attr, "NETCONFA_INPUT")?),
            NETCONFA_BC_FORWARDING => msg.bc_forwarding = Some(attr_u32(&attr, "NETCONFA_BC_FORWARDING")?),
            _ => {}
        }
    }
    // The kernel puts the ifindex in every netconf message; without it the
    // message cannot be attributed, and guessing "all" would be wrong.
    msg.ifindex = ifindex.ok_or(DecodeError::MissingAttribute { what: "NETCONFA_IFINDEX" })?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{nla, no_panic_on_truncation, single_payload};
    use super::*;

    // Captured on Linux 6.18 by integration/captures/capture.sh; see
    // testdata/README.md. rgA is ifindex 3, rgC ifindex 5.
    const V6_ALL: &[u8] = include_bytes!("testdata/netconf_v6_all.bin");
    const V6_DEFAULT: &[u8] = include_bytes!("testdata/netconf_v6_default.bin");
    const V6_RGA: &[u8] = include_bytes!("testdata/netconf_v6_rga.bin");
    const V6_NOTIFY: &[u8] = include_bytes!("testdata/netconf_v6_notify_rgc_forwarding.bin");
    const V4_ALL: &[u8] = include_bytes!("testdata/netconf_v4_all.bin");
    const V4_RGA: &[u8] = include_bytes!("testdata/netconf_v4_rga.bin");
    const ALL: &[&[u8]] = &[V6_ALL, V6_DEFAULT, V6_RGA, V6_NOTIFY, V4_ALL, V4_RGA];

    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;

    fn parse(fixture: &[u8]) -> NetconfMsg {
        parse_netconf(single_payload(fixture, RTM_NEWNETCONF)).unwrap()
    }

    /// A full IPv6 dump entry: forwarding as given, everything else 0.
    fn v6_dump(ifindex: NetconfScope, forwarding: u32) -> NetconfMsg {
        NetconfMsg {
            family: AF_INET6,
            ifindex,
            forwarding: Some(forwarding),
            rp_filter: None,
            mc_forwarding: Some(0),
            proxy_neigh: Some(0),
            ignore_routes_with_linkdown: Some(0),
            input: None,
            bc_forwarding: None,
        }
    }

    #[test]
    fn v6_dump_all_default_interface() {
        // all.forwarding=0, default.forwarding=1, rgA.forwarding=1
        assert_eq!(parse(V6_ALL), v6_dump(NetconfScope::All, 0));
        assert_eq!(parse(V6_DEFAULT), v6_dump(NetconfScope::Default, 1));
        assert_eq!(parse(V6_RGA), v6_dump(NetconfScope::Index(3), 1));
    }

    #[test]
    fn v6_notification_carries_only_the_change() {
        // sysctl -w net.ipv6.conf.rgC.forwarding=1
        let want = NetconfMsg {
            forwarding: Some(1),
            mc_forwarding: None,
            proxy_neigh: None,
            ignore_routes_with_linkdown: None,
            ..v6_dump(NetconfScope::Index(5), 1)
        };
        assert_eq!(parse(V6_NOTIFY), want);
    }

    #[test]
    fn v4_dump_entries() {
        let all = parse(V4_ALL);
        assert_eq!(
            (all.family, all.ifindex, all.forwarding, all.rp_filter),
            (AF_INET, NetconfScope::All, Some(0), Some(0))
        );
        // net.ipv4.conf.rgA.forwarding=1, rp_filter=2
        let want = NetconfMsg {
            family: AF_INET,
            ifindex: NetconfScope::Index(3),
            forwarding: Some(1),
            rp_filter: Some(2),
            mc_forwarding: Some(0),
            proxy_neigh: Some(0),
            ignore_routes_with_linkdown: Some(0),
            input: None,
            bc_forwarding: Some(0),
        };
        assert_eq!(parse(V4_RGA), want);
    }

    fn msg(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![AF_INET6, 0, 0, 0];
        attrs.iter().for_each(|a| v.extend(a));
        v
    }

    #[test]
    fn delnetconf_and_unknown_attributes() {
        // RTM_DELNETCONF carries only the ifindex; attribute 99 is unknown.
        let got = parse_netconf(&msg(&[nla(99, &[1]), nla(NETCONFA_IFINDEX, &7i32.to_ne_bytes())])).unwrap();
        assert_eq!(got.ifindex, NetconfScope::Index(7));
        assert_eq!(got.forwarding, None);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(matches!(parse_netconf(&[]), Err(DecodeError::Truncated { need: 4, have: 0, .. })));
        assert!(matches!(parse_netconf(&[AF_INET6]), Err(DecodeError::Truncated { .. })));
        let fwd = nla(NETCONFA_FORWARDING, &1u32.to_ne_bytes());
        assert_eq!(parse_netconf(&msg(&[fwd])), Err(DecodeError::MissingAttribute { what: "NETCONFA_IFINDEX" }));

        let mut past_end = msg(&[]);
        past_end.extend([8, 0, 1, 0, 3, 0]);
        assert!(matches!(parse_netconf(&past_end), Err(DecodeError::LengthOverrun { offset: 4, len: 8, have: 6, .. })));

        let mut too_short = msg(&[]);
        too_short.extend([0, 0, 1, 0]);
        assert!(matches!(parse_netconf(&too_short), Err(DecodeError::LengthTooShort { len: 0, .. })));

        let short_u32 = nla(NETCONFA_FORWARDING, &[1, 0]);
        let idx = nla(NETCONFA_IFINDEX, &3i32.to_ne_bytes());
        assert!(matches!(
            parse_netconf(&msg(&[idx, short_u32])),
            Err(DecodeError::PayloadSize { what: "NETCONFA_FORWARDING", offset: 16, got: 2, .. })
        ));
        let long_idx = nla(NETCONFA_IFINDEX, &[0; 8]);
        assert!(matches!(
            parse_netconf(&msg(&[long_idx])),
            Err(DecodeError::PayloadSize { what: "NETCONFA_IFINDEX", .. })
        ));

        let bad_idx = nla(NETCONFA_IFINDEX, &(-3i32).to_ne_bytes());
        assert!(matches!(parse_netconf(&msg(&[bad_idx])), Err(DecodeError::InvalidValue { .. })));
    }

    #[test]
    fn every_truncation_is_handled() {
        for fixture in ALL {
            no_panic_on_truncation(fixture, parse_netconf);
        }
    }
}

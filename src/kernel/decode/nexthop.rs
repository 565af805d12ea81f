//! Decoder for nexthop objects: `RTM_NEWNEXTHOP` (104) and `RTM_DELNEXTHOP`
//! (105), sent as replies to an `RTM_GETNEXTHOP` dump and as notifications
//! on `RTNLGRP_NEXTHOP` (32).
//!
//! Layout (include/uapi/linux/nexthop.h): `struct nhmsg` (family, scope,
//! protocol, reserved: one byte each; flags: u32) and then `NHA_*`
//! attributes. A group carries `NHA_GROUP`, an array of 8-byte
//! `struct nexthop_grp { u32 id; u8 weight; u8 weight_high; u16 resvd2; }`.
//!
//! Weights need care, for two reasons:
//! - The kernel sends `weight - 1`, because weight 0 is invalid and the
//!   8-bit field could then express 1..=256 (in practice 1..=255).
//! - Since Linux 6.12 weights are 16-bit: the high byte of `weight - 1`
//!   travels in what used to be `resvd1`, now `weight_high`. Older kernels
//!   did not zero that byte in dumps, so it only means something when the
//!   reply also carries `NHA_OP_FLAGS` with `NHA_OP_FLAG_RESP_GRP_RESVD_0`
//!   (bit 31), which 6.12+ sets on every group message, notifications
//!   included. Without that flag the high byte is ignored, as iproute2 does.
//!   iproute2 before 6.12 ignores it always, so `ip nexthop` there shows a
//!   weight of 300 as 44.
//!
//! The resilient-group timers (`NHA_RES_GROUP_*_TIMER`) are `clock_t`:
//! hundredths of a second (`USER_HZ`), so `idle_timer 10` reads as 1000.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{attr_u32, attrs_at, check_header, fixed, read_u32, Attr, DecodeError};

/// `RTM_NEWNEXTHOP`: a nexthop was created or changed, or a dump entry.
pub const RTM_NEWNEXTHOP: u16 = 104;
/// `RTM_DELNEXTHOP`: a nexthop was deleted; the message describes it.
pub const RTM_DELNEXTHOP: u16 = 105;
/// `RTM_GETNEXTHOP`: the request type for a nexthop dump.
pub const RTM_GETNEXTHOP: u16 = 106;
/// `RTNLGRP_NEXTHOP`: the multicast group of nexthop notifications.
pub const RTNLGRP_NEXTHOP: u32 = 32;
/// `USER_HZ`: `clock_t` ticks per second in the resilient-group timers.
pub const CLOCK_T_PER_SEC: u32 = 100;

const NHMSG_LEN: usize = 8;

// NHA_* attribute numbers, include/uapi/linux/nexthop.h.
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_MASTER: u16 = 10;
const NHA_FDB: u16 = 11;
const NHA_RES_GROUP: u16 = 12;
const NHA_OP_FLAGS: u16 = 14;

// NHA_RES_GROUP_* (nested in NHA_RES_GROUP); 0 is the 64-bit pad attribute.
const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;
const NHA_RES_GROUP_UNBALANCED_TIME: u16 = 4;

/// Set in a reply's `NHA_OP_FLAGS` when `nexthop_grp.weight_high` is valid.
const NHA_OP_FLAG_RESP_GRP_RESVD_0: u32 = 1 << 31;

const NEXTHOP_GRP_LEN: usize = 8;

/// One decoded `RTM_NEWNEXTHOP`/`RTM_DELNEXTHOP` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexthopMsg {
    /// `NHA_ID`: the nexthop's id, unique per network namespace.
    pub id: u32,
    /// `nh_family`: `AF_INET` (2) or `AF_INET6` (10) for a single nexthop,
    /// `AF_UNSPEC` (0) for a group.
    pub family: u8,
    /// `nh_protocol`: the `RTPROT_*` of whoever installed it (FRR: 11 zebra).
    pub protocol: u8,
    /// `nh_flags`: `RTNH_F_*` bits, e.g. `RTNH_F_DEAD` (1), `RTNH_F_LINKDOWN` (16).
    pub flags: u32,
    /// `NHA_OIF`: ifindex of the outgoing device of a single nexthop.
    pub oif: Option<u32>,
    /// `NHA_GATEWAY`: the gateway of a single nexthop.
    pub gateway: Option<IpAddr>,
    /// `NHA_BLACKHOLE`: the nexthop drops packets.
    pub blackhole: bool,
    /// `NHA_FDB`: the nexthop belongs to the bridge FDB, not to routes.
    pub fdb: bool,
    /// `NHA_GROUP`: the members of a group, in kernel order; empty for a
    /// single nexthop.
    pub group: Vec<GroupMember>,
    /// `NHA_GROUP_TYPE`: present on groups only.
    pub group_type: Option<GroupType>,
    /// `NHA_RES_GROUP`: parameters of a resilient group.
    pub resilient: Option<ResilientParams>,
    /// `NHA_MASTER`: ifindex of the VRF the nexthop's device belongs to.
    /// Only used in dump requests by current kernels; decoded for safety.
    pub master: Option<u32>,
}

/// One member of a nexthop group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupMember {
    /// Id of the member nexthop.
    pub id: u32,
    /// The real weight, 1..=65535 (already converted from the kernel's
    /// `weight - 1` encoding and with `weight_high` applied when valid).
    pub weight: u16,
}

/// `NHA_GROUP_TYPE`: how a group spreads flows over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupType {
    /// `NEXTHOP_GRP_TYPE_MPATH` (0): hash-threshold; a membership change
    /// remaps a share of all flows.
    Mpath,
    /// `NEXTHOP_GRP_TYPE_RES` (1): resilient; flows stay on their bucket's
    /// member unless that member goes away.
    Resilient,
    /// A type number this decoder does not know, kept rather than dropped
    /// so that a newer kernel's group is not mistaken for a multipath one.
    Unknown(u16),
}

/// `NHA_RES_GROUP`: parameters of a resilient group. Timers are `clock_t`
/// (hundredths of a second, see [`CLOCK_T_PER_SEC`]), as the kernel sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResilientParams {
    /// `NHA_RES_GROUP_BUCKETS`: number of hash buckets.
    pub buckets: u16,
    /// `NHA_RES_GROUP_IDLE_TIMER`: how long a bucket must be idle before it
    /// may move to another member, in `clock_t`.
    pub idle_timer: u32,
    /// `NHA_RES_GROUP_UNBALANCED_TIMER`: how long the group may stay
    /// unbalanced before buckets are moved even if busy, in `clock_t`
    /// (0: never forced).
    pub unbalanced_timer: u32,
    /// `NHA_RES_GROUP_UNBALANCED_TIME`: how long the group has been
    /// unbalanced, in `clock_t`.
    pub unbalanced_time: u64,
}

/// Decodes the payload (after the `nlmsghdr`) of an `RTM_NEWNEXTHOP` or
/// `RTM_DELNEXTHOP` message. Unknown attributes are skipped.
pub fn parse_nexthop(payload: &[u8]) -> Result<NexthopMsg, DecodeError> {
    check_header(payload, NHMSG_LEN, "struct nhmsg")?;
    let mut id = None;
    let mut msg = NexthopMsg {
        id: 0,
        family: payload[0],
        protocol: payload[2],
        flags: read_u32(payload, 4),
        oif: None,
        gateway: None,
        blackhole: false,
        fdb: false,
        group: Vec::new(),
        group_type: None,
        resilient: None,
        master: None,
    };
    // NHA_GROUP comes before NHA_OP_FLAGS, and the flags decide how to read
    // the group's weights, so the group is decoded after the loop.
    let mut group_attr = None;
    let mut op_flags = 0;
    for attr in attrs_at(&payload[NHMSG_LEN..], NHMSG_LEN, "nexthop attribute") {
        let attr = attr?;
        match attr.kind {
            NHA_ID => id = Some(attr_u32(&attr, "NHA_ID")?),
            NHA_GROUP => group_attr = Some(attr),
            NHA_GROUP_TYPE => msg.group_type = Some(parse_group_type(&attr)?),
            NHA_BLACKHOLE => msg.blackhole = true,
            NHA_OIF => msg.oif = Some(attr_u32(&attr, "NHA_OIF")?),
            NHA_GATEWAY => msg.gateway = Some(parse_gateway(&attr)?),
            NHA_MASTER => msg.master = Some(attr_u32(&attr, "NHA_MASTER")?),
            NHA_FDB => msg.fdb = true,
            NHA_RES_GROUP => msg.resilient = Some(parse_res_group(attr.payload, attr.offset)?),
            NHA_OP_FLAGS => op_flags = attr_u32(&attr, "NHA_OP_FLAGS")?,
            _ => {}
        }
    }
    msg.id = id.ok_or(DecodeError::MissingAttribute { what: "NHA_ID" })?;
    if let Some(attr) = group_attr {
        let weight_high_valid = op_flags & NHA_OP_FLAG_RESP_GRP_RESVD_0 != 0;
        msg.group = parse_group(attr.payload, attr.offset, weight_high_valid)?;
    }
    Ok(msg)
}

fn parse_group_type(attr: &Attr<'_>) -> Result<GroupType, DecodeError> {
    Ok(match u16::from_ne_bytes(fixed(attr, "NHA_GROUP_TYPE", "2")?) {
        0 => GroupType::Mpath,
        1 => GroupType::Resilient,
        other => GroupType::Unknown(other),
    })
}

/// `NHA_GATEWAY` is in network byte order; its size gives the family.
fn parse_gateway(attr: &Attr<'_>) -> Result<IpAddr, DecodeError> {
    const SIZES: &str = "4 or 16";
    Ok(match attr.payload.len() {
        4 => IpAddr::V4(Ipv4Addr::from(fixed::<4>(attr, "NHA_GATEWAY", SIZES)?)),
        _ => IpAddr::V6(Ipv6Addr::from(fixed::<16>(attr, "NHA_GATEWAY", SIZES)?)),
    })
}

fn parse_group(buf: &[u8], base: usize, weight_high_valid: bool) -> Result<Vec<GroupMember>, DecodeError> {
    if buf.is_empty() || !buf.len().is_multiple_of(NEXTHOP_GRP_LEN) {
        return Err(DecodeError::PayloadSize {
            what: "NHA_GROUP",
            offset: base,
            got: buf.len(),
            expected: "a non-zero multiple of 8",
        });
    }
    buf.chunks_exact(NEXTHOP_GRP_LEN)
        .enumerate()
        .map(|(i, entry)| {
            let high = if weight_high_valid { entry[5] } else { 0 };
            let encoded = u16::from_be_bytes([high, entry[4]]);
            // weight - 1 == 0xffff would be weight 65536, which the kernel
            // refuses to configure, so it cannot come from a sane kernel.
            let weight = encoded.checked_add(1).ok_or_else(|| DecodeError::InvalidValue {
                what: "nexthop_grp.weight",
                offset: base + i * NEXTHOP_GRP_LEN + 4,
                detail: "weight 65536 does not fit 16 bits".into(),
            })?;
            Ok(GroupMember { id: read_u32(entry, 0), weight })
        })
        .collect()
}

fn parse_res_group(buf: &[u8], base: usize) -> Result<ResilientParams, DecodeError> {
    let mut p = ResilientParams::default();
    for attr in attrs_at(buf, base, "NHA_RES_GROUP attribute") {
        let attr = attr?;
        match attr.kind {
            NHA_RES_GROUP_BUCKETS => p.buckets = u16::from_ne_bytes(fixed(&attr, "NHA_RES_GROUP_BUCKETS", "2")?),
            NHA_RES_GROUP_IDLE_TIMER => p.idle_timer = attr_u32(&attr, "NHA_RES_GROUP_IDLE_TIMER")?,
            NHA_RES_GROUP_UNBALANCED_TIMER => p.unbalanced_timer = attr_u32(&attr, "NHA_RES_GROUP_UNBALANCED_TIMER")?,
            NHA_RES_GROUP_UNBALANCED_TIME => {
                p.unbalanced_time = u64::from_ne_bytes(fixed(&attr, "NHA_RES_GROUP_UNBALANCED_TIME", "8")?)
            }
            // NHA_RES_GROUP_PAD (0) aligns the u64 above; newer numbers are skipped.
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{nla, no_panic_on_truncation, single_payload};
    use super::*;

    // Captured on Linux 6.18 by integration/captures/capture.sh; see
    // testdata/README.md. rgA is ifindex 3, rgC ifindex 5.
    const V6_GATEWAY: &[u8] = include_bytes!("testdata/nexthop_new_v6_gateway.bin");
    const V4_GATEWAY: &[u8] = include_bytes!("testdata/nexthop_new_v4_gateway.bin");
    const BLACKHOLE: &[u8] = include_bytes!("testdata/nexthop_new_blackhole.bin");
    const GROUP_MPATH: &[u8] = include_bytes!("testdata/nexthop_new_group_mpath.bin");
    const GROUP_RES: &[u8] = include_bytes!("testdata/nexthop_new_group_resilient.bin");
    const GROUP_W300: &[u8] = include_bytes!("testdata/nexthop_new_group_weight300.bin");
    const DEL_V6: &[u8] = include_bytes!("testdata/nexthop_del_v6_gateway.bin");
    const ALL: &[&[u8]] = &[V6_GATEWAY, V4_GATEWAY, BLACKHOLE, GROUP_MPATH, GROUP_RES, GROUP_W300, DEL_V6];

    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;

    fn new(fixture: &[u8]) -> NexthopMsg {
        parse_nexthop(single_payload(fixture, RTM_NEWNEXTHOP)).unwrap()
    }

    fn single(id: u32, family: u8, oif: Option<u32>, gateway: Option<IpAddr>) -> NexthopMsg {
        NexthopMsg {
            id,
            family,
            protocol: 0,
            flags: 0,
            oif,
            gateway,
            blackhole: false,
            fdb: false,
            group: vec![],
            group_type: None,
            resilient: None,
            master: None,
        }
    }

    fn member(id: u32, weight: u16) -> GroupMember {
        GroupMember { id, weight }
    }

    #[test]
    fn single_v6_gateway() {
        // ip nexthop add id 1 via fe80::2 dev rgA
        let want = single(1, AF_INET6, Some(3), Some("fe80::2".parse().unwrap()));
        assert_eq!(new(V6_GATEWAY), want);
    }

    #[test]
    fn single_v4_gateway() {
        // ip nexthop add id 4 via 192.0.2.2 dev rgA
        let want = single(4, AF_INET, Some(3), Some("192.0.2.2".parse().unwrap()));
        assert_eq!(new(V4_GATEWAY), want);
    }

    #[test]
    fn blackhole() {
        // ip nexthop add id 5 blackhole (iproute2 picks AF_INET)
        let want = NexthopMsg { blackhole: true, ..single(5, AF_INET, None, None) };
        assert_eq!(new(BLACKHOLE), want);
    }

    #[test]
    fn group_mpath_with_weight_3() {
        // ip nexthop add id 10 group 1/2,3/3
        let want = NexthopMsg {
            group: vec![member(1, 1), member(2, 3), member(3, 1)],
            group_type: Some(GroupType::Mpath),
            ..single(10, 0, None, None)
        };
        assert_eq!(new(GROUP_MPATH), want);
    }

    #[test]
    fn group_resilient() {
        // ip nexthop add id 11 group 1/2 type resilient buckets 32 idle_timer 10 unbalanced_timer 20
        let got = new(GROUP_RES);
        assert_eq!(got.group, vec![member(1, 1), member(2, 1)]);
        assert_eq!(got.group_type, Some(GroupType::Resilient));
        let res = got.resilient.unwrap();
        assert_eq!(res.buckets, 32);
        assert_eq!(res.idle_timer, 10 * CLOCK_T_PER_SEC);
        assert_eq!(res.unbalanced_timer, 20 * CLOCK_T_PER_SEC);
        assert_eq!(res.unbalanced_time, 0);
    }

    #[test]
    fn group_weight_above_255_uses_weight_high() {
        // nlcapture.py add-nh-group --id 12 --member 1:300 --member 2
        let got = new(GROUP_W300);
        assert_eq!((got.id, got.protocol), (12, 3));
        assert_eq!(got.group, vec![member(1, 300), member(2, 1)]);
    }

    #[test]
    fn weight_high_ignored_without_resp_grp_resvd_0() {
        // The same message minus its NHA_OP_FLAGS attribute, as a pre-6.12
        // kernel would send it: weight_high may be garbage there.
        let payload = single_payload(GROUP_W300, RTM_NEWNEXTHOP);
        let op_flags = nla(NHA_OP_FLAGS, &NHA_OP_FLAG_RESP_GRP_RESVD_0.to_ne_bytes());
        assert!(payload.ends_with(&op_flags), "NHA_OP_FLAGS is the last attribute");
        let old = parse_nexthop(&payload[..payload.len() - op_flags.len()]).unwrap();
        assert_eq!(old.group, vec![member(1, 44), member(2, 1)]);
    }

    #[test]
    fn del_notification() {
        // ip nexthop add id 6 via fe80::6 dev rgC; ip nexthop del id 6
        let got = parse_nexthop(single_payload(DEL_V6, RTM_DELNEXTHOP)).unwrap();
        assert_eq!(got, single(6, AF_INET6, Some(5), Some("fe80::6".parse().unwrap())));
    }

    fn nhmsg() -> Vec<u8> {
        vec![AF_INET6, 0, 0, 0, 0, 0, 0, 0]
    }

    fn with(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = nhmsg();
        v.extend(nla(NHA_ID, &7u32.to_ne_bytes()));
        attrs.iter().for_each(|a| v.extend(a));
        v
    }

    #[test]
    fn unknown_attributes_are_skipped() {
        let got = parse_nexthop(&with(&[nla(999, &[1, 2, 3]), nla(NHA_OIF, &9u32.to_ne_bytes())])).unwrap();
        assert_eq!((got.id, got.oif), (7, Some(9)));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert!(matches!(parse_nexthop(&[]), Err(DecodeError::Truncated { need: 8, have: 0, .. })));
        assert!(matches!(parse_nexthop(&[10, 0, 0]), Err(DecodeError::Truncated { .. })));
        assert_eq!(parse_nexthop(&nhmsg()), Err(DecodeError::MissingAttribute { what: "NHA_ID" }));

        // Attribute length past the end.
        let mut past_end = with(&[]);
        past_end.extend([40, 0, NHA_OIF as u8, 0, 1, 0, 0, 0]);
        assert!(matches!(parse_nexthop(&past_end), Err(DecodeError::LengthOverrun { offset: 16, len: 40, .. })));

        // Attribute length below the attribute header.
        let mut too_short = with(&[]);
        too_short.extend([3, 0, NHA_OIF as u8, 0]);
        assert!(matches!(parse_nexthop(&too_short), Err(DecodeError::LengthTooShort { len: 3, .. })));

        // Wrong payload sizes.
        let cases = [
            (nla(NHA_OIF, &[1, 2]), "NHA_OIF"),
            (nla(NHA_GATEWAY, &[1; 6]), "NHA_GATEWAY"),
            (nla(NHA_GROUP, &[1; 12]), "NHA_GROUP"),
            (nla(NHA_GROUP, &[]), "NHA_GROUP"),
            (nla(NHA_GROUP_TYPE, &[0; 4]), "NHA_GROUP_TYPE"),
            (nla(NHA_RES_GROUP, &nla(NHA_RES_GROUP_UNBALANCED_TIME, &[0; 4])), "NHA_RES_GROUP_UNBALANCED_TIME"),
        ];
        for (attr, name) in cases {
            match parse_nexthop(&with(&[attr])) {
                Err(DecodeError::PayloadSize { what, offset, .. }) => {
                    assert_eq!(what, name);
                    assert!(offset >= 16, "offset {offset} points into the payload");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let mut id_short = nhmsg();
        id_short.extend(nla(NHA_ID, &[1, 0]));
        assert!(matches!(
            parse_nexthop(&id_short),
            Err(DecodeError::PayloadSize { what: "NHA_ID", offset: 12, got: 2, .. })
        ));

        // Nested attribute overrunning its parent.
        let bad_nest = nla(NHA_RES_GROUP, &[12, 0, 1, 0, 32, 0]);
        assert!(matches!(parse_nexthop(&with(&[bad_nest])), Err(DecodeError::LengthOverrun { .. })));

        // weight 65536 (0xffff + 1) cannot be represented.
        let mut entry = 1u32.to_ne_bytes().to_vec();
        entry.extend([0xff, 0xff, 0, 0]);
        let op = nla(NHA_OP_FLAGS, &NHA_OP_FLAG_RESP_GRP_RESVD_0.to_ne_bytes());
        assert!(matches!(parse_nexthop(&with(&[nla(NHA_GROUP, &entry), op])), Err(DecodeError::InvalidValue { .. })));
    }

    #[test]
    fn every_truncation_is_handled() {
        for fixture in ALL {
            no_panic_on_truncation(fixture, parse_nexthop);
        }
    }
}

//! Hand-written decoders for the rtnetlink messages that netlink-packet-route
//! 0.34 has no types for: nexthop objects (`RTM_NEWNEXTHOP`/`RTM_DELNEXTHOP`),
//! per-interface forwarding configuration (`RTM_NEWNETCONF`) and IPv6 anycast
//! addresses (`RTM_NEWANYCAST`/`RTM_DELANYCAST`/`RTM_GETANYCAST` replies).
//! Its codec drops messages it cannot parse, so the kernel reader hands the
//! raw bytes of these message types to the functions here instead.
//!
//! The decoders are pure functions over byte slices: no sockets, no
//! allocation beyond the returned value, no `unsafe`. Every length the
//! kernel sends is checked before it is used, so a malformed or truncated
//! message yields a [`DecodeError`] instead of a panic. Attributes the
//! decoders do not know are skipped, because newer kernels add attributes
//! to existing messages and that must not break an older daemon.
//!
//! Netlink is host byte order (except where an attribute says otherwise,
//! such as addresses), so integers are read with `from_ne_bytes`. The test
//! fixtures in `testdata/` were captured on x86_64 and are little-endian.
//!
//! Each parser takes the message payload, i.e. what follows the 16-byte
//! `nlmsghdr`; [`split_messages`] splits a receive buffer into those.

pub mod anycast;
pub mod netconf;
pub mod nexthop;

/// Size of `struct nlmsghdr`, which starts every netlink message.
pub const NLMSG_HDRLEN: usize = 16;

/// Size of `struct nlattr`, which starts every attribute.
const NLA_HDRLEN: usize = 4;

/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flag bits the kernel may set in an
/// attribute's type field; they are not part of the type number.
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

/// Why a netlink message could not be decoded. Every variant names what was
/// being decoded and the byte offset of the problem, counted from the start
/// of the buffer handed to the decoder (the payload after the `nlmsghdr`,
/// or the receive buffer for [`split_messages`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A fixed-size header or attribute header does not fit in what is left.
    #[error("{what}: truncated at offset {offset}: need {need} bytes, {have} left")]
    Truncated {
        /// What was being decoded, e.g. "struct nhmsg".
        what: &'static str,
        /// Where the header starts.
        offset: usize,
        /// Bytes the header needs.
        need: usize,
        /// Bytes actually left.
        have: usize,
    },
    /// A length field (`nlmsg_len` or `nla_len`) points past the buffer.
    #[error("{what}: length {len} at offset {offset} overruns the buffer ({have} bytes left)")]
    LengthOverrun {
        /// What was being decoded.
        what: &'static str,
        /// Where the element whose length is wrong starts.
        offset: usize,
        /// The length it claims.
        len: usize,
        /// Bytes actually left from `offset`.
        have: usize,
    },
    /// A length field is smaller than the header it is part of.
    #[error("{what}: length {len} at offset {offset} is shorter than its own {min}-byte header")]
    LengthTooShort {
        /// What was being decoded.
        what: &'static str,
        /// Where the element starts.
        offset: usize,
        /// The length it claims.
        len: usize,
        /// The header size it must at least cover.
        min: usize,
    },
    /// An attribute's payload does not have the size its type requires.
    #[error("{what}: attribute payload at offset {offset} is {got} bytes, expected {expected}")]
    PayloadSize {
        /// The attribute, e.g. "NHA_OIF".
        what: &'static str,
        /// Where the payload starts.
        offset: usize,
        /// Payload bytes present.
        got: usize,
        /// What the type requires, e.g. "4" or "4 or 16".
        expected: &'static str,
    },
    /// An attribute every kernel sends in this message is absent.
    #[error("{what}: required attribute missing")]
    MissingAttribute {
        /// The attribute, e.g. "NHA_ID".
        what: &'static str,
    },
    /// A field has the right size but a value the kernel never sends.
    #[error("{what}: invalid value at offset {offset}: {detail}")]
    InvalidValue {
        /// The field.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
        /// What is wrong with it.
        detail: String,
    },
}

/// The decoded `struct nlmsghdr` in front of each netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlHeader {
    /// `nlmsg_len`: length of the message including this header.
    pub len: u32,
    /// `nlmsg_type`, e.g. `RTM_NEWNEXTHOP`.
    pub msg_type: u16,
    /// `nlmsg_flags` (`NLM_F_*`).
    pub flags: u16,
    /// `nlmsg_seq`: the request's sequence number, 0 for notifications.
    pub seq: u32,
    /// `nlmsg_pid`: port id of the requester, 0 for kernel notifications.
    pub pid: u32,
}

/// Splits a receive buffer holding one or more netlink messages into
/// (header, payload) pairs, the payload being what follows the 16-byte
/// header. Messages are 4-byte aligned; a missing pad after the last one is
/// tolerated. Iteration stops after the first error.
pub fn split_messages(buf: &[u8]) -> impl Iterator<Item = Result<(NlHeader, &[u8]), DecodeError>> {
    let mut off = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || off >= buf.len() {
            return None;
        }
        let item = next_message(buf, off);
        match &item {
            Ok((hdr, _)) => off = off.saturating_add(align4(hdr.len as usize)),
            Err(_) => failed = true,
        }
        Some(item)
    })
}

fn next_message(buf: &[u8], off: usize) -> Result<(NlHeader, &[u8]), DecodeError> {
    const WHAT: &str = "struct nlmsghdr";
    let rest = &buf[off..];
    if rest.len() < NLMSG_HDRLEN {
        return Err(DecodeError::Truncated { what: WHAT, offset: off, need: NLMSG_HDRLEN, have: rest.len() });
    }
    let hdr = NlHeader {
        len: read_u32(rest, 0),
        msg_type: read_u16(rest, 4),
        flags: read_u16(rest, 6),
        seq: read_u32(rest, 8),
        pid: read_u32(rest, 12),
    };
    let len = hdr.len as usize;
    if len < NLMSG_HDRLEN {
        return Err(DecodeError::LengthTooShort { what: WHAT, offset: off, len, min: NLMSG_HDRLEN });
    }
    if len > rest.len() {
        return Err(DecodeError::LengthOverrun { what: WHAT, offset: off, len, have: rest.len() });
    }
    Ok((hdr, &rest[NLMSG_HDRLEN..len]))
}

/// Iterates over the attributes (`struct nlattr` + payload, 4-byte aligned)
/// in `buf`, yielding each one's type, with the `NLA_F_NESTED` and
/// `NLA_F_NET_BYTEORDER` bits masked off, and its payload. A missing pad
/// after the last attribute is tolerated; iteration stops after the first
/// error. Offsets in errors are relative to `buf`.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    attrs_at(buf, 0, "attribute").map(|r| r.map(|a| (a.kind, a.payload)))
}

/// One attribute, with the offset of its payload for error messages.
pub(crate) struct Attr<'a> {
    /// Attribute type with the flag bits masked off.
    pub kind: u16,
    /// Offset of `payload` from the start of the message payload.
    pub offset: usize,
    /// The attribute's payload, without header or padding.
    pub payload: &'a [u8],
}

/// Like [`attrs`], but reports offsets as `base + position in buf`, so that
/// errors point into the message payload even for nested attributes, and
/// names `what` was being decoded.
pub(crate) fn attrs_at<'a>(
    buf: &'a [u8],
    base: usize,
    what: &'static str,
) -> impl Iterator<Item = Result<Attr<'a>, DecodeError>> {
    let mut off = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || off >= buf.len() {
            return None;
        }
        let item = next_attr(buf, off, base, what);
        match &item {
            Ok(a) => off = off.saturating_add(align4(NLA_HDRLEN + a.payload.len())),
            Err(_) => failed = true,
        }
        Some(item)
    })
}

fn next_attr<'a>(buf: &'a [u8], off: usize, base: usize, what: &'static str) -> Result<Attr<'a>, DecodeError> {
    let rest = &buf[off..];
    if rest.len() < NLA_HDRLEN {
        return Err(DecodeError::Truncated { what, offset: base + off, need: NLA_HDRLEN, have: rest.len() });
    }
    let len = usize::from(read_u16(rest, 0));
    if len < NLA_HDRLEN {
        return Err(DecodeError::LengthTooShort { what, offset: base + off, len, min: NLA_HDRLEN });
    }
    if len > rest.len() {
        return Err(DecodeError::LengthOverrun { what, offset: base + off, len, have: rest.len() });
    }
    Ok(Attr {
        kind: read_u16(rest, 2) & NLA_TYPE_MASK,
        offset: base + off + NLA_HDRLEN,
        payload: &rest[NLA_HDRLEN..len],
    })
}

/// Checks that a fixed-size family header (`struct nhmsg` and the like) fits
/// at the start of a payload.
pub(crate) fn check_header(payload: &[u8], size: usize, what: &'static str) -> Result<(), DecodeError> {
    if payload.len() < size {
        return Err(DecodeError::Truncated { what, offset: 0, need: size, have: payload.len() });
    }
    Ok(())
}

/// Returns the payload as a fixed-size array, or a `PayloadSize` error.
pub(crate) fn fixed<const N: usize>(
    a: &Attr<'_>,
    what: &'static str,
    expected: &'static str,
) -> Result<[u8; N], DecodeError> {
    a.payload.try_into().map_err(|_| DecodeError::PayloadSize {
        what,
        offset: a.offset,
        got: a.payload.len(),
        expected,
    })
}

/// Reads a host-order u32 attribute that must be exactly 4 bytes.
pub(crate) fn attr_u32(a: &Attr<'_>, what: &'static str) -> Result<u32, DecodeError> {
    fixed::<4>(a, what, "4").map(u32::from_ne_bytes)
}

/// Reads a host-order u16 at `off`; the caller has checked the length.
fn read_u16(buf: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([buf[off], buf[off + 1]])
}

/// Reads a host-order u32 at `off`; the caller has checked the length.
pub(crate) fn read_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}

/// Rounds up to the 4-byte alignment of netlink messages and attributes.
pub(crate) fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// Strips the header from a fixture holding exactly one message, checks
    /// its type, and returns the payload.
    pub fn single_payload(fixture: &[u8], msg_type: u16) -> &[u8] {
        let msgs: Vec<_> = split_messages(fixture).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1, "fixture holds one message");
        assert_eq!(msgs[0].0.msg_type, msg_type);
        assert_eq!(msgs[0].0.len as usize, fixture.len());
        msgs[0].1
    }

    /// Feeds every prefix of `fixture` through `split_messages` and `parse`
    /// (on the truncated payload as well), asserting only that nothing
    /// panics, and that a header-less truncation is always an error.
    pub fn no_panic_on_truncation<T>(fixture: &[u8], parse: fn(&[u8]) -> Result<T, DecodeError>) {
        for cut in 0..fixture.len() {
            let prefix = &fixture[..cut];
            for (_, payload) in split_messages(prefix).flatten() {
                let _ = parse(payload);
            }
            if cut > 0 {
                assert!(split_messages(prefix).any(|m| m.is_err()), "cut {cut}");
            }
            if cut >= NLMSG_HDRLEN {
                let _ = parse(&fixture[NLMSG_HDRLEN..cut]);
            }
        }
    }

    /// Builds one attribute with padding, for hand-made malformed inputs.
    pub fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align4(v.len()), 0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::nla;
    use super::*;

    const TWO_MSGS: &[u8] = &[
        // nlmsghdr len 20, type 104, flags 2, seq 1, pid 7, payload 4 bytes
        20, 0, 0, 0, 104, 0, 2, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd,
        // len 17 (payload 1 byte, then 3 pad bytes), type 3 (NLMSG_DONE)
        17, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0xee, 0, 0, 0,
    ];

    #[test]
    fn split_messages_walks_aligned_messages() {
        let msgs: Vec<_> = split_messages(TWO_MSGS).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        let want = NlHeader { len: 20, msg_type: 104, flags: 2, seq: 1, pid: 7 };
        assert_eq!(msgs[0], (want, &[0xaa, 0xbb, 0xcc, 0xdd][..]));
        assert_eq!(msgs[1].0.msg_type, 3);
        assert_eq!(msgs[1].1, &[0xee]);
        // The pad after a final odd-length message may be missing.
        let msgs: Vec<_> = split_messages(&TWO_MSGS[..37]).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs[1].1, &[0xee]);
    }

    #[test]
    fn split_messages_rejects_bad_lengths() {
        assert_eq!(split_messages(&[]).count(), 0);
        let truncated: Vec<_> = split_messages(&TWO_MSGS[..10]).collect();
        assert!(matches!(truncated[..], [Err(DecodeError::Truncated { offset: 0, need: 16, have: 10, .. })]));

        let mut short = TWO_MSGS.to_vec();
        short[0] = 15;
        assert!(matches!(split_messages(&short).next(), Some(Err(DecodeError::LengthTooShort { len: 15, .. }))));

        let mut long = TWO_MSGS.to_vec();
        long[20] = 21;
        let got: Vec<_> = split_messages(&long).collect();
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(DecodeError::LengthOverrun { offset: 20, len: 21, have: 20, .. })));
        assert_eq!(got.len(), 2, "iteration stops after an error");
    }

    #[test]
    fn attrs_masks_flags_and_aligns() {
        let mut buf = nla(1, &[1, 2, 3, 4, 5]); // 9 bytes + 3 pad
        buf.extend(nla(0x8000 | 12, &[])); // NLA_F_NESTED
        buf.extend(nla(0x4000 | 3, &[9, 9])); // NLA_F_NET_BYTEORDER, last pad dropped below
        buf.truncate(buf.len() - 2);
        let got: Vec<_> = attrs(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(1, &[1, 2, 3, 4, 5][..]), (12, &[][..]), (3, &[9, 9][..])]);
    }

    #[test]
    fn attrs_rejects_malformed() {
        // Attribute header cut short.
        assert!(matches!(attrs(&[8, 0, 1]).next(), Some(Err(DecodeError::Truncated { offset: 0, have: 3, .. }))));
        // nla_len below the 4-byte header: must not loop forever.
        let got: Vec<_> = attrs(&[2, 0, 1, 0, 0, 0, 0, 0]).collect();
        assert!(matches!(got[..], [Err(DecodeError::LengthTooShort { len: 2, .. })]));
        // nla_len past the end of the buffer.
        let mut buf = nla(1, &[0; 4]);
        buf.extend([12, 0, 2, 0, 0, 0]);
        let got: Vec<_> = attrs(&buf).collect();
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(DecodeError::LengthOverrun { offset: 8, len: 12, have: 6, .. })));
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = DecodeError::PayloadSize { what: "NHA_OIF", offset: 20, got: 2, expected: "4" };
        assert_eq!(e.to_string(), "NHA_OIF: attribute payload at offset 20 is 2 bytes, expected 4");
    }
}

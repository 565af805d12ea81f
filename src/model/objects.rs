//! Domain types for the kernel objects other than routes.
//!
//! The kernel edge (`crate::kernel`) converts netlink messages into these; no
//! netlink type appears here, so the model and the detectors are testable
//! without a kernel and replayable from recorded events.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// IFF_UP.
pub const IFF_UP: u32 = 0x1;
/// IFA_F_DADFAILED: duplicate address detection failed.
pub const IFA_F_DADFAILED: u32 = 0x08;
/// IFA_F_TENTATIVE: duplicate address detection still running.
pub const IFA_F_TENTATIVE: u32 = 0x40;
/// IFA_F_NODAD: added without duplicate address detection.
pub const IFA_F_NODAD: u32 = 0x02;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
    /// Link kind from IFLA_INFO_KIND (`veth`, `bridge`, `sit`, ...); `None`
    /// for kinds that report none (loopback, physical NICs).
    pub kind: Option<String>,
    /// Ifindex of the master device (bridge, VRF, bond), if enslaved.
    pub master: Option<u32>,
    /// IFF_* flags.
    pub flags: u32,
    /// MTU.
    pub mtu: u32,
    /// Bridge-port state when the link is a bridge port.
    pub bridge_port: Option<BridgePort>,
    /// Tunnel endpoints for the IP tunnel kinds netlink reports
    /// (sit, ipip, ip6tnl, gre, ip6gre, vti).
    pub tunnel: Option<TunnelEnds>,
    /// Transmitted packets as of the last link message.
    pub tx_packets: u64,
    /// tx_carrier_errors as of the last link message (the counter a sit
    /// tunnel to a local remote increments on affected kernels).
    pub tx_carrier_errors: u64,
}

impl Link {
    /// True when IFF_UP is set.
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
}

/// Bridge-port attributes that matter to the hazards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgePort {
    /// IFLA_BRPORT_MODE: hairpin (reflective relay) mode.
    pub hairpin: bool,
}

/// Local and remote endpoints of an IP tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelEnds {
    /// Tunnel local address, if set.
    pub local: Option<IpAddr>,
    /// Tunnel remote address, if set.
    pub remote: Option<IpAddr>,
}

/// Identity of an interface address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AddressKey {
    /// Interface index.
    pub ifindex: u32,
    /// The address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// An interface address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Identity.
    #[serde(flatten)]
    pub key: AddressKey,
    /// IFA_F_* flags (IFA_FLAGS when present, else the header byte).
    pub flags: u32,
    /// RT_SCOPE_* scope.
    pub scope: u8,
}

impl Address {
    /// Duplicate address detection failed for this address.
    pub fn dad_failed(&self) -> bool {
        self.flags & IFA_F_DADFAILED != 0
    }

    /// Duplicate address detection has not completed yet.
    pub fn tentative(&self) -> bool {
        self.flags & IFA_F_TENTATIVE != 0
    }
}

/// A joined IPv6 anycast address (RTM_NEWANYCAST / `ip -6 maddr`-like view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Anycast {
    /// Interface that joined the address.
    pub ifindex: u32,
    /// The anycast address.
    pub address: Ipv6Addr,
}

/// A kernel nexthop object (`ip nexthop`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nexthop {
    /// Object id.
    pub id: u32,
    /// Address family of a single nexthop (AF_INET/AF_INET6); AF_UNSPEC for
    /// groups.
    pub family: u8,
    /// RTPROT_* of the installer (zebra is 11 and above).
    pub protocol: u8,
    /// Outgoing interface of a single nexthop.
    pub oif: Option<u32>,
    /// Gateway of a single nexthop.
    pub gateway: Option<IpAddr>,
    /// Blackhole nexthop.
    pub blackhole: bool,
    /// Members of a group with their weights; empty for a single nexthop.
    pub group: Vec<GroupMember>,
    /// Resilient-group parameters; `None` for hash-threshold groups.
    pub resilient: Option<Resilient>,
}

/// A member of a nexthop group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// Member nexthop id.
    pub id: u32,
    /// Weight (1 when unweighted).
    pub weight: u16,
}

/// Parameters of a resilient nexthop group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resilient {
    /// Number of hash buckets.
    pub buckets: u16,
    /// Seconds a bucket must be idle before it may migrate.
    pub idle_timer: u32,
    /// Seconds the group may stay unbalanced before buckets are forced over.
    pub unbalanced_timer: u32,
}

/// A policy routing rule (`ip rule`). All fields together are its identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// 4 or 6.
    pub family: u8,
    /// Priority (`pref`).
    pub priority: u32,
    /// Table looked up by a `lookup` action.
    pub table: u32,
    /// FR_ACT_* action (1 lookup, 2 goto, 6 blackhole, ...).
    pub action: u8,
    /// Source prefix selector.
    pub src: Option<String>,
    /// Destination prefix selector.
    pub dst: Option<String>,
    /// fwmark selector.
    pub fwmark: Option<u32>,
    /// fwmask for the fwmark selector.
    pub fwmask: Option<u32>,
    /// Input interface name selector.
    pub iif: Option<String>,
    /// Output interface name selector.
    pub oif: Option<String>,
    /// IP protocol selector.
    pub ipproto: Option<u8>,
    /// Source port range selector.
    pub sport: Option<(u16, u16)>,
    /// Destination port range selector.
    pub dport: Option<(u16, u16)>,
    /// Inverted selector (`not`).
    pub invert: bool,
}

/// Where a netconf value applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfScope {
    /// `conf/all`.
    All,
    /// `conf/default` (inherited by new interfaces).
    Default,
    /// One interface, by ifindex.
    Iface(u32),
}

/// A per-scope integer sysctl (e.g. `net.ipv6.conf.*.forwarding`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scoped {
    /// Value of `conf/all`.
    pub all: Option<u32>,
    /// Value of `conf/default`.
    pub default: Option<u32>,
    /// Values per interface index.
    pub per_if: BTreeMap<u32, u32>,
}

impl Scoped {
    /// Sets the value for one scope.
    pub fn set(&mut self, scope: ConfScope, value: u32) {
        match scope {
            ConfScope::All => self.all = Some(value),
            ConfScope::Default => self.default = Some(value),
            ConfScope::Iface(i) => {
                self.per_if.insert(i, value);
            }
        }
    }

    /// Value for one scope, if known.
    pub fn get(&self, scope: ConfScope) -> Option<u32> {
        match scope {
            ConfScope::All => self.all,
            ConfScope::Default => self.default,
            ConfScope::Iface(i) => self.per_if.get(&i).copied(),
        }
    }
}

/// The sysctls the hazard detectors depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctls {
    /// `net.ipv4.conf.*.forwarding`.
    pub forwarding_v4: Scoped,
    /// `net.ipv6.conf.*.forwarding`.
    pub forwarding_v6: Scoped,
    /// `net.ipv6.conf.*.enhanced_dad`.
    pub enhanced_dad: Scoped,
    /// `net.ipv4.fib_multipath_hash_policy`.
    pub hash_policy_v4: Option<u32>,
    /// `net.ipv6.fib_multipath_hash_policy`.
    pub hash_policy_v6: Option<u32>,
    /// `net.ipv4.fib_multipath_hash_fields`.
    pub hash_fields_v4: Option<u32>,
    /// `net.ipv6.fib_multipath_hash_fields`.
    pub hash_fields_v6: Option<u32>,
    /// `net.ipv4.nexthop_compat_mode`.
    pub nexthop_compat_mode: Option<u32>,
}

/// An established TCP socket seen through sock_diag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpSocket {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Interface the socket is bound to (SO_BINDTODEVICE), 0 if none.
    pub bound_ifindex: u32,
    /// Socket mark (SO_MARK) when the kernel reported it.
    pub mark: Option<u32>,
    /// Socket inode.
    pub inode: u32,
    /// Owner uid.
    pub uid: u32,
}

impl TcpSocket {
    /// Identity: the 4-tuple.
    pub fn key(&self) -> (SocketAddr, SocketAddr) {
        (self.local, self.remote)
    }
}

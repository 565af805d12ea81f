#!/usr/bin/env bash
# Regenerates the rtnetlink fixtures in src/kernel/decode/testdata/.
#
# Builds a throwaway network namespace with two veth pairs and a bridge,
# creates nexthops, toggles forwarding and adds routes, and saves the exact
# messages the kernel sends (notifications or dump replies) with
# nlcapture.py. Nothing outside the namespace is touched, and the namespace
# is deleted on exit.
#
# Usage (as root): integration/captures/capture.sh [OUTDIR]
#
# The Rust tests hard-code the values set up here (ids, gateways, ifindexes),
# so the script checks the ifindexes it relies on and stops if they differ.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../src/kernel/decode/testdata}
mkdir -p "$out"
out=$(cd "$out" && pwd)
ns=rgcap-$$

cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"

# Everything below runs inside the namespace.
n() { ip netns exec "$ns" "$@"; }
cap() { n python3 "$here/nlcapture.py" "$@"; }

n ip link set lo up
# A new namespace may inherit IPv4 settings from the host: pin every knob
# the fixtures depend on before any interface exists.
n sysctl -qw net.ipv4.conf.all.forwarding=0 net.ipv4.conf.default.forwarding=0 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    net.ipv6.conf.all.forwarding=0 net.ipv6.conf.default.forwarding=0

# The kernel numbers interfaces in creation order inside a fresh namespace:
# the veth peer is registered first, so rgB=2, rgA=3, rgD=4, rgC=5, rgbr0=6.
n ip link add rgA type veth peer name rgB
n ip link add rgC type veth peer name rgD
n ip link add rgbr0 type bridge
for dev in rgA rgB rgC rgD rgbr0; do n ip link set "$dev" up; done
for pair in rgB:2 rgA:3 rgD:4 rgC:5 rgbr0:6; do
    got=$(n cat "/sys/class/net/${pair%%:*}/ifindex")
    if [ "$got" != "${pair##*:}" ]; then
        echo "ifindex of ${pair%%:*} is $got, tests expect ${pair##*:}" >&2
        exit 1
    fi
done

# nodad: the address must be usable at once, because a tentative address
# does not join the Subnet-Router anycast group when forwarding turns on.
n ip -6 addr add fd00:ecec:1::1/64 dev rgA nodad
n ip addr add 192.0.2.1/24 dev rgA

# IPv6 netconf: all=0, default=1 (a template only: existing interfaces keep 0).
n sysctl -qw net.ipv6.conf.default.forwarding=1
# IPv4 netconf on rgA: forwarding=1, rp_filter=2 (loose).
n sysctl -qw net.ipv4.conf.rgA.forwarding=1 net.ipv4.conf.rgA.rp_filter=2

# --- nexthop objects: RTNLGRP_NEXTHOP (32) notifications -------------------
NH=(--group 32 --type 104)
cap watch "${NH[@]}" --match 1=u32:1 --out "$out/nexthop_new_v6_gateway.bin" -- \
    ip nexthop add id 1 via fe80::2 dev rgA
n ip nexthop add id 2 via fe80::3 dev rgA
n ip nexthop add id 3 via fe80::4 dev rgC
cap watch "${NH[@]}" --match 1=u32:4 --out "$out/nexthop_new_v4_gateway.bin" -- \
    ip nexthop add id 4 via 192.0.2.2 dev rgA
cap watch "${NH[@]}" --match 1=u32:5 --out "$out/nexthop_new_blackhole.bin" -- \
    ip nexthop add id 5 blackhole
cap watch "${NH[@]}" --match 1=u32:10 --out "$out/nexthop_new_group_mpath.bin" -- \
    ip nexthop add id 10 group 1/2,3/3
cap watch "${NH[@]}" --match 1=u32:11 --out "$out/nexthop_new_group_resilient.bin" -- \
    ip nexthop add id 11 group 1/2 type resilient buckets 32 idle_timer 10 unbalanced_timer 20
# Weight 300 needs the weight_high byte (kernel >= 6.12); iproute2 before
# 6.12 cannot send it, so nlcapture.py builds the request itself.
cap watch "${NH[@]}" --match 1=u32:12 --out "$out/nexthop_new_group_weight300.bin" -- \
    python3 "$here/nlcapture.py" add-nh-group --id 12 --member 1:300 --member 2
n ip nexthop add id 6 via fe80::6 dev rgC
cap watch --group 32 --type 105 --match 1=u32:6 --out "$out/nexthop_del_v6_gateway.bin" -- \
    ip nexthop del id 6

# --- anycast: RTNLGRP_IPV6_ACADDR (39) notifications, kernel >= 6.14 ------
AC=(--group 39 --match 5=ip:fd00:ecec:1::)
cap watch "${AC[@]}" --type 60 --out "$out/anycast_new_notify_subnet_router.bin" -- \
    sysctl -qw net.ipv6.conf.rgA.forwarding=1
cap watch "${AC[@]}" --type 61 --out "$out/anycast_del_notify_subnet_router.bin" -- \
    sysctl -qw net.ipv6.conf.rgA.forwarding=0
n sysctl -qw net.ipv6.conf.rgA.forwarding=1
# Dump replies carry RTM_GETANYCAST (62), not RTM_NEWANYCAST.
cap dump anycast --type 62 --match 5=ip:fd00:ecec:1:: --out "$out/anycast_dump_subnet_router.bin"

# --- netconf ---------------------------------------------------------------
cap watch --group 25 --type 80 --match 1=i32:5 --out "$out/netconf_v6_notify_rgc_forwarding.bin" -- \
    sysctl -qw net.ipv6.conf.rgC.forwarding=1
cap dump netconf --family 6 --match 1=i32:-1 --out "$out/netconf_v6_all.bin"
cap dump netconf --family 6 --match 1=i32:-2 --out "$out/netconf_v6_default.bin"
cap dump netconf --family 6 --match 1=i32:3 --out "$out/netconf_v6_rga.bin"
cap dump netconf --family 4 --match 1=i32:-1 --out "$out/netconf_v4_all.bin"
cap dump netconf --family 4 --match 1=i32:3 --out "$out/netconf_v4_rga.bin"

# --- for the model tests (netlink-packet-route parses these) ----------------
n ip -6 route add fd00:ecec:f::1/128 nexthop via fe80::2 dev rgA \
    nexthop via fe80::3 dev rgA nexthop via fe80::4 dev rgC
cap dump route --family 6 --type 24 --match 1=ip:fd00:ecec:f::1 --out "$out/route_v6_multipath3.bin"
n ip -6 route add fd00:ecec:f::2/128 nhid 10
cap dump route --family 6 --type 24 --match 1=ip:fd00:ecec:f::2 --out "$out/route_v6_nhid10.bin"
n ip link set rgB master rgbr0
n bridge link set dev rgB hairpin on
cap dump link --type 16 --match 3=str:rgB --out "$out/link_veth_bridge_port_hairpin.bin"
cap dump addr --family 6 --type 20 --match 1=ip:fd00:ecec:1::1 --out "$out/addr_v6_global.bin"

echo "fixtures written to $out on kernel $(uname -r)"

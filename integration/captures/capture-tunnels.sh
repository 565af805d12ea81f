#!/usr/bin/env bash
# Captures RTM_NEWLINK fixtures of IP tunnels (sit, ipip, gre, ip6tnl, ip6gre)
# for the tunnel_local_remote detector's tests, into OUTDIR as
# link_<what>_<series>.bin (series: 5.10, 6.1, ...).
#
# The machines' 6.18 kernel has no tunnel modules: run this inside an
# old-kernel guest with OUTDIR shared back to the host, as root:
#
#   out=$(mktemp -d)
#   integration/kernels/run --kernel 5.10 --share "$out" -- \
#       integration/captures/capture-tunnels.sh "$out"
#
# Works in a throwaway namespace rgtuncap-<pid> (deleted on exit). The sit
# tunnel to a local remote carries 3 IPv6 datagrams before its capture, so the
# fixture's IFLA_STATS64 shows what the kernel did with them (5.10: dropped,
# tx_carrier_errors; 5.17+: sent). A tunnel kind whose module is missing is
# skipped with a note. Prints one JSON line per fixture.
set -euo pipefail
{

here=$(cd "$(dirname "$0")" && pwd)
[[ $# -eq 1 && -d $1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
out=$(cd "$1" && pwd)
series=$(uname -r | cut -d. -f1,2)
ns=rgtuncap-$$
py=python3
[[ -x /usr/bin/python3 ]] && py=/usr/bin/python3

cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT

# Load the modules before the namespace exists, so their fallback devices
# (sit0, tunl0, gre0, ...) are there from the start and the ifindexes below
# do not depend on the order of the captures.
for m in sit ipip ip_gre ip6_tunnel ip6_gre; do modprobe "$m" 2>/dev/null || true; done
ip netns add "$ns"
n() { ip netns exec "$ns" "$@"; }
cap() { n "$py" "$here/nlcapture.py" "$@"; }

# Quiet new IPv6 interfaces (no router solicitations, no DAD) so the sit
# tunnel's counters move only for the probe datagrams.
n sh -c 'for k in router_solicitations dad_transmits accept_dad; do
             echo 0 >/proc/sys/net/ipv6/conf/default/$k; done'
n ip link set lo up
n ip addr add 10.0.0.1/32 dev lo
n ip addr add 10.0.0.2/32 dev lo
n ip -6 addr add fd00:5117:ffff::1/128 dev lo nodad
n ip -6 addr add fd00:5117:ffff::2/128 dev lo nodad

# save NAME DEV: dump the link DEV (AF_UNSPEC RTM_GETLINK, reply type 16).
save() {
    local f=$out/link_$1_$series.bin
    cap dump link --type 16 --match "3=str:$2" --out "$f" >/dev/null
    printf '{"kernel":"%s","fixture":"%s","dev":"%s","ifindex":%s,"tx_packets":%s,"tx_carrier_errors":%s}\n' \
        "$(uname -r)" "$(basename "$f")" "$2" "$(n cat "/sys/class/net/$2/ifindex")" \
        "$(n cat "/sys/class/net/$2/statistics/tx_packets")" \
        "$(n cat "/sys/class/net/$2/statistics/tx_carrier_errors")"
}
# try NAME DEV ip-link-add-args...: create the tunnel, capture it; skip when
# the kernel cannot create that kind.
try() {
    local name=$1 dev=$2
    shift 2
    if n ip link add "$dev" "$@" 2>/dev/null; then
        save "$name" "$dev"
    else
        printf '{"kernel":"%s","fixture":"link_%s_%s.bin","skipped":"cannot create: ip link add %s %s"}\n' \
            "$(uname -r)" "$name" "$series" "$dev" "$*"
    fi
}

# sit to a local remote (both ends are addresses on lo), up, with 3 IPv6
# datagrams sent over it.
if n ip link add rgsitlocal type sit remote 10.0.0.1 local 10.0.0.2 ttl 64 2>/dev/null; then
    n ip -6 addr add fd00:5117::1/64 dev rgsitlocal
    n ip link set rgsitlocal up
    sleep 0.5
    for i in 1 2 3; do
        n bash -c "echo probe-$i >/dev/udp/fd00:5117::2/9" 2>/dev/null || true
    done
    sleep 0.3
    save sit_local_remote rgsitlocal
else
    printf '{"kernel":"%s","skipped":"no sit support"}\n' "$(uname -r)"
fi
# sit to a remote that is not local (TEST-NET-1, no route), down.
try sit_remote rgsitremote type sit remote 192.0.2.1 local 10.0.0.2 ttl 64
# ipip to a non-local remote (TEST-NET-2).
try ipip rgipip type ipip remote 198.51.100.1 local 10.0.0.2
# gre to a local remote.
try gre_local_remote rggre type gre remote 10.0.0.1 local 10.0.0.2
# ip6ip6 tunnel to a local IPv6 remote.
try ip6tnl_local_remote rgip6tnl type ip6tnl mode ip6ip6 remote fd00:5117:ffff::1 local fd00:5117:ffff::2
# ip6gre to a non-local IPv6 remote (documentation prefix).
try ip6gre rgip6gre type ip6gre remote 2001:db8::1 local fd00:5117:ffff::2
exit 0
}

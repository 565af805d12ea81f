#!/usr/bin/env bash
# Field-notes hazard 3, measured: a sit (6in4) tunnel whose remote is a local
# address. Kernels before 5.17 (commit ed6ae5ca437d) drop the IPv6 traffic sent
# over it and count tx_carrier_errors; later kernels send it.
#
# Runs in a scratch network namespace of its own and prints one JSON line:
#   {"kernel":"5.10.0-46-amd64","remote_route":"local","sent":0,"tx_carrier_errors":3}
# "sent" and "tx_carrier_errors" are the link counters' deltas over the 3
# datagrams. Needs root and the sit module (absent on the 6.18 host: run it
# under integration/kernels/run --kernel 5.10|6.1). Exit 0 when measured, 1 when
# the lab could not be built.
set -euo pipefail
# The whole script is one block, parsed before it runs: editing the file (a git
# checkout) while a run is in flight cannot derail it.
{

count=3
ns=rgsitprobe-$$
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT

fail() {
    printf '{"kernel":"%s","error":"%s"}\n' "$(uname -r)" "$*"
    exit 1
}

ip netns add "$ns"
# Quiet the tunnel before it comes up (no router solicitations, no DAD), so the
# counters move only for our datagrams; deltas are taken anyway.
ip netns exec "$ns" sh -c '
    for k in router_solicitations dad_transmits accept_dad; do
        echo 0 >/proc/sys/net/ipv6/conf/default/$k
    done' 2>/dev/null || true
ip -n "$ns" link set lo up
# Both tunnel endpoints are local addresses of this namespace: the remote's route
# is RTN_LOCAL.
ip -n "$ns" addr add 10.0.0.1/32 dev lo
ip -n "$ns" addr add 10.0.0.2/32 dev lo
modprobe sit 2>/dev/null || true
ip -n "$ns" link add rgsit type sit remote 10.0.0.1 local 10.0.0.2 ttl 64 2>/dev/null ||
    fail "cannot create a sit link (no sit module on this kernel?)"
ip -n "$ns" addr add fd00:5117::1/64 dev rgsit
ip -n "$ns" link set rgsit up
remote_route=$(ip -n "$ns" -4 route get 10.0.0.1 | awk 'NR == 1 { print $1 }')

stat() { ip netns exec "$ns" cat "/sys/class/net/rgsit/statistics/$1"; }
sleep 0.5
tx0=$(stat tx_packets)
ce0=$(stat tx_carrier_errors)
# bash's /dev/udp: one fresh UDP socket per datagram, no python needed.
for i in $(seq "$count"); do
    ip netns exec "$ns" bash -c "echo probe-$i >/dev/udp/fd00:5117::2/9" 2>/dev/null || true
done
sleep 0.3
tx1=$(stat tx_packets)
ce1=$(stat tx_carrier_errors)

printf '{"kernel":"%s","remote_route":"%s","datagrams":%d,"sent":%d,"tx_carrier_errors":%d}\n' \
    "$(uname -r)" "$remote_route" "$count" "$((tx1 - tx0))" "$((ce1 - ce0))"
exit
}

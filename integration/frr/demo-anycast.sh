#!/usr/bin/env bash
# Demo: the Subnet-Router anycast hazard (field-notes.md, "Hazard 2") with real FRR.
#
#   integration/frr/demo-anycast.sh [--flavor debian|grpc]    (root; ~50 s)
#
# Two namespaces joined by a veth pair:
#   HV  fdc0:3489:e0fd::/64    (the all-zeros Subnet-Router anycast address of the /64)
#   VM  fdc0:3489:e0fd::1/64
# with an iBGP session (AS 65000) between their bgpd instances, started by frr-ns.
# Steps and what is expected:
#   1. session reaches Established                             (show bgp summary json)
#   2. VM: sysctl net.ipv6.conf.all.forwarding=1 -> kernel adds
#      "anycast fdc0:3489:e0fd:: dev <vm-if> table local"; VM: clear bgp *
#      -> the session does NOT come back within 25 s (VM's packets to HV go to lo)
#   3. VM: sysctl net.ipv6.conf.<vm-if>.forwarding=0 (all.forwarding stays 1)
#      -> the anycast entry goes away and the session is Established again (~s)
# Prints every observed state change with its time. Exit 0 when all three
# expectations held, 1 otherwise. Namespaces get unique names and are removed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
frr_ns=${here}/frr-ns
flavor=debian
[[ ${1:-} == --flavor ]] && flavor=${2:?}
stuck_window=${DEMO_STUCK_WINDOW:-25}
recover_window=${DEMO_RECOVER_WINDOW:-15}

[[ $(id -u) -eq 0 ]] || { echo "demo-anycast: run as root" >&2; exit 1; }

suffix=$$
vm=rg-vm-${suffix}
hv=rg-hv-${suffix}
vm_if=vm${suffix}
hv_if=hv${suffix}
# interface names are limited to 15 characters
vm_if=${vm_if:0:15} hv_if=${hv_if:0:15}
vm_addr=fdc0:3489:e0fd::1
hv_addr=fdc0:3489:e0fd::
tmp=$(mktemp -d)

cleanup() {
	"${frr_ns}" stop "${vm}" || true
	"${frr_ns}" stop "${hv}" || true
	ip netns del "${vm}" 2>/dev/null || true
	ip netns del "${hv}" 2>/dev/null || true
	rm -rf "${tmp}"
}
trap cleanup EXIT

t_start=$(date +%s.%N)
ts() { awk -v a="${t_start}" -v b="$(date +%s.%N)" 'BEGIN{printf "%6.1fs", b-a}'; }
log() { echo "[$(ts)] $*"; }
elapsed_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# --- topology (nothing is created in the host namespace: the veth is made inside VM
# with its peer placed straight into HV)
ip netns add "${vm}"
ip netns add "${hv}"
ip -n "${vm}" link add "${vm_if}" type veth peer name "${hv_if}" netns "${hv}"
ip -n "${vm}" addr add "${vm_addr}/64" dev "${vm_if}" nodad
ip -n "${hv}" addr add "${hv_addr}/64" dev "${hv_if}" nodad
ip -n "${vm}" link set "${vm_if}" up
ip -n "${hv}" link set "${hv_if}" up
# Start from a host-like VM, whatever the namespace defaults are.
ip netns exec "${vm}" sysctl -qw net.ipv6.conf.all.forwarding=0

bgp_conf() { # bgp_conf ROUTER_ID NEIGHBOR
	cat <<-EOF
		frr defaults traditional
		router bgp 65000
		 bgp router-id $1
		 no bgp default ipv4-unicast
		 neighbor $2 remote-as 65000
		 neighbor $2 timers connect 5
		 address-family ipv6 unicast
		  neighbor $2 activate
		 exit-address-family
		exit
	EOF
}
bgp_conf 10.255.0.1 "${hv_addr}" >"${tmp}/vm.conf"
bgp_conf 10.255.0.2 "${vm_addr}" >"${tmp}/hv.conf"

log "starting FRR (${flavor}) in ${vm} and ${hv}"
"${frr_ns}" start "${vm}" --flavor "${flavor}" --daemons zebra,bgpd --config "${tmp}/vm.conf"
"${frr_ns}" start "${hv}" --flavor "${flavor}" --daemons zebra,bgpd --config "${tmp}/hv.conf"

# State of VM's session to HV, from `show bgp summary json`.
peer_state() {
	"${frr_ns}" vtysh "${vm}" -c 'show bgp summary json' 2>/dev/null |
		python3 -c 'import json, sys
try:
    print(json.load(sys.stdin)["ipv6Unicast"]["peers"][sys.argv[1]]["state"])
except Exception:
    print("none")' "${hv_addr}"
}

# wait_state WANT SECONDS: poll every 0.5 s, print changes; 0 when WANT was reached.
wait_state() {
	local want=$1 limit=$2 t0 state last=""
	t0=$(date +%s.%N)
	while :; do
		state=$(peer_state)
		if [[ ${state} != "${last}" ]]; then
			log "  VM -> HV: ${state} (after $(elapsed_since "${t0}") s)"
			last=${state}
		fi
		[[ ${state} == "${want}" ]] && { waited=$(elapsed_since "${t0}"); return 0; }
		if awk -v a="${t0}" -v b="$(date +%s.%N)" -v l="${limit}" 'BEGIN{exit !(b-a >= l)}'; then
			waited=$(elapsed_since "${t0}")
			return 1
		fi
		sleep 0.5
	done
}

show_anycast() {
	local out
	out=$(ip -n "${vm}" -6 route show table local | grep '^anycast' | paste -sd ";" - || true)
	log "  VM local-table anycast routes: ${out:-none}"
	log "  VM route get ${hv_addr}: $(ip -n "${vm}" -6 route get "${hv_addr}" | head -n1)"
}

ok=0
log "step 1: waiting for the iBGP session"
if wait_state Established 60; then
	log "RESULT 1: Established after ${waited} s"
	"${frr_ns}" vtysh "${vm}" -c 'show bgp summary json' |
		python3 -c 'import json, sys
p = json.load(sys.stdin)["ipv6Unicast"]["peers"][sys.argv[1]]
print("  " + json.dumps({k: p.get(k) for k in ("state", "remoteAs", "peerUptime", "connectionsEstablished", "connectionsDropped")}))' "${hv_addr}"
else
	log "RESULT 1: FAILED, not Established within 60 s"
	exit 1
fi
show_anycast

log "step 2: VM sysctl net.ipv6.conf.all.forwarding=1, then clear bgp *"
ip netns exec "${vm}" sysctl -w net.ipv6.conf.all.forwarding=1
show_anycast
"${frr_ns}" vtysh "${vm}" -c 'clear bgp *'
sleep 1
if wait_state Established "${stuck_window}"; then
	log "RESULT 2: UNEXPECTED, Established again after ${waited} s"
	ok=1
else
	log "RESULT 2: as predicted, not Established within ${stuck_window} s (last state: $(peer_state))"
fi

log "step 3: VM sysctl net.ipv6.conf.${vm_if}.forwarding=0 (all.forwarding stays 1)"
ip netns exec "${vm}" sysctl -w "net.ipv6.conf.${vm_if}.forwarding=0"
log "  VM all.forwarding=$(ip netns exec "${vm}" sysctl -n net.ipv6.conf.all.forwarding)"
show_anycast
if wait_state Established "${recover_window}"; then
	log "RESULT 3: Established again ${waited} s after ${vm_if}.forwarding=0"
else
	log "RESULT 3: FAILED, not Established within ${recover_window} s"
	ok=1
fi

if ((ok == 0)); then
	log "demo-anycast: all three observations as in field-notes.md"
else
	log "demo-anycast: observations differ from field-notes.md"
fi
exit "${ok}"

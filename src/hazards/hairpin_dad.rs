//! `hairpin_dad`: a bridge port in hairpin (reflective relay) mode sends a
//! guest's own multicast back to it, including the Neighbor Solicitations
//! of its duplicate address detection. A guest without enhanced DAD
//! (RFC 7527 nonces: Linux before 4.10, `enhanced_dad=0`, other operating
//! systems) sees its own probe as a duplicate and marks its addresses
//! `dadfailed`: IPv6 silently stops working there.
//!
//! **Kernels.** The reflection happens on every kernel with hairpin mode;
//! whether a guest is hurt depends on the guest, which the host cannot see:
//! findings say so.
//!
//! **Evidence.** Hairpin ports (from link-info slave data and AF_BRIDGE
//! protinfo), whether the guard's reflection filter is installed on them,
//! and addresses in `dadfailed`/`tentative` state on this host.
//!
//! **Mitigations.** Hairpin off; or an nftables bridge-family rule, owned by
//! the guard in its own table, that drops IPv6 multicast (33:33:xx:xx:xx:xx)
//! frames leaving through the port they entered on. Side effect of the
//! filter: guests behind the same hairpin port (VEPA) no longer resolve each
//! other by IPv6 ND through the reflection; IPv4 and IPv6 unicast still flow.

use super::{Context, Detector, Finding, Mitigation, Severity, StagePlan};
use crate::model::{Link, Model};
use crate::policy::intent::Intent;

/// The detector.
pub struct HairpinDad;

/// The hazard's name.
pub const NAME: &str = "hairpin_dad";

fn bridge_of(m: &Model, l: &Link) -> String {
    l.master.map(|i| m.ifname(i)).unwrap_or_else(|| "?".into())
}

fn mitigations(port: &str) -> Vec<Mitigation> {
    vec![
        Mitigation {
            name: "reflection_filter",
            description: format!(
                "nftables: in table `bridge routeguard`, drop IPv6 multicast (33:33:*) frames that leave {port} \
                 after entering on {port}"
            ),
            side_effects: "guests behind the same hairpin port no longer resolve each other by IPv6 ND through \
                           the reflection; unicast and IPv4 are unaffected"
                .into(),
        },
        Mitigation {
            name: "hairpin_off",
            description: format!("bridge link set dev {port} hairpin off"),
            side_effects: "traffic between endpoints behind the port no longer returns through the bridge".into(),
        },
    ]
}

impl Detector for HairpinDad {
    fn name(&self) -> &'static str {
        NAME
    }

    fn current(&self, ctx: &Context<'_>) -> Vec<Finding> {
        let m = ctx.model;
        let mut out = Vec::new();
        for l in m.links.values().filter(|l| l.bridge_port.as_ref().is_some_and(|b| b.hairpin)) {
            let filtered = ctx.hairpin_filters.contains(&l.name);
            out.push(Finding {
                hazard: NAME,
                severity: if filtered { Severity::Info } else { Severity::Warning },
                summary: if filtered {
                    format!(
                        "hairpin on {} (bridge {}): reflected ND multicast is dropped by routeguard's filter",
                        l.name,
                        bridge_of(m, l)
                    )
                } else {
                    format!(
                        "hairpin on {} (bridge {}) reflects the guest's ND multicast; a guest without enhanced DAD \
                         marks its addresses dadfailed (whether it has it cannot be seen from the host)",
                        l.name,
                        bridge_of(m, l)
                    )
                },
                breaks: usize::from(!filtered),
                evidence: vec![format!(
                    "{}: bridge port of {}, hairpin on, reflection filter {}",
                    l.name,
                    bridge_of(m, l),
                    if filtered { "installed" } else { "absent" }
                )],
                mitigations: if filtered { Vec::new() } else { mitigations(&l.name) },
                stage: (!filtered).then(|| StagePlan::ReflectionFilter { port: l.name.clone() }),
            });
        }
        let failed: Vec<String> = m
            .addresses
            .values()
            .filter(|a| a.dad_failed())
            .map(|a| {
                let dev = m.ifname(a.key.ifindex);
                let addr = format!("{}/{}", a.key.address, a.key.prefix_len);
                format!(
                    "{addr} on {dev} failed DAD; once the cause is gone retry with: \
                     ip addr del {addr} dev {dev} && ip addr add {addr} dev {dev}"
                )
            })
            .collect();
        if !failed.is_empty() {
            out.push(Finding {
                hazard: NAME,
                severity: Severity::Warning,
                summary: format!("{} address(es) on this host failed duplicate address detection", failed.len()),
                breaks: failed.len(),
                evidence: failed,
                mitigations: Vec::new(),
                stage: None,
            });
        }
        out
    }

    fn evaluate(&self, ctx: &Context<'_>, intent: &Intent) -> Vec<Finding> {
        let Intent::LinkHairpin { dev, on: true } = intent else { return Vec::new() };
        let Some(l) = ctx.model.links.values().find(|l| &l.name == dev) else { return Vec::new() };
        if l.bridge_port.as_ref().is_some_and(|b| b.hairpin) || ctx.hairpin_filters.contains(dev) {
            return Vec::new();
        }
        vec![Finding {
            hazard: NAME,
            severity: Severity::Critical,
            summary: format!(
                "hairpin on {dev} (bridge {}) would reflect the guest's ND multicast: a guest without enhanced \
                 DAD marks its addresses dadfailed",
                bridge_of(ctx.model, l)
            ),
            breaks: 1,
            evidence: vec![format!("{dev}: bridge port of {}, hairpin off now", bridge_of(ctx.model, l))],
            mitigations: mitigations(dev),
            stage: Some(StagePlan::ReflectionFilter { port: dev.clone() }),
        }]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::hazards::KernelFacts;
    use crate::model::flows::FlowTable;
    use crate::model::{Address, AddressKey, BridgePort, Change, IFA_F_DADFAILED, IFF_UP};

    fn model(hairpin: bool) -> Model {
        let mut m = Model::default();
        let mut ev = vec![];
        let link = |ifindex, name: &str, master| Link {
            ifindex,
            name: name.into(),
            kind: Some("veth".into()),
            master,
            flags: IFF_UP,
            mtu: 1500,
            bridge_port: None,
            tunnel: None,
            tx_packets: 0,
            tx_carrier_errors: 0,
        };
        m.apply(Change::Link(link(2, "br0", None)), &mut ev);
        m.apply(Change::Link(link(3, "vnet0", Some(2))), &mut ev);
        m.apply(Change::BridgePort(3, Some(BridgePort { hairpin })), &mut ev);
        m
    }

    const FACTS: KernelFacts = KernelFacts {
        ecmp_v6_affected: None,
        ecmp_v4_affected: None,
        sit_local_remote_drops: None,
        kernel_version: None,
    };

    #[test]
    fn hairpin_without_the_filter_is_a_warning_with_a_stage_plan() {
        let m = model(true);
        let (flows, none) = (FlowTable::default(), BTreeSet::new());
        let ctx = Context { model: &m, flows: &flows, kernel: &FACTS, peers: &[], hairpin_filters: &none };
        let f = HairpinDad.current(&ctx);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].stage, Some(StagePlan::ReflectionFilter { port: "vnet0".into() }));
        assert!(f[0].summary.contains("cannot be seen from the host"));
        let filtered = BTreeSet::from(["vnet0".to_string()]);
        let ctx = Context { model: &m, flows: &flows, kernel: &FACTS, peers: &[], hairpin_filters: &filtered };
        let f = HairpinDad.current(&ctx);
        assert_eq!(f[0].severity, Severity::Info);
        assert_eq!(f[0].stage, None);
    }

    #[test]
    fn turning_hairpin_on_is_critical_and_dadfailed_addresses_get_the_retry_command() {
        let mut m = model(false);
        let (flows, none) = (FlowTable::default(), BTreeSet::new());
        {
            let ctx = Context { model: &m, flows: &flows, kernel: &FACTS, peers: &[], hairpin_filters: &none };
            assert!(HairpinDad.current(&ctx).is_empty());
            let on = Intent::LinkHairpin { dev: "vnet0".into(), on: true };
            let f = HairpinDad.evaluate(&ctx, &on);
            assert_eq!(f[0].severity, Severity::Critical);
            let off = Intent::LinkHairpin { dev: "vnet0".into(), on: false };
            assert!(HairpinDad.evaluate(&ctx, &off).is_empty());
            let unknown = Intent::LinkHairpin { dev: "nope".into(), on: true };
            assert!(HairpinDad.evaluate(&ctx, &unknown).is_empty());
        }
        m.apply(
            Change::Address(Address {
                key: AddressKey { ifindex: 3, address: "fd00:99::5".parse().unwrap(), prefix_len: 64 },
                flags: IFA_F_DADFAILED,
                scope: 0,
            }),
            &mut vec![],
        );
        let ctx = Context { model: &m, flows: &flows, kernel: &FACTS, peers: &[], hairpin_filters: &none };
        let f = HairpinDad.current(&ctx);
        assert!(f[0].evidence[0].contains("ip addr del fd00:99::5/64 dev vnet0 && ip addr add fd00:99::5/64 dev vnet0"));
    }
}

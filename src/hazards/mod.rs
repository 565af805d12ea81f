//! Hazard detectors: one file per hazard, each a [`Detector`] over
//! `(model, change)` that returns [`Finding`]s with evidence and the
//! mitigations it knows. Pure: no I/O, no clock; the core supplies the
//! model, the flow inventory and what the self-test measured.

pub mod ecmp_rehash;
pub mod hairpin_dad;
pub mod subnet_anycast;
pub mod tunnel_local_remote;

use serde::Serialize;

use crate::model::flows::FlowTable;
use crate::model::Model;
use crate::policy::intent::Intent;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing breaks.
    Info,
    /// Something is exposed and will break on a later event.
    Warning,
    /// The change breaks something.
    Critical,
}

impl Severity {
    /// Parses `info|warning|critical`.
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// A mitigation a detector knows for its hazard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mitigation {
    /// Stable name (`delay`, `hash_fields`, `resilient`, `bind_source`, ...).
    pub name: &'static str,
    /// What it does.
    pub description: String,
    /// What else it changes.
    pub side_effects: String,
}

/// One hazard found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Detector name.
    pub hazard: &'static str,
    /// Severity.
    pub severity: Severity,
    /// One line for humans.
    pub summary: String,
    /// How many things break (flows, sessions) if this goes ahead.
    pub breaks: usize,
    /// Evidence, one item per line (flows, peers, prefixes, counters).
    pub evidence: Vec<String>,
    /// Mitigations the detector knows.
    pub mitigations: Vec<Mitigation>,
    /// The safe sequence this detector would stage, when it has one.
    pub stage: Option<StagePlan>,
}

/// A staged plan a detector can execute around a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StagePlan {
    /// Apply the change, then at once set IPv6 forwarding off on these
    /// interfaces (packets are still forwarded; their anycast is dropped),
    /// then verify the anycast left them.
    DisableForwardingOn {
        /// Interface names.
        ifaces: Vec<String>,
    },
    /// Install the guard's reflection filter for a bridge port, then apply
    /// the change (hairpin on), then verify the filter.
    ReflectionFilter {
        /// The bridge port.
        port: String,
    },
}

/// What the self-test measured on the running kernel, as the detectors
/// need it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelFacts {
    /// Whether an identical multipath replace broke IPv6 flows under the
    /// namespace's current IPv6 hash setting; `None` when not measured.
    pub ecmp_v6_affected: Option<bool>,
    /// The same for IPv4.
    pub ecmp_v4_affected: Option<bool>,
    /// Whether IPv6 over a sit tunnel whose remote is a local address is
    /// dropped (kernels before 5.17); `None` when not measured (no sit).
    pub sit_local_remote_drops: Option<bool>,
    /// The running kernel's (major, minor) version: what detectors fall
    /// back on, and say so, where the self-test has not measured (yet).
    pub kernel_version: Option<(u32, u32)>,
}

/// (major, minor) of the running kernel, read once.
pub fn running_kernel_version() -> Option<(u32, u32)> {
    static V: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *V.get_or_init(|| parse_kernel_version(&crate::kernel_release()))
}

/// (major, minor) of a kernel release string such as `5.10.0-46-amd64`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Everything a detector may look at.
pub struct Context<'a> {
    /// The kernel model.
    pub model: &'a Model,
    /// The flow inventory.
    pub flows: &'a FlowTable,
    /// Self-test results.
    pub kernel: &'a KernelFacts,
    /// BGP peers (FRR and live sessions).
    pub peers: &'a [crate::model::peers::Peer],
    /// Bridge ports with the guard's hairpin reflection filter installed.
    pub hairpin_filters: &'a std::collections::BTreeSet<String>,
}

/// A hazard detector.
pub trait Detector: Send + Sync {
    /// Stable name, used in config and findings.
    fn name(&self) -> &'static str;
    /// Hazards present now, without any change.
    fn current(&self, ctx: &Context<'_>) -> Vec<Finding>;
    /// What `intent` would break if applied now.
    fn evaluate(&self, ctx: &Context<'_>, intent: &Intent) -> Vec<Finding>;
}

/// Every detector, in a stable order.
pub fn all() -> Vec<Box<dyn Detector>> {
    vec![
        Box::new(ecmp_rehash::EcmpRehash),
        Box::new(subnet_anycast::SubnetAnycast),
        Box::new(hairpin_dad::HairpinDad),
        Box::new(tunnel_local_remote::TunnelLocalRemote),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions_parse() {
        assert_eq!(super::parse_kernel_version("5.10.0-46-amd64"), Some((5, 10)));
        assert_eq!(super::parse_kernel_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(super::parse_kernel_version("6.1"), Some((6, 1)));
        assert_eq!(super::parse_kernel_version("garbage"), None);
        assert_eq!(super::parse_kernel_version(""), None);
    }
}

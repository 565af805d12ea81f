//! Policy: turns findings into one verdict per change.
//!
//! | verdict | meaning |
//! |---|---|
//! | allow | apply now |
//! | delay | hold until nothing would break, or `max_delay` passes (then apply or expire per `on_timeout`) |
//! | stage | apply a safe sequence: mitigation first, then the change, then verify |
//! | veto  | refuse, with the reasons and the fixes |
//!
//! A hazard in `observe` mode never blocks: its verdict is reported as what
//! *would* have happened (audit mode), and the change is allowed.

pub mod intent;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hazards::{ecmp_rehash, hairpin_dad, subnet_anycast, tunnel_local_remote, Finding, Severity};

/// Whether a hazard's verdicts are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report what would happen; allow the change.
    Observe,
    /// Act on the verdict.
    #[default]
    Enforce,
}

/// What to do with a change that would break something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse it.
    #[default]
    Veto,
    /// Hold it until nothing would break.
    Delay,
    /// Apply it behind a mitigation.
    Stage,
}

/// What a delayed change does when `max_delay` passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Drop the change (nothing applied).
    #[default]
    Expire,
    /// Apply it anyway.
    Apply,
}

/// The ECMP stage plan's mitigation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageMitigation {
    /// Switch to a hash without the source port, then apply.
    #[default]
    HashFields,
    /// Convert to a resilient nexthop group first.
    Resilient,
}

/// `[hazards.ecmp_rehash]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EcmpPolicy {
    /// observe | enforce (applies to proposals; unplanned changes are
    /// always only observed and reported).
    pub mode: Mode,
    /// veto | delay | stage.
    pub action: Action,
    /// Flows allowed to break before the action applies.
    pub threshold: usize,
    /// Longest a delayed or staged change waits.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// What a delay does when `max_delay` passes.
    pub on_timeout: OnTimeout,
    /// hash_fields | resilient.
    pub stage_mitigation: StageMitigation,
    /// `fib_multipath_hash_fields` the hash_fields stage sets (with policy 3).
    pub hash_fields: u32,
}

impl Default for EcmpPolicy {
    fn default() -> Self {
        EcmpPolicy {
            mode: Mode::Enforce,
            action: Action::Veto,
            threshold: 0,
            max_delay: Duration::from_secs(600),
            on_timeout: OnTimeout::Expire,
            stage_mitigation: StageMitigation::HashFields,
            hash_fields: 0x000e,
        }
    }
}

/// `[hazards.subnet_anycast]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnycastPolicy {
    /// observe | enforce (for proposals).
    pub mode: Mode,
    /// veto | stage (delay cannot help: the conflict does not drain).
    pub action: Action,
    /// When forwarding was turned on behind the guard's back over a peer,
    /// turn it off on the peering interfaces at once.
    pub remediate: bool,
    /// 1-99: the remediation's fast path (the forwarding reflex thread)
    /// runs `SCHED_FIFO` at this priority (needs CAP_SYS_NICE); 0 (the
    /// default): normal scheduling.
    pub realtime_priority: u8,
}

impl Default for AnycastPolicy {
    fn default() -> Self {
        AnycastPolicy { mode: Mode::Enforce, action: Action::Veto, remediate: true, realtime_priority: 0 }
    }
}

/// `[hazards.hairpin_dad]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HairpinPolicy {
    /// observe | enforce (for proposals).
    pub mode: Mode,
    /// veto | stage.
    pub action: Action,
    /// When hairpin is turned on behind the guard's back, install the
    /// reflection filter at once (and remove it when hairpin goes off).
    pub remediate: bool,
}

impl Default for HairpinPolicy {
    fn default() -> Self {
        HairpinPolicy { mode: Mode::Enforce, action: Action::Stage, remediate: true }
    }
}

/// `[hazards.tunnel_local_remote]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelPolicy {
    /// observe | enforce (for proposals).
    pub mode: Mode,
    /// veto only: no stage plan exists, and a delay cannot help (the
    /// remote stays local).
    pub action: Action,
}

impl Default for TunnelPolicy {
    fn default() -> Self {
        TunnelPolicy { mode: Mode::Enforce, action: Action::Veto }
    }
}

/// `[hazards]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HazardsConfig {
    /// ECMP re-hash.
    pub ecmp_rehash: EcmpPolicy,
    /// Subnet-Router anycast.
    pub subnet_anycast: AnycastPolicy,
    /// Hairpin DAD.
    pub hairpin_dad: HairpinPolicy,
    /// IP tunnel to a local remote.
    pub tunnel_local_remote: TunnelPolicy,
}

impl HazardsConfig {
    /// Relations types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.tunnel_local_remote.action != Action::Veto {
            return Err("key `hazards.tunnel_local_remote.action`: only \"veto\" is supported (no stage plan \
                        exists, and a delay cannot help: the remote stays local)"
                .into());
        }
        if self.hairpin_dad.action == Action::Delay {
            return Err("key `hazards.hairpin_dad.action`: \"delay\" cannot help; use \"veto\" or \"stage\"".into());
        }
        if self.subnet_anycast.realtime_priority > 99 {
            return Err(format!(
                "key `hazards.subnet_anycast.realtime_priority`: {} is not a SCHED_FIFO priority (1-99, or 0 for \
                 normal scheduling)",
                self.subnet_anycast.realtime_priority
            ));
        }
        if self.subnet_anycast.action == Action::Delay {
            return Err("key `hazards.subnet_anycast.action`: \"delay\" cannot help (the conflict does not drain \
                        by itself); use \"veto\" or \"stage\""
                .into());
        }
        let e = &self.ecmp_rehash;
        // The connect-time lookup of an IPv6 socket hashes neither its real
        // source address nor its source port (measured by the self-test on
        // 6.18: fields with either moved 23-25 of 30 flows, 0x000e none).
        if e.hash_fields & 0x0011 != 0 {
            return Err(format!(
                "key `hazards.ecmp_rehash.hash_fields` = {:#06x} includes the source address (0x0001) or source \
                 port (0x0010), which differ between a socket's first route lookup and later ones; use e.g. \
                 0x000e (dst, proto, flowlabel)",
                e.hash_fields
            ));
        }
        if e.hash_fields == 0 {
            return Err("key `hazards.ecmp_rehash.hash_fields` must select at least one field".into());
        }
        Ok(())
    }
}

/// The outcome for one change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    /// Apply now.
    Allow,
    /// Hold until nothing would break, at most `max_wait`.
    Delay {
        /// Longest wait.
        #[serde(with = "humantime_serde")]
        max_wait: Duration,
        /// What is awaited.
        reason: String,
    },
    /// Apply behind a mitigation.
    Stage {
        /// What the executor does.
        #[serde(skip)]
        plan: Staging,
        /// The plan, in order.
        steps: Vec<String>,
        /// Why.
        reason: String,
        /// What the plan changes besides the change itself.
        side_effects: Vec<String>,
    },
    /// Refuse.
    Veto {
        /// Why.
        reasons: Vec<String>,
        /// What would make it safe.
        fixes: Vec<String>,
    },
}

impl Verdict {
    /// `allow`, `delay`, `stage` or `veto`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Delay { .. } => "delay",
            Verdict::Stage { .. } => "stage",
            Verdict::Veto { .. } => "veto",
        }
    }

    /// How much it holds a change back: allow < delay < stage < veto (the
    /// order in which [`decide`] lets one action win over another).
    pub fn strictness(&self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Delay { .. } => 1 + rank(Action::Delay),
            Verdict::Stage { .. } => 1 + rank(Action::Stage),
            Verdict::Veto { .. } => 1 + rank(Action::Veto),
        }
    }
}

/// The executable form of a stage verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staging {
    /// Wait until no local flow rides an IPv6 multipath route, switch to
    /// policy 3 with these hash fields, then apply.
    HashFields(u32),
    /// Apply, then at once turn IPv6 forwarding off on these interfaces and
    /// verify their anycast left.
    DisableForwardingOn(Vec<String>),
    /// Install the hairpin reflection filter for this port, then apply.
    ReflectionFilter(String),
    /// Wait until no local flow rides the changed route, then install the
    /// change as a resilient nexthop group (members as nexthop objects) and
    /// point the route at it.
    ResilientGroup,
}

/// Verdict plus the findings behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What happens.
    pub verdict: Verdict,
    /// In observe mode: what would have happened if enforced.
    pub would_be: Option<Verdict>,
    /// All findings, blocking or not.
    pub findings: Vec<Finding>,
}

impl Decision {
    /// What an operator's approval amounts to: apply, whatever was found.
    pub fn approved() -> Decision {
        Decision { verdict: Verdict::Allow, would_be: None, findings: Vec::new() }
    }
}

fn rank(a: Action) -> u8 {
    match a {
        Action::Delay => 0,
        Action::Stage => 1,
        Action::Veto => 2,
    }
}

/// Decides a change from its findings.
pub fn decide(findings: Vec<Finding>, cfg: &HazardsConfig) -> Decision {
    let mut enforced: Option<Verdict> = None;
    let mut observed: Option<Verdict> = None;
    let blocking: Vec<&Finding> = findings.iter().filter(|f| f.severity == Severity::Critical).collect();
    // One hazard today; the loop picks the strictest action when more
    // hazards block the same change.
    let mut best: Option<(Action, Mode)> = None;
    let mut detector_stage: Option<&crate::hazards::StagePlan> = None;
    for f in &blocking {
        let (mode, action, threshold) = match f.hazard {
            ecmp_rehash::NAME => (cfg.ecmp_rehash.mode, cfg.ecmp_rehash.action, cfg.ecmp_rehash.threshold),
            subnet_anycast::NAME => (cfg.subnet_anycast.mode, cfg.subnet_anycast.action, 0),
            hairpin_dad::NAME => (cfg.hairpin_dad.mode, cfg.hairpin_dad.action, 0),
            tunnel_local_remote::NAME => (cfg.tunnel_local_remote.mode, cfg.tunnel_local_remote.action, 0),
            _ => (Mode::Enforce, Action::Veto, 0),
        };
        if action == Action::Stage && f.stage.is_some() {
            detector_stage = f.stage.as_ref();
        }
        if f.breaks <= threshold {
            continue;
        }
        let key = (action, mode);
        best = Some(match best {
            Some(b) if rank(b.0) >= rank(action) && (b.1 == Mode::Enforce || mode == Mode::Observe) => b,
            _ => key,
        });
    }
    if let Some((action, mode)) = best {
        let reasons: Vec<String> = blocking.iter().map(|f| f.summary.clone()).collect();
        let v = match (action, detector_stage.cloned()) {
            (Action::Veto, _) => Verdict::Veto {
                reasons,
                fixes: blocking
                    .iter()
                    .flat_map(|f| f.mitigations.iter().map(|m| format!("{}: {}", m.name, m.description)))
                    .collect(),
            },
            (Action::Delay, _) => Verdict::Delay {
                max_wait: cfg.ecmp_rehash.max_delay,
                reason: format!("waiting until nothing would break: {}", reasons.join("; ")),
            },
            (Action::Stage, Some(crate::hazards::StagePlan::DisableForwardingOn { ifaces })) => Verdict::Stage {
                steps: vec![
                    "apply the change (forwarding on)".into(),
                    format!("at once set net.ipv6.conf.{{{}}}.forwarding=0", ifaces.join(",")),
                    "verify the Subnet-Router anycast left those interfaces (/proc/net/anycast6)".into(),
                ],
                reason: reasons.join("; "),
                side_effects: vec![format!(
                    "{} act as hosts for RA (accept_ra) and the NA router flag; packets are still forwarded",
                    ifaces.join(", ")
                )],
                plan: Staging::DisableForwardingOn(ifaces),
            },
            (Action::Stage, Some(crate::hazards::StagePlan::ReflectionFilter { port })) => Verdict::Stage {
                steps: vec![
                    format!(
                        "install routeguard's reflection filter for {port} (table bridge routeguard: drop 33:33:* \
                         frames leaving {port} after entering on it)"
                    ),
                    "apply the change (hairpin on)".into(),
                    "verify the filter is in place".into(),
                ],
                reason: reasons.join("; "),
                side_effects: vec![format!(
                    "guests behind {port} no longer resolve each other by IPv6 ND through the reflection; unicast \
                     and IPv4 are unaffected"
                )],
                plan: Staging::ReflectionFilter(port),
            },
            (Action::Stage, None) if cfg.ecmp_rehash.stage_mitigation == StageMitigation::Resilient => Verdict::Stage {
                plan: Staging::ResilientGroup,
                steps: vec![
                    "wait until no established local flow rides the route being changed".into(),
                    "create nexthop objects for the new members and a resilient nexthop group of them".into(),
                    "point the route at the group (this is the change)".into(),
                    "verify the route uses the group".into(),
                ],
                reason: reasons.join("; "),
                side_effects: vec![
                    "the route uses nexthop objects from now on: a later member change re-maps only the buckets of \
                     the members that change (forwarded traffic keeps its paths)"
                        .into(),
                    "it does not fix the source-port problem (field-notes): a later identical replace still moves \
                     local flows whose connect-time lookup chose another member; the guard keeps judging them"
                        .into(),
                ],
            },
            (Action::Stage, None) => Verdict::Stage {
                plan: Staging::HashFields(cfg.ecmp_rehash.hash_fields),
                steps: vec![
                    "wait until no established local flow rides an IPv6 multipath route (switching the hash \
                     re-maps every such flow at its next invalidation)"
                        .into(),
                    format!(
                        "set net.ipv6.fib_multipath_hash_policy=3 and net.ipv6.fib_multipath_hash_fields={:#06x}",
                        cfg.ecmp_rehash.hash_fields
                    ),
                    "apply the change".into(),
                    "verify the hash settings and the route".into(),
                ],
                reason: reasons.join("; "),
                side_effects: vec![
                    "the multipath hash policy is namespace-wide: forwarded IPv6 traffic is hashed without source \
                     address and ports (the flow label keeps entropy)"
                        .into(),
                ],
            },
        };
        if mode == Mode::Enforce {
            enforced = Some(v);
        } else {
            observed = Some(v);
        }
    }
    Decision { verdict: enforced.unwrap_or(Verdict::Allow), would_be: observed, findings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hazards::Finding;

    fn finding(sev: Severity, breaks: usize) -> Finding {
        Finding {
            hazard: ecmp_rehash::NAME,
            severity: sev,
            summary: "moves 3 flows".into(),
            breaks,
            evidence: vec![],
            mitigations: vec![],
            stage: None,
        }
    }

    #[test]
    fn nothing_critical_is_allowed() {
        let d = decide(vec![finding(Severity::Warning, 5)], &HazardsConfig::default());
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.findings.len(), 1);
        assert_eq!(decide(vec![], &HazardsConfig::default()).verdict, Verdict::Allow);
    }

    #[test]
    fn actions_map_to_verdicts() {
        let mut cfg = HazardsConfig::default();
        assert_eq!(decide(vec![finding(Severity::Critical, 3)], &cfg).verdict.kind(), "veto");
        cfg.ecmp_rehash.action = Action::Delay;
        let d = decide(vec![finding(Severity::Critical, 3)], &cfg);
        assert!(matches!(d.verdict, Verdict::Delay { max_wait, .. } if max_wait == Duration::from_secs(600)));
        cfg.ecmp_rehash.action = Action::Stage;
        let d = decide(vec![finding(Severity::Critical, 3)], &cfg);
        match d.verdict {
            Verdict::Stage { steps, side_effects, .. } => {
                assert!(steps[1].contains("fib_multipath_hash_fields=0x000e"));
                assert!(side_effects[0].contains("namespace-wide"));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn threshold_and_observe_mode() {
        let mut cfg = HazardsConfig::default();
        cfg.ecmp_rehash.threshold = 3;
        assert_eq!(decide(vec![finding(Severity::Critical, 3)], &cfg).verdict, Verdict::Allow);
        assert_eq!(decide(vec![finding(Severity::Critical, 4)], &cfg).verdict.kind(), "veto");
        cfg.ecmp_rehash.mode = Mode::Observe;
        let d = decide(vec![finding(Severity::Critical, 4)], &cfg);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.would_be.unwrap().kind(), "veto");
    }

    #[test]
    fn validation_rejects_unsafe_or_unsupported_settings() {
        let mut cfg = HazardsConfig::default();
        assert!(cfg.validate().is_ok());
        cfg.ecmp_rehash.hash_fields = 0x0037;
        assert!(cfg.validate().unwrap_err().contains("source port"));
        cfg.ecmp_rehash.hash_fields = 0x000f;
        assert!(cfg.validate().unwrap_err().contains("source address"));
        cfg.ecmp_rehash.hash_fields = 0x000e;
        cfg.ecmp_rehash.stage_mitigation = StageMitigation::Resilient;
        assert!(cfg.validate().is_ok(), "resilient is a supported stage plan");
    }

    #[test]
    fn tunnel_local_remote_vetoes_and_observes_and_only_vetoes() {
        let f = Finding { hazard: tunnel_local_remote::NAME, ..finding(Severity::Critical, 1) };
        let mut cfg = HazardsConfig::default();
        assert_eq!(cfg.tunnel_local_remote.action, Action::Veto);
        assert_eq!(decide(vec![f.clone()], &cfg).verdict.kind(), "veto");
        cfg.tunnel_local_remote.mode = Mode::Observe;
        let d = decide(vec![f.clone()], &cfg);
        assert_eq!((d.verdict.kind(), d.would_be.map(|v| v.kind())), ("allow", Some("veto")));
        // Info (an unaffected kernel) never blocks.
        let cfg = HazardsConfig::default();
        assert_eq!(decide(vec![Finding { severity: Severity::Info, ..f }], &cfg).verdict, Verdict::Allow);
        for action in [Action::Stage, Action::Delay] {
            let mut cfg = HazardsConfig::default();
            cfg.tunnel_local_remote.action = action;
            assert!(cfg.validate().unwrap_err().contains("hazards.tunnel_local_remote.action"));
        }
    }
}

//! ECMP re-hash probe (field notes, hazard 1): does an identical replace of
//! a multipath route break established, locally-originated TCP flows?
//!
//! Lab, one per setting: a router namespace R and three node namespaces
//! N1..N3, each joined to R by its own veth pair (`rg1`..`rg3` in R with
//! `fd00:ecec:<i>::1/64`, `rgup` in node i with `::2`; IPv4: `198.18.<i>.1/24`
//! and `.2`). Every node holds the same anycast addresses on `lo`
//! (`fd00:ecec:f::1` .. `::<d>` as /128, or `198.18.255.1` .. `.<d>` as /32)
//! and runs a TCP echo server; R routes each anycast address over a 3-way
//! multipath route and has the hash setting under test. R opens
//! `connections` TCP connections, spread round-robin over the `d`
//! destinations, from unbound sockets (no bind before connect: that is the
//! point), checks that each echoes, replaces every multipath route with an
//! identical one (`ip route replace`, same nexthops, one `ip -batch`) and
//! sends one more message on each connection. A connection is *broken* when
//! that message fails: a reset (the node that now receives the flow has no
//! socket for it), an error, or no echo within the timeout.
//!
//! Why several destinations: under a hash without ports every flow between
//! one source and one destination hashes alike, so one destination measures
//! a single coin toss (all of its flows break, or none). With `d` (up to
//! [`MAX_DESTINATIONS`]) destinations a setting that can break flows shows
//! it unless all `d` tosses come out lucky. R's `fib_multipath_hash_seed`
//! is fixed to [`HASH_SEED`] (where the kernel has it, >= 6.11) so a
//! kernel's result does not change from boot to boot.
//!
//! Settings ([`host_settings`]): IPv6 hash policy 0, IPv6 policy 1, IPv6
//! policy 3 with the host's own `net.ipv6.fib_multipath_hash_fields`
//! (measured even when the host's policy is not 3, with a note saying so),
//! and IPv4 policy 1. Settings are only ever written inside the lab's R.
//!
//! Measured on Linux 6.18 (30 connections, 10 destinations): IPv6 policy 1
//! breaks about two thirds of the flows (each flow's first route lookup
//! hashes a random source port, later lookups the real one); IPv6 policy 0
//! breaks all flows of about two thirds of the destinations (the first
//! lookup hashes source address `::`, later lookups the real source);
//! policy 3 breaks flows whenever the fields include the source port or the
//! source address, and none when they include neither (e.g. 0x0026 or
//! 0x000E); IPv4 breaks none. The field notes' "policy 0: 0/60" was one
//! lucky destination.
//!
//! A setting the kernel cannot run (missing sysctl, rejected value, no veth,
//! no multipath route) yields an [`EcmpProbe`] with `skipped: Some(reason)`,
//! `broken: 0` and `affected: false`: consumers must look at `skipped`
//! before reading `affected` as "safe".

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::netns::{self, ip, Netns};
use super::{SelftestError, SelftestOptions};

/// TCP port of the nodes' echo servers.
const ECHO_PORT: u16 = 7707;

/// Safety net: an echo server thread ends after this long even if its lab
/// never told it to stop.
const SERVER_MAX_LIFE: Duration = Duration::from_secs(300);

/// How long a node's echo server may take to start listening.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for R's link-local addresses to settle.
const LINK_LOCAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every `rgN` link of namespace `ns` has a link-local IPv6
/// address that is no longer tentative, then a little longer for the
/// kernel's follow-up work on it.
fn wait_link_locals(ns: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let out = ip(&["-n", ns, "-j", "-6", "addr", "show", "scope", "link"], None)?;
        if link_locals_settled(&out, NODES) {
            std::thread::sleep(Duration::from_millis(50));
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!("link-local addresses in {ns} did not settle within {timeout:?}: {out}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `ip -j -6 addr show scope link` lists a non-tentative address
/// on each of rg1..rgN.
fn link_locals_settled(json: &str, links: usize) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return false };
    (1..=links).all(|i| {
        let name = format!("rg{i}");
        v.as_array().into_iter().flatten().any(|l| {
            l["ifname"] == name.as_str()
                && l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["scope"] == "link" && a["tentative"] != true && a["dadfailed"] != true)
        })
    })
}

/// Number of nodes (multipath members) in a lab.
const NODES: usize = 3;

/// Most anycast destinations a lab spreads its connections over.
pub const MAX_DESTINATIONS: u32 = 10;

/// `net.ipv4.fib_multipath_hash_seed` written in R (it seeds the IPv6 hash
/// too), so that results are the same on every boot of a kernel.
pub const HASH_SEED: u32 = 0x5247_5354;

/// `fib_multipath_hash_fields` bit: source address.
pub const FIELD_SRC_IP: u32 = 0x0001;
/// `fib_multipath_hash_fields` bit: source port.
pub const FIELD_SRC_PORT: u32 = 0x0010;

/// One multipath hash setting to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcmpSetting {
    /// Address family: 4 or 6.
    pub family: u8,
    /// `net.ipv{family}.fib_multipath_hash_policy` written in the lab.
    pub policy: u32,
    /// `net.ipv{family}.fib_multipath_hash_fields` written in the lab
    /// (meaningful with policy 3; `None` for the other policies, or when the
    /// host kernel has no such sysctl, in which case the probe is skipped).
    pub fields: Option<u32>,
    /// Carried into the probe's result (e.g. how the setting relates to the
    /// host's own).
    pub note: Option<String>,
}

impl EcmpSetting {
    /// A setting with no fields and no note.
    pub fn new(family: u8, policy: u32) -> EcmpSetting {
        EcmpSetting { family, policy, fields: None, note: None }
    }

    /// Policy 3 (custom fields) for `family`.
    pub fn custom(family: u8, fields: u32) -> EcmpSetting {
        EcmpSetting { family, policy: 3, fields: Some(fields), note: None }
    }

    /// Human name: "ipv6 policy 1", "ipv6 policy 3 fields 0x0037", "ipv4 policy 1".
    pub fn name(&self) -> String {
        match (self.policy, self.fields) {
            (3, Some(f)) => format!("ipv{} policy 3 fields {f:#06x}", self.family),
            (p, _) => format!("ipv{} policy {p}", self.family),
        }
    }
}

/// What one setting did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcmpProbe {
    /// The setting's name, e.g. "ipv6 policy 3 fields 0x0037".
    pub setting: String,
    /// Address family: 4 or 6.
    pub family: u8,
    /// The hash policy measured.
    pub policy: u32,
    /// The hash fields measured (policy 3 only).
    pub fields: Option<u32>,
    /// Connections opened (and checked to echo) before the replace.
    pub connections: u32,
    /// Anycast destinations the connections were spread over.
    pub destinations: u32,
    /// Connections that failed after the identical replace (0 if skipped).
    pub broken: u32,
    /// `broken > 0`: the kernel moves established local flows under this
    /// setting. Meaningless when `skipped` is set.
    pub affected: bool,
    /// Why this setting could not be measured on this kernel; `None` when
    /// it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Context, e.g. that the host's own policy is not the one measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl EcmpProbe {
    fn unmeasured(setting: &EcmpSetting, connections: u32) -> EcmpProbe {
        EcmpProbe {
            setting: setting.name(),
            family: setting.family,
            policy: setting.policy,
            fields: setting.fields,
            connections,
            destinations: destinations(connections),
            broken: 0,
            affected: false,
            skipped: None,
            note: setting.note.clone(),
        }
    }

    /// Whether the setting was measured (not skipped).
    pub fn measured(&self) -> bool {
        self.skipped.is_none()
    }

    /// The verdict: `Some(affected)` when measured, `None` when skipped.
    pub fn affected(&self) -> Option<bool> {
        self.measured().then_some(self.affected)
    }

    /// One line for people, e.g. "ipv6 policy 1: affected, 20 of 30
    /// connections (10 destinations) broken by an identical route replace".
    pub fn describe(&self) -> String {
        let mut line = match &self.skipped {
            Some(why) => format!("{}: not measurable: {why}", self.setting),
            None => format!(
                "{}: {}, {} of {} connections ({} destinations) broken by an identical route replace",
                self.setting,
                if self.affected { "affected" } else { "not affected" },
                self.broken,
                self.connections,
                self.destinations
            ),
        };
        if let Some(note) = &self.note {
            line.push_str(&format!(" ({note})"));
        }
        line
    }
}

/// Destinations a lab with `connections` connections uses.
fn destinations(connections: u32) -> u32 {
    connections.clamp(1, MAX_DESTINATIONS)
}

/// Parses a sysctl file's content (`"3\n"`).
pub fn parse_sysctl_u32(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

fn read_sysctl(path: &str) -> Option<u32> {
    parse_sysctl_u32(&std::fs::read_to_string(path).ok()?)
}

/// The settings to measure, given the host's IPv6 hash policy and fields
/// (`None` where the host has no such sysctl).
pub fn settings_for(host_policy: Option<u32>, host_fields: Option<u32>) -> Vec<EcmpSetting> {
    let p3_note = match (host_policy, host_fields) {
        (_, None) => "the host kernel has no net.ipv6.fib_multipath_hash_fields".to_string(),
        (Some(3), Some(_)) => "the host's own setting".to_string(),
        (Some(p), Some(f)) => format!(
            "the host uses ipv6 policy {p}, not 3: measured policy 3 with the host's fib_multipath_hash_fields \
             ({f:#06x}), i.e. what switching the host to policy 3 would give"
        ),
        (None, Some(f)) => format!(
            "the host's ipv6 policy is unreadable: measured policy 3 with the host's fib_multipath_hash_fields ({f:#06x})"
        ),
    };
    let own = |policy: u32| {
        let mut s = EcmpSetting::new(6, policy);
        if host_policy == Some(policy) {
            s.note = Some("the host's own setting".into());
        }
        s
    };
    vec![
        own(0),
        own(1),
        EcmpSetting { family: 6, policy: 3, fields: host_fields, note: Some(p3_note) },
        EcmpSetting::new(4, 1),
    ]
}

/// The settings to measure on this host: [`settings_for`] with the IPv6
/// policy and fields of the calling thread's network namespace (read from
/// `/proc/sys`, never written).
pub fn host_settings() -> Vec<EcmpSetting> {
    settings_for(
        read_sysctl("/proc/sys/net/ipv6/fib_multipath_hash_policy"),
        read_sysctl("/proc/sys/net/ipv6/fib_multipath_hash_fields"),
    )
}

/// Addresses and iproute2 commands of one lab. Pure, so it is unit-tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) family: u8,
    /// Anycast destinations, 1..=MAX_DESTINATIONS.
    pub(crate) destinations: u32,
}

impl Plan {
    /// Anycast destination `j` (0-based).
    fn anycast(&self, j: u32) -> IpAddr {
        let host = j + 1;
        match self.family {
            4 => IpAddr::V4(Ipv4Addr::new(198, 18, 255, host as u8)),
            _ => IpAddr::V6(Ipv6Addr::new(0xfd00, 0xecec, 0xf, 0, 0, 0, 0, host as u16)),
        }
    }

    /// Address of R (`host` 1) or node `i` (`host` 2) on link `i` (1-based).
    fn link_addr(&self, i: usize, host: u8) -> IpAddr {
        match self.family {
            4 => IpAddr::V4(Ipv4Addr::new(198, 18, i as u8, host)),
            _ => IpAddr::V6(Ipv6Addr::new(0xfd00, 0xecec, i as u16, 0, 0, 0, 0, host as u16)),
        }
    }

    /// Where a node's echo server listens: every address, port ECHO_PORT.
    fn listen_addr(&self) -> SocketAddr {
        match self.family {
            4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ECHO_PORT),
            _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), ECHO_PORT),
        }
    }

    /// The destination of connection `n` (0-based): round robin.
    fn target(&self, n: u32) -> SocketAddr {
        SocketAddr::new(self.anycast(n % self.destinations), ECHO_PORT)
    }

    fn link_len(&self) -> u8 {
        if self.family == 4 {
            24
        } else {
            64
        }
    }

    fn host_len(&self) -> u8 {
        if self.family == 4 {
            32
        } else {
            128
        }
    }

    fn default_route(&self) -> &'static str {
        if self.family == 4 {
            "0.0.0.0/0"
        } else {
            "::/0"
        }
    }

    /// IPv6 addresses are added with `nodad` so that they are usable (not
    /// tentative) as soon as `ip` returns.
    fn nodad(&self) -> &'static str {
        if self.family == 4 {
            ""
        } else {
            " nodad"
        }
    }

    /// `route VERB ANYCAST nexthop via .. dev rg1 nexthop ..`, one line per
    /// destination, for `ip -batch`.
    fn routes(&self, verb: &str) -> String {
        (0..self.destinations).map(|j| format!("route {verb} {}\n", self.route_spec(j))).collect()
    }

    /// The multipath route to destination `j` as `ip route` and
    /// `routeguard propose --route-replace` take it:
    /// `ANYCAST/LEN nexthop via .. dev rg1 nexthop ..`.
    pub(crate) fn route_spec(&self, j: u32) -> String {
        let mut b = format!("{}/{}", self.anycast(j), self.host_len());
        for i in 1..=NODES {
            b.push_str(&format!(" nexthop via {} dev rg{i}", self.link_addr(i, 2)));
        }
        b
    }

    /// R's batch: the veth pairs (peers moved into the nodes), R's ends up
    /// and addressed.
    fn router_links(&self, nodes: &[String]) -> String {
        let mut b = String::new();
        for (i, node) in (1..=NODES).zip(nodes) {
            b.push_str(&format!("link add rg{i} type veth peer name rgup netns {node}\n"));
        }
        for i in 1..=NODES {
            b.push_str(&format!("link set rg{i} up\n"));
            b.push_str(&format!("addr add {}/{} dev rg{i}{}\n", self.link_addr(i, 1), self.link_len(), self.nodad()));
        }
        b
    }

    /// Node `i`'s batch: its end up and addressed, the anycast addresses on
    /// `lo`, a default route back to R.
    fn node(&self, i: usize) -> String {
        let mut b = format!(
            "link set rgup up\naddr add {}/{} dev rgup{}\n",
            self.link_addr(i, 2),
            self.link_len(),
            self.nodad()
        );
        for j in 0..self.destinations {
            b.push_str(&format!("addr add {}/{} dev lo{}\n", self.anycast(j), self.host_len(), self.nodad()));
        }
        b.push_str(&format!("route add {} via {} dev rgup\n", self.default_route(), self.link_addr(i, 1)));
        b
    }

    /// Sysctls every namespace of the lab gets before its links exist: no
    /// DAD (link-local addresses, which source neighbour solicitations, are
    /// usable at once) and no reverse-path filter (a moved flow's reset
    /// enters R by another member than the flow left by).
    fn base_sysctls(&self) -> Vec<Sysctl> {
        let mut v =
            vec![Sysctl::required("ipv4/conf/all/rp_filter", 0), Sysctl::required("ipv4/conf/default/rp_filter", 0)];
        if self.family == 6 {
            v.push(Sysctl::required("ipv6/conf/all/accept_dad", 0));
            v.push(Sysctl::required("ipv6/conf/default/accept_dad", 0));
        }
        v
    }
}

/// A sysctl (path under /proc/sys/net) to write in a lab namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sysctl {
    path: String,
    value: u32,
    /// A missing optional sysctl is ignored; a missing required one makes
    /// the setting unmeasurable.
    required: bool,
}

impl Sysctl {
    fn required(path: &str, value: u32) -> Sysctl {
        Sysctl { path: path.into(), value, required: true }
    }

    fn optional(path: &str, value: u32) -> Sysctl {
        Sysctl { path: path.into(), value, required: false }
    }
}

/// The sysctls a setting writes in R: the fixed hash seed, then the fields,
/// then the policy.
fn hash_sysctls(setting: &EcmpSetting) -> Vec<Sysctl> {
    let fam = if setting.family == 4 { "ipv4" } else { "ipv6" };
    let mut v = vec![Sysctl::optional("ipv4/fib_multipath_hash_seed", HASH_SEED)];
    // Fields before the policy: they only take effect under policy 3.
    if setting.policy == 3 {
        if let Some(f) = setting.fields {
            v.push(Sysctl::required(&format!("{fam}/fib_multipath_hash_fields"), f));
        }
    }
    v.push(Sysctl::required(&format!("{fam}/fib_multipath_hash_policy"), setting.policy));
    v
}

/// Why a lab stopped: the kernel can't run this setting (reported as
/// skipped), or a hard error.
pub(crate) enum Failure {
    Unsupported(String),
    Error(SelftestError),
}

impl From<SelftestError> for Failure {
    fn from(e: SelftestError) -> Self {
        Failure::Error(e)
    }
}

/// Test hook: make a probe fail part way, to check that its lab is still
/// removed. Not part of the stable API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault.
    None,
    /// Return an error once the links and routes are in place.
    ErrorAfterLinks,
    /// Panic on the probe's thread once the connections are established.
    PanicAfterConnect,
}

/// Measures one setting in a fresh lab, which is removed before this
/// returns (or unwinds).
pub fn probe(setting: &EcmpSetting, opts: &SelftestOptions) -> Result<EcmpProbe, SelftestError> {
    probe_with_fault(setting, opts, Fault::None)
}

/// [`probe`] with an injected fault (test hook).
#[doc(hidden)]
pub fn probe_with_fault(
    setting: &EcmpSetting,
    opts: &SelftestOptions,
    fault: Fault,
) -> Result<EcmpProbe, SelftestError> {
    opts.validate()?;
    if setting.family != 4 && setting.family != 6 {
        return Err(SelftestError::InvalidOption(format!("address family must be 4 or 6, got {}", setting.family)));
    }
    let mut result = EcmpProbe::unmeasured(setting, opts.connections);
    if setting.policy == 3 && setting.fields.is_none() {
        result.skipped =
            Some(format!("ipv{} policy 3 needs fib_multipath_hash_fields, which this kernel lacks", setting.family));
        return Ok(result);
    }
    match run_lab(setting, opts, fault) {
        Ok(broken) => {
            result.broken = broken;
            result.affected = broken > 0;
        }
        Err(Failure::Unsupported(reason)) => result.skipped = Some(reason),
        Err(Failure::Error(e)) => return Err(e),
    }
    Ok(result)
}

/// A lab's namespaces and echo servers. Dropping it stops and joins the
/// servers, then deletes the namespaces (fields drop after `Drop::drop`).
pub(crate) struct Lab {
    /// The setting's name, for errors.
    name: String,
    /// Addresses and commands.
    pub(crate) plan: Plan,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<Result<(), SelftestError>>>,
    /// R first, then N1..N3.
    ns: Vec<Netns>,
}

impl Lab {
    /// R's namespace.
    pub(crate) fn router(&self) -> String {
        self.ns[0].name().to_string()
    }

    fn nodes(&self) -> Vec<String> {
        self.ns[1..].iter().map(|n| n.name().to_string()).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Writes sysctls inside namespace `ns`, from a thread that entered it,
/// reading each back. The inner error says which sysctl the kernel lacks
/// or refuses.
fn write_sysctls(ns: &str, values: Vec<Sysctl>) -> Result<Result<(), String>, SelftestError> {
    netns::run_in(ns, "sysctl", move || {
        for Sysctl { path, value, required } in values {
            let full = format!("/proc/sys/net/{path}");
            let key = format!("net.{}", path.replace('/', "."));
            if let Err(e) = std::fs::write(&full, format!("{value}\n")) {
                if !required && e.kind() == io::ErrorKind::NotFound {
                    continue;
                }
                let why = match e.kind() {
                    io::ErrorKind::NotFound => "this kernel has no such sysctl".to_string(),
                    io::ErrorKind::InvalidInput => "the kernel rejects that value".to_string(),
                    _ => e.to_string(),
                };
                return Ok(Err(format!("{key}={value}: {why}")));
            }
            match read_sysctl(&full) {
                Some(v) if v == value => {}
                got => return Ok(Err(format!("{key}={value} did not stick (reads {got:?})"))),
            }
        }
        Ok(Ok(()))
    })
}

fn run_lab(setting: &EcmpSetting, opts: &SelftestOptions, fault: Fault) -> Result<u32, Failure> {
    let plan = Plan { family: setting.family, destinations: destinations(opts.connections) };
    let lab = Lab::build(setting, plan, fault)?;
    let mut streams = lab.connect(opts.connections, opts.timeout)?;
    if fault == Fault::PanicAfterConnect {
        panic!("injected panic after connect ({})", setting.name());
    }
    lab.check_echo(&mut streams, opts.timeout)?;
    ip(&["-n", &lab.router(), "-batch", "-"], Some(&plan.routes("replace"))).map_err(|detail| {
        SelftestError::Command {
            what: format!("{}: replacing the multipath routes in {}", lab.name, lab.router()),
            detail,
        }
    })?;
    let after = echo_round(&mut streams, 2, opts.timeout);
    Ok(after.iter().filter(|r| r.is_err()).count() as u32)
}

impl Lab {
    /// Builds a lab for `setting` with `plan`'s destinations: namespaces,
    /// sysctls, links, addresses, the multipath routes and one echo server
    /// per node. Everything built so far is removed when this fails.
    pub(crate) fn build(setting: &EcmpSetting, plan: Plan, fault: Fault) -> Result<Lab, Failure> {
        let name = setting.name();
        let lab_error = |detail: String| Failure::Error(SelftestError::Lab { setting: name.clone(), detail });
        let pid = std::process::id();
        let lab_id = netns::next_lab_id();
        let mut lab = Lab {
            name: name.clone(),
            plan,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            ns: Vec::new(),
        };
        for role in ["r", "n1", "n2", "n3"] {
            lab.ns.push(Netns::create(&netns::ns_name(pid, lab_id, role))?);
        }
        let router = lab.router();

        // Sysctls: the hash setting in R only; the base ones everywhere.
        let mut r_values = hash_sysctls(setting);
        r_values.extend(plan.base_sysctls());
        write_sysctls(&router, r_values)?.map_err(Failure::Unsupported)?;
        for node in lab.nodes() {
            write_sysctls(&node, plan.base_sysctls())?.map_err(Failure::Unsupported)?;
        }

        // Links, addresses, routes.
        ip(&["-n", &router, "-batch", "-"], Some(&plan.router_links(&lab.nodes()))).map_err(|detail| {
            if detail.contains("Unknown device type") {
                Failure::Unsupported(format!("no veth: {detail}"))
            } else {
                Failure::Error(SelftestError::Command {
                    what: format!("{name}: creating the veth pairs in {router}"),
                    detail,
                })
            }
        })?;
        for (i, node) in (1..=NODES).zip(lab.nodes()) {
            ip(&["-n", &node, "-batch", "-"], Some(&plan.node(i))).map_err(|detail| SelftestError::Command {
                what: format!("{name}: configuring node {node}"),
                detail,
            })?;
        }
        ip(&["-n", &router, "-batch", "-"], Some(&plan.routes("add"))).map_err(|detail| {
            Failure::Unsupported(format!("the kernel refused the 3-way multipath route: {detail}"))
        })?;
        if fault == Fault::ErrorAfterLinks {
            return Err(lab_error("injected fault after links".into()));
        }
        // R's link-local addresses appear (and finish their DAD work, even
        // with accept_dad=0) asynchronously once each veth has carrier; that
        // completion invalidates R's cached IPv6 routes. Connecting before it
        // let a connection's ACK re-hash to another node, which answered
        // with a reset (seen once in CI-like runs).
        if plan.family == 6 {
            wait_link_locals(&router, LINK_LOCAL_TIMEOUT).map_err(lab_error)?;
        }

        // Echo servers, one per node, each on a thread inside its node.
        let listen = plan.listen_addr();
        for node in lab.nodes() {
            let (ready_tx, ready_rx) = mpsc::channel();
            let stop = lab.stop.clone();
            let h = netns::spawn_in(&node, format!("rgst-echo-{node}"), move || {
                let listener = TcpListener::bind(listen);
                let _ = ready_tx.send(listener.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                match listener {
                    Ok(l) => serve(l, &stop).map_err(|source| SelftestError::Io { what: "echo server".into(), source }),
                    Err(_) => Ok(()),
                }
            })?;
            lab.servers.push(h);
            match ready_rx.recv_timeout(SERVER_START_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(lab_error(format!("echo server in {node} cannot listen on {listen}: {e}"))),
                // The thread ended before it could listen (setns failed: its
                // result says why) or it hangs.
                Err(_) => {
                    let why = match lab.servers.last().is_some_and(|h| h.is_finished()) {
                        true => {
                            lab.servers.pop().and_then(|h| netns::join(h, "echo server").err()).map(|e| e.to_string())
                        }
                        false => None,
                    };
                    return Err(lab_error(format!(
                        "echo server in {node} did not start: {}",
                        why.unwrap_or_else(|| "timed out".into())
                    )));
                }
            }
        }
        Ok(lab)
    }

    /// Opens `n` connections from R, round robin over the plan's
    /// destinations, from unbound sockets created on a thread inside R.
    pub(crate) fn connect(&self, n: u32, timeout: Duration) -> Result<Vec<TcpStream>, Failure> {
        let plan = self.plan;
        netns::run_in(&self.router(), "client", move || {
            let mut v = Vec::with_capacity(n as usize);
            for k in 0..n {
                let target = plan.target(k);
                let s = TcpStream::connect_timeout(&target, timeout).map_err(|source| SelftestError::Io {
                    what: format!("connection {} of {n} to {target}", k + 1),
                    source,
                })?;
                s.set_nodelay(true).ok();
                v.push(s);
            }
            Ok(v)
        })
        .map_err(|e| match e {
            SelftestError::Io { what, source } => self.error(format!("{what}: {source}")),
            e => Failure::Error(e),
        })
    }

    /// One echo on every stream; a lab whose fresh connections do not all
    /// echo measures nothing.
    pub(crate) fn check_echo(&self, streams: &mut [TcpStream], timeout: Duration) -> Result<(), Failure> {
        let before = echo_round(streams, 1, timeout);
        let failed: Vec<String> = before
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.as_ref().err().map(|e| format!("#{}: {e}", k + 1)))
            .collect();
        if !failed.is_empty() {
            return Err(self.error(format!(
                "{} of {} connections failed to echo before the replace ({})",
                failed.len(),
                streams.len(),
                summarize(&failed)
            )));
        }
        Ok(())
    }

    fn error(&self, detail: String) -> Failure {
        Failure::Error(SelftestError::Lab { setting: self.name.clone(), detail })
    }
}

fn summarize(items: &[String]) -> String {
    let mut s = items.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > 3 {
        s.push_str(&format!("; and {} more", items.len() - 3));
    }
    s
}

/// Sends one message on every stream, then reads every echo back, all
/// within one `timeout` from the first read. Per stream: `Ok` when the echo
/// came back intact, else why not.
pub(crate) fn echo_round(streams: &mut [TcpStream], round: u32, timeout: Duration) -> Vec<Result<(), String>> {
    let msgs: Vec<Vec<u8>> =
        (0..streams.len()).map(|k| format!("routeguard selftest {round} {k}\n").into_bytes()).collect();
    let mut out: Vec<Result<(), String>> = streams
        .iter_mut()
        .zip(&msgs)
        .map(|(s, m)| {
            s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
            s.write_all(m).map_err(|e| format!("send: {e}"))
        })
        .collect();
    let deadline = Instant::now() + timeout;
    for ((s, m), r) in streams.iter_mut().zip(&msgs).zip(out.iter_mut()) {
        if r.is_ok() {
            *r = read_echo(s, m, deadline);
        }
    }
    out
}

fn read_echo(s: &mut TcpStream, want: &[u8], deadline: Instant) -> Result<(), String> {
    let mut got = Vec::with_capacity(want.len());
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no echo within the timeout".into());
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Err("closed by the peer".into()),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err("no echo within the timeout".into())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    if got == want {
        Ok(())
    } else {
        Err("echo differs from what was sent".into())
    }
}

/// Echo server loop over non-blocking sockets: accepts, echoes everything,
/// ends when `stop` is set (checked at least every few milliseconds) or
/// after [`SERVER_MAX_LIFE`].
fn serve(listener: TcpListener, stop: &AtomicBool) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    let mut conns: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < SERVER_MAX_LIFE {
        let mut busy = false;
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    if s.set_nonblocking(true).is_ok() {
                        s.set_nodelay(true).ok();
                        conns.push((s, Vec::new()));
                    }
                    busy = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNABORTED and the like: the next round retries.
                Err(_) => break,
            }
        }
        conns.retain_mut(|(s, pending)| {
            match s.read(&mut buf) {
                Ok(0) => return false,
                Ok(k) => {
                    pending.extend_from_slice(&buf[..k]);
                    busy = true;
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(_) => return false,
            }
            if !pending.is_empty() {
                match s.write(pending) {
                    Ok(k) => {
                        pending.drain(..k);
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                    Err(_) => return false,
                }
            }
            true
        });
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn link_locals_settle_only_when_every_link_has_one() {
        let one = r#"[{"ifname":"rg1","addr_info":[{"family":"inet6","local":"fe80::1","scope":"link"}]}]"#;
        assert!(link_locals_settled(one, 1));
        assert!(!link_locals_settled(one, 2), "rg2 has none yet");
        let tentative = r#"[{"ifname":"rg1","addr_info":[{"local":"fe80::1","scope":"link","tentative":true}]}]"#;
        assert!(!link_locals_settled(tentative, 1));
        assert!(!link_locals_settled("garbage", 1));
    }

    use super::*;

    #[test]
    fn setting_names() {
        assert_eq!(EcmpSetting::new(6, 0).name(), "ipv6 policy 0");
        assert_eq!(EcmpSetting::new(6, 1).name(), "ipv6 policy 1");
        assert_eq!(EcmpSetting::new(4, 1).name(), "ipv4 policy 1");
        assert_eq!(EcmpSetting::custom(6, 0x37).name(), "ipv6 policy 3 fields 0x0037");
        assert_eq!(EcmpSetting::custom(6, 0x7).name(), "ipv6 policy 3 fields 0x0007");
        // Fields don't matter below policy 3, so they are not named.
        let p1 = EcmpSetting { family: 6, policy: 1, fields: Some(0x37), note: None };
        assert_eq!(p1.name(), "ipv6 policy 1");
        assert_eq!(EcmpSetting { fields: None, ..EcmpSetting::custom(6, 1) }.name(), "ipv6 policy 3");
    }

    #[test]
    fn verdicts_and_descriptions() {
        let mut p = EcmpProbe::unmeasured(&EcmpSetting::new(6, 1), 30);
        p.broken = 20;
        p.affected = true;
        assert_eq!(p.affected(), Some(true));
        assert_eq!(
            p.describe(),
            "ipv6 policy 1: affected, 20 of 30 connections (10 destinations) broken by an identical route replace"
        );
        p.skipped = Some("no veth".into());
        p.note = Some("the host's own setting".into());
        assert_eq!(p.affected(), None);
        assert_eq!(p.describe(), "ipv6 policy 1: not measurable: no veth (the host's own setting)");
    }

    #[test]
    fn sysctl_values_parse() {
        assert_eq!(parse_sysctl_u32("3\n"), Some(3));
        assert_eq!(parse_sysctl_u32(" 55 "), Some(55));
        assert_eq!(parse_sysctl_u32(""), None);
        assert_eq!(parse_sysctl_u32("0x37"), None);
        assert_eq!(parse_sysctl_u32("-1"), None);
    }

    #[test]
    fn settings_follow_the_host() {
        let s = settings_for(Some(0), Some(0x7));
        let names: Vec<String> = s.iter().map(EcmpSetting::name).collect();
        assert_eq!(names, ["ipv6 policy 0", "ipv6 policy 1", "ipv6 policy 3 fields 0x0007", "ipv4 policy 1"]);
        assert_eq!(s[0].note.as_deref(), Some("the host's own setting"));
        assert_eq!(s[1].note, None);
        let note = s[2].note.as_deref().unwrap();
        assert!(note.contains("not 3") && note.contains("0x0007"), "{note}");
        assert_eq!((s[3].family, s[3].policy, s[3].note.as_deref()), (4, 1, None));

        let s = settings_for(Some(3), Some(0x37));
        assert_eq!(s[2].name(), "ipv6 policy 3 fields 0x0037");
        assert_eq!(s[2].note.as_deref(), Some("the host's own setting"));
        assert_eq!(s[0].note, None);

        let s = settings_for(Some(1), None);
        assert_eq!(s[1].note.as_deref(), Some("the host's own setting"));
        assert_eq!((s[2].policy, s[2].fields), (3, None));
        assert!(s[2].note.as_deref().unwrap().contains("no net.ipv6.fib_multipath_hash_fields"));
    }

    #[test]
    fn policy_3_without_fields_is_skipped_without_a_lab() {
        let s = EcmpSetting { family: 6, policy: 3, fields: None, note: None };
        let p = probe(&s, &SelftestOptions::default()).unwrap();
        assert!(p.skipped.is_some() && !p.affected && p.broken == 0 && !p.measured());
    }

    #[test]
    fn bad_family_is_an_invalid_option() {
        let r = probe(&EcmpSetting::new(5, 1), &SelftestOptions::default());
        assert!(matches!(r, Err(SelftestError::InvalidOption(_))));
    }

    #[test]
    fn hash_sysctls_seed_then_fields_then_policy() {
        let paths =
            |s: &EcmpSetting| hash_sysctls(s).into_iter().map(|c| (c.path, c.value, c.required)).collect::<Vec<_>>();
        assert_eq!(
            paths(&EcmpSetting::custom(6, 0x37)),
            [
                ("ipv4/fib_multipath_hash_seed".to_string(), HASH_SEED, false),
                ("ipv6/fib_multipath_hash_fields".to_string(), 0x37, true),
                ("ipv6/fib_multipath_hash_policy".to_string(), 3, true),
            ]
        );
        let v4 = EcmpSetting { family: 4, policy: 1, fields: Some(0x37), note: None };
        assert_eq!(paths(&v4)[1..], [("ipv4/fib_multipath_hash_policy".to_string(), 1, true)]);
    }

    #[test]
    fn destinations_are_capped_and_shared_round_robin() {
        assert_eq!(destinations(1), 1);
        assert_eq!(destinations(5), 5);
        assert_eq!(destinations(30), MAX_DESTINATIONS);
        let p = Plan { family: 6, destinations: 10 };
        assert_eq!(p.target(0).to_string(), "[fd00:ecec:f::1]:7707");
        assert_eq!(p.target(9).to_string(), "[fd00:ecec:f::a]:7707");
        assert_eq!(p.target(10), p.target(0));
        let p4 = Plan { family: 4, destinations: 3 };
        assert_eq!(p4.target(4).to_string(), "198.18.255.2:7707");
        assert_eq!(p4.listen_addr().to_string(), "0.0.0.0:7707");
        assert_eq!(p.listen_addr().to_string(), "[::]:7707");
    }

    #[test]
    fn replace_is_the_identical_route() {
        let p = Plan { family: 6, destinations: 2 };
        let add = p.routes("add");
        assert_eq!(
            add,
            "route add fd00:ecec:f::1/128 nexthop via fd00:ecec:1::2 dev rg1 \
             nexthop via fd00:ecec:2::2 dev rg2 nexthop via fd00:ecec:3::2 dev rg3\n\
             route add fd00:ecec:f::2/128 nexthop via fd00:ecec:1::2 dev rg1 \
             nexthop via fd00:ecec:2::2 dev rg2 nexthop via fd00:ecec:3::2 dev rg3\n"
        );
        assert_eq!(p.routes("replace"), add.replace("route add", "route replace"));
        let p4 = Plan { family: 4, destinations: 1 };
        assert_eq!(
            p4.routes("add"),
            "route add 198.18.255.1/32 nexthop via 198.18.1.2 dev rg1 \
             nexthop via 198.18.2.2 dev rg2 nexthop via 198.18.3.2 dev rg3\n"
        );
    }

    #[test]
    fn lab_batches() {
        let p = Plan { family: 6, destinations: 2 };
        let nodes = vec!["rgst-1-0-n1".to_string(), "rgst-1-0-n2".to_string(), "rgst-1-0-n3".to_string()];
        let r = p.router_links(&nodes);
        assert!(r.starts_with("link add rg1 type veth peer name rgup netns rgst-1-0-n1\n"), "{r}");
        assert!(r.contains("addr add fd00:ecec:3::1/64 dev rg3 nodad\n"), "{r}");
        assert_eq!(
            p.node(2),
            "link set rgup up\naddr add fd00:ecec:2::2/64 dev rgup nodad\n\
             addr add fd00:ecec:f::1/128 dev lo nodad\naddr add fd00:ecec:f::2/128 dev lo nodad\n\
             route add ::/0 via fd00:ecec:2::1 dev rgup\n"
        );
        assert_eq!(
            Plan { family: 4, destinations: 1 }.node(1),
            "link set rgup up\naddr add 198.18.1.2/24 dev rgup\naddr add 198.18.255.1/32 dev lo\n\
             route add 0.0.0.0/0 via 198.18.1.1 dev rgup\n"
        );
    }
}

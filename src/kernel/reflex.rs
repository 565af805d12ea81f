//! The forwarding reflex: the Subnet-Router anycast remediation's fast
//! path.
//!
//! When IPv6 forwarding is turned on behind the guard's back on an
//! interface where a neighbor sits at the Subnet-Router anycast, every
//! millisecond counts (the kernel has joined `prefix::`; the neighbor's
//! next reset cannot re-establish). The core's own path for it runs after
//! the model update of the batch, on a tokio worker that may be busy and
//! through a blocking-pool hand-off; on a loaded two-CPU router its tail
//! was dominated by run-queue waits (BENCHMARKS.md, issue 4).
//!
//! So the core publishes, after every model update that can change it,
//! the **armed** interfaces: those where a conflict *would* exist if
//! forwarding were on (a peer, a route's gateway or a nexthop object's
//! gateway at the Subnet-Router anycast of one of its prefixes). This
//! thread owns its own socket on `RTNLGRP_IPV6_NETCONF` and nothing else;
//! when the kernel reports `forwarding = 1` for an armed interface (or for
//! `all`, which rewrites every interface) and `/proc` still reads 1 there
//! (a notification read late may describe a toggle already undone), it
//! writes `0` to `/proc/sys/net/ipv6/conf/<if>/forwarding` at once, then
//! reports the result. It may run `SCHED_FIFO` (`[hazards.subnet_anycast]
//! realtime_priority`): its work per event is one decode and one write, so
//! a real-time priority cannot starve anything.
//!
//! Ownership: an interface armed before a batch is the reflex's; the core
//! remediates only the others (a conflict that appears while forwarding
//! is already on: no netconf event for the reflex to see). Should the
//! thread fail, it says so ([`Reflex::alive`]) and the core remediates
//! everything again. After an overrun of its socket (a notification may be
//! lost) it checks every armed interface in `/proc`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::decode::netconf::{parse_netconf, NetconfScope};
use super::decode::split_messages;
use super::nl;
use super::writer::{v6_forwarding_off, v6_forwarding_on};

/// `RTNLGRP_IPV6_NETCONF`.
const GROUP_IPV6_NETCONF: u32 = 25;
/// `RTM_NEWNETCONF`.
const RTM_NEWNETCONF: u16 = 80;
/// `AF_INET6`.
const AF_INET6: u8 = 10;

/// What one reaction did.
#[derive(Debug)]
pub struct Reaction {
    /// Interfaces written (sorted).
    pub ifaces: Vec<String>,
    /// From the notification's arrival to the last write's completion.
    pub latency: Duration,
    /// The first write error, if any.
    pub result: Result<(), String>,
}

#[derive(Default)]
struct Shared {
    /// ifindex -> name of the armed interfaces.
    armed: Mutex<BTreeMap<u32, String>>,
    alive: AtomicBool,
}

/// Handle on the reflex thread.
#[derive(Clone)]
pub struct Reflex {
    shared: Arc<Shared>,
}

impl Reflex {
    /// Opens the socket now (nothing after this returns is missed), then
    /// starts the thread. `report` gets every reaction; `priority` 1-99
    /// runs the thread `SCHED_FIFO` (0: normal scheduling; a refusal is
    /// logged and the thread runs normally).
    pub fn spawn(proc_sys: PathBuf, priority: u8, report: impl Fn(Reaction) + Send + 'static) -> io::Result<Reflex> {
        let (sock, refused) = nl::open_route_socket(&[GROUP_IPV6_NETCONF], 1 << 20)?;
        if !refused.is_empty() {
            return Err(io::Error::other("the kernel has no RTNLGRP_IPV6_NETCONF group"));
        }
        let shared = Arc::new(Shared { alive: AtomicBool::new(true), ..Shared::default() });
        let s = shared.clone();
        std::thread::Builder::new().name("rg-fwd-reflex".into()).spawn(move || {
            set_realtime(priority);
            let e = run(&sock, &s, &proc_sys, &report);
            s.alive.store(false, Ordering::SeqCst);
            warn!(error = %e, "forwarding reflex stopped: the core remediates alone");
        })?;
        Ok(Reflex { shared })
    }

    /// Whether the thread is running.
    pub fn alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// The armed interfaces' names.
    pub fn armed_names(&self) -> std::collections::BTreeSet<String> {
        self.lock().values().cloned().collect()
    }

    /// Replaces the armed set.
    pub fn arm(&self, armed: BTreeMap<u32, String>) {
        let mut a = self.lock();
        if *a != armed {
            info!(armed = ?armed.values().collect::<Vec<_>>(), "forwarding reflex armed");
            *a = armed;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, String>> {
        self.shared.armed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn set_realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    match super::sockopt::set_thread_fifo(priority) {
        Ok(()) => info!(priority, "forwarding reflex runs SCHED_FIFO"),
        Err(e) => warn!(
            priority,
            error = %e,
            "cannot run the forwarding reflex SCHED_FIFO (needs CAP_SYS_NICE); it runs at normal priority"
        ),
    }
}

/// The interfaces a batch of netconf messages turns IPv6 forwarding on
/// for, among the armed ones (sorted, deduplicated), and whether it turned
/// `all` on. The kernel reports each interface `all` rewrites before `all`
/// itself, so after `all` only the armed interfaces still on need a write
/// (see [`still_on`]).
pub fn targets(buf: &[u8], armed: &BTreeMap<u32, String>) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut all = false;
    for (hdr, payload) in split_messages(buf).flatten() {
        if hdr.msg_type != RTM_NEWNETCONF {
            continue;
        }
        let Ok(m) = parse_netconf(payload) else { continue };
        if m.family != AF_INET6 || m.forwarding != Some(1) {
            continue;
        }
        match m.ifindex {
            NetconfScope::Index(i) => out.extend(armed.get(&i).cloned()),
            NetconfScope::All => all = true,
            NetconfScope::Default => {}
        }
    }
    out.sort();
    out.dedup();
    (out, all)
}

/// The armed interfaces not in `done` whose forwarding reads 1.
fn still_on(proc_sys: &Path, armed: &BTreeMap<u32, String>, done: &[String]) -> Vec<String> {
    armed.values().filter(|i| !done.contains(i) && v6_forwarding_on(proc_sys, i)).cloned().collect()
}

fn run(sock: &netlink_sys::Socket, s: &Shared, proc_sys: &Path, report: &dyn Fn(Reaction)) -> io::Error {
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        let ifaces = match nl::recv(sock, &mut buf) {
            Ok(_) => {
                let received = Instant::now();
                let armed = s.armed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (named, all) = targets(&buf, &armed);
                // Only where forwarding is still on: a notification read
                // late (the guard's own change, since undone) needs no
                // write. After `all`, every armed interface is looked at.
                let look: BTreeMap<u32, String> =
                    if all { armed } else { armed.into_iter().filter(|(_, n)| named.contains(n)).collect() };
                Some((still_on(proc_sys, &look, &[]), received))
            }
            Err(e) if nl::is_overrun(&e) => {
                // A notification may be lost: look at every armed interface.
                let received = Instant::now();
                let armed = s.armed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Some((still_on(proc_sys, &armed, &[]), received))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => return e,
        };
        if let Some((ifaces, received)) = ifaces {
            if ifaces.is_empty() {
                continue;
            }
            let result = v6_forwarding_off(proc_sys, &ifaces);
            report(Reaction { ifaces, latency: received.elapsed(), result });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::testutil::nla;

    /// An RTM_NEWNETCONF datagram: family, NETCONFA_IFINDEX, NETCONFA_FORWARDING.
    fn netconf(family: u8, ifindex: i32, forwarding: u32) -> Vec<u8> {
        let mut payload = vec![family, 0, 0, 0];
        payload.extend(nla(1, &ifindex.to_ne_bytes()));
        payload.extend(nla(2, &forwarding.to_ne_bytes()));
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(RTM_NEWNETCONF.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(payload);
        m
    }

    #[test]
    fn a_real_kernel_notification_targets_its_interface() {
        // Captured from the kernel: net.ipv6.conf.rgc.forwarding=1 (ifindex 5).
        let real = include_bytes!("decode/testdata/netconf_v6_notify_rgc_forwarding.bin");
        let armed: BTreeMap<u32, String> = [(5, "rgc".to_string())].into();
        assert_eq!(targets(real, &armed), (vec!["rgc".to_string()], false));
        assert!(targets(real, &[(4, "other".to_string())].into()).0.is_empty());
    }

    #[test]
    fn only_armed_interfaces_turned_on_are_targets() {
        let armed: BTreeMap<u32, String> = [(3, "vm0".to_string()), (7, "vm1".to_string())].into();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(targets(&netconf(AF_INET6, 3, 1), &armed), (names(&["vm0"]), false));
        // Turned off (our own write's notification), another interface,
        // IPv4, `default`: nothing.
        for m in [netconf(AF_INET6, 3, 0), netconf(AF_INET6, 4, 1), netconf(2, 3, 1), netconf(AF_INET6, -2, 1)] {
            assert_eq!(targets(&m, &armed), (vec![], false));
        }
        // `all` on is flagged (its interfaces were reported before it).
        assert_eq!(targets(&netconf(AF_INET6, -1, 1), &armed), (vec![], true));
        assert_eq!(targets(&netconf(AF_INET6, -1, 0), &armed), (vec![], false));
        // Several messages in one datagram, deduplicated.
        let mut two = netconf(AF_INET6, 7, 1);
        two.extend(netconf(AF_INET6, 7, 1));
        two.extend(netconf(AF_INET6, 3, 1));
        assert_eq!(targets(&two, &armed), (names(&["vm0", "vm1"]), false));
        // Garbage decodes to nothing and does not panic.
        assert_eq!(targets(&[0xff; 7], &armed), (vec![], false));
        assert_eq!(targets(&netconf(AF_INET6, 3, 1)[..20], &armed), (vec![], false));
    }

    #[test]
    fn after_all_only_armed_interfaces_still_on_are_written() {
        let dir = tempfile::tempdir().unwrap();
        for (i, v) in [("vm0", "0"), ("vm1", "1"), ("vm2", "1")] {
            let conf = dir.path().join("net/ipv6/conf").join(i);
            std::fs::create_dir_all(&conf).unwrap();
            std::fs::write(conf.join("forwarding"), v).unwrap();
        }
        let armed: BTreeMap<u32, String> =
            [(3, "vm0".to_string()), (4, "vm1".to_string()), (5, "vm2".to_string()), (6, "gone".to_string())].into();
        assert_eq!(still_on(dir.path(), &armed, &["vm2".to_string()]), vec!["vm1"]);
    }

    #[test]
    fn writes_zero_and_names_the_failing_interface() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net/ipv6/conf/vm0");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("forwarding"), "1").unwrap();
        let r = v6_forwarding_off(dir.path(), &["vm0".into(), "gone".into()]);
        assert_eq!(std::fs::read_to_string(conf.join("forwarding")).unwrap(), "0");
        let e = r.unwrap_err();
        assert!(e.contains("net.ipv6.conf.gone.forwarding"), "{e}");
    }
}

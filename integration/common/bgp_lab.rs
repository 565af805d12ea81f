//! The field-notes Subnet-Router anycast lab (Hazard 2) with real FRR: a VM
//! namespace and an HV (hypervisor) namespace joined by a veth, Debian's
//! FRR (zebra + bgpd, started by `integration/frr/frr-ns`) in each, and an
//! iBGP session between them over `fdc0:3489:e0fd::/64`.
//!
//! Dropping the lab (also while a test panics) stops both FRR instances and
//! removes both namespaces; on panic the tail of each bgpd log is printed
//! first.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{run_ok, Netns};

/// The /64 shared by VM and HV.
pub const PREFIX: &str = "fdc0:3489:e0fd::";
/// The VM's address on the link.
pub const VM_ADDR: &str = "fdc0:3489:e0fd::1";
/// iBGP AS of both sides.
pub const AS: u32 = 65000;
/// Debian flavor's vtysh (see integration/frr/README.md).
pub const VTYSH: &str = "/usr/bin/vtysh";

static INSTALL: Once = Once::new();

fn frr_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integration/frr").join(name)
}

fn frr_ns() -> String {
    frr_script("frr-ns").to_string_lossy().into_owned()
}

/// Installs Debian's FRR once per test process (`install-frr` is a no-op
/// when it is already installed).
pub fn install_frr() {
    INSTALL.call_once(|| {
        let script = frr_script("install-frr");
        run_ok(&script.to_string_lossy(), &[]);
    });
}

/// VM's session to HV as FRR reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// `bgpState`: "Established", "Connect", "Active", "Idle", ...
    pub state: String,
    /// `connectionsEstablished`: how often the session came up so far.
    pub established: u64,
}

/// A running lab; dropping it tears everything down.
pub struct BgpLab {
    /// The guest (routeguard's side).
    pub vm: Netns,
    /// The hypervisor peer.
    pub hv: Netns,
    /// VM's end of the veth.
    pub vm_if: String,
    /// HV's end of the veth.
    pub hv_if: String,
    /// HV's address as VM sees it (`prefix::` or `prefix::2`).
    pub peer: String,
    /// VM's FRR runtime dir (vty sockets, logs).
    vm_dir: String,
    /// HV's FRR runtime dir.
    hv_dir: String,
    /// Configs handed to `frr-ns start`.
    tmp: tempfile::TempDir,
}

impl BgpLab {
    /// VM and HV namespaces joined by a veth; HV at `prefix::` (peer_at_zero)
    /// or `prefix::2`, VM at `prefix::1/64`; zebra + bgpd in each with an
    /// iBGP session (connect retry 1 s). Waits until Established (60 s).
    pub fn new(tag: &str, peer_at_zero: bool) -> BgpLab {
        install_frr();
        let vm = Netns::new(&format!("{tag}vm"));
        let hv = Netns::new(&format!("{tag}hv"));
        let peer = if peer_at_zero { PREFIX.to_string() } else { format!("{PREFIX}2") };
        let dir_of = |ns: &Netns| run_ok(&frr_ns(), &["dir", &ns.name]).trim().to_string();
        let lab = BgpLab {
            vm_dir: dir_of(&vm),
            hv_dir: dir_of(&hv),
            vm,
            hv,
            vm_if: "rgvm0".to_string(),
            hv_if: "rghv0".to_string(),
            peer,
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        // From here on a panic drops `lab`, which stops FRR and removes the
        // namespaces.
        lab.build();
        lab
    }

    fn build(&self) {
        let (vm, hv) = (&self.vm, &self.hv);
        // The veth is made inside VM with its peer put straight into HV:
        // nothing in the host namespace.
        vm.ip(&["link", "add", &self.vm_if, "type", "veth", "peer", "name", &self.hv_if, "netns", &hv.name]);
        // A host-like VM whatever the namespace defaults are. No DAD: bgpd
        // (8.4) will not bring up a session on a shared network until the
        // interface has a usable link-local address, and a failed first
        // attempt doubles its idle-hold timer (1, 2, 4, ... s).
        vm.sysctl("net.ipv6.conf.all.forwarding=0");
        vm.sysctl(&format!("net.ipv6.conf.{}.accept_dad=0", self.vm_if));
        hv.sysctl(&format!("net.ipv6.conf.{}.accept_dad=0", self.hv_if));
        vm.ip(&["-6", "addr", "add", &format!("{VM_ADDR}/64"), "dev", &self.vm_if, "nodad"]);
        hv.ip(&["-6", "addr", "add", &format!("{}/64", self.peer), "dev", &self.hv_if, "nodad"]);
        vm.ip(&["link", "set", &self.vm_if, "up"]);
        hv.ip(&["link", "set", &self.hv_if, "up"]);

        let vm_conf = self.tmp.path().join("vm.conf");
        let hv_conf = self.tmp.path().join("hv.conf");
        std::fs::write(&vm_conf, bgp_conf("10.255.0.1", &self.peer, false)).expect("write vm.conf");
        std::fs::write(&hv_conf, bgp_conf("10.255.0.2", VM_ADDR, true)).expect("write hv.conf");

        // Both instances at once: each start takes 1-3 s.
        let start = |ns: &Netns, conf: &PathBuf| {
            Command::new(frr_ns())
                .args(["start", &ns.name, "--flavor", "debian", "--daemons", "zebra,bgpd", "--config"])
                .arg(conf)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn frr-ns start")
        };
        let t0 = Instant::now();
        let children = [start(vm, &vm_conf), start(hv, &hv_conf)];
        let mut failed = Vec::new();
        for (ns, child) in [&vm.name, &hv.name].into_iter().zip(children) {
            let o = child.wait_with_output().expect("wait frr-ns start");
            if !o.status.success() {
                failed.push(format!(
                    "frr-ns start {ns} failed:\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
        let started = t0.elapsed();
        let up = self.wait_established(Duration::from_secs(60)).unwrap_or_else(|| {
            panic!("BGP session VM -> {} not Established within 60 s (last: {:?})", self.peer, self.neighbor())
        });
        eprintln!("bgp_lab {}: FRR started in {started:.1?}, Established {up:.1?} later", self.vm.name);
    }

    /// Runs one vtysh command in VM and returns its output.
    pub fn vm_vtysh(&self, command: &str) -> String {
        let o = Command::new(frr_ns()).args(["vtysh", &self.vm.name, "-c", command]).output().expect("run vtysh");
        assert!(o.status.success(), "vtysh -c '{command}': {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// VM's neighbor entry for the peer from `show bgp neighbors PEER json`,
    /// or None when vtysh fails or bgpd does not know the peer (yet).
    pub fn neighbor(&self) -> Option<Neighbor> {
        let o = Command::new(frr_ns())
            .args(["vtysh", &self.vm.name, "-c", &format!("show bgp neighbors {} json", self.peer)])
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        let n = v.get(&self.peer)?;
        Some(Neighbor {
            state: n.get("bgpState")?.as_str()?.to_string(),
            established: n.get("connectionsEstablished").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// BGP state of VM's session to HV as FRR reports it ("Established",
    /// "Connect", "Active", "Idle", ...; "none" when it cannot be read).
    pub fn state(&self) -> String {
        self.neighbor().map_or_else(|| "none".to_string(), |n| n.state)
    }

    /// Polls (every 100 ms) until the session is Established; returns how
    /// long that took, or None after `within`.
    pub fn wait_established(&self, within: Duration) -> Option<Duration> {
        self.wait_until(within, |n| n.state == "Established")
    }

    fn wait_until(&self, within: Duration, f: impl Fn(&Neighbor) -> bool) -> Option<Duration> {
        let t0 = Instant::now();
        loop {
            if self.neighbor().is_some_and(|n| f(&n)) {
                return Some(t0.elapsed());
            }
            if t0.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `clear bgp *` in VM, then waits up to `within` for the session to be
    /// Established again (a new connection: `connectionsEstablished` grew, so
    /// a stale "Established" read right after the clear does not count).
    /// Returns how long it took, or None.
    pub fn reset_and_wait(&self, within: Duration) -> Option<Duration> {
        let before = self.neighbor().map_or(0, |n| n.established);
        let t0 = Instant::now();
        run_ok(&frr_ns(), &["vtysh", &self.vm.name, "-c", "clear bgp *"]);
        let rest = within.saturating_sub(t0.elapsed());
        self.wait_until(rest, |n| n.state == "Established" && n.established > before).map(|_| t0.elapsed())
    }

    /// What routeguard needs to reach VM's FRR: the vtysh binary and VM's vty
    /// socket dir, for `ROUTEGUARD_FRR__VTYSH` / `ROUTEGUARD_FRR__VTY_SOCKET_DIR`
    /// (`vtysh --vty_socket DIR -c 'show bgp vrf all neighbors json'`).
    pub fn vtysh_settings(&self) -> (String, String) {
        (VTYSH.to_string(), self.vm_dir.clone())
    }

    /// Sets a sysctl inside VM (`net.ipv6.conf.all.forwarding=1`).
    pub fn vm_sysctl(&self, kv: &str) {
        self.vm.sysctl(kv);
    }

    /// `ip -6 route get PEER` inside VM.
    pub fn route_to_peer(&self) -> String {
        self.vm.ip(&["-6", "route", "get", &self.peer])
    }
}

/// frr.conf of one side: iBGP to `neighbor` (the same as `routeguard lab`'s).
fn bgp_conf(router_id: &str, neighbor: &str, passive: bool) -> String {
    routeguard::lab::frr::bgp_conf(AS, router_id, neighbor, passive)
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, dir) in [(&self.vm.name, &self.vm_dir), (&self.hv.name, &self.hv_dir)] {
                let log = std::fs::read_to_string(format!("{dir}/bgpd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- bgpd.log of {name} (last 30 lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        // Both at once (each waits for its daemons to exit); safe when
        // nothing runs. The namespaces go when `vm` and `hv` drop after this.
        let stops: Vec<_> = [&self.vm.name, &self.hv.name]
            .into_iter()
            .filter_map(|ns| Command::new(frr_ns()).args(["stop", ns]).stdin(Stdio::null()).spawn().ok())
            .collect();
        for mut c in stops {
            let _ = c.wait();
        }
    }
}

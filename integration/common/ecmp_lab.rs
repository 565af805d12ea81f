//! The field-notes ECMP lab: router namespace R with three veth links to
//! nodes N1..N3, each node holding the same anycast address on `lo` and a
//! TCP echo server on it; R reaches the anycast address over a 3-way
//! multipath route.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use super::Netns;

/// TCP port of the echo servers.
pub const PORT: &str = "7777";

/// A built lab; dropping it removes every namespace and process.
pub struct EcmpLab {
    /// The router.
    pub r: Netns,
    /// Nodes, dropped after R.
    pub nodes: Vec<Netns>,
    /// IPv6 or IPv4.
    pub v6: bool,
    servers: Vec<Child>,
}

impl EcmpLab {
    /// Builds the lab with R's multipath hash policy for the family.
    pub fn new(tag: &str, v6: bool, policy: u32) -> EcmpLab {
        let r = Netns::new(&format!("{tag}r"));
        let mut nodes = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=3u32 {
            let n = Netns::new(&format!("{tag}n{i}"));
            let rif = format!("rgr{i}");
            let nif = format!("rgn{i}");
            r.ip(&["link", "add", &rif, "type", "veth", "peer", "name", &nif, "netns", &n.name]);
            // No IPv6 link-local autoconfiguration: its asynchronous address
            // and route changes invalidate cached routes, i.e. they would
            // trigger the very hazard under test while flows are open.
            r.ip(&["link", "set", &rif, "addrgenmode", "none"]);
            n.ip(&["link", "set", &nif, "addrgenmode", "none"]);
            r.ip(&["link", "set", &rif, "up"]);
            n.ip(&["link", "set", &nif, "up"]);
            if v6 {
                r.ip(&["-6", "addr", "add", &format!("fd00:{i}::1/64"), "dev", &rif, "nodad"]);
                n.ip(&["-6", "addr", "add", &format!("fd00:{i}::2/64"), "dev", &nif, "nodad"]);
                n.ip(&["-6", "addr", "add", "fd00:ecec:f::1/128", "dev", "lo"]);
                n.ip(&["-6", "route", "add", "default", "via", &format!("fd00:{i}::1"), "dev", &nif]);
            } else {
                r.ip(&["addr", "add", &format!("10.{i}.0.1/24"), "dev", &rif]);
                n.ip(&["addr", "add", &format!("10.{i}.0.2/24"), "dev", &nif]);
                n.ip(&["addr", "add", "10.255.0.1/32", "dev", "lo"]);
                n.ip(&["route", "add", "default", "via", &format!("10.{i}.0.1"), "dev", &nif]);
            }
            // No neighbour discovery in the way (see pin_neighbours).
            if v6 {
                super::pin_neighbours(&r, &rif, &format!("fd00:{i}::1"), &n, &nif, &format!("fd00:{i}::2"));
            } else {
                super::pin_neighbours(&r, &rif, &format!("10.{i}.0.1"), &n, &nif, &format!("10.{i}.0.2"));
            }
            let mut s =
                n.spawn(&["python3", &lab_script("echo_server.py"), &format!("n{i}"), &Self::anycast_of(v6), PORT]);
            let ready = super::first_line(&mut s);
            assert_eq!(ready, "ready", "echo server in {} did not start", n.name);
            servers.push(s);
            nodes.push(n);
        }
        let fam = if v6 { "ipv6" } else { "ipv4" };
        r.sysctl(&format!("net.{fam}.fib_multipath_hash_policy={policy}"));
        let lab = EcmpLab { r, nodes, v6, servers };
        lab.r.ip(&["route", "add"].iter().copied().chain(lab.route_spec().split_whitespace()).collect::<Vec<_>>());
        lab
    }

    fn anycast_of(v6: bool) -> String {
        if v6 { "fd00:ecec:f::1" } else { "10.255.0.1" }.to_string()
    }

    /// The anycast address.
    pub fn anycast(&self) -> String {
        Self::anycast_of(self.v6)
    }

    /// The multipath route as `ip route` / `--route-replace` take it.
    pub fn route_spec(&self) -> String {
        (1..=3)
            .map(|i| {
                if self.v6 {
                    format!(" nexthop via fd00:{i}::2 dev rgr{i}")
                } else {
                    format!(" nexthop via 10.{i}.0.2 dev rgr{i}")
                }
            })
            .fold(format!("{}/{}", self.anycast(), if self.v6 { 128 } else { 32 }), |a, b| a + &b)
    }

    /// Moves the anycast route onto nexthop objects: members 1..3 (ids
    /// 1-3) in group 10, the route via `nhid 10`. IPv6 only.
    pub fn use_nexthop_group(&self) {
        assert!(self.v6, "the nexthop-group lab is IPv6");
        for i in 1..=3 {
            let (id, gw, dev) = (i.to_string(), format!("fd00:{i}::2"), format!("rgr{i}"));
            self.r.ip(&["-6", "nexthop", "add", "id", &id, "via", &gw, "dev", &dev]);
        }
        self.r.ip(&["nexthop", "add", "id", "10", "group", "1/2/3"]);
        self.r.ip(&["-6", "route", "replace", &format!("{}/128", self.anycast()), "nhid", "10"]);
    }

    /// `ip route replace` with the identical member set, behind the
    /// guard's back.
    pub fn replace_by_hand(&self) {
        let spec = self.route_spec();
        let mut args = vec!["route", "replace"];
        args.extend(spec.split_whitespace());
        self.r.ip(&args);
    }

    /// Starts a flow holder in R.
    pub fn holder(&self) -> Holder {
        Holder::spawn(&self.r, &self.anycast(), PORT, None)
    }
}

impl Drop for EcmpLab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// Path of a lab helper script.
pub fn lab_script(name: &str) -> String {
    format!("{}/integration/labs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A flow holder process in R.
pub struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    /// Starts a flow holder in `ns` connecting to `addr`:`port`, its
    /// sockets bound to device `bind_dev` (a VRF) when given.
    pub fn spawn(ns: &Netns, addr: &str, port: &str, bind_dev: Option<&str>) -> Holder {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, "python3", &lab_script("flow_holder.py"), addr, port]);
        if let Some(dev) = bind_dev {
            cmd.env("BIND_DEV", dev);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn flow holder");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Holder { child, stdin, stdout }
    }

    /// Sends one command and parses its JSON answer.
    pub fn cmd(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").expect("write to flow holder");
        self.stdin.flush().unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("read from flow holder");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("flow holder said {out:?}: {e}"))
    }

    /// Opens `n` connections; returns their local ports.
    pub fn open(&mut self, n: usize) -> Vec<u64> {
        let v = self.cmd(&format!("open {n}"));
        v["opened"].as_array().expect("opened").iter().map(|p| p.as_u64().unwrap()).collect()
    }

    /// Sends on every connection; returns the local ports that broke.
    pub fn check(&mut self) -> Vec<u64> {
        let v = self.cmd("check");
        v["broken"].as_array().expect("broken").iter().map(|p| p.as_u64().unwrap()).collect()
    }

    /// Closes every connection.
    pub fn close(&mut self) {
        self.cmd("close");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

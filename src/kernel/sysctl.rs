//! Reads the sysctls the model tracks from /proc/sys.
//!
//! Forwarding also arrives as netconf notifications (kept current between
//! reads); the multipath hash settings, `enhanced_dad` and
//! `nexthop_compat_mode` have no notification, so they are polled.

use std::collections::HashMap;
use std::path::Path;

use crate::model::{ConfScope, Scoped, Sysctls};

fn read_u32(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_scoped(conf: &Path, leaf: &str, ifindex_of: &HashMap<String, u32>) -> Scoped {
    let mut s = Scoped::default();
    let Ok(dir) = std::fs::read_dir(conf) else {
        return s;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(v) = read_u32(&entry.path().join(leaf)) else {
            continue;
        };
        let scope = match name.as_str() {
            "all" => ConfScope::All,
            "default" => ConfScope::Default,
            n => match ifindex_of.get(n) {
                Some(&i) => ConfScope::Iface(i),
                // An interface created after the last link dump; the next
                // read picks it up.
                None => continue,
            },
        };
        s.set(scope, v);
    }
    s
}

/// Reads the tracked sysctls under `root` (normally `/proc/sys`), mapping
/// interface directories to ifindexes with `ifindex_of`.
pub fn read(root: &Path, ifindex_of: &HashMap<String, u32>) -> Sysctls {
    Sysctls {
        forwarding_v4: read_scoped(&root.join("net/ipv4/conf"), "forwarding", ifindex_of),
        forwarding_v6: read_scoped(&root.join("net/ipv6/conf"), "forwarding", ifindex_of),
        enhanced_dad: read_scoped(&root.join("net/ipv6/conf"), "enhanced_dad", ifindex_of),
        hash_policy_v4: read_u32(&root.join("net/ipv4/fib_multipath_hash_policy")),
        hash_policy_v6: read_u32(&root.join("net/ipv6/fib_multipath_hash_policy")),
        hash_fields_v4: read_u32(&root.join("net/ipv4/fib_multipath_hash_fields")),
        hash_fields_v6: read_u32(&root.join("net/ipv6/fib_multipath_hash_fields")),
        nexthop_compat_mode: read_u32(&root.join("net/ipv4/nexthop_compat_mode")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_proc_sys_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let w = |p: &str, v: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        };
        w("net/ipv6/conf/all/forwarding", "1");
        w("net/ipv6/conf/default/forwarding", "0");
        w("net/ipv6/conf/eth0/forwarding", "1");
        w("net/ipv6/conf/eth0/enhanced_dad", "0");
        w("net/ipv6/conf/ghost/forwarding", "1");
        w("net/ipv4/conf/all/forwarding", "0");
        w("net/ipv6/fib_multipath_hash_policy", "3");
        w("net/ipv6/fib_multipath_hash_fields", "15");
        w("net/ipv4/fib_multipath_hash_policy", "garbage");
        let names = HashMap::from([("eth0".to_string(), 2u32)]);
        let s = read(root, &names);
        assert_eq!(s.forwarding_v6.all, Some(1));
        assert_eq!(s.forwarding_v6.default, Some(0));
        assert_eq!(s.forwarding_v6.per_if.get(&2), Some(&1));
        assert_eq!(s.forwarding_v6.per_if.len(), 1, "unknown interfaces are skipped");
        assert_eq!(s.enhanced_dad.per_if.get(&2), Some(&0));
        assert_eq!(s.forwarding_v4.all, Some(0));
        assert_eq!(s.hash_policy_v6, Some(3));
        assert_eq!(s.hash_fields_v6, Some(0x0f));
        assert_eq!(s.hash_policy_v4, None, "unparsable values are unknown, not zero");
        assert_eq!(s.nexthop_compat_mode, None);
    }
}

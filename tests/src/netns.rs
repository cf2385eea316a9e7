//! Network namespaces for the VM tests, made with iproute2 on the test host.

use std::process::{Command, Output};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ip ARGS` on the test host; panics on failure.
pub fn ip(args: &str) -> String {
    let o = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip (iproute2) must be installed");
    assert!(o.status.success(), "ip {args}: {}", err(&o));
    out(&o)
}

/// The namespace a namespace file (`/proc/PID/ns/net`, a bind mount under /run/netns) is.
pub fn ns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// Link names of `ip -o link` output.
pub fn link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// A named netns, as CNI or an engine hands one over: empty, or with a veth whose container
/// side `eth0` is inside (address, MAC, MTU, default route) and whose peer stays in the test
/// host's netns with the gateway address. Removed on drop.
pub struct Netns {
    pub name: String,
    host_veth: Option<String>,
}

impl Netns {
    pub fn empty(tag: &str) -> Netns {
        let name = format!("husk-ctrd-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&format!("netns add {name}"));
        Netns {
            name,
            host_veth: None,
        }
    }

    /// `eth0` with `addr/24`, `mac` and `mtu`, default route via `gw`; host side `hv<tag>`
    /// with `gw/24`.
    pub fn with_veth(tag: &str, addr: &str, gw: &str, mac: &str, mtu: u32) -> Netns {
        let mut ns = Netns::empty(tag);
        let host_veth = format!("hv{tag}");
        let _ = Command::new("ip")
            .args(["link", "del", &host_veth])
            .status();
        ip(&format!(
            "link add {host_veth} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {}",
            ns.name
        ));
        ns.host_veth = Some(host_veth.clone());
        ip(&format!("addr add {gw}/24 dev {host_veth}"));
        ip(&format!("link set {host_veth} up"));
        ns.ip(&format!("link set eth0 address {mac}"));
        ns.ip(&format!("addr add {addr}/24 dev eth0"));
        ns.ip("link set eth0 up");
        ns.ip("link set lo up");
        ns.ip(&format!("route add default via {gw}"));
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn ip(&self, args: &str) -> String {
        ip(&format!("-n {} {args}", self.name))
    }

    /// Our tap (the VM's NIC) is in the netns.
    pub fn has_tap(&self) -> bool {
        link_names(&self.ip("-o link")).iter().any(|l| l == "hk0")
    }

    /// The veth has our ingress qdisc (the redirect to the tap).
    pub fn redirected(&self) -> bool {
        let o = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "tc", "qdisc", "show", "dev", "eth0",
            ])
            .output()
            .expect("tc");
        assert!(o.status.success(), "tc qdisc show: {}", err(&o));
        out(&o).contains("ingress")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if let Some(v) = &self.host_veth {
            let _ = Command::new("ip").args(["link", "del", v]).status();
        }
    }
}

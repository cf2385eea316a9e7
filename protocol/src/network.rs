//! The guest's network, as the host found it in the container's network namespace
//! (husk-net scans it) and as the agent sets it up ([`crate::Request::ConfigureNetwork`]).
//!
//! One definition for both sides, with the limits and name rules both enforce: the host
//! before it makes taps, the agent before it touches a link.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// At most this many links are carried: each is a tap, a virtio-net device and an MMIO slot.
pub const MAX_LINKS: usize = 8;
/// Addresses per link (podman gives one per family per network).
pub const MAX_ADDRS_PER_LINK: usize = 16;
/// Routes over all links.
pub const MAX_ROUTES: usize = 64;
/// Permanent neighbours over all links.
pub const MAX_NEIGHBORS: usize = 64;
/// Smallest MTU a carried link may have (IPv4's minimum), largest a virtio-net device offers.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkConfigError {
    #[error("{count} {what} to carry into the VM, husk carries at most {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("link {link}: {reason}")]
    Link { link: String, reason: String },
    #[error("address {addr}/{prefix_len}: prefix longer than {max}")]
    Prefix {
        addr: IpAddr,
        prefix_len: u8,
        max: u8,
    },
    #[error("route to {dst}: {reason}")]
    Route { dst: String, reason: String },
    #[error("neighbour {ip}: {reason}")]
    Neighbor { ip: IpAddr, reason: String },
}

/// An address with its prefix length, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// Rejects a prefix longer than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, NetworkConfigError> {
        let net = IpNet { addr, prefix_len };
        net.check()?;
        Ok(net)
    }

    fn check(&self) -> Result<(), NetworkConfigError> {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix_len > max {
            return Err(NetworkConfigError::Prefix {
                addr: self.addr,
                prefix_len: self.prefix_len,
                max,
            });
        }
        Ok(())
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What the guest needs to look like the netns.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub links: Vec<Link>,
    pub routes: Vec<Route>,
    pub neighbors: Vec<Neighbor>,
}

/// A link to carry: the guest's NIC with this MAC (the bridge expects frames from it) gets
/// this name, MTU and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addrs: Vec<IpNet>,
    /// The guest NIC to use when it is not the one with `mac`: a NIC the VM got at boot, before
    /// the engine set the netns up (a spare, [`spare_nic_mac`]). The agent gives it `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_mac: Option<[u8; 6]>,
}

/// At most this many spare NICs a VM gets for a network set up after `create`.
pub const MAX_SPARE_NICS: usize = 1;

/// The MAC of spare NIC `n`: locally administered, never on a wire (its tap is not joined to
/// anything until the agent has given the NIC the engine's MAC).
pub fn spare_nic_mac(n: u8) -> [u8; 6] {
    [0x02, 0x68, 0x75, 0x73, 0x6b, n] // 02:"husk":n
}

/// A route of the main table that the kernel did not make by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// None: the default route.
    pub dst: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub dev: String,
    pub src: Option<IpAddr>,
    /// rtm_scope (0 universe, 253 link, ...).
    pub scope: u8,
    /// The route's MTU metric (Cilium sets it; Kata carries it).
    pub mtu: Option<u32>,
}

/// A permanent neighbour entry (static ARP/ND).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub dev: String,
}

impl NetworkConfig {
    /// The limits, link names the kernel accepts and no name twice, MTUs in range, prefixes
    /// that fit, and routes and neighbours only on listed links. Both sides check: the
    /// description crosses a process boundary and, to the agent, the VM boundary.
    pub fn validate(&self) -> Result<(), NetworkConfigError> {
        limit("links", self.links.len(), MAX_LINKS)?;
        limit("routes", self.routes.len(), MAX_ROUTES)?;
        limit("neighbors", self.neighbors.len(), MAX_NEIGHBORS)?;
        for (i, link) in self.links.iter().enumerate() {
            let bad = |reason: &str| NetworkConfigError::Link {
                link: link.name.clone(),
                reason: reason.to_string(),
            };
            if !valid_link_name(&link.name) {
                return Err(bad("not a valid interface name"));
            }
            if self.links[..i].iter().any(|l| l.name == link.name) {
                return Err(bad("listed twice"));
            }
            if self.links[..i].iter().any(|l| l.mac == link.mac) {
                return Err(bad("its MAC address is listed twice"));
            }
            for mac in std::iter::once(&link.mac).chain(link.nic_mac.as_ref()) {
                if mac[0] & 1 != 0 || *mac == [0; 6] {
                    return Err(bad("not a unicast MAC address"));
                }
            }
            let nic = |l: &Link| l.nic_mac.unwrap_or(l.mac);
            if self.links[..i].iter().any(|l| nic(l) == nic(link)) {
                return Err(bad("its guest NIC is listed twice"));
            }
            if !(MIN_MTU..=MAX_MTU).contains(&link.mtu) {
                return Err(bad(&format!(
                    "MTU {} out of range {MIN_MTU}..={MAX_MTU}",
                    link.mtu
                )));
            }
            limit(
                "addresses on one link",
                link.addrs.len(),
                MAX_ADDRS_PER_LINK,
            )?;
            link.addrs.iter().try_for_each(IpNet::check)?;
        }
        let known = |dev: &str| self.links.iter().any(|l| l.name == dev);
        for r in &self.routes {
            let dst = r
                .dst
                .map(|d| d.to_string())
                .unwrap_or_else(|| "default".into());
            let bad = |reason: &str| NetworkConfigError::Route {
                dst: dst.clone(),
                reason: reason.to_string(),
            };
            if let Some(d) = &r.dst {
                d.check()?;
            }
            if !known(&r.dev) {
                return Err(bad(&format!("device {:?} is not a carried link", r.dev)));
            }
            let v4 = r.dst.map(|d| d.addr.is_ipv4());
            let families = [
                v4,
                r.gateway.map(|g| g.is_ipv4()),
                r.src.map(|s| s.is_ipv4()),
            ];
            let first = families.iter().flatten().next();
            if first.is_some_and(|f| families.iter().flatten().any(|x| x != f)) {
                return Err(bad("mixes address families"));
            }
        }
        for n in &self.neighbors {
            if !known(&n.dev) {
                return Err(NetworkConfigError::Neighbor {
                    ip: n.ip,
                    reason: format!("device {:?} is not a carried link", n.dev),
                });
            }
        }
        Ok(())
    }
}

fn limit(what: &'static str, count: usize, limit: usize) -> Result<(), NetworkConfigError> {
    if count > limit {
        return Err(NetworkConfigError::TooMany { what, count, limit });
    }
    Ok(())
}

/// A Linux interface name: 1..=15 bytes, not `.` or `..`, no '/', ':', NUL or whitespace.
pub fn valid_link_name(name: &str) -> bool {
    // IFNAMSIZ is 16 with the NUL.
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// `02:00:...` form, for messages and `ip link` comparisons.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn eth0() -> Link {
        Link {
            name: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addrs: vec![IpNet::new(v4(10, 88, 0, 2), 16).unwrap()],
            nic_mac: None,
        }
    }

    #[test]
    fn validate_checks_links() {
        let mut cfg = NetworkConfig {
            links: vec![eth0()],
            ..NetworkConfig::default()
        };
        assert_eq!(cfg.validate(), Ok(()));
        for bad in ["", "a/b", "0123456789abcdef", "a b", "..", "a:b"] {
            cfg.links[0].name = bad.into();
            assert!(cfg.validate().is_err(), "{bad:?}");
        }
        cfg.links = vec![eth0(), eth0()];
        assert!(cfg.validate().unwrap_err().to_string().contains("twice"));
        cfg.links[1].name = "eth1".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("MAC"));
        cfg.links = vec![Link {
            mac: [1, 0, 0, 0, 0, 1],
            ..eth0()
        }];
        assert!(cfg.validate().unwrap_err().to_string().contains("unicast"));
        for mtu in [0, 67, 65536] {
            cfg.links = vec![Link { mtu, ..eth0() }];
            assert!(cfg.validate().unwrap_err().to_string().contains("MTU"));
        }
        cfg.links = (0..=MAX_LINKS)
            .map(|i| Link {
                name: format!("e{i}"),
                mac: [2, 0, 0, 0, 0, i as u8 + 1],
                ..eth0()
            })
            .collect();
        assert!(matches!(
            cfg.validate(),
            Err(NetworkConfigError::TooMany { .. })
        ));
        cfg.links = vec![Link {
            addrs: vec![IpNet {
                addr: v4(10, 0, 0, 1),
                prefix_len: 33,
            }],
            ..eth0()
        }];
        assert!(matches!(
            cfg.validate(),
            Err(NetworkConfigError::Prefix { .. })
        ));
    }

    #[test]
    fn validate_checks_routes_and_neighbours() {
        let route = Route {
            dst: None,
            gateway: Some(v4(10, 88, 0, 1)),
            dev: "eth0".into(),
            src: None,
            scope: 0,
            mtu: None,
        };
        let mut cfg = NetworkConfig {
            links: vec![eth0()],
            routes: vec![route.clone()],
            neighbors: vec![],
        };
        assert_eq!(cfg.validate(), Ok(()));
        cfg.routes[0].dev = "eth9".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("eth9"));
        cfg.routes = vec![Route {
            gateway: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            dst: Some(IpNet::new(v4(10, 0, 0, 0), 8).unwrap()),
            ..route.clone()
        }];
        assert!(cfg.validate().unwrap_err().to_string().contains("famil"));
        cfg.routes = vec![route];
        cfg.neighbors = vec![Neighbor {
            ip: v4(10, 88, 0, 1),
            mac: [2, 0, 0, 0, 0, 9],
            dev: "eth1".into(),
        }];
        assert!(cfg.validate().unwrap_err().to_string().contains("eth1"));
    }

    #[test]
    fn prefix_longer_than_address_is_rejected() {
        assert!(IpNet::new(v4(10, 0, 0, 1), 33).is_err());
        assert!(IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).is_ok());
        assert!(IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 129).is_err());
    }

    #[test]
    fn wire_form() {
        let cfg = NetworkConfig {
            links: vec![eth0()],
            ..NetworkConfig::default()
        };
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(
            text,
            r#"{"links":[{"name":"eth0","mac":[2,0,0,0,0,1],"mtu":1500,"addrs":[{"addr":"10.88.0.2","prefix_len":16}]}],"routes":[],"neighbors":[]}"#
        );
        assert_eq!(serde_json::from_str::<NetworkConfig>(&text).unwrap(), cfg);
    }
}

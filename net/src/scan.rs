//! What the guest needs to look like the netns: the links worth carrying, their routes and
//! permanent neighbours, read over netlink and filtered by Kata's rules.

use std::net::IpAddr;

pub use husk_protocol::network::{
    valid_link_name, IpNet, Link, Neighbor, NetworkConfig, Route, MAX_ADDRS_PER_LINK, MAX_LINKS,
    MAX_NEIGHBORS, MAX_ROUTES,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteType,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::NetError;
use husk_rtnl::{link_name, Rtnl};

/// The link kinds engines put into a netns and that a tc redirect carries: what Kata's tcfilter
/// model supports for veth-like endpoints.
const CARRIED_KINDS: &[(InfoKind, &str)] = &[
    (InfoKind::Veth, "veth"),
    (InfoKind::MacVlan, "macvlan"),
    (InfoKind::IpVlan, "ipvlan"),
];

/// What [`crate::scan`] returns: the protocol's description of the guest's network.
pub type Scan = NetworkConfig;

fn limit(what: &'static str, count: usize, limit: usize) -> Result<(), NetError> {
    if count > limit {
        return Err(NetError::TooMany { what, count, limit });
    }
    Ok(())
}

fn valid_name(name: &str) -> Result<(), NetError> {
    if valid_link_name(name) {
        Ok(())
    } else {
        Err(NetError::link(name, "not a valid interface name"))
    }
}

/// Reads the netns the calling thread is in.
pub(crate) fn read(rtnl: &mut Rtnl) -> Result<Scan, NetError> {
    let links = rtnl.links()?;
    let addrs: Vec<AddressMessage> = rtnl
        .dump(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
        .collect();
    let routes: Vec<RouteMessage> = rtnl
        .dump(
            "dump routes",
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        )?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .collect();
    let neighbors: Vec<NeighbourMessage> = rtnl
        .dump(
            "dump neighbours",
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        )?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => Some(n),
            _ => None,
        })
        .collect();
    build(&links, &addrs, &routes, &neighbors)
}

/// The address of an address message: IFA_LOCAL when present (IFA_ADDRESS is the peer on
/// point-to-point IPv4 links), else IFA_ADDRESS.
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// IPv6 link-local addresses are not carried: the guest kernel derives its own from the same MAC.
fn carried_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

fn mac6(name: &str, bytes: &[u8]) -> Result<[u8; 6], NetError> {
    <[u8; 6]>::try_from(bytes).map_err(|_| {
        NetError::link(
            name,
            format!("hardware address of {} bytes, not Ethernet", bytes.len()),
        )
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The routing table of a route: RTA_TABLE when present (ids above 255), else rtm_table.
fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// Applies the rules to dumped messages (pure: unit-tested with crafted messages).
pub(crate) fn build(
    links: &[LinkMessage],
    addrs: &[AddressMessage],
    routes: &[RouteMessage],
    neighbors: &[NeighbourMessage],
) -> Result<Scan, NetError> {
    // Links with a carried address, in ifindex order (the dump's); lo never.
    let mut carried: Vec<(u32, &LinkMessage, Vec<IpNet>)> = Vec::new();
    for link in links {
        let name = link_name(link).unwrap_or("");
        if link.header.link_layer_type == LinkLayerType::Loopback || name == "lo" {
            continue;
        }
        let mut nets = Vec::new();
        for a in addrs.iter().filter(|a| a.header.index == link.header.index) {
            let Some(ip) = address_of(a) else { continue };
            if carried_address(&ip) {
                nets.push(IpNet::new(ip, a.header.prefix_len)?);
            }
        }
        if !nets.is_empty() {
            carried.push((link.header.index, link, nets));
        }
    }
    limit("links with addresses", carried.len(), MAX_LINKS)?;

    let mut scan = Scan::default();
    for (_, link, addrs) in &carried {
        let name = link_name(link)
            .ok_or_else(|| NetError::reply("dump links", "a link without a name"))?;
        valid_name(name)?;
        let kind = link_kind(link);
        if !CARRIED_KINDS.iter().any(|(k, _)| Some(k) == kind) {
            let what = match kind {
                Some(k) => format!("of kind {k}"),
                None => "without a kind (a physical device?)".to_string(),
            };
            let kinds: Vec<&str> = CARRIED_KINDS.iter().map(|(_, n)| *n).collect();
            return Err(NetError::link(
                name,
                format!(
                    "a link {what} cannot be carried into the VM (only {})",
                    kinds.join(", ")
                ),
            ));
        }
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(m) => Some(m.as_slice()),
                _ => None,
            })
            .ok_or_else(|| NetError::link(name, "no hardware address"))?;
        let mac = mac6(name, mac)?;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .ok_or_else(|| NetError::link(name, "no MTU"))?;
        limit("addresses on one link", addrs.len(), MAX_ADDRS_PER_LINK)?;
        scan.links.push(Link {
            name: name.to_string(),
            mac,
            mtu,
            addrs: addrs.clone(),
            nic_mac: None,
        });
    }
    let dev_of = |index: u32| -> Option<String> {
        carried
            .iter()
            .find(|(i, _, _)| *i == index)
            .and_then(|(_, l, _)| link_name(l).map(str::to_string))
    };

    for r in routes {
        if route_table(r) != u32::from(RouteHeader::RT_TABLE_MAIN)
            || r.header.kind != RouteType::Unicast
            || r.header.protocol == RouteProtocol::Kernel
        {
            continue;
        }
        let mut dst_ip = None;
        let mut gateway = None;
        let mut src = None;
        let mut oif = None;
        let mut mtu = None;
        let mut multipath = false;
        let mut via = false;
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst_ip = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::PrefSource(a) => src = route_ip(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::MultiPath(_) => multipath = true,
                // RTA_VIA: a gateway of the other family (IPv4 via IPv6), which Route cannot say.
                RouteAttribute::Via(_) => via = true,
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        if let RouteMetric::Mtu(v) = m {
                            mtu = Some(*v);
                        }
                    }
                }
                _ => {}
            }
        }
        let plen = r.header.destination_prefix_length;
        let dst = match dst_ip {
            Some(ip) => Some(IpNet::new(ip, plen)?),
            None if plen == 0 => None,
            None => {
                return Err(NetError::reply(
                    "dump routes",
                    format!("a /{plen} route without a destination"),
                ))
            }
        };
        let describe = || match dst {
            Some(d) => d.to_string(),
            None => "default".to_string(),
        };
        if via {
            return Err(NetError::Route {
                route: describe(),
                reason: "a gateway of another address family cannot be carried into the VM".into(),
            });
        }
        let Some(oif) = oif else {
            let reason = if multipath {
                "multipath routes cannot be carried into the VM"
            } else {
                "a route without a device cannot be carried into the VM"
            };
            return Err(NetError::Route {
                route: describe(),
                reason: reason.into(),
            });
        };
        // Routes over links that are not carried (lo, address-less links) mean nothing in the
        // guest, which has no such device; Kata drops them the same way.
        let Some(dev) = dev_of(oif) else { continue };
        scan.routes.push(Route {
            dst,
            gateway,
            dev,
            src,
            scope: r.header.scope.into(),
            mtu,
        });
    }
    limit("routes", scan.routes.len(), MAX_ROUTES)?;

    for n in neighbors {
        if n.header.state != NeighbourState::Permanent {
            continue;
        }
        let Some(dev) = dev_of(n.header.ifindex) else {
            continue;
        };
        let mut ip = None;
        let mut lladdr = None;
        for attr in &n.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(m) => lladdr = Some(m.as_slice()),
                _ => {}
            }
        }
        // A permanent entry without an IP or MAC (bridge fdb-like) is nothing the guest uses.
        let (Some(ip), Some(lladdr)) = (ip, lladdr) else {
            continue;
        };
        scan.neighbors.push(Neighbor {
            ip,
            mac: mac6(&dev, lladdr)?,
            dev,
        });
    }
    limit("permanent neighbors", scan.neighbors.len(), MAX_NEIGHBORS)?;
    // What the guest agent will check too (MTU range, unicast MACs, ...).
    scan.validate()?;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteScope;
    use netlink_packet_route::AddressFamily;
    use std::net::Ipv4Addr;

    fn link(index: u32, name: &str, kind: Option<InfoKind>, mtu: u32) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.link_layer_type = if name == "lo" {
            LinkLayerType::Loopback
        } else {
            LinkLayerType::Ether
        };
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l.attributes
            .push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, index as u8]));
        l.attributes.push(LinkAttribute::Mtu(mtu));
        if let Some(k) = kind {
            l.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
        }
        l
    }

    fn addr(index: u32, ip: IpAddr, plen: u8) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a.header.prefix_len = plen;
        a.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        a.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv4() {
            a.attributes.push(AddressAttribute::Local(ip));
        }
        a
    }

    fn route(
        oif: u32,
        dst: Option<(IpAddr, u8)>,
        gw: Option<IpAddr>,
        proto: RouteProtocol,
    ) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        r.header.protocol = proto;
        r.header.scope = RouteScope::Universe;
        if let Some((ip, plen)) = dst {
            r.header.destination_prefix_length = plen;
            r.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        }
        if let Some(g) = gw {
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn keeps_addressed_links_and_user_routes_only() {
        let links = [
            link(1, "lo", None, 65536),
            link(2, "eth0", Some(InfoKind::Veth), 1400),
            link(3, "eth1", Some(InfoKind::Veth), 1500), // no address: skipped
        ];
        let ll: IpAddr = "fe80::1".parse().unwrap();
        let g6: IpAddr = "fd00::2".parse().unwrap();
        let addrs = [
            addr(1, v4(127, 0, 0, 1), 8),
            addr(2, v4(10, 0, 0, 2), 24),
            addr(2, g6, 64),
            addr(2, ll, 64),
            addr(3, ll, 64),
        ];
        let mut with_mtu = route(
            2,
            Some((v4(192, 168, 7, 0), 24)),
            Some(v4(10, 0, 0, 1)),
            RouteProtocol::Boot,
        );
        with_mtu
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(1300)]));
        let routes = [
            route(2, Some((v4(10, 0, 0, 0), 24)), None, RouteProtocol::Kernel),
            route(2, None, Some(v4(10, 0, 0, 1)), RouteProtocol::Boot),
            with_mtu,
            route(1, Some((v4(127, 1, 0, 0), 16)), None, RouteProtocol::Static), // on lo
            route(
                3,
                Some((v4(172, 16, 0, 0), 16)),
                None,
                RouteProtocol::Static,
            ), // uncarried
        ];
        let mut perm = NeighbourMessage::default();
        perm.header.ifindex = 2;
        perm.header.state = NeighbourState::Permanent;
        perm.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                Ipv4Addr::new(10, 0, 0, 1),
            )));
        perm.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 1, 2, 3, 4, 5]));
        let mut stale = perm.clone();
        stale.header.state = NeighbourState::Stale;
        let scan = build(&links, &addrs, &routes, &[perm, stale]).unwrap();
        assert_eq!(
            scan,
            Scan {
                links: vec![Link {
                    name: "eth0".into(),
                    mac: [2, 0, 0, 0, 0, 2],
                    mtu: 1400,
                    addrs: vec![
                        IpNet {
                            addr: v4(10, 0, 0, 2),
                            prefix_len: 24
                        },
                        IpNet {
                            addr: g6,
                            prefix_len: 64
                        },
                    ],
                    nic_mac: None,
                }],
                routes: vec![
                    Route {
                        dst: None,
                        gateway: Some(v4(10, 0, 0, 1)),
                        dev: "eth0".into(),
                        src: None,
                        scope: 0,
                        mtu: None
                    },
                    Route {
                        dst: Some(IpNet {
                            addr: v4(192, 168, 7, 0),
                            prefix_len: 24
                        }),
                        gateway: Some(v4(10, 0, 0, 1)),
                        dev: "eth0".into(),
                        src: None,
                        scope: 0,
                        mtu: Some(1300)
                    },
                ],
                neighbors: vec![Neighbor {
                    ip: v4(10, 0, 0, 1),
                    mac: [2, 1, 2, 3, 4, 5],
                    dev: "eth0".into()
                }],
            }
        );
        // It is a protocol message: it survives JSON.
        let json = serde_json::to_string(&scan).unwrap();
        assert_eq!(serde_json::from_str::<Scan>(&json).unwrap(), scan);
    }

    #[test]
    fn too_many_links() {
        let links: Vec<_> = (2..=10)
            .map(|i| link(i, &format!("eth{i}"), Some(InfoKind::Veth), 1500))
            .collect();
        let addrs: Vec<_> = (2..=10)
            .map(|i| addr(i, v4(10, 0, i as u8, 2), 24))
            .collect();
        let err = build(&links, &addrs, &[], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                NetError::TooMany {
                    count: 9,
                    limit: MAX_LINKS,
                    ..
                }
            ),
            "{err}"
        );
        // Eight is fine.
        assert_eq!(
            build(&links[..8], &addrs[..8], &[], &[])
                .unwrap()
                .links
                .len(),
            8
        );
    }

    #[test]
    fn too_many_addresses() {
        let links = [link(2, "eth0", Some(InfoKind::Veth), 1500)];
        let addrs: Vec<_> = (0..=MAX_ADDRS_PER_LINK as u8)
            .map(|i| addr(2, v4(10, 0, 0, i + 1), 24))
            .collect();
        let err = build(&links, &addrs, &[], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                NetError::TooMany {
                    limit: MAX_ADDRS_PER_LINK,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn too_many_routes() {
        let links = [link(2, "eth0", Some(InfoKind::Veth), 1500)];
        let addrs = [addr(2, v4(10, 0, 0, 2), 24)];
        let routes: Vec<_> = (0..=MAX_ROUTES as u8)
            .map(|i| {
                route(
                    2,
                    Some((v4(172, 16, i, 0), 24)),
                    None,
                    RouteProtocol::Static,
                )
            })
            .collect();
        let err = build(&links, &addrs, &routes, &[]).unwrap_err();
        assert!(
            matches!(
                err,
                NetError::TooMany {
                    limit: MAX_ROUTES,
                    ..
                }
            ),
            "{err}"
        );
        assert!(build(&links, &addrs, &routes[..MAX_ROUTES], &[]).is_ok());
    }

    #[test]
    fn uncarriable_links_are_refused() {
        let addrs = [addr(2, v4(10, 0, 0, 2), 24)];
        for (kind, want) in [
            (Some(InfoKind::Bridge), "of kind bridge"),
            (Some(InfoKind::Tun), "of kind tun"),
            (None, "without a kind"),
        ] {
            let err = build(&[link(2, "x0", kind, 1500)], &addrs, &[], &[]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("link x0: a link ") && msg.contains(want),
                "{msg}"
            );
        }
        for kind in [InfoKind::MacVlan, InfoKind::IpVlan] {
            assert!(build(&[link(2, "x0", Some(kind), 1500)], &addrs, &[], &[]).is_ok());
        }
        // Not Ethernet.
        let mut odd = link(2, "x0", Some(InfoKind::Veth), 1500);
        odd.attributes
            .retain(|a| !matches!(a, LinkAttribute::Address(_)));
        odd.attributes
            .push(LinkAttribute::Address(vec![1, 2, 3, 4]));
        let err = build(&[odd], &addrs, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("not Ethernet"), "{err}");
    }

    #[test]
    fn multipath_route_is_refused() {
        let links = [link(2, "eth0", Some(InfoKind::Veth), 1500)];
        let addrs = [addr(2, v4(10, 0, 0, 2), 24)];
        let mut r = route(2, None, None, RouteProtocol::Static);
        r.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        r.attributes.push(RouteAttribute::MultiPath(vec![]));
        let err = build(&links, &addrs, &[r], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "route default: multipath routes cannot be carried into the VM"
        );
    }

    #[test]
    fn gateway_of_the_other_family_is_refused() {
        use netlink_packet_route::route::RouteVia;
        let links = [link(2, "eth0", Some(InfoKind::Veth), 1500)];
        let addrs = [addr(2, v4(10, 0, 0, 2), 24)];
        let mut r = route(2, None, None, RouteProtocol::Static);
        r.attributes.push(RouteAttribute::Via(RouteVia::Inet6(
            "fe80::1".parse().unwrap(),
        )));
        let err = build(&links, &addrs, &[r], &[]).unwrap_err();
        assert!(err.to_string().contains("another address family"), "{err}");
    }

    #[test]
    fn other_tables_and_types_are_ignored() {
        let links = [link(2, "eth0", Some(InfoKind::Veth), 1500)];
        let addrs = [addr(2, v4(10, 0, 0, 2), 24)];
        let mut local = route(2, Some((v4(10, 0, 0, 2), 32)), None, RouteProtocol::Static);
        local.header.table = 255;
        let mut in_table_1000 = route(2, None, Some(v4(10, 0, 0, 1)), RouteProtocol::Static);
        in_table_1000.header.table = 252;
        in_table_1000.attributes.push(RouteAttribute::Table(1000));
        let mut blackhole = route(2, Some((v4(10, 9, 0, 0), 16)), None, RouteProtocol::Static);
        blackhole.header.kind = RouteType::BlackHole;
        let scan = build(&links, &addrs, &[local, in_table_1000, blackhole], &[]).unwrap();
        assert!(scan.routes.is_empty(), "{:?}", scan.routes);
    }
}

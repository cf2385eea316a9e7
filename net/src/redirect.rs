//! Carrying links to taps and back: per link a tap `hk<n>`, ingress qdiscs on both, and a
//! redirect filter each way. Runs on the netns thread (netns::run_in).

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoKind, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::tc::TcMessage;
use netlink_packet_route::RouteNetlinkMessage;

use crate::tap::{self, Tap};
use crate::{tc, NetError, Scan};
use husk_rtnl::{link_name, Rtnl};

/// What connect made so far, undone in reverse on failure.
enum Made {
    /// An ingress qdisc on a netns link (deleting it drops its filter too).
    Ingress(u32),
    /// A tap (it also goes with its fd; deleting it is immediate and explicit).
    Tap(u32),
}

/// Where the tap of each link comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taps {
    /// Made here (`connect`).
    Create,
    /// Made earlier by [`prepare`] and held by the VMM (`attach`).
    Existing,
}

pub(crate) fn connect(scan: &Scan) -> Result<Vec<Tap>, NetError> {
    wire(scan, Taps::Create)
}

pub(crate) fn attach(scan: &Scan) -> Result<(), NetError> {
    wire(scan, Taps::Existing).map(drop)
}

/// Spare taps `hk0`.. for a network that does not exist yet: down, not joined to anything.
pub(crate) fn prepare(count: usize) -> Result<Vec<Tap>, NetError> {
    let mut rtnl = Rtnl::open()?;
    let links = rtnl.links()?;
    let mut taps = Vec::new();
    for n in 0..count {
        let name = tap::name(n);
        let made = (|| {
            if links.iter().any(|l| link_name(l) == Some(name.as_str())) {
                return Err(name_taken(&name));
            }
            let fd = tap::create(&name)?;
            let index = rtnl.link_index(&name)?.ok_or_else(|| NetError::Tap {
                name: name.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "created but not listed"),
            })?;
            // No IPv6 link-local either: the tap must stay silent until it is joined.
            if let Err(e) = no_link_local(&mut rtnl, index) {
                let _ = del_link(&mut rtnl, index);
                return Err(e);
            }
            Ok(fd)
        })();
        match made {
            Ok(fd) => taps.push(Tap {
                link: String::new(),
                name,
                fd,
            }),
            // The taps made so far go with their fds.
            Err(e) => return Err(e),
        }
    }
    Ok(taps)
}

fn name_taken(name: &str) -> NetError {
    NetError::Tap {
        name: name.to_string(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a device with that name already exists in the network namespace",
        ),
    }
}

fn wire(scan: &Scan, how: Taps) -> Result<Vec<Tap>, NetError> {
    let mut rtnl = Rtnl::open()?;
    let mut made = Vec::new();
    let mut taps = Vec::new();
    match connect_links(&mut rtnl, scan, how, &mut made, &mut taps) {
        Ok(()) => Ok(taps),
        Err(e) => {
            // Best effort: the first error is the one worth reporting.
            for m in made.iter().rev() {
                let _ = match m {
                    Made::Ingress(index) => del_ingress(&mut rtnl, *index),
                    Made::Tap(index) => del_link(&mut rtnl, *index),
                };
            }
            drop(taps);
            Err(e)
        }
    }
}

fn connect_links(
    rtnl: &mut Rtnl,
    scan: &Scan,
    how: Taps,
    made: &mut Vec<Made>,
    taps: &mut Vec<Tap>,
) -> Result<(), NetError> {
    let links = rtnl.links()?;
    for (n, want) in scan.links.iter().enumerate() {
        let link = links
            .iter()
            .find(|l| link_name(l) == Some(want.name.as_str()))
            .ok_or_else(|| NetError::link(&want.name, "no such link in the network namespace"))?;
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m.as_slice()),
            _ => None,
        });
        if mac != Some(&want.mac[..]) {
            return Err(NetError::link(
                &want.name,
                "hardware address changed since the scan",
            ));
        }
        let link_index = link.header.index;

        let name = tap::name(n);
        let existing = links.iter().find(|l| link_name(l) == Some(name.as_str()));
        let tap_index = match (how, existing) {
            // TUNSETIFF would attach to a free persistent tap of that name: never share one.
            (Taps::Create, Some(_)) => return Err(name_taken(&name)),
            (Taps::Create, None) => {
                let fd = tap::create(&name)?;
                let tap_index = rtnl.link_index(&name)?.ok_or_else(|| NetError::Tap {
                    name: name.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "created but not listed"),
                })?;
                made.push(Made::Tap(tap_index));
                taps.push(Tap {
                    link: want.name.clone(),
                    name: name.clone(),
                    fd,
                });
                tap_index
            }
            (Taps::Existing, Some(l)) if is_tun(l) => l.header.index,
            (Taps::Existing, _) => return Err(NetError::Tap {
                name,
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "no spare tap of that name: the VM has fewer spare NICs than links, or none \
                         (a spare needs /dev/net/tun when the container is created)",
                ),
            }),
        };
        configure_tap(rtnl, tap_index, want.mtu)?;

        add_ingress(rtnl, link_index).map_err(|e| match e.errno() {
            Some(libc::EEXIST) => NetError::link(
                &want.name,
                "already has an ingress qdisc (another tc setup on this link?)",
            ),
            _ => e,
        })?;
        made.push(Made::Ingress(link_index));
        add_ingress(rtnl, tap_index)?;
        add_redirect(rtnl, link_index, tap_index)?;
        add_redirect(rtnl, tap_index, link_index)?;
    }
    Ok(())
}

/// MTU of the link, no IPv6 link-local (the tap must not talk on the guest's wire), up.
fn configure_tap(rtnl: &mut Rtnl, index: u32, mtu: u32) -> Result<(), NetError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    rtnl.request(
        &format!("set mtu {mtu} on tap"),
        RouteNetlinkMessage::SetLink(msg),
        0,
    )?;
    no_link_local(rtnl, index)?;

    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    Ok(rtnl.request("set tap up", RouteNetlinkMessage::SetLink(msg), 0)?)
}

fn no_link_local(rtnl: &mut Rtnl, index: u32) -> Result<(), NetError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    match rtnl.request(
        "set addrgenmode none on tap",
        RouteNetlinkMessage::SetLink(msg),
        0,
    ) {
        // A kernel or netns without IPv6 has no link-local to suppress.
        Err(e) if matches!(e.errno(), Some(libc::EAFNOSUPPORT) | Some(libc::EOPNOTSUPP)) => Ok(()),
        other => Ok(other?),
    }
}

fn add_ingress(rtnl: &mut Rtnl, index: u32) -> Result<(), NetError> {
    Ok(rtnl.request(
        &format!("add ingress qdisc on ifindex {index}"),
        RouteNetlinkMessage::NewQueueDiscipline(tc::ingress_qdisc(index)),
        NLM_F_CREATE | NLM_F_EXCL,
    )?)
}

fn add_redirect(rtnl: &mut Rtnl, from: u32, to: u32) -> Result<(), NetError> {
    Ok(rtnl.request(
        &format!("add redirect filter ifindex {from} -> {to}"),
        RouteNetlinkMessage::NewTrafficFilter(tc::redirect_filter(from, to)),
        NLM_F_CREATE | NLM_F_EXCL,
    )?)
}

fn del_ingress(rtnl: &mut Rtnl, index: u32) -> Result<(), NetError> {
    match rtnl.request(
        &format!("delete ingress qdisc on ifindex {index}"),
        RouteNetlinkMessage::DelQueueDiscipline(tc::ingress_qdisc(index)),
        0,
    ) {
        // Already gone (with its link, or by someone else): what we wanted.
        Err(e)
            if matches!(
                e.errno(),
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

fn del_link(rtnl: &mut Rtnl, index: u32) -> Result<(), NetError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match rtnl.request(
        &format!("delete link ifindex {index}"),
        RouteNetlinkMessage::DelLink(msg),
        0,
    ) {
        Err(e) if matches!(e.errno(), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(()),
        other => Ok(other?),
    }
}

fn is_tun(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))),
        _ => false,
    })
}

/// Removes our taps and the ingress qdiscs that redirect to them (or to a device that is gone,
/// which is what is left of our redirect once the VMM closed a tap). Ingress qdiscs of others
/// (no mirred to our taps) are left alone.
pub(crate) fn disconnect() -> Result<(), NetError> {
    let mut rtnl = Rtnl::open()?;
    let links = rtnl.links()?;
    let ours: Vec<u32> = links
        .iter()
        .filter(|l| link_name(l).is_some_and(tap::is_ours) && is_tun(l))
        .map(|l| l.header.index)
        .collect();
    let exists = |index: u32| links.iter().any(|l| l.header.index == index);

    let qdiscs = rtnl.dump(
        "dump qdiscs",
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
    )?;
    for q in qdiscs {
        let RouteNetlinkMessage::NewQueueDiscipline(q) = q else {
            continue;
        };
        let index = q.header.index as u32;
        if tc::kind(&q) != Some("ingress") || ours.contains(&index) {
            continue;
        }
        let mut filter = TcMessage::with_index(index as i32);
        filter.header.parent = tc::INGRESS_HANDLE;
        let filters = rtnl.dump(
            &format!("dump ingress filters of ifindex {index}"),
            RouteNetlinkMessage::GetTrafficFilter(filter),
        )?;
        let redirects_to_us = filters.iter().any(|f| match f {
            RouteNetlinkMessage::NewTrafficFilter(f) => tc::mirred_targets(f)
                .iter()
                .any(|t| ours.contains(t) || !exists(*t)),
            _ => false,
        });
        if redirects_to_us {
            del_ingress(&mut rtnl, index)?;
        }
    }
    for index in ours {
        del_link(&mut rtnl, index)?;
    }
    Ok(())
}

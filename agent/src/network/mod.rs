//! The guest's network: the links, routes and neighbours the host found in the container's
//! network namespace ([`NetworkConfig`]), set up in the guest's initial network namespace,
//! where the container then runs (the host leaves the network namespace out of the spec).
//!
//! The host gives the VM one virtio-net NIC per link with the link's MAC; the agent finds each
//! NIC by that MAC, renames it and gives it the MTU and addresses, then adds the routes and
//! the permanent neighbours. The guest kernel may lack IPv6: IPv6 entries are then skipped
//! (logged), not fatal.
//!
//! A network the engine sets up only after `create` ([`ContainerNetwork`]) arrives when the
//! container already has a network namespace of its own: each link names a spare NIC
//! (`Link::nic_mac`), which is moved from the guest's initial namespace into the container's
//! and set up there the same way, with the link's MAC.

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use husk_protocol::network::{mac_string, IpNet, Link, Neighbor, NetworkConfig, Route};
use husk_protocol::Response;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use husk_rtnl::{link_mac, link_name, Rtnl, RtnlError as NlError};

/// How long a NIC may take to appear: virtio-net probes during boot, normally long before the
/// host's request arrives.
const LINK_WAIT: Duration = Duration::from_secs(5);
const LINK_POLL: Duration = Duration::from_millis(50);

/// Where a link whose name a carried link needs is moved to (fits IFNAMSIZ with any ifindex).
const ASIDE_PREFIX: &str = "husk-old";

/// The guest's network, configured at most once per VM.
pub struct Network {
    link_wait: Duration,
    /// None: probe the kernel; tests force it.
    ipv6: Option<bool>,
    attempted: AtomicBool,
    configured: AtomicBool,
}

static GUEST: Network = Network::new(LINK_WAIT, None);

/// `Request::ConfigureNetwork`, in the agent's own (the guest's initial) network namespace.
pub fn configure_guest(cfg: &NetworkConfig) -> Response {
    match GUEST.configure(cfg) {
        Ok(()) => Response::Ok,
        Err(message) => Response::Error { message },
    }
}

/// The guest's network was configured for the container: its network namespace is the
/// container's, so what runc allows only with a network namespace (net.* sysctls) is allowed.
pub fn guest_configured() -> bool {
    GUEST.configured.load(Ordering::SeqCst)
}

impl Network {
    pub const fn new(link_wait: Duration, ipv6: Option<bool>) -> Self {
        Network {
            link_wait,
            ipv6,
            attempted: AtomicBool::new(false),
            configured: AtomicBool::new(false),
        }
    }

    /// Checks everything first (the request crosses the VM boundary), then sets up the calling
    /// thread's network namespace. A refused description changes nothing and may be corrected;
    /// once anything was changed, a second call is refused, whatever the first one's outcome.
    pub fn configure(&self, cfg: &NetworkConfig) -> Result<(), String> {
        check(cfg)?;
        if self.attempted.swap(true, Ordering::SeqCst) {
            return Err("the guest network was already configured: ConfigureNetwork is accepted once per VM".into());
        }
        let ipv6 = self.ipv6.unwrap_or_else(kernel_has_ipv6);
        // Unprefixed: the host reports it as "guest network: ...".
        apply(cfg, ipv6, self.link_wait)?;
        self.configured.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A container's own network (`Request::ConfigureContainerNetwork`), configured at most once.
/// It lives in the container's record, so the flag goes when the container is deleted; it is
/// independent of the VM-wide [`Network`].
#[derive(Default)]
pub struct ContainerNetwork {
    attempted: AtomicBool,
}

/// Where a moved NIC is named in the container's namespace until it gets its link's name there
/// (its guest name may be taken in the container's namespace; IFNAMSIZ fits with any index).
const MOVED_PREFIX: &str = "husk-nic";

/// A failed container network: whether anything was changed decides whether the once-flag
/// stays taken.
struct Failed {
    changed: bool,
    message: String,
}

impl Failed {
    fn before_change(message: impl Into<String>) -> Self {
        Failed {
            changed: false,
            message: message.into(),
        }
    }

    fn after_change(message: impl Into<String>) -> Self {
        Failed {
            changed: true,
            message: message.into(),
        }
    }
}

/// The checks `ConfigureContainerNetwork` makes before anything else: a valid description
/// whose every link names the spare NIC to use.
pub fn check_container_config(cfg: &NetworkConfig) -> Result<(), String> {
    check(cfg)?;
    if let Some(l) = cfg.links.iter().find(|l| l.nic_mac.is_none()) {
        return Err(format!(
            "network configuration refused: link {} ({}): no nic_mac: a container's network \
             is set up on a spare NIC of the VM",
            l.name,
            mac_string(&l.mac)
        ));
    }
    Ok(())
}

impl ContainerNetwork {
    /// Moves each link's spare NIC from the calling thread's (the guest's initial) network
    /// namespace into `netns`, the container's, and sets it up there. A refused description,
    /// a missing NIC or a refused move change nothing and may be retried; once a NIC was moved,
    /// a second call is refused, whatever the first one's outcome.
    pub fn configure(&self, netns: BorrowedFd<'_>, cfg: &NetworkConfig) -> Result<(), String> {
        self.configure_with(&GUEST, netns, cfg)
    }

    /// With the wait and IPv6 setting of `settings` (not its once-flag).
    fn configure_with(
        &self,
        settings: &Network,
        netns: BorrowedFd<'_>,
        cfg: &NetworkConfig,
    ) -> Result<(), String> {
        check_container_config(cfg)?;
        if self.attempted.swap(true, Ordering::SeqCst) {
            return Err("the container's network was already configured: \
                        ConfigureContainerNetwork is accepted once per container"
                .into());
        }
        let ipv6 = settings.ipv6.unwrap_or_else(kernel_has_ipv6);
        match move_and_apply(cfg, netns, ipv6, settings.link_wait) {
            Ok(()) => Ok(()),
            Err(f) => {
                if !f.changed {
                    self.attempted.store(false, Ordering::SeqCst);
                }
                Err(f.message)
            }
        }
    }
}

/// A namespace's identity, (dev, ino) of its nsfs file.
fn ns_id(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn move_and_apply(
    cfg: &NetworkConfig,
    netns: BorrowedFd<'_>,
    ipv6: bool,
    link_wait: Duration,
) -> Result<(), Failed> {
    let Some(target) = ns_id(&format!("/proc/self/fd/{}", netns.as_raw_fd())) else {
        return Err(Failed::before_change(
            "the container's network namespace cannot be identified",
        ));
    };
    if ns_id("/proc/thread-self/ns/net") == Some(target) {
        // Moving the NIC would be a no-op and set the guest's network up instead.
        return Err(Failed::before_change(
            "the container has no network namespace of its own (it shares the guest's)",
        ));
    }
    let mut rtnl = Rtnl::open().map_err(|e| Failed::before_change(e.to_string()))?;
    let what = |l: &Link| format!("link {} ({})", l.name, mac_string(&l.mac));
    // Every NIC is found before any is moved: a missing one changes nothing.
    let mut nics = Vec::with_capacity(cfg.links.len());
    for link in &cfg.links {
        let nic = link.nic_mac.unwrap_or(link.mac);
        let index = wait_for_mac(&mut rtnl, &nic, link_wait)
            .map_err(|e| Failed::before_change(format!("{}: spare NIC: {e}", what(link))))?;
        nics.push(index);
    }
    for (n, (link, index)) in cfg.links.iter().zip(nics).enumerate() {
        // Until the first NIC has moved nothing changed (a spare is down anyway). Later
        // failures keep the once-flag taken rather than move NICs back: the VM has one spare
        // today (MAX_SPARE_NICS), so only the first move can fail.
        let fail = |e: NlError| {
            let message = format!("{}: {e}", what(link));
            if n == 0 {
                Failed::before_change(message)
            } else {
                Failed::after_change(message)
            }
        };
        set_flags(&mut rtnl, index, false, "set the spare NIC down").map_err(fail)?;
        set_link(
            &mut rtnl,
            index,
            vec![
                LinkAttribute::NetNsFd(netns.as_raw_fd()),
                LinkAttribute::IfName(format!("{MOVED_PREFIX}{n}")),
            ],
            "move the spare NIC into the container's network namespace",
        )
        .map_err(fail)?;
    }
    // setns applies to the calling thread: only this short-lived one enters the container's
    // namespace, the agent's threads stay in the guest's.
    std::thread::scope(|s| {
        let configure = std::thread::Builder::new()
            .name("container-net".into())
            .spawn_scoped(s, || {
                // SAFETY: plain syscall on a namespace fd borrowed for the scope.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!(
                        "enter the container's network namespace: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                apply(cfg, ipv6, link_wait)
            })
            .map_err(|e| Failed::after_change(format!("cannot start a thread: {e}")))?;
        match configure.join() {
            Ok(result) => result.map_err(Failed::after_change),
            Err(_) => Err(Failed::after_change(
                "the container network thread panicked",
            )),
        }
    })
}

/// The checks both requests make before they touch anything.
fn check(cfg: &NetworkConfig) -> Result<(), String> {
    cfg.validate()
        .map_err(|e| format!("network configuration refused: {e}"))?;
    if let Some(l) = cfg.links.iter().find(|l| l.name == "lo") {
        return Err(format!(
            "network configuration refused: link {} ({}): lo is the guest's loopback",
            l.name,
            mac_string(&l.mac)
        ));
    }
    Ok(())
}

/// Whether this process is in another network namespace than PID 1 (the test mode's guard).
/// Where PID 1's cannot be read (a sandbox may deny it across namespaces), the parent's, which
/// for `unshare -n husk-agent` is still in the original one, stands in.
pub fn in_own_netns() -> bool {
    let ns = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let other = ns("1").or_else(|| ns(&std::os::unix::process::parent_id().to_string()));
    matches!((ns("self"), other), (Some(mine), Some(other)) if mine != other)
}

/// Brings `lo` up in the calling thread's network namespace: a new namespace starts with it
/// down, and containers (`--network none` too) expect a working 127.0.0.1.
pub fn loopback_up() -> Result<(), String> {
    let mut rtnl = Rtnl::open().map_err(|e| e.to_string())?;
    let lo = find_link(&mut rtnl, |l| link_name(l) == Some("lo"))
        .map_err(|e| e.to_string())?
        .ok_or("no lo in the network namespace")?;
    set_flags(&mut rtnl, lo, true, "set lo up").map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether the kernel has IPv6 (the guest kernel is built without it today).
fn kernel_has_ipv6() -> bool {
    // SAFETY: plain socket(2); the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    true
}

fn skip_ipv6(what: &str) {
    eprintln!("husk-agent: {what}: skipped, the guest kernel has no IPv6");
}

fn apply(cfg: &NetworkConfig, ipv6: bool, link_wait: Duration) -> Result<(), String> {
    let mut rtnl = Rtnl::open().map_err(|e| e.to_string())?;
    let lo = find_link(&mut rtnl, |l| link_name(l) == Some("lo"))
        .map_err(|e| e.to_string())?
        .ok_or("no lo in the network namespace")?;
    set_flags(&mut rtnl, lo, true, "set lo up").map_err(|e| e.to_string())?;
    for link in &cfg.links {
        configure_link(&mut rtnl, link, ipv6, link_wait)
            .map_err(|e| format!("link {} ({}): {e}", link.name, mac_string(&link.mac)))?;
    }
    // Names are final now.
    let links = rtnl.links().map_err(|e| e.to_string())?;
    let index = |dev: &str| {
        links
            .iter()
            .find(|l| link_name(l) == Some(dev))
            .map(|l| l.header.index)
            .ok_or_else(|| format!("device {dev} is gone"))
    };
    for route in route_order(&cfg.routes) {
        let what = route_text(route);
        if route_is_ipv6(route) && !ipv6 {
            skip_ipv6(&format!("route {what}"));
            continue;
        }
        let oif = index(&route.dev).map_err(|e| format!("route {what}: {e}"))?;
        add_route(&mut rtnl, route, oif, &what).map_err(|e| e.to_string())?;
    }
    for n in &cfg.neighbors {
        let what = format!(
            "neighbour {} lladdr {} dev {}",
            n.ip,
            mac_string(&n.mac),
            n.dev
        );
        if n.ip.is_ipv6() && !ipv6 {
            skip_ipv6(&what);
            continue;
        }
        let ifindex = index(&n.dev).map_err(|e| format!("{what}: {e}"))?;
        add_neighbour(&mut rtnl, n, ifindex, &what).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The link's NIC (the one with `nic_mac` if given, else the one with the link's MAC): down, the
/// link's MAC (a spare NIC), renamed (moving a link that has the name out of the way), MTU,
/// addresses, up.
fn configure_link(
    rtnl: &mut Rtnl,
    want: &Link,
    ipv6: bool,
    link_wait: Duration,
) -> Result<(), String> {
    let nic = want.nic_mac.unwrap_or(want.mac);
    let index = wait_for_mac(rtnl, &nic, link_wait)?;
    set_flags(rtnl, index, false, "set down").map_err(|e| e.to_string())?;
    if nic != want.mac {
        // While down: the address cannot change on a running link of every driver.
        set_link(
            rtnl,
            index,
            vec![LinkAttribute::Address(want.mac.to_vec())],
            &format!("set MAC {}", mac_string(&want.mac)),
        )
        .map_err(|e| e.to_string())?;
    }
    let links = rtnl.links().map_err(|e| e.to_string())?;
    let current = links.iter().find(|l| l.header.index == index);
    if current.and_then(link_name) != Some(want.name.as_str()) {
        if let Some(other) = links
            .iter()
            .find(|l| link_name(l) == Some(want.name.as_str()))
        {
            // A NIC the kernel named eth0 while the carried eth0 is another NIC: it is either
            // carried too (renamed later) or unused.
            let aside = format!("{ASIDE_PREFIX}{}", other.header.index);
            set_flags(
                rtnl,
                other.header.index,
                false,
                "set the link of that name down",
            )
            .map_err(|e| e.to_string())?;
            set_link(
                rtnl,
                other.header.index,
                vec![LinkAttribute::IfName(aside.clone())],
                &format!("rename the link already named so to {aside}"),
            )
            .map_err(|e| e.to_string())?;
        }
        set_link(
            rtnl,
            index,
            vec![LinkAttribute::IfName(want.name.clone())],
            "rename",
        )
        .map_err(|e| e.to_string())?;
    }
    set_link(
        rtnl,
        index,
        vec![LinkAttribute::Mtu(want.mtu)],
        &format!("set MTU {}", want.mtu),
    )
    .map_err(|e| e.to_string())?;
    for addr in &want.addrs {
        if addr.addr.is_ipv6() && !ipv6 {
            skip_ipv6(&format!("address {addr} on {}", want.name));
            continue;
        }
        add_address(rtnl, index, addr).map_err(|e| e.to_string())?;
    }
    set_flags(rtnl, index, true, "set up").map_err(|e| e.to_string())?;
    Ok(())
}

fn find_link(rtnl: &mut Rtnl, pred: impl Fn(&LinkMessage) -> bool) -> Result<Option<u32>, NlError> {
    Ok(rtnl
        .links()?
        .iter()
        .find(|l| pred(l))
        .map(|l| l.header.index))
}

fn wait_for_mac(rtnl: &mut Rtnl, mac: &[u8; 6], wait: Duration) -> Result<u32, String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(index) =
            find_link(rtnl, |l| link_mac(l) == Some(&mac[..])).map_err(|e| e.to_string())?
        {
            return Ok(index);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no network device with MAC {} in the guest (waited {} ms for it)",
                mac_string(mac),
                wait.as_millis()
            ));
        }
        std::thread::sleep(LINK_POLL);
    }
}

fn set_link(
    rtnl: &mut Rtnl,
    index: u32,
    attributes: Vec<LinkAttribute>,
    op: &str,
) -> Result<(), NlError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = attributes;
    rtnl.request(op, RouteNetlinkMessage::SetLink(msg), 0)
}

fn set_flags(rtnl: &mut Rtnl, index: u32, up: bool, op: &str) -> Result<(), NlError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = if up {
        LinkFlags::Up
    } else {
        LinkFlags::empty()
    };
    msg.header.change_mask = LinkFlags::Up;
    rtnl.request(op, RouteNetlinkMessage::SetLink(msg), 0)
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn add_address(rtnl: &mut Rtnl, index: u32, net: &IpNet) -> Result<(), NlError> {
    let mut msg = AddressMessage::default();
    msg.header.family = family(&net.addr);
    msg.header.prefix_len = net.prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(net.addr));
    msg.attributes.push(AddressAttribute::Address(net.addr));
    match net.addr {
        IpAddr::V4(a) if net.prefix_len <= 30 => {
            // As podman and `ip addr add ... brd +` give it: the subnet's broadcast.
            let host_bits = u32::MAX.checked_shr(u32::from(net.prefix_len)).unwrap_or(0);
            let brd = u32::from(a) | host_bits;
            msg.attributes.push(AddressAttribute::Broadcast(brd.into()));
        }
        IpAddr::V4(_) => {}
        IpAddr::V6(_) => {
            // The address passed DAD where the host found it; the guest's NIC is that wire.
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    rtnl.request(
        &format!("add address {net}"),
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

fn route_is_ipv6(r: &Route) -> bool {
    r.dst.is_some_and(|d| d.addr.is_ipv6())
        || r.gateway.is_some_and(|g| g.is_ipv6())
        || r.src.is_some_and(|s| s.is_ipv6())
}

/// Routes without a gateway first (a gateway must be reachable when its route is added), then
/// gateway routes, default routes last; otherwise in the order given.
fn route_order(routes: &[Route]) -> Vec<&Route> {
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by_key(|r| (r.dst.is_none(), r.gateway.is_some()));
    ordered
}

fn route_text(r: &Route) -> String {
    let mut s = r
        .dst
        .map(|d| d.to_string())
        .unwrap_or_else(|| "default".into());
    if let Some(g) = r.gateway {
        s += &format!(" via {g}");
    }
    s += &format!(" dev {}", r.dev);
    s
}

fn add_route(rtnl: &mut Rtnl, r: &Route, oif: u32, what: &str) -> Result<(), NlError> {
    let mut msg = RouteMessage::default();
    // A default route with neither gateway nor source names no family: IPv4.
    msg.header.address_family = if route_is_ipv6(r) {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::from(r.scope);
    msg.header.kind = RouteType::Unicast;
    if let Some(dst) = r.dst {
        msg.header.destination_prefix_length = dst.prefix_len;
        msg.attributes
            .push(RouteAttribute::Destination(dst.addr.into()));
    }
    if let Some(g) = r.gateway {
        msg.attributes.push(RouteAttribute::Gateway(g.into()));
    }
    if let Some(s) = r.src {
        msg.attributes.push(RouteAttribute::PrefSource(s.into()));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    if let Some(mtu) = r.mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    rtnl.request(
        &format!("add route {what}"),
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

fn add_neighbour(rtnl: &mut Rtnl, n: &Neighbor, ifindex: u32, what: &str) -> Result<(), NlError> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(&n.ip);
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(n.ip.into()));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    rtnl.request(
        &format!("add {what}"),
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

//! Host side of husk networking (issue 11): read a container's network namespace and carry its
//! links into the microVM through taps.
//!
//! The engine (podman/netavark, CNI) sets up a netns with a veth; husk leaves it as it is (the
//! veth keeps its addresses, so `-p` and the engine's view stay right) and adds, per link, a tap
//! `hk<n>` joined to the link by tc redirects both ways (Kata's tcfilter model). The tap fd works
//! from any netns: husk-vmm, whose own netns stays empty, gets it and backs virtio-net with it.
//! [`scan`] describes the netns for the guest agent, [`connect`] makes the taps, [`disconnect`]
//! removes them.
//!
//! Every namespace operation runs on a short-lived thread that `setns`es into the namespace, so
//! the caller's threads never change namespace; netlink sockets and tun files are opened there.

mod error;
mod netns;
mod redirect;
mod scan;
mod tap;
mod tc;

use std::path::Path;

pub use error::NetError;
pub use scan::{
    IpNet, Link, Neighbor, Route, Scan, MAX_ADDRS_PER_LINK, MAX_LINKS, MAX_NEIGHBORS, MAX_ROUTES,
};
pub use tap::{Tap, VNET_HDR_LEN};

/// Describes the netns at `netns` (a netns file such as `/run/netns/x` or `/proc/PID/ns/net`):
/// links other than `lo` that have addresses (veth, macvlan, ipvlan; others are an error), their
/// addresses (IPv6 link-local left out), main-table unicast routes the kernel did not add itself,
/// and permanent neighbours.
pub fn scan(netns: &Path) -> Result<Scan, NetError> {
    netns::run_in(netns, || {
        let mut rtnl = husk_rtnl::Rtnl::open()?;
        scan::read(&mut rtnl)
    })
}

/// Per link of `scan` (in order; link n gets tap `hk<n>`): a tap in the netns (IFF_TAP,
/// IFF_NO_PI, IFF_VNET_HDR, one queue, 12-byte vnet header, the link's MTU, up), an ingress qdisc
/// on link and tap, and a u32 match-all mirred egress redirect each way. Returns the tap fds.
/// On failure nothing it made is left behind.
pub fn connect(netns: &Path, scan: &Scan) -> Result<Vec<Tap>, NetError> {
    scan.validate()?;
    let scan = scan.clone();
    netns::run_in(netns, move || redirect::connect(&scan))
}

/// `count` spare taps `hk0`.. in `netns` (down, joined to nothing) for a network the engine
/// sets up later; [`attach`] joins them to its links. Returns the tap fds.
pub fn prepare(netns: &Path, count: usize) -> Result<Vec<Tap>, NetError> {
    netns::run_in(netns, move || redirect::prepare(count))
}

/// Like [`connect`], with the taps made by [`prepare`] (link n gets `hk<n>`, which must exist):
/// MTU, up, ingress qdiscs and redirects. On failure the redirects it made are removed.
pub fn attach(netns: &Path, scan: &Scan) -> Result<(), NetError> {
    scan.validate()?;
    let scan = scan.clone();
    netns::run_in(netns, move || redirect::attach(&scan))
}

/// Removes what [`connect`] made: our taps and the ingress qdiscs that redirect to them.
/// A netns that is gone (path missing, or the empty file of an unmounted netns) is fine.
pub fn disconnect(netns: &Path) -> Result<(), NetError> {
    if netns::is_gone(netns) {
        return Ok(());
    }
    match netns::run_in(netns, redirect::disconnect) {
        // Vanished between the check and the open.
        Err(NetError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

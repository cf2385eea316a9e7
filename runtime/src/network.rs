//! The container's network namespace carried into its microVM (issue 11).
//!
//! What config.json asks for decides ([`plan`], checked at `create` before anything is
//! written):
//! - a network namespace **with a path** (podman's `/run/netns/netns-*`, a CRI sandbox's): the
//!   engine has set it up. Its links are carried ([`Carried::connect`], in the monitor): per link
//!   a tap in that netns joined to the link by tc redirects (husk-net), handed to husk-vmm as a
//!   virtio-net device with the link's MAC and MTU, and described to the agent
//!   (`ConfigureNetwork`), which gives the guest the link's name, addresses and routes. The
//!   container then uses the guest's network namespace. A netns with nothing to carry (only
//!   `lo`) gives the container a fresh one in the guest.
//! - a **new** network namespace (no path): the container gets one of its own in the guest
//!   (only `lo`); the pid husk reports sits in a fresh host netns (cli/lifecycle.rs).
//! - **no** network namespace (host networking) is refused: the container runs in its own VM
//!   and cannot share the host's network, and pretending would hide that.
//!
//! The veth keeps its addresses, so the engine's view, `-p` and its teardown stay right.
//! [`disconnect`] removes our taps and redirects; it runs when the VM ends and again at
//! `delete` (the monitor may have been killed), and tolerates a netns that is gone.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use husk_protocol::network::NetworkConfig;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "linux.namespaces: no network namespace (host networking) is not supported: \
         the container runs in its own VM and cannot share the host's network"
    )]
    HostNetwork,
    #[error("linux.namespaces[network].path {0}: {1}")]
    Path(PathBuf, String),
    #[error(transparent)]
    Net(#[from] husk_net::NetError),
}

/// What the spec asks of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A new, empty network namespace: the guest makes it.
    New,
    /// Join the engine's netns: carry its links into the VM.
    Join(PathBuf),
}

/// Classifies the spec's network namespace and checks a path: it must be a network namespace
/// and not the one husk itself runs in (the host's, e.g. `/proc/<pid>/ns/net` of a process in
/// it): carrying that would redirect the host's own links into a VM.
pub fn plan(spec: &Spec) -> Result<Plan, NetworkError> {
    let plan = requested(spec)?;
    let Plan::Join(path) = &plan else {
        return Ok(plan);
    };
    let bad = |why: String| NetworkError::Path(path.clone(), why);
    let meta = std::fs::metadata(path).map_err(|e| bad(io_text(&e)))?;
    let ours = std::fs::metadata("/proc/self/ns/net").map_err(|e| bad(io_text(&e)))?;
    // A bind-mounted netns file reports the nsfs inode of the namespace.
    if (meta.dev(), meta.ino()) == (ours.dev(), ours.ino()) {
        return Err(bad(
            "is the host's network namespace (host networking is not supported)".into(),
        ));
    }
    Ok(plan)
}

/// What the spec asks for, without [`plan`]'s checks of the path (the monitor, already in the
/// joined netns, uses this).
pub fn requested(spec: &Spec) -> Result<Plan, NetworkError> {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    let Some(ns) = ns else {
        return Err(NetworkError::HostNetwork);
    };
    match ns.path().as_ref().filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => Ok(Plan::Join(path.clone())),
        None => Ok(Plan::New),
    }
}

/// runc's wording: "No such file or directory", without the "(os error 2)".
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// One virtio-net device for husk-vmm: the tap fd (inherited by the VMM), the link's MAC and
/// MTU (none for a spare NIC: the agent sets it once the link exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nic {
    pub fd: RawFd,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
}

impl Nic {
    /// husk-vmm's `--net` argument.
    pub fn vmm_arg(&self) -> String {
        let mut arg = format!(
            "fd={},mac={}",
            self.fd,
            husk_protocol::network::mac_string(&self.mac)
        );
        if let Some(mtu) = self.mtu {
            arg += &format!(",mtu={mtu}");
        }
        arg
    }
}

/// A fresh, empty network namespace, held by the returned fd (made on a short-lived thread, so
/// the caller's threads never change namespace). `/proc/self/fd/<fd>` names it for husk-net.
pub fn new_netns() -> std::io::Result<std::os::fd::OwnedFd> {
    std::thread::spawn(|| {
        // SAFETY: unshare(2) on this thread only, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::File::open("/proc/thread-self/ns/net").map(std::os::fd::OwnedFd::from)
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// Spare NICs for a container with a new network namespace: the engine may set that netns up
/// after `create` (Docker's libnetwork hook, podman with --userns), so the VM gets a tap made
/// in it now ([`husk_net::prepare`], down, joined to nothing), and [`Spares::late_attach`]
/// joins it at `start`. The guest's NIC stays outside the container's network namespace
/// until then, so a container whose netns stays empty sees only `lo`.
pub struct Spares {
    taps: Vec<husk_net::Tap>,
}

impl Spares {
    /// Spare taps in network namespace `netns` (a fresh one: the monitor's own, or one made by
    /// [`new_netns`] for a shim's VMM).
    pub fn prepare(netns: &Path) -> Result<Spares, NetworkError> {
        let taps = husk_net::prepare(netns, husk_protocol::network::MAX_SPARE_NICS)?;
        Ok(Spares { taps })
    }

    pub fn nics(&self) -> Vec<Nic> {
        self.taps
            .iter()
            .enumerate()
            .map(|(n, t)| Nic {
                fd: t.fd.as_raw_fd(),
                mac: husk_protocol::network::spare_nic_mac(n as u8),
                mtu: None,
            })
            .collect()
    }

    /// What the engine put into `netns` (the reported pid's) since `create`, joined to the
    /// spare taps; None when it put nothing there. The caller sends the result to the agent
    /// (`ConfigureContainerNetwork`).
    pub fn late_attach(netns: &Path) -> Result<Option<NetworkConfig>, NetworkError> {
        let mut config = husk_net::scan(netns)?;
        if config.links.is_empty() {
            return Ok(None);
        }
        let spares = husk_protocol::network::MAX_SPARE_NICS;
        if config.links.len() > spares {
            return Err(NetworkError::Path(
                netns.to_path_buf(),
                format!(
                    "{} links were set up after create; a VM carries at most {spares} such",
                    config.links.len()
                ),
            ));
        }
        husk_net::attach(netns, &config)?;
        for (n, l) in config.links.iter_mut().enumerate() {
            l.nic_mac = Some(husk_protocol::network::spare_nic_mac(n as u8));
        }
        Ok(Some(config))
    }
}

/// A netns's links carried to taps; the taps live as long as this (and the VMM's copies).
pub struct Carried {
    pub netns: PathBuf,
    pub config: NetworkConfig,
    taps: Vec<husk_net::Tap>,
}

impl Carried {
    /// Scans `netns` and makes a tap per link. None when there is nothing to carry.
    pub fn connect(netns: &Path) -> Result<Option<Carried>, NetworkError> {
        let config = husk_net::scan(netns)?;
        if config.links.is_empty() {
            return Ok(None);
        }
        let taps = husk_net::connect(netns, &config).map_err(|e| match e.cause() {
            // Another VM's taps are there: podman pods and `--network container:X` share one
            // netns between VMs, and a tc redirect pairs one link with one tap.
            husk_net::NetError::Tap { source, .. }
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                NetworkError::Path(
                    netns.to_path_buf(),
                    "is already carried into another husk VM (sharing a network namespace \
                     between containers, as podman pods and --network container: do, is not \
                     supported)"
                        .into(),
                )
            }
            _ => NetworkError::Net(e),
        })?;
        Ok(Some(Carried {
            netns: netns.to_path_buf(),
            config,
            taps,
        }))
    }

    /// The devices to give husk-vmm, in link order.
    pub fn nics(&self) -> Vec<Nic> {
        self.config
            .links
            .iter()
            .zip(&self.taps)
            .map(|(l, t)| Nic {
                fd: t.fd.as_raw_fd(),
                mac: l.mac,
                mtu: Some(l.mtu),
            })
            .collect()
    }

    /// Closes our tap fds once husk-vmm holds its own copies.
    pub fn release_taps(&mut self) {
        self.taps.clear();
    }
}

/// The spec the guest gets: with a carried network the container uses the guest's network
/// namespace (no entry); a joined netns with nothing to carry becomes a new, empty one in the
/// guest; the host's netns path never reaches the guest.
pub fn guest_spec(spec: &mut Spec, carried: bool) {
    let Some(ns) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    else {
        return;
    };
    if carried {
        ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
        return;
    }
    for n in ns.iter_mut() {
        if n.typ() == LinuxNamespaceType::Network {
            let mut fresh = LinuxNamespace::default();
            fresh.set_typ(LinuxNamespaceType::Network);
            *n = fresh;
        }
    }
}

/// Where a state directory records the netns its VM carries (see [`record`]).
fn record_file(dir: &Path) -> PathBuf {
    dir.join("netns")
}

/// Records in state directory `dir` that its VM carries the links of `netns`, once
/// [`Carried::connect`] succeeded: whoever cleans up after a process that died (a killed
/// monitor or shim) undoes exactly that with [`disconnect_recorded`], and a create that failed
/// before (e.g. on a netns another VM carries) never touches that netns.
pub fn record(dir: &Path, netns: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(record_file(dir), netns.as_os_str().as_bytes())
}

/// What [`record`] recorded in `dir`, if anything.
pub fn recorded(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = std::fs::read(record_file(dir)).ok()?;
    (!bytes.is_empty()).then(|| PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// Removes our taps and redirects from `netns`. A netns that is gone is fine.
pub fn disconnect(netns: &Path) -> Result<(), NetworkError> {
    Ok(husk_net::disconnect(netns)?)
}

/// [`disconnect`] of the netns recorded in `dir`, if any.
pub fn disconnect_recorded(dir: &Path) -> Result<(), NetworkError> {
    match recorded(dir) {
        Some(p) => disconnect(&p),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "linux": {{"namespaces": {namespaces}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn plans() {
        assert_eq!(
            plan(&spec(r#"[{"type": "network"}, {"type": "pid"}]"#)).unwrap(),
            Plan::New
        );
        assert_eq!(
            plan(&spec(r#"[{"type": "network", "path": ""}]"#)).unwrap(),
            Plan::New
        );
        let host = plan(&spec(r#"[{"type": "pid"}]"#)).unwrap_err();
        assert!(matches!(host, NetworkError::HostNetwork), "{host}");
        let missing = plan(&spec(
            r#"[{"type": "network", "path": "/run/netns/husk-no-such"}]"#,
        ))
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "linux.namespaces[network].path /run/netns/husk-no-such: No such file or directory"
        );
        // Our own netns (the host's here) by any name is refused.
        let pid = std::process::id();
        let own = plan(&spec(&format!(
            r#"[{{"type": "network", "path": "/proc/{pid}/ns/net"}}]"#
        )))
        .unwrap_err();
        assert!(
            own.to_string().contains("host's network namespace"),
            "{own}"
        );
    }

    #[test]
    fn guest_specs() {
        let joined = r#"[{"type": "network", "path": "/run/netns/x"}, {"type": "pid"}]"#;
        let mut s = spec(joined);
        guest_spec(&mut s, true);
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns[0].typ(), LinuxNamespaceType::Pid);
        let mut s = spec(joined);
        guest_spec(&mut s, false);
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(ns[0].typ(), LinuxNamespaceType::Network);
        assert!(ns[0].path().is_none());
    }

    /// Needs root (CAP_SYS_ADMIN for unshare), as the runtime does.
    #[test]
    fn new_netns_is_fresh_and_leaves_ours_alone() {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let fd = new_netns().expect("new netns (needs root)");
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let theirs = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(ours, theirs);
        assert_eq!(std::fs::metadata("/proc/self/ns/net").unwrap().ino(), ours);
        let spares = Spares::prepare(Path::new(&path)).expect("spare tap in it");
        let nics = spares.nics();
        assert_eq!(nics.len(), husk_protocol::network::MAX_SPARE_NICS);
        assert_eq!(nics[0].mac, husk_protocol::network::spare_nic_mac(0));
        assert_eq!(nics[0].mtu, None);
        // Nothing there for a late attach yet.
        assert_eq!(Spares::late_attach(Path::new(&path)).unwrap(), None);
    }

    #[test]
    fn vmm_args() {
        let mut nic = Nic {
            fd: 5,
            mac: [0x02, 0x42, 0xac, 0x11, 0, 0x0a],
            mtu: Some(1500),
        };
        assert_eq!(nic.vmm_arg(), "fd=5,mac=02:42:ac:11:00:0a,mtu=1500");
        nic.mtu = None;
        assert_eq!(nic.vmm_arg(), "fd=5,mac=02:42:ac:11:00:0a");
    }
}

//! The sandbox VM's network (issue 11), set up as the husk CLI's monitor does it
//! (husk::network), with one difference: the pid containerd is given is husk-vmm's, so
//! husk-vmm itself starts in the network namespace the engine sees as the task's.
//!
//! The sandbox's spec (its first container's: CRI's pause container, or the one container of
//! a `ctr run`) decides ([`husk::network::plan`]):
//! - a netns **path** (CRI's `/var/run/netns/cni-…`, `ctr run --with-ns network:PATH`): the
//!   engine set it up before Create. Its links are carried into the VM (taps joined by tc
//!   redirects, `ConfigureNetwork` to the agent) and husk-vmm runs in it, so
//!   `/proc/<task pid>/ns/net` is the pod's netns. The sandbox container then uses the
//!   guest's network namespace; the pod's other containers name the sandbox's by the task pid,
//!   which the service maps to the sandbox container's, the same one.
//! - a **new** netns (`ctr run`, `ctr run --cni`): husk-vmm runs in a fresh, empty one of its
//!   own with a spare tap (`hk0`) behind a spare NIC. Whatever the engine puts there between
//!   Create and Start (CNI on `/proc/<task pid>/ns/net`, a prestart hook) is joined to the
//!   spare tap at the sandbox container's Start and given to that container in the guest
//!   (`ConfigureContainerNetwork`). It is never the host's.
//! - **no** netns (host networking) is refused.
//!
//! What was carried is undone ([`disconnect`]) when the VM ends, at the sandbox container's
//! delete, and by the cleanup after a shim that died (the path is recorded in the sandbox
//! directory).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk::network::{Carried, NetworkError, Plan, Spares};
use husk::vm::VmSpec;
use husk_protocol::network::NetworkConfig;
use log::warn;
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// The sandbox VM's network, as set up when it booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// husk-vmm in a fresh netns with spare NICs; a network put there after Create is picked
    /// up at the sandbox container's Start.
    New,
    /// husk-vmm in the netns the spec names. `carried`: its links went to taps of ours (the
    /// taps and redirects in it are ours to remove); false: it had nothing to carry (only
    /// `lo`), and the sandbox container gets a new, empty netns in the guest.
    Joined { path: PathBuf, carried: bool },
}

impl Net {
    /// The netns whose links this VM carries (what [`disconnect`] undoes).
    pub fn carried(&self) -> Option<&Path> {
        match self {
            Net::Joined {
                path,
                carried: true,
            } => Some(path),
            _ => None,
        }
    }

    /// The sandbox container's network namespace in the guest (husk::network::guest_spec):
    /// none with a carried network (the guest's own, which `ConfigureNetwork` set up), else a
    /// new, empty one. The host's netns path never reaches the guest.
    pub fn guest_spec(&self, spec: &mut Spec) {
        husk::network::guest_spec(spec, self.carried().is_some());
    }
}

/// The runtime's network errors at Create: what the spec asks for, or what its netns holds,
/// is the caller's to fix (InvalidArgument); anything else the host could not do (a tap, a
/// netlink request) is Internal. The runtime's message is kept as it is.
pub fn create_error(e: NetworkError) -> Error {
    match e {
        NetworkError::HostNetwork | NetworkError::Path(..) => Error::InvalidArgument(e.to_string()),
        NetworkError::Net(_) => Error::Internal(e.to_string()),
    }
}

/// What is made for the VM's network before it boots: the netns husk-vmm starts in, and the
/// taps behind its NICs (held here until husk-vmm has its own copies).
pub struct Setup {
    pub net: Net,
    netns: Arc<OwnedFd>,
    carried: Option<Carried>,
    spares: Option<Spares>,
}

impl Setup {
    /// Carries the spec's netns or makes a fresh one with spare taps. On failure nothing is
    /// left (husk_net undoes a partial connect; a fresh netns goes with its fd).
    pub fn prepare(plan: &Plan) -> Result<Setup> {
        match plan {
            Plan::Join(path) => {
                let netns = std::fs::File::open(path).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "linux.namespaces[network].path {}: {e}",
                        path.display()
                    ))
                })?;
                let carried = Carried::connect(path).map_err(create_error)?;
                Ok(Setup {
                    net: Net::Joined {
                        path: path.clone(),
                        carried: carried.is_some(),
                    },
                    netns: Arc::new(OwnedFd::from(netns)),
                    carried,
                    spares: None,
                })
            }
            Plan::New => {
                let netns = husk::network::new_netns().map_err(|e| {
                    Error::internal("cannot make a network namespace for the VM", e)
                })?;
                let path = PathBuf::from(format!("/proc/self/fd/{}", netns.as_raw_fd()));
                // As in the husk CLI: without tun there is no spare, and only a network set
                // up after Create cannot be carried (Start says so).
                let spares = Spares::prepare(&path).ok();
                Ok(Setup {
                    net: Net::New,
                    netns: Arc::new(netns),
                    carried: None,
                    spares,
                })
            }
        }
    }

    /// The VM's NICs and the netns husk-vmm starts in.
    pub fn apply(&self, vs: &mut VmSpec) {
        vs.nics = match (&self.carried, &self.spares) {
            (Some(c), _) => c.nics(),
            (None, Some(s)) => s.nics(),
            (None, None) => Vec::new(),
        };
        vs.netns = Some(self.netns.clone());
    }

    /// husk-vmm is up and holds the taps: ours close, so the taps go with the VM. Returns the
    /// carried network, for `ConfigureNetwork`.
    pub fn launched(&mut self) -> Option<NetworkConfig> {
        self.spares = None;
        let c = self.carried.as_mut()?;
        c.release_taps();
        Some(c.config.clone())
    }
}

/// Removes our taps and redirects from a carried netns; a netns that is gone is fine, any
/// other failure is logged (teardown goes on).
pub fn disconnect(path: &Path) {
    if let Err(e) = husk::network::disconnect(path) {
        warn!(
            "cannot undo the network carried from {}: {e}",
            path.display()
        );
    }
}

/// The network set up in `/proc/<vmm pid>/ns/net` since Create (CNI, a prestart hook),
/// joined to the VM's spare NIC; None when there is none.
pub fn late_attach(vmm_pid: u32) -> Result<Option<NetworkConfig>> {
    let netns = PathBuf::from(format!("/proc/{vmm_pid}/ns/net"));
    Spares::late_attach(&netns)
        .map_err(|e| Error::Internal(format!("the network set up after create: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

    fn spec(namespaces: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "linux": {{"namespaces": {namespaces}}}}}"#
        ))
        .unwrap()
    }

    fn network(s: &Spec) -> Option<LinuxNamespace> {
        s.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n.typ() == LinuxNamespaceType::Network)
                    .cloned()
            })
    }

    const CRI: &str = r#"[{"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "ipc"}]"#;

    #[test]
    fn carried_network_is_the_guests_own() {
        let net = Net::Joined {
            path: "/var/run/netns/cni-1".into(),
            carried: true,
        };
        assert_eq!(net.carried(), Some(Path::new("/var/run/netns/cni-1")));
        let mut s = spec(CRI);
        net.guest_spec(&mut s);
        assert_eq!(network(&s), None, "no netns entry: the guest's initial one");
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns[0].typ(), LinuxNamespaceType::Ipc);
    }

    #[test]
    fn empty_or_new_network_is_a_fresh_one_in_the_guest() {
        let empty = Net::Joined {
            path: "/var/run/netns/cni-1".into(),
            carried: false,
        };
        for net in [empty, Net::New] {
            assert_eq!(net.carried(), None);
            let mut s = spec(CRI);
            net.guest_spec(&mut s);
            let n = network(&s).expect("a network namespace");
            assert_eq!(
                n.path(),
                &None,
                "{net:?}: the host's path reaches the guest"
            );
        }
        let mut s = spec(r#"[{"type": "network"}]"#);
        Net::New.guest_spec(&mut s);
        assert_eq!(network(&s).unwrap().path(), &None);
    }

    #[test]
    fn create_errors_keep_the_runtimes_message() {
        let e = create_error(NetworkError::HostNetwork);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert!(e.to_string().contains("host networking) is not supported"));
        let e = create_error(NetworkError::Path(
            "/run/netns/x".into(),
            "is already carried into another husk VM".into(),
        ));
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "linux.namespaces[network].path /run/netns/x: is already carried into another husk VM"
        );
        // What the spec asks is checked by husk::network::plan, as by the CLI.
        let e = husk::network::plan(&spec(
            r#"[{"type": "network", "path": "/run/netns/husk-shim-no-such"}]"#,
        ))
        .map_err(create_error)
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "linux.namespaces[network].path /run/netns/husk-shim-no-such: No such file or directory"
        );
        let e = husk::network::plan(&spec(r#"[{"type": "ipc"}]"#))
            .map_err(create_error)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }

    #[test]
    fn a_missing_netns_is_refused_before_anything_is_made() {
        let plan = Plan::Join("/run/netns/husk-shim-no-such".into());
        let e = Setup::prepare(&plan).err().expect("refused");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("linux.namespaces[network].path /run/netns/husk-shim-no-such: "),
            "{e}"
        );
    }

    #[test]
    fn disconnect_of_a_vanished_netns_is_fine() {
        disconnect(Path::new("/run/netns/husk-shim-no-such"));
        assert!(husk::network::disconnect(Path::new("/run/netns/husk-shim-no-such")).is_ok());
    }

    /// Needs root (unshare), as the shim does: a netns with nothing to carry (only `lo`) is
    /// joined by husk-vmm, and nothing is carried (no ConfigureNetwork, nothing to undo).
    #[test]
    fn joined_empty_netns_carries_nothing() {
        let fd = husk::network::new_netns().expect("fresh netns (needs root)");
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let mut setup = Setup::prepare(&Plan::Join(path.clone())).expect("joined");
        assert_eq!(
            setup.net,
            Net::Joined {
                path,
                carried: false
            }
        );
        assert_eq!(setup.net.carried(), None);
        let mut vs = VmSpec::new("vmm".into(), "kernel".into(), "initrd".into());
        setup.apply(&mut vs);
        assert!(vs.nics.is_empty());
        assert!(vs.netns.is_some());
        assert_eq!(setup.launched(), None);
    }

    /// Needs root (unshare, a tap), as the shim does: a fresh netns with the spare tap `hk0`,
    /// never ours; husk-vmm's spec gets the spare NIC and the netns.
    #[test]
    fn new_plan_gives_a_fresh_netns_with_a_spare_nic() {
        use std::os::unix::fs::MetadataExt;
        let mut setup = Setup::prepare(&Plan::New).expect("fresh netns (needs root)");
        assert_eq!(setup.net, Net::New);
        let mut vs = VmSpec::new("vmm".into(), "kernel".into(), "initrd".into());
        setup.apply(&mut vs);
        assert_eq!(vs.nics.len(), husk_protocol::network::MAX_SPARE_NICS);
        assert_eq!(vs.nics[0].mac, husk_protocol::network::spare_nic_mac(0));
        assert_eq!(vs.nics[0].mtu, None);
        let fd = vs.netns.as_ref().expect("a netns for husk-vmm").as_raw_fd();
        let theirs = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(theirs, ours, "husk-vmm would run in our (the host's) netns");
        assert_eq!(
            setup.launched(),
            None,
            "nothing carried: no ConfigureNetwork"
        );
    }
}

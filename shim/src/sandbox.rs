//! The sandbox: the one microVM this shim process owns, its shared
//! directory, and where both live on the host.
//!
//! The VM is launched and owned by a thread of its own that lives until the
//! VM is shut down: husk-vmm gets PR_SET_PDEATHSIG, which fires when the
//! *thread* that spawned it ends, so it must not be a ttrpc worker thread
//! (those come and go). The same thread watches husk-vmm and reports when it
//! goes away on its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use husk::vm::{AgentClient, Vm, VmSpec};
use husk_protocol::{Request, Response};
use log::{info, warn};

use crate::error::{Error, Result};
use crate::network::{self, Net};

/// Where sandboxes live unless `HUSK_SHIM_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/husk-shim";
pub const ROOT_ENV: &str = "HUSK_SHIM_ROOT";

/// containerd's CRI plugin marks pod sandboxes and their containers with these.
pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// The sandbox a container belongs to: its own id unless CRI's annotations
/// say it is a container of another sandbox.
pub fn sandbox_id(
    id: &str,
    annotations: Option<&HashMap<String, String>>,
) -> std::result::Result<String, String> {
    let Some(a) = annotations else {
        return Ok(id.to_string());
    };
    if a.get(ANN_CONTAINER_TYPE).map(String::as_str) != Some("container") {
        return Ok(id.to_string());
    }
    match a.get(ANN_SANDBOX_ID) {
        Some(s) if husk_protocol::valid_container_id(s) => Ok(s.clone()),
        Some(s) => Err(format!(
            "annotation {ANN_SANDBOX_ID}: invalid sandbox id {s:?}"
        )),
        None => Err(format!(
            "annotation {ANN_CONTAINER_TYPE}=container without {ANN_SANDBOX_ID}"
        )),
    }
}

/// The annotations of the bundle in `bundle` (start and delete run there
/// before anything else has read the spec; Create validates it fully).
pub fn bundle_annotations(bundle: &Path) -> std::result::Result<HashMap<String, String>, String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("invalid {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    if let Some(obj) = v.get("annotations").and_then(|a| a.as_object()) {
        for (k, v) in obj {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

pub fn root() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// `<root>/<hash>`: the hash is that of the shim socket containerd knows this
/// sandbox by (containerd address + namespace + sandbox id), so two
/// containerds on one host never share a directory. Short, because the vsock
/// socket inside must fit in a unix socket address.
pub fn sandbox_dir(address: &str, namespace: &str, sandbox_id: &str) -> PathBuf {
    let sock = containerd_shim::socket_address(address, namespace, sandbox_id);
    let hash = sock.rsplit('/').next().unwrap_or("");
    root().join(&hash[..hash.len().min(16)])
}

pub fn share_dir(dir: &Path) -> PathBuf {
    dir.join("share")
}
fn vm_dir(dir: &Path) -> PathBuf {
    dir.join("vm")
}
fn pid_file(dir: &Path) -> PathBuf {
    dir.join("vmm.pid")
}
/// Records that the sandbox's VM carries the links of `netns` (a shim that dies cannot undo
/// that itself; [`cleanup_dead`] does).
pub fn record_netns(dir: &Path, netns: &Path) -> Result<()> {
    husk::network::record(dir, netns)
        .map_err(|e| Error::internal(&format!("cannot record the netns in {}", dir.display()), e))
}

enum Cmd {
    Shutdown(mpsc::Sender<()>),
}

pub struct Sandbox {
    pub id: String,
    pub dir: PathBuf,
    pub share: PathBuf,
    /// The pid containerd is given for every task: husk-vmm's, which runs in the sandbox's
    /// network namespace (crate::network).
    pub vmm_pid: u32,
    /// The VM's network, as set up when it booted.
    pub net: Net,
    vsock: PathBuf,
    owner: Mutex<mpsc::Sender<Cmd>>,
    /// Why the VM is gone, once it is.
    lost: Arc<Mutex<Option<String>>>,
    /// The cgroups this process was in before it joined the sandbox's.
    home: Vec<PathBuf>,
}

impl Sandbox {
    /// Boots the VM (the share must be prepared; `spec` has the NICs and netns of `net`).
    /// `on_lost` runs once if husk-vmm goes away without being asked to. What `net`
    /// carried is undone when the VM ends, however it ends.
    pub fn launch(
        id: &str,
        dir: &Path,
        spec: VmSpec,
        net: Net,
        home: Vec<PathBuf>,
        on_lost: Box<dyn FnOnce(String) + Send>,
    ) -> Result<Arc<Sandbox>> {
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let lost = Arc::new(Mutex::new(None));
        let lost_owner = lost.clone();
        let vdir = vm_dir(dir);
        let carried = net.carried().map(Path::to_path_buf);
        std::thread::Builder::new()
            .name("vm-owner".into())
            .spawn(move || {
                let vm = match Vm::launch(&spec, &vdir) {
                    Ok(vm) => vm,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((vm.pid(), vm.vsock_path().to_path_buf())));
                own(vm, cmd_rx, lost_owner, on_lost, carried.as_deref());
            })
            .map_err(|e| Error::internal("cannot start the VM owner thread", e))?;
        let (pid, vsock) = match ready_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(Error::Internal(format!("cannot start the VM: {e}"))),
            Err(_) => return Err(Error::Internal("cannot start the VM".into())),
        };
        let start = husk::container::state::process_start_time(pid as i32).unwrap_or(0);
        if let Err(e) = std::fs::write(pid_file(dir), format!("{pid} {start}\n")) {
            warn!("cannot record the VMM pid: {e}");
        }
        info!("sandbox {id}: VM up, husk-vmm pid {pid}");
        Ok(Arc::new(Sandbox {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            share: share_dir(dir),
            vmm_pid: pid,
            net,
            vsock,
            owner: Mutex::new(cmd_tx),
            lost,
            home,
        }))
    }

    /// Undoes what the VM's network carried (the sandbox container's delete: the engine
    /// tears the pod's network down next). Again when the VM ends; that is harmless.
    pub fn disconnect_net(&self) {
        if let Some(netns) = self.net.carried() {
            network::disconnect(netns);
        }
    }

    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// A fresh connection to the agent.
    pub fn agent(&self) -> Result<AgentClient> {
        if let Some(why) = self.lost() {
            return Err(Error::Internal(format!("the sandbox VM is gone: {why}")));
        }
        Ok(AgentClient::connect(&self.vsock, AGENT_TIMEOUT)?)
    }

    pub fn request(&self, req: &Request) -> Result<Response> {
        Ok(self.agent()?.request(req)?)
    }

    pub fn expect_ok(&self, req: &Request) -> Result<()> {
        Ok(self.agent()?.expect_ok(req)?)
    }

    /// `expect_ok` with its own (shorter) bound on connect and reply.
    pub fn expect_ok_within(&self, req: &Request, timeout: Duration) -> Result<()> {
        if let Some(why) = self.lost() {
            return Err(Error::Internal(format!("the sandbox VM is gone: {why}")));
        }
        Ok(AgentClient::connect(&self.vsock, timeout)?.expect_ok(req)?)
    }

    /// SIGKILLs husk-vmm (the jail's waiter; the VMM dies with it). Its
    /// owner thread then reports the VM lost, and every task exits.
    pub fn kill_vmm(&self) {
        warn!("sandbox {}: killing husk-vmm {}", self.id, self.vmm_pid);
        // The pid is our unreaped child (the owner thread holds it): no reuse.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.vmm_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// Shuts the guest down (killing husk-vmm if it will not go), waits,
    /// and leaves and removes the sandbox's cgroup.
    pub fn shutdown(&self) {
        let (done, wait) = mpsc::channel();
        let sent = self
            .owner
            .lock()
            .map(|o| o.send(Cmd::Shutdown(done)).is_ok())
            .unwrap_or(false);
        if sent {
            let _ = wait.recv_timeout(Duration::from_secs(30));
        }
        let _ = std::fs::remove_file(pid_file(&self.dir));
        leave_cgroup(&self.dir, &self.home);
    }
}

/// Watches the VM until it is shut down or goes away. Either way, what the VM's network
/// carried from `carried` is undone then (the taps went with husk-vmm; the redirects on the
/// engine's links go now), before the shutdown is reported done or the loss is reported.
fn own(
    mut vm: Vm,
    cmds: mpsc::Receiver<Cmd>,
    lost: Arc<Mutex<Option<String>>>,
    on_lost: Box<dyn FnOnce(String) + Send>,
    carried: Option<&Path>,
) {
    let undo_network = || {
        if let Some(netns) = carried {
            network::disconnect(netns);
        }
    };
    loop {
        match cmds.recv_timeout(WATCH_INTERVAL) {
            Ok(Cmd::Shutdown(done)) => {
                stop(&mut vm);
                drop(vm);
                undo_network();
                let _ = done.send(());
                return;
            }
            // The service is gone: dropping the VM kills husk-vmm.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                drop(vm);
                undo_network();
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Ok(Some(status)) = vm.try_wait() else {
                    continue;
                };
                let why = format!("husk-vmm exited ({status}){}", vm.stderr_tail());
                warn!("{why}");
                if let Ok(mut l) = lost.lock() {
                    *l = Some(why.clone());
                }
                undo_network();
                on_lost(why);
                // Keep the reaped VM until the service is done with the sandbox.
                let cmd = cmds.recv();
                drop(vm);
                if let Ok(Cmd::Shutdown(done)) = cmd {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

fn stop(vm: &mut Vm) {
    if !matches!(vm.try_wait(), Ok(None)) {
        return;
    }
    let asked =
        AgentClient::connect(vm.vsock_path(), Duration::from_secs(5)).and_then(|a| a.shutdown());
    match asked {
        Ok(()) => {
            if vm.wait(Duration::from_secs(10)).is_err() {
                warn!("the guest did not shut down in 10s: killing husk-vmm");
            }
        }
        Err(e) => warn!("cannot ask the guest to shut down ({e}): killing husk-vmm"),
    }
}

/// The `cgroup.procs` files of the cgroups this process is in now (v2, and
/// each v1 hierarchy of a hybrid host).
pub fn current_cgroups() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let rel = path.trim_start_matches('/');
            let base = Path::new("/sys/fs/cgroup");
            let mnt = if ctrls.is_empty() {
                // v2: the unified tree, or "unified" beside the v1 ones.
                if base.join("cgroup.procs").exists() {
                    base.to_path_buf()
                } else {
                    base.join("unified")
                }
            } else {
                base.join(ctrls.trim_start_matches("name="))
            };
            let procs = mnt.join(rel).join("cgroup.procs");
            procs.exists().then_some(procs)
        })
        .collect()
}

/// Tasks the shim itself needs in the sandbox's cgroup: threads per ttrpc
/// connection (containerd opens one per task) and per process (watcher,
/// stdio relays), on top of husk-vmm's. The runtime's limit is sized for
/// `husk`'s monitor; a thread the shim cannot start fails a request.
const SHIM_PIDS: u64 = 1024;

/// Raises `pids.max` of the cgroups this process is in now (the sandbox's).
pub fn raise_pids_limit() {
    for procs in current_cgroups() {
        let f = procs.with_file_name("pids.max");
        if let Ok(cur) = std::fs::read_to_string(&f) {
            let cur = cur.trim().parse::<u64>().unwrap_or(u64::MAX);
            if cur < SHIM_PIDS {
                if let Err(e) = std::fs::write(&f, (cur + SHIM_PIDS).to_string()) {
                    warn!("cannot raise {}: {e}", f.display());
                }
            }
        }
    }
}

/// Puts this process back where it was and removes the sandbox's cgroup
/// (husk-vmm has left it by now).
fn leave_cgroup(dir: &Path, home: &[PathBuf]) {
    let me = std::process::id().to_string();
    for procs in home {
        if let Err(e) = std::fs::write(procs, &me) {
            warn!("cannot move back to {}: {e}", procs.display());
        }
    }
    if let Err(e) = husk::cgroups::remove(dir) {
        warn!("{e}");
    }
}

/// Cleanup after a shim that died: kill its husk-vmm if it still runs (pid
/// and start time must match, so a reused pid is left alone), then remove
/// everything staged for the sandbox. Returns the VMM's pid if one was recorded.
pub fn cleanup_dead(dir: &Path) -> Option<u32> {
    let recorded = std::fs::read_to_string(pid_file(dir)).ok().and_then(|s| {
        let mut w = s.split_whitespace();
        Some((
            w.next()?.parse::<i32>().ok()?,
            w.next()?.parse::<u64>().ok()?,
        ))
    });
    if let Some((pid, start)) = recorded {
        if husk::container::state::process_alive(pid, start) {
            warn!("killing husk-vmm {pid} left by a dead shim");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            for _ in 0..200 {
                if !husk::container::state::process_alive(pid, start) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    // What is left in the cgroup (the VMM's jail waiter...) goes with it.
    if let Err(e) = husk::cgroups::remove(dir) {
        warn!("{e}");
    }
    if let Some(netns) = husk::network::recorded(dir) {
        network::disconnect(&netns);
    }
    remove(dir);
    recorded.map(|(p, _)| p as u32)
}

/// Unmounts and removes a sandbox directory, whatever state it is in.
pub fn remove(dir: &Path) {
    if let Err(e) = husk::container::share::teardown(&share_dir(dir)) {
        warn!("{e}");
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot remove {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_by_cri_annotations() {
        assert_eq!(sandbox_id("a", None).unwrap(), "a");
        let mut ann = HashMap::new();
        ann.insert(ANN_CONTAINER_TYPE.to_string(), "sandbox".to_string());
        ann.insert(ANN_SANDBOX_ID.to_string(), "a".to_string());
        assert_eq!(sandbox_id("a", Some(&ann)).unwrap(), "a");
        ann.insert(ANN_CONTAINER_TYPE.to_string(), "container".to_string());
        assert_eq!(sandbox_id("b", Some(&ann)).unwrap(), "a");
        ann.insert(ANN_SANDBOX_ID.to_string(), "../x".to_string());
        assert!(sandbox_id("b", Some(&ann)).is_err());
        ann.remove(ANN_SANDBOX_ID);
        assert!(sandbox_id("b", Some(&ann)).is_err());
    }

    #[test]
    fn carried_netns_is_recorded_for_a_dead_shims_cleanup() {
        let dir = std::env::temp_dir().join(format!("husk-shim-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(husk::network::recorded(&dir), None);
        record_netns(&dir, Path::new("/var/run/netns/cni-1 x")).unwrap();
        assert_eq!(
            husk::network::recorded(&dir),
            Some(PathBuf::from("/var/run/netns/cni-1 x"))
        );
        // The cleanup tolerates a netns that is gone, and removes the directory.
        record_netns(&dir, Path::new("/run/netns/husk-shim-no-such")).unwrap();
        assert_eq!(cleanup_dead(&dir), None);
        assert!(!dir.exists());
    }

    #[test]
    fn sandbox_dirs_differ_per_containerd_and_namespace() {
        let a = sandbox_dir("/run/containerd/containerd.sock", "default", "x");
        let b = sandbox_dir("/tmp/other.sock", "default", "x");
        let c = sandbox_dir("/run/containerd/containerd.sock", "k8s.io", "x");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            sandbox_dir("/run/containerd/containerd.sock", "default", "x")
        );
        assert_eq!(a.file_name().unwrap().len(), 16);
    }
}

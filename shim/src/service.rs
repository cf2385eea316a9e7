//! containerd's Task service over the sandbox VM.
//!
//! Every container of the sandbox lives in the one VM this shim owns; its
//! processes are the agent's (keyed by container id and exec id). The init's
//! pid, as containerd sees it, is husk-vmm's: the host process that runs it,
//! which lives in the sandbox's network namespace (crate::network).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status as TaskStatus,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{publisher::RemotePublisher, ExitSignal, Task, TtrpcContext, TtrpcResult};
use husk::config::HuskConfig;
use husk::container::bundle::Bundle;
use husk::container::share;
use husk::container::sizing::{vm_size, VmSize};
use husk::hooks::{self, Kind};
use husk::vm::VmSpec;
use husk_protocol::{CreateContainer, ExecProcess, Request, Response, SHARE_TAG};
use log::{info, warn};

use crate::error::{Error, Result};
use crate::events::Events;
use crate::io::{Io, StdioPaths};
use crate::network::{self, Net};
use crate::process::{exit_code, timestamp, Exit, Process, Status};
use crate::rootfs;
use crate::sandbox::{self, Sandbox};

/// How long an exited process's output may take to reach its FIFOs.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often running containers are asked about OOM kills.
const OOM_POLL: Duration = Duration::from_secs(2);
/// Exit status of every process of a VM that went away.
const LOST_EXIT: u32 = 128 + libc::SIGKILL as u32;
/// How long a SIGKILL waits for the agent before the VMM is killed instead
/// (when that kills nothing but the target).
const KILL_GRACE: Duration = Duration::from_secs(2);

pub struct Service {
    inner: Arc<Inner>,
}

struct Container {
    bundle: String,
    rootfs: PathBuf,
    rootfs_mounted: bool,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    paused: bool,
    /// A Delete is under way (it talks to the agent without a lock held).
    deleting: bool,
    /// oom_kill count last seen in the container's cgroup.
    oom_kills: u64,
    /// The spec and bundle, kept for the start and stop hooks (when the
    /// spec has hooks).
    hooks: Option<HookContext>,
}

/// Which containers are coming, and whether the VM is going. Held only for
/// bookkeeping, never across a guest round trip: a stuck agent must not
/// block Kill, Delete or State of other containers.
#[derive(Default)]
struct Life {
    /// Ids whose Create is under way: the VM must stay for them.
    creating: HashSet<String>,
    /// The VM is being shut down; a Create waits for it to be gone.
    ending: bool,
}

struct Inner {
    namespace: String,
    address: String,
    events: Events,
    exit: Arc<ExitSignal>,
    /// The VM comes with the first Create and goes with the last Delete.
    lifecycle: Mutex<Life>,
    ended: Condvar,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Container>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl Service {
    pub fn new(
        namespace: &str,
        address: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                address: address.to_string(),
                events: Events::start(publisher, namespace.to_string()),
                exit,
                lifecycle: Mutex::new(Life::default()),
                ended: Condvar::new(),
                sandbox: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// The husk artifacts: `HUSK_CONFIG` (default /etc/husk/config.toml), with
/// unset paths next to this binary, as for the `husk` CLI.
fn husk_config() -> Result<husk::config::Resolved> {
    let path = std::env::var_os("HUSK_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(husk::config::DEFAULT_CONFIG_PATH));
    let cfg = HuskConfig::load(&path).map_err(|e| Error::Internal(e.to_string()))?;
    let exe =
        std::env::current_exe().map_err(|e| Error::internal("cannot find own executable", e))?;
    let r = cfg.resolve(&exe);
    for (what, p) in [
        ("guest kernel", &r.kernel),
        ("guest initrd", &r.initrd),
        ("husk-vmm", &r.vmm),
    ] {
        if !p.exists() {
            return Err(Error::Internal(format!(
                "{what} {} does not exist (set it in {})",
                p.display(),
                path.display()
            )));
        }
    }
    Ok(r)
}

impl Inner {
    fn sandbox(&self) -> Result<Arc<Sandbox>> {
        lock(&self.sandbox)
            .clone()
            .ok_or_else(|| Error::FailedPrecondition("the sandbox has no VM".into()))
    }

    fn container<R>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<R>) -> Result<R> {
        let mut cs = lock(&self.containers);
        let c = cs
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("container {id}: not found")))?;
        f(c)
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(id, |c| match opt(exec_id) {
            None => Ok(c.init.clone()),
            Some(e) => c.execs.get(e).cloned().ok_or_else(|| {
                Error::NotFound(format!("process {e} of container {id}: not found"))
            }),
        })
    }

    /// This shim's VM, booted for the first container.
    fn sandbox_for(
        self: &Arc<Self>,
        sandbox_id: &str,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(Arc<Sandbox>, bool)> {
        let mut guard = lock(&self.sandbox);
        if let Some(sb) = guard.as_ref() {
            if sb.id != sandbox_id {
                return Err(Error::FailedPrecondition(format!(
                    "this shim runs sandbox {}, not {sandbox_id}",
                    sb.id
                )));
            }
            if let Some(why) = sb.lost() {
                return Err(Error::FailedPrecondition(format!(
                    "the sandbox VM is gone: {why}"
                )));
            }
            return Ok((sb.clone(), false));
        }
        let cfg = husk_config()?;
        let size = vm_size(
            spec,
            VmSize {
                memory_mib: cfg.memory_mib,
                vcpus: cfg.vcpus,
            },
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Checked before anything is made, as the CLI does: a bad path or host networking
        // leaves nothing behind.
        let plan = husk::network::plan(spec).map_err(network::create_error)?;
        let dir = sandbox::sandbox_dir(&self.address, &self.namespace, sandbox_id);
        if dir.exists() {
            warn!("removing {} left by an earlier shim", dir.display());
            sandbox::cleanup_dead(&dir);
        }
        // Only root gets near the VM's sockets.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::internal(&format!("cannot create {}", dir.display()), e))?;
        let home = sandbox::current_cgroups();
        // The netns whose links were carried, once they are: undone if the launch fails.
        let mut carried: Option<PathBuf> = None;
        let launched = (|| {
            let share_dir = sandbox::share_dir(&dir);
            share::prepare(&share_dir)?;
            // Shared, so that what is staged after the VM started (containers
            // joining the sandbox) reaches the jailed VMM's view of the share.
            nix::mount::mount(
                None::<&str>,
                &share_dir,
                None::<&str>,
                nix::mount::MsFlags::MS_SHARED,
                None::<&str>,
            )
            .map_err(|e| Error::internal(&format!("cannot share {}", share_dir.display()), e))?;
            // The whole sandbox (this shim and the VMM, which inherits it) in
            // the cgroup the sandbox's spec names, limited to the VM's size;
            // a sandbox of one (`ctr run`) also to its spec's resources. A CRI
            // pod's VM holds every container of the pod: its limits are the
            // kubelet's on the pod cgroup, not the pause container's.
            let pod = spec
                .annotations()
                .as_ref()
                .is_some_and(|a| a.contains_key(sandbox::ANN_CONTAINER_TYPE));
            husk::cgroups::enter(&dir, spec, sandbox_id, size.memory_mib, size.vcpus, !pod)
                .map_err(|e| Error::Internal(e.to_string()))?;
            sandbox::raise_pids_limit();
            // husk-vmm, the task pid, starts in the sandbox's netns (the engine's, or a fresh
            // one of its own), with the NICs that carry it.
            let mut net = network::Setup::prepare(&plan)?;
            if let Some(path) = net.net.carried() {
                carried = Some(path.to_path_buf());
                sandbox::record_netns(&dir, path)?;
            }
            let mut vs = VmSpec::new(cfg.vmm, cfg.kernel, cfg.initrd);
            net.apply(&mut vs);
            vs.memory_mib = size.memory_mib;
            vs.vcpus = size.vcpus;
            vs.shares = vec![(SHARE_TAG.to_string(), sandbox::share_dir(&dir))];
            vs.die_with_parent = true;
            vs.jail = !cfg.no_jail;
            // Debug aid, as for `husk`: the guest console to a file, or to
            // DIR/<sandbox id>.log when it names a directory.
            if let Some(c) = std::env::var_os("HUSK_GUEST_CONSOLE") {
                let c = PathBuf::from(c);
                vs.console = Some(if c.is_dir() {
                    c.join(format!("{sandbox_id}.log"))
                } else {
                    c
                });
            }
            let weak: Weak<Inner> = Arc::downgrade(self);
            let sb = Sandbox::launch(
                sandbox_id,
                &dir,
                vs,
                net.net.clone(),
                home.clone(),
                Box::new(move |why| {
                    if let Some(inner) = weak.upgrade() {
                        inner.vm_lost(&why);
                    }
                }),
            )?;
            // The guest's links before any container is created in it.
            if let Some(config) = net.launched() {
                let configured = sb
                    .expect_ok(&Request::ConfigureNetwork(Box::new(config)))
                    .map_err(|e| Error::Internal(format!("guest network: {e}")));
                if let Err(e) = configured {
                    sb.shutdown();
                    return Err(e);
                }
            }
            Ok(sb)
        })();
        match launched {
            Ok(sb) => {
                *guard = Some(sb.clone());
                drop(guard);
                self.start_oom_watch();
                Ok((sb, true))
            }
            Err(e) => {
                let me = std::process::id().to_string();
                for procs in &home {
                    let _ = std::fs::write(procs, &me);
                }
                let _ = husk::cgroups::remove(&dir);
                if let Some(netns) = &carried {
                    network::disconnect(netns);
                }
                sandbox::remove(&dir);
                Err(e)
            }
        }
    }

    /// Shuts the VM down and removes the sandbox directory once no
    /// container is left or coming. The guest round trip of the shutdown
    /// runs without a lock; Creates meanwhile wait for it to finish.
    fn end_sandbox_if_idle(&self) {
        let sb = {
            let mut life = lock(&self.lifecycle);
            if life.ending || !life.creating.is_empty() || !lock(&self.containers).is_empty() {
                return;
            }
            let sb = lock(&self.sandbox).take();
            life.ending = sb.is_some();
            sb
        };
        if let Some(sb) = sb {
            info!("sandbox {}: shutting the VM down", sb.id);
            sb.shutdown();
            sandbox::remove(&sb.dir);
            lock(&self.lifecycle).ending = false;
            self.ended.notify_all();
        }
    }

    /// Waits until no VM shutdown is under way.
    fn wait_not_ending(&self) -> MutexGuard<'_, Life> {
        let mut life = lock(&self.lifecycle);
        while life.ending {
            life = self.ended.wait(life).unwrap_or_else(|p| p.into_inner());
        }
        life
    }

    /// husk-vmm went away: every process still alive has exited, as if killed.
    fn vm_lost(&self, why: &str) {
        warn!("the sandbox VM is gone ({why}): every live task exits with {LOST_EXIT}");
        let now = SystemTime::now();
        let procs: Vec<Arc<Process>> = lock(&self.containers)
            .values()
            .flat_map(|c| std::iter::once(c.init.clone()).chain(c.execs.values().cloned()))
            .collect();
        for p in procs {
            if let Some(io) = p.io().as_mut() {
                io.drain(Duration::ZERO);
            }
            if p.set_exited(LOST_EXIT, now) {
                self.publish_exit(&p);
            }
        }
    }

    fn publish_exit(&self, p: &Process) {
        let st = p.snapshot();
        let Some(exit) = st.exit else { return };
        self.events.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            TaskExit {
                container_id: p.container_id.clone(),
                id: p.id().to_string(),
                pid: st.pid,
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            },
        );
    }

    /// Waits for the process's exit in the guest (or the VM's end), lets its
    /// output drain, records the exit and tells containerd.
    fn watch(self: &Arc<Self>, p: Arc<Process>, sb: Arc<Sandbox>) -> Result<()> {
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || {
                let waited = sb.agent().and_then(|mut c| {
                    // Waits as long as the process runs, on this thread only.
                    c.set_timeout(None);
                    Ok(c.request(&Request::WaitProcess {
                        id: p.container_id.clone(),
                        exec_id: p.exec_id.clone(),
                    })?)
                });
                let at = SystemTime::now();
                let status = match waited {
                    Ok(Response::Exited { status }) => exit_code(status),
                    other => {
                        // The agent's connection broke: the VM is going or gone.
                        for _ in 0..50 {
                            if sb.lost().is_some() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        let why = sb.lost().unwrap_or_else(|| match other {
                            Err(e) => e.to_string(),
                            Ok(r) => husk::vm::unexpected("wait reply", &r).to_string(),
                        });
                        warn!(
                            "{} {}: lost the VM ({why}): reporting exit {LOST_EXIT}",
                            p.container_id,
                            p.id()
                        );
                        LOST_EXIT
                    }
                };
                if status == LOST_EXIT && p.exec_id.is_none() && sb.lost().is_none() {
                    inner.check_oom(&sb, &p.container_id);
                }
                if let Some(io) = p.io().as_mut() {
                    io.drain(DRAIN_TIMEOUT);
                }
                if p.set_exited(status, at) {
                    inner.publish_exit(&p);
                }
            });
        spawned
            .map(|_| ())
            .map_err(|e| Error::internal("cannot start a process watcher", e))
    }

    /// Publishes TaskOOM if the container's cgroup counted new OOM kills.
    /// False if the agent cannot tell.
    fn check_oom(&self, sb: &Sandbox, id: &str) -> bool {
        let kills = match sb.request(&Request::ContainerStats { id: id.to_string() }) {
            Ok(Response::Stats(s)) => s.oom_kills,
            _ => return false,
        };
        let new = self
            .container(id, |c| Ok(oom_increase(&mut c.oom_kills, kills)))
            .unwrap_or(false);
        if new {
            info!("container {id}: OOM kill in the guest");
            self.events.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                TaskOOM {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        true
    }

    /// OOM kills of processes other than the init do not end the task: poll.
    fn start_oom_watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("oom-watch".into())
            .spawn(move || loop {
                std::thread::sleep(OOM_POLL);
                let Some(inner) = weak.upgrade() else { return };
                let Some(sb) = lock(&inner.sandbox).clone() else {
                    return;
                };
                if sb.lost().is_some() {
                    return;
                }
                let running: Vec<String> = lock(&inner.containers)
                    .iter()
                    .filter(|(_, c)| c.init.snapshot().status == Status::Running)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in running {
                    if !inner.check_oom(&sb, &id) {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start the OOM watcher: {e}");
        }
    }

    fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        husk::container::validate_id(&id)
            .map_err(|e| Error::InvalidArgument(format!("{e}: {id:?}")))?;
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "husk cannot restore checkpoints".into(),
            ));
        }
        {
            let mut life = self.wait_not_ending();
            if life.creating.contains(&id) || lock(&self.containers).contains_key(&id) {
                return Err(Error::AlreadyExists(format!(
                    "container {id}: already exists"
                )));
            }
            life.creating.insert(id.clone());
        }
        let r = self.create_claimed(&req);
        // After the container is in `containers` (or its Create failed).
        lock(&self.lifecycle).creating.remove(&id);
        if r.is_err() {
            self.end_sandbox_if_idle();
        }
        r
    }

    fn create_claimed(self: &Arc<Self>, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        let target = bundle.join("rootfs");
        let mounted = rootfs::mount_all(&req.rootfs, &target)?;
        match self.create_in(req, &bundle, &target, mounted) {
            Ok(r) => Ok(r),
            Err(e) => {
                if mounted {
                    rootfs::unmount(&target);
                }
                Err(e)
            }
        }
    }

    fn create_in(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        bundle: &Path,
        target: &Path,
        mounted: bool,
    ) -> Result<CreateTaskResponse> {
        let id = &req.id;
        let b = Bundle::load(bundle).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        hooks::validate(&b.spec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let sandbox_id = sandbox::sandbox_id(id, b.spec.annotations().as_ref())
            .map_err(Error::InvalidArgument)?;
        let (sb, launched) = self.sandbox_for(&sandbox_id, &b.spec)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let io = (|| {
            let mut guest_spec = b.spec.clone();
            // The sandbox container's netns is the VM's network (the host's path never
            // reaches the guest); the pod's others name it by the task pid.
            if launched || *id == sb.id {
                sb.net.guest_spec(&mut guest_spec);
            }
            self.guest_namespaces(&sb, id, &mut guest_spec)?;
            husk::cgroups::spec_for_guest(&mut guest_spec);
            share::stage(&sb.share, id, &b.dir, &b.rootfs, &mut guest_spec)?;
            sb.expect_ok(&Request::CreateContainer(Box::new(CreateContainer {
                id: id.clone(),
                spec: guest_spec,
                terminal: req.terminal,
            })))?;
            let io = Io::attach(&sb, id, None, &stdio);
            // The container exists (its task pid is the VMM's): prestart and
            // createRuntime, then createContainer, all on the host
            // (husk::hooks); a failure undoes the create.
            let hooked = io.and_then(|io| {
                let ctx = (Arc::new(b.spec.clone()), b.dir.clone());
                [Kind::Prestart, Kind::CreateRuntime, Kind::CreateContainer]
                    .into_iter()
                    .try_for_each(|k| run_hooks(id, sb.vmm_pid, Some(&ctx), k))
                    .map(|()| io)
            });
            hooked.inspect_err(|_| {
                let _ = sb.expect_ok(&Request::DeleteContainer {
                    id: id.clone(),
                    force: true,
                });
            })
        })();
        let init = io.and_then(|io| {
            let init = Arc::new(Process::new(id, None, stdio.clone(), sb.vmm_pid, io));
            self.watch(init.clone(), sb.clone()).inspect_err(|_| {
                let _ = sb.expect_ok(&Request::DeleteContainer {
                    id: id.clone(),
                    force: true,
                });
            })?;
            Ok(init)
        });
        let init = match init {
            Ok(init) => init,
            Err(e) => {
                rootfs::unstage(&sb.share, id);
                // A VM this Create booted goes in `create` once nothing
                // else is in or coming into it.
                return Err(e);
            }
        };
        lock(&self.containers).insert(
            id.clone(),
            Container {
                bundle: req.bundle.clone(),
                rootfs: target.to_path_buf(),
                rootfs_mounted: mounted,
                init: init.clone(),
                execs: HashMap::new(),
                paused: false,
                deleting: false,
                oom_kills: 0,
                hooks: b
                    .spec
                    .hooks()
                    .is_some()
                    .then(|| (Arc::new(b.spec.clone()), b.dir.clone())),
            },
        );
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid: sb.vmm_pid,
                ..Default::default()
            },
        );
        info!("container {id} created in sandbox {}", sb.id);
        Ok(CreateTaskResponse {
            pid: sb.vmm_pid,
            ..Default::default()
        })
    }

    /// Namespace paths name host files the guest cannot open. The sandbox's
    /// own (`/proc/<task pid>/ns/<type>`: CRI puts a pod's containers in
    /// its sandbox's IPC, UTS, network, maybe pid namespaces; the task pid is
    /// the VMM's) become the sandbox container's in the guest; any other
    /// host namespace cannot be joined from a VM, and the container gets a
    /// new one. The sandbox container's network namespace was settled before
    /// (Net::guest_spec): with a carried network it has none in the guest, so
    /// `/proc/<its guest pid>/ns/net` is the guest's initial one, where the
    /// carried links are, and the pod's containers join that.
    fn guest_namespaces(
        &self,
        sb: &Sandbox,
        id: &str,
        spec: &mut oci_spec::runtime::Spec,
    ) -> Result<()> {
        let Some(nss) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.namespaces_mut().as_mut())
        else {
            return Ok(());
        };
        let mut sandbox_pid = None;
        for ns in nss.iter_mut() {
            let Some(path) = ns.path().clone() else {
                continue;
            };
            match sandbox_namespace(&path, sb.vmm_pid) {
                Some(name) if sb.id != id => {
                    let pid = match sandbox_pid {
                        Some(p) => p,
                        None => {
                            let p = self.sandbox_init_pid(sb)?;
                            sandbox_pid = Some(p);
                            p
                        }
                    };
                    ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{name}"))));
                }
                _ => {
                    warn!(
                        "container {id}: {} namespace {}: a host namespace cannot be joined \
                         from the VM; the container gets a new one",
                        ns.typ(),
                        path.display()
                    );
                    ns.set_path(None);
                }
            }
        }
        Ok(())
    }

    /// The sandbox container's start: a network the engine set up in the
    /// task pid's netns since Create (a sandbox with a new netns: CNI of
    /// `ctr run --cni`, a prestart hook) is joined to the VM's spare NIC and
    /// given to the container in the guest, before its process runs.
    fn late_network(&self, sb: &Sandbox, id: &str) -> Result<()> {
        if id != sb.id || sb.net != Net::New {
            return Ok(());
        }
        let Some(config) = network::late_attach(sb.vmm_pid)? else {
            return Ok(());
        };
        info!(
            "container {id}: the network set up in /proc/{}/ns/net after create goes to the guest",
            sb.vmm_pid
        );
        sb.expect_ok(&Request::ConfigureContainerNetwork {
            id: id.to_string(),
            network: Box::new(config),
        })
        .map_err(|e| Error::Internal(format!("guest network: {e}")))
    }

    /// The guest pid of the sandbox container's init.
    fn sandbox_init_pid(&self, sb: &Sandbox) -> Result<i32> {
        match sb.request(&Request::ContainerState { id: sb.id.clone() })? {
            Response::State { pid, .. } if pid > 0 => Ok(pid),
            Response::State { .. } => Err(Error::FailedPrecondition(format!(
                "sandbox container {} is not running: its namespaces cannot be joined",
                sb.id
            ))),
            other => Err(husk::vm::unexpected("reply", &other).into()),
        }
    }

    fn start(&self, req: StartRequest) -> Result<StartResponse> {
        let p = self.process(&req.id, &req.exec_id)?;
        let sb = self.sandbox()?;
        match p.snapshot().status {
            Status::Created => {}
            Status::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "process {} is already running",
                    p.id()
                )))
            }
            Status::Stopped => {
                return Err(Error::FailedPrecondition(format!(
                    "process {} has already exited",
                    p.id()
                )))
            }
        }
        // No lock across the guest round trip (Kill and State must not wait
        // on a stuck agent); an exit meanwhile is published after TaskStart.
        if !p.begin_start() {
            return Err(Error::FailedPrecondition(format!(
                "process {} is being started",
                p.id()
            )));
        }
        let hooks = match &p.exec_id {
            None => self.container(&req.id, |c| Ok(c.hooks.clone()))?,
            Some(_) => None,
        };
        let started = match &p.exec_id {
            None => run_hooks(&req.id, sb.vmm_pid, hooks.as_ref(), Kind::StartContainer)
                .and_then(|()| self.late_network(&sb, &req.id))
                .inspect_err(|_| {
                    // The process never runs: the container ends, as a runc
                    // init whose startContainer hook fails does.
                    let _ = sb.expect_ok(&Request::Signal {
                        id: req.id.clone(),
                        exec_id: None,
                        signal: libc::SIGKILL,
                        all: true,
                    });
                })
                .and_then(|()| sb.expect_ok(&Request::StartContainer { id: req.id.clone() }))
                .map(|()| None),
            Some(exec_id) => sb
                .expect_ok(&Request::StartProcess {
                    id: req.id.clone(),
                    exec_id: exec_id.clone(),
                })
                // A guest pid, as the guest reports it (there is no host
                // process per exec): for display, never to signal on the host.
                .map(|()| guest_pid(&sb, &req.id, exec_id)),
        };
        let (st, exit_deferred) =
            p.end_start(started.is_ok(), started.as_ref().ok().copied().flatten());
        if started.is_ok() {
            match &p.exec_id {
                None => self.events.publish(
                    topics::TASK_START_EVENT_TOPIC,
                    TaskStart {
                        container_id: req.id.clone(),
                        pid: st.pid,
                        ..Default::default()
                    },
                ),
                Some(exec_id) => self.events.publish(
                    topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                    TaskExecStarted {
                        container_id: req.id.clone(),
                        exec_id: exec_id.clone(),
                        pid: st.pid,
                        ..Default::default()
                    },
                ),
            }
        }
        if exit_deferred {
            self.publish_exit(&p);
        }
        started?;
        // Failures are warnings (runtime spec), logged by run_hooks.
        let _ = run_hooks(&req.id, sb.vmm_pid, hooks.as_ref(), Kind::Poststart);
        Ok(StartResponse {
            pid: st.pid,
            ..Default::default()
        })
    }

    fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        match opt(&req.exec_id) {
            Some(exec_id) => self.delete_exec(&req.id, exec_id),
            None => self.delete_container(&req.id),
        }
    }

    fn delete_exec(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let p = self.process(id, exec_id)?;
        let st = p.snapshot();
        if st.status == Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete process {exec_id}: it is running"
            )));
        }
        if let Ok(sb) = self.sandbox() {
            if sb.lost().is_none() {
                if let Err(e) = sb.expect_ok(&Request::DeleteProcess {
                    id: id.to_string(),
                    exec_id: exec_id.to_string(),
                }) {
                    warn!("{id} {exec_id}: delete in the guest: {e}");
                }
            }
        }
        if let Some(io) = p.io().as_mut() {
            io.release();
        }
        self.container(id, |c| {
            c.execs.remove(exec_id);
            Ok(())
        })?;
        let exit = st.exit.unwrap_or(Exit {
            status: 0,
            at: SystemTime::now(),
        });
        Ok(DeleteResponse {
            pid: st.pid,
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    fn delete_container(&self, id: &str) -> Result<DeleteResponse> {
        let (init, execs, st) = self.container(id, |c| {
            let st = c.init.snapshot();
            if st.status == Status::Running || (c.paused && st.exit.is_none()) {
                return Err(Error::FailedPrecondition(format!(
                    "cannot delete container {id}: it is running"
                )));
            }
            if c.deleting {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is being deleted"
                )));
            }
            c.deleting = true;
            Ok((c.init.clone(), c.execs.clone(), st))
        })?;
        let sb = self.sandbox().ok();
        if let Some(sb) = sb.as_ref().filter(|sb| sb.lost().is_none()) {
            // force: a created init, or execs still running, go too.
            if let Err(e) = sb.expect_ok(&Request::DeleteContainer {
                id: id.to_string(),
                force: true,
            }) {
                warn!("{id}: delete in the guest: {e}");
            }
        }
        // A created init killed by the delete: its watcher records how it ended.
        let exit = init
            .wait_timeout(Duration::from_secs(5))
            .unwrap_or_else(|| {
                let e = Exit {
                    status: LOST_EXIT,
                    at: SystemTime::now(),
                };
                init.set_exited(e.status, e.at);
                e
            });
        for p in std::iter::once(&init).chain(execs.values()) {
            if let Some(io) = p.io().as_mut() {
                io.release();
            }
        }
        let c = lock(&self.containers).remove(id);
        if let Some(sb) = &sb {
            rootfs::unstage(&sb.share, id);
            // The sandbox container goes: the engine tears the pod's network
            // down next, and our redirects must not be in its way.
            if sb.id == id {
                sb.disconnect_net();
            }
        }
        if let Some(c) = &c {
            if c.rootfs_mounted {
                rootfs::unmount(&c.rootfs);
            }
            // After everything is gone; failures are warnings (runtime spec).
            let _ = run_hooks(id, 0, c.hooks.as_ref(), Kind::Poststop);
        }
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: st.pid,
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            },
        );
        self.end_sandbox_if_idle();
        info!("container {id} deleted");
        Ok(DeleteResponse {
            pid: st.pid,
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    fn exec(self: &Arc<Self>, req: ExecProcessRequest) -> Result<()> {
        let id = &req.id;
        let exec_id = &req.exec_id;
        if exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec id is required".into()));
        }
        let (init, exists) =
            self.container(id, |c| Ok((c.init.clone(), c.execs.contains_key(exec_id))))?;
        if exists {
            return Err(Error::AlreadyExists(format!(
                "id {exec_id}: already exists"
            )));
        }
        if init.snapshot().status != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "cannot exec in container {id}: it is not running"
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec without a process spec".into()))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&spec.value)
            .map_err(|e| Error::InvalidArgument(format!("invalid exec process spec: {e}")))?;
        let sb = self.sandbox()?;
        sb.expect_ok(&Request::ExecProcess(Box::new(ExecProcess {
            id: id.clone(),
            exec_id: exec_id.clone(),
            process,
            terminal: req.terminal,
        })))?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let io = Io::attach(&sb, id, Some(exec_id), &stdio).inspect_err(|_| {
            let _ = sb.expect_ok(&Request::DeleteProcess {
                id: id.clone(),
                exec_id: exec_id.clone(),
            });
        })?;
        let p = Arc::new(Process::new(id, Some(exec_id), stdio, sb.vmm_pid, io));
        self.watch(p.clone(), sb.clone()).inspect_err(|_| {
            let _ = sb.expect_ok(&Request::DeleteProcess {
                id: id.clone(),
                exec_id: exec_id.clone(),
            });
        })?;
        self.container(id, |c| {
            c.execs.insert(exec_id.clone(), p.clone());
            Ok(())
        })?;
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let p = self.process(&req.id, &req.exec_id)?;
        let (bundle, paused) = self.container(&req.id, |c| Ok((c.bundle.clone(), c.paused)))?;
        let st = p.snapshot();
        let status = match st.status {
            Status::Stopped => TaskStatus::STOPPED,
            Status::Running if paused => TaskStatus::PAUSED,
            Status::Running => TaskStatus::RUNNING,
            Status::Created => TaskStatus::CREATED,
        };
        let mut r = StateResponse {
            id: p.id().to_string(),
            bundle,
            pid: st.pid,
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        r.status = status.into();
        if let Some(e) = st.exit {
            r.exit_status = e.status;
            r.exited_at = timestamp(e.at);
        }
        Ok(r)
    }

    fn kill(&self, req: KillRequest) -> Result<()> {
        let p = self.process(&req.id, &req.exec_id)?;
        if p.snapshot().exit.is_some() {
            return Err(Error::NotFound(format!(
                "process {}: process already finished",
                p.id()
            )));
        }
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| Error::InvalidArgument(format!("invalid signal {}", req.signal)))?;
        let sb = self.sandbox()?;
        let sig = Request::Signal {
            id: req.id.clone(),
            exec_id: opt(&req.exec_id).map(str::to_string),
            signal,
            all: req.all,
        };
        if signal != libc::SIGKILL {
            return sb.expect_ok(&sig);
        }
        // SIGKILL must work against a guest that does not answer. Killing
        // the VMM takes every container of the sandbox with it: only when
        // that is what was asked (the sandbox's own init, whose end ends
        // the pod) or when the target is all there is.
        match sb.expect_ok_within(&sig, KILL_GRACE) {
            Ok(()) => Ok(()),
            Err(e) => {
                let alone = lock(&self.containers).len() == 1;
                if p.exec_id.is_none() && (req.id == sb.id || alone) {
                    warn!("{}: SIGKILL through the agent failed ({e})", req.id);
                    sb.kill_vmm();
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn pause_resume(&self, id: &str, pause: bool) -> Result<()> {
        let init = self.container(id, |c| Ok(c.init.clone()))?;
        if init.snapshot().status != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let sb = self.sandbox()?;
        let req = if pause {
            Request::PauseContainer { id: id.to_string() }
        } else {
            Request::ResumeContainer { id: id.to_string() }
        };
        sb.expect_ok(&req)?;
        self.container(id, |c| {
            c.paused = pause;
            Ok(())
        })?;
        if pause {
            self.events.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        } else {
            self.events.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        self.container(&req.id, |_| Ok(()))?;
        let sb = self.sandbox()?;
        if sb.lost().is_some() {
            return Ok(PidsResponse::default());
        }
        let processes = match sb.request(&Request::ListProcesses { id: req.id.clone() })? {
            Response::Processes { processes } => processes,
            other => return Err(husk::vm::unexpected("reply", &other).into()),
        };
        Ok(PidsResponse {
            processes: processes
                .into_iter()
                .filter_map(|p| {
                    Some(ProcessInfo {
                        pid: u32::try_from(p.pid).ok()?,
                        ..Default::default()
                    })
                })
                .collect(),
            ..Default::default()
        })
    }

    fn stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        self.container(&req.id, |_| Ok(()))?;
        let s = match self
            .sandbox()?
            .request(&Request::ContainerStats { id: req.id.clone() })?
        {
            Response::Stats(s) => s,
            other => return Err(husk::vm::unexpected("reply", &other).into()),
        };
        Ok(StatsResponse {
            stats: MessageField::some(crate::stats::to_any(&crate::stats::metrics(&s))?),
            ..Default::default()
        })
    }

    fn update(&self, req: UpdateTaskRequest) -> Result<()> {
        self.container(&req.id, |_| Ok(()))?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update without resources".into()))?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("invalid resources: {e}")))?;
        // As `husk update`: the host cgroup (a sandbox of one's) is checked
        // first and changed once the guest took the update.
        let sb = self.sandbox()?;
        let host = husk::cgroups::prepare_update(&sb.dir, &resources)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let mut resources = resources;
        husk::cgroups::for_guest(&mut resources);
        sb.expect_ok(&Request::UpdateContainer {
            id: req.id.clone(),
            resources: Box::new(resources),
        })?;
        if let Some(host) = host {
            host.apply().map_err(|e| {
                Error::Internal(format!(
                    "the guest was updated, the host cgroup was not: {e}"
                ))
            })?;
        }
        Ok(())
    }

    fn resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let p = self.process(&req.id, &req.exec_id)?;
        if !p.stdio.terminal {
            return Err(Error::FailedPrecondition(format!(
                "process {} has no terminal",
                p.id()
            )));
        }
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        self.sandbox()?.expect_ok(&Request::ResizeTerminal {
            id: req.id.clone(),
            exec_id: opt(&req.exec_id).map(str::to_string),
            rows: clamp(req.height),
            cols: clamp(req.width),
        })
    }

    fn close_io(&self, req: CloseIORequest) -> Result<()> {
        let p = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(io) = p.io().as_ref() {
                io.close_stdin();
            }
        }
        Ok(())
    }
}

/// The namespace type a path names if it is one of the sandbox's own,
/// `/proc/<task pid>/ns/<type>` (the task pid is husk-vmm's); None for any
/// other host namespace file.
fn sandbox_namespace(path: &Path, vmm_pid: u32) -> Option<&str> {
    let own = PathBuf::from(format!("/proc/{vmm_pid}/ns"));
    path.strip_prefix(&own)
        .ok()
        .and_then(|r| r.to_str())
        .filter(|n| ["net", "ipc", "uts", "pid", "mnt", "user", "cgroup", "time"].contains(n))
}

/// Records the guest's OOM-kill counter; true if it went up since the
/// last report. The counter is the guest's word: only an increase over the
/// highest value seen counts (a counter that drops and climbs again is not
/// a new OOM each time), one event per increase however large, and at most
/// one per poll.
fn oom_increase(seen: &mut u64, reported: u64) -> bool {
    let new = reported > *seen;
    *seen = (*seen).max(reported);
    new
}

/// A container's spec (for its hooks) and bundle directory.
type HookContext = (Arc<oci_spec::runtime::Spec>, PathBuf);

/// Runs the container's hooks of `kind` on the host (husk::hooks). The
/// first failure of a hook that must succeed is the error; poststart and
/// poststop failures are logged and the rest still run.
fn run_hooks(id: &str, pid: u32, ctx: Option<&HookContext>, kind: Kind) -> Result<()> {
    let Some((spec, bundle)) = ctx else {
        return Ok(());
    };
    let pid = i32::try_from(pid).ok().filter(|_| kind != Kind::Poststop);
    let state = hooks::state_json(kind, id, pid, bundle, spec);
    match kind {
        Kind::Poststart | Kind::Poststop => {
            for e in hooks::run_all(kind, spec, &state, bundle) {
                warn!("{id}: {e}");
            }
            Ok(())
        }
        _ => hooks::run(kind, spec, &state, bundle).map_err(|e| Error::Internal(e.to_string())),
    }
}

/// The guest pid of a just-started exec (None if the agent cannot tell,
/// or it is already gone).
fn guest_pid(sb: &Sandbox, id: &str, exec_id: &str) -> Option<u32> {
    match sb.request(&Request::ListProcesses { id: id.to_string() }) {
        Ok(Response::Processes { processes }) => processes
            .iter()
            .find(|p| p.exec_id.as_deref() == Some(exec_id))
            .and_then(|p| u32::try_from(p.pid).ok()),
        _ => None,
    }
}

fn done<T>(r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        warn!("{e}");
        e.into()
    })
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        done(self.inner.create(req))
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        done(self.inner.start(req))
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        done(self.inner.delete(req))
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        done(self.inner.state(req))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        done(self.inner.kill(req).map(|_| Empty::new()))
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let p = done(self.inner.process(&req.id, &req.exec_id))?;
        let e = p.wait();
        Ok(WaitResponse {
            exit_status: e.status,
            exited_at: timestamp(e.at),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        done(self.inner.exec(req).map(|_| Empty::new()))
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        done(self.inner.resize_pty(req).map(|_| Empty::new()))
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        done(self.inner.close_io(req).map(|_| Empty::new()))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        done(self.inner.pids(req))
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        done(self.inner.pause_resume(&req.id, true).map(|_| Empty::new()))
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        done(
            self.inner
                .pause_resume(&req.id, false)
                .map(|_| Empty::new()),
        )
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        done(self.inner.stats(req))
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        done(self.inner.update(req).map(|_| Empty::new()))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        done(Err(Error::Unimplemented(
            "husk cannot checkpoint tasks".into(),
        )))
    }

    fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = lock(&self.inner.sandbox)
            .as_ref()
            .map(|s| s.vmm_pid)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        {
            let life = self.inner.wait_not_ending();
            if !life.creating.is_empty() || !lock(&self.inner.containers).is_empty() {
                return Ok(Empty::new());
            }
        }
        self.inner.end_sandbox_if_idle();
        drop(self.inner.wait_not_ending());
        self.inner.events.flush(Duration::from_secs(2));
        info!("no containers left: shim exits");
        self.inner.exit.signal();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::{oom_increase, sandbox_namespace};
    use std::path::Path;

    #[test]
    fn sandbox_namespaces_are_named_by_the_task_pid() {
        fn ns(p: &str) -> Option<&str> {
            sandbox_namespace(Path::new(p), 4242)
        }
        assert_eq!(ns("/proc/4242/ns/net"), Some("net"));
        assert_eq!(ns("/proc/4242/ns/ipc"), Some("ipc"));
        assert_eq!(ns("/proc/4242/ns/uts"), Some("uts"));
        // Another process's, CRI's netns file, or not a namespace at all.
        assert_eq!(ns("/proc/42/ns/net"), None);
        assert_eq!(ns("/proc/42421/ns/net"), None);
        assert_eq!(ns("/var/run/netns/cni-1"), None);
        assert_eq!(ns("/proc/4242/ns/../ns/net"), None);
        assert_eq!(ns("/proc/4242/ns/net/x"), None);
        assert_eq!(ns("/proc/4242/ns/bogus"), None);
        assert_eq!(ns("/proc/4242/ns"), None);
    }

    #[test]
    fn oom_events_need_a_real_increase() {
        let mut seen = 0;
        let events: Vec<bool> = [0, 1, 1, 0, 1, 0, 1, 5, 5, 3, 6]
            .into_iter()
            .map(|r| oom_increase(&mut seen, r))
            .collect();
        assert_eq!(
            events,
            [false, true, false, false, false, false, false, true, false, false, true]
        );
        assert_eq!(seen, 6);
        assert!(!oom_increase(&mut seen, u64::MIN));
    }
}

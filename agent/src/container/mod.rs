//! Containers: a registry keyed by id, each going created → running
//! (⇄ paused) → stopped, several per VM, each with its exec processes.

pub mod caps;
pub mod cgroups;
pub mod exec;
pub mod exec_init;
pub mod freezer;
pub mod helper;
pub mod init;
pub mod launch;
pub mod mempolicy;
pub mod mounts;
pub mod passfd;
pub mod process;
pub mod ps;
pub mod rlimits;
pub mod seccomp;
pub mod spec;
pub mod stats;
pub mod user;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use husk_protocol::network::NetworkConfig;
use husk_protocol::{
    self as proto, ContainerStatus, CreateContainer, PassedFd, Response, StdioStream,
};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, LinuxSeccomp, Spec};

use cgroups::Cgroup;
use helper::StartError;
use init::InitConfig;
use process::{exits, lock, Channel, ExitCell, Stdio};

/// argv[1] of the agent re-executed as a container init.
pub const INIT_ARG: &str = "container-init";
/// argv[1] of the agent re-executed to set up an exec process.
pub const EXEC_ARG: &str = "container-exec";

/// How long `DeleteContainer { force }` waits for the processes to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    /// Frozen; `started` tells what a resume returns to (runc pauses a
    /// created container too).
    Paused {
        started: bool,
    },
}

pub struct Container {
    id: String,
    /// The container process (PID 1 of its pid namespace, if it has one).
    pid: i32,
    exit: Arc<ExitCell>,
    cgroup: Cgroup,
    stdio: Arc<Stdio>,
    /// The init's passed descriptors (`--preserve-fds`).
    passed: Arc<passfd::Passed>,
    phase: Mutex<Phase>,
    /// Control channel to the init until it execs.
    ctl: Mutex<Option<Channel>>,
    /// `linux.seccomp` of the spec: exec processes get it too (as in runc).
    seccomp: Option<LinuxSeccomp>,
    /// The spec's process, for what an exec's process leaves unset.
    process: oci_spec::runtime::Process,
    execs: Mutex<HashMap<String, exec::Slot>>,
    /// Serializes exec setup and start with pause and resume: a helper
    /// joining a frozen cgroup would freeze halfway.
    ops: Mutex<()>,
    /// Its own network namespace's network (`ConfigureContainerNetwork`), set up once.
    network: crate::network::ContainerNetwork,
}

/// The process a request names: the container's init or one of its execs.
struct Target {
    pid: i32,
    exit: Arc<ExitCell>,
    stdio: Arc<Stdio>,
    passed: Arc<passfd::Passed>,
    /// "container ID" or "process EXEC of container ID", for messages.
    what: String,
}

impl Container {
    fn status(&self) -> ContainerStatus {
        let phase = *lock(&self.phase);
        self.status_in(phase)
    }

    fn status_in(&self, phase: Phase) -> ContainerStatus {
        if self.exit.get().is_some() {
            return ContainerStatus::Stopped;
        }
        match phase {
            Phase::Created => ContainerStatus::Created,
            Phase::Running => ContainerStatus::Running,
            Phase::Paused { .. } => ContainerStatus::Paused,
        }
    }

    /// Kills every process of the container (thawing it if paused) and waits
    /// for the init and the execs to be reaped.
    fn kill_all(&self) -> Result<(), String> {
        let _ = self.cgroup.signal_all(libc::SIGKILL);
        let execs = self.exec_list();
        if self.exit.get().is_none() {
            // SAFETY: plain syscall (the pid is ours until reaped).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        for e in &execs {
            if e.exit.get().is_none() {
                // SAFETY: as above.
                unsafe { libc::kill(e.pid, libc::SIGKILL) };
            }
        }
        // SIGKILL ends frozen tasks too (cgroup v2); thawing is for tidiness.
        let _ = self.cgroup.set_frozen(false, Duration::from_secs(2));
        if self.exit.wait_timeout(KILL_TIMEOUT).is_none() {
            return Err(format!("container {} did not exit after SIGKILL", self.id));
        }
        for e in &execs {
            if e.exit.wait_timeout(KILL_TIMEOUT).is_none() {
                return Err(format!(
                    "process {} of container {} did not exit after SIGKILL",
                    e.exec_id, self.id
                ));
            }
        }
        Ok(())
    }
}

fn status_name(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Paused => "paused",
        ContainerStatus::Stopped => "stopped",
    }
}

enum Slot {
    Creating,
    Ready(Arc<Container>),
}

#[derive(Default)]
pub struct Registry {
    containers: Mutex<HashMap<String, Slot>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

pub fn registry() -> &'static Registry {
    &REGISTRY
}

fn err(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

/// What `AttachStdio` turns the connection into once `Ok` has been sent.
pub enum Attachment {
    Output(Arc<process::OutBuf>),
    Input(std::fs::File),
    Terminal(Arc<Stdio>),
}

impl Attachment {
    /// Relays until the stream ends; the connection is finished afterwards.
    pub fn relay(self, conn: UnixStream) {
        match self {
            Attachment::Output(buf) => {
                buf.relay_to(&conn);
                // let the host read everything before we close
                drain_until_closed(&conn);
            }
            Attachment::Input(pipe) => process::relay_stdin(&conn, pipe),
            Attachment::Terminal(stdio) => {
                let Stdio::Pty { master, out, .. } = &*stdio else {
                    return;
                };
                std::thread::scope(|s| {
                    // (Builder: a failed spawn must not panic PID 1.)
                    let input = std::thread::Builder::new()
                        .name("tty-in".into())
                        .spawn_scoped(s, || process::relay_to_pty(&conn, master));
                    if input.is_err() {
                        eprintln!("husk-agent: cannot start terminal input relay");
                    }
                    out.relay_to(&conn);
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                });
                let Stdio::Pty { input_claimed, .. } = &*stdio else {
                    return;
                };
                *lock(input_claimed) = false;
            }
        }
    }
}

fn drain_until_closed(conn: &UnixStream) {
    use std::io::Read;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut conn = conn;
    let mut buf = [0u8; 1024];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

impl Registry {
    fn get(&self, id: &str) -> Result<Arc<Container>, Response> {
        match lock(&self.containers).get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            Some(Slot::Creating) => Err(err(format!("container {id} is being created"))),
            None => Err(err(format!("container {id} does not exist"))),
        }
    }

    /// The container and the process `exec_id` names (None: the init).
    fn target(
        &self,
        id: &str,
        exec_id: &Option<String>,
    ) -> Result<(Arc<Container>, Target), Response> {
        let c = self.get(id)?;
        let t = match exec_id {
            None => Target {
                pid: c.pid,
                exit: c.exit.clone(),
                stdio: c.stdio.clone(),
                passed: c.passed.clone(),
                what: format!("container {id}"),
            },
            Some(e) => {
                let x = c.exec(e)?;
                Target {
                    pid: x.pid,
                    exit: x.exit.clone(),
                    stdio: x.stdio.clone(),
                    passed: x.passed.clone(),
                    what: format!("process {e} of container {id}"),
                }
            }
        };
        Ok((c, t))
    }

    /// Creates a container whose init gets `fds` as its fds 3, 4, ...
    pub fn create(&self, req: &CreateContainer, fds: &[PassedFd]) -> Response {
        let id = &req.id;
        if let Err(e) = spec::validate_id(id) {
            return err(e);
        }
        if let Err(e) = spec::validate(&req.spec) {
            return err(format!("container {id}: invalid spec: {e}"));
        }
        {
            let mut map = lock(&self.containers);
            if map.contains_key(id) {
                return err(format!("container {id} already exists"));
            }
            map.insert(id.clone(), Slot::Creating);
        }
        match create(req, fds) {
            Ok(c) => {
                lock(&self.containers).insert(id.clone(), Slot::Ready(Arc::new(c)));
                Response::Ok
            }
            Err(e) => {
                lock(&self.containers).remove(id);
                err(format!("create container {id}: {e}"))
            }
        }
    }

    pub fn start(&self, id: &str) -> Response {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(r) => return r,
        };
        // Taking the channel makes this the only start; the phase lock is
        // not held while the init execs, so ContainerState stays responsive.
        let ctl = {
            let phase = lock(&c.phase);
            match c.status_in(*phase) {
                ContainerStatus::Created => {}
                ContainerStatus::Stopped => {
                    return err(format!(
                        "container {id}: cannot start a container that has stopped"
                    ))
                }
                s => {
                    return err(format!(
                        "container {id} is not in created state: {}",
                        status_name(s)
                    ))
                }
            }
            match lock(&c.ctl).take() {
                Some(ctl) => ctl,
                None => return err(format!("container {id} is not in created state: starting")),
            }
        };
        let result = helper::release(ctl, c.pid);
        // Running from here on even if exec failed: the init exits (127) and
        // the status turns stopped once it is reaped. A pause that raced with
        // this start keeps the container frozen: it resumes to running.
        {
            let mut phase = lock(&c.phase);
            *phase = match *phase {
                Phase::Paused { .. } => Phase::Paused { started: true },
                _ => Phase::Running,
            };
        }
        match result {
            Ok(()) => Response::Ok,
            Err(StartError::Gone) => err(format!(
                "container {id}: cannot start a container that has stopped"
            )),
            Err(StartError::Exec(e)) => err(format!("container {id}: exec failed: {e}")),
            Err(StartError::Broken(e)) => {
                let _ = c.cgroup.signal_all(libc::SIGKILL);
                err(format!("container {id}: start: {e} (container killed)"))
            }
        }
    }

    pub fn signal(&self, id: &str, exec_id: &Option<String>, sig: i32, all: bool) -> Response {
        let (c, t) = match self.target(id, exec_id) {
            Ok(x) => x,
            Err(r) => return r,
        };
        if !(1..=64).contains(&sig) {
            return err(format!("invalid signal {sig}"));
        }
        if all {
            // Every process of the container, whichever process was named;
            // SIGKILL reaches frozen processes too.
            return match c.cgroup.signal_all(sig) {
                Ok(()) => Response::Ok,
                Err(e) => err(format!("container {id}: signal all: {e}")),
            };
        }
        if t.exit.get().is_some() {
            return err(format!("{} is not running", t.what));
        }
        // SAFETY: plain syscall; the pid cannot be reused before we reap it.
        if unsafe { libc::kill(t.pid, sig) } != 0 {
            return err(format!(
                "{}: kill: {}",
                t.what,
                std::io::Error::last_os_error()
            ));
        }
        Response::Ok
    }

    pub fn wait(&self, id: &str, exec_id: &Option<String>) -> Response {
        match self.target(id, exec_id) {
            Ok((_, t)) => Response::Exited {
                status: t.exit.wait(),
            },
            Err(r) => r,
        }
    }

    pub fn state(&self, id: &str) -> Response {
        match self.get(id) {
            Ok(c) => {
                let status = c.status();
                Response::State {
                    pid: if status == ContainerStatus::Stopped {
                        0
                    } else {
                        c.pid
                    },
                    status,
                }
            }
            Err(r) => r,
        }
    }

    pub fn attach(
        &self,
        id: &str,
        exec_id: &Option<String>,
        stream: StdioStream,
    ) -> Result<Attachment, Response> {
        let (_, t) = self.target(id, exec_id)?;
        let what = &t.what;
        let busy = |s: &str| err(format!("{s} of {what} is already attached"));
        match (&*t.stdio, stream) {
            (Stdio::Pipes { stdout, .. }, StdioStream::Stdout) => {
                if stdout.claim() {
                    Ok(Attachment::Output(stdout.clone()))
                } else {
                    Err(busy("stdout"))
                }
            }
            (Stdio::Pipes { stderr, .. }, StdioStream::Stderr) => {
                if stderr.claim() {
                    Ok(Attachment::Output(stderr.clone()))
                } else {
                    Err(busy("stderr"))
                }
            }
            (Stdio::Pipes { stdin, .. }, StdioStream::Stdin) => match lock(stdin).take() {
                Some(f) => Ok(Attachment::Input(f)),
                None => Err(err(format!(
                    "stdin of {what} is already attached or closed"
                ))),
            },
            (
                Stdio::Pty {
                    out, input_claimed, ..
                },
                StdioStream::Terminal,
            ) => {
                let mut claimed = lock(input_claimed);
                if *claimed || !out.claim() {
                    return Err(busy("the terminal"));
                }
                *claimed = true;
                drop(claimed);
                Ok(Attachment::Terminal(t.stdio.clone()))
            }
            (Stdio::Pty { .. }, s) => Err(err(format!(
                "{what} has a terminal: attach stream terminal, not {s:?}"
            ))),
            (Stdio::Pipes { .. }, StdioStream::Terminal) => Err(err(format!(
                "{what} has no terminal: attach stdin, stdout or stderr"
            ))),
        }
    }

    /// The agent's end of passed descriptor `fd` of a process, for one
    /// `AttachFd` connection.
    pub fn attach_fd(
        &self,
        id: &str,
        exec_id: &Option<String>,
        fd: i32,
    ) -> Result<passfd::FdAttachment, Response> {
        let (_, t) = self.target(id, exec_id)?;
        t.passed.attach(fd, &t.what).map_err(err)
    }

    pub fn resize(&self, id: &str, exec_id: &Option<String>, rows: u16, cols: u16) -> Response {
        let t = match self.target(id, exec_id) {
            Ok((_, t)) => t,
            Err(r) => return r,
        };
        let Stdio::Pty { master, .. } = &*t.stdio else {
            return err(format!("{} has no terminal", t.what));
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the
        // kernel sends SIGWINCH to the terminal's foreground group.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return err(format!(
                "{}: resize terminal: {}",
                t.what,
                std::io::Error::last_os_error()
            ));
        }
        Response::Ok
    }

    pub fn update(&self, id: &str, resources: &LinuxResources) -> Response {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if c.status() == ContainerStatus::Stopped {
            return err(format!("container {id} is not running: stopped"));
        }
        // A swap limit is memory+swap: without a new memory limit it is
        // taken against the current one (as runc does).
        let mut resources = resources.clone();
        if let Some(m) = *resources.memory() {
            if m.swap().is_some() && m.limit().is_none() {
                let current = std::fs::read_to_string(c.cgroup.path.join("memory.max"))
                    .ok()
                    .and_then(|t| stats::parse_limit(&t).ok())
                    .map(|l| l.map_or(-1, |v| i64::try_from(v).unwrap_or(-1)));
                let mut m = m;
                m.set_limit(current);
                resources.set_memory(Some(m));
            }
        }
        // A quota or a period alone keeps the other, as `runc update` does
        // (and as the host cgroup does).
        if let Some(mut cpu) = resources.cpu().clone() {
            if cpu.quota().is_some() != cpu.period().is_some() {
                let current =
                    std::fs::read_to_string(c.cgroup.path.join("cpu.max")).unwrap_or_default();
                let mut cur = current.split_whitespace();
                let (quota, period) = (cur.next(), cur.next());
                if cpu.quota().is_none() {
                    cpu.set_quota(Some(quota.and_then(|q| q.parse().ok()).unwrap_or(-1)));
                }
                if cpu.period().is_none() {
                    cpu.set_period(period.and_then(|p| p.parse().ok()));
                }
                resources.set_cpu(Some(cpu));
            }
        }
        match cgroups::resource_writes(&resources).and_then(|w| c.cgroup.apply(&w)) {
            Ok(()) => Response::Ok,
            Err(e) => err(format!("update container {id}: {e}")),
        }
    }

    pub fn stats(&self, id: &str) -> Response {
        match self.get(id) {
            Ok(c) => match stats::collect(&c.cgroup.path) {
                Ok(s) => Response::Stats(Box::new(s)),
                Err(e) => err(format!("container {id}: stats: {e}")),
            },
            Err(r) => r,
        }
    }

    pub fn processes(&self, id: &str) -> Response {
        match self.get(id) {
            Ok(c) => Response::Processes {
                processes: ps::list(&c.cgroup.path, &c.exec_pids()),
            },
            Err(r) => r,
        }
    }

    /// A network the engine set up after `create`, moved into the container's own network
    /// namespace (the one of its init, which exec processes join too).
    pub fn configure_network(&self, id: &str, cfg: &NetworkConfig) -> Response {
        if let Err(e) = crate::network::check_container_config(cfg) {
            return err(format!("container {id}: {e}"));
        }
        let c = match self.get(id) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let stopped = || {
            err(format!(
                "container {id}: cannot configure the network of a stopped container"
            ))
        };
        if c.status() == ContainerStatus::Stopped {
            return stopped();
        }
        let path = format!("/proc/{}/ns/net", c.pid);
        let netns = std::fs::File::open(&path);
        // The pid stays ours until it is reaped: not reaped after the open, the namespace
        // opened is the container's (and the fd keeps it while the NIC moves).
        if c.exit.get().is_some() {
            return stopped();
        }
        let netns = match netns {
            Ok(f) => f,
            Err(e) => return err(format!("container {id}: open {path}: {e}")),
        };
        match c.network.configure(netns.as_fd(), cfg) {
            Ok(()) => Response::Ok,
            Err(e) => err(format!("container {id}: {e}")),
        }
    }

    pub fn delete(&self, id: &str, force: bool) -> Response {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let status = c.status();
        if !force && matches!(status, ContainerStatus::Running | ContainerStatus::Paused) {
            return err(format!(
                "cannot delete container {id} that is not stopped: {}",
                status_name(status)
            ));
        }
        // A created container is killed, like runc does; stopped ones may have
        // leftovers in their cgroup (no pid namespace).
        if let Err(e) = c.kill_all() {
            return err(e);
        }
        lock(&c.ctl).take();
        if let Err(e) = c.cgroup.remove(Duration::from_secs(5)) {
            let _ = c.cgroup.signal_all(libc::SIGKILL);
            if let Err(e2) = c.cgroup.remove(Duration::from_secs(5)) {
                return err(format!("container {id}: {e2} (first attempt: {e})"));
            }
        }
        exits().forget(c.pid);
        for e in c.exec_list() {
            exits().forget(e.pid);
        }
        lock(&self.containers).remove(id);
        Response::Ok
    }

    /// Kills every container (agent shutdown).
    pub fn kill_everything(&self) {
        let all: Vec<Arc<Container>> = lock(&self.containers)
            .values()
            .filter_map(|s| match s {
                Slot::Ready(c) => Some(c.clone()),
                Slot::Creating => None,
            })
            .collect();
        for c in all {
            let _ = self.delete(&c.id, true);
        }
    }
}

// ------------------------------------------------------------- share ----

static SHARE: Mutex<()> = Mutex::new(());

fn refers_to_share(spec: &Spec) -> bool {
    let share = Path::new(proto::SHARE_MOUNT);
    spec.root()
        .as_ref()
        .is_some_and(|r| r.path().starts_with(share))
        || spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.source().as_ref().is_some_and(|s| s.starts_with(share)))
}

fn is_mount_point(p: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p))
}

/// Mounts the VM's shared directory (virtio-fs tag `husk`) on SHARE_MOUNT,
/// once. Only done when the spec refers to it.
fn ensure_share(spec: &Spec) -> Result<(), String> {
    if !refers_to_share(spec) {
        return Ok(());
    }
    let _g = lock(&SHARE);
    if is_mount_point(proto::SHARE_MOUNT) {
        return Ok(());
    }
    std::fs::create_dir_all(proto::SHARE_MOUNT)
        .map_err(|e| format!("mkdir {}: {e}", proto::SHARE_MOUNT))?;
    mounts::mount(
        Some(Path::new(proto::SHARE_TAG)),
        Path::new(proto::SHARE_MOUNT),
        Some("virtiofs"),
        0,
        None,
    )
    .map_err(|e| {
        let hint = if e.contains("No such file or directory") {
            format!(
                " (the VM has no virtio-fs device tagged {:?})",
                proto::SHARE_TAG
            )
        } else if e.contains("No such device") {
            " (the guest kernel has no virtiofs)".to_string()
        } else {
            String::new()
        };
        format!("shared directory: {e}{hint}")
    })
}

// ------------------------------------------------------------ create ----

/// `process.consoleSize` as (rows, cols).
fn console_size(p: &oci_spec::runtime::Process) -> Option<(u16, u16)> {
    p.console_size().map(|b| {
        (
            b.height().min(u16::MAX as u64) as u16,
            b.width().min(u16::MAX as u64) as u16,
        )
    })
}

fn create(req: &CreateContainer, fds: &[PassedFd]) -> Result<Container, String> {
    let spec = &req.spec;
    ensure_share(spec)?;
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("root.path {}: not a directory", rootfs.display())),
        Err(e) => return Err(format!("root.path {}: {e}", rootfs.display())),
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cgroup = Cgroup::create(&req.id, resources)?;
    let cleanup_cgroup = |e: String| {
        let _ = cgroup.signal_all(libc::SIGKILL);
        let _ = cgroup.remove(Duration::from_secs(2));
        e
    };
    let size = spec.process().as_ref().and_then(console_size);
    let (stdio, child_stdio) =
        Stdio::new(req.terminal, size).map_err(|e| cleanup_cgroup(format!("stdio: {e}")))?;
    let (passed, passed_fds) = passfd::Passed::create(fds).map_err(cleanup_cgroup)?;
    let config = InitConfig {
        id: req.id.clone(),
        spec: spec.clone(),
        terminal: req.terminal,
        cgroup: Some(cgroup.path.clone()),
        console: child_stdio.console.clone(),
        passed_fds: passed_fds.len(),
    };
    let pid_ns = spec::has_namespace(spec, LinuxNamespaceType::Pid);
    let parked = helper::start(
        INIT_ARG,
        "the container init",
        &config,
        child_stdio,
        &passfd::borrow(&passed_fds),
        pid_ns,
    )
    .map_err(cleanup_cgroup)?;
    // The init has its copies; ours would hold the pipes open.
    drop(passed_fds);
    Ok(Container {
        id: req.id.clone(),
        pid: parked.pid,
        exit: parked.exit,
        cgroup,
        stdio: Arc::new(stdio),
        passed: Arc::new(passed),
        phase: Mutex::new(Phase::Created),
        ctl: Mutex::new(Some(parked.ctl)),
        seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        process: spec.process().clone().unwrap_or_default(),
        execs: Mutex::new(HashMap::new()),
        ops: Mutex::new(()),
        network: Default::default(),
    })
}

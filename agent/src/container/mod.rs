//! Containers: a registry keyed by id, each going created → running →
//! stopped, several per VM.

pub mod caps;
pub mod cgroups;
pub mod init;
pub mod mounts;
pub mod process;
pub mod rlimits;
pub mod seccomp;
pub mod spec;
pub mod user;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use husk_protocol::{
    self as proto, ContainerStatus, CreateContainer, ExitStatus, Response, StdioStream,
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use cgroups::Cgroup;
use init::{AgentMsg, InitConfig, InitMsg};
use process::{exits, lock, Channel, ExitCell, Stdio};

/// argv[1] of the agent re-executed as a container init.
pub const INIT_ARG: &str = "container-init";

/// How long the init may take to set up, and to exec after `StartContainer`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `DeleteContainer { force }` waits for the processes to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
}

pub struct Container {
    id: String,
    /// The container process (PID 1 of its pid namespace, if it has one).
    pid: i32,
    exit: Arc<ExitCell>,
    cgroup: Cgroup,
    stdio: Stdio,
    phase: Mutex<Phase>,
    /// Control channel to the init until it execs.
    ctl: Mutex<Option<Channel>>,
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
        }
    }

    /// Kills every process of the container and waits for the init to be reaped.
    fn kill_all(&self) -> Result<(), String> {
        let _ = self.cgroup.signal_all(libc::SIGKILL);
        if self.exit.get().is_none() {
            // SAFETY: plain syscall (the pid is ours until reaped).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        if self.exit.wait_timeout(KILL_TIMEOUT).is_none() {
            return Err(format!("container {} did not exit after SIGKILL", self.id));
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
    Terminal(Arc<Container>),
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
            Attachment::Terminal(c) => {
                let Stdio::Pty { master, out, .. } = &c.stdio else {
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
                let Stdio::Pty { input_claimed, .. } = &c.stdio else {
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

    fn no_exec(id: &str, exec_id: &Option<String>) -> Result<(), Response> {
        match exec_id {
            None => Ok(()),
            Some(e) => Err(err(format!("process {e} of container {id} does not exist"))),
        }
    }

    pub fn create(&self, req: &CreateContainer) -> Response {
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
        match create(req) {
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
        if ctl.send(&AgentMsg::Start).is_err() {
            return err(format!(
                "container {id}: cannot start a container that has stopped"
            ));
        }
        let reply = ctl.recv::<InitMsg>(Some(SETUP_TIMEOUT));
        // Running from here on even if exec failed: the init exits (127) and
        // the status turns stopped once it is reaped.
        *lock(&c.phase) = Phase::Running;
        match reply {
            // The channel closes on a successful execve (close-on-exec).
            Ok(None) => Response::Ok,
            Ok(Some(InitMsg::Error(e))) => err(format!("container {id}: exec failed: {e}")),
            Ok(Some(m)) => err(format!(
                "container {id}: unexpected message from init: {m:?}"
            )),
            Err(e) => {
                let _ = c.cgroup.signal_all(libc::SIGKILL);
                // SAFETY: plain syscall.
                unsafe { libc::kill(c.pid, libc::SIGKILL) };
                err(format!("container {id}: start: {e} (container killed)"))
            }
        }
    }

    pub fn signal(&self, id: &str, exec_id: &Option<String>, sig: i32, all: bool) -> Response {
        let c = match self
            .get(id)
            .and_then(|c| Self::no_exec(id, exec_id).map(|()| c))
        {
            Ok(c) => c,
            Err(r) => return r,
        };
        if !(1..=64).contains(&sig) {
            return err(format!("invalid signal {sig}"));
        }
        if all {
            return match c.cgroup.signal_all(sig) {
                Ok(()) => Response::Ok,
                Err(e) => err(format!("container {id}: signal all: {e}")),
            };
        }
        if c.exit.get().is_some() {
            return err(format!("container {id} is not running"));
        }
        // SAFETY: plain syscall; the pid cannot be reused before we reap it.
        if unsafe { libc::kill(c.pid, sig) } != 0 {
            return err(format!(
                "container {id}: kill: {}",
                std::io::Error::last_os_error()
            ));
        }
        Response::Ok
    }

    pub fn wait(&self, id: &str, exec_id: &Option<String>) -> Response {
        match self
            .get(id)
            .and_then(|c| Self::no_exec(id, exec_id).map(|()| c))
        {
            Ok(c) => Response::Exited {
                status: c.exit.wait(),
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
        let c = self.get(id)?;
        Self::no_exec(id, exec_id)?;
        let busy = |what: &str| err(format!("{what} of container {id} is already attached"));
        match (&c.stdio, stream) {
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
                    "stdin of container {id} is already attached or closed"
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
                Ok(Attachment::Terminal(c.clone()))
            }
            (Stdio::Pty { .. }, s) => Err(err(format!(
                "container {id} has a terminal: attach stream terminal, not {s:?}"
            ))),
            (Stdio::Pipes { .. }, StdioStream::Terminal) => Err(err(format!(
                "container {id} has no terminal: attach stdin, stdout or stderr"
            ))),
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

fn create(req: &CreateContainer) -> Result<Container, String> {
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
    let size = spec
        .process()
        .as_ref()
        .and_then(|p| p.console_size())
        .map(|b| {
            (
                b.height().min(u16::MAX as u64) as u16,
                b.width().min(u16::MAX as u64) as u16,
            )
        });
    let (stdio, child_stdio) =
        Stdio::new(req.terminal, size).map_err(|e| cleanup_cgroup(format!("stdio: {e}")))?;
    let config = InitConfig {
        id: req.id.clone(),
        spec: spec.clone(),
        terminal: req.terminal,
        cgroup: Some(cgroup.path.clone()),
        console: child_stdio.console.clone(),
    };
    let (ctl, ctl_child) =
        Channel::pair().map_err(|e| cleanup_cgroup(format!("socketpair: {e}")))?;
    let (cfg_r, cfg_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| cleanup_cgroup(format!("pipe: {e}")))?;
    let [s0, s1, s2] = &child_stdio.fds;
    let (init_pid, init_exit) = process::spawn_init([
        s0.as_fd(),
        s1.as_fd(),
        s2.as_fd(),
        ctl_child.0.as_fd(),
        cfg_r.as_fd(),
    ])
    .map_err(|e| cleanup_cgroup(format!("spawn container init: {e}")))?;
    drop(child_stdio);
    drop(ctl_child);
    drop(cfg_r);

    let fail = |e: String, pids: &[i32]| {
        for p in pids {
            // SAFETY: plain syscall.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        let _ = init_exit.wait_timeout(Duration::from_secs(5));
        for p in pids {
            exits().forget(*p);
        }
        cleanup_cgroup(e)
    };

    // The config goes through a pipe (it can exceed a socket packet); the
    // init reads it at once, so this write does not block for long.
    let written = serde_json::to_vec(&config)
        .map_err(|e| e.to_string())
        .and_then(|buf| {
            std::fs::File::from(cfg_w)
                .write_all(&buf)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        return Err(fail(
            format!("send config to the container init: {e}"),
            &[init_pid],
        ));
    }

    let pid_ns = spec::has_namespace(spec, LinuxNamespaceType::Pid);
    let mut pid = init_pid;
    let mut exit = init_exit.clone();
    loop {
        match ctl.recv::<InitMsg>(Some(SETUP_TIMEOUT)) {
            Ok(Some(InitMsg::Pid(p))) if pid_ns && pid == init_pid => {
                // Watched before the intermediate exits: only then can the
                // container process become our child.
                exit = exits().watch(p);
                pid = p;
                if let Err(e) = ctl.send(&AgentMsg::Ack) {
                    return Err(fail(format!("ack the container init: {e}"), &[init_pid, p]));
                }
            }
            Ok(Some(InitMsg::Ready)) => break,
            Ok(Some(InitMsg::Error(e))) => return Err(fail(e, &[init_pid, pid])),
            Ok(Some(m)) => {
                return Err(fail(
                    format!("unexpected message from the container init: {m:?}"),
                    &[init_pid, pid],
                ))
            }
            Ok(None) => {
                let how = init_exit
                    .wait_timeout(Duration::from_secs(2))
                    .map(|s| match s {
                        ExitStatus::Code(c) => format!(" (exit code {c})"),
                        ExitStatus::Signal(s) => format!(" (killed by signal {s})"),
                    })
                    .unwrap_or_default();
                return Err(fail(
                    format!("the container init exited during setup{how}"),
                    &[init_pid, pid],
                ));
            }
            Err(e) => {
                return Err(fail(
                    format!("waiting for the container init: {e}"),
                    &[init_pid, pid],
                ))
            }
        }
    }
    if pid != init_pid {
        // The intermediate exits on its own; nobody waits for it.
        exits().forget(init_pid);
    }
    Ok(Container {
        id: req.id.clone(),
        pid,
        exit,
        cgroup,
        stdio,
        phase: Mutex::new(Phase::Created),
        ctl: Mutex::new(Some(ctl)),
    })
}

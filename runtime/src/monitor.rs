//! The monitor: the host process whose pid `husk create` reports.
//!
//! It lives exactly as long as the container's init and ends the same way
//! (exit code N ⇒ exits N; killed by signal S ⇒ dies by S), so conmon and
//! containerd's runc shim see what they see with runc. It owns the VM
//! (husk-vmm dies with it, by PR_SET_PDEATHSIG), holds the stdio it inherited
//! from `husk create` (or the host end of a pty sent to `--console-socket`)
//! and relays them to the container's streams in the guest, and forwards the
//! signals it receives to the container's init.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use husk_protocol::{
    CreateContainer, ExitStatus, PassedFd, Request, Response, StdioStream, SHARE_TAG,
};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::container::state::{process_start_time, State};
use crate::container::Store;
use crate::stdio::{self, dup_std, spawn_copy};
use crate::vm::{AgentClient, Vm, VmSpec};

/// What `husk create` hands the monitor (`<state dir>/create.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    /// The spec with guest paths (see `container::share`).
    pub spec: Spec,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub console_socket: Option<PathBuf>,
    /// Start husk-vmm without its jail (config.toml `no_jail`, debugging only).
    #[serde(default)]
    pub no_jail: bool,
    /// `--preserve-fds`: what our inherited fds 3, 4, ... are, in order.
    #[serde(default)]
    pub passed_fds: Vec<PassedFd>,
}

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where VM directories go when the state directory's path is too long for
/// unix socket names (engines pass long `--root`s and 64-character ids).
pub const SHORT_VM_BASE: &str = "/run/husk-vm";

/// The directory holding the VM's unix sockets: `<state dir>/vm`, unless a
/// socket name there (`vsock.sock_<port>`, up to 21 bytes) would not fit in
/// `sun_path` (108 bytes with the NUL); then a short directory named after a
/// hash of the state directory, so `delete` finds it without any state.
pub fn vm_dir(state_dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let dir = state_dir.join("vm");
    if dir.as_os_str().len() + "/vsock.sock_4294967295".len() < 108 {
        return dir;
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = state_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    Path::new(SHORT_VM_BASE).join(format!("{hash:016x}"))
}

/// Paths inside a container's state directory.
pub fn share_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("share")
}
pub fn vsock_path(state_dir: &Path) -> PathBuf {
    vm_dir(state_dir).join("vsock.sock")
}

/// What `husk create` recorded for the monitor (the spec with guest paths).
pub fn load_create_request(state_dir: &Path) -> Result<CreateRequest, String> {
    let path = state_dir.join("create.json");
    std::fs::read(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| format!("bad {}: {e}", path.display()))
        })
}

/// How long a command waits for container `id`'s agent, per request.
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the agent of container `id`'s VM.
pub fn agent(store: &Store, id: &str) -> Result<AgentClient, crate::vm::VmError> {
    agent_within(store, id, AGENT_CALL_TIMEOUT)
}

/// Connects to the agent of container `id`'s VM; `timeout` bounds the
/// connect and every request on the client.
pub fn agent_within(
    store: &Store,
    id: &str,
    timeout: Duration,
) -> Result<AgentClient, crate::vm::VmError> {
    let dir = store
        .dir(id)
        .map_err(|e| crate::vm::VmError::Agent(e.to_string()))?;
    AgentClient::connect(&vsock_path(&dir), timeout)
}

/// Entry point of `husk __monitor`. Never returns.
pub fn run(store: &Store, id: &str, sync: OwnedFd) -> ! {
    block_signals();
    let mut sync = File::from(sync);
    let started = store.dir(id).map_err(|e| e.to_string()).and_then(|dir| {
        let req: CreateRequest = std::fs::read(dir.join("create.json"))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
        setup(store, &dir, &req)
    });
    let mut running = match started {
        Ok(r) => r,
        Err(e) => {
            if let Ok(dir) = store.dir(id) {
                let _ = crate::network::disconnect_recorded(&dir);
            }
            let _ = writeln!(sync, "error: {e}");
            std::process::exit(1);
        }
    };
    let _ = writeln!(sync, "ok");
    drop(sync);
    if running.console {
        stdio::detach_std();
    }
    let status = running.wait();
    let dir = running.dir.clone();
    running.finish();
    // The taps went with the VM; the redirects on the engine's links go now.
    let _ = crate::network::disconnect_recorded(&dir);
    die_like(status)
}

struct Running {
    dir: PathBuf,
    /// The terminal went to `--console-socket`: our stdio is unused.
    console: bool,
    vm: Vm,
    events: mpsc::Receiver<Event>,
    outputs: Vec<std::thread::JoinHandle<()>>,
}

enum Event {
    Exited(ExitStatus),
    VmGone(String),
}

fn setup(store: &Store, dir: &Path, req: &CreateRequest) -> Result<Running, String> {
    // Ours before anything else runs: husk-vmm must not inherit them.
    let passed = crate::passfd::adopt(req.passed_fds.len());
    crate::cgroups::enter(dir, &req.spec, &req.id, req.memory_mib, req.vcpus, true)
        .map_err(|e| e.to_string())?;
    let mut spec = VmSpec::new(req.vmm.clone(), req.kernel.clone(), req.initrd.clone());
    spec.jail = !req.no_jail;
    spec.memory_mib = req.memory_mib;
    spec.vcpus = req.vcpus;
    spec.shares = vec![(SHARE_TAG.to_string(), share_dir(dir))];
    spec.die_with_parent = true;
    // Debug aid: the guest's serial console to a file, or to DIR/<id>.log
    // when it names a directory (several VMs at once).
    if let Some(c) = std::env::var_os("HUSK_GUEST_CONSOLE") {
        let c = PathBuf::from(c);
        spec.console = Some(if c.is_dir() {
            c.join(format!("{}.log", req.id))
        } else {
            c
        });
    }
    // The engine's netns, carried to taps (crate::network); `run` undoes it on failure.
    let (mut carried, mut spares) =
        match crate::network::requested(&req.spec).map_err(|e| e.to_string())? {
            crate::network::Plan::Join(path) => {
                let carried = crate::network::Carried::connect(&path).map_err(|e| e.to_string())?;
                if carried.is_some() {
                    // Ours to undo from here on (`run` on failure, `delete`).
                    crate::network::record(dir, &path).map_err(|e| e.to_string())?;
                }
                (carried, None)
            }
            // Without tun (no spare) the container runs; only a network the engine sets up
            // later cannot reach it, and `start` says so.
            crate::network::Plan::New => (
                None,
                crate::network::Spares::prepare(Path::new("/proc/self/ns/net")).ok(),
            ),
        };
    spec.nics = match (&carried, &spares) {
        (Some(c), _) => c.nics(),
        (None, Some(s)) => s.nics(),
        (None, None) => Vec::new(),
    };
    let vm = Vm::launch(&spec, &vm_dir(dir)).map_err(|e| e.to_string())?;
    let uds = vm.vsock_path().to_path_buf();
    let connect = || AgentClient::connect(&uds, AGENT_TIMEOUT).map_err(|e| e.to_string());
    // husk-vmm holds the taps now: with our copies closed they vanish with the VM.
    drop(spares.take());
    if let Some(c) = carried.as_mut() {
        c.release_taps();
        connect()?
            .expect_ok(&Request::ConfigureNetwork(Box::new(c.config.clone())))
            .map_err(|e| format!("guest network: {e}"))?;
    }

    let terminal = req.console_socket.is_some();
    let mut guest_spec = req.spec.clone();
    crate::cgroups::spec_for_guest(&mut guest_spec);
    crate::network::guest_spec(&mut guest_spec, carried.is_some());
    let create = Box::new(CreateContainer {
        id: req.id.clone(),
        spec: guest_spec,
        terminal,
    });
    connect()?
        .expect_ok(&if req.passed_fds.is_empty() {
            Request::CreateContainer(create)
        } else {
            Request::CreateContainerWithFds {
                create,
                fds: req.passed_fds.clone(),
            }
        })
        .map_err(|e| e.to_string())?;

    let attach = |stream: StdioStream| -> Result<UnixStream, String> {
        let mut c = connect()?;
        c.expect_ok(&Request::AttachStdio {
            id: req.id.clone(),
            exec_id: None,
            stream,
        })
        .map_err(|e| e.to_string())?;
        let s = c.into_stream();
        s.set_read_timeout(None).map_err(|e| e.to_string())?;
        Ok(s)
    };
    let mut outputs = Vec::new();
    let mut size_fd = None;
    if let Some(sock) = &req.console_socket {
        let conn = attach(StdioStream::Terminal)?;
        // Our own session, so the pty is our controlling terminal and resizes
        // reach us as SIGWINCH.
        let ctty = nix::unistd::setsid().is_ok();
        let slave = stdio::console_pty(sock, ctty)?;
        let slave_in = slave.try_clone().map_err(|e| e.to_string())?;
        let conn_in = conn.try_clone().map_err(|e| e.to_string())?;
        size_fd = Some(slave.try_clone().map_err(|e| e.to_string())?);
        spawn_copy(slave_in, conn_in, true);
        outputs.push(spawn_copy(conn, slave, false));
    } else {
        let stdin = attach(StdioStream::Stdin)?;
        let stdout = attach(StdioStream::Stdout)?;
        let stderr = attach(StdioStream::Stderr)?;
        spawn_copy(dup_std(0)?, stdin, true);
        outputs.push(spawn_copy(stdout, dup_std(1)?, false));
        outputs.push(spawn_copy(stderr, dup_std(2)?, false));
    }
    outputs.extend(crate::passfd::relay(
        &uds,
        &req.id,
        None,
        &req.passed_fds,
        passed,
    )?);
    if let Some((rows, cols)) = size_fd.as_ref().and_then(|f| stdio::window_size(f.as_fd())) {
        let _ = connect()?.request(&Request::ResizeTerminal {
            id: req.id.clone(),
            exec_id: None,
            rows,
            cols,
        });
    }

    let (tx, events) = mpsc::channel();
    let waiter = tx.clone();
    let mut wait_conn = connect()?;
    let id = req.id.clone();
    std::thread::spawn(move || {
        // Waits as long as the init runs; nothing else waits on this thread.
        wait_conn.set_timeout(None);
        let ev = match wait_conn.request(&Request::WaitProcess { id, exec_id: None }) {
            Ok(Response::Exited { status }) => Event::Exited(status),
            Ok(other) => Event::VmGone(crate::vm::unexpected("wait reply", &other).to_string()),
            Err(e) => Event::VmGone(e.to_string()),
        };
        let _ = waiter.send(ev);
    });
    forward_signals(uds.clone(), req.id.clone(), None, size_fd);

    let me = std::process::id() as i32;
    let state = State {
        id: req.id.clone(),
        oci_version: req.spec.version().clone(),
        bundle: req.bundle.clone(),
        rootfs: req.rootfs.clone(),
        created: req.created.clone(),
        owner: String::new(),
        annotations: req.spec.annotations().clone().unwrap_or_default(),
        pid: me,
        pid_start: process_start_time(me).unwrap_or(0),
        vmm_pid: vm.pid() as i32,
        vmm_pid_start: process_start_time(vm.pid() as i32).unwrap_or(0),
        started: false,
        paused: false,
    };
    store.save(&state).map_err(|e| e.to_string())?;
    Ok(Running {
        dir: dir.to_path_buf(),
        console: req.console_socket.is_some(),
        vm,
        events,
        outputs,
    })
}

impl Running {
    /// Waits for the container's init to exit, or for the VM to disappear
    /// (a killed VMM is reported as death by SIGKILL).
    fn wait(&mut self) -> ExitStatus {
        loop {
            match self.events.recv_timeout(Duration::from_millis(200)) {
                Ok(Event::Exited(s)) => return s,
                Ok(Event::VmGone(why)) => {
                    let msg = format!("lost the VM: {why}{}", self.vm.stderr_tail());
                    self.log(&msg);
                    // Also on the container's stderr: whoever reads it must learn
                    // why the container died by SIGKILL.
                    eprintln!("husk: {msg}");
                    return ExitStatus::Signal(libc::SIGKILL);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return ExitStatus::Signal(libc::SIGKILL)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = self.vm.try_wait() {
                        let msg = format!("husk-vmm exited ({st}){}", self.vm.stderr_tail());
                        self.log(&msg);
                        eprintln!("husk: {msg}");
                        return ExitStatus::Signal(libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// The monitor's stdio belongs to the container: diagnostics go to a file.
    fn log(&self, msg: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("monitor.log"))
        {
            let _ = writeln!(f, "{} {msg}", State::now_rfc3339());
        }
    }

    /// Drains the output streams, then shuts the VM down.
    fn finish(self) {
        stdio::join_within(self.outputs, Duration::from_secs(5));
        let mut vm = self.vm;
        if vm.try_wait().ok().flatten().is_none() {
            // Bounded: a guest that does not answer is killed with the VM.
            if let Ok(agent) = AgentClient::connect(vm.vsock_path(), Duration::from_secs(5)) {
                let _ = agent.shutdown();
            }
            let _ = vm.wait(Duration::from_secs(10));
        }
        drop(vm);
    }
}

pub fn forwarded_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Signals sent to a process's host stand-in (the monitor, an exec) are meant
/// for the guest process: forward them. They are blocked before any thread
/// starts ([`block_signals`]) so only this thread's sigwait ever takes them.
/// With a terminal, SIGWINCH (the engine resized the pty, or our own terminal
/// changed size) resizes the guest's terminal.
pub fn forward_signals(uds: PathBuf, id: String, exec_id: Option<String>, size_fd: Option<File>) {
    let set = monitor_signals();
    std::thread::spawn(move || loop {
        let Ok(sig) = set.wait() else { continue };
        let req = if sig == nix::sys::signal::Signal::SIGWINCH {
            let Some((rows, cols)) = size_fd.as_ref().and_then(|f| stdio::window_size(f.as_fd()))
            else {
                continue;
            };
            Request::ResizeTerminal {
                id: id.clone(),
                exec_id: exec_id.clone(),
                rows,
                cols,
            }
        } else {
            Request::Signal {
                id: id.clone(),
                exec_id: exec_id.clone(),
                signal: sig as i32,
                all: false,
            }
        };
        if let Ok(mut agent) = AgentClient::connect(&uds, Duration::from_secs(5)) {
            let _ = agent.request(&req);
        }
    });
}

/// Blocks the forwarded signals in this thread and every thread started after.
pub fn block_signals() {
    let _ = monitor_signals().thread_block();
}

fn monitor_signals() -> nix::sys::signal::SigSet {
    let mut set = forwarded_signals();
    set.add(nix::sys::signal::Signal::SIGWINCH);
    set
}

/// What a signal does by default to a process that does not handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SigDefault {
    Terminate,
    Core,
    Stop,
    Ignore,
}

fn default_action(s: i32) -> Option<SigDefault> {
    use SigDefault::*;
    Some(match s {
        libc::SIGHUP
        | libc::SIGINT
        | libc::SIGKILL
        | libc::SIGPIPE
        | libc::SIGALRM
        | libc::SIGTERM
        | libc::SIGUSR1
        | libc::SIGUSR2
        | libc::SIGIO
        | libc::SIGPROF
        | libc::SIGVTALRM
        | libc::SIGSTKFLT
        | libc::SIGPWR => Terminate,
        libc::SIGQUIT
        | libc::SIGILL
        | libc::SIGTRAP
        | libc::SIGABRT
        | libc::SIGBUS
        | libc::SIGFPE
        | libc::SIGSEGV
        | libc::SIGXCPU
        | libc::SIGXFSZ
        | libc::SIGSYS => Core,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Stop,
        libc::SIGCHLD | libc::SIGCONT | libc::SIGURG | libc::SIGWINCH => Ignore,
        s if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&s) => Terminate,
        _ => return None,
    })
}

/// Ends this process the way the container's init ended. The status comes
/// from the guest, so only a signal whose default action ends a process is
/// re-raised (a guest reporting SIGSTOP must not stop the host process
/// conmon waits for), never with a core dump of this root process (the
/// dump is refused outright: not dumpable, RLIMIT_CORE 0, which also covers
/// a `|helper` core_pattern); anything else exits 128+signal, the shell's
/// convention for "killed by".
pub fn die_like(status: ExitStatus) -> ! {
    match status {
        ExitStatus::Code(c) => std::process::exit(c & 0xff),
        ExitStatus::Signal(s) => {
            let code = 128 + (s & 0x7f);
            let raise = match default_action(s) {
                Some(SigDefault::Terminate) => true,
                Some(SigDefault::Core) => no_core_dumps(),
                _ => false,
            };
            if raise {
                // SAFETY: restoring the default action and raising the signal at ourselves.
                unsafe {
                    libc::signal(s, libc::SIG_DFL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, s);
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    libc::kill(libc::getpid(), s);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::process::exit(code)
        }
    }
}

/// Makes sure this process cannot dump core; false if it cannot tell.
fn no_core_dumps() -> bool {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on this process.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
            && libc::setrlimit(libc::RLIMIT_CORE, &zero) == 0
    }
}

/// Reads the monitor's verdict from the sync pipe: `Ok` once the container is
/// created, the monitor's error otherwise (or a generic one if it died).
pub fn read_sync(fd: OwnedFd) -> Result<(), String> {
    use std::io::BufRead;
    // One line is the whole message; don't wait for EOF.
    let mut s = String::new();
    let _ = std::io::BufReader::new(File::from(fd)).read_line(&mut s);
    match s.trim_end() {
        "ok" => Ok(()),
        other => match other.strip_prefix("error: ") {
            Some(e) => Err(e.to_string()),
            None => Err("the container monitor exited before the container was created".into()),
        },
    }
}

/// The write end of the sync pipe, from `HUSK_SYNC_FD`.
pub fn sync_fd_from_env() -> Option<OwnedFd> {
    let fd: i32 = std::env::var("HUSK_SYNC_FD").ok()?.parse().ok()?;
    // Only adopt a descriptor that is open.
    // SAFETY: fcntl(F_GETFD) only queries the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // Our own children (husk-vmm) must not inherit it, or `husk create`
    // would never see it close.
    // SAFETY: setting FD_CLOEXEC on a descriptor we were given.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the parent passed this descriptor to us for us to own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `die_like(status)` in a forked child (after `prep`); returns
    /// the raw wait status, stops included.
    fn child_dies_like(status: ExitStatus, prep: impl FnOnce()) -> i32 {
        // SAFETY: the child runs only `prep` and `die_like`, then exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            prep();
            die_like(status);
        }
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
        if libc::WIFSTOPPED(st) {
            // SAFETY: our own stopped child; reap it before failing.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        st
    }

    /// Review F6: a guest-reported SIGSTOP (or TSTP/TTIN/TTOU) must not stop
    /// the host process engines wait for; ignored-by-default signals must
    /// not leave it running.
    #[test]
    fn stop_and_ignore_signals_become_exit_codes() {
        for s in [
            libc::SIGSTOP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGCHLD,
            libc::SIGWINCH,
        ] {
            let st = child_dies_like(ExitStatus::Signal(s), || {});
            assert!(!libc::WIFSTOPPED(st), "signal {s}: stopped");
            assert!(libc::WIFEXITED(st), "signal {s}: {st:#x}");
            assert_eq!(libc::WEXITSTATUS(st), 128 + s, "signal {s}");
        }
        let st = child_dies_like(ExitStatus::Signal(libc::SIGTERM), || {});
        assert!(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM);
    }

    /// Review F6: a guest-reported SIGSEGV kills the monitor by SIGSEGV (what
    /// the engine reports) without a core dump of this root process, even
    /// where core dumps are enabled.
    #[test]
    fn core_signals_dump_no_core() {
        let dir = std::env::temp_dir().join(format!("husk-core-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cdir = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let st = child_dies_like(ExitStatus::Signal(libc::SIGSEGV), || {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: plain syscalls in the child. Best effort: an
            // unprivileged run keeps the hard limit.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
                libc::chdir(cdir.as_ptr());
            }
        });
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(libc::WIFSIGNALED(st), "{st:#x}");
        assert_eq!(libc::WTERMSIG(st), libc::SIGSEGV);
        assert!(!libc::WCOREDUMP(st), "dumped core");
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn vm_dir_fits_socket_names() {
        let short = Path::new("/run/husk/abc");
        assert_eq!(vm_dir(short), short.join("vm"));
        let long = PathBuf::from(format!(
            "/tmp/a-rather-long-engine-root/husk/{}",
            "f".repeat(64)
        ));
        let d = vm_dir(&long);
        assert!(d.starts_with(SHORT_VM_BASE), "{d:?}");
        assert_eq!(d, vm_dir(&long), "must be stable");
        assert_ne!(d, vm_dir(&long.with_extension("x")));
        assert!(vsock_path(&long).as_os_str().len() + "_4294967295".len() < 108);
    }
}

//! One microVM as the runtime sees it: a `husk-vmm` child process, its hybrid
//! vsock socket, and the agent inside.

mod agent;
mod vsock;

pub use agent::{unexpected, AgentClient};
pub use vsock::connect as vsock_connect;

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use husk_protocol::{self as proto, HelloInfo, Response};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Host port the agent connects to once it listens (see `husk.notify_port`).
pub const NOTIFY_PORT: u32 = 1025;

/// Environment variable that arms husk-vmm's test hook (`execve` or `open`).
pub const TEST_TRIGGER_ENV: &str = "HUSK_VMM_TEST_TRIGGER";

#[derive(thiserror::Error)]
pub enum VmError {
    #[error("cannot prepare VM directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("husk-vmm exited before the agent was ready ({status}){stderr}")]
    VmmDied { status: ExitStatus, stderr: String },
    #[error("agent not ready after {0:?}")]
    Timeout(Duration),
    #[error("agent: {0}")]
    Agent(String),
    #[error("agent: no reply within {0:?}")]
    AgentTimeout(Duration),
    #[error("vsock: {0}")]
    Vsock(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The message, also where a caller `unwrap`s or `expect`s: the tests'
/// lost-guest detection (tests/run-vm-tests.sh) reads it.
impl std::fmt::Debug for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Guest serial console to a file (off when None).
    pub console: Option<PathBuf>,
    pub cmdline_extra: String,
    pub ready_timeout: Duration,
    /// Host directories served over virtio-fs, by tag.
    pub shares: Vec<(String, PathBuf)>,
    /// Kill husk-vmm when the thread that launched it exits.
    pub die_with_parent: bool,
    /// Run husk-vmm in its jail (the default). Off only through the
    /// `no_jail` debugging option of config.toml.
    pub jail: bool,
    /// virtio-net devices; their tap fds must stay open until `launch` returns.
    pub nics: Vec<crate::network::Nic>,
    /// The network namespace husk-vmm (the pid a shim reports) starts in; None: the caller's.
    pub netns: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl VmSpec {
    pub fn new(vmm: PathBuf, kernel: PathBuf, initrd: PathBuf) -> Self {
        VmSpec {
            vmm,
            kernel,
            initrd,
            memory_mib: 128,
            vcpus: 1,
            console: None,
            cmdline_extra: String::new(),
            ready_timeout: Duration::from_secs(60),
            shares: Vec::new(),
            die_with_parent: false,
            jail: true,
            nics: Vec::new(),
            netns: None,
        }
    }
}

/// A running VM. Dropping it kills the VMM if it still runs.
pub struct Vm {
    child: Child,
    dir: PathBuf,
    uds: PathBuf,
    /// What the agent announced when it came up.
    pub hello: HelloInfo,
    /// Wall time from spawning husk-vmm to the agent's hello.
    pub launch_to_hello: Duration,
}

impl Vm {
    /// Starts husk-vmm in `dir` (created, must not hold another VM's socket) and
    /// waits until the agent announces itself over vsock.
    pub fn launch(spec: &VmSpec, dir: &Path) -> Result<Vm, VmError> {
        private_dir(dir).map_err(|e| VmError::Dir(dir.into(), e))?;
        let uds = dir.join("vsock.sock");
        let notify_path = PathBuf::from(format!("{}_{NOTIFY_PORT}", uds.display()));
        for p in [&uds, &notify_path] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(VmError::Dir(p.clone(), e)),
            }
        }
        let notify =
            UnixListener::bind(&notify_path).map_err(|e| VmError::Dir(notify_path.clone(), e))?;
        let stderr_path = dir.join("vmm.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| VmError::Dir(stderr_path.clone(), e))?;

        let mut cmd = Command::new(&spec.vmm);
        cmd.arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initrd")
            .arg(&spec.initrd)
            .arg("--memory-mib")
            .arg(spec.memory_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--cmdline-extra")
            .arg(format!(
                "{}={NOTIFY_PORT} {}",
                proto::NOTIFY_PORT_PARAM,
                spec.cmdline_extra
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Nothing of our environment reaches the VMM but its log level.
            .env_clear();
        if let Some(level) = std::env::var_os("HUSK_LOG") {
            cmd.env("HUSK_LOG", level);
        }
        if !spec.jail {
            cmd.arg("--no-jail");
        }
        // Test hook (tests/tests/jail.rs): the VMM attempts a forbidden
        // syscall on SIGUSR2. Host-side only; see husk_vmm::jail::testhook.
        if let Some(t) = std::env::var_os(TEST_TRIGGER_ENV) {
            let mut arg = std::ffi::OsString::from("--test-forbidden-syscall=");
            arg.push(t);
            cmd.arg(arg);
        }
        if let Some(c) = &spec.console {
            cmd.arg("--console").arg(c);
        }
        for (tag, dir) in &spec.shares {
            let mut arg = std::ffi::OsString::from(format!("{tag}="));
            arg.push(dir);
            cmd.arg("--fs").arg(arg);
        }
        for nic in &spec.nics {
            cmd.arg("--net").arg(nic.vmm_arg());
        }
        if let Some(ns) = spec.netns.clone() {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            // SAFETY: setns(2) on a descriptor we hold, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if !spec.nics.is_empty() {
            use std::os::unix::process::CommandExt;
            let fds: Vec<i32> = spec.nics.iter().map(|n| n.fd).collect();
            // SAFETY: fcntl only, between fork and exec: the tap fds (close-on-exec) are
            // the only ones husk-vmm inherits beyond stdio.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &fds {
                        if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        if spec.die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| VmError::Spawn(spec.vmm.clone(), e))?;
        let mut vm = Vm {
            child,
            dir: dir.into(),
            uds,
            hello: HelloInfo {
                protocol_version: 0,
                agent_version: String::new(),
                kernel_version: String::new(),
                boot_to_listen_us: 0,
                boot_to_init_us: 0,
                online_cpus: 0,
                memory_total_kib: 0,
            },
            launch_to_hello: Duration::ZERO,
        };
        let result = vm.wait_ready(&notify, spec.ready_timeout);
        let _ = std::fs::remove_file(&notify_path);
        vm.hello = result?;
        vm.launch_to_hello = start.elapsed();
        Ok(vm)
    }

    fn wait_ready(
        &mut self,
        notify: &UnixListener,
        timeout: Duration,
    ) -> Result<HelloInfo, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(VmError::VmmDied {
                    status,
                    stderr: self.stderr_tail(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::Timeout(timeout));
            }
            // Wake up now and then to notice a VMM that died.
            let wait = left.min(Duration::from_millis(50));
            let mut fds = [PollFd::new(notify.as_fd(), PollFlags::POLLIN)];
            let ready = poll(
                &mut fds,
                PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO),
            )
            .map_err(std::io::Error::from)?;
            if ready == 0 {
                continue;
            }
            let (mut s, _) = notify.accept()?;
            // One deadline for the whole announcement, not per read.
            return match proto::recv_within::<Response>(&mut s, left.max(Duration::from_millis(1)))
            {
                Ok(Response::Hello(h)) if h.protocol_version == proto::PROTOCOL_VERSION => Ok(h),
                Ok(Response::Hello(h)) => Err(VmError::Agent(format!(
                    "agent speaks protocol {}, we speak {}",
                    h.protocol_version,
                    proto::PROTOCOL_VERSION
                ))),
                Ok(other) => Err(agent::unexpected("announcement", &other)),
                Err(proto::FrameError::Timeout(_)) => Err(VmError::Timeout(timeout)),
                Err(e) => Err(VmError::Agent(crate::untrusted::text(&e.to_string()))),
            };
        }
    }

    /// The VMM's stderr so far (last lines), for error messages.
    pub fn stderr_tail(&self) -> String {
        stderr_tail(&self.dir.join("vmm.stderr"))
    }

    /// The pid of the husk-vmm process we started (the jail's waiter when
    /// jailed: its exit mirrors the VMM's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid of the process that runs the VM: the waiter's only child when
    /// jailed (PID 1 of the VMM's pid namespace), else [`Vm::pid`].
    pub fn vmm_pid(&self) -> u32 {
        jailed_vmm_pid(self.child.id()).unwrap_or(self.child.id())
    }

    /// The hybrid vsock socket of this VM.
    pub fn vsock_path(&self) -> &Path {
        &self.uds
    }

    /// Connects to the agent and exchanges hellos.
    pub fn agent(&self) -> Result<AgentClient, VmError> {
        AgentClient::connect(&self.uds, Duration::from_secs(30))
    }

    /// husk-vmm's exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for husk-vmm to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the agent to shut the guest down and waits for husk-vmm to exit.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        self.agent()?.shutdown()?;
        self.wait(timeout)
    }
}

/// How much of the end of `vmm.stderr` error messages quote.
const STDERR_TAIL_BYTES: u64 = 4096;

/// The last lines of the VMM's stderr file, escaped. The VM directory is
/// visible (read-write) inside the VMM's jail, so the file may have been
/// swapped for a symlink to a host file, a FIFO, or grown huge: no symlinks
/// are followed, only a regular file is read, and only its last few KiB.
pub fn stderr_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let text = (|| -> std::io::Result<String> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Ok(String::new());
        }
        let from = meta.len().saturating_sub(STDERR_TAIL_BYTES);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.take(STDERR_TAIL_BYTES).read_to_end(&mut buf)?;
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        if from > 0 {
            // The first line is cut: drop it.
            text = text
                .split_once('\n')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default();
        }
        Ok(text)
    })()
    .unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .rev()
        .take(5)
        .map(|l| crate::untrusted::escape(l, 512))
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            ": {}",
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }
}

/// Creates `dir` (and missing parents) mode 0700 whatever the umask, and
/// makes an existing `dir` 0700: it holds the VM's sockets, and whoever can
/// connect to `vsock.sock` can run anything in the container.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The child of husk-vmm process `pid` (the jailed VMM), if it has one.
pub fn jailed_vmm_pid(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok();
    if let Some(c) = children {
        return c.split_whitespace().next().and_then(|p| p.parse().ok());
    }
    // Kernels without CONFIG_PROC_CHILDREN: scan for the parent pid.
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let name = e.ok()?.file_name();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", name.to_str()?)).ok()?;
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then(|| name.to_str()?.parse().ok())?
    })
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.uds);
    }
}

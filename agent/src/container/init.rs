//! The container init: the agent binary re-executed as `container-init`.
//!
//! fds on entry: 0-2 the container's stdio, 3 the control channel
//! (SOCK_SEQPACKET, JSON messages), 4 a pipe carrying the [`InitConfig`].
//!
//! Sequence (runc's): join the cgroup, oom_score_adj, namespaces (a new pid
//! namespace needs one more fork: this process reports the child's pid,
//! waits for the agent's ack so the pid is watched before it can be reaped
//! by the agent, and exits; the child is PID 1 of the new namespace), then
//! in the container process: setsid (+ controlling tty), mounts and devices,
//! pivot_root, read-only root, hostname, sysctls, readonly/masked paths,
//! no_new_privileges, seccomp (now when it needs CAP_SYS_ADMIN), rlimits,
//! bounding set, user, capabilities, cwd, env, umask, executable lookup
//! (those last steps in `launch`, shared with exec processes).
//! Then `Ready`; on `Start`, seccomp (when no_new_privileges) and execve.
//! Any error before `Ready` goes back as `Error` and this process exits; an
//! exec failure after `Start` too, with exit code 127.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::process::{self, Channel, CONFIG_FD};
use super::{launch, mempolicy, mounts, spec};

/// What the agent sends the init (over the config pipe).
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub id: String,
    pub spec: Spec,
    pub terminal: bool,
    /// The cgroup directory to join.
    pub cgroup: Option<PathBuf>,
    /// The pty slave's path in the guest, bound onto /dev/console.
    pub console: Option<String>,
    /// How many passed descriptors (`--preserve-fds`) follow the config
    /// pipe; they become the process's fds 3, 4, ...
    #[serde(default)]
    pub passed_fds: usize,
}

/// Init → agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum InitMsg {
    /// The container process's pid (only with a pid namespace, from the
    /// intermediate process).
    Pid(i32),
    /// Set up; parked before execve.
    Ready,
    Error(String),
}

/// Agent → init.
#[derive(Debug, Serialize, Deserialize)]
pub enum AgentMsg {
    Ack,
    Start,
}

fn exit(code: i32) -> ! {
    // SAFETY: no cleanup wanted (this is a throwaway process).
    unsafe { libc::_exit(code) }
}

/// Entry point of `husk-agent container-init`. Never returns.
pub fn main() -> ! {
    // Off fd 3, which may be the process's first passed descriptor.
    let ctl = process::take_ctl();
    match run(&ctl) {
        Ok(never) => match never {},
        Err(e) => {
            let _ = ctl.send(&InitMsg::Error(e));
            exit(1)
        }
    }
}

/// Reads the helper's config from its config pipe (fd 4), once.
pub fn read_config<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    // SAFETY: fd 4 was set up by the agent for us, and is read only here.
    let mut f = fs::File::from(unsafe { super::process::own_fd(CONFIG_FD) });
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| format!("read container config: {e}"))?;
    serde_json::from_slice(&buf).map_err(|e| format!("parse container config: {e}"))
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn setns_path(path: &str, flag: libc::c_int, what: &str) -> Result<(), String> {
    let f =
        fs::File::open(path).map_err(|e| format!("linux.namespaces[{what}].path {path}: {e}"))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), flag) } != 0 {
        return Err(format!(
            "linux.namespaces[{what}].path {path}: setns: {}",
            errno()
        ));
    }
    Ok(())
}

/// Joins/creates every namespace but pid; returns whether a pid namespace
/// (new or joined) was set up for the children of this process.
fn enter_namespaces(spec: &Spec) -> Result<bool, String> {
    let mut new_flags = 0;
    let mut pid = None;
    for (t, path) in spec::namespaces(spec) {
        if t == LinuxNamespaceType::Pid {
            pid = Some(path);
            continue;
        }
        match path {
            Some(p) => setns_path(&p, ns_flag(t), &t.to_string())?,
            None => new_flags |= ns_flag(t),
        }
    }
    // SAFETY: plain syscall.
    if new_flags != 0 && unsafe { libc::unshare(new_flags) } != 0 {
        return Err(format!("unshare namespaces: {}", errno()));
    }
    if new_flags & libc::CLONE_NEWNET != 0 {
        // As runc does: a new network namespace starts with lo down, and a container without
        // a network (--network none) still expects 127.0.0.1.
        crate::network::loopback_up()
            .map_err(|e| format!("linux.namespaces[network]: bring lo up: {e}"))?;
    }
    match pid {
        None => Ok(false),
        Some(Some(p)) => setns_path(&p, libc::CLONE_NEWPID, "pid").map(|()| true),
        Some(None) => {
            // SAFETY: plain syscall.
            if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                return Err(format!("unshare pid namespace: {}", errno()));
            }
            Ok(true)
        }
    }
}

/// Forks the process that lives in the pid namespace joined or created for
/// children (PID 1 of a new one). The parent reports the child's pid, waits
/// for the agent's ack (so the agent watches the pid before it can reap it)
/// and exits; only the child returns.
pub fn fork_into_pid_ns(ctl: &Channel) -> Result<(), String> {
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: this process is single-threaded.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork into the pid namespace: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(go_w);
            let mut b = [0u8; 1];
            let mut r = fs::File::from(go_r);
            match r.read(&mut b) {
                Ok(1) => Ok(()),
                _ => exit(1), // the intermediate failed; it reported why
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(go_r);
            let ok = ctl.send(&InitMsg::Pid(child.as_raw())).is_ok()
                && matches!(
                    ctl.recv::<AgentMsg>(Some(Duration::from_secs(60))),
                    Ok(Some(AgentMsg::Ack))
                );
            if ok && nix::unistd::write(&go_w, b"1").is_ok() {
                exit(0);
            }
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            exit(1)
        }
    }
}

/// The control channel must not sit where passed descriptors go.
pub fn check_ctl_clear(ctl: &Channel, passed: usize) -> Result<(), String> {
    if passed > 0 && ctl.0.as_raw_fd() < 3 + passed as i32 {
        return Err("passed fds: the control channel could not be moved out of their way".into());
    }
    Ok(())
}

pub fn write_file(path: &str, value: &str, what: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("{what}: write {value:?} to {path}: {e}"))
}

/// setsid, and with a terminal (fd 0, a pty slave) make it the controlling one.
pub fn new_session(terminal: bool) -> Result<(), String> {
    // SAFETY: plain syscalls.
    unsafe {
        libc::setsid();
        if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!(
                "make the pty the controlling terminal: {}",
                errno()
            ));
        }
    }
    Ok(())
}

fn run(ctl: &Channel) -> Result<Infallible, String> {
    let cfg: InitConfig = read_config()?;
    // The passed descriptors follow the config pipe; nothing else of the
    // agent's may stay open.
    let n = cfg.passed_fds.min(husk_protocol::MAX_PASSED_FDS);
    let passed: Vec<i32> = (0..n as i32).map(|i| CONFIG_FD + 1 + i).collect();
    process::close_fds_from(CONFIG_FD + 1 + n as i32, ctl.0.as_raw_fd());
    check_ctl_clear(ctl, n)?;
    // At 3.. now, so nothing of the setup can take those numbers.
    super::passfd::install(&passed)?;
    let spec = &cfg.spec;
    let process = spec.process().clone().ok_or("process: missing")?;

    if let Some(cg) = &cfg.cgroup {
        write_file(
            &cg.join("cgroup.procs").to_string_lossy(),
            "0",
            "join cgroup",
        )?;
    }
    if let Some(adj) = process.oom_score_adj() {
        write_file(
            "/proc/self/oom_score_adj",
            &adj.to_string(),
            "process.oomScoreAdj",
        )?;
    }
    if enter_namespaces(spec)? {
        fork_into_pid_ns(ctl)?;
    }

    // From here on this is the container process.
    new_session(cfg.terminal)?;
    mounts::prepare_rootfs(&cfg)?;
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mounts::readonly_root()?;
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| format!("hostname: sethostname {h:?}: {e}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        let c = CString::new(d).map_err(|_| "domainname: contains NUL".to_string())?;
        // SAFETY: valid buffer and length.
        if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
            return Err(format!("domainname: setdomainname {d:?}: {}", errno()));
        }
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let mut sysctls: Vec<(String, String)> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    sysctls.sort();
    for (k, v) in sysctls {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        write_file(&path, &v, &format!("linux.sysctl[{k:?}]"))?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        mounts::readonly_path(p)?;
    }
    for p in linux.masked_paths().iter().flatten() {
        mounts::mask_path(p)?;
    }
    if let Some(p) = linux.memory_policy() {
        mempolicy::apply(&mempolicy::parse(p)?)?;
    }
    let launch = launch::prepare(&process, linux.seccomp().as_ref())?;
    launch.executable()?;
    launch.exec(ctl)
}

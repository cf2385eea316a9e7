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
//! bounding set, user, capabilities, cwd, env, umask, executable lookup.
//! Then `Ready`; on `Start`, seccomp (when no_new_privileges) and execve.
//! Any error before `Ready` goes back as `Error` and this process exits; an
//! exec failure after `Start` too, with exit code 127.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::process::{Channel, CONFIG_FD, CTL_FD};
use super::{caps, mounts, rlimits, seccomp, spec, user};

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

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn exit(code: i32) -> ! {
    // SAFETY: no cleanup wanted (this is a throwaway process).
    unsafe { libc::_exit(code) }
}

/// Entry point of `husk-agent container-init`. Never returns.
pub fn main() -> ! {
    // SAFETY: closes descriptors this process does not own; nothing uses them.
    unsafe { libc::syscall(libc::SYS_close_range, CONFIG_FD + 1, u32::MAX, 0) };
    // SAFETY: fd 3 was set up by the agent for us. dup2 cleared its
    // close-on-exec flag; it must close on the final execve, which is how
    // the agent learns that execve succeeded.
    let ctl = Channel(unsafe { super::process::own_fd(CTL_FD) });
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(CTL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    match run(&ctl) {
        Ok(never) => match never {},
        Err(e) => {
            let _ = ctl.send(&InitMsg::Error(e));
            exit(1)
        }
    }
}

fn read_config() -> Result<InitConfig, String> {
    // SAFETY: fd 4 was set up by the agent for us.
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

/// Forks the process that will be PID 1 of the pid namespace. Only the
/// child returns.
fn fork_into_pid_ns(ctl: &Channel) -> Result<(), String> {
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

fn write_file(path: &str, value: &str, what: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("{what}: write {value:?} to {path}: {e}"))
}

/// Looks `arg0` up like execvp does, in the container, with its PATH.
pub fn find_executable(arg0: &str, path_var: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
    let is_exec = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if arg0.contains('/') {
        let p = if Path::new(arg0).is_absolute() {
            PathBuf::from(arg0)
        } else {
            cwd.join(arg0)
        };
        return match fs::metadata(&p) {
            Ok(_) => Ok(PathBuf::from(arg0)),
            Err(e) => Err(format!("exec: {arg0:?}: {e}")),
        };
    }
    for dir in path_var.unwrap_or("").split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(arg0);
        let abs = if candidate.is_absolute() {
            candidate.clone()
        } else {
            cwd.join(&candidate)
        };
        if is_exec(&abs) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    ))
}

/// The environment: the spec's, plus PATH and HOME when missing (like runc).
pub fn build_env(spec_env: &[String], home: impl FnOnce() -> String) -> Vec<String> {
    let mut env: Vec<String> = spec_env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home()));
    }
    env
}

fn run(ctl: &Channel) -> Result<Infallible, String> {
    let cfg = read_config()?;
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
    // SAFETY: plain syscalls.
    unsafe {
        libc::setsid();
        if cfg.terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!(
                "make the pty the controlling terminal: {}",
                errno()
            ));
        }
    }
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
    let nnp = process.no_new_privileges().unwrap_or(false);
    if nnp {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("process.noNewPrivileges: {}", errno()));
        }
    }
    let filter = match linux.seccomp() {
        Some(s) => Some(seccomp::compile(s)?),
        None => None,
    };
    if let (Some(f), false) = (&filter, nnp) {
        // Without no_new_privileges installing a filter needs CAP_SYS_ADMIN:
        // do it while we still have it.
        seccomp::install(f).map_err(|e| format!("linux.seccomp: {e}"))?;
    }
    if let Some(l) = process.rlimits() {
        rlimits::apply(l)?;
    }

    // Read while still root: the container's passwd gives HOME.
    let u = process.user();
    let passwd = fs::read_to_string("/etc/passwd").ok();
    let env = build_env(process.env().as_deref().unwrap_or(&[]), || {
        user::home_for(passwd.as_deref(), u.uid())
    });

    let capsets = match process.capabilities() {
        Some(c) => Some(caps::parse(c)?),
        None => None,
    };
    if let Some(c) = &capsets {
        caps::drop_bounding(c)?;
        ::caps::securebits::set_keepcaps(true).map_err(|e| format!("set keep-caps: {e}"))?;
    }
    let cwd = process.cwd().clone();
    let early_chdir = nix::unistd::chdir(&cwd).is_ok();
    let gids: Vec<nix::unistd::Gid> = u
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids)
        .map_err(|e| format!("process.user.additionalGids: setgroups: {e}"))?;
    nix::unistd::setresgid(
        nix::unistd::Gid::from_raw(u.gid()),
        nix::unistd::Gid::from_raw(u.gid()),
        nix::unistd::Gid::from_raw(u.gid()),
    )
    .map_err(|e| format!("process.user.gid {}: setgid: {e}", u.gid()))?;
    nix::unistd::setresuid(
        nix::unistd::Uid::from_raw(u.uid()),
        nix::unistd::Uid::from_raw(u.uid()),
        nix::unistd::Uid::from_raw(u.uid()),
    )
    .map_err(|e| format!("process.user.uid {}: setuid: {e}", u.uid()))?;
    if let Some(c) = &capsets {
        ::caps::securebits::set_keepcaps(false).map_err(|e| format!("clear keep-caps: {e}"))?;
        caps::apply(c)?;
    }
    // As the user, so permissions apply (runc tries before and after).
    if let Err(e) = nix::unistd::chdir(&cwd) {
        if !early_chdir {
            return Err(format!(
                "chdir to cwd ({:?}) set in config.json failed: {e}",
                cwd.display().to_string()
            ));
        }
    }
    let umask = u.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        umask as libc::mode_t,
    ));

    let args = process.args().clone().unwrap_or_default();
    let arg0 = args.first().cloned().unwrap_or_default();
    let path_var = env.iter().find_map(|e| e.strip_prefix("PATH="));
    let exe = find_executable(&arg0, path_var, &cwd)?;
    let c_exe = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| "process.args[0] contains NUL".to_string())?;
    let c_args = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "process.args: an argument contains NUL".to_string())?;
    let c_env = env
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "process.env: a variable contains NUL".to_string())?;

    ctl.send(&InitMsg::Ready)
        .map_err(|e| format!("report ready: {e}"))?;
    match ctl.recv::<AgentMsg>(None) {
        Ok(Some(AgentMsg::Start)) => {}
        _ => exit(0), // deleted before start
    }
    // SAFETY: plain signal(2): the ignored SIGPIPE of the Rust runtime must
    // not leak into the container.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let (Some(f), true) = (&filter, nnp) {
        if let Err(e) = seccomp::install(f) {
            let _ = ctl.send(&InitMsg::Error(format!("linux.seccomp: {e}")));
            exit(127);
        }
    }
    let err = nix::unistd::execve(&c_exe, &c_args, &c_env).err();
    let e = err.map(|e| e.to_string()).unwrap_or_default();
    let _ = ctl.send(&InitMsg::Error(format!("exec {}: {e}", exe.display())));
    exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults() {
        let env = build_env(&["A=1".to_string()], || "/root".into());
        assert_eq!(env, vec!["A=1", DEFAULT_PATH, "HOME=/root"]);
        let env = build_env(&["PATH=/x".into(), "HOME=/h".into()], || unreachable!());
        assert_eq!(env, vec!["PATH=/x", "HOME=/h"]);
    }

    #[test]
    fn executable_lookup() {
        let cwd = Path::new("/");
        assert_eq!(
            find_executable("sh", Some("/nonexistent:/bin:/usr/bin"), cwd).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = find_executable("no-such-program-x", Some("/bin"), cwd).unwrap_err();
        assert_eq!(
            e,
            "exec: \"no-such-program-x\": executable file not found in $PATH"
        );
        assert!(find_executable("/no/such", None, cwd)
            .unwrap_err()
            .starts_with("exec: \"/no/such\""));
        assert_eq!(
            find_executable("/bin/sh", None, cwd).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }
}

//! An exec process's setup: the agent binary re-executed as `container-exec`.
//!
//! fds on entry: 0-2 the process's stdio, 3 the control channel, 4 a pipe
//! carrying the [`ExecConfig`], 5.. the container init's namespaces (opened
//! by the agent, listed in the config), then the init's root directory.
//!
//! Sequence (runc exec's): join the container's cgroup, oom_score_adj, join
//! the namespaces, chroot into the init's root (fd after the namespaces),
//! fork once more (the pid namespace applies to children; the child is
//! reported to the agent like the init's), setsid (+ controlling tty), then
//! the process's own settings and the container's seccomp profile
//! (`launch`), `Ready`, and on `Start` execve. A missing executable is
//! reported on `Start`, and the process exits 127.

use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process};
use serde::{Deserialize, Serialize};

use super::init::{self, InitMsg};
use super::launch;
use super::process::{self, Channel, CONFIG_FD};

/// One namespace to join: an inherited fd and its CLONE_NEW* type.
#[derive(Debug, Serialize, Deserialize)]
pub struct NsFd {
    pub fd: i32,
    pub flag: i32,
    pub name: String,
}

/// What the agent sends the exec helper (over the config pipe).
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    pub process: Process,
    pub terminal: bool,
    /// The container's cgroup directory (in the agent's view).
    pub cgroup: PathBuf,
    /// The container's `linux.seccomp`.
    pub seccomp: Option<LinuxSeccomp>,
    /// In the order to join them.
    pub namespaces: Vec<NsFd>,
    /// The container init's root directory (an inherited fd).
    pub root_fd: i32,
    /// How many passed descriptors (`--preserve-fds`) follow the root
    /// directory; they become the process's fds 3, 4, ...
    #[serde(default)]
    pub passed_fds: usize,
}

fn exit(code: i32) -> ! {
    // SAFETY: no cleanup wanted (this is a throwaway process).
    unsafe { libc::_exit(code) }
}

/// Entry point of `husk-agent container-exec`. Never returns.
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

fn run(ctl: &Channel) -> Result<Infallible, String> {
    let cfg: ExecConfig = init::read_config()?;
    let after_root = CONFIG_FD + 2 + cfg.namespaces.len() as i32;
    if cfg.root_fd != after_root - 1 {
        return Err(format!("root directory on unexpected fd {}", cfg.root_fd));
    }
    // The passed descriptors follow the root directory; nothing else of
    // the agent's may stay open.
    let n = cfg.passed_fds.min(husk_protocol::MAX_PASSED_FDS);
    let passed: Vec<i32> = (0..n as i32).map(|i| after_root + i).collect();
    process::close_fds_from(after_root + n as i32, ctl.0.as_raw_fd());
    init::check_ctl_clear(ctl, n)?;
    if let Some(n) = cfg
        .namespaces
        .iter()
        .find(|n| n.fd <= CONFIG_FD || n.fd >= cfg.root_fd)
    {
        return Err(format!("namespace {} on unexpected fd {}", n.name, n.fd));
    }

    init::write_file(
        &cfg.cgroup.join("cgroup.procs").to_string_lossy(),
        "0",
        "join the container's cgroup",
    )?;
    // Before the namespaces: /proc/self is not this process in the
    // container's /proc.
    if let Some(adj) = cfg.process.oom_score_adj() {
        init::write_file(
            "/proc/self/oom_score_adj",
            &adj.to_string(),
            "process.oomScoreAdj",
        )?;
    }
    let mut pid_ns = false;
    for n in &cfg.namespaces {
        // SAFETY: plain syscalls on an fd the agent gave us.
        unsafe {
            if libc::setns(n.fd, n.flag) != 0 {
                return Err(format!(
                    "join the container's {} namespace: {}",
                    n.name,
                    std::io::Error::last_os_error()
                ));
            }
            libc::close(n.fd);
        }
        pid_ns |= n.flag == libc::CLONE_NEWPID;
    }
    // SAFETY: plain syscalls on an fd the agent gave us.
    unsafe {
        if libc::fchdir(cfg.root_fd) != 0 || libc::chroot(c".".as_ptr()) != 0 {
            return Err(format!(
                "enter the container's root: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::close(cfg.root_fd);
    }
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    // The namespaces and the root are closed: the passed descriptors can
    // take 3.. (before seccomp, which may forbid dup2).
    super::passfd::install(&passed)?;
    if pid_ns {
        init::fork_into_pid_ns(ctl)?;
    }
    // From here on this is the exec process, inside the container.
    init::new_session(cfg.terminal)?;
    let launch = launch::prepare(&cfg.process, cfg.seccomp.as_ref())?;
    launch.exec(ctl)
}

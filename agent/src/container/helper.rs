//! Starting a helper process (`container-init` or `container-exec`) and its
//! setup handshake, up to the point where it is parked before `execve`.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::ExitStatus;
use serde::Serialize;

use super::init::{AgentMsg, InitMsg};
use super::process::{self, exits, Channel, ChildStdio, ExitCell};

/// How long a helper may take to set up, and to exec after a start.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A helper parked before `execve`, waiting for `AgentMsg::Start` on `ctl`.
pub struct Parked {
    /// The process that will exec (in the container's pid namespace if any).
    pub pid: i32,
    pub exit: Arc<ExitCell>,
    pub ctl: Channel,
}

/// Spawns `husk-agent <mode>` (`what` names it in errors) with `stdio`, a control channel, a pipe
/// carrying `config` and the `extra` fds (5, 6, ...), and waits until it is
/// ready. With `expect_pid` the helper forks once into a pid namespace and
/// reports the child, which is watched before the helper exits. On error
/// everything started is killed and forgotten.
pub fn start(
    mode: &str,
    what: &str,
    config: &impl Serialize,
    stdio: ChildStdio,
    extra: &[BorrowedFd<'_>],
    expect_pid: bool,
) -> Result<Parked, String> {
    let (ctl, ctl_child) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
    let (cfg_r, cfg_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let [s0, s1, s2] = &stdio.fds;
    let mut fds = vec![
        s0.as_fd(),
        s1.as_fd(),
        s2.as_fd(),
        ctl_child.0.as_fd(),
        cfg_r.as_fd(),
    ];
    fds.extend_from_slice(extra);
    let (helper_pid, helper_exit) =
        process::spawn_helper(mode, &fds).map_err(|e| format!("spawn {what}: {e}"))?;
    drop(fds);
    drop(stdio);
    drop(ctl_child);
    drop(cfg_r);

    let fail = |e: String, pids: &[i32]| {
        for p in pids {
            // SAFETY: plain syscall.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        let _ = helper_exit.wait_timeout(Duration::from_secs(5));
        for p in pids {
            exits().forget(*p);
        }
        e
    };

    // The config goes through a pipe (it can exceed a socket packet); the
    // helper reads it at once, so this write does not block for long.
    let written = serde_json::to_vec(config)
        .map_err(|e| e.to_string())
        .and_then(|buf| {
            std::fs::File::from(cfg_w)
                .write_all(&buf)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        return Err(fail(format!("send config to {what}: {e}"), &[helper_pid]));
    }

    let mut pid = helper_pid;
    let mut exit = helper_exit.clone();
    loop {
        match ctl.recv::<InitMsg>(Some(SETUP_TIMEOUT)) {
            Ok(Some(InitMsg::Pid(p))) if expect_pid && pid == helper_pid && p > 0 => {
                // Watched before the helper exits: only then can the
                // process become our child.
                exit = exits().watch(p);
                pid = p;
                if let Err(e) = ctl.send(&AgentMsg::Ack) {
                    return Err(fail(format!("ack {what}: {e}"), &[helper_pid, p]));
                }
            }
            Ok(Some(InitMsg::Ready)) => break,
            Ok(Some(InitMsg::Error(e))) => return Err(fail(e, &[helper_pid, pid])),
            Ok(Some(m)) => {
                return Err(fail(
                    format!("unexpected message from {what}: {m:?}"),
                    &[helper_pid, pid],
                ))
            }
            Ok(None) => {
                let how = helper_exit
                    .wait_timeout(Duration::from_secs(2))
                    .map(|s| match s {
                        ExitStatus::Code(c) => format!(" (exit code {c})"),
                        ExitStatus::Signal(s) => format!(" (killed by signal {s})"),
                    })
                    .unwrap_or_default();
                return Err(fail(
                    format!("{what} exited during setup{how}"),
                    &[helper_pid, pid],
                ));
            }
            Err(e) => return Err(fail(format!("waiting for {what}: {e}"), &[helper_pid, pid])),
        }
    }
    if pid != helper_pid {
        // The helper exits on its own; nobody waits for it.
        exits().forget(helper_pid);
    }
    Ok(Parked { pid, exit, ctl })
}

/// Why a parked process did not exec.
#[derive(Debug)]
pub enum StartError {
    /// It was gone before it could be told to start.
    Gone,
    /// execve (or the last setup step) failed; the process exits 127.
    Exec(String),
    /// No answer or a broken channel; the process was killed.
    Broken(String),
}

/// Sends `Start` to a parked helper and waits until it has exec'd (the
/// channel closes on a successful execve).
pub fn release(ctl: Channel, pid: i32) -> Result<(), StartError> {
    if ctl.send(&AgentMsg::Start).is_err() {
        return Err(StartError::Gone);
    }
    match ctl.recv::<InitMsg>(Some(SETUP_TIMEOUT)) {
        Ok(None) => Ok(()),
        Ok(Some(InitMsg::Error(e))) => Err(StartError::Exec(e)),
        Ok(Some(m)) => Err(StartError::Broken(format!("unexpected message: {m:?}"))),
        Err(e) => {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(StartError::Broken(e.to_string()))
        }
    }
}

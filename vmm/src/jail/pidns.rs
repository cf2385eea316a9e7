//! The pid namespace split.
//!
//! A process cannot move itself into a new pid namespace: `unshare(CLONE_NEWPID)`
//! only applies to its children. So husk-vmm forks once. The child is PID 1
//! of an empty namespace and becomes the VMM; it sees no host process (and
//! cannot signal or ptrace any). The parent, whose pid is the one the runtime
//! spawned and tracks, stays as a small waiter:
//! - it mirrors the VMM's end: exit code N ⇒ exits N (0 clean shutdown,
//!   1 VMM error, 2 guest crash); killed by signal S ⇒ dies by S;
//! - a signal that would have killed husk-vmm (SIGTERM, SIGINT, ...) kills
//!   the VMM (SIGKILL: as PID 1 it ignores signals it has no handler for)
//!   and then the waiter, by that signal;
//! - the VMM has `PR_SET_PDEATHSIG(SIGKILL)` towards the waiter, so the
//!   runtime's die-with-parent chain (monitor → waiter → VMM) holds; SIGKILL
//!   of the waiter kills the VMM too.
//!
//! The waiter holds no descriptor but stdio and never touches guest data.
//! Once the VMM is gone it removes what the jailed VMM cannot: its vsock
//! socket (the socket directory is read-only in the jail) and a jail
//! directory made just for this run.

use std::io;
use std::path::PathBuf;

use super::{check, JailError};

/// Signals the waiter handles itself. SIGCHLD: the VMM ended. The others
/// terminate by default: passed on as SIGKILL, then mirrored.
const HANDLED: [libc::c_int; 8] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

fn sigset(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Splits into waiter and VMM; returns only in the VMM (PID 1 of a new pid
/// namespace). `forward` is a signal the waiter passes on as it is (the
/// test hook's trigger) instead of treating it as fatal. Call while
/// single-threaded. `cleanup` are paths (files, or empty directories) the
/// waiter removes once the VMM is gone.
pub fn split(forward: Option<libc::c_int>, cleanup: Vec<PathBuf>) -> Result<(), JailError> {
    let set = sigset(&HANDLED);
    // SAFETY: plain libc calls on local, initialised data. Blocking first:
    // no signal is lost between fork and the waiter's sigwaitinfo.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        check(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old),
            "block signals",
        )?;
        let mut pipe = [0; 2];
        check(libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC), "pipe2")?;
        check(libc::unshare(libc::CLONE_NEWPID), "unshare(CLONE_NEWPID)")?;
        match check(libc::fork(), "fork")? {
            0 => {
                libc::close(pipe[1]);
                check(
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
                    "prctl(PR_SET_PDEATHSIG)",
                )?;
                // The waiter may have died before the prctl: then its end of
                // the pipe is closed and the read end shows POLLHUP.
                let mut p = libc::pollfd {
                    fd: pipe[0],
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut p, 1, 0) != 0 {
                    libc::_exit(1);
                }
                libc::close(pipe[0]);
                check(
                    libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()),
                    "restore signal mask",
                )?;
                Ok(())
            }
            child => {
                libc::close(pipe[0]);
                // The waiter stays outside the jail and needs no descriptor
                // but its end of the pipe: the --net taps go with the VMM.
                // Best effort: the waiter must reach its loop whatever happens.
                let _ = super::fds::close_inherited(&[pipe[1]]);
                wait(child, &set, forward, cleanup)
            }
        }
    }
}

/// The waiter's loop; never returns.
fn wait(
    child: libc::pid_t,
    set: &libc::sigset_t,
    forward: Option<libc::c_int>,
    cleanup: Vec<PathBuf>,
) -> ! {
    let clean = || {
        for p in &cleanup {
            // unlink does not follow a symlink; rmdir only empty directories.
            if std::fs::remove_file(p).is_err() {
                let _ = std::fs::remove_dir(p);
            }
        }
    };
    let done = |status: libc::c_int| -> ! {
        clean();
        mirror(status)
    };
    loop {
        // SAFETY: sigwaitinfo with a valid set; the info struct is not read.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if sig < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // Cannot wait for signals: fall back to waiting for the child.
            done(reap(child, 0).unwrap_or(1 << 8));
        }
        match sig {
            libc::SIGCHLD => {
                if let Some(status) = reap(child, libc::WNOHANG) {
                    done(status);
                }
            }
            s if Some(s) == forward => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child, s) };
            }
            s => {
                // SAFETY: as above; then wait for it to be gone.
                unsafe { libc::kill(child, libc::SIGKILL) };
                let _ = reap(child, 0);
                clean();
                die_by(s);
            }
        }
    }
}

/// The child's wait status once it exited or was killed.
fn reap(child: libc::pid_t, flags: libc::c_int) -> Option<libc::c_int> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(child, &mut status, flags) };
        if r == child {
            return Some(status);
        }
        if r == 0 {
            return None;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

fn mirror(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        die_by(libc::WTERMSIG(status));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    // SAFETY: ends the process; nothing to clean up in the waiter.
    unsafe { libc::_exit(code) }
}

/// Dies by `sig`, like the VMM did (no core dump: the waiter has nothing
/// worth dumping).
fn die_by(sig: libc::c_int) -> ! {
    // SAFETY: resetting the disposition, unblocking and raising a signal in a
    // single-threaded process; _exit if it somehow did not kill us.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(sig, libc::SIG_DFL);
        let one = sigset(&[sig]);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}

//! The cage husk-vmm runs in: the guest is hostile, and if it ever escapes
//! its kernel into the VMM it must find nothing worth having. See
//! `docs/security.md` for the threat model and what each layer stops.
//!
//! `main.rs` applies it in this order (every step before the next):
//! 1. [`fds::close_inherited`] and [`clear_env`]: first thing, before
//!    anything is opened. Only the tap fds named by `--net` survive (the
//!    virtio-net devices check them before the jail, in `builder::build`).
//! 2. [`pidns::split`]: `unshare(CLONE_NEWPID)` + `fork`. The process the
//!    runtime started stays behind as a small waiter (its pid is the one the
//!    runtime tracks; it mirrors the VMM's exit); the child is PID 1 of an
//!    empty pid namespace and is the VMM.
//! 3. [`mount::Jail::prepare`]: new mount, IPC, UTS and network namespaces;
//!    the jail root (a small tmpfs on the per-sandbox jail directory) with
//!    the shares and the vsock socket directory bound in. Shares are
//!    rewritten to their jail paths, so the virtio-fs device's fds point
//!    into mounts that survive the pivot.
//! 4. `builder::build`: every host resource is opened (kernel, initrd,
//!    `/dev/kvm`, VM and vCPU fds, shares, vsock listener, console).
//! 5. [`mount::Jail::enter`]: `pivot_root`, rlimits, `no_new_privs`,
//!    capabilities (see [`caps`]).
//! 6. `Machine::run_with(hook)`: each thread installs its own seccomp filter
//!    ([`seccomp`]) before it does any work; vCPUs enter the guest only once
//!    every thread is filtered.

pub mod caps;
pub mod fds;
pub mod mount;
pub mod pidns;
pub mod rlimits;
pub mod seccomp;
pub mod testhook;

use std::io;

/// A jail step that failed: what was being done, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("jail: {what}: {source}")]
pub struct JailError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl JailError {
    pub fn new(what: impl Into<String>, source: io::Error) -> Self {
        JailError {
            what: what.into(),
            source,
        }
    }

    /// The last OS error, for a failed libc call.
    pub fn last(what: impl Into<String>) -> Self {
        Self::new(what, io::Error::last_os_error())
    }
}

/// `Ok` for a libc return value of 0 (or more), else the OS error.
pub(crate) fn check(ret: libc::c_int, what: &str) -> Result<libc::c_int, JailError> {
    if ret < 0 {
        Err(JailError::last(what))
    } else {
        Ok(ret)
    }
}

/// Removes every environment variable. Call while single-threaded (first
/// thing in `main`), after reading what the VMM needs (`HUSK_LOG`).
pub fn clear_env() {
    let names: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in names {
        std::env::remove_var(k);
    }
}

/// No process (including the VMM itself) gains privileges by `execve` from
/// here on: set-id bits and file capabilities are ignored. Inherited by every
/// thread created afterwards; also lets an unprivileged thread install seccomp.
pub fn no_new_privs() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "prctl(PR_SET_NO_NEW_PRIVS)",
    )
    .map(|_| ())
}

/// Number of threads of this process (`/proc/self/task`); the jail steps
/// that act per thread (unshare, capabilities) need exactly one.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// No core dumps, and no ptrace or `/proc/PID` access by same-uid host
/// processes without CAP_SYS_PTRACE: guest memory stays in the VMM.
pub fn not_dumpable() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
        "prctl(PR_SET_DUMPABLE)",
    )
    .map(|_| ())
}

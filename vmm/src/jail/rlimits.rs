//! Resource limits of the jailed VMM. Soft = hard, so a compromised VMM
//! cannot raise them again (that needs CAP_SYS_RESOURCE, which is dropped).

use super::{check, JailError};

/// Most descriptors the VMM may hold. virtio-fs keeps one `O_PATH` fd per
/// inode the guest looked up, plus open files; the vsock muxer one per
/// connection. Capped by the inherited hard limit (which we cannot raise).
pub const NOFILE_MAX: u64 = 32768;

fn set(resource: libc::__rlimit_resource_t, name: &str, value: u64) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: valid pointer to a local rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) }, name).map(|_| ())
}

fn hard(resource: libc::__rlimit_resource_t) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(resource, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        0
    }
}

/// What the limits will be, for a VMM with `threads` threads in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nofile: u64,
    pub nproc: u64,
}

impl Limits {
    pub fn for_vmm(threads: u64) -> Limits {
        Limits {
            nofile: NOFILE_MAX.min(hard(libc::RLIMIT_NOFILE)),
            nproc: threads,
        }
    }
}

/// `core` = 0: a crashing VMM leaves no dump of guest memory on the host.
/// `nofile` as above. `nproc` = the threads the VMM starts (main, vCPUs,
/// fs and net workers, see `Machine::worker_threads`): the kernel counts it per user and exempts uid 0, so for a
/// root VMM the binding limits are seccomp (no thread creation once the
/// guest runs) and the cgroup's `pids.max`; it binds a non-root VMM.
pub fn apply(l: Limits) -> Result<(), JailError> {
    set(libc::RLIMIT_CORE, "setrlimit(RLIMIT_CORE)", 0)?;
    set(libc::RLIMIT_NOFILE, "setrlimit(RLIMIT_NOFILE)", l.nofile)?;
    set(libc::RLIMIT_NPROC, "setrlimit(RLIMIT_NPROC)", l.nproc)
}

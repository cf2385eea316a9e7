//! One seccomp filter per thread kind, built with seccompiler's Rust API.
//!
//! Every filter's default action is `KillProcess`: a syscall nobody listed
//! ends the whole VMM with SIGSYS (the runtime then reports the container
//! stopped). Each thread installs its own filter first thing at its start
//! (`builder::Machine::run_with`); every thread is started before the guest
//! runs, so none of the filters allows creating threads or processes.
//!
//! The lists come from what the threads actually do (strace of the VM test
//! suite, see docs/security.md), each entry with the reason it is there.
//! What no filter allows, on any thread: execve/execveat, fork/clone/clone3,
//! open_by_handle_at/name_to_handle_at (the fs worker holds
//! CAP_DAC_READ_SEARCH for LINK, see `caps`: this keeps it from opening
//! files by handle past the jail),
//! open/openat outside the fs worker, ptrace, mount/pivot_root/unshare/setns,
//! socket families other than AF_UNIX, bpf, perf_event_open, keyctl,
//! process_vm_*, kexec, module loading, and mmap/mprotect with PROT_EXEC.

use std::collections::BTreeMap;
use std::convert::TryInto;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

use super::JailError;
use crate::builder::ThreadKind;
use crate::config::VmConfig;

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn err(what: &str, e: impl std::fmt::Display) -> JailError {
    JailError::new(
        format!("seccomp {what}"),
        std::io::Error::other(e.to_string()),
    )
}

/// `arg` (32 bits) == `value`.
fn eq(arg: u8, value: u64) -> Result<SeccompCondition, JailError> {
    SeccompCondition::new(arg, Len::Dword, Op::Eq, value).map_err(|e| err("condition", e))
}

/// `arg & mask` == `value`.
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition, JailError> {
    SeccompCondition::new(arg, Len::Dword, Op::MaskedEq(mask), value)
        .map_err(|e| err("condition", e))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, JailError> {
    SeccompRule::new(conds).map_err(|e| err("rule", e))
}

/// Allowed whatever the arguments.
fn allow(r: &mut Rules, nrs: &[libc::c_long]) {
    for &nr in nrs {
        r.insert(nr, Vec::new());
    }
}

/// Allowed when any of `rules` matches (added to earlier rules for `nr`).
fn allow_if(r: &mut Rules, nr: libc::c_long, rules: Vec<SeccompRule>) {
    r.entry(nr).or_default().extend(rules);
}

/// What every thread does, whatever its job.
fn common(r: &mut Rules) -> Result<(), JailError> {
    allow(
        r,
        &[
            // Locks, condition variables, channels between threads.
            libc::SYS_futex,
            // Logging to stderr (the runtime's log file); eventfd signals
            // (irqfds, stop and activation events); socket data.
            libc::SYS_write,
            libc::SYS_read,
            // Descriptors dropped: connections, files, eventfds.
            libc::SYS_close,
            // Thread and process exit; restarting an interrupted call.
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_restart_syscall,
            // The allocator (glibc malloc: arenas, large blocks; realloc of
            // large buffers) and thread stack teardown (Rust's sigaltstack
            // guard, glibc's madvise of the dead stack).
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_sigaltstack,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sched_yield,
            // std's HashMap seeds (once per thread); harmless.
            libc::SYS_getrandom,
            // glibc malloc sizes its arena limit from the CPU mask the first
            // time a thread needs a new arena.
            libc::SYS_sched_getaffinity,
            // Timers and timeouts (vDSO normally; the syscall as fallback).
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_gettid,
            libc::SYS_getpid,
        ],
    );
    // std checks that a descriptor is open before closing it (debug builds).
    allow_if(
        r,
        libc::SYS_fcntl,
        vec![rule(vec![eq(1, libc::F_GETFD as u64)?])?],
    );
    // Memory never becomes executable: no new code can be mapped in.
    let no_exec = libc::PROT_EXEC as u64;
    allow_if(r, libc::SYS_mmap, vec![rule(vec![masked(2, no_exec, 0)?])?]);
    allow_if(
        r,
        libc::SYS_mprotect,
        vec![rule(vec![masked(2, no_exec, 0)?])?],
    );
    Ok(())
}

/// The event loop: vsock device (queues, unix listener, host and guest
/// connections), exit watcher, socket cleanup at the end.
fn vmm(r: &mut Rules) -> Result<(), JailError> {
    common(r)?;
    allow(
        r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            // Connections come and go in the epoll set.
            libc::SYS_epoll_ctl,
            // Host-initiated connections on the vsock unix listener.
            libc::SYS_accept4,
            // Guest-initiated connections to `<uds>_<port>`; SO_ERROR of a
            // non-blocking connect.
            libc::SYS_connect,
            libc::SYS_getsockopt,
            // Half-closes (guest SHUTDOWN).
            libc::SYS_shutdown,
            // Socket data.
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_readv,
            libc::SYS_writev,
            // Removing the vsock socket when the VM ends.
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            // vsock connection timeouts (the timerfd is made before the jail).
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
        ],
    );
    // UnixStream::set_nonblocking on accepted and connected sockets.
    allow_if(r, libc::SYS_ioctl, vec![rule(vec![eq(1, libc::FIONBIO)?])?]);
    // Only unix stream sockets (for `<uds>_<port>`): no network, no netlink.
    allow_if(
        r,
        libc::SYS_socket,
        vec![rule(vec![
            eq(0, libc::AF_UNIX as u64)?,
            masked(1, 0xf, libc::SOCK_STREAM as u64)?,
        ])?],
    );
    // Non-blocking mode of accepted sockets.
    allow_if(
        r,
        libc::SYS_fcntl,
        vec![
            rule(vec![eq(1, libc::F_GETFL as u64)?])?,
            rule(vec![eq(1, libc::F_SETFL as u64)?])?,
        ],
    );
    Ok(())
}

/// A vCPU: KVM_RUN, the register reads for crash reports and the reset
/// verdict, and what device emulation on MMIO/port exits does (interrupts
/// through irqfds, the fs device's activation and reset).
fn vcpu(r: &mut Rules) -> Result<(), JailError> {
    common(r)?;
    let ioctls = [KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS(), KVM_GET_LAPIC()]
        .into_iter()
        .map(|nr| rule(vec![eq(1, nr)?]))
        .collect::<Result<Vec<_>, _>>()?;
    allow_if(r, libc::SYS_ioctl, ioctls);
    // virtio-fs activation: a stop eventfd per activation, duplicated for
    // the worker.
    allow(r, &[libc::SYS_eventfd2]);
    allow_if(
        r,
        libc::SYS_fcntl,
        vec![rule(vec![eq(1, libc::F_DUPFD_CLOEXEC as u64)?])?],
    );
    Ok(())
}

/// The virtio-fs worker: file system syscalls on behalf of the guest,
/// always relative to descriptors inside the share (the jail's mount
/// namespace is what keeps absolute paths away from the host: seccomp
/// cannot look at path strings).
fn fs_worker(r: &mut Rules, xattr: bool) -> Result<(), JailError> {
    common(r)?;
    allow(
        r,
        &[
            // Its own epoll on the queue kicks and the stop eventfd, made
            // anew on each activation.
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            // LOOKUP/OPEN/CREATE/OPENDIR (relative to an inode fd or the
            // /proc/self/fd directory fd), GETATTR, READDIR.
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_getdents64,
            libc::SYS_lseek,
            libc::SYS_readlinkat,
            // READ/WRITE straight between files and guest memory.
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_readv,
            libc::SYS_writev,
            // MKDIR, MKNOD (ConfinedFs refuses device nodes), SYMLINK, LINK,
            // UNLINK/RMDIR, RENAME/RENAME2.
            libc::SYS_mkdirat,
            libc::SYS_mknodat,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            // SETATTR: mode, owner, size, times.
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_fchown,
            libc::SYS_fchownat,
            libc::SYS_ftruncate,
            libc::SYS_utimensat,
            // FSYNC/FSYNCDIR/FLUSH, FALLOCATE, STATFS, COPY_FILE_RANGE, FLUSH's dup+close.
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
            libc::SYS_fstatfs,
            libc::SYS_copy_file_range,
            libc::SYS_dup,
            // The per-request credential switch to the guest's uid/gid
            // (fuse-backend-rs ScopedUid/ScopedGid), and its checks.
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_geteuid,
            libc::SYS_getegid,
            libc::SYS_getuid,
            libc::SYS_getgid,
        ],
    );
    allow_if(
        r,
        libc::SYS_fcntl,
        vec![
            rule(vec![eq(1, libc::F_GETFL as u64)?])?,
            rule(vec![eq(1, libc::F_SETFL as u64)?])?,
            rule(vec![eq(1, libc::F_DUPFD_CLOEXEC as u64)?])?,
        ],
    );
    if xattr {
        allow(
            r,
            &[
                libc::SYS_fgetxattr,
                libc::SYS_fsetxattr,
                libc::SYS_flistxattr,
                libc::SYS_fremovexattr,
                libc::SYS_getxattr,
                libc::SYS_setxattr,
                libc::SYS_listxattr,
                libc::SYS_removexattr,
                // xattr ops on non-regular inodes go through fchdir + path.
                libc::SYS_fchdir,
            ],
        );
    }
    Ok(())
}

fn compile(rules: Rules) -> Result<BpfProgram, JailError> {
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| err("target arch", e))?;
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| err("filter", e))?
    .try_into()
    .map_err(|e: seccompiler::BackendError| err("compile", e))
}

/// The compiled filters, one per thread kind.
pub struct Filters {
    vmm: BpfProgram,
    vcpu: BpfProgram,
    fs_worker: BpfProgram,
}

impl Filters {
    pub fn new(cfg: &VmConfig) -> Result<Filters, JailError> {
        let build = |f: &dyn Fn(&mut Rules) -> Result<(), JailError>| {
            let mut r = Rules::new();
            f(&mut r)?;
            compile(r)
        };
        let xattr = cfg.fs.iter().any(|f| f.xattr);
        Ok(Filters {
            vmm: build(&vmm)?,
            vcpu: build(&vcpu)?,
            fs_worker: build(&|r| fs_worker(r, xattr))?,
        })
    }

    /// Cages the calling thread as `kind`. The main thread and vCPUs first
    /// drop every capability of their own (capabilities are per thread; only
    /// the fs worker acts on files for the guest), then each installs its
    /// filter.
    pub fn install(&self, kind: ThreadKind) -> std::io::Result<()> {
        let prog = match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::FsWorker => &self.fs_worker,
        };
        if kind != ThreadKind::FsWorker {
            for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
                caps::clear(None, set).map_err(|e| std::io::Error::other(e.to_string()))?;
            }
        }
        seccompiler::apply_filter(prog).map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_GET_LAPIC(), 0x8400_ae8e);
    }

    #[test]
    fn filters_compile() {
        let cfg: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","memory_mib":128,"vcpus":1}"#).unwrap();
        Filters::new(&cfg).unwrap();
    }
}

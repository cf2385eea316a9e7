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
//! files by handle past the jail; on the fs worker they fail with ENOSYS
//! instead of killing, see [`HANDLE_ERRNO`]), device nodes from mknodat
//! other than the 0:0 whiteout,
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

/// `arg` (64 bits) == `value`.
fn eq64(arg: u8, value: u64) -> Result<SeccompCondition, JailError> {
    SeccompCondition::new(arg, Len::Qword, Op::Eq, value).map_err(|e| err("condition", e))
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
/// connections), exit watcher. It removes nothing: the waiter outside the
/// jail removes the vsock socket.
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
            // MKDIR, SYMLINK, LINK, UNLINK/RMDIR, RENAME/RENAME2.
            libc::SYS_mkdirat,
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
    // MKNOD: files, fifos, sockets and the 0:0 whiteout only, as ConfinedFs
    // already enforces; here so that a compromised worker cannot make a
    // device node either (mode is arg 2, dev arg 3).
    let fmt = u64::from(libc::S_IFMT);
    let mut mknod = Vec::new();
    for kind in [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK] {
        mknod.push(rule(vec![masked(2, fmt, u64::from(kind))?])?);
    }
    mknod.push(rule(vec![
        masked(2, fmt, u64::from(libc::S_IFCHR))?,
        eq64(3, 0)?,
    ])?);
    allow_if(r, libc::SYS_mknodat, mknod);
    // Reached only on kernels whose statx has no mount id (fuse-backend-rs'
    // fallback); the errno filter (`handle_errno`) makes them fail, which
    // the crate handles (mount id 0). Allowed here so that filter's ERRNO,
    // not this one's KillProcess, is the verdict.
    allow(
        r,
        &[libc::SYS_name_to_handle_at, libc::SYS_open_by_handle_at],
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
                // fuse-backend-rs 0.14 does every xattr op by path,
                // `/proc/self/fd/N` of the inode's O_PATH fd (the f*xattr
                // calls refuse O_PATH fds): the jail's /proc makes those
                // paths resolve.
                libc::SYS_removexattr,
            ],
        );
    }
    Ok(())
}

/// The offloads the net worker may set on its tap (`TUNSETOFFLOAD`'s
/// argument): what virtio-net maps the guest's acked features to.
const TAP_OFFLOADS: u64 = (libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6) as u64;

/// A virtio-net worker: its own event loop over the queue kicks, the state
/// eventfd and the tap (a descriptor from the runtime, already checked and
/// set up before the jail). Frames move with readv/writev between the tap
/// and guest memory; interrupts are irqfd writes.
fn net_worker(r: &mut Rules) -> Result<(), JailError> {
    common(r)?;
    allow(
        r,
        &[
            // Its event manager (the epoll itself is made before the jail):
            // kicks of a reset activation leave it, the tap comes and goes
            // as RX buffers run out and come back.
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            // One frame per call, straight between the tap and guest memory.
            libc::SYS_readv,
            libc::SYS_writev,
        ],
    );
    // On activation: the guest's acked offloads, and nothing else (by value:
    // the request and a flag set within what the device maps to).
    allow_if(
        r,
        libc::SYS_ioctl,
        vec![rule(vec![
            eq(1, libc::TUNSETOFFLOAD)?,
            masked(2, !TAP_OFFLOADS & 0xffff_ffff, 0)?,
        ])?],
    );
    Ok(())
}

/// What `name_to_handle_at`/`open_by_handle_at` return on the fs worker.
pub const HANDLE_ERRNO: i32 = libc::ENOSYS;

/// The fs worker's second filter: file-handle syscalls fail with
/// [`HANDLE_ERRNO`], everything else is left to the main filter (the kernel
/// runs both; the stricter verdict wins).
fn handle_errno() -> Result<BpfProgram, JailError> {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[libc::SYS_name_to_handle_at, libc::SYS_open_by_handle_at],
    );
    compile_with(
        r,
        SeccompAction::Allow,
        SeccompAction::Errno(HANDLE_ERRNO as u32),
    )
}

fn compile(rules: Rules) -> Result<BpfProgram, JailError> {
    compile_with(rules, SeccompAction::KillProcess, SeccompAction::Allow)
}

fn compile_with(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, JailError> {
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| err("target arch", e))?;
    SeccompFilter::new(rules, mismatch, matched, arch)
        .map_err(|e| err("filter", e))?
        .try_into()
        .map_err(|e: seccompiler::BackendError| err("compile", e))
}

/// The compiled filters, one per thread kind.
pub struct Filters {
    vmm: BpfProgram,
    vcpu: BpfProgram,
    fs_worker: BpfProgram,
    fs_worker_errno: BpfProgram,
    net_worker: BpfProgram,
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
            fs_worker_errno: handle_errno()?,
            net_worker: build(&net_worker)?,
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
            ThreadKind::NetWorker => &self.net_worker,
        };
        if kind != ThreadKind::FsWorker {
            for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
                caps::clear(None, set).map_err(|e| std::io::Error::other(e.to_string()))?;
            }
        }
        let apply = |p: &BpfProgram| {
            seccompiler::apply_filter(p).map_err(|e| std::io::Error::other(e.to_string()))
        };
        if kind == ThreadKind::FsWorker {
            // First: the main filter allows these calls, counting on this one.
            apply(&self.fs_worker_errno)?;
        }
        apply(prog)
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

    /// Runs `f` in a forked child under the fs worker's filters; its wait status.
    fn in_filtered_child(f: fn() -> i32) -> i32 {
        in_child_as(ThreadKind::FsWorker, f)
    }

    /// Runs `f` in a forked child under `kind`'s filters; its wait status.
    fn in_child_as(kind: ThreadKind, f: fn() -> i32) -> i32 {
        let cfg: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","memory_mib":128,"vcpus":1}"#).unwrap();
        let filters = Filters::new(&cfg).unwrap();
        // SAFETY: the child only makes syscalls and _exits.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if filters.install(kind).is_err() {
                    libc::_exit(100);
                }
                libc::_exit(f());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            status
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// F8(a): on kernels whose statx lacks the mount id, fuse-backend-rs
    /// calls name_to_handle_at on every LOOKUP; that must fail, not kill.
    #[test]
    fn file_handle_calls_fail_on_the_fs_worker() {
        let status = in_filtered_child(|| {
            let mut handle = [0u64; 20];
            handle[0] = 128; // handle_bytes
            let mut mnt = 0i32;
            // SAFETY: valid path, buffers large enough for a 128-byte handle.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_name_to_handle_at,
                    libc::AT_FDCWD,
                    c"/".as_ptr(),
                    handle.as_mut_ptr(),
                    &mut mnt as *mut i32,
                    0,
                )
            };
            if r != -1 || errno() != HANDLE_ERRNO {
                return 1;
            }
            // SAFETY: as above; the kernel only reads the handle.
            let r = unsafe { libc::syscall(libc::SYS_open_by_handle_at, 0, handle.as_ptr(), 0) };
            if r != -1 || errno() != HANDLE_ERRNO {
                return 2;
            }
            0
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "wait status {status:#x}"
        );
    }

    /// F3: no device node from the fs worker, filter-enforced; the whiteout,
    /// fifos and files still go through (to the kernel: ENOENT here).
    #[test]
    fn fs_worker_mknod_of_a_device_kills() {
        let status = in_filtered_child(|| {
            let dir = c"/nonexistent-husk-dir/x";
            for (mode, dev) in [
                (libc::S_IFCHR | 0o600, 0),
                (libc::S_IFIFO | 0o600, 0),
                (libc::S_IFREG | 0o600, 0),
            ] {
                // SAFETY: valid C string; the directory does not exist.
                let r = unsafe { libc::mknodat(libc::AT_FDCWD, dir.as_ptr(), mode, dev) };
                if r != -1 || errno() != libc::ENOENT {
                    return 1;
                }
            }
            // SAFETY: as above; the filter must kill us here.
            unsafe {
                libc::mknodat(
                    libc::AT_FDCWD,
                    dir.as_ptr(),
                    libc::S_IFBLK | 0o600,
                    libc::makedev(8, 0),
                )
            };
            2
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "wait status {status:#x}"
        );
        let status = in_filtered_child(|| {
            // SAFETY: valid C string; must be killed.
            unsafe {
                libc::mknodat(
                    libc::AT_FDCWD,
                    c"/nonexistent-husk-dir/x".as_ptr(),
                    libc::S_IFCHR | 0o600,
                    libc::makedev(1, 3),
                )
            };
            2
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "wait status {status:#x}"
        );
    }

    fn killed_by_seccomp(status: i32) -> bool {
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
    }

    /// Descriptors the net worker test makes before the filter goes on (as
    /// the VMM makes its own): an eventfd and a datagram socket pair.
    static NET_FDS: [std::sync::atomic::AtomicI32; 3] =
        [const { std::sync::atomic::AtomicI32::new(-1) }; 3];

    fn net_fd(i: usize) -> i32 {
        NET_FDS[i].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The net worker: eventfds, readv/writev, TUNSETOFFLOAD with the
    /// offloads virtio-net maps to (here on a socket: the kernel refuses it,
    /// the filter does not); any other offload, ioctl, open or socket kills.
    #[test]
    fn net_worker_filter() {
        use std::os::fd::AsRawFd;
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        for (i, fd) in [efd.as_raw_fd(), a.as_raw_fd(), b.as_raw_fd()]
            .into_iter()
            .enumerate()
        {
            NET_FDS[i].store(fd, std::sync::atomic::Ordering::SeqCst);
        }
        let status = in_child_as(ThreadKind::NetWorker, || {
            let mut v = 1u64;
            let p = &mut v as *mut u64 as *mut libc::c_void;
            let mut frame = *b"frame";
            let iov = libc::iovec {
                iov_base: frame.as_mut_ptr().cast(),
                iov_len: frame.len(),
            };
            // SAFETY: valid buffers of the given sizes; descriptors from above.
            unsafe {
                if libc::write(net_fd(0), p, 8) != 8 || libc::read(net_fd(0), p, 8) != 8 {
                    return 1;
                }
                if libc::writev(net_fd(1), &iov, 1) != 5 || libc::readv(net_fd(2), &iov, 1) != 5 {
                    return 2;
                }
                let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
                for flags in [0, libc::TUN_F_CSUM, all] {
                    let r = libc::ioctl(net_fd(1), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags));
                    if r != -1 {
                        return 3;
                    }
                }
            }
            0
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "wait status {status:#x}"
        );
        let forbidden: [fn() -> i32; 4] = [
            // SAFETY (each): a syscall the filter must kill before it runs.
            || unsafe {
                libc::ioctl(
                    net_fd(1),
                    libc::TUNSETOFFLOAD,
                    libc::c_ulong::from(libc::TUN_F_UFO),
                );
                1
            },
            || unsafe {
                libc::ioctl(net_fd(1), libc::FIONBIO, &1i32);
                1
            },
            || unsafe {
                libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY);
                1
            },
            || unsafe {
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                1
            },
        ];
        for (i, f) in forbidden.into_iter().enumerate() {
            let status = in_child_as(ThreadKind::NetWorker, f);
            assert!(
                killed_by_seccomp(status),
                "case {i}: wait status {status:#x}"
            );
        }
        drop((efd, a, b));
    }

    #[test]
    fn filters_compile() {
        let cfg: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","memory_mib":128,"vcpus":1}"#).unwrap();
        Filters::new(&cfg).unwrap();
    }
}

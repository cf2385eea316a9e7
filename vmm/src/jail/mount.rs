//! Namespaces and the jail's file system.
//!
//! The jail root is a small tmpfs mounted on the per-sandbox jail directory
//! (`<vm dir>/jail` unless `--jail-dir` says otherwise) inside the VMM's own
//! mount namespace: the host sees an empty directory, nothing is left to
//! clean up when the VMM dies, and a guest-controlled write can never land
//! on host disk through it. It holds exactly:
//! - each virtio-fs share, bound (recursively) at its host path: the device
//!   opens the share *through the jail path*, so its root fd lives in a mount
//!   that survives the pivot (a lazily detached old root would cut the
//!   share's submounts — the container rootfs, bind mounts — off from it).
//!   The share's top level is read-only (the guest writes only inside the
//!   rootfs and volume submounts, which keep their own ro/rw flags), and
//!   every mount of the share is `nosuid,nodev,noexec` in the VMM's view;
//! - the vsock socket directory, bound at its host path, read-only once the
//!   VMM's listener exists: the VMM connects to `<uds>_<port>` there for
//!   guest-initiated connections (connect works on a read-only mount);
//! - `/proc`: a procfs of the VMM's own pid namespace with `subset=pid`
//!   (only the VMM's own pid directory, `self`, `thread-self`; no
//!   `/proc/sys`, no `sysrq-trigger`, no host process). The same kind of
//!   procfs is also mounted over `/proc` in the VMM's mount namespace
//!   before the devices are built, so the `/proc/self/fd` directory fd that
//!   virtio-fs takes (fuse-backend-rs opens it by absolute path) is this one
//!   and not the host's: `..` from it reaches nothing of the host. After
//!   the pivot the absolute `/proc/self/fd/N` paths fuse-backend-rs uses for
//!   xattrs resolve in the jail's one.
//!
//! Nothing else: the kernel, initrd, `/dev/kvm` and the console file are
//! opened before the pivot and not reachable after it, so a compromised VMM
//! cannot open a second KVM VM or read the host's files. No `/dev` or
//! `/sys`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{check, JailError};
use crate::config::VmConfig;

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        JailError::new(
            format!("{}", p.display()),
            std::io::Error::other("path contains a NUL byte"),
        )
    })
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let what = format!("mount {}", target.display());
    let src = src.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let data = data.map(|s| CString::new(s).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let r = unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(r, &what).map(|_| ())
}

/// `root` + absolute `path` (only normal components of `path` are kept).
fn under(root: &Path, path: &Path) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in path.components() {
        if let Component::Normal(n) = c {
            p.push(n);
        }
    }
    p
}

/// The jail root, prepared and not entered yet.
pub struct Jail {
    root: PathBuf,
    /// Binds made read-only only in [`Jail::enter`]: the VMM creates its
    /// vsock listener in there after `prepare`.
    ro_later: Vec<PathBuf>,
}

/// `mount -t proc -o subset=pid,nosuid,nodev,noexec` of the caller's pid
/// namespace on `target`. subset=pid is Linux 5.8+; without it the VMM
/// refuses to start rather than hand virtio-fs the host's procfs.
fn mount_pid_proc(target: &Path) -> Result<(), JailError> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(Path::new("proc")),
        target,
        Some("proc"),
        flags,
        Some("subset=pid"),
    )
    .map_err(|e| {
        if e.source.raw_os_error() == Some(libc::EINVAL) {
            JailError::new(
                format!(
                    "mount proc (subset=pid) on {}: the kernel lacks procfs' subset=pid \
                     (Linux 5.8 or later needed)",
                    target.display()
                ),
                e.source,
            )
        } else {
            e
        }
    })
}

/// `nosuid,nodev,noexec` on `target` and every mount below it (other flags
/// kept). A compromised fs worker (CAP_MKNOD, any openat) then cannot open
/// a device node on any of them, whatever their host flags are.
fn harden_recursively(target: &Path) -> Result<(), JailError> {
    let what = format!(
        "mount_setattr(nosuid,nodev,noexec, recursive) {}",
        target.display()
    );
    let path = cstr(target)?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid C string and a properly sized, initialised mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    // Linux 5.12+, as the runtime's share staging needs anyway: no
    // remount-per-mount fallback to keep in step.
    check(r as libc::c_int, &what).map(|_| ())
}

impl Jail {
    /// New mount, IPC, UTS and network namespaces; the jail root on
    /// `jail_dir` (created if missing) with `binds` (host directories, bound
    /// at the same path) and every virtio-fs share of `cfg` (whose
    /// `shared_dir` is rewritten to the jail path). Call while single-threaded.
    pub fn prepare(
        cfg: &mut VmConfig,
        jail_dir: &Path,
        binds: &[PathBuf],
    ) -> Result<Jail, JailError> {
        // SAFETY: unshare with flags only. The network namespace is new and
        // empty (not even lo up): vsock needs no network, unix sockets work
        // by path. IPC and UTS: nothing of the host's is visible or settable.
        check(
            unsafe {
                libc::unshare(
                    libc::CLONE_NEWNS
                        | libc::CLONE_NEWIPC
                        | libc::CLONE_NEWUTS
                        | libc::CLONE_NEWNET,
                )
            },
            "unshare(mount, ipc, uts, net namespaces)",
        )?;
        // Nothing we mount or unmount propagates to the host. Slave, not
        // private: mounts the host adds later under a share it made shared
        // (containerd's shim stages each container joining a running
        // sandbox that way) must reach the VMM's view of it.
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_SLAVE,
            None,
        )?;
        let name = b"husk-vmm";
        // SAFETY: valid buffer and length.
        check(
            unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) },
            "sethostname",
        )?;

        std::fs::create_dir_all(jail_dir)
            .map_err(|e| JailError::new(format!("create {}", jail_dir.display()), e))?;
        let root = std::fs::canonicalize(jail_dir)
            .map_err(|e| JailError::new(format!("{}", jail_dir.display()), e))?;
        let noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        mount(
            Some(Path::new("husk-jail")),
            &root,
            Some("tmpfs"),
            noexec,
            Some("size=64k,nr_inodes=256,mode=0755"),
        )?;
        // We are PID 1 of our own pid namespace: these procfs show only us.
        // Over the host's /proc in our mount namespace (virtio-fs opens
        // `/proc/self/fd` by that path while the devices are built), and in
        // the jail for after the pivot.
        let jail_proc = root.join("proc");
        std::fs::create_dir(&jail_proc)
            .map_err(|e| JailError::new(format!("create {}", jail_proc.display()), e))?;
        mount_pid_proc(&jail_proc)?;
        mount_pid_proc(Path::new("/proc"))?;
        let mut jail = Jail {
            root,
            ro_later: Vec::new(),
        };
        for dir in binds {
            let target = jail.bind(dir, false)?;
            jail.ro_later.push(target);
        }
        for fs in &mut cfg.fs {
            fs.shared_dir = jail.bind(&fs.shared_dir, true)?;
        }
        Ok(jail)
    }

    /// Binds host directory `dir` at the same path under the jail root;
    /// returns that path (as seen before the pivot).
    fn bind(&self, dir: &Path, recursive: bool) -> Result<PathBuf, JailError> {
        let src = std::fs::canonicalize(dir)
            .map_err(|e| JailError::new(format!("{}", dir.display()), e))?;
        let target = under(&self.root, &src);
        std::fs::create_dir_all(&target)
            .map_err(|e| JailError::new(format!("create {}", target.display()), e))?;
        let rec = if recursive { libc::MS_REC } else { 0 };
        mount(Some(&src), &target, None, libc::MS_BIND | rec, None)?;
        // The VMM never executes anything, and nothing in there is a device
        // for it: say so on the bind (its own mount flags; submounts keep theirs).
        // A share's top level is read-only too: the guest has no business
        // there (the host stages containers into it; the guest writes only
        // inside the rootfs and volume submounts, which keep their ro/rw).
        let ro = if recursive { libc::MS_RDONLY } else { 0 };
        mount(
            None,
            &target,
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | ro
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            None,
        )?;
        if recursive {
            harden_recursively(&target)?;
        }
        Ok(target)
    }

    /// `pivot_root` into the jail and drop the old root; the jail root and
    /// the vsock socket directory become read-only (inside the shares, the
    /// rootfs and volume submounts stay as the host made them). The VMM can
    /// then no longer remove its own socket: whoever made the directory does.
    pub fn enter(self) -> Result<(), JailError> {
        for dir in &self.ro_later {
            mount(
                None,
                dir,
                None,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                None,
            )?;
        }
        let root = cstr(&self.root)?;
        let dot = c".";
        // SAFETY: valid C strings; pivot_root(".", ".") stacks the old root
        // on top of the new one, so no put_old directory is needed, and the
        // umount detaches it.
        unsafe {
            check(libc::chdir(root.as_ptr()), "chdir to the jail")?;
            check(
                libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
                "pivot_root",
            )?;
            check(
                libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
                "detach the old root",
            )?;
            check(libc::chdir(c"/".as_ptr()), "chdir /")?;
        }
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_jail() {
        assert_eq!(
            under(Path::new("/j"), Path::new("/run/husk/x/vm")),
            PathBuf::from("/j/run/husk/x/vm")
        );
        assert_eq!(under(Path::new("/j"), Path::new("/")), PathBuf::from("/j"));
    }
}

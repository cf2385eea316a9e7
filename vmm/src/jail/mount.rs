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
//!   share's submounts — the container rootfs, bind mounts — off from it);
//! - the vsock socket directory, bound at its host path: the VMM connects
//!   to `<uds>_<port>` there for guest-initiated connections and removes
//!   its socket on exit.
//!
//! Nothing else: the kernel, initrd, `/dev/kvm` and the console file are
//! opened before the pivot and not reachable after it, so a compromised VMM
//! cannot open a second KVM VM or read the host's files. No `/proc`, `/dev`
//! or `/sys` (the VMM needs none: virtio-fs re-opens inodes through a
//! `/proc/self/fd` directory fd taken before the pivot).

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
        let jail = Jail { root };
        for dir in binds {
            jail.bind(dir, false)?;
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
        mount(
            None,
            &target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
        Ok(target)
    }

    /// `pivot_root` into the jail and drop the old root; the jail root
    /// becomes read-only (the binds stay writable).
    pub fn enter(self) -> Result<(), JailError> {
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

//! Mount and file primitives that work on descriptors, not paths.
//!
//! The share is served to a hostile guest, so nothing here may be steered by
//! what the guest could have put in a directory: every directory is reached
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`
//! from a descriptor we hold, mounts are cloned with `open_tree`, given their
//! attributes while still detached (no window where a read-only bind is
//! writable) and attached with `move_mount` onto a descriptor, unmounts use
//! `UMOUNT_NOFOLLOW`, and removal never crosses a mount.
//!
//! rustix covers openat2, open_tree, move_mount, statx and umount2;
//! `mount_setattr` (Linux 5.12) is the one call it lacks, so it is made here
//! through libc.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags, CWD};
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

/// Mount attributes (`MOUNT_ATTR_*`).
pub const ATTR_RDONLY: u64 = libc::MOUNT_ATTR_RDONLY;
pub const ATTR_NOSUID: u64 = libc::MOUNT_ATTR_NOSUID;
pub const ATTR_NODEV: u64 = libc::MOUNT_ATTR_NODEV;
pub const ATTR_NOEXEC: u64 = libc::MOUNT_ATTR_NOEXEC;

fn err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// The resolution every path below a held descriptor gets: no symlink (not
/// even in the middle), no `..` above the descriptor, no mount crossing.
fn strict() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV
}

/// Opens a directory of ours (a trusted host path) as an `O_PATH` anchor.
pub fn open_anchor(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Opens directory `name` strictly beneath `dir` (see [`strict`]).
pub fn open_dir_beneath(dir: BorrowedFd<'_>, name: &Path) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        strict(),
    )
    .map_err(err)
}

/// Opens `name` (any type, a symlink itself included) strictly beneath `dir`.
pub fn open_beneath(dir: BorrowedFd<'_>, name: &Path) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        strict(),
    )
    .map_err(err)
}

/// Makes directory `name` (one component) in `dir`; it must not exist yet,
/// so that nothing planted there earlier is reused. Returns it opened.
pub fn mkdir_new(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<OwnedFd> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)).map_err(err)?;
    open_dir_beneath(dir, Path::new(name))
}

/// Creates the empty file `name` (one component) in `dir`: a mount point for
/// a file bind. Must not exist yet; never follows a symlink.
pub fn create_new(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    drop(
        rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(err)?,
    );
    open_beneath(dir, Path::new(name))
}

/// A detached copy of the mount at `src` (with its submounts if `recursive`),
/// as `mount --bind` / `--rbind` would attach it.
pub fn clone_tree(src: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    rustix::mount::open_tree(CWD, src, flags).map_err(err)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {set, clr})`.
pub fn set_attrs(tree: BorrowedFd<'_>, recursive: bool, set: u64, clr: u64) -> io::Result<()> {
    if set == 0 && clr == 0 {
        return Ok(());
    }
    let mut attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: a valid fd, an empty NUL-terminated path, and a mount_attr of
    // the size we pass; the kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches the detached `tree` on top of the object `dst` refers to.
pub fn attach(tree: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        dst,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(err)
}

/// Lazily detaches the mount at `path` (and everything below it) without
/// following a symlink in its last component.
pub fn detach(path: &Path) -> io::Result<()> {
    rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW).map_err(err)
}

/// The mount id of what `fd` refers to (statx `STATX_MNT_ID`, Linux 5.8).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::MNT_ID,
    )
    .map_err(err)?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "statx has no STATX_MNT_ID (Linux < 5.8)",
        ));
    }
    Ok(st.stx_mnt_id)
}

/// Whether `path` is a mount point (`STATX_ATTR_MOUNT_ROOT`), not following
/// a symlink in its last component.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let st = rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .map_err(err)?;
    use rustix::fs::StatxAttributes as A;
    if !st.stx_attributes_mask.contains(A::MOUNT_ROOT) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "statx has no STATX_ATTR_MOUNT_ROOT (Linux < 5.8)",
        ));
    }
    Ok(st.stx_attributes.contains(A::MOUNT_ROOT))
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{0}: {1}")]
    Io(String, io::Error),
    /// A mount below what was to be removed: removing through it would
    /// delete files of another file system (a host volume).
    #[error("{0} is on another mount; not removing through it")]
    CrossesMount(String),
}

/// Removes `name` (one component of `parent`) and everything below it, never
/// following a symlink and never entering a directory on another mount than
/// `parent`'s: a bind mount found below stops the removal with an error and
/// is left as it is, files and all.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &str) -> Result<(), RemoveError> {
    let here = mount_id(parent).map_err(|e| RemoveError::Io(name.into(), e))?;
    let c = CString::new(name)
        .map_err(|_| RemoveError::Io(name.into(), io::Error::from(io::ErrorKind::InvalidInput)))?;
    remove_in(parent, &c, here, name)
}

fn remove_in(
    parent: BorrowedFd<'_>,
    name: &CStr,
    mnt: u64,
    shown: &str,
) -> Result<(), RemoveError> {
    let io_err = |e: io::Error| RemoveError::Io(shown.to_string(), e);
    let st = match rustix::fs::statx(
        parent,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::TYPE | StatxFlags::MNT_ID,
    ) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_err(err(e))),
    };
    if st.stx_mnt_id != mnt {
        return Err(RemoveError::CrossesMount(shown.to_string()));
    }
    if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
        return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(err(e))),
        };
    }
    let dir = rustix::fs::openat2(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        strict(),
    )
    .map_err(|e| io_err(err(e)))?;
    // The directory we opened must be the one we checked (a rename in
    // between would swap in another).
    if mount_id(dir.as_fd()).map_err(io_err)? != mnt {
        return Err(RemoveError::CrossesMount(shown.to_string()));
    }
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir).map_err(|e| io_err(err(e)))? {
        let entry = entry.map_err(|e| io_err(err(e)))?;
        let n = entry.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    for n in names {
        let shown = format!("{shown}/{}", n.to_string_lossy());
        remove_in(dir.as_fd(), &n, mnt, &shown)?;
    }
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(err(e))),
    }
}

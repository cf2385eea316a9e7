//! Mount points in a rootfs that the host keeps read-only (`root.readonly`).
//!
//! The agent makes a mount's destination in the container's rootfs when it
//! is missing (as runc does). With `root.readonly` the host serves the rootfs
//! read-only to the guest, so the agent could not: they are made here,
//! before the read-only bind, as runc makes them before its final remount.
//! The rootfs is image content (untrusted): every path is resolved with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink in the image resolves inside the
//! rootfs exactly as the agent's `secure_join` resolves it in the guest, and
//! nothing outside the rootfs is ever created.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::share::{is_bind, ShareError};

fn err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// `path` as components below the root: `..` clamped at the root, like a
/// lexical `secure_join`.
fn below_root(path: &Path) -> Vec<&OsStr> {
    let mut v = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => v.push(n),
            Component::ParentDir => {
                v.pop();
            }
            _ => {}
        }
    }
    v
}

/// Opens `comps` (symlink-free by construction) below `root`.
fn open_resolved(root: BorrowedFd<'_>, comps: &[OsString]) -> io::Result<OwnedFd> {
    let p: PathBuf = if comps.is_empty() {
        PathBuf::from(".")
    } else {
        comps.iter().collect()
    };
    rustix::fs::openat2(
        root,
        &p,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .map_err(err)
}

/// Makes `dest` (a directory, or an empty file if `file`) and its missing
/// parents inside `root`, resolving the image's symlinks as if `root` were
/// `/` (what the agent's `secure_join` does); what exists is left as it is.
fn ensure(root: BorrowedFd<'_>, dest: &[&OsStr], file: bool) -> io::Result<()> {
    let mut todo: VecDeque<OsString> = dest.iter().map(|c| c.to_os_string()).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        if c.is_empty() || c == "." {
            continue;
        }
        let parent = open_resolved(root, &done)?;
        match rustix::fs::readlinkat(parent.as_fd(), c.as_os_str(), Vec::new()) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                if target.is_absolute() {
                    done.clear();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
                continue;
            }
            // Exists and is not a symlink.
            Err(rustix::io::Errno::INVAL) => {}
            Err(rustix::io::Errno::NOENT) => {
                let made = if file && todo.is_empty() {
                    rustix::fs::openat(
                        parent.as_fd(),
                        c.as_os_str(),
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .map(drop)
                } else {
                    rustix::fs::mkdirat(parent.as_fd(), c.as_os_str(), Mode::from_raw_mode(0o755))
                };
                match made {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            Err(e) => return Err(err(e)),
        }
        done.push(c);
    }
    Ok(())
}

/// Makes every mount destination of `spec` that would land in the rootfs
/// itself (not inside an earlier mount, where the guest makes it).
pub fn create(rootfs: &Path, bundle: &Path, spec: &Spec) -> Result<(), ShareError> {
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ShareError::MountPoint(rootfs.into(), err(e)))?;
    let mut earlier: Vec<Vec<&OsStr>> = Vec::new();
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    for m in mounts {
        let dest = below_root(m.destination());
        let inside_earlier = earlier
            .iter()
            .any(|e| dest.len() > e.len() && dest.starts_with(e));
        if !inside_earlier && !dest.is_empty() {
            let file = is_bind(m)
                && m.source().as_ref().is_some_and(|s| {
                    let s = if s.is_absolute() {
                        s.clone()
                    } else {
                        bundle.join(s)
                    };
                    std::fs::metadata(s).is_ok_and(|md| !md.is_dir())
                });
            ensure(root.as_fd(), &dest, file)
                .map_err(|e| ShareError::MountPoint(m.destination().clone(), e))?;
        }
        earlier.push(dest);
    }
    Ok(())
}

//! Running code inside a network namespace without moving the caller.
//!
//! Namespaces are per thread: a dedicated thread `setns`es and does all the netlink and tap work,
//! so the caller's thread (and every other thread of husk) stays where it was. Sockets and the tun
//! file opened on that thread belong to the namespace for their whole life, wherever their fd goes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::NetError;

/// Opens `path` and checks that it is a network namespace before anything is done in it.
pub(crate) fn open(path: &Path) -> Result<File, NetError> {
    let file = File::open(path).map_err(|source| NetError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // A netns is an nsfs inode (a bind mount of /proc/PID/ns/net or the file itself); anything
    // else would make setns fail with a less helpful EINVAL.
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| NetError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(NetError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// True for what a vanished netns leaves behind: nothing, or the empty file a bind mount sat on.
pub(crate) fn is_gone(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(e) => e.kind() == io::ErrorKind::NotFound,
        Ok(meta) => {
            meta.is_file()
                && meta.len() == 0
                && matches!(open(path), Err(NetError::NotNetns { .. }))
        }
    }
}

/// Runs `f` on a new thread that has joined the network namespace at `path`, and waits for it.
/// Errors from `f` come back wrapped with the namespace's path.
pub(crate) fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    let ns = open(path)?;
    let owned: PathBuf = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || -> Result<T, NetError> {
            // SAFETY: plain syscall on a valid fd; only this thread changes namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let source = io::Error::last_os_error();
                if source.raw_os_error() == Some(libc::EINVAL) {
                    // nsfs, but another namespace type (mnt, uts...).
                    return Err(NetError::NotNetns { path: owned });
                }
                return Err(NetError::Setns {
                    path: owned,
                    source,
                });
            }
            drop(ns);
            f().map_err(|e| NetError::InNetns {
                path: owned,
                source: Box::new(e),
            })
        })
        .map_err(|e| NetError::Thread(e.to_string()))?;
    thread
        .join()
        .map_err(|_| NetError::Thread("panicked".into()))?
}

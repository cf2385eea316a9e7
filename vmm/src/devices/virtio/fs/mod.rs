//! virtio-fs (virtio spec 5.11) served from inside the VMM: no virtiofsd.
//!
//! FUSE parsing and the file system itself come from `fuse-backend-rs`
//! (`api::server::Server` over a `passthrough::PassthroughFs`); this module
//! adds the virtio device, a worker thread and a confinement layer.
//!
//! Layout:
//! * `device`: the [`VirtioDevice`](super::VirtioDevice) side: config space
//!   (`tag[36]`, `le32 num_request_queues = 1`), features, activation/reset,
//!   which start/stop the worker thread.
//! * `worker`: the `fs-worker` thread. It owns the queues, a clone of guest
//!   memory and the interrupt, waits on the queue kick eventfds and a stop
//!   eventfd (its own epoll), and does all FUSE work. Nothing of it runs on
//!   the VMM's event loop or on vCPU threads, so a seccomp filter for file
//!   system syscalls can be put on this one thread.
//! * `request`: one descriptor chain = one FUSE request: size limits,
//!   `Reader`/`Writer` from the chain, `Server::handle_message`, the used
//!   length, and the answer to chains the server could not answer.
//! * `confined`: `ConfinedFs`, a `FileSystem` wrapper
//!   around `PassthroughFs` that enforces the confinement rules below.
//! * `metrics`: counters of what a hostile guest caused (each kind logged once).
//!
//! There is no `event_manager::MutEventSubscriber` impl: the device needs no
//! event from the main loop (kicks go straight to the worker's epoll), so the
//! builder does not add it to the event manager.
//!
//! Usage by the VMM builder:
//! ```ignore
//! let fs = Fs::new("myfs", "/run/husk/<id>/rootfs", FsOptions::default())?;
//! let fs = Arc::new(Mutex::new(fs));
//! let transport = MmioTransport::new(fs.clone(), mem.clone(), irq)?; // as for vsock,
//! // register the queue kicks as ioeventfds; no event_manager.add_subscriber().
//! ```
//! The guest mounts it with `mount -t virtiofs <tag> /mnt`.
//!
//! # Confinement: who stops what
//!
//! The guest must never reach a host path outside `shared_dir`. The layers:
//!
//! * **PassthroughFs** (fuse-backend-rs) keeps one `O_PATH` fd per inode the
//!   guest looked up and resolves every name with `openat(parent_fd, name,
//!   O_NOFOLLOW)`: one component at a time, relative to a directory already
//!   inside the share, never following a symlink. Inode numbers and file
//!   handles are keys into its own tables: a number the guest invents
//!   (nodeid, fh, RENAME/LINK target parent, LINK source) is not in the table
//!   and gets `EBADF`; a valid fh used with another nodeid also gets `EBADF`.
//!   Files are opened by re-opening the inode's `O_PATH` fd through
//!   `/proc/self/fd` (which resolves to the inode itself, not a path) and only
//!   for regular files and directories (`is_safe_inode`): symlinks, devices,
//!   fifos and sockets cannot be opened, whatever `O_NOFOLLOW` games the open
//!   flags play. READLINK just returns the link text; the guest kernel
//!   resolves symlinks in its own namespace.
//! * **ConfinedFs** (this module) does not rely on the crate for name checks
//!   (the crate skips them when `do_import` is off, which we need, see
//!   `confined`): every name must be one non-empty component without `/`;
//!   `.` and `..` only in LOOKUP. LOOKUP of `..` on the root — or on any
//!   nodeid that is the shared directory itself — resolves to the root, like
//!   a chroot. MKNOD of block and character devices is refused with `EPERM`
//!   (except the 0:0 overlayfs whiteout), so the guest cannot plant device
//!   nodes for host processes. OPEN drops `O_CREAT`, `O_EXCL`, `O_PATH` and
//!   `O_TMPFILE` bits. DAX (SETUPMAPPING) and ioctl are not offered.
//!   Sizes that make PassthroughFs allocate (READDIR, GETXATTR, LISTXATTR) are
//!   clamped. FUSE_INIT cannot switch on options we did not configure
//!   (writeback cache, no-open, killpriv_v2, per-file DAX). The inodes the
//!   guest holds (looked up, not forgotten) and its open handles pin one host
//!   fd each: their sum is bounded ([`fd_budget`]: RLIMIT_NOFILE minus
//!   [`FD_RESERVE`] for vsock and the VMM), beyond which the guest gets
//!   `ENFILE` until it forgets or closes something.
//! * **The device** (`request`) bounds every chain: at most 1 MiB + 4 KiB
//!   readable and writable (what a FUSE request with `max_pages` = 256 needs),
//!   so no guest value sizes a host allocation beyond that. Chains without a
//!   complete readable `fuse_in_header` (descriptors outside guest memory,
//!   only write-only descriptors, truncated header, broken indirect tables)
//!   are used with length 0. Requests the server rejects or cannot answer
//!   get an error reply if the chain has room for one (16 bytes), else
//!   length 0. Each kind is counted ([`FsMetrics`]) and logged once here;
//!   fuse-backend-rs itself logs some guest-triggered failures at error
//!   level on every occurrence (log target `fuse_backend_rs`), so the VMM's
//!   logger should silence that target below debug.
//!
//! What is *not* stopped here (host setup, see the jailer): the guest can
//! create setuid/setgid files (owned by whoever the VMM runs as when the
//! guest user is root), symlinks with any target text, and, with
//! `xattr: true` and CAP_SETFCAP, file capabilities. None of that affects
//! the VMM, which never follows or executes anything, but host processes
//! that later use the directory must treat it as untrusted (mount it
//! `nosuid,nodev`, do not follow symlinks in it). Whatever the VMM's
//! credentials allow inside the share (owners, modes) is what the guest gets.

mod confined;
mod device;
mod metrics;
mod request;
mod worker;

#[cfg(test)]
mod tests;

// Fuzzing only (fuzz/fs_request): the request layer without the worker thread.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

use std::io;
use std::path::PathBuf;

pub use device::Fs;
pub use metrics::FsMetrics;
pub use worker::ThreadStart;

/// Queue indices.
pub const HIPRIO_QUEUE: usize = 0;
pub const REQUEST_QUEUE: usize = 1;
pub const NUM_QUEUES: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 1024;
/// Length of the `tag` field of the config space.
pub const TAG_LEN: usize = 36;

/// How much the guest may cache (maps onto fuse-backend-rs' `CachePolicy`
/// plus entry/attribute timeouts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// No data caching (direct I/O), entry/attr timeouts 0: for directories
    /// the host changes behind the guest's back.
    Never,
    /// Close-to-open consistency, 1 s entry/attr timeouts, page cache
    /// invalidated when the host changes mtime/size.
    #[default]
    Auto,
    /// The guest keeps everything (1 day timeouts): only when the guest has
    /// the directory to itself.
    Always,
}

/// Device options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsOptions {
    pub cache: CacheMode,
    /// Serve extended attributes (`security.*`, `user.*`, ...). Off by
    /// default: costs a round trip per write (the kernel asks for
    /// `security.capability`) and widens what the guest can touch.
    pub xattr: bool,
    /// Let the guest use a writeback cache (ignored with [`CacheMode::Never`]).
    /// Only safe if the guest has the directory to itself.
    pub writeback: bool,
}

/// Descriptors left for everything but virtio-fs' inodes and handles: vsock
/// connections and clients that have not said CONNECT yet (each one fd),
/// the VMM's own (KVM, eventfds, epolls, console), and the fds a file
/// system operation holds briefly. Keeps vsock `accept4` (the host's way to
/// the agent) working whatever the guest does with virtio-fs.
pub const FD_RESERVE: usize =
    super::vsock::defs::MAX_CONNECTIONS + super::vsock::defs::MAX_PENDING_CLIENTS + 256;

/// Each of `devices` virtio-fs devices' share of the VMM's RLIMIT_NOFILE
/// (as the jail sets it), after [`FD_RESERVE`]: the most inodes (each an
/// `O_PATH` fd) plus open handles the guest may hold at once on one device
/// (see [`Fs::with_fd_budget`]).
pub fn fd_budget(devices: usize) -> usize {
    let nofile =
        usize::try_from(crate::jail::rlimits::Limits::for_vmm(1).nofile).unwrap_or(usize::MAX);
    let total = nofile.saturating_sub(FD_RESERVE).max(nofile / 2);
    total / devices.max(1)
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            cache: CacheMode::Auto,
            xattr: false,
            writeback: false,
        }
    }
}

/// Errors creating an [`Fs`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("invalid virtio-fs tag {tag:?}: {reason}")]
    InvalidTag { tag: String, reason: &'static str },
    #[error("shared directory {path:?}: {source}")]
    SharedDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("shared directory {0:?} is not a directory")]
    NotADirectory(PathBuf),
    #[error("shared directory path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    #[error("cannot set up the passthrough file system on {path:?}: {source}")]
    Backend {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create eventfd: {0}")]
    EventFd(#[source] io::Error),
}

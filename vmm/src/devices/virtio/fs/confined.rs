//! `ConfinedFs`: the `FileSystem` the FUSE server talks to. It delegates to
//! fuse-backend-rs' `PassthroughFs` and enforces, independently of it, the
//! rules that keep the guest inside the shared directory (see the module docs
//! of `fs` for which layer stops what).
//!
//! Why `do_import: false`: with `do_import` on, `PassthroughFs::init` (every
//! FUSE_INIT) re-opens the shared directory *by path* and calls `umask(0)`,
//! which is per process unless the calling thread has its own fs_struct.
//! With it off, the root is opened exactly once, at construction (so the VMM
//! may be jailed/chrooted afterwards: the root stays pinned by its `O_PATH`
//! fd) and INIT does no path lookups. The price: `PassthroughFs` then assumes
//! it sits under a VFS layer that already validated names and negotiated
//! options, so it skips its name checks and enables every INIT option the
//! guest offers (writeback cache, no-open, killpriv_v2). This wrapper
//! therefore validates every name itself and masks INIT.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions as FuseOptions, GetxattrReply, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::api::server::MAX_BUFFER_SIZE;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::{CacheMode, FsOptions};

type Inode = u64;
type Handle = u64;

/// Largest xattr value / name list Linux supports (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: u32 = 65536;

/// The `O_TMPFILE` bit without the `O_DIRECTORY` bit it comes with.
const O_TMPFILE_BIT: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// Open flags the guest may not pass to OPEN/OPENDIR/CREATE: creation goes
/// through CREATE/MKNOD (with their checks), `O_PATH` and `O_TMPFILE` have no
/// business in a FUSE open.
const STRIPPED_OPEN_FLAGS: u32 =
    (libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_PATH | O_TMPFILE_BIT) as u32;

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// A name that creates, removes or renames something: one real component.
fn check_component(name: &CStr) -> io::Result<()> {
    match name.to_bytes() {
        b"" | b"." | b".." => Err(einval()),
        b if b.contains(&b'/') => Err(einval()),
        _ => Ok(()),
    }
}

/// A LOOKUP name: one component; `.` and `..` allowed (NFS-export style
/// lookups), `..` is confined by the caller.
fn check_lookup_name(name: &CStr) -> io::Result<()> {
    match name.to_bytes() {
        b"" => Err(einval()),
        b if b.contains(&b'/') => Err(einval()),
        _ => Ok(()),
    }
}

/// MKNOD may create regular files, fifos, sockets and the 0:0 character
/// device overlayfs uses as a whiteout; never real device nodes.
fn check_mknod(mode: u32, rdev: u32) -> io::Result<()> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => Ok(()),
        libc::S_IFCHR if rdev == 0 => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EPERM)),
    }
}

fn enfile() -> io::Error {
    io::Error::from_raw_os_error(libc::ENFILE)
}

/// What the guest holds of the descriptors PassthroughFs keeps for it: one
/// `O_PATH` fd per inode it has looked up and not forgotten, one fd per open
/// handle. Bounded, so the guest cannot take the VMM's whole fd table (vsock
/// `accept4` shares it: the host would lose its way to the agent).
#[derive(Default)]
struct Held {
    /// nodeid → lookups not forgotten yet (the root is not counted: its fd
    /// is there for good).
    inodes: HashMap<Inode, u64>,
    handles: usize,
    /// Open file handle → the flags PassthroughFs keeps with it. READ and
    /// WRITE pass these, not the guest's: PassthroughFs `fcntl(F_SETFL)`s a
    /// handle whose flags differ, and when that fails (`O_DIRECT` on a
    /// directory or on a file system without direct I/O, clearing
    /// `O_APPEND` of an append-only file) fuse-backend-rs 0.14 closes the
    /// handle's fd by mistake (sync_io.rs `read`/`write`: the borrowed
    /// `File` is dropped on that early return), leaving the number to be
    /// closed again later: fd confusion inside the VMM, found by
    /// fuzz/fs_request. The guest kernel already applies its own file flags
    /// (the offset of an `O_APPEND` write, for one), so nothing is lost.
    file_flags: HashMap<Handle, u32>,
}

impl Held {
    fn used(&self) -> usize {
        self.inodes.len() + self.handles
    }
}

pub(crate) struct ConfinedFs {
    inner: PassthroughFs<()>,
    held: Mutex<Held>,
    /// Most inodes + handles the guest may hold.
    max_fds: usize,
    /// Whether the bound was hit already (logged once).
    refused: AtomicBool,
    /// `(st_dev, st_ino)` of the shared directory.
    root_id: (u64, u64),
    /// FUSE_INIT capabilities passed on to `PassthroughFs::init` (and the
    /// most it may enable).
    init_allowed: FuseOptions,
    /// Options we enable on top of what `PassthroughFs` asks for.
    init_extra: FuseOptions,
}

impl ConfinedFs {
    /// Set up `PassthroughFs` on `root` (absolute, canonical, a directory) and
    /// open the root. Calls `umask(0)` (inside `import`): the caller restores it.
    // The device uses `with_budget`; the fuzz entry point uses this.
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub fn new(root: &str, opts: &FsOptions) -> io::Result<ConfinedFs> {
        Self::with_budget(root, opts, super::fd_budget(1))
    }

    /// Like [`ConfinedFs::new`]; the guest may hold at most `max_fds` inodes
    /// plus open handles (ENFILE beyond).
    pub fn with_budget(root: &str, opts: &FsOptions, max_fds: usize) -> io::Result<ConfinedFs> {
        let (cache_policy, timeout) = match opts.cache {
            CacheMode::Never => (CachePolicy::Never, Duration::ZERO),
            CacheMode::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
            CacheMode::Always => (CachePolicy::Always, Duration::from_secs(86400)),
        };
        let writeback = opts.writeback && opts.cache != CacheMode::Never;
        let cfg = Config {
            root_dir: root.to_owned(),
            cache_policy,
            entry_timeout: timeout,
            attr_timeout: timeout,
            dir_entry_timeout: None,
            dir_attr_timeout: None,
            writeback,
            xattr: opts.xattr,
            do_import: false,
            no_open: false,
            no_opendir: false,
            killpriv_v2: false,
            // O_PATH fds, not file handles: no CAP_DAC_READ_SEARCH needed.
            inode_file_handles: false,
            no_readdir: false,
            seal_size: false,
            enable_mntid: false,
            dax_file_size: None,
            // Not `true`, although only then does PassthroughFs drop its
            // id→nodeid entry of a forgotten inode (passthrough/mod.rs:779,
            // `keep_mapping`): with it, nodeids come from a (dev, mnt_id)
            // table that never frees and fails after 255 pairs
            // (passthrough/util.rs:55-58), and every container restart in a
            // pod brings new mounts. So that map grows with every distinct
            // inode the guest ever looked up (~100 bytes each, charged to
            // the VMM's memory cgroup); the fds are bounded (`max_fds`).
            use_host_ino: false,
            allow_direct_io: true,
        };
        let inner = PassthroughFs::<()>::new(cfg)?;
        inner.import()?;
        let (st, _) = inner.getattr(&Context::default(), ROOT_ID, None)?;

        let mut init_allowed = FuseOptions::all()
            - (FuseOptions::WRITEBACK_CACHE
                | FuseOptions::ZERO_MESSAGE_OPEN
                | FuseOptions::ZERO_MESSAGE_OPENDIR
                | FuseOptions::HANDLE_KILLPRIV
                | FuseOptions::HANDLE_KILLPRIV_V2
                | FuseOptions::PERFILE_DAX);
        if writeback {
            init_allowed |= FuseOptions::WRITEBACK_CACHE;
        }
        // Without MAX_PAGES/BIG_WRITES the server caps max_write at 4 KiB.
        let mut init_extra = FuseOptions::ASYNC_READ
            | FuseOptions::BIG_WRITES
            | FuseOptions::MAX_PAGES
            | FuseOptions::PARALLEL_DIROPS;
        if opts.cache == CacheMode::Auto {
            init_extra |= FuseOptions::AUTO_INVAL_DATA;
        }
        Ok(ConfinedFs {
            inner,
            held: Mutex::new(Held::default()),
            max_fds,
            refused: AtomicBool::new(false),
            root_id: (st.st_dev, st.st_ino),
            init_allowed,
            init_extra,
        })
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self) -> io::Error {
        if !self.refused.swap(true, Ordering::Relaxed) {
            log::warn!(
                "virtio-fs: the guest holds {} inodes and open files, the most allowed; \
                 answering ENFILE until it forgets or closes some (logged once)",
                self.max_fds
            );
        }
        enfile()
    }

    /// `ENFILE` unless `n` more inodes or handles fit. Checked before
    /// anything is created, so a refused CREATE/MKDIR leaves nothing behind.
    fn room_for(&self, n: usize) -> io::Result<()> {
        if self.held().used() + n > self.max_fds {
            return Err(self.refuse());
        }
        Ok(())
    }

    /// Whether a lookup of `inode` may be handed to the guest now.
    fn admissible(&self, inode: Inode) -> bool {
        let held = self.held();
        inode == 0
            || inode == ROOT_ID
            || held.inodes.contains_key(&inode)
            || held.used() < self.max_fds
    }

    /// Counts one lookup of `inode` handed to the guest.
    fn count_lookup(&self, inode: Inode) {
        if inode != 0 && inode != ROOT_ID {
            let mut held = self.held();
            let n = held.inodes.entry(inode).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// An entry the inner file system made for the guest: counted, or if it
    /// is a new inode beyond the bound, given back and refused.
    fn admit(&self, ctx: &Context, entry: Entry) -> io::Result<Entry> {
        if !self.admissible(entry.inode) {
            self.inner.forget(ctx, entry.inode, 1);
            return Err(self.refuse());
        }
        self.count_lookup(entry.inode);
        Ok(entry)
    }

    fn forgotten(&self, inode: Inode, count: u64) {
        let mut held = self.held();
        if let Some(n) = held.inodes.get_mut(&inode) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                held.inodes.remove(&inode);
            }
        }
    }

    fn opened(&self, handle: Option<Handle>) {
        if handle.is_some() {
            self.held().handles += 1;
        }
    }

    fn released(&self) {
        let mut held = self.held();
        held.handles = held.handles.saturating_sub(1);
    }

    fn track_file(&self, handle: Option<Handle>, flags: u32) {
        if let Some(h) = handle {
            self.held().file_flags.insert(h, flags);
        }
    }

    /// The flags `handle` was opened with; EBADF for anything but an open
    /// file handle (a directory handle, a forged number).
    fn file_flags(&self, handle: Handle) -> io::Result<u32> {
        self.held()
            .file_flags
            .get(&handle)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Whether `inode` is the shared directory (by identity, not just by number).
    fn is_root(&self, ctx: &Context, inode: Inode) -> io::Result<bool> {
        if inode == ROOT_ID {
            return Ok(true);
        }
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        Ok((st.st_dev, st.st_ino) == self.root_id)
    }
}

impl FileSystem for ConfinedFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FuseOptions) -> io::Result<FuseOptions> {
        let want = self.inner.init(capable & self.init_allowed)?;
        Ok((want & self.init_allowed) | self.init_extra)
    }

    /// FUSE_DESTROY (guest unmount) keeps the inode and handle tables:
    /// `PassthroughFs::destroy` would clear them and re-open the root by path.
    /// They go away with the device; a new mount starts from the same root.
    fn destroy(&self) {}

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        check_lookup_name(name)?;
        if name.to_bytes() == b".." && self.is_root(ctx, parent)? {
            // Like a chroot: the parent of the root is the root.
            return self.inner.lookup(ctx, ROOT_ID, c".");
        }
        let entry = self.inner.lookup(ctx, parent, name)?;
        self.admit(ctx, entry)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.forgotten(inode, count);
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        for &(inode, count) in &requests {
            self.forgotten(inode, count);
        }
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    /// The link target is opaque text for the guest; only the name is checked.
    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        check_component(name)?;
        self.room_for(1)?;
        let entry = self.inner.symlink(ctx, linkname, parent, name)?;
        self.admit(ctx, entry)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_component(name)?;
        check_mknod(mode, rdev)?;
        self.room_for(1)?;
        let entry = self.inner.mknod(ctx, parent, name, mode, rdev, umask)?;
        self.admit(ctx, entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_component(name)?;
        self.room_for(1)?;
        let entry = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.admit(ctx, entry)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        check_component(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        check_component(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        check_component(oldname)?;
        check_component(newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        check_component(newname)?;
        let entry = self.inner.link(ctx, inode, newparent, newname)?;
        self.admit(ctx, entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        self.room_for(1)?;
        let flags = flags & !STRIPPED_OPEN_FLAGS;
        let r = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.opened(r.0);
        self.track_file(r.0, flags);
        Ok(r)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        check_component(name)?;
        let args = CreateIn {
            // PassthroughFs adds O_CREAT | O_EXCL itself and honours a guest
            // O_EXCL; the other stripped bits have no meaning here.
            flags: args.flags & !((libc::O_PATH | libc::O_NOCTTY | O_TMPFILE_BIT) as u32),
            ..args
        };
        self.room_for(2)?;
        let flags = args.flags;
        let (entry, handle, opts, passthrough) = self.inner.create(ctx, parent, name, args)?;
        self.opened(handle);
        self.track_file(handle, flags);
        // Counted even beyond the bound (room was checked): the file exists
        // and its handle is open, so refusing now would only leak both.
        self.count_lookup(entry.inode);
        Ok((entry, handle, opts, passthrough))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.file_flags(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let flags = self.file_flags(handle)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        self.released();
        self.held().file_flags.remove(&handle);
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        // PassthroughFs allocates `size` bytes up front.
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.room_for(1)?;
        let r = self
            .inner
            .opendir(ctx, inode, flags & !STRIPPED_OPEN_FLAGS)?;
        self.opened(r.0);
        Ok(r)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // PassthroughFs allocates `size` bytes up front.
        self.inner.readdir(
            ctx,
            inode,
            handle,
            size.min(MAX_BUFFER_SIZE),
            offset,
            add_entry,
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // Every entry is a lookup the guest then holds: same bound as LOOKUP.
        let mut added = false;
        let mut counted = |d: DirEntry, e: Entry| -> io::Result<usize> {
            let ino = e.inode;
            if !self.admissible(ino) {
                if added {
                    // "Buffer full": the inner fs gives the lookup back and
                    // the guest asks again from here (then gets ENFILE).
                    return Ok(0);
                }
                self.inner.forget(ctx, ino, 1);
                return Err(self.refuse());
            }
            let n = add_entry(d, e)?;
            if n > 0 {
                self.count_lookup(ino);
                added = true;
            }
            Ok(n)
        };
        self.inner.readdirplus(
            ctx,
            inode,
            handle,
            size.min(MAX_BUFFER_SIZE),
            offset,
            &mut counted,
        )
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)?;
        self.released();
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    // Not delegated, so ENOSYS (the trait defaults): getlk/setlk/setlkw (the
    // guest kernel then handles locks locally), ioctl, bmap, poll,
    // setupmapping/removemapping (no DAX window), notify_reply.
}

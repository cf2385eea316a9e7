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

use std::ffi::CStr;
use std::io;
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

pub(crate) struct ConfinedFs {
    inner: PassthroughFs<()>,
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
    pub fn new(root: &str, opts: &FsOptions) -> io::Result<ConfinedFs> {
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
            root_id: (st.st_dev, st.st_ino),
            init_allowed,
            init_extra,
        })
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
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
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
        self.inner.symlink(ctx, linkname, parent, name)
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
        self.inner.mknod(ctx, parent, name, mode, rdev, umask)
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
        self.inner.mkdir(ctx, parent, name, mode, umask)
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
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        self.inner
            .open(ctx, inode, flags & !STRIPPED_OPEN_FLAGS, fuse_flags)
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
        self.inner.create(ctx, parent, name, args)
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
        flags: u32,
    ) -> io::Result<usize> {
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
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
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
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
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
        self.inner.opendir(ctx, inode, flags & !STRIPPED_OPEN_FLAGS)
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
        self.inner.readdirplus(
            ctx,
            inode,
            handle,
            size.min(MAX_BUFFER_SIZE),
            offset,
            add_entry,
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
        self.inner.releasedir(ctx, inode, flags, handle)
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

//! The sandbox's shared directory: what the VM sees over virtio-fs.
//!
//! One small tmpfs per sandbox on `<state dir>/share` (private, or shared by
//! the shim so containers staged later reach the VMM; nothing propagates to
//! the rest of the host). For container `<id>` it holds `<id>/rootfs` (a
//! recursive bind of the bundle's rootfs) and `<id>/mounts/<n>` (a bind of the
//! n-th mount's source: podman's /etc/hosts, resolv.conf, volumes). The spec
//! sent to the agent is rewritten to the guest paths of those binds, so one
//! virtio-fs device serves them all.
//!
//! The guest is hostile (docs/security.md), so what must hold is enforced
//! here, on the host side, not by the agent:
//! - read-only as the spec says, with runc's semantics: `root.readonly` and a
//!   mount's `ro` make the bind's top mount read-only (its submounts keep
//!   their flags), `rro` makes every submount read-only too;
//! - every bind is `nosuid,nodev` all the way down;
//! - the tmpfs is our own mount with a fixed size and inode count, so even a
//!   guest that could write it could not fill the host's `/run`; the VMM's
//!   jail shows its top level read-only to the guest (`vmm/src/jail/mount.rs`);
//! - staging and unstaging work on descriptors (`mountfd`): no path the
//!   guest could have planted a symlink in is ever followed, binds are made
//!   read-only before they are attached, and no removal crosses a mount.

use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

use husk_protocol::SHARE_MOUNT;

use super::mountfd::{self, ATTR_NODEV, ATTR_NOEXEC, ATTR_NOSUID, ATTR_RDONLY};
use super::mountpoints;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot bind {src} to {dst}: {err}")]
    Bind {
        src: PathBuf,
        dst: PathBuf,
        err: std::io::Error,
    },
    #[error("mounts[{0}]: bind source {1} does not exist")]
    MissingSource(usize, PathBuf),
    #[error("cannot unmount {0}: {1}")]
    Unmount(PathBuf, std::io::Error),
    #[error("cannot remove {0}: {1}")]
    Remove(PathBuf, mountfd::RemoveError),
    #[error("{0} is already staged in the share")]
    Exists(String),
    #[error("invalid container ID format")]
    InvalidId(String),
    #[error("root.readonly: cannot create the mount point {0} in the rootfs: {1}")]
    MountPoint(PathBuf, std::io::Error),
}

pub(crate) fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// How a bind is made read-only on the host, from the spec's options (the
/// last of `ro`/`rw`, and of `rro`/`rrw`, wins, as in runc).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadOnly {
    /// The bind's own (top) mount.
    pub top: bool,
    /// Every submount too.
    pub recursive: bool,
    /// `rnoexec` (last of `rnoexec`/`rexec`): noexec all the way down, on
    /// the host too (issue 15). nosuid/nodev are always on here.
    pub noexec: bool,
}

impl ReadOnly {
    pub fn from_options(options: &[String]) -> ReadOnly {
        let mut r = ReadOnly::default();
        for o in options {
            match o.as_str() {
                "ro" => r.top = true,
                "rw" => r.top = false,
                "rro" => r.recursive = true,
                "rrw" => r.recursive = false,
                "rnoexec" => r.noexec = true,
                "rexec" => r.noexec = false,
                _ => {}
            }
        }
        r
    }
}

/// Clones `src` (recursively for an rbind), gives the detached copy its
/// host-side attributes and only then attaches it on `dst`: there is no
/// moment at which a read-only bind is writable, or one with devices exists.
fn bind_at(
    src: &Path,
    recursive: bool,
    ro: ReadOnly,
    dst: std::os::fd::BorrowedFd<'_>,
    shown: &Path,
) -> Result<(), ShareError> {
    let e = |err| ShareError::Bind {
        src: src.into(),
        dst: shown.into(),
        err,
    };
    let tree = mountfd::clone_tree(src, recursive).map_err(e)?;
    let mut all = ATTR_NOSUID | ATTR_NODEV;
    if ro.recursive {
        all |= ATTR_RDONLY;
    }
    if ro.noexec {
        all |= ATTR_NOEXEC;
    }
    mountfd::set_attrs(tree.as_fd(), true, all, 0).map_err(e)?;
    if ro.top {
        mountfd::set_attrs(tree.as_fd(), false, ATTR_RDONLY, 0).map_err(e)?;
    }
    mountfd::attach(tree.as_fd(), dst).map_err(e)
}

fn mkdir_in(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    shown: &Path,
) -> Result<std::os::fd::OwnedFd, ShareError> {
    mountfd::mkdir_new(dir, name, 0o755).map_err(|e| ShareError::Create(shown.into(), e))
}

fn check_id(id: &str) -> Result<(), ShareError> {
    if husk_protocol::valid_container_id(id) {
        Ok(())
    } else {
        Err(ShareError::InvalidId(id.into()))
    }
}

/// Mounts the share's tmpfs on `share` (idempotent), private.
pub fn prepare(share: &Path) -> Result<(), ShareError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(share)
        .map_err(|e| ShareError::Create(share.into(), e))?;
    let mounted =
        mountfd::is_mount_point(share).map_err(|e| ShareError::Create(share.into(), e))?;
    let err = |err: nix::Error| ShareError::Bind {
        src: "husk-share".into(),
        dst: share.into(),
        err: err.into(),
    };
    if !mounted {
        // Only directories and empty mount-point files live here: 1 MiB and
        // 16k inodes is room for thousands of containers, and a hard bound
        // on what anyone could put in the host's /run through it.
        mount(
            Some("husk-share"),
            share,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=1m,nr_inodes=16384,mode=0755"),
        )
        .map_err(err)?;
    }
    mount(
        None::<&str>,
        share,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err)
}

/// Stages container `id` into `share` and rewrites `spec` for the guest.
pub fn stage(
    share: &Path,
    id: &str,
    bundle: &Path,
    rootfs: &Path,
    spec: &mut Spec,
) -> Result<(), ShareError> {
    check_id(id)?;
    let guest_base = Path::new(SHARE_MOUNT).join(id);
    let base_path = share.join(id);
    let anchor = mountfd::open_anchor(share).map_err(|e| ShareError::Create(share.into(), e))?;
    let base = match mountfd::mkdir_new(anchor.as_fd(), id, 0o755) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ShareError::Exists(id.into()))
        }
        r => r.map_err(|e| ShareError::Create(base_path.clone(), e))?,
    };
    let readonly = spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly() == Some(true));
    if readonly {
        // The guest cannot make its mount points in a rootfs the host keeps
        // read-only: make them now, as runc does before its remount.
        mountpoints::create(rootfs, bundle, spec)?;
    }
    let root_path = base_path.join("rootfs");
    let root_dst = mkdir_in(base.as_fd(), "rootfs", &root_path)?;
    let ro = ReadOnly {
        top: readonly,
        ..ReadOnly::default()
    };
    bind_at(rootfs, true, ro, root_dst.as_fd(), &root_path)?;
    if let Some(root) = spec.root_mut() {
        root.set_path(guest_base.join("rootfs"));
    }
    let mounts_path = base_path.join("mounts");
    let mut mounts_dir = None;
    for (i, m) in spec.mounts_mut().iter_mut().flatten().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let Some(src) = m.source().clone() else {
            continue;
        };
        let src = if src.is_absolute() {
            src
        } else {
            bundle.join(src)
        };
        let meta =
            std::fs::metadata(&src).map_err(|_| ShareError::MissingSource(i, src.clone()))?;
        let dir = match &mounts_dir {
            Some(d) => d,
            None => mounts_dir.insert(mkdir_in(base.as_fd(), "mounts", &mounts_path)?),
        };
        let name = i.to_string();
        let dst_path = mounts_path.join(&name);
        let dst = if meta.is_dir() {
            mkdir_in(dir.as_fd(), &name, &dst_path)?
        } else {
            mountfd::create_new(dir.as_fd(), &name)
                .map_err(|e| ShareError::Create(dst_path.clone(), e))?
        };
        let options = m.options().clone().unwrap_or_default();
        let recursive = options.iter().any(|o| o == "rbind");
        let ro = ReadOnly::from_options(&options);
        bind_at(&src, recursive, ro, dst.as_fd(), &dst_path)?;
        if recursive {
            // Issue 15: the guest sees the whole rbind as one virtio-fs
            // mount, so its `ro` (and other top-only flags) would reach the
            // host submounts too. Name them for the agent, which makes each
            // a guest mount of its own first (agent mounts::bind_submounts).
            let mut options = options;
            options.extend(
                submounts_of(&dst_path)
                    .into_iter()
                    .map(|r| format!("x-husk-submount={}", r.display())),
            );
            m.set_options(Some(options));
        }
        m.set_source(Some(guest_base.join("mounts").join(name)));
    }
    Ok(())
}

/// Unmounts and removes `<share>/<id>` (what [`stage`] made for one
/// container) while the share stays in use: each bind is detached without
/// following symlinks, and the removal never enters a mount, so whatever
/// is still mounted (or was moved) below is left alone, not deleted.
pub fn unstage(share: &Path, id: &str) -> Result<(), ShareError> {
    check_id(id)?;
    let base = share.join(id);
    for _ in 0..4 {
        let mounts = mounts_below(&base);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            detach_quietly(&m)?;
        }
    }
    let anchor = mountfd::open_anchor(share).map_err(|e| ShareError::Create(share.into(), e))?;
    mountfd::remove_tree(anchor.as_fd(), id).map_err(|e| ShareError::Remove(base, e))
}

fn detach_quietly(m: &Path) -> Result<(), ShareError> {
    match mountfd::detach(m) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => Ok(()),
        Err(e) => Err(ShareError::Unmount(m.into(), e)),
    }
}

/// The mounts strictly below the staged bind at `dst`, relative to it.
fn submounts_of(dst: &Path) -> Vec<PathBuf> {
    let dst = std::fs::canonicalize(dst).unwrap_or_else(|_| dst.to_path_buf());
    let mut v: Vec<PathBuf> = mounts_below(&dst)
        .into_iter()
        .filter_map(|p| p.strip_prefix(&dst).ok().map(Path::to_path_buf))
        .filter(|r| !r.as_os_str().is_empty())
        .collect();
    v.sort();
    v
}

/// Every mount point at or below `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                let v = u32::from(d[0] - b'0') << 6
                    | u32::from(d[1] - b'0') << 3
                    | u32::from(d[2] - b'0');
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Unmounts everything staged below `share` (and `share` itself) and removes
/// the directory. Safe to call in any state, and more than once.
pub fn teardown(share: &Path) -> Result<(), ShareError> {
    // The share is a mount of its own: one lazy detach takes every bind
    // staged below it in the same step (a busy one, a dying VMM's, too), so
    // the removal after it has nothing to walk into.
    for _ in 0..8 {
        match mountfd::is_mount_point(share) {
            Ok(true) => detach_quietly(share)?,
            Ok(false) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ShareError::Unmount(share.into(), e)),
        }
    }
    // Shares of older husk versions (a self-bind, already detached above)
    // and leftovers: anything mounted below goes first, deepest first.
    for _ in 0..4 {
        let mounts = mounts_below(share);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            detach_quietly(&m)?;
        }
    }
    let (Some(parent), Some(name)) = (share.parent(), share.file_name()) else {
        return Ok(());
    };
    let anchor = match mountfd::open_anchor(parent) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ShareError::Create(parent.into(), e)),
    };
    mountfd::remove_tree(anchor.as_fd(), &name.to_string_lossy())
        .map_err(|e| ShareError::Remove(share.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// Runs `f` in a forked child in a private mount namespace (unshare needs
    /// a single-threaded caller; libtest's is not) and fails if it fails.
    /// Needs root, as `husk` does.
    fn in_private_mount_ns(f: impl FnOnce(&Path) -> Result<(), String>) {
        let t = tmpdir();
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};
        // SAFETY: the child only makes syscalls and small allocations, then _exits.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let r = (|| {
                    // SAFETY: flags only.
                    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
                    }
                    mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .map_err(|e| format!("make / private: {e}"))?;
                    f(&t)
                })();
                let code = match r {
                    Ok(()) => 0,
                    Err(e) => {
                        // Raw write: libtest's capture does not reach a forked child.
                        let msg = format!("in child: {e}\n");
                        let _ = nix::unistd::write(std::io::stderr(), msg.as_bytes());
                        1
                    }
                };
                // SAFETY: ends the child without running the parent's atexit state.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                let status = waitpid(child, None).expect("waitpid");
                // The child's mounts went with its namespace.
                let _ = std::fs::remove_dir_all(&t);
                assert_eq!(
                    status,
                    WaitStatus::Exited(child, 0),
                    "the scenario failed (see stderr)"
                );
            }
        }
    }

    macro_rules! check {
        ($c:expr, $($m:tt)*) => {
            if !$c {
                return Err(format!($($m)*));
            }
        };
    }

    fn tmpdir() -> PathBuf {
        let t = nix::unistd::mkdtemp("/tmp/husk-share-test.XXXXXX").expect("mkdtemp");
        std::fs::canonicalize(t).expect("canonicalize")
    }

    fn spec_with(mounts: serde_json::Value, readonly: bool) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": readonly},
            "mounts": mounts,
        }))
        .expect("spec")
    }

    fn flags(p: &Path) -> nix::sys::statvfs::FsFlags {
        nix::sys::statvfs::statvfs(p).expect("statvfs").flags()
    }

    fn writable(p: &Path) -> bool {
        std::fs::write(p.join("probe"), b"x").is_ok()
    }

    fn erofs(p: &Path) -> bool {
        let r = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(p.join("probe"));
        matches!(r, Err(e) if e.raw_os_error() == Some(libc::EROFS))
    }

    fn tmpfs_on(p: &Path) -> Result<(), String> {
        std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("tmpfs on {}: {e}", p.display()))
    }

    fn is_mount_point(p: &Path) -> bool {
        mounts_below(p).iter().any(|m| m == p)
    }

    /// F1: `ro`, `rro` and `root.readonly` hold on the host side, with
    /// runc's semantics, and every bind is nosuid,nodev.
    #[test]
    fn read_only_is_enforced_on_the_host() {
        in_private_mount_ns(|t| {
            use nix::sys::statvfs::FsFlags;
            let (vol, tree, rootfs, share) = (
                t.join("vol"),
                t.join("tree"),
                t.join("rootfs"),
                t.join("share"),
            );
            for d in [&vol, &rootfs] {
                std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
            }
            tmpfs_on(&tree)?;
            tmpfs_on(&tree.join("sub"))?;
            std::fs::write(t.join("hosts"), b"127.0.0.1 x\n").map_err(|e| e.to_string())?;
            let mut spec = spec_with(
                serde_json::json!([
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/ro", "type": "bind", "source": vol, "options": ["rbind", "ro"]},
                    {"destination": "/tree", "type": "bind", "source": tree, "options": ["rbind", "ro"]},
                    {"destination": "/rtree", "type": "bind", "source": tree, "options": ["rbind", "rro"]},
                    {"destination": "/rw", "type": "bind", "source": vol, "options": ["bind", "rw"]},
                    {"destination": "/etc/hosts", "type": "bind", "source": t.join("hosts"), "options": ["bind", "ro"]},
                    {"destination": "/proc/sub", "type": "bind", "source": vol, "options": ["bind"]},
                    {"destination": "/xtree", "type": "bind", "source": tree, "options": ["rbind", "rnoexec"]},
                ]),
                true,
            );
            prepare(&share).map_err(|e| e.to_string())?;
            stage(&share, "c1", t, &rootfs, &mut spec).map_err(|e| e.to_string())?;
            let m = share.join("c1/mounts");
            check!(
                flags(&m.join("1")).contains(FsFlags::ST_RDONLY) && erofs(&m.join("1")),
                "`ro` volume writable on the host"
            );
            check!(erofs(&m.join("2")), "`ro` rbind top mount writable");
            check!(
                writable(&m.join("2/sub")),
                "`ro` rbind made a submount read-only (runc leaves it)"
            );
            check!(erofs(&m.join("3/sub")), "`rro` submount writable");
            check!(writable(&m.join("4")), "`rw` volume not writable");
            check!(
                std::fs::write(m.join("5"), b"x").is_err(),
                "`ro` file bind writable"
            );
            for i in ["1", "2", "2/sub", "3/sub", "4"] {
                let f = flags(&m.join(i));
                check!(
                    f.contains(FsFlags::ST_NOSUID) && f.contains(FsFlags::ST_NODEV),
                    "mounts/{i} not nosuid,nodev: {f:?}"
                );
            }
            for i in ["7", "7/sub"] {
                check!(
                    flags(&m.join(i)).contains(FsFlags::ST_NOEXEC),
                    "`rnoexec` mounts/{i} not noexec on the host"
                );
            }
            check!(
                !flags(&m.join("2")).contains(FsFlags::ST_NOEXEC),
                "noexec without `rnoexec`"
            );
            // The host submounts of an rbind are named for the agent.
            let opts = |i: usize| spec.mounts().as_ref().unwrap()[i].options().clone();
            check!(
                opts(2)
                    == Some(vec![
                        "rbind".into(),
                        "ro".into(),
                        "x-husk-submount=sub".into()
                    ]),
                "rbind submounts not named: {:?}",
                opts(2)
            );
            check!(
                opts(1) == Some(vec!["rbind".into(), "ro".into()]),
                "submounts named where there are none: {:?}",
                opts(1)
            );
            let root = share.join("c1/rootfs");
            check!(erofs(&root), "root.readonly rootfs writable on the host");
            // Made on the host before the read-only bind; /proc/sub lands
            // in the guest's /proc, not in the rootfs.
            check!(rootfs.join("proc").is_dir(), "no /proc mount point");
            check!(rootfs.join("ro").is_dir(), "no /ro mount point");
            check!(rootfs.join("etc/hosts").is_file(), "no /etc/hosts file");
            check!(
                !rootfs.join("proc/sub").exists(),
                "/proc/sub made in the rootfs"
            );
            check!(
                spec.root().as_ref().map(|r| r.path().clone())
                    == Some(PathBuf::from(SHARE_MOUNT).join("c1/rootfs")),
                "root path not rewritten"
            );
            Ok(())
        });
    }

    /// F1 with root.readonly: mount points are made inside the rootfs even
    /// through the image's own symlinks, never outside it.
    #[test]
    fn mount_points_stay_inside_the_rootfs() {
        in_private_mount_ns(|t| {
            let (rootfs, share, outside) = (t.join("rootfs"), t.join("share"), t.join("outside"));
            std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&outside).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&outside, rootfs.join("evil")).map_err(|e| e.to_string())?;
            let mut spec = spec_with(
                serde_json::json!([
                    {"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"},
                    {"destination": "/../../up", "type": "tmpfs", "source": "tmpfs"},
                ]),
                true,
            );
            prepare(&share).map_err(|e| e.to_string())?;
            stage(&share, "c1", t, &rootfs, &mut spec).map_err(|e| e.to_string())?;
            check!(
                !outside.join("x").exists(),
                "mount point made outside the rootfs"
            );
            check!(!t.join("up").exists(), "`..` left the rootfs");
            check!(rootfs.join("up").is_dir(), "`..` not clamped at the root");
            check!(
                rootfs
                    .join(outside.strip_prefix("/").unwrap_or(&outside))
                    .join("x")
                    .is_dir(),
                "the absolute symlink did not resolve inside the rootfs"
            );
            Ok(())
        });
    }

    /// F2 (attack A): what a guest planted in the share is never followed:
    /// no host file truncated, no host directory mounted over.
    #[test]
    fn staging_refuses_planted_symlinks() {
        in_private_mount_ns(|t| {
            let (vol, rootfs, share) = (t.join("vol"), t.join("rootfs"), t.join("share"));
            let (victim, victim_dir) = (t.join("victim"), t.join("victim_dir"));
            for d in [&vol, &rootfs, &victim_dir] {
                std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
            }
            std::fs::write(&victim, b"secret").map_err(|e| e.to_string())?;
            std::fs::write(t.join("hosts"), b"hosts").map_err(|e| e.to_string())?;
            prepare(&share).map_err(|e| e.to_string())?;
            // A guest that could write the share plants links for c2 and c3.
            std::fs::create_dir_all(share.join("c2/mounts")).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&victim, share.join("c2/mounts/0"))
                .map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&victim_dir, share.join("c2/mounts/1"))
                .map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&victim_dir, share.join("c3")).map_err(|e| e.to_string())?;
            let mounts = serde_json::json!([
                {"destination": "/etc/hosts", "type": "bind", "source": t.join("hosts"), "options": ["bind"]},
                {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind"]},
            ]);
            for id in ["c2", "c3"] {
                let mut spec = spec_with(mounts.clone(), false);
                check!(
                    stage(&share, id, t, &rootfs, &mut spec).is_err(),
                    "staging {id} over planted links succeeded"
                );
            }
            check!(
                std::fs::read(&victim).map_err(|e| e.to_string())? == b"secret",
                "host file truncated or mounted over"
            );
            check!(!is_mount_point(&victim), "host file mounted over");
            check!(!is_mount_point(&victim_dir), "host directory mounted over");
            check!(
                std::fs::read_dir(&victim_dir)
                    .map_err(|e| e.to_string())?
                    .count()
                    == 0,
                "something was created in the host directory"
            );
            Ok(())
        });
    }

    fn volume_with_file(t: &Path, name: &str) -> Result<PathBuf, String> {
        let v = t.join(name);
        std::fs::create_dir_all(&v).map_err(|e| e.to_string())?;
        std::fs::write(v.join("keep"), b"data").map_err(|e| e.to_string())?;
        Ok(v)
    }

    fn stage_with_volume(share: &Path, t: &Path, id: &str, vol: &Path) -> Result<(), String> {
        let rootfs = t.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
        let mut spec = spec_with(
            serde_json::json!([
                {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind"]},
            ]),
            false,
        );
        stage(share, id, t, &rootfs, &mut spec).map_err(|e| e.to_string())
    }

    /// F2 (attack B): a container's volume moved under another container's
    /// directory (a guest's rename) is not deleted when that one is unstaged.
    #[test]
    fn unstage_never_deletes_through_a_mount() {
        in_private_mount_ns(|t| {
            let share = t.join("share");
            prepare(&share).map_err(|e| e.to_string())?;
            let vol = volume_with_file(t, "vol")?;
            let other = volume_with_file(t, "other")?;
            stage_with_volume(&share, t, "c1", &other)?;
            stage_with_volume(&share, t, "c3", &vol)?;
            // The rename a guest would do between the unmounts and the removal.
            std::fs::create_dir(share.join("c1/zz")).map_err(|e| e.to_string())?;
            std::fs::rename(share.join("c3/mounts"), share.join("c1/zz/m"))
                .map_err(|e| e.to_string())?;
            let anchor = mountfd::open_anchor(&share).map_err(|e| e.to_string())?;
            let r = mountfd::remove_tree(anchor.as_fd(), "c1");
            check!(
                matches!(r, Err(mountfd::RemoveError::CrossesMount(_))),
                "removal walked into a mount: {r:?}"
            );
            check!(vol.join("keep").exists(), "host volume content deleted");
            // The whole unstage: detaches what is below, then removes.
            unstage(&share, "c1").map_err(|e| e.to_string())?;
            check!(
                vol.join("keep").exists(),
                "host volume content deleted by unstage"
            );
            check!(!share.join("c1").exists(), "c1 left behind");
            unstage(&share, "c3").map_err(|e| e.to_string())?;
            check!(!share.join("c3").exists(), "c3 left behind");
            Ok(())
        });
    }

    /// F11: teardown never deletes host data, whatever is mounted below the
    /// share when it runs (a concurrent create's binds).
    #[test]
    fn teardown_never_deletes_through_a_mount() {
        in_private_mount_ns(|t| {
            let share = t.join("share");
            prepare(&share).map_err(|e| e.to_string())?;
            let vol = volume_with_file(t, "vol")?;
            stage_with_volume(&share, t, "c1", &vol)?;
            teardown(&share).map_err(|e| e.to_string())?;
            check!(vol.join("keep").exists(), "host volume content deleted");
            check!(!share.exists(), "share left behind");
            teardown(&share).map_err(|e| e.to_string())?;
            // The old layout (a directory, not a mount of its own), with a
            // bind that lands after the mount list was read: removal refuses.
            std::fs::create_dir_all(share.join("x/y")).map_err(|e| e.to_string())?;
            mount(
                Some(&vol),
                &share.join("x/y"),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| e.to_string())?;
            let anchor: OwnedFd = mountfd::open_anchor(t).map_err(|e| e.to_string())?;
            check!(
                mountfd::remove_tree(anchor.as_fd(), "share").is_err(),
                "removal walked into a bind"
            );
            check!(vol.join("keep").exists(), "host volume content deleted");
            teardown(&share).map_err(|e| e.to_string())?;
            check!(
                vol.join("keep").exists(),
                "host volume content deleted by teardown"
            );
            check!(!share.exists(), "old-layout share left behind");
            Ok(())
        });
    }

    #[test]
    fn read_only_options() {
        let o = |v: &[&str]| {
            ReadOnly::from_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            o(&["rbind", "ro"]),
            ReadOnly {
                top: true,
                ..Default::default()
            }
        );
        assert_eq!(o(&["ro", "rw"]), ReadOnly::default());
        assert_eq!(
            o(&["rro"]),
            ReadOnly {
                recursive: true,
                ..Default::default()
            }
        );
        assert_eq!(
            o(&["rro", "rrw", "ro"]),
            ReadOnly {
                top: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn noexec_options() {
        let o = |v: &[&str]| {
            ReadOnly::from_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).noexec
        };
        assert!(o(&["rbind", "rnoexec"]));
        assert!(!o(&["rnoexec", "rexec"]));
        assert!(!o(&["noexec"]));
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/é\\134x"), "/é\\x");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }
}

//! Mounts in the container's mount namespace (runs in the container init).

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use libc::c_ulong;
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount};

use super::init::InitConfig;
use super::spec;

/// A mount's `options` split into flags, propagation changes, recursive
/// attributes and fs data.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountOpts {
    pub flags: c_ulong,
    pub propagation: Vec<c_ulong>,
    /// `MOUNT_ATTR_*` set and cleared on the mount and every submount
    /// (`rro`, `rnosuid`, ...: mount_setattr with AT_RECURSIVE).
    pub rec_set: u64,
    pub rec_clr: u64,
    /// Paths below a bind's source that are mounts of their own on the host
    /// (`x-husk-submount=`, added by the runtime's share): made guest mounts
    /// of their own too, so the bind's flags stay off them as in runc.
    pub submounts: Vec<PathBuf>,
    pub data: Vec<String>,
}

/// The option naming a host submount of a bind's source (see `MountOpts`).
pub const SUBMOUNT_OPTION: &str = "x-husk-submount=";

/// runc's recursive attributes: (name, clear, MOUNT_ATTR_* flag).
const RECURSIVE_ATTRS: [(&str, bool, u64); 18] = [
    ("rro", false, libc::MOUNT_ATTR_RDONLY),
    ("rrw", true, libc::MOUNT_ATTR_RDONLY),
    ("rnosuid", false, libc::MOUNT_ATTR_NOSUID),
    ("rsuid", true, libc::MOUNT_ATTR_NOSUID),
    ("rnodev", false, libc::MOUNT_ATTR_NODEV),
    ("rdev", true, libc::MOUNT_ATTR_NODEV),
    ("rnoexec", false, libc::MOUNT_ATTR_NOEXEC),
    ("rexec", true, libc::MOUNT_ATTR_NOEXEC),
    ("rnodiratime", false, libc::MOUNT_ATTR_NODIRATIME),
    ("rdiratime", true, libc::MOUNT_ATTR_NODIRATIME),
    ("rrelatime", false, libc::MOUNT_ATTR_RELATIME),
    ("rnorelatime", true, libc::MOUNT_ATTR_RELATIME),
    ("rnoatime", false, libc::MOUNT_ATTR_NOATIME),
    ("ratime", true, libc::MOUNT_ATTR_NOATIME),
    ("rstrictatime", false, libc::MOUNT_ATTR_STRICTATIME),
    ("rnostrictatime", true, libc::MOUNT_ATTR_STRICTATIME),
    ("rnosymfollow", false, libc::MOUNT_ATTR_NOSYMFOLLOW),
    ("rsymfollow", true, libc::MOUNT_ATTR_NOSYMFOLLOW),
];

/// Flag for a propagation option ("rslave" → MS_SLAVE|MS_REC).
pub fn propagation_flag(o: &str) -> Option<c_ulong> {
    Some(match o {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// runc's option table: known names become flags (set or cleared), the rest
/// is filesystem data.
pub fn parse_options(options: &[String]) -> MountOpts {
    let mut m = MountOpts::default();
    for o in options {
        let (clear, set): (bool, c_ulong) = match o.as_str() {
            "acl" => (false, libc::MS_POSIXACL),
            "async" => (true, libc::MS_SYNCHRONOUS),
            "atime" => (true, libc::MS_NOATIME),
            "bind" => (false, libc::MS_BIND),
            "defaults" => (false, 0),
            "dev" => (true, libc::MS_NODEV),
            "diratime" => (true, libc::MS_NODIRATIME),
            "dirsync" => (false, libc::MS_DIRSYNC),
            "exec" => (true, libc::MS_NOEXEC),
            "iversion" => (false, libc::MS_I_VERSION),
            "lazytime" => (false, libc::MS_LAZYTIME),
            "loud" => (true, libc::MS_SILENT),
            "mand" => (false, libc::MS_MANDLOCK),
            "noacl" => (true, libc::MS_POSIXACL),
            "noatime" => (false, libc::MS_NOATIME),
            "nodev" => (false, libc::MS_NODEV),
            "nodiratime" => (false, libc::MS_NODIRATIME),
            "noexec" => (false, libc::MS_NOEXEC),
            "noiversion" => (true, libc::MS_I_VERSION),
            "nolazytime" => (true, libc::MS_LAZYTIME),
            "nomand" => (true, libc::MS_MANDLOCK),
            "norelatime" => (true, libc::MS_RELATIME),
            "nostrictatime" => (true, libc::MS_STRICTATIME),
            "nosuid" => (false, libc::MS_NOSUID),
            "nosymfollow" => (false, libc::MS_NOSYMFOLLOW),
            "rbind" => (false, libc::MS_BIND | libc::MS_REC),
            "relatime" => (false, libc::MS_RELATIME),
            "remount" => (false, libc::MS_REMOUNT),
            "ro" => (false, libc::MS_RDONLY),
            "rw" => (true, libc::MS_RDONLY),
            "silent" => (false, libc::MS_SILENT),
            "strictatime" => (false, libc::MS_STRICTATIME),
            "suid" => (true, libc::MS_NOSUID),
            "symfollow" => (true, libc::MS_NOSYMFOLLOW),
            "sync" => (false, libc::MS_SYNCHRONOUS),
            "tmpcopyup" => (false, 0),
            other => {
                if let Some(p) = propagation_flag(other) {
                    m.propagation.push(p);
                } else if let Some(&(_, clear, flag)) =
                    RECURSIVE_ATTRS.iter().find(|(n, _, _)| *n == other)
                {
                    // As runc: an access-time mode is set by clearing the
                    // whole MOUNT_ATTR__ATIME field along with it.
                    if clear {
                        m.rec_clr |= flag;
                    } else {
                        m.rec_set |= flag;
                        if flag & libc::MOUNT_ATTR__ATIME == flag {
                            m.rec_clr |= libc::MOUNT_ATTR__ATIME;
                        }
                    }
                } else if let Some(p) = other.strip_prefix(SUBMOUNT_OPTION) {
                    m.submounts.push(PathBuf::from(p));
                } else {
                    m.data.push(other.to_string());
                }
                continue;
            }
        };
        if clear {
            m.flags &= !set;
        } else {
            m.flags |= set;
        }
    }
    m
}

/// `root` joined with `unsafe_path`, resolving symlinks as if `root` were
/// `/`: nothing resolves outside `root` (filepath-securejoin's semantics).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf, String> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = unsafe_path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match Path::new(&c).components().next() {
            None
            | Some(Component::RootDir)
            | Some(Component::CurDir)
            | Some(Component::Prefix(_)) => {}
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Normal(name)) => {
                let candidate = root.join(&resolved).join(name);
                match fs::symlink_metadata(&candidate) {
                    Ok(md) if md.file_type().is_symlink() => {
                        links += 1;
                        if links > 255 {
                            return Err(format!(
                                "{}: too many levels of symbolic links",
                                unsafe_path.display()
                            ));
                        }
                        let target = fs::read_link(&candidate)
                            .map_err(|e| format!("readlink {}: {e}", candidate.display()))?;
                        if target.is_absolute() {
                            resolved = PathBuf::new();
                        }
                        for tc in target.components().rev() {
                            pending.push(PathBuf::from(tc.as_os_str()));
                        }
                    }
                    _ => resolved.push(name),
                }
            }
        }
    }
    Ok(root.join(resolved))
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path contains NUL", p.display()))
}

/// mount(2) with an error message naming everything.
pub fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let s = src.map(cstr).transpose()?;
    let d = cstr(dst)?;
    let t = fstype.map(|t| CString::new(t).unwrap_or_default());
    let dt = data
        .filter(|d| !d.is_empty())
        .map(|d| CString::new(d).unwrap_or_default());
    // SAFETY: valid C strings (or null) for the duration of the call.
    let rc = unsafe {
        libc::mount(
            s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            d.as_ptr(),
            t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            dt.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    let what = match (src, fstype) {
        (_, Some(t)) if flags & libc::MS_BIND == 0 && flags & libc::MS_REMOUNT == 0 => {
            format!("mount {t}")
        }
        (Some(s), _) if flags & libc::MS_BIND != 0 && flags & libc::MS_REMOUNT == 0 => {
            format!("bind mount {}", s.display())
        }
        _ if flags & libc::MS_REMOUNT != 0 => "remount".to_string(),
        _ => "change propagation of".to_string(),
    };
    Err(format!("{what} on {}: {e}", dst.display()))
}

/// Flags of the mount at `p` that an unprivileged remount must keep.
fn locked_flags(p: &Path) -> c_ulong {
    let Ok(st) = nix::sys::statvfs::statvfs(p) else {
        return 0;
    };
    let f = st.flags().bits();
    let mut out = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if f & st_flag != 0 {
            out |= ms;
        }
    }
    out
}

/// Remounts the bind mount at `p` with `flags` (ro, nosuid, ...), keeping
/// flags the kernel refuses to drop.
pub fn remount_bind(p: &Path, flags: c_ulong) -> Result<(), String> {
    let base = libc::MS_REMOUNT | libc::MS_BIND | flags;
    match mount(None, p, None, base, None) {
        Ok(()) => Ok(()),
        Err(e) => {
            let locked = locked_flags(p) & !libc::MS_RDONLY;
            if locked & !flags == 0 {
                return Err(e);
            }
            mount(None, p, None, base | locked, None)
        }
    }
}

fn mkdir_all(p: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// An empty file to bind a file onto.
fn touch(p: &Path) -> Result<(), String> {
    if let Some(parent) = p.parent() {
        mkdir_all(parent)?;
    }
    match fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(p)
    {
        Ok(_) => Ok(()),
        // an existing read-only file is a fine mount point too
        Err(_) if p.exists() => Ok(()),
        Err(e) => Err(format!("create {}: {e}", p.display())),
    }
}

const BIND_ONLY_FLAGS: c_ulong = libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT;

/// mount_setattr(2) with AT_RECURSIVE: `set`/`clr` on the mount at `p` and
/// every mount below it.
pub fn set_recursive_attrs(p: &Path, set: u64, clr: u64) -> Result<(), String> {
    if set == 0 && clr == 0 {
        return Ok(());
    }
    let c = cstr(p)?;
    let mut attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid path and a mount_attr of the size we pass; the kernel
    // only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "set recursive mount attributes on {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Binds each of a bind's host submounts onto itself in the guest, so that
/// they are guest mounts of their own before the bind's top is remounted:
/// over virtio-fs the whole source is one guest mount, and `ro` on it
/// would reach the submounts, which runc leaves as they are (the host keeps
/// their flags). Shallowest first; paths that are not there are skipped.
fn bind_submounts(dest: &Path, submounts: &[PathBuf]) -> Result<(), String> {
    let mut rel: Vec<&PathBuf> = submounts.iter().collect();
    rel.sort_by_key(|p| p.components().count());
    for r in rel {
        let inner = r.strip_prefix("/").unwrap_or(r);
        if inner.as_os_str().is_empty() {
            continue;
        }
        let p = secure_join(dest, inner)?;
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        mount(Some(&p), &p, None, libc::MS_BIND, None)?;
    }
    Ok(())
}

/// runc refuses to mount proc or sysfs anywhere but on a real directory
/// (or where nothing is yet): a symlink there could send it elsewhere.
fn check_proc_sys_destination(rootfs: &Path, m: &Mount, typ: &str) -> Result<(), String> {
    let dest = m.destination();
    let Some(name) = dest.file_name() else {
        return Ok(());
    };
    let parent = secure_join(rootfs, dest.parent().unwrap_or(Path::new("/")))?;
    match fs::symlink_metadata(parent.join(name)) {
        Ok(md) if !md.is_dir() => Err(format!(
            "filesystem {typ:?} must be mounted on ordinary directory"
        )),
        _ => Ok(()),
    }
}

fn mount_one(cfg: &InitConfig, rootfs: &Path, m: &Mount, i: usize) -> Result<bool, String> {
    let field = format!("mounts[{i}] ({})", m.destination().display());
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().clone().unwrap_or_default();
    let bind = typ == "bind" || opts.flags & libc::MS_BIND != 0;
    if !bind && matches!(typ.as_str(), "proc" | "sysfs") {
        check_proc_sys_destination(rootfs, m, &typ).map_err(|e| format!("{field}: {e}"))?;
    }
    let dest = secure_join(rootfs, m.destination()).map_err(|e| format!("{field}: {e}"))?;
    let spec = &cfg.spec;
    if bind {
        let src = m.source().clone().unwrap_or_default();
        let md =
            fs::metadata(&src).map_err(|e| format!("{field}: source {}: {e}", src.display()))?;
        if md.is_dir() {
            mkdir_all(&dest)
        } else {
            touch(&dest)
        }
        .map_err(|e| format!("{field}: {e}"))?;
        let rec = opts.flags & libc::MS_REC;
        let flags = libc::MS_BIND | rec;
        mount(Some(&src), &dest, None, flags, None).map_err(|e| format!("{field}: {e}"))?;
        if rec != 0 {
            bind_submounts(&dest, &opts.submounts).map_err(|e| format!("{field}: {e}"))?;
        }
        // As runc: the remount changes the top mount only (MS_REC does not
        // apply to a remount); `rro` and friends below are the recursive form.
        let extra = opts.flags & !BIND_ONLY_FLAGS;
        if extra != 0 {
            remount_bind(&dest, extra).map_err(|e| format!("{field}: {e}"))?;
        }
    } else {
        mkdir_all(&dest).map_err(|e| format!("{field}: {e}"))?;
        let mut flags = opts.flags;
        let mut data = opts.data.clone();
        let mut fstype = typ.clone();
        match typ.as_str() {
            "sysfs" if !spec::has_new_namespace(spec, LinuxNamespaceType::Network) => {
                // the guest's network devices are not the container's to change
                flags |= libc::MS_RDONLY;
            }
            "devpts" => {
                if !data.iter().any(|d| d == "newinstance") {
                    data.push("newinstance".into());
                }
                if !data.iter().any(|d| d.starts_with("ptmxmode=")) {
                    data.push("ptmxmode=0666".into());
                }
            }
            "cgroup" | "cgroup2" => {
                fstype = "cgroup2".into();
                if !spec::has_namespace(spec, LinuxNamespaceType::Cgroup) {
                    // Without a cgroup namespace show only the container's own
                    // cgroup, like runc does on cgroup v2.
                    let Some(cg) = &cfg.cgroup else {
                        return Err(format!("{field}: no cgroup to mount"));
                    };
                    mount(Some(cg), &dest, None, libc::MS_BIND | libc::MS_REC, None)
                        .map_err(|e| format!("{field}: {e}"))?;
                    let extra = flags & !BIND_ONLY_FLAGS;
                    if extra != 0 {
                        remount_bind(&dest, extra).map_err(|e| format!("{field}: {e}"))?;
                    }
                    set_recursive_attrs(&dest, opts.rec_set, opts.rec_clr)
                        .map_err(|e| format!("{field}: {e}"))?;
                    for p in &opts.propagation {
                        mount(None, &dest, None, *p, None).map_err(|e| format!("{field}: {e}"))?;
                    }
                    return Ok(false);
                }
            }
            _ => {}
        }
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&fstype));
        let data = data.join(",");
        mount(Some(&source), &dest, Some(&fstype), flags, Some(&data))
            .map_err(|e| format!("{field}: {e}"))?;
    }
    set_recursive_attrs(&dest, opts.rec_set, opts.rec_clr).map_err(|e| format!("{field}: {e}"))?;
    for p in &opts.propagation {
        mount(None, &dest, None, *p, None).map_err(|e| format!("{field}: {e}"))?;
    }
    Ok(!bind && m.destination() == Path::new("/dev"))
}

/// (name, major, minor) of the device nodes every container gets.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn mknod(p: &Path, kind: libc::mode_t, mode: u32, major: u64, minor: u64) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: plain syscall on a valid path.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            kind | (mode & 0o7777),
            libc::makedev(major as u32, minor as u32),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Creates a device node in the container's /dev: mknod when /dev is the
/// container's own tmpfs, otherwise a bind mount of the guest's node (no
/// device nodes are ever created in the shared rootfs).
/// A device node to create.
struct Node<'a> {
    path: &'a Path,
    kind: libc::mode_t,
    mode: u32,
    major: u64,
    minor: u64,
    owner: (u32, u32),
}

fn create_device(rootfs: &Path, dev_tmpfs: bool, node: &Node) -> Result<(), String> {
    let Node {
        path,
        kind,
        mode,
        major,
        minor,
        owner,
    } = *node;
    let dest = secure_join(rootfs, path)?;
    if let Some(parent) = dest.parent() {
        mkdir_all(parent)?;
    }
    if dev_tmpfs {
        let _ = fs::remove_file(&dest);
        match mknod(&dest, kind, mode, major, minor) {
            Ok(()) => {
                // mknod applied our umask
                fs::set_permissions(
                    &dest,
                    std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
                )
                .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
                nix::unistd::chown(
                    &dest,
                    Some(nix::unistd::Uid::from_raw(owner.0)),
                    Some(nix::unistd::Gid::from_raw(owner.1)),
                )
                .map_err(|e| format!("chown {}: {e}", dest.display()))?;
                return Ok(());
            }
            Err(e) if e.kind() != ErrorKind::PermissionDenied => {
                return Err(format!("mknod {}: {e}", dest.display()))
            }
            Err(_) => {} // no CAP_MKNOD: bind instead
        }
    }
    let guest = Path::new("/").join(path.strip_prefix("/").unwrap_or(path));
    if !guest.exists() {
        return Err(format!(
            "device {}: not present in the guest to bind from",
            path.display()
        ));
    }
    touch(&dest)?;
    mount(Some(&guest), &dest, None, libc::MS_BIND, None)
}

fn create_devices(cfg: &InitConfig, rootfs: &Path, dev_tmpfs: bool) -> Result<(), String> {
    let spec = &cfg.spec;
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for (name, major, minor) in DEFAULT_DEVICES {
        let p = PathBuf::from("/dev").join(name);
        if devices.iter().any(|d| d.path() == &p) {
            continue;
        }
        let node = Node {
            path: &p,
            kind: libc::S_IFCHR,
            mode: 0o666,
            major,
            minor,
            owner: (0, 0),
        };
        create_device(rootfs, dev_tmpfs, &node)?;
    }
    for (i, d) in devices.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(format!("linux.devices[{i}]: type \"a\" is not a device"))
            }
        };
        let node = Node {
            path: d.path(),
            kind,
            mode: d.file_mode().unwrap_or(0o666),
            major: d.major().max(0) as u64,
            minor: d.minor().max(0) as u64,
            owner: (d.uid().unwrap_or(0), d.gid().unwrap_or(0)),
        };
        create_device(rootfs, dev_tmpfs, &node).map_err(|e| format!("linux.devices[{i}]: {e}"))?;
    }
    if dev_tmpfs {
        let dev = rootfs.join("dev");
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("core", "/proc/kcore"),
        ] {
            let p = dev.join(link);
            if fs::symlink_metadata(&p).is_err() {
                symlink(target, &p).map_err(|e| format!("symlink {}: {e}", p.display()))?;
            }
        }
        let ptmx = dev.join("ptmx");
        let _ = fs::remove_file(&ptmx);
        symlink("pts/ptmx", &ptmx).map_err(|e| format!("symlink {}: {e}", ptmx.display()))?;
        for d in ["pts", "shm"] {
            let p = dev.join(d);
            if fs::symlink_metadata(&p).is_err() {
                mkdir_all(&p)?;
            }
        }
    }
    if let Some(console) = &cfg.console {
        let dest = rootfs.join("dev/console");
        touch(&dest)?;
        mount(Some(Path::new(console)), &dest, None, libc::MS_BIND, None)?;
    }
    Ok(())
}

/// Everything up to and including pivot_root, in runc's order.
pub fn prepare_rootfs(cfg: &InitConfig) -> Result<(), String> {
    let spec = &cfg.spec;
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or("root: missing")?;
    let md = fs::metadata(&rootfs).map_err(|e| format!("rootfs {}: {e}", rootfs.display()))?;
    if !md.is_dir() {
        return Err(format!("rootfs {}: not a directory", rootfs.display()));
    }
    // Nothing we mount may propagate back to the guest.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )?;
    mount(
        Some(&rootfs),
        &rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let mut dev_tmpfs = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        dev_tmpfs |= mount_one(cfg, &rootfs, m, i)?;
    }
    create_devices(cfg, &rootfs, dev_tmpfs)?;
    pivot(&rootfs)?;
    if let Some(p) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone())
        .and_then(|p| propagation_flag(&p))
    {
        mount(None, Path::new("/"), None, p, None)
            .map_err(|e| format!("linux.rootfsPropagation: {e}"))?;
    }
    Ok(())
}

fn pivot(rootfs: &Path) -> Result<(), String> {
    nix::unistd::chdir(rootfs).map_err(|e| format!("chdir {}: {e}", rootfs.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| {
        let hint = if e == nix::errno::Errno::EINVAL {
            " (is the guest root the initramfs itself? the agent moves it at boot so pivot_root works)"
        } else {
            ""
        };
        format!("pivot_root {}: {e}{hint}", rootfs.display())
    })?;
    // The old root is now mounted on top of "."; detach it without letting
    // the unmount propagate anywhere.
    mount(
        None,
        Path::new("."),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("unmount the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// root.readonly: remount / read-only (after pivot_root).
pub fn readonly_root() -> Result<(), String> {
    remount_bind(Path::new("/"), libc::MS_RDONLY).map_err(|e| format!("root.readonly: {e}"))
}

/// A readonly/masked path after pivot_root: a relative one is taken from
/// the container's root, as runc does.
fn in_root(p: &str) -> PathBuf {
    Path::new("/").join(p)
}

/// linux.readonlyPaths: bind each onto itself read-only; missing paths are skipped.
pub fn readonly_path(p: &str) -> Result<(), String> {
    let path = &in_root(p);
    if !path.exists() {
        return Ok(());
    }
    mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)
        .and_then(|()| remount_bind(path, libc::MS_RDONLY | libc::MS_REC))
        .map_err(|e| format!("linux.readonlyPaths ({p}): {e}"))
}

/// linux.maskedPaths: /dev/null over files, an empty read-only tmpfs over
/// directories; missing paths are skipped.
pub fn mask_path(p: &str) -> Result<(), String> {
    let path = &in_root(p);
    let md = match fs::metadata(path) {
        Ok(md) => md,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            libc::MS_RDONLY,
            None,
        )
    } else {
        mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            libc::MS_BIND,
            None,
        )
    };
    r.map_err(|e| format!("linux.maskedPaths ({p}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let m = parse_options(&o(&[
            "nosuid",
            "noexec",
            "mode=755",
            "size=65536k",
            "rslave",
            "ro",
        ]));
        assert_eq!(m.flags, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY);
        assert_eq!(m.data, vec!["mode=755", "size=65536k"]);
        assert_eq!(m.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        let m = parse_options(&o(&["rbind", "ro", "rw", "nosuid", "suid"]));
        assert_eq!(m.flags, libc::MS_BIND | libc::MS_REC);
        assert!(m.data.is_empty());
        let m = parse_options(&o(&["bind", "private"]));
        assert_eq!(m.flags, libc::MS_BIND);
        assert_eq!(m.propagation, vec![libc::MS_PRIVATE]);
    }

    #[test]
    fn recursive_attributes() {
        let m = parse_options(&o(&["rbind", "ro", "rnosuid", "rnoexec", "rnodev"]));
        assert_eq!(m.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(
            m.rec_set,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC | libc::MOUNT_ATTR_NODEV
        );
        assert_eq!(m.rec_clr, 0);
        assert!(m.data.is_empty());
        let m = parse_options(&o(&["rro", "rrw", "rsuid", "rsymfollow"]));
        assert_eq!(m.rec_set, libc::MOUNT_ATTR_RDONLY);
        assert_eq!(
            m.rec_clr,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOSYMFOLLOW
        );
        // An access-time mode clears the whole field (mount_setattr(2)).
        let m = parse_options(&o(&["rnoatime"]));
        assert_eq!(m.rec_set, libc::MOUNT_ATTR_NOATIME);
        assert_eq!(m.rec_clr, libc::MOUNT_ATTR__ATIME);
        let m = parse_options(&o(&["rrelatime"]));
        assert_eq!((m.rec_set, m.rec_clr), (0, libc::MOUNT_ATTR__ATIME));
        let m = parse_options(&o(&["rstrictatime", "rnodiratime"]));
        assert_eq!(
            m.rec_set,
            libc::MOUNT_ATTR_STRICTATIME | libc::MOUNT_ATTR_NODIRATIME
        );
        assert_eq!(m.rec_clr, libc::MOUNT_ATTR__ATIME);
        for a in RECURSIVE_ATTRS.map(|(n, _, _)| n) {
            let m = parse_options(&o(&[a]));
            assert!(m.data.is_empty(), "{a} became fs data");
        }
        let m = parse_options(&o(&["rbind", "x-husk-submount=a/b", "x-husk-submount=c"]));
        assert_eq!(m.submounts, vec![PathBuf::from("a/b"), PathBuf::from("c")]);
        assert!(m.data.is_empty());
    }

    #[test]
    fn proc_and_sys_only_on_directories() {
        let dir = std::env::temp_dir().join(format!("husk-procdst-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sys")).unwrap();
        symlink("/symlink", dir.join("proc")).unwrap();
        fs::write(dir.join("file"), "").unwrap();
        let m = |d: &str| -> Mount {
            serde_json::from_value(serde_json::json!({"destination": d, "type": "proc"})).unwrap()
        };
        assert_eq!(
            check_proc_sys_destination(&dir, &m("/proc"), "proc").unwrap_err(),
            "filesystem \"proc\" must be mounted on ordinary directory"
        );
        assert_eq!(
            check_proc_sys_destination(&dir, &m("/file"), "sysfs").unwrap_err(),
            "filesystem \"sysfs\" must be mounted on ordinary directory"
        );
        check_proc_sys_destination(&dir, &m("/sys"), "sysfs").unwrap();
        check_proc_sys_destination(&dir, &m("/new"), "proc").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secure_join_stays_inside() {
        let dir = std::env::temp_dir().join(format!("husk-sj-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("usr/lib")).unwrap();
        symlink("/usr/lib", dir.join("lib")).unwrap();
        symlink("../../../../etc", dir.join("usr/evil")).unwrap();
        symlink("/", dir.join("rootlink")).unwrap();
        symlink("loop2", dir.join("loop1")).unwrap();
        symlink("loop1", dir.join("loop2")).unwrap();
        let j = |p: &str| secure_join(&dir, Path::new(p)).unwrap();
        assert_eq!(j("/lib/x"), dir.join("usr/lib/x"));
        assert_eq!(j("/usr/evil/passwd"), dir.join("etc/passwd"));
        assert_eq!(j("/../../etc"), dir.join("etc"));
        assert_eq!(j("/rootlink/tmp"), dir.join("tmp"));
        assert_eq!(j("/new/dir"), dir.join("new/dir"));
        assert!(secure_join(&dir, Path::new("/loop1"))
            .unwrap_err()
            .contains("too many levels"));
        fs::remove_dir_all(&dir).unwrap();
    }
}

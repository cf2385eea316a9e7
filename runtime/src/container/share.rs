//! The sandbox's shared directory: what the VM sees over virtio-fs.
//!
//! One directory per sandbox, `<state dir>/share`, made a private mount so
//! nothing staged in it propagates to the rest of the host. For container
//! `<id>` it holds `<id>/rootfs` (a recursive bind of the bundle's rootfs) and
//! `<id>/mounts/<n>` (a bind of the n-th bind mount's source: podman's
//! /etc/hosts, resolv.conf, volumes). The spec sent to the agent is rewritten
//! to the guest paths of those binds, so one virtio-fs device serves them all.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use husk_protocol::SHARE_MOUNT;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot bind {src} to {dst}: {err}")]
    Bind {
        src: PathBuf,
        dst: PathBuf,
        err: nix::Error,
    },
    #[error("mounts[{0}]: bind source {1} does not exist")]
    MissingSource(usize, PathBuf),
    #[error("cannot unmount {0}: {1}")]
    Unmount(PathBuf, nix::Error),
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn bind(src: &Path, dst: &Path, recursive: bool) -> Result<(), ShareError> {
    let flags = if recursive {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    mount(Some(src), dst, None::<&str>, flags, None::<&str>).map_err(|err| ShareError::Bind {
        src: src.into(),
        dst: dst.into(),
        err,
    })
}

fn mkdir(p: &Path) -> Result<(), ShareError> {
    std::fs::create_dir_all(p).map_err(|e| ShareError::Create(p.into(), e))
}

/// Creates `share` as a private mount point (idempotent).
pub fn prepare(share: &Path) -> Result<(), ShareError> {
    mkdir(share)?;
    bind(share, share, false)?;
    mount(
        None::<&str>,
        share,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|err| ShareError::Bind {
        src: share.into(),
        dst: share.into(),
        err,
    })
}

/// Stages container `id` into `share` and rewrites `spec` for the guest.
pub fn stage(
    share: &Path,
    id: &str,
    bundle: &Path,
    rootfs: &Path,
    spec: &mut Spec,
) -> Result<(), ShareError> {
    let base = share.join(id);
    let guest_base = Path::new(SHARE_MOUNT).join(id);
    let root_dst = base.join("rootfs");
    mkdir(&root_dst)?;
    bind(rootfs, &root_dst, true)?;
    if let Some(root) = spec.root_mut() {
        root.set_path(guest_base.join("rootfs"));
    }
    let mounts_dir = base.join("mounts");
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
        mkdir(&mounts_dir)?;
        let dst = mounts_dir.join(i.to_string());
        if meta.is_dir() {
            mkdir(&dst)?;
        } else {
            std::fs::File::create(&dst).map_err(|e| ShareError::Create(dst.clone(), e))?;
        }
        let recursive = m.options().iter().flatten().any(|o| o == "rbind");
        bind(&src, &dst, recursive)?;
        m.set_source(Some(guest_base.join("mounts").join(i.to_string())));
    }
    Ok(())
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
    // Lazy detach: a mount still busy (a dying VMM) must not keep us from cleaning up.
    for _ in 0..4 {
        let mounts = mounts_below(share);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            match umount2(&m, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(ShareError::Unmount(m, e)),
            }
        }
    }
    match std::fs::remove_dir_all(share) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShareError::Create(share.into(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/é\\134x"), "/é\\x");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }
}

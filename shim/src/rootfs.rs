//! The container's root filesystem: containerd hands the snapshot's mounts
//! (overlay, bind...) to the shim, which mounts them on `<bundle>/rootfs`.

use std::path::Path;

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

/// mount(8)-style options: flags to set (or clear), anything else is data.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, Vec<&str>) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                propagation = match o.as_str() {
                    "private" => MsFlags::MS_PRIVATE,
                    "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                    "shared" => MsFlags::MS_SHARED,
                    "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                };
                continue;
            }
            other => {
                data.push(other);
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, propagation, data)
}

fn mount_one(m: &Mount, target: &Path) -> nix::Result<()> {
    let (flags, propagation, data) = parse_options(&m.options);
    let data = data.join(",");
    // mount(2) takes one page of data; containerd's overlay options grow
    // with the image's layer count.
    if data.len() >= 4096 {
        return Err(nix::errno::Errno::E2BIG);
    }
    let typ = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    let src = (!m.source.is_empty()).then_some(m.source.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(src, target, typ, flags, data)?;
    // A bind mount ignores MS_RDONLY until remounted.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )?;
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            propagation,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Mounts `mounts` in order on `target`; true if anything was mounted.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<bool> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            if i > 0 {
                unmount(target);
            }
            let e = match e {
                nix::errno::Errno::E2BIG => {
                    "mount options longer than a page (too many layers?)".to_string()
                }
                e => e.to_string(),
            };
            return Err(Error::Internal(format!(
                "cannot mount the rootfs ({} {}) on {}: {e}",
                m.type_,
                m.source,
                target.display()
            )));
        }
    }
    Ok(!mounts.is_empty())
}

/// Unmounts everything stacked on `target`.
pub fn unmount(target: &Path) {
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(_) => return,
        }
    }
}

/// Unmounts and removes `<share>/<id>` (what `share::stage` made for one
/// container), without following symlinks or crossing mounts.
pub fn unstage(share: &Path, id: &str) {
    if let Err(e) = husk::container::share::unstage(share, id) {
        log::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o: Vec<String> = [
            "ro",
            "rbind",
            "nosuid",
            "lowerdir=/a:/b",
            "rprivate",
            "rw",
            "index=off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, prop, data) = parse_options(&o);
        assert_eq!(
            flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID
        );
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, vec!["lowerdir=/a:/b", "index=off"]);
    }
}

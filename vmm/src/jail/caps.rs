//! Capabilities: everything is dropped (bounding, permitted, effective,
//! inheritable, ambient) except what virtio-fs passthrough needs to act on
//! the guest's behalf in the share. Each kept capability is justified in
//! `docs/security.md`; without a virtio-fs device the VMM keeps none.

use caps::{CapSet, Capability, CapsHashSet};

use super::JailError;

/// What the virtio-fs worker needs to keep, given whether any device serves
/// extended attributes.
pub fn fs_caps(xattr: bool) -> CapsHashSet {
    let mut s = CapsHashSet::from([
        // chown/fchownat to the guest's uid/gid (SETATTR, and files created
        // for a guest user) on files the VMM (root) does not own as that user.
        Capability::CAP_CHOWN,
        // The guest kernel has already checked permissions with the guest's
        // credentials; the host side must not refuse again (root-owned
        // directories written by guest users, files mode 000 opened by root).
        Capability::CAP_DAC_OVERRIDE,
        // LINK: fuse-backend-rs links by descriptor (`linkat(fd, "",
        // AT_EMPTY_PATH)`), which the kernel allows only with this (ENOENT
        // otherwise). Its other power, open_by_handle_at (opening any file
        // of a mounted file system by handle, past the jail), is refused by
        // the fs worker's seccomp filter; read/search bypass adds nothing to
        // CAP_DAC_OVERRIDE.
        Capability::CAP_DAC_READ_SEARCH,
        // utimensat/fchmod/xattr on files the VMM's uid does not own.
        Capability::CAP_FOWNER,
        // Keep set-group-id bits on chmod/chown as the guest asked.
        Capability::CAP_FSETID,
        // Per-request setresuid/setresgid to the guest's uid/gid, so new
        // files get the guest's owner atomically (fuse-backend-rs' ScopedUid/ScopedGid).
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        // MKNOD of fifos is unprivileged; the overlayfs whiteout (char 0:0)
        // needs this. Real device nodes are refused by ConfinedFs.
        Capability::CAP_MKNOD,
    ]);
    if xattr {
        // security.capability xattrs (file capabilities set by the guest).
        s.insert(Capability::CAP_SETFCAP);
    }
    s
}

fn err(what: &str, e: caps::errors::CapsError) -> JailError {
    JailError::new(what, std::io::Error::other(e.to_string()))
}

/// Reduces this thread's capabilities (and so those of every thread it
/// creates afterwards) to `keep`. The bounding set goes first (dropping from
/// it needs CAP_SETPCAP, which goes last).
pub fn keep_only(keep: &CapsHashSet) -> Result<(), JailError> {
    let all = caps::runtime::thread_all_supported();
    for c in all.difference(keep) {
        caps::drop(None, CapSet::Bounding, *c)
            .map_err(|e| err(&format!("drop {c} from the bounding set"), e))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clear ambient capabilities", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("clear inheritable capabilities", e))?;
    caps::set(None, CapSet::Effective, keep).map_err(|e| err("set effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, keep).map_err(|e| err("set permitted capabilities", e))?;
    Ok(())
}

/// The kept set as the `CapEff` mask `/proc/PID/status` shows.
pub fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

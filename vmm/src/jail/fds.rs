//! File descriptors: the VMM keeps only what it was given on purpose.

use super::JailError;

/// The ranges `[first, last]` of descriptors from 3 up that are not in `keep`.
fn gaps(keep: &[i32]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut out = Vec::new();
    let mut next = 3u32;
    for fd in keep {
        if fd > next {
            out.push((next, fd - 1));
        }
        // Descriptors are < 2^31: no overflow.
        next = fd + 1;
    }
    out.push((next, u32::MAX));
    out
}

/// Closes every inherited descriptor except stdin, stdout and stderr (the
/// runtime passes /dev/null, /dev/null and its log file) and the tap fds in
/// `keep` (named by `--net`; nothing else is passed on purpose). Runs before
/// husk-vmm opens anything, so a descriptor leaked by whoever started us (a
/// listening socket, a host directory) never reaches the jail.
pub fn close_inherited(keep: &[i32]) -> Result<(), JailError> {
    let mut fallback = false;
    for (first, last) in gaps(keep) {
        // SAFETY: close_range only closes descriptors; nothing of ours is open yet.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r == 0 {
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(JailError::new("close_range", err));
        }
        fallback = true;
        break;
    }
    if !fallback {
        return Ok(());
    }
    // Kernels before 5.9: close them one by one.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| JailError::new("/proc/self/fd", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2 && !keep.contains(&fd))
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor we do not use (the read_dir one is
        // already closed and EBADF is harmless).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::gaps;

    #[test]
    fn ranges_around_kept_fds() {
        assert_eq!(gaps(&[]), vec![(3, u32::MAX)]);
        assert_eq!(gaps(&[3]), vec![(4, u32::MAX)]);
        assert_eq!(gaps(&[5]), vec![(3, 4), (6, u32::MAX)]);
        assert_eq!(
            gaps(&[9, 5, 6, 5, 1, -1]),
            vec![(3, 4), (7, 8), (10, u32::MAX)]
        );
    }
}

//! File descriptors: the VMM keeps only what it was given on purpose.

use super::JailError;

/// Closes every inherited descriptor except stdin, stdout and stderr (the
/// runtime passes /dev/null, /dev/null and its log file; nothing else is
/// passed on purpose). Runs before husk-vmm opens anything, so a descriptor
/// leaked by whoever started us (a listening socket, a host directory) never
/// reaches the jail.
pub fn close_inherited() -> Result<(), JailError> {
    // SAFETY: close_range only closes descriptors; nothing of ours is open yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(JailError::new("close_range", err));
    }
    // Kernels before 5.9: close them one by one.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| JailError::new("/proc/self/fd", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor we do not use (the read_dir one is
        // already closed and EBADF is harmless).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

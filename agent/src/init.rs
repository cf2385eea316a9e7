//! What PID 1 does before serving: base mounts, console, orphan reaping.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use husk_protocol::ExitStatus;

use crate::container::process::exits;

/// Mounts /proc, /sys, /dev and /run, and points stdio at the console when the
/// VM has one. Failures are reported and tolerated: a missing /sys must not
/// keep the agent from answering the host.
pub fn setup() {
    if let Err(e) = make_root_pivotable() {
        eprintln!("husk-agent: {e}; containers will fail at pivot_root");
    }
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 6] = [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        // container terminals are allocated here
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (fstype, target, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => eprintln!("husk-agent: mount {fstype} on {target}: {e}"),
        }
    }
    // Without a console device the kernel leaves fds 0-2 closed; with one, make
    // sure they point at it. Writes to a serial console are expensive, so the
    // agent prints one line at startup and nothing else.
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `console` stays open.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    } else if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: as above.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// The initramfs is the `rootfs` mount, which has no parent mount, and
/// pivot_root(2) refuses to move such a root away: container inits could
/// not pivot_root into their rootfs. Like switch_root, bind the initramfs
/// onto a directory of itself and move that mount over `/`: the new root
/// mount has a parent (the hidden rootfs) and pivot_root works under it.
fn make_root_pivotable() -> Result<(), String> {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // linux/magic.h; neither libc nor nix name it
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let fs_type = statfs("/")
        .map(|s| s.filesystem_type())
        .map_err(|e| format!("statfs /: {e}"))?;
    if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Ok(()); // a real root filesystem: pivot_root works already
    }
    let dir = "/.husk-root";
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {dir}: {e}")),
    }
    mount(
        Some("/"),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind / on {dir}: {e}"))?;
    nix::unistd::chdir(dir).map_err(|e| format!("chdir {dir}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move {dir} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// `--listen-unix` mode on an ordinary host: a mount namespace of our own
/// (so mounting cgroup2 on /sys/fs/cgroup and anything else stays private),
/// mounts from the host still propagating in, and container processes
/// re-parenting to us.
pub fn setup_test_host() -> Result<(), String> {
    // SAFETY: plain syscalls; still single-threaded.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!(
                "unshare mount namespace: {} (--listen-unix needs root)",
                std::io::Error::last_os_error()
            ));
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "set child subreaper: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("make / rslave: {e}"))
}

pub fn block_sigchld() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

/// Reaps every child (orphans re-parented to PID 1 included) so none stays a
/// zombie, and reports each exit to the container exit table.
pub fn spawn_reaper() {
    let spawned = std::thread::Builder::new().name("reaper".into()).spawn(|| {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        loop {
            if set.wait().is_err() {
                continue;
            }
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(WaitStatus::Exited(pid, code)) => {
                        exits().reaped(pid.as_raw(), ExitStatus::Code(code))
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) => {
                        exits().reaped(pid.as_raw(), ExitStatus::Signal(sig as i32))
                    }
                    Ok(_) => {}
                }
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("husk-agent: cannot start reaper: {e}");
    }
}

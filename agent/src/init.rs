//! What PID 1 does before serving: base mounts, console, orphan reaping.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Mounts /proc, /sys, /dev and /run, and points stdio at the console when the
/// VM has one. Failures are reported and tolerated: a missing /sys must not
/// keep the agent from answering the host.
pub fn setup() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 5] = [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
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

pub fn block_sigchld() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

/// Reaps every child (orphans re-parented to PID 1 included) so none stays a zombie.
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
                    Ok(_) => {}
                }
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("husk-agent: cannot start reaper: {e}");
    }
}

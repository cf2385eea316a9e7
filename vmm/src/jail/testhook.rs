//! Test hook: make the jailed VMM attempt a syscall its filter forbids, to
//! prove the filter kills it, or attempt what a compromised fs worker would
//! (VM test `tests/tests/jail.rs`).
//!
//! Reachable only from the host: the hidden `--test-forbidden-syscall=KIND`
//! flag (which the runtime passes only when its own environment has
//! `HUSK_VMM_TEST_TRIGGER=KIND`) arms it, and the trigger is
//! [`TRIGGER_SIGNAL`] sent to husk-vmm's host pid (the waiter passes it on);
//! `procfd` needs no trigger: the fs worker runs [`probe_procfd`] right
//! after installing its filter. Nothing the guest does reaches it. Without
//! the flag no signalfd exists.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::{check, JailError};

/// The signal that fires an armed hook.
pub const TRIGGER_SIGNAL: libc::c_int = libc::SIGUSR2;

/// What the armed VMM attempts when triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// `execve("/bin/sh")`: no thread may start a program.
    Execve,
    /// `openat("/etc/passwd")` on the main thread, which opens nothing.
    Open,
    /// The fs worker, jailed and filtered, looks for a procfs directory fd
    /// among its descriptors (virtio-fs keeps one) and tries to climb out of
    /// it to `../../sys/kernel/hostname`; logs what happened.
    Procfd,
}

impl std::str::FromStr for Forbidden {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "execve" => Ok(Forbidden::Execve),
            "open" => Ok(Forbidden::Open),
            "procfd" => Ok(Forbidden::Procfd),
            _ => Err(format!("expected execve, open or procfd, got {s:?}")),
        }
    }
}

/// Event-loop subscriber waiting for [`TRIGGER_SIGNAL`].
pub struct Trigger {
    what: Forbidden,
    fd: OwnedFd,
}

impl Trigger {
    /// Blocks the trigger signal (threads created later inherit that) and
    /// opens a signalfd for it. Call on the main thread before other threads exist.
    pub fn new(what: Forbidden) -> Result<Trigger, JailError> {
        // SAFETY: local sigset; signalfd returns a new descriptor we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, TRIGGER_SIGNAL);
            check(
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                "block the test trigger signal",
            )?;
            let fd = check(
                libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC),
                "signalfd",
            )?;
            Ok(Trigger {
                what,
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    fn fire(&self) {
        log::warn!("test hook: attempting forbidden {:?}", self.what);
        // SAFETY: both calls are meant to be refused by seccomp (the process
        // dies); if they are not, they fail harmlessly in the jail.
        let r = unsafe {
            match self.what {
                Forbidden::Execve => {
                    let sh = c"/bin/sh";
                    let argv = [sh.as_ptr(), std::ptr::null()];
                    let envp = [std::ptr::null()];
                    libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr())
                }
                Forbidden::Open => libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY),
                // Not signal-triggered (see `probe_procfd`).
                Forbidden::Procfd => return,
            }
        };
        log::error!(
            "test hook: forbidden {:?} was not stopped (returned {r}: {})",
            self.what,
            std::io::Error::last_os_error()
        );
    }
}

/// What `procfd` reports for a climb that worked: the host's procfs is
/// reachable from the fs worker. `tests/tests/jail.rs` fails on it.
pub const PROCFD_REACHED: &str = "test hook: procfd: REACHED";
/// What `procfd` reports for a climb that failed.
pub const PROCFD_REFUSED: &str = "test hook: procfd: refused";

/// The `procfd` probe, on the calling (fs worker) thread: every descriptor
/// that is a procfs directory is used as `openat(fd,
/// "../../sys/kernel/hostname")`, like an attacker with code execution in
/// the fs worker would. Uses only calls the fs worker's filter allows.
pub fn probe_procfd() {
    let mut found = 0;
    for fd in 0..4096 {
        // SAFETY: fstatfs/fstat into zeroed local buffers on any fd number
        // (EBADF for closed ones); openat with a valid C string; the
        // descriptor it returns is closed at once.
        unsafe {
            let mut sfs: libc::statfs = std::mem::zeroed();
            if libc::fstatfs(fd, &mut sfs) != 0 || sfs.f_type != libc::PROC_SUPER_MAGIC {
                continue;
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                continue;
            }
            found += 1;
            let path = c"../../sys/kernel/hostname";
            let r = libc::openat(fd, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if r >= 0 {
                libc::close(r);
                log::error!("{PROCFD_REACHED} ../../sys/kernel/hostname through procfs fd {fd}");
            } else {
                log::warn!(
                    "{PROCFD_REFUSED} through procfs fd {fd}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    log::warn!("test hook: procfd: {found} procfs directory descriptor(s) tried");
}

impl MutEventSubscriber for Trigger {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        // SAFETY: reading into a local buffer of the right size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
        if n == info.len() as isize {
            self.fire();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("test hook: cannot watch the trigger: {e}");
        }
    }
}

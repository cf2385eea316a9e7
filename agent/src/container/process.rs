//! Processes: exit tracking (fed by the reaper), spawning the container init,
//! the agent ⇄ init control channel, and stdio (pipes or a pty) with the
//! buffers and relays behind `AttachStdio`.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_protocol::ExitStatus;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Serialize};

// ---------------------------------------------------------------- exits ----

/// One process's exit, shared by the exit table and whoever waits on it.
#[derive(Debug, Default)]
pub struct ExitCell {
    status: Mutex<Option<ExitStatus>>,
    cv: Condvar,
}

impl ExitCell {
    pub fn get(&self) -> Option<ExitStatus> {
        *lock(&self.status)
    }

    pub fn wait(&self) -> ExitStatus {
        let mut g = lock(&self.status);
        loop {
            if let Some(s) = *g {
                return s;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn wait_timeout(&self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.status);
        loop {
            if let Some(s) = *g {
                return Some(s);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            g = self
                .cv
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn set(&self, s: ExitStatus) {
        *lock(&self.status) = Some(s);
        self.cv.notify_all();
    }
}

/// Pids the agent cares about. The reaper reports every child it reaps;
/// exits of pids nobody watches (orphans, helper processes) are dropped.
#[derive(Default)]
pub struct Exits {
    watched: Mutex<HashMap<i32, Arc<ExitCell>>>,
}

static EXITS: LazyLock<Exits> = LazyLock::new(Exits::default);

pub fn exits() -> &'static Exits {
    &EXITS
}

impl Exits {
    /// Called by the reaper for every reaped child.
    pub fn reaped(&self, pid: i32, status: ExitStatus) {
        if let Some(cell) = lock(&self.watched).remove(&pid) {
            cell.set(status);
        }
    }

    /// Held across fork so the reaper cannot see the child's exit before it is watched.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<i32, Arc<ExitCell>>> {
        lock(&self.watched)
    }

    /// Watches `pid`, which must not be reapable by the agent yet (not a
    /// child, or a child created while [`Exits::lock`] was held).
    pub fn watch(&self, pid: i32) -> Arc<ExitCell> {
        let cell = Arc::new(ExitCell::default());
        lock(&self.watched).insert(pid, cell.clone());
        cell
    }

    pub fn forget(&self, pid: i32) {
        lock(&self.watched).remove(&pid);
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// -------------------------------------------------------------- channel ----

/// A SOCK_SEQPACKET socket carrying one JSON message per packet.
pub struct Channel(pub OwnedFd);

const MAX_MSG: usize = 256 * 1024;

impl Channel {
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        let buf = serde_json::to_vec(msg).map_err(io::Error::other)?;
        loop {
            match socket::send(self.0.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `Ok(None)` on EOF (the peer closed or exec'd); `TimedOut` after `timeout`.
    pub fn recv<T: DeserializeOwned>(&self, timeout: Option<Duration>) -> io::Result<Option<T>> {
        if let Some(t) = timeout {
            let ms = t.as_millis().min(i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            loop {
                match poll(
                    &mut fds,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
                ) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
                    Ok(_) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut buf = vec![0u8; MAX_MSG];
        let n = loop {
            match socket::recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECONNRESET) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

// ---------------------------------------------------------------- spawn ----

/// fds of a helper (container init or exec): 0-2 stdio, 3 control channel,
/// 4 config pipe, then any extra ones.
pub const CTL_FD: RawFd = 3;
pub const CONFIG_FD: RawFd = 4;

/// Where the fds handed to a helper are copied before fork: above any
/// target number, so dup2 onto 0..n never clobbers a source.
const HIGH_FD: RawFd = 64;

/// Where a helper moves its control channel: above the descriptors its
/// process may be passed (3, 4, ... `--preserve-fds`).
const CTL_HIGH_FD: RawFd = 3 + husk_protocol::MAX_PASSED_FDS as RawFd + 64;

/// In a helper: takes the control channel inherited on [`CTL_FD`], moved to
/// [`CTL_HIGH_FD`] or above, close-on-exec (its EOF tells the agent that
/// `execve` succeeded). Stays on CTL_FD if it cannot be moved.
pub fn take_ctl() -> Channel {
    // SAFETY: fd 3 was set up by the agent for the helper; fcntl and close
    // on it only.
    unsafe {
        let moved = libc::fcntl(CTL_FD, libc::F_DUPFD_CLOEXEC, CTL_HIGH_FD);
        if moved >= 0 {
            libc::close(CTL_FD);
            return Channel(OwnedFd::from_raw_fd(moved));
        }
        libc::fcntl(CTL_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        Channel(OwnedFd::from_raw_fd(CTL_FD))
    }
}

/// In a helper: closes every descriptor from `first` up, but `keep`.
pub fn close_fds_from(first: RawFd, keep: RawFd) {
    let close_range = |lo: RawFd, hi: u32| {
        // SAFETY: closes descriptors this process does not use.
        unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi, 0) };
    };
    if keep >= first {
        if keep > first {
            close_range(first, (keep - 1) as u32);
        }
        close_range(keep + 1, u32::MAX);
    } else {
        close_range(first, u32::MAX);
    }
}

/// Re-executes the agent binary as `husk-agent <mode>` with `fds` as its
/// descriptors 0, 1, 2, ... Returns its pid, watched in the exit table.
pub fn spawn_helper(mode: &str, fds: &[BorrowedFd<'_>]) -> io::Result<(i32, Arc<ExitCell>)> {
    if fds.len() > HIGH_FD as usize {
        return Err(io::Error::other("too many descriptors for a helper"));
    }
    // Everything the child touches is prepared before fork: after fork in a
    // multi-threaded process only async-signal-safe calls are allowed.
    let exe = CString::new("/proc/self/exe").map_err(io::Error::other)?;
    let arg0 = CString::new("husk-agent").map_err(io::Error::other)?;
    let arg1 = CString::new(mode).map_err(io::Error::other)?;
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    let mut high: Vec<OwnedFd> = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one.
        let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor owned from here on.
        high.push(unsafe { OwnedFd::from_raw_fd(n) });
    }
    let src: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();

    let mut watched = exits().lock();
    // SAFETY: the child only calls async-signal-safe functions (sigprocmask,
    // dup2, execve, _exit) on data prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for (target, fd) in src.iter().enumerate() {
                if libc::dup2(*fd, target as libc::c_int) < 0 {
                    libc::_exit(126);
                }
            }
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let cell = Arc::new(ExitCell::default());
    watched.insert(pid, cell.clone());
    drop(watched);
    Ok((pid, cell))
}

// ---------------------------------------------------------------- stdio ----

/// Output kept until a host connection takes it; beyond this the pipe is not
/// read, so the container blocks on write (back-pressure, nothing is lost).
pub const OUTPUT_BUFFER: usize = 1 << 20;

#[derive(Default)]
struct OutState {
    data: VecDeque<u8>,
    eof: bool,
    attached: bool,
}

/// One output stream (stdout, stderr or the pty master) buffered for attach.
#[derive(Default)]
pub struct OutBuf {
    st: Mutex<OutState>,
    cv: Condvar,
}

impl OutBuf {
    /// Starts the thread that drains `src` into the buffer until EOF.
    pub fn start_pump(self: &Arc<Self>, src: File, what: &str) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pump-{what}"))
            .spawn(move || me.pump(src));
        if let Err(e) = spawned {
            eprintln!("husk-agent: cannot start {what} pump: {e}");
            self.finish();
        }
    }

    fn pump(&self, mut src: File) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let room = {
                let mut g = lock(&self.st);
                while g.data.len() >= OUTPUT_BUFFER {
                    g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                OUTPUT_BUFFER - g.data.len()
            };
            let want = room.min(buf.len());
            match src.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    lock(&self.st).data.extend(&buf[..n]);
                    self.cv.notify_all();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO: every slave of a pty is closed.
                Err(_) => break,
            }
        }
        self.finish();
    }

    fn finish(&self) {
        lock(&self.st).eof = true;
        self.cv.notify_all();
    }

    /// Claims the stream for one connection; false if one already has it.
    pub fn claim(&self) -> bool {
        let mut g = lock(&self.st);
        if g.attached {
            return false;
        }
        g.attached = true;
        true
    }

    /// Copies the stream to `out` until EOF (then shuts `out`'s write side
    /// down) or until `out` fails. Releases the claim.
    pub fn relay_to(&self, out: &UnixStream) {
        let mut out = out;
        loop {
            let chunk: Vec<u8> = {
                let mut g = lock(&self.st);
                while g.data.is_empty() && !g.eof {
                    g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                if g.data.is_empty() {
                    break;
                }
                let n = g.data.len().min(64 * 1024);
                g.data.drain(..n).collect()
            };
            self.cv.notify_all();
            if out.write_all(&chunk).is_err() {
                lock(&self.st).attached = false;
                return;
            }
        }
        let _ = out.flush();
        let _ = out.shutdown(std::net::Shutdown::Write);
        lock(&self.st).attached = false;
    }

    /// Whether the source hit EOF and everything was handed out.
    #[allow(dead_code)]
    pub fn drained(&self) -> bool {
        let g = lock(&self.st);
        g.eof && g.data.is_empty()
    }
}

/// Copies `from` into the container's stdin until `from` hits EOF (then the
/// pipe is closed: EOF for the container) or the container closes its end.
pub fn relay_stdin(from: &UnixStream, pipe: File) {
    let mut from = from;
    let mut pipe = pipe;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            PollFd::new(from.as_fd(), PollFlags::POLLIN),
            PollFd::new(pipe.as_fd(), PollFlags::empty()),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let pipe_gone = fds[1]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP));
        if pipe_gone {
            break;
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if pipe.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    drop(pipe);
    let _ = from.shutdown(std::net::Shutdown::Write);
}

/// Copies `from` into the pty master until `from` hits EOF or fails.
pub fn relay_to_pty(from: &UnixStream, master: &File) {
    let mut from = from;
    let mut master = master;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if master.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// The agent's side of a container's stdio.
pub enum Stdio {
    Pipes {
        stdin: Mutex<Option<File>>,
        stdout: Arc<OutBuf>,
        stderr: Arc<OutBuf>,
    },
    Pty {
        master: File,
        out: Arc<OutBuf>,
        input_claimed: Mutex<bool>,
    },
}

/// What the init gets as fds 0-2, plus the pty slave's path for /dev/console.
pub struct ChildStdio {
    pub fds: [OwnedFd; 3],
    pub console: Option<String>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn set_cloexec(fd: &OwnedFd) {
    // SAFETY: fcntl on a valid descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

impl Stdio {
    /// Creates pipes, or a pty of the given size, and starts the output pumps.
    pub fn new(terminal: bool, size: Option<(u16, u16)>) -> io::Result<(Stdio, ChildStdio)> {
        if terminal {
            let ws = size.map(|(rows, cols)| nix::pty::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            });
            let pty = nix::pty::openpty(ws.as_ref(), None)?;
            set_cloexec(&pty.master);
            set_cloexec(&pty.slave);
            let console = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
            let s1 = pty.slave.try_clone()?;
            let s2 = pty.slave.try_clone()?;
            let master = File::from(pty.master);
            let out = Arc::new(OutBuf::default());
            out.start_pump(master.try_clone()?, "pty");
            Ok((
                Stdio::Pty {
                    master,
                    out,
                    input_claimed: Mutex::new(false),
                },
                ChildStdio {
                    fds: [pty.slave, s1, s2],
                    console,
                },
            ))
        } else {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let stdout = Arc::new(OutBuf::default());
            let stderr = Arc::new(OutBuf::default());
            stdout.start_pump(File::from(out_r), "stdout");
            stderr.start_pump(File::from(err_r), "stderr");
            Ok((
                Stdio::Pipes {
                    stdin: Mutex::new(Some(File::from(in_w))),
                    stdout,
                    stderr,
                },
                ChildStdio {
                    fds: [in_r, out_w, err_w],
                    console: None,
                },
            ))
        }
    }
}

/// Takes ownership of a raw fd number inherited from the parent.
///
/// # Safety
/// `fd` must be open and not owned by anything else.
pub unsafe fn own_fd(fd: RawFd) -> OwnedFd {
    OwnedFd::from_raw_fd(fd)
}

//! Host ends of a guest process's stdio: byte relays between host
//! descriptors and the agent's stdio streams, host ptys handed out over
//! `--console-socket`, and terminal window sizes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A duplicate of one of our standard descriptors.
pub fn dup_std(fd: i32) -> Result<File, String> {
    // SAFETY: borrowing a standard descriptor only to duplicate it.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    b.try_clone_to_owned()
        .map(File::from)
        .map_err(|e| format!("stdio fd {fd}: {e}"))
}

/// Copies `from` into `to` until EOF or the first error either way, handing
/// on every read as soon as it arrives.
///
/// Not `std::io::copy`: on Linux it moves data with splice(2) when one side is
/// a pipe, and from the agent's unix stream into conmon's stdout pipe that held
/// a container's first line back indefinitely (`podman logs` stayed empty in 7
/// of 8 runs; with this loop, in none).
pub fn relay<R: Read + ?Sized, W: Write + ?Sized>(
    from: &mut R,
    to: &mut W,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Copies `from` into `to` until EOF; with `half_close`, shuts down the
/// socket's write side at EOF (EOF for the guest process's stdin).
pub fn spawn_copy<R, W>(mut from: R, mut to: W, half_close: bool) -> std::thread::JoinHandle<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static + MaybeSocket,
{
    std::thread::spawn(move || {
        let _ = relay(&mut from, &mut to);
        let _ = to.flush();
        if half_close {
            to.shutdown_write();
        }
    })
}

/// Waits for the output relays to finish (the guest side hung up and the
/// bytes are out), but no longer than `limit`: a host reader that stopped
/// reading must not keep a dead container's stand-in alive.
pub fn join_within(relays: Vec<std::thread::JoinHandle<()>>, limit: std::time::Duration) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for h in relays {
            let _ = h.join();
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(limit);
}

pub trait MaybeSocket {
    fn shutdown_write(&self) {}
}
impl MaybeSocket for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}
impl MaybeSocket for File {}

/// A host pty whose master goes to `--console-socket` and whose slave we keep.
/// The slave is raw: line discipline happens once, in the guest's pty.
/// It becomes our controlling terminal when `ctty` (we must be a session
/// leader): then the kernel tells us of resizes by SIGWINCH, and of the
/// master's last close by SIGHUP, as it would tell a process on that pty.
pub fn console_pty(sock: &Path, ctty: bool) -> Result<File, String> {
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
    if let Ok(mut t) = nix::sys::termios::tcgetattr(pty.slave.as_fd()) {
        nix::sys::termios::cfmakeraw(&mut t);
        let _ =
            nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
    if ctty {
        // SAFETY: TIOCSCTTY on a pty slave we own; failure is only reported.
        if unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
            return Err(format!(
                "cannot make the console our controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    send_console(sock, &pty.master)
        .map_err(|e| format!("console socket {}: {e}", sock.display()))?;
    Ok(File::from(pty.slave))
}

/// Sends the pty master over `--console-socket` as runc does (SCM_RIGHTS).
fn send_console(sock: &Path, master: &OwnedFd) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let s = UnixStream::connect(sock)?;
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// The window size of the terminal on `fd` as (rows, cols), if it is one
/// and has a size.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Puts our own terminal (stdin) in raw mode for as long as the guard lives,
/// so keystrokes reach the guest's pty unprocessed (`husk exec -t` in a shell).
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub fn stdin() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = nix::sys::termios::tcsetattr(
            stdin.as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Points our fds 0, 1 and 2 at /dev/null. A monitor whose container's
/// terminal went to `--console-socket` does not use them, and must not keep
/// the caller's pipes open: runc's detached init has the pty as its stdio,
/// so `out=$(runc run -d --console-socket S ID)` returns at once (issue 15:
/// with husk it waited for the container to end).
pub fn detach_std() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto our own standard descriptors; nothing in this
        // process holds them as anything else.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

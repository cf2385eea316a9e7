//! Descriptors passed from the host (`--preserve-fds`): for each, the
//! object the process gets as fd 3, 4, ... and the agent's end of it, which
//! `AttachFd` connections from the host are relayed to.
//!
//! - pipe read/write: a guest pipe; the agent holds the other end (input
//!   like stdin, output buffered like stdout).
//! - listener: a listening AF_UNIX socket the agent binds under
//!   [`SOCKET_DIR`] (root only, outside every container's mount namespace);
//!   each `AttachFd` is one connection the agent makes to it, so the process
//!   only ever sees connections to accept.
//! - stream: one end of a socket pair, the agent holds the other.
//! - null: the guest's /dev/null.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use husk_protocol::{PassedFd, MAX_PASSED_FDS};

use super::process::{lock, OutBuf};

/// Where the agent binds the listening sockets it hands to processes.
pub const SOCKET_DIR: &str = "/run/husk-agent/fds";

/// The first descriptor number the process gets.
pub const FIRST_FD: i32 = 3;

/// The agent's end of one passed descriptor.
enum End {
    /// Write end of the process's input pipe, until a host connection takes it.
    Input(Mutex<Option<File>>),
    Output(Arc<OutBuf>),
    /// The path of the process's listening socket.
    Listener(PathBuf),
    Stream(Mutex<Option<UnixStream>>),
    Null,
}

/// The agent's ends of a process's passed descriptors (fd 3 + index).
#[derive(Default)]
pub struct Passed {
    ends: Vec<End>,
}

/// What an `AttachFd` connection relays once `Ok` has been sent.
pub enum FdAttachment {
    Input(File),
    Output(Arc<OutBuf>),
    /// Both ways, with half-closes passed on.
    Stream(UnixStream),
}

impl Passed {
    /// Creates the objects for `kinds`; returns the agent's ends and the
    /// process's descriptors, in order.
    pub fn create(kinds: &[PassedFd]) -> Result<(Passed, Vec<OwnedFd>), String> {
        if kinds.len() > MAX_PASSED_FDS {
            return Err(format!(
                "{} descriptors passed: at most {MAX_PASSED_FDS}",
                kinds.len()
            ));
        }
        let mut passed = Passed::default();
        let mut theirs = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.iter().enumerate() {
            let fd = FIRST_FD + i as i32;
            let (end, fd_for_process) =
                make(*kind).map_err(|e| format!("passed fd {fd} ({kind:?}): {e}"))?;
            passed.ends.push(end);
            theirs.push(fd_for_process);
        }
        Ok((passed, theirs))
    }

    /// The host end of fd `fd` (3, 4, ...) for one connection; `what` names
    /// the process in errors.
    pub fn attach(&self, fd: i32, what: &str) -> Result<FdAttachment, String> {
        let end = usize::try_from(fd - FIRST_FD)
            .ok()
            .and_then(|i| self.ends.get(i))
            .ok_or_else(|| format!("{what} has no passed fd {fd}"))?;
        let busy = || format!("passed fd {fd} of {what} is already attached");
        match end {
            End::Input(w) => lock(w).take().map(FdAttachment::Input).ok_or_else(busy),
            End::Output(buf) => {
                if buf.claim() {
                    Ok(FdAttachment::Output(buf.clone()))
                } else {
                    Err(busy())
                }
            }
            End::Stream(s) => lock(s).take().map(FdAttachment::Stream).ok_or_else(busy),
            End::Listener(path) => UnixStream::connect(path)
                .map(FdAttachment::Stream)
                .map_err(|e| format!("passed fd {fd} of {what}: connect: {e}")),
            End::Null => Err(format!("passed fd {fd} of {what} is /dev/null")),
        }
    }
}

impl Drop for Passed {
    fn drop(&mut self) {
        for e in &self.ends {
            if let End::Listener(p) = e {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn make(kind: PassedFd) -> io::Result<(End, OwnedFd)> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from);
    Ok(match kind {
        PassedFd::PipeRead => {
            let (r, w) = pipe()?;
            (End::Input(Mutex::new(Some(File::from(w)))), r)
        }
        PassedFd::PipeWrite => {
            let (r, w) = pipe()?;
            let buf = Arc::new(OutBuf::default());
            buf.start_pump(File::from(r), "passed-fd");
            (End::Output(buf), w)
        }
        PassedFd::Listener => {
            let path = socket_path()?;
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)?;
            (End::Listener(path), OwnedFd::from(l))
        }
        PassedFd::Stream => {
            let (a, b) = UnixStream::pair()?;
            (End::Stream(Mutex::new(Some(a))), OwnedFd::from(b))
        }
        PassedFd::Null => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            (End::Null, OwnedFd::from(f))
        }
    })
}

/// A fresh socket path in the agent's private directory.
fn socket_path() -> io::Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(SOCKET_DIR)?;
    Ok(PathBuf::from(SOCKET_DIR).join(format!("{}.sock", N.fetch_add(1, Ordering::Relaxed))))
}

impl FdAttachment {
    /// Relays until the stream ends; the connection is finished afterwards.
    pub fn relay(self, conn: UnixStream) {
        match self {
            FdAttachment::Input(pipe) => super::Attachment::Input(pipe).relay(conn),
            FdAttachment::Output(buf) => super::Attachment::Output(buf).relay(conn),
            FdAttachment::Stream(s) => relay_both(&conn, &s),
        }
    }
}

/// Relays `conn` and `s` both ways until both directions hit EOF (each EOF
/// is passed on as a half-close) or fail.
pub fn relay_both(conn: &UnixStream, s: &UnixStream) {
    fn one_way(mut from: &UnixStream, mut to: &UnixStream) {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    std::thread::scope(|sc| {
        // (Builder: a failed spawn must not panic PID 1.)
        let up = std::thread::Builder::new()
            .name("fd-in".into())
            .spawn_scoped(sc, || one_way(conn, s));
        if up.is_err() {
            eprintln!("husk-agent: cannot start passed-fd relay");
            return;
        }
        one_way(s, conn);
    });
}

/// Puts `fds` (the process's passed descriptors, wherever they were
/// inherited) at 3, 4, ... without close-on-exec, closing the originals.
/// Called in the helper as soon as nothing else is open on 3..3+n but the
/// sources themselves (anything else there is an error, not clobbered),
/// and before seccomp, which may forbid dup2.
pub fn install(fds: &[i32]) -> Result<(), String> {
    let n = fds.len() as i32;
    // First out of the target range, so no dup2 clobbers a source.
    let mut high = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: plain fcntl/close on descriptors this process owns.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_FD + n) };
        if h < 0 {
            return Err(format!(
                "passed fd: move {fd}: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        high.push(h);
    }
    for (i, h) in high.into_iter().enumerate() {
        let target = FIRST_FD + i as i32;
        // SAFETY: F_GETFD only asks whether the number is open.
        if unsafe { libc::fcntl(target, libc::F_GETFD) } >= 0 {
            // SAFETY: our own temporary copy.
            unsafe { libc::close(h) };
            return Err(format!("passed fd {target}: the number is in use"));
        }
        // SAFETY: dup2 onto a number in the range this process reserves for
        // passed descriptors; the result has close-on-exec clear.
        let r = unsafe { libc::dup2(h, target) };
        // SAFETY: our own temporary copy.
        unsafe { libc::close(h) };
        if r < 0 {
            return Err(format!(
                "passed fd {target}: dup2: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Borrowed views of descriptors, for `helper::start`'s `extra`.
pub fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_puts_sources_at_three_on() {
        // In a child: it rearranges the process's descriptor table.
        // SAFETY: the child only runs the code below and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls on this child's own descriptors.
            let ok = unsafe {
                let mut p1 = [0; 2];
                let mut p2 = [0; 2];
                libc::pipe(p1.as_mut_ptr());
                libc::pipe(p2.as_mut_ptr());
                let high = |fd: i32| {
                    let h = libc::fcntl(fd, libc::F_DUPFD, 20);
                    libc::close(fd);
                    h
                };
                let (r1, w1, r2, w2) = (high(p1[0]), high(p1[1]), high(p2[0]), high(p2[1]));
                // Sources on the targets, crosswise: pipe 2's write end on
                // 4, pipe 1's read end on 3.
                libc::dup2(w2, 4);
                libc::dup2(r1, 3);
                libc::close(w2);
                libc::close(r1);
                let installed = install(&[4, 3]).is_ok();
                let (mut b, mut c) = ([0u8; 1], [0u8; 1]);
                installed
                    && libc::fcntl(3, libc::F_GETFD) == 0
                    && libc::fcntl(4, libc::F_GETFD) == 0
                    && libc::write(3, b"x".as_ptr().cast(), 1) == 1
                    && libc::read(r2, b.as_mut_ptr().cast(), 1) == 1
                    && libc::write(w1, b"y".as_ptr().cast(), 1) == 1
                    && libc::read(4, c.as_mut_ptr().cast(), 1) == 1
                    && b == *b"x"
                    && c == *b"y"
            };
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut st = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st:#x}");
    }

    #[test]
    fn ends_and_attachments() {
        let (passed, theirs) = Passed::create(&[
            PassedFd::PipeRead,
            PassedFd::PipeWrite,
            PassedFd::Stream,
            PassedFd::Null,
        ])
        .unwrap();
        assert_eq!(passed.ends.len(), 4);
        assert_eq!(theirs.len(), 4);
        // Input: host bytes come out of the process's read end.
        let FdAttachment::Input(mut w) = passed.attach(3, "p").unwrap() else {
            panic!("fd 3 is an input");
        };
        assert!(passed.attach(3, "p").is_err(), "taken once");
        w.write_all(b"in").unwrap();
        drop(w);
        let mut got = String::new();
        File::from(theirs[0].try_clone().unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "in");
        assert!(matches!(passed.attach(4, "p"), Ok(FdAttachment::Output(_))));
        assert!(passed.attach(4, "p").is_err(), "claimed once");
        assert!(matches!(passed.attach(5, "p"), Ok(FdAttachment::Stream(_))));
        let e = |fd| passed.attach(fd, "p").err().unwrap_or_default();
        assert!(e(6).contains("/dev/null"));
        assert!(e(7).contains("no passed fd 7"));
        assert!(passed.attach(2, "p").is_err());
        assert!(Passed::create(&[PassedFd::Null; MAX_PASSED_FDS + 1]).is_err());
    }
}

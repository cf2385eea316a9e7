//! Host descriptors passed to a container's process (`--preserve-fds N`:
//! our fds 3..3+N-1, the process's fds 3..3+N-1, as with runc).
//!
//! A host descriptor cannot cross into the VM, so each is carried by what
//! it is (docs/architecture.md, "Passed file descriptors"):
//! - a pipe or FIFO: its bytes over one vsock stream, in the direction of
//!   its access mode (read-only: host → guest; write-only, and read-write
//!   for want of knowing, guest → host); the process gets a guest pipe;
//! - a listening stream socket (socket activation): we accept on it and
//!   carry each connection over a vsock stream of its own to a listening
//!   AF_UNIX socket the process gets; at most [`MAX_CONNECTIONS`] at once,
//!   each through fixed buffers, so a guest that stops reading stalls its
//!   connections instead of growing our memory;
//! - a connected stream socket: both ways over one vsock stream; the
//!   process gets an AF_UNIX stream socket;
//! - /dev/null: the guest's own.
//!
//! Anything else (regular files, directories, other devices, datagram
//! sockets, epoll, eventfd, ...) is refused before anything is created.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use husk_protocol::{PassedFd, Request, MAX_PASSED_FDS};

use crate::vm::AgentClient;

/// The first passed descriptor.
pub const FIRST_FD: RawFd = 3;

/// Connections carried at once for one process, over all its listeners;
/// more wait in the host socket's backlog.
pub const MAX_CONNECTIONS: usize = 16;

/// Bytes a relay holds per direction.
const RELAY_BUF: usize = 32 * 1024;

/// How long the agent has to take a connection.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassFdError {
    #[error("--preserve-fds {0}: at most {MAX_PASSED_FDS} descriptors can be passed into the VM")]
    TooMany(u32),
    #[error("--preserve-fds: fd {0} is not open")]
    NotOpen(RawFd),
    #[error(
        "--preserve-fds: fd {fd} is {what}; only pipes, FIFOs, stream sockets (listening or \
         connected) and /dev/null can be passed into the VM"
    )]
    Unsupported { fd: RawFd, what: String },
}

/// What a descriptor is and how it would cross; `Err` names what it is.
pub fn classify(fd: BorrowedFd<'_>) -> Result<PassedFd, String> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| format!("unusable ({e})"))?;
    let fmt = st.st_mode & libc::S_IFMT;
    match fmt {
        libc::S_IFIFO => {
            let fl = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
                .map_err(|e| format!("a pipe whose mode cannot be read ({e})"))?;
            Ok(if fl & libc::O_ACCMODE == libc::O_RDONLY {
                PassedFd::PipeRead
            } else {
                PassedFd::PipeWrite
            })
        }
        libc::S_IFSOCK => classify_socket(fd),
        libc::S_IFCHR if st.st_rdev == libc::makedev(1, 3) => Ok(PassedFd::Null),
        libc::S_IFCHR if nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false) => {
            Err("a terminal".into())
        }
        libc::S_IFCHR => Err("a character device".into()),
        libc::S_IFBLK => Err("a block device".into()),
        libc::S_IFREG => Err("a regular file".into()),
        libc::S_IFDIR => Err("a directory".into()),
        libc::S_IFLNK => Err("a symbolic link".into()),
        _ => {
            // eventfd, epoll, signalfd, timerfd, pidfd, ...: anon inodes.
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(match link.strip_prefix("anon_inode:") {
                Some(k) => format!("an {}", k.trim_matches(|c| c == '[' || c == ']')),
                None => "not a file, pipe or socket".into(),
            })
        }
    }
}

fn sockopt(fd: BorrowedFd<'_>, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

fn classify_socket(fd: BorrowedFd<'_>) -> Result<PassedFd, String> {
    match sockopt(fd, libc::SO_TYPE) {
        Some(libc::SOCK_STREAM) => {}
        Some(libc::SOCK_DGRAM) => return Err("a datagram socket".into()),
        Some(libc::SOCK_SEQPACKET) => return Err("a seqpacket socket".into()),
        Some(libc::SOCK_RAW) => return Err("a raw socket".into()),
        _ => return Err("a socket of an unknown type".into()),
    }
    if sockopt(fd, libc::SO_ACCEPTCONN) == Some(1) {
        return Ok(PassedFd::Listener);
    }
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `addr`.
    let r = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(PassedFd::Stream)
    } else {
        Err("a stream socket that is neither listening nor connected".into())
    }
}

/// Checks our fds 3..3+n-1 and says how each will cross; refuses the lot
/// if any cannot.
pub fn check(n: u32) -> Result<Vec<PassedFd>, PassFdError> {
    if n as usize > MAX_PASSED_FDS {
        return Err(PassFdError::TooMany(n));
    }
    (0..n as RawFd)
        .map(|i| {
            let fd = FIRST_FD + i;
            // SAFETY: F_GETFD only asks whether the number is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(PassFdError::NotOpen(fd));
            }
            // SAFETY: open (checked above) and not closed while borrowed.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            classify(b).map_err(|what| PassFdError::Unsupported { fd, what })
        })
        .collect()
}

/// For `pre_exec` of a process that relays passed descriptors (the
/// monitor, a detached exec monitor): fds 3..3+n-1 and `keep` are
/// inherited, every other descriptor above 2 is close-on-exec. Only
/// async-signal-safe calls.
pub fn inherit_only(n: usize, keep: RawFd) -> std::io::Result<()> {
    let first_other = FIRST_FD + n as RawFd;
    // SAFETY: fcntl and close_range on our own descriptor table.
    unsafe {
        for fd in FIRST_FD..first_other {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let r = libc::syscall(
            libc::SYS_close_range,
            first_other as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if r != 0 {
            // Older kernels: one by one, up to the descriptor limit.
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as RawFd
            } else {
                1024
            };
            for fd in first_other..max {
                if libc::fcntl(fd, libc::F_GETFD) >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
        if keep >= first_other && libc::fcntl(keep, libc::F_SETFD, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Takes our fds 3..3+n-1 (inherited for this purpose), close-on-exec
/// from here on: husk-vmm and hooks must not get them.
pub fn adopt(n: usize) -> Vec<OwnedFd> {
    (0..n as RawFd)
        .map(|i| {
            let fd = FIRST_FD + i;
            // SAFETY: the caller passed these descriptors for us to own
            // (checked by `check` before we were started).
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                OwnedFd::from_raw_fd(fd)
            }
        })
        .collect()
}

/// Closes our fds 3..3+n-1 once a monitor holds them (ours would keep the
/// pipes open).
pub fn close_passed(n: usize) {
    for i in 0..n as RawFd {
        // SAFETY: descriptors the caller passed for the container, which
        // nothing in this process owns.
        unsafe { libc::close(FIRST_FD + i) };
    }
}

/// Relays the passed descriptors `fds` (of kinds `kinds`) of process
/// (`id`, `exec_id`) to the agent behind `uds`. Pipes and connected
/// sockets are attached now (an error is returned before the process
/// starts); each listener gets an accepting thread. Returns the relays that
/// carry output to the host, to be drained like stdout.
pub fn relay(
    uds: &Path,
    id: &str,
    exec_id: Option<&str>,
    kinds: &[PassedFd],
    fds: Vec<OwnedFd>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let slots = Arc::new(Slots::default());
    let mut outputs = Vec::new();
    for (i, (kind, fd)) in kinds.iter().zip(fds).enumerate() {
        let target = Target {
            uds: uds.to_path_buf(),
            id: id.to_string(),
            exec_id: exec_id.map(str::to_string),
            fd: FIRST_FD + i as RawFd,
        };
        match kind {
            PassedFd::PipeRead => {
                let conn = target.attach()?;
                spawn("pfd-in", move || {
                    pump(fd.as_fd(), conn.as_fd());
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                })?;
            }
            PassedFd::PipeWrite => {
                let conn = target.attach()?;
                outputs.push(spawn("pfd-out", move || pump(conn.as_fd(), fd.as_fd()))?);
            }
            PassedFd::Stream => {
                let conn = target.attach()?;
                spawn("pfd-stream", move || both_ways(fd.as_fd(), &conn))?;
            }
            PassedFd::Listener => {
                let slots = slots.clone();
                spawn("pfd-listen", move || accept_loop(fd, target, slots))?;
            }
            PassedFd::Null => {}
        }
    }
    Ok(outputs)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| format!("cannot start a passed-fd relay: {e}"))
}

/// One passed descriptor of one process in the guest.
struct Target {
    uds: std::path::PathBuf,
    id: String,
    exec_id: Option<String>,
    fd: RawFd,
}

impl Target {
    /// A raw stream to the agent's end of the descriptor.
    fn attach(&self) -> Result<UnixStream, String> {
        let mut c = AgentClient::connect(&self.uds, ATTACH_TIMEOUT).map_err(|e| e.to_string())?;
        c.expect_ok(&Request::AttachFd {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            fd: self.fd,
        })
        .map_err(|e| format!("passed fd {}: {e}", self.fd))?;
        let s = c.into_stream();
        s.set_read_timeout(None).map_err(|e| e.to_string())?;
        s.set_write_timeout(None).map_err(|e| e.to_string())?;
        Ok(s)
    }
}

/// Free connection slots of one process.
struct Slots {
    used: Mutex<usize>,
    cv: Condvar,
}

impl Default for Slots {
    fn default() -> Slots {
        Slots {
            used: Mutex::new(0),
            cv: Condvar::new(),
        }
    }
}

impl Slots {
    fn take(self: &Arc<Self>) -> Slot {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_CONNECTIONS {
            used = self.cv.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot(self.clone())
    }
}

/// A taken slot, given back when dropped.
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = self.0.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(1);
        self.0.cv.notify_one();
    }
}

/// Accepts connections on a passed listening socket, each carried to the
/// process over a vsock stream of its own. Runs as long as this process.
fn accept_loop(listener: OwnedFd, target: Target, slots: Arc<Slots>) {
    let target = Arc::new(target);
    loop {
        // Beyond the limit connections wait in the host backlog.
        let slot = slots.take();
        let Some(conn) = accept(listener.as_fd()) else {
            return;
        };
        let target = target.clone();
        let spawned = spawn("pfd-conn", move || {
            let _slot = slot;
            // The agent refusing (the process is gone) closes the connection.
            if let Ok(vsock) = target.attach() {
                both_ways(conn.as_fd(), &vsock);
            }
        });
        if spawned.is_err() {
            // The connection and its slot went with the closure.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The next connection; None when the socket is unusable. The caller may
/// have made it non-blocking: wait with poll.
fn accept(listener: BorrowedFd<'_>) -> Option<OwnedFd> {
    loop {
        if !wait_for(listener, libc::POLLIN) {
            return None;
        }
        // SAFETY: accept4 on a listening socket; the result is ours.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
            // Out of descriptors or memory: pass, don't spin.
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => return None,
        }
    }
}

/// Waits until `fd` is ready for `events`; false if it never will be.
fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 {
            return p.revents & libc::POLLNVAL == 0;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// Copies `from` into `to` until EOF or an error either way, through one
/// fixed buffer; descriptors the caller made non-blocking are waited for.
pub fn pump(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        // SAFETY: read into our buffer, at most its length.
        let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return;
        }
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if wait_for(from, libc::POLLIN) => continue,
                _ => return,
            }
        }
        let mut off = 0;
        while off < n as usize {
            // SAFETY: write from our buffer, within what was read.
            let w = unsafe {
                libc::write(to.as_raw_fd(), buf[off..].as_ptr().cast(), n as usize - off)
            };
            if w > 0 {
                off += w as usize;
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) if wait_for(to, libc::POLLOUT) => {}
                _ => return,
            }
        }
    }
}

/// Carries a host stream socket and a vsock stream both ways; each EOF is
/// passed on as a half-close.
fn both_ways(host: BorrowedFd<'_>, vsock: &UnixStream) {
    std::thread::scope(|s| {
        let up = std::thread::Builder::new()
            .name("pfd-up".into())
            .spawn_scoped(s, || {
                pump(host, vsock.as_fd());
                let _ = vsock.shutdown(std::net::Shutdown::Write);
            });
        if up.is_err() {
            return;
        }
        pump(vsock.as_fd(), host);
        // SAFETY: shutdown on a socket we hold.
        unsafe { libc::shutdown(host.as_raw_fd(), libc::SHUT_WR) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn kind(fd: &impl AsFd) -> Result<PassedFd, String> {
        classify(fd.as_fd())
    }

    #[test]
    fn pipes_by_direction() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(kind(&r), Ok(PassedFd::PipeRead));
        assert_eq!(kind(&w), Ok(PassedFd::PipeWrite));
        // A FIFO opened read-write: guest → host (documented).
        let dir = std::env::temp_dir().join(format!("husk-pfd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        assert_eq!(kind(&rw), Ok(PassedFd::PipeWrite));
        let file = std::fs::File::create(dir.join("regular")).unwrap();
        assert_eq!(kind(&file), Err("a regular file".into()));
        let d = std::fs::File::open(&dir).unwrap();
        assert_eq!(kind(&d), Err("a directory".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sockets_by_state() {
        let dir = std::env::temp_dir().join(format!("husk-pfd-s-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.join("l")).unwrap();
        assert_eq!(kind(&l), Ok(PassedFd::Listener));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(kind(&tcp), Ok(PassedFd::Listener));
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(kind(&a), Ok(PassedFd::Stream));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(kind(&udp), Err("a datagram socket".into()));
        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(kind(&d), Err("a datagram socket".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_and_anon_inodes() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(kind(&null), Ok(PassedFd::Null));
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert_eq!(kind(&zero), Err("a character device".into()));
        // SAFETY: a fresh eventfd, owned at once.
        let ev = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
        assert_eq!(kind(&ev), Err("an eventfd".into()));
        // SAFETY: as above.
        let ep = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        assert_eq!(kind(&ep), Err("an eventpoll".into()));
    }

    #[test]
    fn refusal_message() {
        let e = PassFdError::Unsupported {
            fd: 5,
            what: "a regular file".into(),
        };
        assert_eq!(
            e.to_string(),
            "--preserve-fds: fd 5 is a regular file; only pipes, FIFOs, stream sockets \
             (listening or connected) and /dev/null can be passed into the VM"
        );
        assert_eq!(
            check(MAX_PASSED_FDS as u32 + 1),
            Err(PassFdError::TooMany(33))
        );
    }

    #[test]
    fn pump_waits_on_nonblocking_ends() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || pump(r.as_fd(), a.as_fd()));
        let mut w = std::fs::File::from(w);
        std::thread::sleep(Duration::from_millis(50));
        w.write_all(b"late").unwrap();
        drop(w);
        t.join().unwrap();
        let mut got = String::new();
        (&b).read_to_string(&mut got).unwrap();
        assert_eq!(got, "late");
    }

    /// A fake VMM socket whose "agent" takes `AttachFd` connections and
    /// hands each, as a raw stream with its fd number, to `serve`.
    fn fake_agent(
        dir: &Path,
        serve: impl Fn(i32, UnixStream) + Send + Sync + 'static,
    ) -> std::path::PathBuf {
        use husk_protocol::{HelloInfo, Response};
        let uds = dir.join("vsock.sock");
        let l = std::os::unix::net::UnixListener::bind(&uds).unwrap();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { return };
                let serve = serve.clone();
                std::thread::spawn(move || {
                    let mut line = [0u8; 13];
                    s.read_exact(&mut line).unwrap();
                    assert_eq!(&line, b"CONNECT 1024\n");
                    s.write_all(b"OK 1\n").unwrap();
                    let _: Request = husk_protocol::recv(&mut s).unwrap();
                    let hello = HelloInfo {
                        protocol_version: husk_protocol::PROTOCOL_VERSION,
                        agent_version: "test".into(),
                        kernel_version: "test".into(),
                        boot_to_listen_us: 0,
                        boot_to_init_us: 0,
                        online_cpus: 1,
                        memory_total_kib: 0,
                    };
                    husk_protocol::send(&mut s, &Response::Hello(hello)).unwrap();
                    match husk_protocol::recv(&mut s).unwrap() {
                        Request::AttachFd { id, exec_id, fd } => {
                            assert_eq!((id.as_str(), exec_id.as_deref()), ("c", Some("e")));
                            husk_protocol::send(&mut s, &Response::Ok).unwrap();
                            serve(fd, s);
                        }
                        other => panic!("{other:?}"),
                    }
                });
            }
        });
        uds
    }

    /// Every kind relayed in its direction, through the real protocol.
    #[test]
    fn relays_by_kind() {
        let dir = std::env::temp_dir().join(format!("husk-pfd-r-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (got_tx, got_rx) = std::sync::mpsc::channel();
        let got_tx = Mutex::new(got_tx);
        let uds = fake_agent(&dir, move |fd, mut s| match fd {
            // pipe read: what the host wrote, until its EOF
            3 => {
                let mut v = String::new();
                s.read_to_string(&mut v).unwrap();
                got_tx.lock().unwrap().send(v).unwrap();
            }
            // pipe write: the process's output
            4 => s.write_all(b"from the guest").unwrap(),
            // stream or listener connection: an echo that answers at EOF
            _ => {
                let mut v = String::new();
                s.read_to_string(&mut v).unwrap();
                write!(s, "fd {fd}: {v}").unwrap();
            }
        });
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (stream_ours, stream_theirs) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let null = std::fs::File::open("/dev/null").unwrap();
        let fds: Vec<OwnedFd> = vec![
            in_r,
            out_w,
            stream_theirs.into(),
            listener.into(),
            null.into(),
        ];
        let kinds: Vec<PassedFd> = fds.iter().map(|f| kind(f).unwrap()).collect();
        let outputs = relay(&uds, "c", Some("e"), &kinds, fds).unwrap();
        std::fs::File::from(in_w)
            .write_all(b"to the guest")
            .unwrap();
        assert_eq!(
            got_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            "to the guest"
        );
        let mut out = String::new();
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "from the guest");
        assert_eq!(outputs.len(), 1);
        let ask = |mut c: std::net::TcpStream, what: &str| {
            c.write_all(what.as_bytes()).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut v = String::new();
            c.read_to_string(&mut v).unwrap();
            v
        };
        (&stream_ours).write_all(b"s").unwrap();
        stream_ours.shutdown(std::net::Shutdown::Write).unwrap();
        let mut v = String::new();
        (&stream_ours).read_to_string(&mut v).unwrap();
        assert_eq!(v, "fd 5: s");
        for i in 0..3 {
            let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            assert_eq!(ask(c, &format!("c{i}")), format!("fd 6: c{i}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A guest that never answers holds at most MAX_CONNECTIONS host
    /// connections; the rest wait in the host backlog.
    #[test]
    fn connections_are_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("husk-pfd-b-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let attached = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let a = attached.clone();
        let uds = fake_agent(&dir, move |_, s| {
            a.fetch_add(1, Ordering::SeqCst);
            // Hold the connection until told, then drop it.
            let _ = release_rx.lock().unwrap().recv();
            drop(s);
        });
        let listener = std::os::unix::net::UnixListener::bind(dir.join("l")).unwrap();
        let fds = vec![OwnedFd::from(listener)];
        relay(&uds, "c", Some("e"), &[PassedFd::Listener], fds).unwrap();
        // Clients that hang up once the server has (as real ones do).
        let clients: Vec<_> = (0..MAX_CONNECTIONS + 4)
            .map(|_| {
                let mut c = UnixStream::connect(dir.join("l")).unwrap();
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = c.read_to_end(&mut v);
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while attached.load(Ordering::SeqCst) < MAX_CONNECTIONS {
            assert!(std::time::Instant::now() < deadline, "slots never filled");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(attached.load(Ordering::SeqCst), MAX_CONNECTIONS);
        // One finished connection lets one more in.
        release_tx.send(()).unwrap();
        while attached.load(Ordering::SeqCst) < MAX_CONNECTIONS + 1 {
            assert!(std::time::Instant::now() < deadline, "no slot came back");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(attached.load(Ordering::SeqCst), MAX_CONNECTIONS + 1);
        for _ in 0..MAX_CONNECTIONS + 4 {
            let _ = release_tx.send(());
        }
        for c in clients {
            c.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

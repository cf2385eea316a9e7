//! A task's stdio: the FIFOs (or files) containerd hands over on the host,
//! relayed to the process's streams in the guest, one vsock connection per
//! stream (stdin EOF is a half-close of ours).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::{Request, StdioStream};

use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// What containerd asked for: paths (or `file://` URIs), empty when unused.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

pub struct Io {
    /// The stream the process reads its stdin from (pipes only).
    stdin: Option<UnixStream>,
    /// Every socket we hold, to end the copies by force.
    sockets: Vec<UnixStream>,
    outputs: Vec<JoinHandle<()>>,
    /// Wakes the stdin relay (containerd's stdin FIFO): CloseIO or release.
    stdin_wake: Option<OwnedFd>,
}

type Sink = Box<dyn Write + Send>;

/// Where output goes: a FIFO is opened read-write (it never blocks, and a
/// reader that comes and goes, like `ctr task attach`, does not make our
/// writes fail), a `file://` URI or plain file is appended to.
fn open_output(uri: &str) -> Result<Sink> {
    if uri.is_empty() {
        return Ok(Box::new(std::io::sink()));
    }
    let path = match uri.split_once("://") {
        None => uri,
        Some(("file", p)) => p,
        Some((scheme, _)) => {
            return Err(Error::InvalidArgument(format!(
                "stdio {uri}: {scheme}:// logging is not supported"
            )))
        }
    };
    let fifo = std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    let f = if fifo {
        OpenOptions::new().read(true).write(true).open(path)
    } else {
        OpenOptions::new().append(true).create(true).open(path)
    }
    .map_err(|e| Error::internal(&format!("cannot open {path}"), e))?;
    Ok(Box::new(f))
}

fn attach_stream(
    sb: &Sandbox,
    id: &str,
    exec_id: Option<&str>,
    stream: StdioStream,
) -> Result<UnixStream> {
    let mut c = sb.agent()?;
    c.expect_ok(&Request::AttachStdio {
        id: id.to_string(),
        exec_id: exec_id.map(str::to_string),
        stream,
    })?;
    let s = c.into_stream();
    s.set_read_timeout(None)
        .map_err(|e| Error::internal("vsock", e))?;
    Ok(s)
}

fn clone(s: &UnixStream) -> Result<UnixStream> {
    s.try_clone().map_err(|e| Error::internal("vsock", e))
}

impl Io {
    /// An Io with no streams.
    pub fn detached() -> Io {
        Io {
            stdin: None,
            sockets: Vec::new(),
            outputs: Vec::new(),
            stdin_wake: None,
        }
    }

    /// Attaches every stream of process (`id`, `exec_id`) before it starts.
    pub fn attach(sb: &Sandbox, id: &str, exec_id: Option<&str>, p: &StdioPaths) -> Result<Io> {
        // Outputs first: a bad path fails before anything is attached.
        let stdout = open_output(&p.stdout)?;
        let stderr = if p.terminal {
            None
        } else {
            Some(open_output(&p.stderr)?)
        };
        let mut io = Io::detached();
        let input = if p.terminal {
            let term = attach_stream(sb, id, exec_id, StdioStream::Terminal)?;
            io.sockets.push(clone(&term)?);
            io.outputs.push(spawn_copy(clone(&term)?, stdout)?);
            term
        } else {
            let sin = attach_stream(sb, id, exec_id, StdioStream::Stdin)?;
            io.sockets.push(clone(&sin)?);
            let sout = attach_stream(sb, id, exec_id, StdioStream::Stdout)?;
            io.sockets.push(clone(&sout)?);
            let serr = attach_stream(sb, id, exec_id, StdioStream::Stderr)?;
            io.sockets.push(clone(&serr)?);
            io.outputs.push(spawn_copy(sout, stdout)?);
            if let Some(stderr) = stderr {
                io.outputs.push(spawn_copy(serr, stderr)?);
            }
            io.stdin = Some(clone(&sin)?);
            sin
        };
        if p.stdin.is_empty() {
            if !p.terminal {
                let _ = input.shutdown(std::net::Shutdown::Write);
            }
        } else {
            io.stdin_wake = Some(spawn_stdin(&p.stdin, input, !p.terminal)?);
        }
        Ok(io)
    }

    /// containerd's CloseIO: EOF on the process's stdin, after what the
    /// client wrote before it. The client sends CloseIO as soon as its copy
    /// into the FIFO is done, while those bytes may still be in the FIFO:
    /// the relay drains them first, then half-closes.
    pub fn close_stdin(&self) {
        match &self.stdin_wake {
            Some(w) => wake(w),
            None => {
                if let Some(s) = &self.stdin {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
            }
        }
    }

    /// Waits up to `timeout` for the output to be copied to the end, then
    /// ends the copies by force (a process that left a child holding its
    /// stdout must not hold up its exit).
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.outputs.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.outputs.iter().any(|h| !h.is_finished()) {
            for s in &self.sockets {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        for h in self.outputs.drain(..) {
            let _ = h.join();
        }
    }

    /// Ends everything: the process is being deleted.
    pub fn release(&mut self) {
        for s in &self.sockets {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.drain(Duration::ZERO);
        if let Some(w) = self.stdin_wake.take() {
            wake(&w);
        }
        self.stdin = None;
        self.sockets.clear();
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.release();
    }
}

fn spawn_copy(mut from: UnixStream, mut to: Sink) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("stdio-out".into())
        .spawn(move || {
            // Not io::copy: see husk::stdio::relay.
            let _ = husk::stdio::relay(&mut from, &mut to);
            let _ = to.flush();
        })
        .map_err(|e| Error::internal("cannot start a stdio thread", e))
}

fn wake(w: &OwnedFd) {
    let _ = nix::unistd::write(w, b"x");
}

/// At most this much is drained from the stdin FIFO after CloseIO: what a
/// client wrote before it (a pipe holds 64 KiB by default, up to 1 MiB),
/// not whatever a writer that ignores CloseIO keeps pushing.
const STDIN_DRAIN_MAX: usize = 1 << 20;

/// Relays the stdin FIFO (or file) at `path` into `to` on its own thread;
/// returns the write end of the pipe that wakes it to finish. The FIFO is
/// opened non-blocking here, so nothing waits for the client's writer
/// (poll reports no hang-up on a FIFO before its first writer has come).
fn spawn_stdin(path: &str, to: UnixStream, half_close: bool) -> Result<OwnedFd> {
    let from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::internal(&format!("cannot open {path}"), e))?;
    let (wake_r, wake_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::internal("pipe", std::io::Error::from(e)))?;
    std::thread::Builder::new()
        .name("stdio-in".into())
        .spawn(move || {
            let mut to = to;
            relay_stdin(from, &wake_r, &mut to);
            if half_close {
                let _ = to.shutdown(std::net::Shutdown::Write);
            }
        })
        .map_err(|e| Error::internal("cannot start a stdio thread", e))?;
    Ok(wake_w)
}

/// Copies `from` to `to` until EOF, an error, or a wake-up, after which it
/// relays what `from` already holds.
fn relay_stdin(mut from: File, wake: &OwnedFd, to: &mut UnixStream) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (input, woken) = {
            let mut fds = [
                PollFd::new(from.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
            let ready = |f: &PollFd| !f.revents().unwrap_or(PollFlags::empty()).is_empty();
            (ready(&fds[0]), ready(&fds[1]))
        };
        if woken {
            let mut left = STDIN_DRAIN_MAX;
            while left > 0 {
                let cap = buf.len().min(left);
                match from.read(&mut buf[..cap]) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        left -= n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            return;
        }
        if input {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_uris() {
        let dir = std::env::temp_dir().join(format!("husk-shim-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("log");
        let mut w = open_output(&format!("file://{}", f.display())).unwrap();
        w.write_all(b"a").unwrap();
        let mut w = open_output(f.to_str().unwrap()).unwrap();
        w.write_all(b"b").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"ab");
        let e = open_output("binary:///usr/bin/logger").err().unwrap();
        assert!(e.to_string().contains("binary:// logging is not supported"));
        // A FIFO without a reader must not block.
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut w = open_output(fifo.to_str().unwrap()).unwrap();
        w.write_all(b"x").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// CloseIO right after the client's write (ctr sends it as soon as its
    /// copy into the FIFO returns): the bytes already in the FIFO reach the
    /// process before its EOF, even while the client's writer is still open.
    #[test]
    fn close_io_relays_what_the_fifo_holds_first() {
        let dir = std::env::temp_dir().join(format!("husk-shim-stdin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (ours, mut guest) = UnixStream::pair().unwrap();
        // Opened before any writer: must neither block nor see EOF.
        let wake_w = spawn_stdin(fifo.to_str().unwrap(), ours, true).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"piped through\n").unwrap();
        wake(&wake_w);
        guest
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        guest.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"piped through\n");
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

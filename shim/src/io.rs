//! A task's stdio: the FIFOs (or files) containerd hands over on the host,
//! relayed to the process's streams in the guest, one vsock connection per
//! stream (stdin EOF is a half-close of ours).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// The stdin FIFO while its opener may still be blocked in open(2).
    stdin_fifo: Option<(PathBuf, Arc<AtomicBool>)>,
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
            stdin_fifo: None,
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
            let opened = Arc::new(AtomicBool::new(false));
            io.stdin_fifo = Some((PathBuf::from(&p.stdin), opened.clone()));
            spawn_stdin(PathBuf::from(&p.stdin), input, !p.terminal, opened)?;
        }
        Ok(io)
    }

    /// containerd's CloseIO: EOF on the process's stdin.
    pub fn close_stdin(&self) {
        if let Some(s) = &self.stdin {
            let _ = s.shutdown(std::net::Shutdown::Write);
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
        // A stdin opener still waiting for a writer: be that writer, briefly.
        if let Some((path, opened)) = self.stdin_fifo.take() {
            if !opened.load(Ordering::SeqCst) {
                let _ = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path);
            }
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

/// Opening a FIFO for reading blocks until a writer comes (the client may
/// open its end after Create), so it happens on this thread.
fn spawn_stdin(
    path: PathBuf,
    mut to: UnixStream,
    half_close: bool,
    opened: Arc<AtomicBool>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("stdio-in".into())
        .spawn(move || {
            let from = File::open(&path);
            opened.store(true, Ordering::SeqCst);
            if let Ok(mut from) = from {
                let _ = husk::stdio::relay(&mut from, &mut to);
            }
            if half_close {
                let _ = to.shutdown(std::net::Shutdown::Write);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::internal("cannot start a stdio thread", e))
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
}

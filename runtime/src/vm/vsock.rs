//! Host side of the hybrid vsock: `CONNECT <port>\n` on the VMM's unix socket.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::VmError;

/// Opens a stream to guest port `port`, all within `timeout`. Fails if the
/// VMM answers anything but `OK <hostport>\n` (the guest refused, or
/// nothing listens there).
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VmError> {
    let deadline = Instant::now() + timeout;
    let mut s = connect_unix(uds, deadline)?;
    let left = || {
        let l = deadline.saturating_duration_since(Instant::now());
        (l >= Duration::from_millis(1)).then_some(l)
    };
    let timed_out = || VmError::Vsock(format!("guest port {port}: no answer within {timeout:?}"));
    let Some(l) = left() else {
        return Err(timed_out());
    };
    s.set_write_timeout(Some(l))?;
    std::io::Write::write_all(&mut s, format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| VmError::Vsock(format!("guest port {port}: {e}")))?;
    // Read byte by byte: anything after the newline belongs to the guest.
    let mut line = Vec::with_capacity(16);
    let mut b = [0u8; 1];
    while line.len() < 32 {
        let Some(l) = left() else {
            return Err(timed_out());
        };
        s.set_read_timeout(Some(l))?;
        match s.read(&mut b) {
            Ok(0) => {
                return Err(VmError::Vsock(format!(
                    "guest port {port}: connection refused"
                )))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(e) => return Err(VmError::Vsock(format!("guest port {port}: {e}"))),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("OK ").map(|p| p.parse::<u32>()) {
        Some(Ok(_)) => {
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            Ok(s)
        }
        _ => Err(VmError::Vsock(format!(
            "guest port {port}: unexpected answer {}",
            crate::untrusted::debug(&line)
        ))),
    }
}

/// A non-blocking connect, retried while the VMM's backlog is full (a
/// blocking one would wait for as long as the VMM does not accept).
fn connect_unix(uds: &Path, deadline: Instant) -> Result<UnixStream, VmError> {
    let err = |e: Errno| VmError::Vsock(format!("connect {}: {e}", uds.display()));
    let addr = UnixAddr::new(uds).map_err(err)?;
    loop {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(err)?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let s = UnixStream::from(fd);
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(err(e)),
        }
    }
}

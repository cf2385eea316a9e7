//! Host side of the hybrid vsock: `CONNECT <port>\n` on the VMM's unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::VmError;

/// Opens a stream to guest port `port`. Fails if the VMM answers anything but
/// `OK <hostport>\n` (the guest refused, or nothing listens there).
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VmError> {
    let mut s = UnixStream::connect(uds)
        .map_err(|e| VmError::Vsock(format!("connect {}: {e}", uds.display())))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read byte by byte: anything after the newline belongs to the guest.
    let mut line = Vec::with_capacity(16);
    let mut b = [0u8; 1];
    while line.len() < 32 {
        match s.read(&mut b) {
            Ok(0) => {
                return Err(VmError::Vsock(format!(
                    "guest port {port}: connection refused"
                )))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(VmError::Vsock(format!("guest port {port}: {e}"))),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("OK ").map(|p| p.parse::<u32>()) {
        Some(Ok(_)) => {
            s.set_read_timeout(None)?;
            Ok(s)
        }
        _ => Err(VmError::Vsock(format!(
            "guest port {port}: unexpected answer {line:?}"
        ))),
    }
}

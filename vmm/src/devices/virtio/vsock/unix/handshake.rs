//! Host clients of the vsock unix socket before they said which guest port
//! they want: `CONNECT <port>\n`.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::devices::virtio::vsock::defs::MAX_CONNECT_LINE;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineStatus {
    /// Need more bytes.
    Incomplete,
    /// A valid `CONNECT <port>` line was read (and nothing after it).
    Connect(u32),
    /// Bad line, EOF or error: drop the client.
    Rejected(&'static str),
}

/// An accepted client that has not finished its `CONNECT` line.
pub(crate) struct PendingClient {
    pub stream: UnixStream,
    line: Vec<u8>,
    pub accepted_at: Instant,
}

impl PendingClient {
    /// `stream` must be non-blocking.
    pub fn new(stream: UnixStream, now: Instant) -> Self {
        PendingClient {
            stream,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
            accepted_at: now,
        }
    }

    /// Consume what the client sent so far, one byte at a time so that nothing
    /// past the newline is taken from the stream: bytes after it are the first
    /// data for the guest and are read once the connection is established.
    pub fn read_line(&mut self) -> LineStatus {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return LineStatus::Rejected("EOF before CONNECT line"),
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return match parse_connect_line(&self.line) {
                            Some(port) => LineStatus::Connect(port),
                            None => LineStatus::Rejected("malformed CONNECT line"),
                        };
                    }
                    // +1 for the newline still to come.
                    if self.line.len() + 1 >= MAX_CONNECT_LINE {
                        return LineStatus::Rejected("CONNECT line too long");
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineStatus::Incomplete,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return LineStatus::Rejected("read error"),
            }
        }
    }
}

/// Parse the line (without its `\n`): exactly `CONNECT <decimal u32>`, an
/// optional trailing `\r` tolerated.
pub(crate) fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse::<u32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parse() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"CONNECT 0"), Some(0));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Some(52));
        for bad in [
            &b""[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT  52",
            b"CONNECT 52 ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 4294967296",
            b"CONNECT 0x10",
            b"connect 52",
            b"CONNECT 5\x002",
            b"HELLO 52",
            b"CONNECT \xff",
        ] {
            assert_eq!(
                parse_connect_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn client(data: &[u8]) -> (PendingClient, UnixStream) {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.write_all(data).unwrap();
        (PendingClient::new(a, Instant::now()), b)
    }

    #[test]
    fn reads_line_but_not_beyond() {
        let (mut c, mut b) = client(b"CONN");
        assert_eq!(c.read_line(), LineStatus::Incomplete);
        b.write_all(b"ECT 77\npayload").unwrap();
        assert_eq!(c.read_line(), LineStatus::Connect(77));
        let mut rest = [0u8; 7];
        c.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"payload");
    }

    #[test]
    fn rejects() {
        let (mut c, _b) = client(b"CONNECT 123456789012345678901234567890\n");
        assert_eq!(c.read_line(), LineStatus::Rejected("CONNECT line too long"));
        // Exactly the limit (31 chars + newline) is fine ...
        let (mut c, _b) = client(b"CONNECT 00000000000000000000052\n");
        assert_eq!(
            c.read_line(),
            LineStatus::Rejected("malformed CONNECT line")
        );
        let (mut c, _b) = client(b"CONNECT 0000000052\n");
        assert_eq!(c.read_line(), LineStatus::Connect(52));
        let (mut c, _b) = client(b"CONNECT abc\n");
        assert_eq!(
            c.read_line(),
            LineStatus::Rejected("malformed CONNECT line")
        );
        let (mut c, b) = client(b"CONNECT 5");
        drop(b);
        assert_eq!(
            c.read_line(),
            LineStatus::Rejected("EOF before CONNECT line")
        );
    }
}

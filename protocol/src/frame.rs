use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// Largest payload either side accepts (1 MiB).
pub const MAX_FRAME: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame's payload. `Closed` means EOF at a frame boundary.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let got = read_full(r, &mut len)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < len.len() {
        return Err(FrameError::Truncated { expected: 4, got });
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len.into()));
    }
    let mut buf = vec![0u8; len as usize];
    let got = read_full(r, &mut buf)?;
    if got < buf.len() {
        return Err(FrameError::Truncated {
            expected: buf.len(),
            got,
        });
    }
    Ok(buf)
}

/// Writes one frame as a single `write_all` so frames never interleave on a
/// shared stream.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(payload.len() as u64))?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Serializes and sends one message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    write_frame(w, &serde_json::to_vec(msg)?)
}

/// Receives and parses one message.
pub fn recv<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(&read_frame(r)?)?)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < buf.len() {
        match r.read(&mut buf[off..]) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        send(&mut buf, &Request::Ping { seq: 7 }).unwrap();
        let got: Request = recv(&mut buf.as_slice()).unwrap();
        assert_eq!(got, Request::Ping { seq: 7 });
    }

    #[test]
    fn several_frames_in_one_stream() {
        let mut buf = Vec::new();
        for seq in 0..3 {
            send(&mut buf, &Response::Pong { seq }).unwrap();
        }
        let mut r = buf.as_slice();
        for seq in 0..3 {
            assert_eq!(recv::<Response>(&mut r).unwrap(), Response::Pong { seq });
        }
        assert!(matches!(recv::<Response>(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn eof_at_boundary_is_closed() {
        assert!(matches!(
            read_frame(&mut [].as_slice()),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn truncated_length_prefix() {
        assert!(matches!(
            read_frame(&mut [0u8, 0].as_slice()),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[test]
    fn truncated_payload() {
        let mut f = framed(b"{\"ping\":{\"seq\":1}}");
        f.truncate(10);
        assert!(matches!(
            read_frame(&mut f.as_slice()),
            Err(FrameError::Truncated { got: 6, .. })
        ));
    }

    #[test]
    fn oversized_frame_refused_before_allocation() {
        let f = (MAX_FRAME + 1).to_be_bytes();
        assert!(matches!(
            read_frame(&mut f.as_slice()),
            Err(FrameError::TooLarge(n)) if n == u64::from(MAX_FRAME) + 1
        ));
        let f = u32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame(&mut f.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn oversized_write_refused() {
        let big = vec![b'x'; MAX_FRAME as usize + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), &big),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_payload_is_malformed() {
        for junk in [
            &b"\xff\xfe\x00garbage"[..],
            b"{}",
            b"[1,2]",
            b"{\"nope\":1}",
            b"",
        ] {
            let f = framed(junk);
            assert!(
                matches!(
                    recv::<Request>(&mut f.as_slice()),
                    Err(FrameError::Malformed(_))
                ),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn wrong_field_types_are_malformed() {
        let f = framed(br#"{"ping":{"seq":"one"}}"#);
        assert!(matches!(
            recv::<Request>(&mut f.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        let f = framed(br#"{"ping":{"seq":-1}}"#);
        assert!(matches!(
            recv::<Request>(&mut f.as_slice()),
            Err(FrameError::Malformed(_))
        ));
    }
}

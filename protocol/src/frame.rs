use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

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
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A stream whose reads and writes can be bounded in time. The bound is
/// re-set to the time left before every read and write, so a peer that
/// trickles one byte at a time cannot stretch a call past its deadline.
pub trait Deadline: Read + Write {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Deadline for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
}

/// `r`, with every read bounded by `deadline` (none: unbounded).
struct Bounded<'a, S: Deadline> {
    s: &'a mut S,
    deadline: Option<(Instant, Duration)>,
}

impl<S: Deadline> Bounded<'_, S> {
    /// Sets the socket timeouts to what is left; `Timeout` once nothing is.
    fn arm(&mut self) -> Result<(), FrameError> {
        let Some((at, total)) = self.deadline else {
            self.s.set_read_timeout(None)?;
            self.s.set_write_timeout(None)?;
            return Ok(());
        };
        let left = at.saturating_duration_since(Instant::now());
        // A zero timeout means "block forever" to the socket API.
        if left < Duration::from_millis(1) {
            return Err(FrameError::Timeout(total));
        }
        self.s.set_read_timeout(Some(left))?;
        self.s.set_write_timeout(Some(left))?;
        Ok(())
    }

    fn expired(&self, e: &io::Error) -> Option<FrameError> {
        let (at, total) = self.deadline?;
        let timed_out = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        (timed_out || Instant::now() >= at).then_some(FrameError::Timeout(total))
    }
}

impl<S: Deadline> Read for Bounded<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm().map_err(io::Error::other)?;
        self.s.read(buf)
    }
}

/// Sends `req` and reads one reply, the whole exchange within `timeout`
/// (None: no bound, for requests that wait on purpose, like `WaitProcess`).
pub fn call<Q: Serialize, A: DeserializeOwned>(
    s: &mut impl Deadline,
    req: &Q,
    timeout: Option<Duration>,
) -> Result<A, FrameError> {
    let mut b = Bounded {
        s,
        deadline: timeout.map(|t| (Instant::now() + t, t)),
    };
    let r = send_bounded(&mut b, req).and_then(|()| recv_bounded(&mut b));
    // Leave the stream as we found it for whoever uses it next.
    let _ = b.s.set_read_timeout(None);
    let _ = b.s.set_write_timeout(None);
    r
}

/// Receives one message within `timeout`.
pub fn recv_within<A: DeserializeOwned>(
    s: &mut impl Deadline,
    timeout: Duration,
) -> Result<A, FrameError> {
    let mut b = Bounded {
        s,
        deadline: Some((Instant::now() + timeout, timeout)),
    };
    let r = recv_bounded(&mut b);
    let _ = b.s.set_read_timeout(None);
    let _ = b.s.set_write_timeout(None);
    r
}

fn send_bounded<S: Deadline>(
    b: &mut Bounded<'_, S>,
    msg: &impl Serialize,
) -> Result<(), FrameError> {
    let frame = framed(&serde_json::to_vec(msg)?)?;
    let mut off = 0;
    while off < frame.len() {
        b.arm()?;
        match b.s.write(&frame[off..]) {
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(b.expired(&e).unwrap_or(FrameError::Io(e))),
        }
    }
    Ok(())
}

fn recv_bounded<S: Deadline, A: DeserializeOwned>(b: &mut Bounded<'_, S>) -> Result<A, FrameError> {
    let payload = match read_frame(b) {
        Err(FrameError::Io(e)) => Err(unwrap_timeout(b, e)),
        other => other,
    }?;
    Ok(serde_json::from_slice(&payload)?)
}

/// Turns the errors `Bounded` produced back into `Timeout`.
fn unwrap_timeout<S: Deadline>(b: &Bounded<'_, S>, e: io::Error) -> FrameError {
    if e.get_ref()
        .and_then(|i| i.downcast_ref::<FrameError>())
        .is_some_and(|f| matches!(f, FrameError::Timeout(_)))
    {
        if let Some((_, total)) = b.deadline {
            return FrameError::Timeout(total);
        }
    }
    b.expired(&e).unwrap_or(FrameError::Io(e))
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
    w.write_all(&framed(payload)?)?;
    w.flush()?;
    Ok(())
}

fn framed(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(payload.len() as u64))?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    Ok(buf)
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

    /// A peer that answers with a big length and then one byte now and then
    /// must not hold a call past its deadline (review F5).
    #[test]
    fn slow_loris_reply_hits_the_deadline() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _: Request = recv(&mut theirs).unwrap();
            let _ = theirs.write_all(&MAX_FRAME.to_be_bytes());
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(200));
                if theirs.write_all(b"x").is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let r: Result<Response, _> = call(
            &mut ours,
            &Request::Ping { seq: 1 },
            Some(Duration::from_millis(700)),
        );
        let took = start.elapsed();
        assert!(matches!(r, Err(FrameError::Timeout(_))), "{r:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        drop(ours);
        t.join().unwrap();
    }

    #[test]
    fn call_without_deadline_and_in_time() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _: Request = recv(&mut theirs).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            send(&mut theirs, &Response::Pong { seq: 2 }).unwrap();
            let _: Request = recv(&mut theirs).unwrap();
            send(&mut theirs, &Response::Pong { seq: 3 }).unwrap();
        });
        let r: Response = call(&mut ours, &Request::Ping { seq: 2 }, None).unwrap();
        assert_eq!(r, Response::Pong { seq: 2 });
        let r: Response = call(
            &mut ours,
            &Request::Ping { seq: 3 },
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(r, Response::Pong { seq: 3 });
        t.join().unwrap();
    }
}

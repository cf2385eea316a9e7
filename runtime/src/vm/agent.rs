//! Requests to the in-guest agent.
//!
//! Every reply is attacker-controlled, including how fast it comes: each
//! call has one overall deadline (connect, hello and every request), not a
//! per-read timeout a trickling guest could renew forever.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_protocol::{self as proto, FrameError, HelloInfo, Request, Response};

use super::VmError;
use crate::untrusted;

pub struct AgentClient {
    stream: UnixStream,
    /// Bound on each later request; None for requests that wait on purpose.
    timeout: Option<Duration>,
    pub hello: HelloInfo,
}

impl AgentClient {
    /// Connects to the agent port and exchanges hellos, all within
    /// `timeout`, which also bounds every later request on this client.
    /// Refused connections are retried until then: the agent may not be
    /// listening yet.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<AgentClient, VmError> {
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match super::vsock::connect(uds, proto::AGENT_PORT, left) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let hello = match call(
            &mut stream,
            &Request::Hello {
                protocol_version: proto::PROTOCOL_VERSION,
            },
            Some(left.max(Duration::from_millis(1))),
        )? {
            Response::Hello(h) => h,
            other => {
                return Err(VmError::Agent(format!(
                    "unexpected hello reply {}",
                    untrusted::debug(&other)
                )))
            }
        };
        Ok(AgentClient {
            stream,
            timeout: Some(timeout),
            hello,
        })
    }

    /// Changes the bound on later requests (None: wait as long as it takes,
    /// for `WaitProcess`; only where nothing else waits on this thread).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    pub fn ping(&mut self, seq: u64) -> Result<(), VmError> {
        match self.request(&Request::Ping { seq })? {
            Response::Pong { seq: s } if s == seq => Ok(()),
            other => Err(unexpected("ping reply", &other)),
        }
    }

    /// Asks the agent to sync and reset the VM.
    pub fn shutdown(mut self) -> Result<(), VmError> {
        match self.request(&Request::Shutdown)? {
            Response::ShuttingDown => Ok(()),
            other => Err(unexpected("shutdown reply", &other)),
        }
    }

    /// Sends one request and returns the reply; `Error` replies become `Err`.
    pub fn request(&mut self, req: &Request) -> Result<Response, VmError> {
        call(&mut self.stream, req, self.timeout)
    }

    /// Sends a request expecting `Ok`.
    pub fn expect_ok(&mut self, req: &Request) -> Result<(), VmError> {
        match self.request(req)? {
            Response::Ok => Ok(()),
            other => Err(unexpected("reply", &other)),
        }
    }

    /// The raw stream, for tests that speak the protocol by hand.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Gives up the client for its stream (after `AttachStdio` it carries raw bytes).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }
}

/// An error for a reply we did not expect, its text escaped and capped.
pub fn unexpected(what: &str, r: &Response) -> VmError {
    VmError::Agent(format!("unexpected {what} {}", untrusted::debug(r)))
}

fn call(
    stream: &mut UnixStream,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Response, VmError> {
    match proto::call(stream, req, timeout) {
        Ok(Response::Error { message }) => Err(VmError::Agent(untrusted::text(&message))),
        Ok(r) => Ok(r),
        Err(FrameError::Timeout(t)) => Err(VmError::AgentTimeout(t)),
        Err(e) => Err(VmError::Agent(untrusted::text(&e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake VMM socket whose "agent" accepts the connection, then answers
    /// the hello with a 1 MiB length and one byte every `every`.
    pub(crate) fn slow_loris(path: &Path, every: Duration) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { return };
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = r.read_line(&mut line);
                    let _ = s.write_all(b"OK 1\n");
                    let _ = s.write_all(&proto::MAX_FRAME.to_be_bytes());
                    for _ in 0..1000 {
                        if s.write_all(b"{").is_err() {
                            return;
                        }
                        std::thread::sleep(every);
                    }
                });
            }
        })
    }

    #[test]
    fn slow_loris_agent_cannot_hold_connect() {
        let dir = std::env::temp_dir().join(format!("husk-agent-loris-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("vsock.sock");
        let _srv = slow_loris(&sock, Duration::from_millis(300));
        let start = Instant::now();
        let r = AgentClient::connect(&sock, Duration::from_secs(2));
        let took = start.elapsed();
        assert!(matches!(r, Err(VmError::AgentTimeout(_))), "{:?}", r.err());
        assert!(took < Duration::from_secs(4), "took {took:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn guest_error_text_is_escaped() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _: Request = proto::recv(&mut theirs).unwrap();
            proto::send(
                &mut theirs,
                &Response::Error {
                    message: format!("bad\n\x1b[31mfake log line{}", "x".repeat(5000)),
                },
            )
            .unwrap();
        });
        let e = call(
            &mut ours,
            &Request::Ping { seq: 1 },
            Some(Duration::from_secs(5)),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        assert!(e.len() < untrusted::MAX_TEXT + 64, "{}", e.len());
        t.join().unwrap();
    }
}

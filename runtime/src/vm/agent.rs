//! Requests to the in-guest agent.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_protocol::{self as proto, HelloInfo, Request, Response};

use super::VmError;

pub struct AgentClient {
    stream: UnixStream,
    pub hello: HelloInfo,
}

impl AgentClient {
    /// Connects to the agent port and exchanges hellos. Retries refused
    /// connections until `timeout`: the agent may not be listening yet.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<AgentClient, VmError> {
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match super::vsock::connect(uds, proto::AGENT_PORT, timeout) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let hello = match call(
            &mut stream,
            &Request::Hello {
                protocol_version: proto::PROTOCOL_VERSION,
            },
        )? {
            Response::Hello(h) => h,
            other => return Err(VmError::Agent(format!("unexpected hello reply {other:?}"))),
        };
        Ok(AgentClient { stream, hello })
    }

    pub fn ping(&mut self, seq: u64) -> Result<(), VmError> {
        match call(&mut self.stream, &Request::Ping { seq })? {
            Response::Pong { seq: s } if s == seq => Ok(()),
            other => Err(VmError::Agent(format!("bad ping reply {other:?}"))),
        }
    }

    /// Asks the agent to sync and reset the VM.
    pub fn shutdown(mut self) -> Result<(), VmError> {
        match call(&mut self.stream, &Request::Shutdown)? {
            Response::ShuttingDown => Ok(()),
            other => Err(VmError::Agent(format!("bad shutdown reply {other:?}"))),
        }
    }

    /// Sends one request and returns the reply; `Error` replies become `Err`.
    pub fn request(&mut self, req: &Request) -> Result<Response, VmError> {
        call(&mut self.stream, req)
    }

    /// Sends a request expecting `Ok`.
    pub fn expect_ok(&mut self, req: &Request) -> Result<(), VmError> {
        match self.request(req)? {
            Response::Ok => Ok(()),
            other => Err(VmError::Agent(format!("unexpected reply {other:?}"))),
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

fn call(stream: &mut UnixStream, req: &Request) -> Result<Response, VmError> {
    proto::send(stream, req).map_err(|e| VmError::Agent(e.to_string()))?;
    match proto::recv(stream) {
        Ok(Response::Error { message }) => Err(VmError::Agent(message)),
        Ok(r) => Ok(r),
        Err(e) => Err(VmError::Agent(e.to_string())),
    }
}

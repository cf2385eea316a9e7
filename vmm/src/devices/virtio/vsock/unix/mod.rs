//! Firecracker-style hybrid vsock backend on unix domain sockets.
//!
//! * Host-initiated: a client connects to `uds_path` and writes
//!   `CONNECT <guest port>\n`; once the guest accepts it reads
//!   `OK <host port>\n`, after which the stream carries the connection's data.
//!   If the guest refuses (or does not answer in time) the client is closed.
//! * Guest-initiated: a guest connect to (CID 2, port P) becomes a unix
//!   connection to `<uds_path>_P`; no such listener means RST.

mod handshake;
mod muxer;
mod sys;

pub(crate) use muxer::{Muxer, RxFill};

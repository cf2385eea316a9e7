//! virtio-vsock (virtio spec 5.10) with a Firecracker-style hybrid unix-socket
//! backend.
//!
//! Layout:
//! * `device`: the `VirtioDevice` side: config space
//!   (`le64 guest_cid`), features, activation, TX/RX queue processing.
//! * `event_handler`: the `event_manager::MutEventSubscriber` impl.
//! * `unix`: the backend: host listener, `CONNECT` handshake, connection
//!   multiplexing onto the queues.
//! * `connection`: per-connection state machine and credit accounting.
//!
//! Usage by the VMM:
//! ```ignore
//! let vsock = Arc::new(Mutex::new(Vsock::new(guest_cid, "/run/husk/<id>/vsock.sock")?));
//! event_manager.add_subscriber(vsock.clone());   // watches activation + backend fds
//! mmio_transport_for(vsock);                       // VirtioDevice calls from vCPUs
//! ```
//! The transport calls `activate()`; the device then starts on the next
//! iteration of the event loop. Host clients may connect at any time; those
//! arriving before activation wait (bounded) until the guest driver is up.

mod connection;
pub mod defs;
mod device;
mod event_handler;
mod metrics;
mod packet;
mod unix;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::Vsock;
pub use metrics::VsockMetrics;

/// Errors creating a [`Vsock`].
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("invalid guest CID {0}: must be between 3 and 4294967294")]
    InvalidGuestCid(u64),
    #[error("cannot bind vsock unix socket {path:?}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vsock backend setup failed: {0}")]
    Backend(#[source] io::Error),
}

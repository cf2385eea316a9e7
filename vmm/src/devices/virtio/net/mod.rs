//! virtio-net (virtio spec 5.1) on a tap device the runtime created in the
//! container's network namespace and passed in as an inherited descriptor.
//!
//! Layout (Firecracker's split):
//! * `device`: the [`VirtioDevice`](super::VirtioDevice) side: config space
//!   (`mac[6]`, `le16 status`, `le16 max_virtqueue_pairs`, `le16 mtu`),
//!   features, activation/reset, and the RX/TX queue work.
//! * `event_handler`: the `event_manager::MutEventSubscriber` impl. Each
//!   device has its own `EventManager` on its own `net-worker` thread (see
//!   `builder`), so the thread can have its own seccomp filter.
//! * `header`: every byte the guest controls: chain shapes and the
//!   `virtio_net_hdr_v1` in front of each TX frame. Fuzzed alone
//!   (`fuzz/fuzz_targets/net_header.rs`).
//! * `tap`: the tap descriptor: the checks it is a VNET_HDR tap, offloads,
//!   `readv`/`writev`.
//! * `metrics`: counters of what a hostile guest caused (each kind logged once).
//!
//! One RX/TX queue pair, no control queue, no MRG_RXBUF: without mergeable
//! buffers each RX chain holds one whole frame, so a guest that acks the
//! GUEST_TSO features posts 64 KiB chains (Linux does: "big packets").
//! RX: a chain is popped before the tap is read, and the frame is read with
//! `readv` straight into it; with no chain the tap is not read (nor watched)
//! until the guest kicks RX, so nothing is read only to be dropped.
//! TX: the header is copied out and checked, the frame is written with
//! `writev` straight from guest memory; on EAGAIN the chain stays in the
//! queue and the tap is watched for EPOLLOUT.

mod device;
mod event_handler;
mod header;
mod metrics;
mod tap;

#[cfg(test)]
mod tests;

// Fuzzing only (fuzz/net_header): the guest-byte parsers.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

use std::io;
use std::os::fd::RawFd;

pub use device::Net;
pub use metrics::NetMetrics;
pub use tap::Tap;

/// Queue indices.
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const NUM_QUEUES: usize = 2;
/// Maximum size of each queue. Without MRG_RXBUF a Linux guest with GUEST_TSO
/// uses ~19 descriptors per RX buffer: 256 entries hold 13 of them.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Most chains one queue is served per event: a guest that keeps a queue
/// full cannot starve the other queue (and the tap) on the worker's loop.
/// The rest comes on the next turn (TX kicks itself; the tap stays readable).
pub const BUDGET: usize = QUEUE_MAX_SIZE as usize;

/// Errors creating a [`Net`] device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("tap fd {fd} is not open: {source}")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not a tap device (TUNGETIFF: {source})")]
    NotTun {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error(
        "fd {fd} is a tun device with flags {flags:#x}: need IFF_TAP, IFF_NO_PI and IFF_VNET_HDR"
    )]
    WrongFlags { fd: RawFd, flags: u32 },
    #[error("tap fd {fd}: {what}: {source}")]
    Setup {
        fd: RawFd,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot create eventfd: {0}")]
    EventFd(#[source] io::Error),
}

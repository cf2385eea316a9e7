//! Protocol constants (virtio spec 5.10) and the device's resource limits.

use std::time::Duration;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// CIDs 0..=2 are reserved (hypervisor, local, host).
pub const MIN_GUEST_CID: u64 = 3;

/// Queue indices.
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
pub const NUM_QUEUES: usize = 3;
pub const QUEUE_MAX_SIZE: u16 = 256;

/// `type` field: the only socket type we implement.
pub const TYPE_STREAM: u16 = 1;

/// `op` field values.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `flags` of `OP_SHUTDOWN`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of `OP_SHUTDOWN`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Largest payload we accept in, or put into, one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// Receive buffer we advertise to the guest for each connection (`buf_alloc`).
/// Guest data that the host socket cannot take right away is buffered up to
/// this much; a guest that sends beyond it gets its connection reset.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// When the free space the guest believes we have drops below this, and we
/// have forwarded data it has not been told about, we send a credit update.
pub const CREDIT_UPDATE_THRESHOLD: u32 = MAX_PKT_DATA;

/// Most descriptor chains (TX and RX together) one event-loop turn handles.
/// A guest that keeps both queues fed would otherwise keep the pump going
/// and starve host connections (the agent's) on the same loop; the rest is
/// picked up on the next turn (the device kicks itself).
pub const PUMP_BUDGET: usize = QUEUE_MAX_SIZE as usize;

/// Cap on live connections (both directions, including host connections that
/// wait for the guest's answer).
pub const MAX_CONNECTIONS: usize = 1024;

/// Cap on accepted host clients that have not yet sent their `CONNECT` line.
pub const MAX_PENDING_CLIENTS: usize = 64;

/// Longest `CONNECT <port>\n` line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// How long a host client may take to send `CONNECT`, and how long the guest
/// may take to answer a connection request once it was put in its RX queue.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Granularity of the handshake timer.
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// First local port handed out to host-initiated connections.
pub const HOST_PORT_BASE: u32 = 1 << 30;

/// Once this many RSTs wait for RX buffers we stop taking guest TX packets
/// (each can produce one more RST) until the guest gives us RX buffers.
pub const RST_QUEUE_SOFT_CAP: usize = 256;
/// Hard bound on queued RSTs; beyond it RSTs are dropped (and counted).
pub const RST_QUEUE_HARD_CAP: usize = 1024;

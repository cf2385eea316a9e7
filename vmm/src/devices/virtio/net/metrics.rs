//! Counters of frames and of what a hostile or buggy guest (or a broken tap)
//! caused. Each problem is logged once, when its counter first moves off
//! zero; after that only the counter grows, so the guest cannot flood the log.

/// Snapshot of a device's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames written to the tap, and their bytes (without the header).
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames put into guest RX chains, and their bytes (without the header).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// TX chains refused (shape, length, header; see `header::ChainError`),
    /// used with length 0.
    pub tx_malformed_chains: u64,
    /// RX chains refused (read-only descriptors, too small, outside memory),
    /// used with length 0.
    pub rx_malformed_chains: u64,
    /// Frames from the tap larger than the RX chain they were read into: dropped.
    pub rx_frames_too_big: u64,
    /// Frames from the tap with a partial checksum or GSO type the guest did
    /// not ack (queued before a renegotiation): dropped.
    pub rx_frames_unacked_offload: u64,
    /// Frames the tap refused (other than EAGAIN): dropped, chain used.
    pub tx_tap_errors: u64,
    /// Tap reads that failed (other than EAGAIN).
    pub rx_tap_errors: u64,
    /// Times TX stopped on EAGAIN until the tap was writable again.
    pub tx_eagain: u64,
    /// Times RX stopped because the guest had no RX buffer.
    pub rx_no_buffers: u64,
}

/// Bump `counter`; log `msg` at warn level only the first time.
macro_rules! count_and_warn_once {
    ($counter:expr, $($arg:tt)+) => {{
        if $counter == 0 {
            log::warn!($($arg)+);
            log::warn!("net: further occurrences of this problem are only counted");
        }
        $counter = $counter.saturating_add(1);
    }};
}
pub(crate) use count_and_warn_once;

//! Counters of the things a hostile or buggy guest (or host client) can cause.
//!
//! Each category is logged once, when its counter first moves off zero; after
//! that only the counter grows, so the guest cannot flood the VMM's log.

/// Snapshot of the device's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockMetrics {
    /// TX chains that did not parse as a vsock packet (consumed with len 0).
    pub tx_malformed_chains: u64,
    /// RX chains that could not hold a packet (consumed with len 0).
    pub rx_malformed_chains: u64,
    /// Guest packets dropped for a wrong src_cid / dst_cid.
    pub tx_bad_address: u64,
    /// Guest packets answered with RST (unknown connection, bad type, protocol error).
    pub tx_rst_replies: u64,
    /// RSTs that had to be dropped because too many were already queued.
    pub rst_dropped: u64,
    /// Guest connection requests refused because the connection table is full.
    pub conn_limit_hits: u64,
    /// Host clients dropped (bad `CONNECT` line, timeout, limits).
    pub host_clients_rejected: u64,
    /// Connections reset because the guest broke the protocol (e.g. overran its credit).
    pub guest_protocol_errors: u64,
    /// Connections whose handshake timed out.
    pub handshake_timeouts: u64,
}

impl VsockMetrics {
    pub(crate) fn merged(&self, other: &VsockMetrics) -> VsockMetrics {
        VsockMetrics {
            tx_malformed_chains: self.tx_malformed_chains + other.tx_malformed_chains,
            rx_malformed_chains: self.rx_malformed_chains + other.rx_malformed_chains,
            tx_bad_address: self.tx_bad_address + other.tx_bad_address,
            tx_rst_replies: self.tx_rst_replies + other.tx_rst_replies,
            rst_dropped: self.rst_dropped + other.rst_dropped,
            conn_limit_hits: self.conn_limit_hits + other.conn_limit_hits,
            host_clients_rejected: self.host_clients_rejected + other.host_clients_rejected,
            guest_protocol_errors: self.guest_protocol_errors + other.guest_protocol_errors,
            handshake_timeouts: self.handshake_timeouts + other.handshake_timeouts,
        }
    }
}

/// Bump `counter`; log `msg` at warn level only the first time.
macro_rules! count_and_warn_once {
    ($counter:expr, $($arg:tt)+) => {{
        if $counter == 0 {
            log::warn!($($arg)+);
            log::warn!("vsock: further occurrences of this problem are only counted");
        }
        $counter = $counter.saturating_add(1);
    }};
}
pub(crate) use count_and_warn_once;

//! Counters of what a hostile or buggy guest can cause.
//!
//! Shared between the device (which reports them) and the worker thread
//! (which counts). Each kind is logged once, when its counter leaves zero;
//! after that only the counter grows, so the guest cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// Snapshot of the device's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsMetrics {
    /// Descriptor chains handed to the FUSE server (or rejected before it).
    pub requests: u64,
    /// Chains that could not be mapped or carry no complete FUSE header
    /// (bad addresses, no readable part, truncated header).
    pub malformed_chains: u64,
    /// Chains larger than the device accepts.
    pub oversized_chains: u64,
    /// Requests the FUSE server could not decode or answer.
    pub failed_requests: u64,
    /// Times a queue was skipped because its avail index was impossible.
    pub bad_avail_index: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub malformed_chains: AtomicU64,
    pub oversized_chains: AtomicU64,
    pub failed_requests: AtomicU64,
    pub bad_avail_index: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> FsMetrics {
        FsMetrics {
            requests: self.requests.load(Ordering::Relaxed),
            malformed_chains: self.malformed_chains.load(Ordering::Relaxed),
            oversized_chains: self.oversized_chains.load(Ordering::Relaxed),
            failed_requests: self.failed_requests.load(Ordering::Relaxed),
            bad_avail_index: self.bad_avail_index.load(Ordering::Relaxed),
        }
    }
}

/// Bump `counter`; return true (the caller logs) only the first time.
pub(crate) fn first_time(counter: &AtomicU64) -> bool {
    counter.fetch_add(1, Ordering::Relaxed) == 0
}

/// Bump `counter`; log at warn level only the first time.
macro_rules! count_and_warn_once {
    ($counter:expr, $($arg:tt)+) => {{
        if $crate::devices::virtio::fs::metrics::first_time(&$counter) {
            log::warn!($($arg)+);
            log::warn!("virtio-fs: further occurrences of this problem are only counted");
        }
    }};
}
pub(crate) use count_and_warn_once;

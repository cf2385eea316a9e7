//! Built only with the `fuzzing` feature, for `fuzz/fuzz_targets/net_header.rs`:
//! the parsers of guest-controlled bytes (`header`), exactly as the device
//! calls them, plus the offload mapping. No tap, no thread.

pub use super::device::tap_offload_flags;
pub use super::header::{
    check_tx_header, fix_rx_header, parse_rx, parse_tx, ChainError, HeaderError, RxBuffers,
    TxFrame, VnetHdr, ETH_HLEN, MAX_FRAME_LEN, MAX_SEGMENTS, MIN_RX_CHAIN, VNET_HDR_LEN,
};

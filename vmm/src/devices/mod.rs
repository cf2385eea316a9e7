//! Devices the guest sees, and the bus that routes its port and MMIO accesses to them.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice};

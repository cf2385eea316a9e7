//! Legacy PC devices the guest kernel expects on fixed I/O ports.

mod i8042;
mod serial;

pub use i8042::{ResetRequest, I8042};
pub use serial::{Capped, Serial, CONSOLE_FILE_LIMIT};

/// Signals an interrupt line by writing an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

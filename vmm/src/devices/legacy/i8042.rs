//! The i8042 keyboard controller, only for its CPU-reset command: with
//! `reboot=k` the guest resets by writing 0xFE to port 0x64, which ends the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::devices::BusDevice;

/// Set when the guest asked for a reset; the vCPU that did it checks this right
/// after its port write returns and stops the VM.
#[derive(Clone, Default)]
pub struct ResetRequest(Arc<AtomicBool>);

impl ResetRequest {
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

impl vm_superio::Trigger for ResetRequest {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

pub struct I8042(vm_superio::I8042Device<ResetRequest>);

impl I8042 {
    /// Ports 0x60 (data) to 0x64 (command); 0x61 is taken by KVM's in-kernel PIT speaker.
    pub const PORT: u64 = 0x60;
    pub const LEN: u64 = 5;

    pub fn new(reset: ResetRequest) -> Self {
        I8042(vm_superio::I8042Device::new(reset))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.0.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            let _ = self.0.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_sets_request_once() {
        let req = ResetRequest::default();
        let mut dev = I8042::new(req.clone());
        dev.write(4, &[0xfd]);
        assert!(!req.take());
        dev.write(4, &[0xfe]);
        assert!(req.take());
        assert!(!req.take());
        // Wrong width or port: ignored.
        dev.write(4, &[0xfe, 0]);
        dev.write(0, &[0xfe]);
        assert!(!req.take());
    }
}

//! 16550A UART on 0x3f8 (COM1), from vm-superio; guest output goes to a writer.

use std::io::Write;

use crate::devices::BusDevice;

use super::IrqTrigger;

pub struct Serial(
    vm_superio::Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
);

impl Serial {
    pub const PORT: u64 = 0x3f8;
    pub const LEN: u64 = 8;
    pub const IRQ: u32 = 4;

    pub fn new(irq: IrqTrigger, out: Box<dyn Write + Send>) -> Self {
        Serial(vm_superio::Serial::new(irq, out))
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.0.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            // A full or broken output sink must not stop the guest.
            let _ = self.0.write(off, *b);
        }
    }
}

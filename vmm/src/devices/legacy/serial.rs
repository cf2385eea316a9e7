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

/// A console file with a ceiling: the guest decides how much it prints, and
/// the host's disk is not its to fill (review F14). Past `limit` bytes one
/// notice is written and the rest is dropped (still reported as written, so
/// the UART never stalls the guest).
pub struct Capped<W: Write> {
    inner: W,
    left: u64,
    noted: bool,
}

/// What a console file may grow to.
pub const CONSOLE_FILE_LIMIT: u64 = 64 << 20;

impl<W: Write> Capped<W> {
    pub fn new(inner: W, limit: u64) -> Self {
        Capped {
            inner,
            left: limit,
            noted: false,
        }
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if !self.noted {
                self.noted = true;
                self.inner.write_all(
                    b"\n[husk-vmm: console output limit reached; the rest is dropped]\n",
                )?;
            }
            return Ok(buf.len());
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let w = self.inner.write(&buf[..n])?;
        self.left -= w as u64;
        Ok(w)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_file_stops_at_its_limit() {
        let mut out = Vec::new();
        {
            let mut c = Capped::new(&mut out, 10);
            for _ in 0..1000 {
                c.write_all(b"abcd").unwrap();
            }
        }
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("abcdabcdab\n[husk-vmm: console output limit"),
            "{text}"
        );
        assert_eq!(text.matches("limit reached").count(), 1);
        assert!(text.len() < 100);
    }
}

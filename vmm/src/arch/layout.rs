//! Guest physical memory layout.
//!
//! ```text
//! 0x0000_0500  boot GDT            0x0000_6000  PVH start info
//! 0x0000_0520  boot IDT            0x0000_7000  e820 memory map
//! 0x0002_0000  kernel command line 0x0009_fc00  MP table (last KiB of base memory)
//! 0x0010_0000  high memory: kernel (at its ELF load address), initrd at the top
//! 0xc000_0000  MMIO gap: virtio-mmio devices at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 3 GiB continues here
//! ```

pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const MEMMAP_START: u64 = 0x7000;
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Linux scans the last KiB of 640 KiB of base memory for the MP floating pointer.
pub const MPTABLE_START: u64 = 0x9_fc00;
pub const EBDA_START: u64 = MPTABLE_START;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// IOAPIC pins 5..=23 are free for virtio devices (0-4 are the PIT, PIC cascade, COM1...).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
pub const IRQ_MAX: u32 = 23;

/// Guest RAM ranges for `mem_size` bytes, leaving the MMIO gap below 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (1 << 32, 1 << 30)]
        );
    }
}

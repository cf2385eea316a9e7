//! PVH direct boot of an uncompressed ELF `vmlinux`.
//!
//! linux-loader loads the ELF segments and finds the `XEN_ELFNOTE_PHYS32_ENTRY`
//! note; we add the initrd (as the single PVH module), the command line and the
//! `hvm_start_info` with its e820 map. No decompressor, no real-mode setup.

use std::fs::File;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};

use crate::arch::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MEMMAP_START, MMIO_GAP_START,
    PVH_INFO_START,
};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const MODLIST_START: u64 = 0x6800;
const E820_RAM: u32 = 1;
const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("not an ELF file (husk-vmm boots an uncompressed vmlinux, not a bzImage)")]
    NotElf,
    #[error("cannot load the ELF kernel: {0}")]
    Kernel(String),
    #[error("the kernel has no PVH entry point (build it with CONFIG_PVH=y)")]
    NoPvhEntry,
    #[error(
        "initrd of {size} bytes does not fit in guest memory below {limit:#x} above the kernel"
    )]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("cannot read the initrd: {0}")]
    InitrdRead(vm_memory::GuestMemoryError),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot write boot parameters: {0}")]
    BootParams(String),
}

pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub end: u64,
}

pub fn load_kernel<M: GuestMemory>(mem: &M, kernel: &mut File) -> Result<LoadedKernel, BootError> {
    let res =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(|e| match e {
            linux_loader::loader::Error::Elf(
                linux_loader::loader::elf::Error::InvalidElfMagicNumber
                | linux_loader::loader::elf::Error::ReadElfHeader,
            ) => BootError::NotElf,
            linux_loader::loader::Error::Elf(e) => BootError::Kernel(e.to_string()),
            e => BootError::Kernel(e.to_string()),
        })?;
    match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry,
            end: res.kernel_end,
        }),
        _ => Err(BootError::NoPvhEntry),
    }
}

/// Places the initrd page-aligned at the top of RAM below the MMIO gap,
/// where it stays clear of the kernel and the kernel's early allocations.
pub fn load_initrd<M: GuestMemory>(
    mem: &M,
    initrd: &mut File,
    size: u64,
    kernel_end: u64,
) -> Result<GuestAddress, BootError> {
    let low_end = mem
        .iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map_or(0, |r| r.len())
        .min(MMIO_GAP_START);
    let too_big = BootError::InitrdTooBig {
        size,
        limit: low_end,
    };
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= kernel_end.next_multiple_of(PAGE))
        .ok_or(too_big)?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig {
        size,
        limit: low_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(BootError::InitrdRead)?;
    Ok(GuestAddress(addr))
}

pub fn new_cmdline(base: &str) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    c.insert_str(base)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(c)
}

/// Writes the command line and the PVH start info (e820 map, initrd module).
pub fn write_boot_params<M: GuestMemory>(
    mem: &M,
    cmdline: &Cmdline,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    let memmap = e820_map(mem);
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let module = initrd.map(|(addr, size)| hvm_modlist_entry {
        paddr: addr.raw_value(),
        size,
        ..Default::default()
    });
    if module.is_some() {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    if let Some(m) = module {
        params.set_modules(&[m], GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem)
        .map_err(|e| BootError::BootParams(e.to_string()))
}

/// RAM as the guest should use it: base memory below the EBDA/MP table, then
/// everything from 1 MiB (the hole between holds legacy areas).
fn e820_map<M: GuestMemory>(mem: &M) -> Vec<hvm_memmap_table_entry> {
    let ram = |addr: u64, size: u64| hvm_memmap_table_entry {
        addr,
        size,
        type_: E820_RAM,
        reserved: 0,
    };
    let mut map = vec![ram(0, EBDA_START)];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            map.push(ram(start, end - start));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemoryMmap;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = crate::arch::layout::ram_ranges(size)
            .into_iter()
            .map(|(a, s)| (GuestAddress(a), s as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!("husk-pvh-{}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn not_an_elf_is_rejected() {
        let m = mem(64 << 20);
        let mut f = temp_file("junk", b"this is not a kernel at all, just some text");
        assert!(matches!(load_kernel(&m, &mut f), Err(BootError::NotElf)));
    }

    #[test]
    fn initrd_goes_to_top_of_low_memory() {
        let m = mem(64 << 20);
        let data = vec![0xabu8; 10_000];
        let mut f = temp_file("initrd", &data);
        let addr = load_initrd(&m, &mut f, data.len() as u64, 0x200_0000).unwrap();
        assert_eq!(addr.raw_value() % PAGE, 0);
        assert!(addr.raw_value() + data.len() as u64 <= 64 << 20);
        let mut back = vec![0u8; data.len()];
        m.read_slice(&mut back, addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn initrd_overlapping_kernel_is_refused() {
        let m = mem(16 << 20);
        let mut f = temp_file("big", &[0u8; 4096]);
        assert!(matches!(
            load_initrd(&m, &mut f, 4096, 16 << 20),
            Err(BootError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn start_info_and_memmap() {
        let m = mem(4 << 30);
        let cmdline = new_cmdline("console=ttyS0 panic=1").unwrap();
        write_boot_params(&m, &cmdline, Some((GuestAddress(0x100_0000), 1234))).unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC);
        assert_eq!(si.memmap_entries, 3);
        assert_eq!(si.nr_modules, 1);
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(MEMMAP_START + 2 * 24)).unwrap();
        assert_eq!((e.addr, e.size), (1 << 32, 1 << 30));
        let md: hvm_modlist_entry = m.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((md.paddr, md.size), (0x100_0000, 1234));
        let mut c = [0u8; 22];
        m.read_slice(&mut c, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&c[..21], b"console=ttyS0 panic=1");
        assert_eq!(c[21], 0);
    }
}

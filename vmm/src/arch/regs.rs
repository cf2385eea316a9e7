//! Initial vCPU state for the PVH entry point: 32-bit protected mode, paging
//! off, flat segments, `%ebx` = physical address of the start info.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START, PVH_INFO_START};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("KVM vCPU ioctl {0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("cannot write the boot GDT to guest memory")]
    Gdt,
    #[error("KVM accepted only {0} of the boot MSRs")]
    Msrs(usize),
}

/// Flat 4 GiB code (execute/read), data (read/write) and a busy 32-bit TSS.
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];
const CODE_SEL: u16 = 1;
const DATA_SEL: u16 = 2;
const TSS_SEL: u16 = 3;

/// Packs a segment descriptor: `flags` holds the access byte (bits 0-7) and
/// G/DB/L/AVL (bits 12-15); `limit` is 20 bits.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = (((e >> 48) & 0xf) << 16 | (e & 0xffff)) as u32;
    kvm_segment {
        base: ((e >> 32) & 0xff00_0000) | ((e >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT/IDT once for the whole VM.
pub fn write_boot_tables<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|_| RegsError::Gdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::Gdt)
}

/// Sets the boot vCPU to enter the kernel's PVH entry point.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment(CODE_SEL);
    let data = segment(DATA_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SEL);
    sregs.cr0 = 0x1 | 0x10; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

/// FPU, MSRs and local-APIC wiring common to every vCPU. Application processors
/// keep KVM's reset state otherwise: the guest starts them with INIT/SIPI.
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))?;

    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs(0))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(RegsError::Msrs(set));
    }

    // LINT0 delivers ExtINT (the legacy PIC), LINT1 NMI, as firmware would set them.
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    set_lvt_mode(&mut lapic, APIC_LVT0, 0x7);
    set_lvt_mode(&mut lapic, APIC_LVT1, 0x4);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_LVTERR: usize = 0x370;
const APIC_LVT_MASKED: u32 = 1 << 16;

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = *b as _;
    }
}

fn set_lvt_mode(lapic: &mut kvm_lapic_state, off: usize, mode: u32) {
    let v = lapic_reg(lapic, off);
    set_lapic_reg(lapic, off, (v & !0x700) | (mode << 8));
}

const APIC_SPIV: usize = 0xf0;
const APIC_SPIV_APIC_ENABLED: u32 = 1 << 8;

/// Whether the guest went through Linux's orderly `machine_shutdown()` before
/// resetting, read off the local APIC of the vCPU that reset:
/// - orderly `reboot`: the APIC is cleared (every LVT masked, the error LVT
///   included), then put back in virtual-wire mode, which re-enables it (SPIV);
/// - panic: `smp_send_stop()` disables the APIC (SPIV enable bit clear) and the
///   reset follows without re-enabling it;
/// - a bare emergency restart (sysrq-b) leaves the running state: the error
///   LVT is still unmasked.
pub fn lapic_was_shut_down(vcpu: &VcpuFd) -> Option<bool> {
    let lapic = vcpu.get_lapic().ok()?;
    Some(orderly_shutdown_state(&lapic))
}

fn orderly_shutdown_state(lapic: &kvm_lapic_state) -> bool {
    let enabled = lapic_reg(lapic, APIC_SPIV) & APIC_SPIV_APIC_ENABLED != 0;
    let err_masked = lapic_reg(lapic, APIC_LVTERR) & APIC_LVT_MASKED != 0;
    enabled && err_masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments() {
        let cs = segment(CODE_SEL);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (cs.type_, cs.present, cs.s, cs.db, cs.g, cs.l),
            (0xb, 1, 1, 1, 1, 0)
        );
        let ds = segment(DATA_SEL);
        assert_eq!((ds.type_, ds.limit, ds.selector), (0x3, 0xffff_ffff, 16));
        let tr = segment(TSS_SEL);
        assert_eq!((tr.type_, tr.limit, tr.s, tr.g), (0xb, 0x67, 0, 0));
    }

    #[test]
    fn shutdown_states() {
        let state = |spiv: u32, lvterr: u32| {
            let mut l = kvm_lapic_state::default();
            set_lapic_reg(&mut l, APIC_SPIV, spiv);
            set_lapic_reg(&mut l, APIC_LVTERR, lvterr);
            orderly_shutdown_state(&l)
        };
        // Running, and after sysrq-b: enabled, error LVT live.
        assert!(!state(0x1ff, 0xfe));
        // Orderly reboot: virtual wire re-enabled, error LVT masked.
        assert!(state(0x10f, APIC_LVT_MASKED));
        // Panic: disabled by smp_send_stop().
        assert!(!state(0x0ff, APIC_LVT_MASKED));
    }

    #[test]
    fn lvt_mode_keeps_other_bits() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_00ff);
        set_lvt_mode(&mut l, APIC_LVT0, 0x7);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_07ff);
    }
}

//! Per-vCPU CPUID, derived from what KVM supports on this host.
//!
//! KVM_GET_SUPPORTED_CPUID describes the host; each vCPU needs its own APIC id
//! and a topology that matches the VM, and the guest must not be told about
//! features we do not virtualize (power management, PMU, MONITOR/MWAIT).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX.
const ECX_MONITOR: u32 = 1 << 3;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_PDCM: u32 = 1 << 15; // perf capabilities MSR: no PMU here
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX.
const EDX_HTT: u32 = 1 << 28;
/// CPUID.06H:EAX[2], "APIC timer always running".
const EAX_ARAT: u32 = 1 << 2;
/// Leaf 0x8000_0001 ECX (AMD).
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const AMD_ECX_TOPOEXT: u32 = 1 << 22;
const AMD_ECX_PERFCTR_CORE: u32 = 1 << 23;

/// Leaf 0xB / 0x1F level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// What the host's KVM can do that `KVM_GET_SUPPORTED_CPUID` does not say.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCaps {
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC emulates TSC-deadline
    /// mode. KVM leaves it to the VMM to advertise; without it Linux calibrates
    /// the LAPIC timer against the PIT at boot, which is slow and, under nested
    /// virtualization, can fail and leave the guest without a local timer.
    pub tsc_deadline: bool,
}

/// Rewrites `cpuid` (a copy of KVM's supported list) for vCPU `cpu_id` of `num_cpus`,
/// presenting one socket of `num_cpus` single-threaded cores.
pub fn filter(cpuid: &mut CpuId, cpu_id: u8, num_cpus: u8, caps: HostCaps) {
    let n = u32::from(num_cpus);
    // Bits of the APIC id that number the core within the package.
    let core_bits = 32 - (n.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        patch(e, u32::from(cpu_id), n, core_bits);
        if e.function == 0x1 && caps.tsc_deadline {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

fn patch(e: &mut kvm_cpuid_entry2, apic_id: u32, n: u32, core_bits: u32) {
    match e.function {
        0x1 => {
            // EBX[31:24] initial APIC id, [23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((n & 0xff) << 16);
            e.ecx = (e.ecx & !(ECX_MONITOR | ECX_PDCM)) | ECX_HYPERVISOR;
            if n > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        0x4 => {
            // Deterministic cache parameters (Intel): EAX[31:26] cores per package - 1,
            // [25:14] logical processors sharing the cache - 1 (no SMT: 1, or all for L3).
            let shared = if (e.eax >> 5) & 0x7 == 3 { n - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((n - 1) << 26) | (shared << 14);
        }
        // MONITOR/MWAIT: nothing behind it.
        0x5 => clear(e),
        // Thermal/power management: nothing behind it but ARAT, which KVM
        // offers (its LAPIC timer keeps running in every guest C-state).
        // Without ARAT Linux marks the LAPIC timer C3STOP and keeps the PIT
        // as the idle broadcast timer: every idle entry reprograms it (port
        // I/O) and the host's kvm-pit worker injects its ticks.
        0x6 => {
            let arat = e.eax & EAX_ARAT;
            clear(e);
            e.eax = arat;
        }
        // Architectural PMU: not virtualized for husk guests.
        0xa => clear(e),
        0xb | 0x1f => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = n;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        0x8000_0001 => {
            e.ecx &= !(AMD_ECX_CMP_LEGACY | AMD_ECX_TOPOEXT | AMD_ECX_PERFCTR_CORE);
        }
        0x8000_0008 => {
            // AMD: ECX[15:12] APIC id size, [7:0] cores per package - 1.
            e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | ((n - 1) & 0xff);
        }
        // Extended topology (AMD TOPOEXT, hidden above) and AMD power management.
        0x8000_0007 | 0x8000_001e => clear(e),
        _ => {}
    }
}

fn clear(e: &mut kvm_cpuid_entry2) {
    e.eax = 0;
    e.ebx = 0;
    e.ecx = 0;
    e.edx = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn cpuid(entries: &[kvm_cpuid_entry2]) -> CpuId {
        CpuId::from_entries(entries).unwrap()
    }

    #[test]
    fn apic_id_and_count_per_vcpu() {
        let base = [entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        for id in 0..4u8 {
            let mut c = cpuid(&base);
            filter(&mut c, id, 4, HostCaps { tsc_deadline: true });
            assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
            let e = c.as_slice();
            assert_eq!(e[0].ebx >> 24, u32::from(id));
            assert_eq!((e[0].ebx >> 16) & 0xff, 4);
            assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
            assert_eq!(e[0].ecx & ECX_MONITOR, 0);
            assert_ne!(e[0].edx & EDX_HTT, 0);
            assert!(e[1..].iter().all(|x| x.edx == u32::from(id)));
            assert_eq!((e[2].eax, e[2].ebx), (2, 4));
            assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (0, 0, 2));
        }
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut c = cpuid(&[entry(1, 0), entry(0x8000_0008, 0)]);
        filter(&mut c, 0, 1, HostCaps::default());
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!(c.as_slice()[1].ecx & 0xf0ff, 0);
    }

    #[test]
    fn leaf_6_keeps_only_arat() {
        let mut c = cpuid(&[entry(6, 0)]);
        filter(&mut c, 0, 2, HostCaps::default());
        let e = c.as_slice()[0];
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (EAX_ARAT, 0, 0, 0));
        // Not offered by KVM: not invented either.
        let mut c = cpuid(&[kvm_cpuid_entry2 {
            function: 6,
            eax: !EAX_ARAT,
            ..Default::default()
        }]);
        filter(&mut c, 0, 2, HostCaps::default());
        assert_eq!(c.as_slice()[0].eax, 0);
    }

    #[test]
    fn hidden_leaves_are_cleared() {
        let mut c = cpuid(&[entry(0xa, 0), entry(0x8000_001e, 0)]);
        filter(&mut c, 0, 2, HostCaps::default());
        for e in c.as_slice() {
            assert_eq!(
                (e.eax, e.ebx, e.ecx, e.edx),
                (0, 0, 0, 0),
                "{:#x}",
                e.function
            );
        }
    }
}

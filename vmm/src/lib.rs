//! husk-vmm: a small KVM virtual machine monitor for one container sandbox.
//!
//! Layout (after Firecracker / Cloud Hypervisor):
//! - [`arch`]: x86_64 specifics — memory layout, CPUID, MSRs, registers, MP table;
//! - [`boot`]: loading an ELF `vmlinux` and entering it through PVH;
//! - [`devices`]: the I/O bus, legacy devices (serial, i8042) and virtio;
//! - [`vstate`]: the KVM VM and vCPU threads;
//! - [`builder`]: putting a [`config::VmConfig`] together into a running VM;
//! - [`jail`]: the cage the VMM runs in (namespaces, pivot_root, capabilities,
//!   rlimits, seccomp).

pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
pub mod jail;
pub mod memory;
pub mod vstate;

//! KVM state: the VM file descriptor with its memory and irqchip, and vCPU threads.

pub mod exit;
pub mod vcpu;
pub mod vm;

//! x86_64 machine description: where things live in guest memory and how vCPUs
//! are set up to enter a PVH kernel.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;

//! husk: the OCI runtime side — container state, bundles, the shared
//! directory, launching microVMs and talking to their agent.

pub mod block_io;
pub mod cgroups;
pub mod config;
pub mod container;
pub mod devices;
pub mod exec;
pub mod hooks;
pub mod monitor;
pub mod network;
pub mod passfd;
pub mod signal;
pub mod stdio;
pub mod untrusted;
pub mod vm;

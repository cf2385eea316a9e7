//! husk: the OCI runtime side — launching microVMs and talking to their agent.

pub mod vm;

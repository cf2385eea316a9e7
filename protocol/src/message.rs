use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Request`] or [`Response`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Host → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First message on every connection.
    Hello {
        protocol_version: u32,
    },
    Ping {
        seq: u64,
    },
    /// Sync filesystems and reset the VM.
    Shutdown,
}

/// What the agent tells about itself in answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloInfo {
    pub protocol_version: u32,
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_version: String,
    /// Guest clock (CLOCK_BOOTTIME) when the agent started listening, in µs.
    pub boot_to_listen_us: u64,
    /// Guest clock when the agent's `main` started, in µs.
    pub boot_to_init_us: u64,
    pub online_cpus: u32,
    pub memory_total_kib: u64,
}

/// Agent → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Hello(HelloInfo),
    Pong {
        seq: u64,
    },
    /// Sent before the agent resets the VM.
    ShuttingDown,
    Error {
        message: String,
    },
}

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Request`] or [`Response`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Host → agent.
///
/// Container requests are keyed by container id; process requests by
/// (container id, exec id), where no exec id means the container's init.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Set up a container from its OCI spec; its init waits for `StartContainer`.
    CreateContainer(Box<CreateContainer>),
    StartContainer {
        id: String,
    },
    /// Send `signal` to a process; with `all`, to every process in the container.
    Signal {
        id: String,
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    },
    /// Answered with `Exited` once the process has exited (immediately if it has).
    WaitProcess {
        id: String,
        exec_id: Option<String>,
    },
    /// Turns this connection into one stdio stream of a process: after the
    /// `Ok` reply it carries raw bytes. Half-closing our write side is EOF on
    /// the process's stdin.
    AttachStdio {
        id: String,
        exec_id: Option<String>,
        stream: StdioStream,
    },
    ContainerState {
        id: String,
    },
    /// Removes a container whose processes have all exited (`force`: kill them first).
    DeleteContainer {
        id: String,
        force: bool,
    },
}

/// What the agent needs to create a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    pub id: String,
    /// The bundle's config.json with paths already translated for the guest:
    /// `root.path` and bind-mount sources are absolute paths inside the guest
    /// (under [`crate::SHARE_MOUNT`]).
    pub spec: oci_spec::runtime::Spec,
    /// Allocate a pseudo-terminal for the init process instead of pipes.
    pub terminal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioStream {
    Stdin,
    Stdout,
    Stderr,
    /// Both directions of the process's terminal.
    Terminal,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Stopped,
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
    /// The request succeeded and has nothing to report.
    Ok,
    Exited {
        status: ExitStatus,
    },
    State {
        /// The process's pid inside the guest (0 once stopped).
        pid: i32,
        status: ContainerStatus,
    },
    Error {
        message: String,
    },
}

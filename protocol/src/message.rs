use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Request`] or [`Response`].
pub const PROTOCOL_VERSION: u32 = 5;

/// At most this many host descriptors are passed to one process
/// (`--preserve-fds`); each is a relay on both sides.
pub const MAX_PASSED_FDS: usize = 32;

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
    /// Sets up the guest's network (links by MAC: name, MTU, addresses, up; then routes and
    /// neighbours) before any container of the sandbox is created. Containers then use the
    /// guest's network namespace. Sent at most once per VM.
    ConfigureNetwork(Box<crate::network::NetworkConfig>),
    /// A network the engine set up after `create` (in the netns of the pid husk reported:
    /// Docker's libnetwork hook, podman with --userns, `ctr run --cni`), for container `id`,
    /// which has a network namespace of its own in the guest: each link's spare NIC
    /// (`Link::nic_mac`, in the guest's initial netns) is moved into the container's network
    /// namespace and set up there as `ConfigureNetwork` would. At most once per container.
    ConfigureContainerNetwork {
        id: String,
        network: Box<crate::network::NetworkConfig>,
    },
    /// Set up a container from its OCI spec; its init waits for `StartContainer`.
    CreateContainer(Box<CreateContainer>),
    /// `CreateContainer` whose init also gets one descriptor per entry of
    /// `fds`, as its fds 3, 4, ... (`--preserve-fds`).
    CreateContainerWithFds {
        create: Box<CreateContainer>,
        fds: Vec<PassedFd>,
    },
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
    /// Prepares an extra process in a running container (runc exec,
    /// containerd's Exec). It joins the container's namespaces and cgroup and
    /// gets the container's seccomp profile, but its own user, env, cwd,
    /// capabilities and no_new_privileges from `process`. It waits for
    /// `StartProcess`, so stdio can be attached first.
    ExecProcess(Box<ExecProcess>),
    /// `ExecProcess` with passed descriptors, as `CreateContainerWithFds`.
    ExecProcessWithFds {
        exec: Box<ExecProcess>,
        fds: Vec<PassedFd>,
    },
    /// Turns this connection into the host end of the process's passed
    /// descriptor `fd` (3, 4, ...): after the `Ok` reply it carries raw
    /// bytes, in the direction of its [`PassedFd`] kind. A `Listener` takes
    /// any number of these, one per connection the process accepts; the
    /// others one.
    AttachFd {
        id: String,
        exec_id: Option<String>,
        fd: i32,
    },
    StartProcess {
        id: String,
        exec_id: String,
    },
    /// Forgets an exec process that has exited (its exit status goes with it).
    DeleteProcess {
        id: String,
        exec_id: String,
    },
    /// Sets the window size of a process's terminal.
    ResizeTerminal {
        id: String,
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    /// Freezes every process of the container (cgroup v2 `cgroup.freeze`).
    PauseContainer {
        id: String,
    },
    ResumeContainer {
        id: String,
    },
    /// Applies new resource limits to the container's cgroup in the guest.
    UpdateContainer {
        id: String,
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    /// Answered with `Stats`.
    ContainerStats {
        id: String,
    },
    /// Answered with `Processes`: every process in the container's cgroup.
    ListProcesses {
        id: String,
    },
}

/// What the agent needs to start an extra process in a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcess {
    pub id: String,
    /// Unique within the container; the key for every later request about it.
    pub exec_id: String,
    pub process: oci_spec::runtime::Process,
    /// Allocate a pseudo-terminal instead of pipes (`process.terminal` is ignored).
    pub terminal: bool,
}

/// Resource usage of a container's cgroup in the guest (cgroup v2 files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    /// cpu.stat usage_usec / user_usec / system_usec.
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    /// memory.current, and memory.max (None when "max").
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    /// memory.swap.current (0 without swap).
    pub swap_usage_bytes: u64,
    /// memory.stat, name → value (anon, file, kernel_stack, ...).
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    /// memory.events oom / oom_kill counters: OOM events are told by their increase.
    pub oom_events: u64,
    pub oom_kills: u64,
    /// pids.current, and pids.max (None when "max").
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
    /// The guest's total and available memory (MemTotal / MemAvailable), for
    /// engines that show a limit when the container has none.
    pub guest_memory_total_bytes: u64,
    pub guest_memory_available_bytes: u64,
}

/// One process of a container, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// pid in the guest's initial pid namespace.
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// /proc/PID/stat state letter (R, S, D, T, Z, ...).
    pub state: String,
    /// Start time, µs of guest CLOCK_BOOTTIME.
    pub start_us: u64,
    /// utime + stime, µs.
    pub cpu_us: u64,
    /// The exec id when the process is (the leader of) an exec, None for the init and its children.
    pub exec_id: Option<String>,
    /// /proc/PID/cmdline split at NULs; `[comm]` when empty.
    pub args: Vec<String>,
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

/// What a host descriptor passed with `--preserve-fds` becomes in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassedFd {
    /// The read end of a pipe: the process reads what the host writes
    /// (EOF once the host half-closes).
    PipeRead,
    /// The write end of a pipe: what the process writes goes to the host.
    PipeWrite,
    /// A listening AF_UNIX stream socket: each `AttachFd` connects to it once
    /// and carries that connection both ways.
    Listener,
    /// One end of a connected AF_UNIX stream socket pair, carried both ways.
    Stream,
    /// The guest's /dev/null, opened read-write (nothing to carry).
    Null,
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
    Stats(Box<ContainerStats>),
    Processes {
        processes: Vec<ProcessInfo>,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_fds_on_the_wire() {
        let req = Request::AttachFd {
            id: "c".into(),
            exec_id: None,
            fd: 3,
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(text, r#"{"attach_fd":{"id":"c","exec_id":null,"fd":3}}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let kinds: Vec<PassedFd> =
            serde_json::from_str(r#"["pipe_read","pipe_write","listener","stream","null"]"#)
                .unwrap();
        assert_eq!(
            kinds,
            [
                PassedFd::PipeRead,
                PassedFd::PipeWrite,
                PassedFd::Listener,
                PassedFd::Stream,
                PassedFd::Null
            ]
        );
        // A kind this side does not know is an error, not a dropped fd.
        assert!(serde_json::from_str::<PassedFd>(r#""regular_file""#).is_err());
        let create = Request::CreateContainerWithFds {
            create: Box::new(CreateContainer {
                id: "c".into(),
                spec: oci_spec::runtime::Spec::default(),
                terminal: false,
            }),
            fds: vec![PassedFd::Listener],
        };
        let text = serde_json::to_string(&create).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), create);
    }
}

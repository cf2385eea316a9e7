//! The host ⇄ agent wire protocol.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of
//! JSON. Frames larger than [`MAX_FRAME`] are refused before anything is
//! allocated, so a hostile peer cannot make the other side allocate at will.
//! The first exchange on a connection is [`Request::Hello`]: each side states its
//! [`PROTOCOL_VERSION`] and a mismatch ends the conversation.

mod cpu_weight;
mod frame;
mod message;
pub mod network;

pub use cpu_weight::cpu_shares_to_weight;

pub use frame::{
    call, read_frame, recv, recv_within, send, write_frame, Deadline, FrameError, MAX_FRAME,
};
pub use message::{
    ContainerStats, ContainerStatus, CreateContainer, ExecProcess, ExitStatus, HelloInfo, PassedFd,
    ProcessInfo, Request, Response, StdioStream, MAX_PASSED_FDS, PROTOCOL_VERSION,
};

/// vsock port the agent listens on for host requests.
pub const AGENT_PORT: u32 = 1024;

/// virtio-fs tag of the sandbox's shared directory.
pub const SHARE_TAG: &str = "husk";

/// Where the agent mounts the shared directory in the guest. Container `<id>`
/// finds its rootfs at `<SHARE_MOUNT>/<id>/rootfs` and its bind-mount sources
/// under `<SHARE_MOUNT>/<id>/mounts/`.
pub const SHARE_MOUNT: &str = "/run/husk/share";

/// Kernel command-line key naming the host vsock port the agent connects to once
/// it listens (`husk.notify_port=N`), so the host need not poll for readiness.
pub const NOTIFY_PORT_PARAM: &str = "husk.notify_port";

/// runc's container id rule, shared by the runtime and the agent (the id names
/// directories on both sides): `^[\w+\-.]+$`, at most 1024 bytes, not `.` or `..`.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::valid_container_id;

    #[test]
    fn container_ids() {
        for good in ["a", "abc-123", "x.y_z+1", "A"] {
            assert!(valid_container_id(good), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", "a\0b"] {
            assert!(!valid_container_id(bad), "{bad:?}");
        }
        assert!(!valid_container_id(&"a".repeat(1025)));
    }
}

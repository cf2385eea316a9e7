//! One error type for the crate, worded like runc's so `husk create` can print it as is.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Opening the netns file failed (missing path, permission).
    #[error("network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },

    /// The path exists but is not a network namespace (a plain file, another ns type).
    #[error("network namespace {path}: not a network namespace")]
    NotNetns { path: PathBuf },

    /// setns(2) into the namespace failed.
    #[error("network namespace {path}: setns: {source}")]
    Setns { path: PathBuf, source: io::Error },

    /// Anything that went wrong inside the namespace, with the namespace named.
    #[error("network namespace {path}: {source}")]
    InNetns {
        path: PathBuf,
        source: Box<NetError>,
    },

    /// The kernel refused, the socket failed, or the kernel answered something unreadable.
    #[error(transparent)]
    Rtnl(#[from] husk_rtnl::RtnlError),

    #[error("{count} {what} to carry into the VM, husk carries at most {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },

    /// A link with addresses that husk cannot carry (kind, MAC, name...).
    #[error("link {link}: {reason}")]
    Link { link: String, reason: String },

    /// A route husk cannot describe to the guest.
    #[error("route {route}: {reason}")]
    Route { route: String, reason: String },

    #[error("tap {name}: {source}")]
    Tap { name: String, source: io::Error },

    /// The description breaks a rule of the protocol (husk_protocol::network).
    #[error(transparent)]
    Config(#[from] husk_protocol::network::NetworkConfigError),

    /// The namespace thread could not start or died.
    #[error("network namespace thread: {0}")]
    Thread(String),
}

impl NetError {
    /// The error without the namespace wrapper, for callers (and tests) that match on the cause.
    pub fn cause(&self) -> &NetError {
        match self {
            NetError::InNetns { source, .. } => source.cause(),
            other => other,
        }
    }

    pub(crate) fn reply(op: impl Into<String>, reason: impl Into<String>) -> Self {
        NetError::Rtnl(husk_rtnl::RtnlError::reply(op, reason))
    }

    pub(crate) fn link(link: &str, reason: impl Into<String>) -> Self {
        NetError::Link {
            link: link.to_string(),
            reason: reason.into(),
        }
    }

    /// The errno behind a netlink failure, to tell "already gone" from real failures.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self.cause() {
            NetError::Rtnl(e) => e.errno(),
            NetError::Tap { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
